//! Logging setup shared by every subcommand.

/// `RUST_LOG` style filtering, `info` by default. The rtc core warns per duplicate STUN
/// response and per rejected datagram; those are counted in metrics instead.
const QUIET_RTC: &str = "info,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_srtp=error,\
    rtc_sctp=error,rtc_interceptor=error,rtc_stun=error,rtc_mdns=error";

/// kube's client logs an error per failed request and a warning per watch the API server
/// drops, and the Lease manager an error per failed renewal: a line per retry while the API
/// server is away. The operator and the agent log an outage once themselves
/// ([`crate::outage`]); a `RUST_LOG` that names one of these crates still gets its lines.
const QUIET_KUBE: [&str; 2] = ["kube_client", "kube_lease_manager"];

pub fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(QUIET_RTC));
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    for krate in QUIET_KUBE.iter().filter(|k| !asked.contains(*k)) {
        let directive = format!("{krate}=off");
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
