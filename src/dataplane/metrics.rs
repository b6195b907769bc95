//! The Prometheus metrics the data plane exports at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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
    /// Sessions whose media our own SRTP leg sends (the rest go through `rtc`'s pipeline).
    pub sessions_own_srtp: Counter,
    /// Packets our own SRTP leg sent again on a viewer's NACK.
    pub rtp_retransmitted: Counter,
    processes: ProcessFamilies,
    registry: Arc<Registry>,
}

/// Join latency buckets (seconds from the WHEP POST to ICE+DTLS connected).
const JOIN_BUCKETS: [f64; 10] = [0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn join_histogram() -> Histogram {
    Histogram::new(JOIN_BUCKETS)
}

/// The `process`-labelled families; each process's series go when the process goes.
#[derive(Clone)]
struct ProcessFamilies {
    viewers: Family<ProcessLabels, Gauge>,
    packets: Family<ProcessLabels, Counter>,
    bytes: Family<ProcessLabels, Counter>,
    dropped: Family<ProcessLabels, Counter>,
    restarts: Family<ProcessLabels, Counter>,
    join: Family<ProcessLabels, Histogram, fn() -> Histogram>,
    rendition_viewers: Family<RenditionLabels, Gauge>,
    switches: Family<SwitchLabels, Counter>,
    estimates: Family<ProcessLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenditionLabels {
    pub process: String,
    pub rendition: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    up,
    down,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchLabels {
    pub process: String,
    pub direction: Direction,
}

impl Default for ProcessFamilies {
    fn default() -> Self {
        ProcessFamilies {
            viewers: Family::default(),
            packets: Family::default(),
            bytes: Family::default(),
            dropped: Family::default(),
            restarts: Family::default(),
            join: Family::new_with_constructor(join_histogram),
            rendition_viewers: Family::default(),
            switches: Family::default(),
            estimates: Family::default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessLabels {
    pub process: String,
}

/// One process's series, handed to its Sources, supervisor and subscribers: cloned handles
/// share the atomics, so the hot path never looks a label up.
#[derive(Clone, Debug)]
pub struct ProcessMetrics {
    /// WHEP sessions held for the process.
    pub viewers: Gauge,
    /// RTP packets sent to its viewers.
    pub packets: Counter,
    /// Bytes sent to its viewers (SRTP, RTCP, DTLS and ICE alike).
    pub bytes: Counter,
    /// Its packets not delivered because a shard's or an ICE-TCP viewer's queue was full.
    pub dropped: Counter,
    pub ffmpeg_restarts: Counter,
    /// Seconds from POST to connected, per viewer.
    pub join_seconds: Histogram,
    /// Connected viewers on each rendition, in ladder order (empty without a ladder).
    pub rendition_viewers: Vec<Gauge>,
    pub switches_up: Counter,
    pub switches_down: Counter,
    /// Bandwidth estimates (REMB) its adaptive viewers sent.
    pub estimates: Counter,
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
        let sessions_own_srtp = Counter::default();
        let rtp_retransmitted = Counter::default();
        let processes = ProcessFamilies::default();
        let mut registry = Registry::with_prefix("webrtc_egress");
        processes.register(registry.sub_registry_with_prefix("process"));
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
            "sessions_own_srtp",
            "connected sessions whose media our own SRTP sender encrypts and sends",
            sessions_own_srtp.clone(),
        );
        registry.register(
            "rtp_retransmitted",
            "RTP packets sent again on a viewer's NACK by our own SRTP sender",
            rtp_retransmitted.clone(),
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
            sessions_own_srtp,
            rtp_retransmitted,
            processes,
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

impl ProcessMetrics {
    /// Moves the count of viewers on `rendition` by `delta` (a join, a leave, a switch).
    pub fn rendition_viewers_add(&self, rendition: u8, delta: i64) {
        if let Some(gauge) = self.rendition_viewers.get(usize::from(rendition)) {
            gauge.inc_by(delta);
        }
    }
}

impl Default for ProcessMetrics {
    /// Series registered nowhere, for code run without a registry (unit tests).
    fn default() -> Self {
        ProcessMetrics {
            viewers: Gauge::default(),
            packets: Counter::default(),
            bytes: Counter::default(),
            dropped: Counter::default(),
            ffmpeg_restarts: Counter::default(),
            join_seconds: join_histogram(),
            rendition_viewers: Vec::new(),
            switches_up: Counter::default(),
            switches_down: Counter::default(),
            estimates: Counter::default(),
        }
    }
}

impl ProcessFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "viewers",
            "WHEP sessions held, per process",
            self.viewers.clone(),
        );
        registry.register(
            "rtp_packets_sent",
            "RTP packets sent to viewers, per process",
            self.packets.clone(),
        );
        registry.register(
            "bytes_sent",
            "bytes sent to viewers, per process",
            self.bytes.clone(),
        );
        registry.register(
            "media_dropped",
            "packets not delivered because a queue was full, per process",
            self.dropped.clone(),
        );
        registry.register(
            "ffmpeg_restarts",
            "FFmpeg restarts, per process",
            self.restarts.clone(),
        );
        registry.register(
            "join_seconds",
            "seconds from WHEP POST to connected, per process",
            self.join.clone(),
        );
        registry.register(
            "rendition_viewers",
            "connected viewers per rendition of a process's ladder",
            self.rendition_viewers.clone(),
        );
        registry.register(
            "rendition_switches",
            "rendition switches of a process's viewers, up or down",
            self.switches.clone(),
        );
        registry.register(
            "bandwidth_estimates",
            "receiver bandwidth estimates (REMB) read from a process's adaptive viewers, at most one a second each",
            self.estimates.clone(),
        );
    }
}

impl Metrics {
    /// The series of process `id` (with `renditions`, its ladder's names), created on first
    /// use.
    pub fn process(&self, id: &str, renditions: &[String]) -> ProcessMetrics {
        let labels = ProcessLabels {
            process: id.to_owned(),
        };
        let f = &self.processes;
        let switch = |direction| {
            let labels = SwitchLabels {
                process: id.to_owned(),
                direction,
            };
            f.switches.get_or_create(&labels).clone()
        };
        let (switches_up, switches_down, estimates) = if renditions.is_empty() {
            Default::default()
        } else {
            (
                switch(Direction::up),
                switch(Direction::down),
                f.estimates.get_or_create(&labels).clone(),
            )
        };
        ProcessMetrics {
            rendition_viewers: renditions
                .iter()
                .map(|name| {
                    let labels = RenditionLabels {
                        process: id.to_owned(),
                        rendition: name.clone(),
                    };
                    f.rendition_viewers.get_or_create(&labels).clone()
                })
                .collect(),
            switches_up,
            switches_down,
            estimates,
            viewers: f.viewers.get_or_create(&labels).clone(),
            packets: f.packets.get_or_create(&labels).clone(),
            bytes: f.bytes.get_or_create(&labels).clone(),
            dropped: f.dropped.get_or_create(&labels).clone(),
            ffmpeg_restarts: f.restarts.get_or_create(&labels).clone(),
            join_seconds: f.join.get_or_create(&labels).clone(),
        }
    }

    /// Drops process `id`'s series, so that a removed process leaves `/metrics`.
    pub fn forget_process(&self, id: &str, renditions: &[String]) {
        for name in renditions {
            self.processes.rendition_viewers.remove(&RenditionLabels {
                process: id.to_owned(),
                rendition: name.clone(),
            });
        }
        for direction in [Direction::up, Direction::down] {
            self.processes.switches.remove(&SwitchLabels {
                process: id.to_owned(),
                direction,
            });
        }
        let labels = ProcessLabels {
            process: id.to_owned(),
        };
        let f = &self.processes;
        f.viewers.remove(&labels);
        f.packets.remove(&labels);
        f.bytes.remove(&labels);
        f.dropped.remove(&labels);
        f.restarts.remove(&labels);
        f.join.remove(&labels);
        f.estimates.remove(&labels);
    }
}

impl RenderMetrics for Metrics {
    fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
