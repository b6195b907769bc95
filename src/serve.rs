//! `serve`: the subsystem standalone, from a manifest on disk that is watched for edits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tracing::{error, info, warn};

use webrtc_egress::crd::{WebRTCEgress, load_manifest};
use webrtc_egress::media::{Engine, EngineConfig, translate};
use webrtc_egress::subsystem::{Subsystem, SubsystemConfig};
use webrtc_egress::telemetry::Metrics;
use webrtc_egress::{ffmpeg, whep};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// WebRTCEgress manifest (YAML); processes added or removed in it apply live.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// HTTP address for WHEP, the player and metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address the media UDP socket binds (the port is `spec.webrtc.udpPort`).
    #[arg(long, default_value = "0.0.0.0")]
    udp_bind: IpAddr,
    /// FFmpeg binary.
    #[arg(long, default_value = "ffmpeg", env = "WEBRTC_EGRESS_FFMPEG")]
    ffmpeg: String,
    /// Bearer token required on WHEP requests (standalone stand-in for `spec.auth`).
    #[arg(long, env = "WEBRTC_EGRESS_TOKEN")]
    token: Option<String>,
    /// Worker shards holding peer connections (default: one per CPU).
    #[arg(long)]
    shards: Option<usize>,
    /// Most WHEP sessions held at once; more get 503.
    #[arg(long, default_value_t = 2000)]
    max_sessions: usize,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let manifest =
        load_manifest(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let version = ffmpeg::check_ffmpeg(&args.ffmpeg)?;
    info!(%version, "found ffmpeg");

    let factory = translate(&manifest.spec.webrtc, &fallback_ips(args.udp_bind))
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let metrics = Metrics::default();
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
            ..Default::default()
        },
    );
    let ready = Arc::new(AtomicBool::new(true));
    let app = whep::router(whep::AppState {
        subsystem: subsystem.clone(),
        token: args.token.map(Into::into),
        metrics,
        ready: ready.clone(),
    });
    subsystem.apply(&manifest.spec).await?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let shown = if local.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local.port())
    } else {
        local
    };
    println!("webrtc-egress serving on http://{shown}/");
    for process in &manifest.spec.processes {
        println!("  watch {}: http://{shown}/play/{}", process.id, process.id);
    }

    let watcher = tokio::spawn(watch_manifest(
        args.file.clone(),
        manifest,
        subsystem.clone(),
    ));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    ready.store(false, Ordering::Release);
    watcher.abort();
    subsystem.close().await;
    engine.close().await;
    info!("stopped");
    Ok(())
}

/// Without configured addresses, advertise the bound address, or every interface address when
/// bound to all of them (loopback included, so a browser on the same machine can play).
fn fallback_ips(bind: IpAddr) -> Vec<IpAddr> {
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

/// Polls the manifest: a valid edit is applied, an invalid one is logged and ignored.
async fn watch_manifest(path: PathBuf, mut current: WebRTCEgress, subsystem: Arc<Subsystem>) {
    let mut last_text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    loop {
        tick.tick().await;
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text == last_text {
            continue;
        }
        last_text = text;
        match load_manifest(Path::new(&path)) {
            Err(e) => {
                error!(file = %path.display(), "manifest edit refused, keeping what runs: {e}")
            }
            Ok(next) => {
                if next.spec.webrtc != current.spec.webrtc {
                    warn!("spec.webrtc changed: restart serve to apply network settings");
                }
                info!(
                    processes = next.spec.processes.len(),
                    "applying manifest edit"
                );
                if let Err(e) = subsystem.apply(&next.spec).await {
                    error!("applying manifest edit failed: {e}");
                }
                current = next;
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
