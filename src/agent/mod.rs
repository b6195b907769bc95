//! `agent`: what each egress pod runs. The data plane, fed from the resource's stream entries
//! (the operator's ConfigMap), watched through the API server so edits apply within seconds;
//! the processes' live state goes back on the agent's own Pod ([`report`]).

mod report;
mod secrets;

use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::crd::SecretKeyRef;
use crate::dataplane::auth::{JwtConfig, JwtKeys};
use crate::dataplane::{self, DataPlaneArgs, SpecFeed};
use crate::entries::{self, StreamEntries};
use crate::outage::{self, ApiBackoff, ApiOutage, WatchTrouble};
use secrets::SecretReader;

/// Secrets are read again this often, so a rotated TURN password reaches the players without
/// an edit of the resource.
const SECRETS_REREAD: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// Namespace of the WebRTCEgress (from the downward API in pods).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Name of the WebRTCEgress this pod serves.
    #[arg(long)]
    pub name: String,
    /// This pod's name (from the downward API): the processes' state is reported on it. Without
    /// it nothing is reported, e.g. when run by hand outside a pod.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// `NAME/KEY` of the Secret key holding the HS256 key of viewer JWTs (`spec.auth.jwt.
    /// secretRef`), read through the API server.
    #[arg(long, value_parser = entries::parse_secret_ref)]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
}

pub async fn run(mut args: AgentArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &args.namespace);
    let secrets = SecretReader::new(Api::<Secret>::namespaced(client.clone(), &args.namespace));
    let jwt = match &args.jwt_secret_ref {
        Some(secret) => Some(JwtConfig {
            keys: JwtKeys::Hs256(secrets.read(secret).await?),
            audience: args.data_plane.auth.jwt_audience.clone(),
            issuer: args.data_plane.auth.jwt_issuer.clone(),
        }),
        None => args.data_plane.auth.jwt()?,
    };
    let name = entries::configmap_name(&args.name);
    let (tx, mut specs) = mpsc::channel(8);
    // One view of the API server for the watch and the reports: an outage is logged once.
    let api = Arc::new(ApiOutage::default());
    tokio::spawn(watch_stream_entries(
        configmaps,
        secrets,
        name.clone(),
        tx,
        api.clone(),
    ));
    info!(configmap = %name, namespace = %args.namespace, "waiting for stream entries");
    let initial = specs
        .recv()
        .await
        .ok_or_else(|| anyhow::anyhow!("watch on ConfigMap {name} ended"))?;
    args.data_plane
        .drain_seconds
        .get_or_insert(u64::from(crate::crd::DEFAULT_DRAIN_SECONDS));
    let fallback_ips = advertised_fallback(&client, &args.data_plane).await;
    let observer: Option<dataplane::Observer> = match args.pod_name.clone() {
        Some(pod) => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
            info!(%pod, "reporting the processes' state on the pod");
            Some(Box::new(move |subsystem| {
                tokio::spawn(report::publish(pods, pod, subsystem, api));
            }))
        }
        None => {
            warn!("POD_NAME is not set: the processes' state is not reported to the cluster");
            None
        }
    };
    dataplane::run(
        args.data_plane,
        SpecFeed {
            initial,
            updates: specs,
            fallback_ips,
            jwt,
        },
        observer,
    )
    .await
}

/// Sends the entries read from the ConfigMap on every change, with the ICE servers'
/// credentials read from their Secrets (again every [`SECRETS_REREAD`]); a deleted ConfigMap
/// means no processes (the resource is going away). Entries that do not parse are logged and
/// skipped, leaving what runs untouched. While the API server is away, what runs keeps running.
async fn watch_stream_entries(
    configmaps: Api<ConfigMap>,
    secrets: SecretReader,
    name: String,
    tx: mpsc::Sender<StreamEntries>,
    api: Arc<ApiOutage>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(configmaps, config)
        .backoff(ApiBackoff::default())
        .boxed();
    // As read from the ConfigMap (no credentials), and as last sent (credentials filled in).
    let mut read: Option<StreamEntries> = None;
    let mut last: Option<StreamEntries> = None;
    let mut reread = tokio::time::interval(SECRETS_REREAD);
    reread.reset();
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => Some(event),
                None => return,
            },
            _ = reread.tick() => None,
        };
        if matches!(event, Some(Ok(_))) {
            api.recovered();
        }
        let next = match event {
            None => match &read {
                Some(entries) => entries.clone(),
                None => continue,
            },
            Some(Ok(Event::Apply(cm) | Event::InitApply(cm))) => {
                match StreamEntries::decode(&cm.data.unwrap_or_default()) {
                    Ok(entries) => entries,
                    Err(e) => {
                        warn!(configmap = %name, "stream entries refused, keeping what runs: {e}");
                        continue;
                    }
                }
            }
            Some(Ok(Event::Delete(_))) => match &read {
                Some(entries) => StreamEntries {
                    processes: Vec::new(),
                    ..entries.clone()
                },
                None => continue,
            },
            Some(Ok(Event::Init | Event::InitDone)) => continue,
            // Retried after the backoff.
            Some(Err(e)) => {
                match outage::classify(&e) {
                    WatchTrouble::Expired => debug!(configmap = %name, "watch expired: {e}"),
                    WatchTrouble::Unavailable => api.failed("watch the stream entries", &e),
                    WatchTrouble::Other => warn!(configmap = %name, "watch error (retrying): {e}"),
                }
                continue;
            }
        };
        read = Some(next.clone());
        let mut next = next;
        secrets.resolve_ice_credentials(&mut next.webrtc).await;
        if last.as_ref() == Some(&next) {
            continue;
        }
        last = Some(next.clone());
        if tx.send(next).await.is_err() {
            return;
        }
    }
}

/// What to advertise when the resource names no address: with hostNetwork (pod IP = host IP),
/// the node's ExternalIP, else its InternalIP; otherwise the pod IP; outside a cluster, the
/// interface addresses.
async fn advertised_fallback(client: &Client, args: &DataPlaneArgs) -> Vec<IpAddr> {
    let env_ip = |key: &str| {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse::<IpAddr>().ok())
    };
    let (pod_ip, host_ip) = (env_ip("POD_IP"), env_ip("HOST_IP"));
    if pod_ip.is_some() && pod_ip == host_ip {
        if let Some(ip) = node_address(client).await {
            return vec![ip];
        }
        return host_ip.into_iter().collect();
    }
    match pod_ip {
        Some(ip) => vec![ip],
        None => dataplane::interface_ips(args.udp_bind),
    }
}

async fn node_address(client: &Client) -> Option<IpAddr> {
    let node_name = std::env::var("NODE_NAME").ok()?;
    let node = Api::<Node>::all(client.clone())
        .get(&node_name)
        .await
        .map_err(|e| warn!(node = %node_name, "cannot read node addresses: {e}"))
        .ok()?;
    let addresses = node.status?.addresses?;
    ["ExternalIP", "InternalIP"].iter().find_map(|kind| {
        addresses
            .iter()
            .find(|a| a.type_ == *kind)
            .and_then(|a| a.address.parse().ok())
    })
}
