//! What `serve` and `agent` share: the engine, the subsystem and the HTTP server, fed a stream
//! of desired specs from wherever the caller reads them (a file, the API server).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{error, info};

mod authority;
pub mod ffmpeg;
mod http;
mod listener;
pub mod media;
pub mod metrics;
mod ratelimit;
pub mod subsystem;
pub mod whep;
mod whep_pages;

use crate::entries::StreamEntries;
use crate::health;
use media::{Engine, EngineConfig, translate};
use metrics::Metrics;
use subsystem::{Subsystem, SubsystemConfig};

#[derive(clap::Args, Clone, Debug)]
pub struct DataPlaneArgs {
    /// HTTP address for WHEP, the player, health and metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address the media UDP socket binds (the port is `spec.webrtc.udpPort`).
    #[arg(long, default_value = "0.0.0.0")]
    pub udp_bind: IpAddr,
    /// FFmpeg binary.
    #[arg(long, default_value = "ffmpeg", env = "WEBRTC_EGRESS_FFMPEG")]
    pub ffmpeg: String,
    /// Bearer token required on WHEP requests.
    #[arg(long, env = "WEBRTC_EGRESS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Worker shards holding peer connections (default: one per CPU).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Take the viewer-facing host of WHEP requests (offered as the ICE-TCP candidate) from
    /// `X-Forwarded-Host` / `Forwarded`; only behind a proxy that sets them.
    #[arg(long)]
    pub trust_forwarded_headers: bool,
    /// WHEP offers answered at once; more get 503 + Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_offers_in_flight: usize,
    /// WHEP offers a second from one client address (bursts of twice that); more get 429 +
    /// Retry-After. 0 turns the limit off.
    #[arg(long, default_value_t = 50)]
    pub offer_rate_per_ip: u32,
    #[command(flatten)]
    pub http: http::HttpLimits,
    /// Most WHEP sessions held at once; more get 503.
    #[arg(long, default_value_t = 2000)]
    pub max_sessions: usize,
    /// On SIGTERM: report not-ready and refuse new sessions at once, keep serving the viewers
    /// held until they leave or this many seconds pass, then close what is left and exit
    /// (default: 0 for `serve`; the operator sets the resource's `spec.pod.drainSeconds`).
    #[arg(long)]
    pub drain_seconds: Option<u64>,
}

/// How often a draining server looks whether its last viewer has left.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// Where the desired state comes from.
pub struct SpecFeed {
    pub initial: StreamEntries,
    /// Later versions; each is applied as it arrives.
    pub updates: mpsc::Receiver<StreamEntries>,
    /// Advertised when the spec names no public or NAT 1:1 address.
    pub fallback_ips: Vec<IpAddr>,
}

/// Handed the subsystem once its first processes are started, to watch it from outside (the
/// agent reports their state on its Pod); `serve` has none.
pub type Observer = Box<dyn FnOnce(Arc<Subsystem>) + Send>;

/// Runs until SIGTERM/ctrl-c, then drains and tears everything down.
pub async fn run(
    args: DataPlaneArgs,
    feed: SpecFeed,
    observer: Option<Observer>,
) -> anyhow::Result<()> {
    let version = ffmpeg::check_ffmpeg(&args.ffmpeg)?;
    info!(%version, "found ffmpeg");
    let SpecFeed {
        initial,
        mut updates,
        fallback_ips,
    } = feed;
    let factory = translate(&initial.webrtc, &fallback_ips).map_err(|e| anyhow::anyhow!("{e}"))?;
    let metrics = Metrics::default();
    let (unclassified_refused, http_refused) = (
        metrics.ice_tcp_refused.clone(),
        metrics.http_connections_refused.clone(),
    );
    let engine = Engine::start(
        EngineConfig {
            bind: SocketAddr::new(args.udp_bind, factory.udp_port),
            factory,
            shards: args
                .shards
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            max_sessions: args.max_sessions,
        },
        metrics.clone(),
    )
    .await
    .context("cannot open the media UDP port")?;
    let subsystem = Subsystem::new(
        engine.clone(),
        SubsystemConfig {
            ffmpeg: args.ffmpeg.clone(),
            metrics: metrics.clone(),
            ..Default::default()
        },
    );
    subsystem.set_teardown_hook(whep::teardown_hook(engine.clone()));
    engine.set_viewer_limit(viewer_limit(&initial));
    let app = whep::router(whep::AppState {
        subsystem: subsystem.clone(),
        engine: engine.clone(),
        token: args.token.clone().map(Into::into),
        metrics,
        trust_forwarded: args.trust_forwarded_headers,
        offers_in_flight: Arc::new(tokio::sync::Semaphore::new(args.max_offers_in_flight)),
        offer_rate: Arc::new(ratelimit::RateLimiter::new(args.offer_rate_per_ip)),
        request_timeout: Duration::from_secs(args.http.request_timeout_secs),
    });
    subsystem.apply(&initial.processes).await?;
    if let Some(observer) = observer {
        observer(subsystem.clone());
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shown = browsable(listener.local_addr()?);
    println!("webrtc-egress serving on http://{shown}/");
    for process in &initial.processes {
        println!("  watch {}: http://{shown}/play/{}", process.id, process.id);
    }

    let applier = {
        let (subsystem, engine) = (subsystem.clone(), engine.clone());
        tokio::spawn(async move {
            while let Some(entries) = updates.recv().await {
                match translate(&entries.webrtc, &fallback_ips) {
                    Ok(factory) => engine.set_factory(factory),
                    Err(e) => error!("spec.webrtc refused: {e}"),
                }
                engine.set_viewer_limit(viewer_limit(&entries));
                info!(processes = entries.processes.len(), "applying new entries");
                if let Err(e) = subsystem.apply(&entries.processes).await {
                    error!("applying spec failed: {e}");
                }
            }
        })
    };

    let draining = {
        let engine = engine.clone();
        let drain = Duration::from_secs(args.drain_seconds.unwrap_or(0));
        async move {
            health::shutdown_signal().await;
            engine.stop_accepting();
            let held = engine.sessions_held();
            info!(
                ?drain,
                held, "shutting down: not ready, new sessions refused, draining"
            );
            let deadline = tokio::time::Instant::now() + drain;
            while engine.sessions_held() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(DRAIN_POLL).await;
            }
            info!(left = engine.sessions_held(), "drained");
        }
    };
    let listener = listener::SplitListener::spawn(listener, engine.clone(), unclassified_refused);
    http::serve(listener, app, &args.http, http_refused, draining).await;
    applier.abort();
    subsystem.close().await;
    engine.close().await;
    info!("stopped");
    Ok(())
}

fn viewer_limit(entries: &StreamEntries) -> Option<usize> {
    entries.limits.max_viewers_per_pod.map(|n| n as usize)
}

fn browsable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

/// Without configured addresses, advertise the bound address, or every interface address when
/// bound to all of them (loopback included, so a browser on the same machine can play).
pub fn interface_ips(bind: IpAddr) -> Vec<IpAddr> {
    if !bind.is_unspecified() {
        return vec![bind];
    }
    let mut ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into()];
    if let Ok(interfaces) = if_addrs::get_if_addrs() {
        ips.extend(
            interfaces
                .iter()
                .map(|i| i.ip())
                .filter(|ip| ip.is_ipv4() && !ip.is_loopback()),
        );
    }
    ips
}
