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
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, controller, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::crd::{ValidationErrors, WebRTCEgress};

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
    Controller::new(egresses, watcher::Config::default().any_semantic())
        .owns(
            scoped_api::<Deployment>(client, namespace),
            children.clone(),
        )
        .owns(scoped_api::<Service>(client, namespace), children.clone())
        .owns(scoped_api::<ConfigMap>(client, namespace), children.clone())
        // Egress pods belong to a ReplicaSet, not to the resource: they are mapped back by
        // their instance label, so a pod's report (or its readiness) updates the status.
        .watches(scoped_api::<Pod>(client, namespace), children, |pod| {
            let name = children::instance_of(pod.labels())?.to_owned();
            Some(ObjectRef::<WebRTCEgress>::new(&name).within(&pod.namespace()?))
        })
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "controller");
            }
        })
        .await;
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
