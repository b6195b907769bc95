//! Logging setup shared by every subcommand.

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
