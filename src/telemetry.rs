//! Logging setup and the Prometheus metrics the data plane exports.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Data-plane counters. Cloned handles share the same atomics, so hot paths increment directly.
#[derive(Clone, Default)]
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
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("webrtc_egress");
        let m = self.clone();
        registry.register(
            "sessions_created",
            "WHEP sessions created",
            m.sessions_created,
        );
        registry.register(
            "sessions_closed",
            "WHEP sessions closed or reaped",
            m.sessions_closed,
        );
        registry.register(
            "sessions_active",
            "WHEP sessions currently held",
            m.sessions_active,
        );
        registry.register(
            "rtp_packets_forwarded",
            "RTP packets written to subscribers",
            m.rtp_packets_forwarded,
        );
        registry.register(
            "media_dropped",
            "media packets dropped because a shard queue was full",
            m.media_dropped,
        );
        registry.register(
            "udp_datagrams_in",
            "datagrams received on the media port",
            m.udp_datagrams_in,
        );
        registry.register(
            "udp_datagrams_unrouted",
            "datagrams from addresses no session claims",
            m.udp_datagrams_unrouted,
        );
        registry.register(
            "udp_send_dropped",
            "datagrams not sent because the socket buffer was full",
            m.udp_send_dropped,
        );
        registry.register(
            "rtc_rejected",
            "datagrams the WebRTC core rejected",
            m.rtc_rejected,
        );
        registry.register("whep_requests", "WHEP HTTP requests", m.whep_requests);
        registry.register(
            "whep_errors",
            "WHEP HTTP requests answered with an error",
            m.whep_errors,
        );
        registry.register("ffmpeg_restarts", "FFmpeg restarts", m.ffmpeg_restarts);
        let mut out = String::new();
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// `RUST_LOG` style filtering, `info` by default. The rtc core warns per duplicate STUN
/// response and per rejected datagram; those are counted in metrics instead.
const QUIET_RTC: &str = "info,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_srtp=error,\
    rtc_sctp=error,rtc_interceptor=error,rtc_stun=error,rtc_mdns=error";

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(QUIET_RTC));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
