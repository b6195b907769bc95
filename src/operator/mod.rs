//! `operator`: reconciles each `WebRTCEgress` into the children its egress pods need — a
//! ConfigMap of stream entries, a Deployment running `webrtc-egress agent`, and a Service — and
//! reports their state in the resource's status, including what each egress pod says about its
//! processes (their live state, folded by [`live`]).
//!
//! Children are written with server-side apply under one field manager, and only when they
//! differ from what the cluster holds, so a steady resource causes no writes at all.

mod apply;
pub mod children;
mod context;
mod leader;
mod live;
mod metrics;
mod reconcile;
mod server;
mod status;
mod stream_events;

#[cfg(test)]
mod fixtures;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, controller, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::crd::{ValidationErrors, WebRTCEgress};
use crate::outage::{self, ApiBackoff, ApiOutage, WatchTrouble};

pub use children::AgentConfig;
pub use context::Context;
pub use metrics::Metrics;
pub use reconcile::{error_policy, reconcile};

/// Field manager of every server-side apply and status write; also the event reporter.
pub const FIELD_MANAGER: &str = "webrtc-egress-operator";
/// Image of the egress pods unless `--agent-image`, `WEBRTC_EGRESS_IMAGE` or `spec.pod.image`
/// says otherwise: this very version, as `scripts/image` tags it.
pub const DEFAULT_AGENT_IMAGE: &str = concat!(
    "ghcr.io/dragonfork/webrtc-egress:",
    env!("CARGO_PKG_VERSION")
);

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot encode the stream entries: {0}")]
    Encode(#[from] serde_yaml::Error),
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] ValidationErrors),
    /// Objects from the API server always have these; only a hand-made object lacks them.
    #[error("the WebRTCEgress has no metadata.{0}")]
    MissingMetadata(&'static str),
}

impl Error {
    fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Kube { action, source }
    }

    /// Whether the API server was away, rather than this resource or request being wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Kube { source, .. } if crate::outage::is_unavailable(source))
    }

    /// Short, bounded label for the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::Encode(_) => "encode",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::MissingMetadata(_) => "missing_metadata",
        }
    }
}

/// Arguments of `webrtc-egress operator`.
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Image of the egress pods when a resource names none (`spec.pod.image`).
    #[arg(long, env = "WEBRTC_EGRESS_IMAGE", default_value = DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    /// ServiceAccount of the egress pods (it must be allowed to read ConfigMaps in their
    /// namespace, and to get Nodes for the hostNetwork address lookup).
    #[arg(long, default_value = "webrtc-egress-agent")]
    pub agent_service_account: String,
    /// Take a Lease before reconciling, so that only one of several replicas acts. On by
    /// default when running in a pod (`POD_NAME` set).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub leader_election: Option<bool>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "webrtc-egress-operator")]
    pub lease_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
}

impl OperatorArgs {
    fn leader_election(&self) -> bool {
        self.leader_election
            .unwrap_or_else(|| std::env::var_os("POD_NAME").is_some())
    }
}

/// Runs the operator until SIGTERM or ctrl-c. Losing the Lease is an error, so that the pod
/// restarts and queues for leadership again rather than acting alongside the new leader.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(listen = %args.listen, "serving /healthz, /readyz and /metrics");
    tokio::spawn(server::serve(
        listener,
        metrics.clone(),
        ready.clone(),
        shutdown.clone(),
    ));

    // kube's message already names every cause; `context` would repeat them.
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "no Kubernetes configuration (in-cluster service account or KUBECONFIG): {e}"
        )
    })?;
    let identity = leader::identity();

    // `stop` ends this replica's work: shutdown, or the end of its leadership.
    let (stop, leadership) = if args.leader_election() {
        // A standby replica is healthy: it is ready to take over.
        ready.store(true, Ordering::Relaxed);
        let lease = leader::LeaseSettings {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
        };
        match leader::acquire(client.clone(), lease, &shutdown).await? {
            Some(leadership) => (leadership.stop().clone(), Some(leadership)),
            None => return Ok(()),
        }
    } else {
        (shutdown.clone(), None)
    };

    ready.store(false, Ordering::Relaxed);
    let egresses: Api<WebRTCEgress> = scoped_api(&client, args.namespace.as_deref());
    if wait_for_crd(&egresses, &stop).await {
        let context = Arc::new(Context::new(
            client.clone(),
            AgentConfig {
                image: args.agent_image.clone(),
                service_account: args.agent_service_account.clone(),
            },
            metrics,
            Some(identity),
        ));
        ready.store(true, Ordering::Relaxed);
        run_controller(&client, egresses, args.namespace.as_deref(), context, stop).await;
    }
    ready.store(false, Ordering::Relaxed);

    match leadership {
        Some(leadership) if leadership.is_lost() => {
            anyhow::bail!(
                "lost the Lease {}/{}; exiting so that this replica restarts as a standby",
                args.lease_namespace,
                args.lease_name
            )
        }
        Some(leadership) => leadership.release().await,
        None => {}
    }
    info!("operator stopped");
    Ok(())
}

