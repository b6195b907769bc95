//! `serve`: the data plane standalone, from a manifest on disk that is watched for edits.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use webrtc_egress::crd::{WebRTCEgressSpec, load_manifest};
use webrtc_egress::dataplane::{self, DataPlaneArgs, SpecFeed};
use webrtc_egress::entries::StreamEntries;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// WebRTCEgress manifest (YAML); processes added or removed in it apply live.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    #[command(flatten)]
    data_plane: DataPlaneArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let manifest =
        load_manifest(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let (tx, updates) = mpsc::channel(4);
    tokio::spawn(watch_manifest(args.file.clone(), manifest.spec.clone(), tx));
    dataplane::run(
        args.data_plane.clone(),
        SpecFeed {
            initial: entries_of(&manifest.spec),
            updates,
            fallback_ips: dataplane::interface_ips(args.data_plane.udp_bind),
            jwt: args.data_plane.auth.jwt()?,
        },
        None,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}: {e:#}", args.file.display()))
}

/// Polls the manifest: a valid edit is passed on, an invalid one is logged and ignored.
async fn watch_manifest(
    path: PathBuf,
    mut current: WebRTCEgressSpec,
    updates: mpsc::Sender<StreamEntries>,
) {
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
        match load_manifest(&path) {
            Err(e) => {
                error!(file = %path.display(), "manifest edit refused, keeping what runs: {e}")
            }
            Ok(next) if next.spec == current => {}
            Ok(next) => {
                if next.spec.webrtc.udp_port != current.webrtc.udp_port {
                    warn!("spec.webrtc.udpPort changed: restart serve to rebind the media port");
                }
                info!(file = %path.display(), "manifest edited");
                current = next.spec.clone();
                if updates.send(entries_of(&next.spec)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The entries `serve` runs. It has no cluster to read Secrets from, so an ICE server that
/// names one is offered without a credential, and the log says so.
fn entries_of(spec: &WebRTCEgressSpec) -> StreamEntries {
    for (i, server) in spec.webrtc.ice_servers.iter().enumerate() {
        if let Some(secret) = &server.credential_secret_ref {
            warn!(
                "spec.webrtc.iceServers[{i}].credentialSecretRef ({}/{}): no cluster to read \
                 it from, offered without a credential",
                secret.name, secret.key
            );
        }
    }
    StreamEntries::of_spec(spec)
}
