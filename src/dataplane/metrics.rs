//! The Prometheus metrics the data plane exports at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::health::RenderMetrics;

/// Data-plane counters, registered once. Cloned handles share the same atomics, so hot paths
/// increment directly.
#[derive(Clone)]
pub struct Metrics {
    pub sessions_created: Counter,
    pub sessions_closed: Counter,
    pub sessions_active: Gauge,
    pub rtp_packets_forwarded: Counter,
    /// Media dropped because a shard's queue was full: a slow consumer never stalls a Source.
    pub media_dropped: Counter,
    pub udp_datagrams_in: Counter,
    pub udp_datagrams_unrouted: Counter,
    pub udp_send_dropped: Counter,
    pub rtc_rejected: Counter,
    pub whep_requests: Counter,
    pub whep_errors: Counter,
    pub ffmpeg_restarts: Counter,
    /// Connected sessions by the transport their media flows over.
    pub sessions_connected: Family<TransportLabels, Gauge>,
    /// ICE-TCP connections that named one of our sessions.
    pub ice_tcp_connections: Counter,
    /// Connections on the HTTP port closed as neither HTTP nor a valid ICE-TCP start.
    pub ice_tcp_refused: Counter,
    /// HTTP connections closed on accept because `--max-connections` were held.
    pub http_connections_refused: Counter,
    /// Packets not queued to an ICE-TCP viewer (queue full or connection gone).
    pub tcp_send_dropped: Counter,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let sessions_created = Counter::default();
        let sessions_closed = Counter::default();
        let sessions_active = Gauge::default();
        let rtp_packets_forwarded = Counter::default();
        let media_dropped = Counter::default();
        let udp_datagrams_in = Counter::default();
        let udp_datagrams_unrouted = Counter::default();
        let udp_send_dropped = Counter::default();
        let rtc_rejected = Counter::default();
        let whep_requests = Counter::default();
        let whep_errors = Counter::default();
        let ffmpeg_restarts = Counter::default();
        let sessions_connected = Family::<TransportLabels, Gauge>::default();
        let ice_tcp_connections = Counter::default();
        let ice_tcp_refused = Counter::default();
        let http_connections_refused = Counter::default();
        let tcp_send_dropped = Counter::default();
        let mut registry = Registry::with_prefix("webrtc_egress");
        registry.register(
            "sessions_connected",
            "WHEP sessions connected, by media transport",
            sessions_connected.clone(),
        );
        registry.register(
            "ice_tcp_connections",
            "ICE-TCP connections accepted on the HTTP port",
            ice_tcp_connections.clone(),
        );
        registry.register(
            "ice_tcp_refused",
            "connections on the HTTP port refused as neither HTTP nor ICE-TCP",
            ice_tcp_refused.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections closed on accept at the connection limit",
            http_connections_refused.clone(),
        );
        registry.register(
            "tcp_send_dropped",
            "packets not queued to an ICE-TCP viewer",
            tcp_send_dropped.clone(),
        );
        registry.register(
            "sessions_created",
            "WHEP sessions created",
            sessions_created.clone(),
        );
        registry.register(
            "sessions_closed",
            "WHEP sessions closed or reaped",
            sessions_closed.clone(),
        );
        registry.register(
            "sessions_active",
            "WHEP sessions currently held",
            sessions_active.clone(),
        );
        registry.register(
            "rtp_packets_forwarded",
            "RTP packets written to subscribers",
            rtp_packets_forwarded.clone(),
        );
        registry.register(
            "media_dropped",
            "media packets dropped because a shard queue was full",
            media_dropped.clone(),
        );
        registry.register(
            "udp_datagrams_in",
            "datagrams received on the media port",
            udp_datagrams_in.clone(),
        );
        registry.register(
            "udp_datagrams_unrouted",
            "datagrams from addresses no session claims",
            udp_datagrams_unrouted.clone(),
        );
        registry.register(
            "udp_send_dropped",
            "datagrams not sent because the socket buffer was full",
            udp_send_dropped.clone(),
        );
        registry.register(
            "rtc_rejected",
            "datagrams the WebRTC core rejected",
            rtc_rejected.clone(),
        );
        registry.register("whep_requests", "WHEP HTTP requests", whep_requests.clone());
        registry.register(
            "whep_errors",
            "WHEP HTTP requests answered with an error",
            whep_errors.clone(),
        );
        registry.register(
            "ffmpeg_restarts",
            "FFmpeg restarts",
            ffmpeg_restarts.clone(),
        );
        Self {
            sessions_created,
            sessions_closed,
            sessions_active,
            rtp_packets_forwarded,
            media_dropped,
            udp_datagrams_in,
            udp_datagrams_unrouted,
            udp_send_dropped,
            rtc_rejected,
            whep_requests,
            whep_errors,
            ffmpeg_restarts,
            sessions_connected,
            ice_tcp_connections,
            ice_tcp_refused,
            http_connections_refused,
            tcp_send_dropped,
            registry: Arc::new(registry),
        }
    }
}

/// The transport a session's media flows over; lowercase, as label values are.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Transport {
    udp,
    tcp,
}

impl Transport {
    pub fn of(protocol: rtc::shared::TransportProtocol) -> Self {
        match protocol {
            rtc::shared::TransportProtocol::TCP => Transport::tcp,
            _ => Transport::udp,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: Transport,
}

impl Metrics {
    /// The gauge of sessions connected over `transport`.
    pub fn connected(&self, transport: Transport) -> Gauge {
        self.sessions_connected
            .get_or_create(&TransportLabels { transport })
            .clone()
    }
}

impl RenderMetrics for Metrics {
    fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