async fn run_controller(
    client: &Client,
    egresses: Api<WebRTCEgress>,
    namespace: Option<&str>,
    context: Arc<Context>,
    stop: CancellationToken,
) {
    // Only our own children matter; the selector keeps the caches small.
    let children = watcher::Config::default().labels(&children::managed_by_selector());
    info!(
        namespace = namespace.unwrap_or("(all)"),
        "controller started"
    );
    let api = &context.api;
    let writer = reflector::store::Writer::<WebRTCEgress>::default();
    let store = writer.as_reader();
    let own = watcher(egresses, watcher::Config::default().any_semantic()).reflect(writer);
    Controller::for_stream(retried(own.applied_objects(), api), store)
        .owns_stream(retried(
            touched::<Deployment>(client, namespace, &children),
            api,
        ))
        .owns_stream(retried(
            touched::<Service>(client, namespace, &children),
            api,
        ))
        .owns_stream(retried(
            touched::<ConfigMap>(client, namespace, &children),
            api,
        ))
        // Egress pods belong to a ReplicaSet, not to the resource: they are mapped back by
        // their instance label, so a pod's report (or its readiness) updates the status.
        .watches_stream(
            retried(touched::<Pod>(client, namespace, &children), api),
            |pod| {
                let name = children::instance_of(pod.labels())?.to_owned();
                Some(ObjectRef::<WebRTCEgress>::new(&name).within(&pod.namespace()?))
            },
        )
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, context.clone())
        .for_each(|result| {
            match result {
                Ok(_) => context.api.recovered(),
                // error_policy has logged it.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => warn!(%error, "controller"),
            }
            async {}
        })
        .await;
}

/// The objects of kind `K` a watch sees change (deleted ones included), scoped and selected.
fn touched<K>(
    client: &Client,
    namespace: Option<&str>,
    config: &watcher::Config,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    watcher(scoped_api::<K>(client, namespace), config.clone()).touched_objects()
}

/// A watch that retries on its own backoff and keeps its errors to itself, so that one
/// watch's trouble holds up neither the others nor the controller. (With kube's shared
/// trigger backoff, a restarted API server cost every watch an expired resourceVersion in
/// turn, each paid with the whole controller paused: most of a minute to converge.) Errors
/// are logged here: an outage once through `api`, expired watches not at all (the watcher
/// lists again by itself).
fn retried<K: Send + 'static>(
    watch: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    api: &Arc<ApiOutage>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    let api = api.clone();
    watch
        .backoff(ApiBackoff::default())
        .filter_map(move |item| {
            let item = match item {
                Ok(object) => {
                    api.recovered();
                    Some(Ok(object))
                }
                Err(error) => {
                    match outage::classify(&error) {
                        WatchTrouble::Expired => debug!(%error, "watch expired; listing again"),
                        WatchTrouble::Unavailable => api.failed("watch", &error),
                        WatchTrouble::Other => warn!(%error, "watch failed; retrying"),
                    }
                    None
                }
            };
            futures::future::ready(item)
        })
}

/// Waits until WebRTCEgresses can be listed; `false` if shut down first. The operator never
/// installs its CRD: that is the user's or the chart's job, with the user's permissions.
async fn wait_for_crd(api: &Api<WebRTCEgress>, shutdown: &CancellationToken) -> bool {
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return true,
            Err(kube::Error::Api(status)) if status.code == 404 => error!(
                "the WebRTCEgress CRD is not installed (webrtcegresses.webrtc.dragonfork.io); \
                 apply crds/webrtcegress.yaml or install the Helm chart — retrying"
            ),
            Err(error) => error!(%error, "cannot list WebRTCEgresses — retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

async fn cancel_on_signal(token: CancellationToken) {
    crate::health::shutdown_signal().await;
    info!("shutting down");
    token.cancel();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: OperatorArgs,
    }

    fn parse(argv: &[&str]) -> OperatorArgs {
        Cli::try_parse_from(std::iter::once("operator").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn arguments_and_defaults() {
        let args = parse(&[]);
        assert_eq!(args.listen.to_string(), "0.0.0.0:8081");
        assert_eq!(args.agent_service_account, "webrtc-egress-agent");
        assert_eq!(args.lease_name, "webrtc-egress-operator");
        assert_eq!(args.leader_election, None);
        assert_eq!(args.namespace, None);

        assert_eq!(parse(&["--leader-election"]).leader_election, Some(true));
        let off = parse(&["--leader-election=false", "--namespace", "media"]);
        assert_eq!(off.leader_election, Some(false));
        assert!(!off.leader_election());
        assert_eq!(off.namespace.as_deref(), Some("media"));
    }
}
