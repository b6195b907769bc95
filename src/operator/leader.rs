//! Leader election over a `coordination.k8s.io` Lease, so that of several operator replicas
//! exactly one reconciles and the others stand by.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A leader that stops renewing loses the Lease after this long; a standby then takes over.
const LEASE_SECONDS: u64 = 15;
/// The leader renews this long before expiry, which also bounds the clock skew tolerated.
const GRACE_SECONDS: u64 = 5;

pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
}

/// Who this replica is in the Lease and in events: the pod name, or host and process id when
/// run outside a pod.
pub fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "webrtc-egress-operator".into());
        format!("{host}-{}", std::process::id())
    })
}

/// Held leadership; the Lease is renewed in the background until released.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    /// Cancelled on shutdown or when leadership is lost: the end of this replica's turn.
    stop: CancellationToken,
    watcher: JoinHandle<()>,
}

/// Waits until this replica holds the Lease; `None` if `shutdown` comes first.
pub async fn acquire(
    client: Client,
    lease: LeaseSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Leadership>> {
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .build()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot use the Lease {}/{}: {e}",
                lease.namespace,
                lease.name
            )
        })?;
    let (mut state, task) = manager.watch().await;
    info!(lease = %lease.name, identity = %lease.identity, "waiting for leadership");
    let acquired = tokio::select! {
        () = shutdown.cancelled() => None,
        result = state.wait_for(|leader| *leader) => Some(result.is_ok()),
    };
    match acquired {
        None => {
            release(state, task).await;
            Ok(None)
        }
        Some(false) => anyhow::bail!("leader election stopped"),
        Some(true) => {
            info!(lease = %lease.name, "became the leader");
            let stop = shutdown.child_token();
            let watcher = tokio::spawn({
                let mut state = state.clone();
                let stop = stop.clone();
                async move {
                    // An error means the election stopped, which loses leadership as well.
                    let _ = state.wait_for(|leader| !*leader).await;
                    warn!("lost leadership");
                    stop.cancel();
                }
            });
            Ok(Some(Leadership {
                state,
                task,
                stop,
                watcher,
            }))
        }
    }
}

impl Leadership {
    /// Cancelled on shutdown or when leadership is lost.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    pub fn is_lost(&self) -> bool {
        !*self.state.borrow() || self.task.is_finished()
    }

    /// Gives the Lease up, so that a standby takes over at once rather than after it expires.
    pub async fn release(self) {
        // The watcher holds a receiver too; the manager releases only once all are gone.
        self.watcher.abort();
        let _ = self.watcher.await;
        release(self.state, self.task).await;
    }
}

async fn release(
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
) {
    // Dropping the last receiver makes the manager's task release the Lease and end.
    drop(state);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => info!("released the Lease"),
        Ok(Ok(Err(error))) => warn!(%error, "cannot release the Lease"),
        Ok(Err(error)) => warn!(%error, "leader election task failed"),
        Err(_) => warn!("timed out releasing the Lease"),
    }
}
