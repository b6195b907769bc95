//! State shared by every reconcile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use tracing::warn;

use super::stream_events::{StreamEvent, Troubled, stream_events};
use super::{AgentConfig, FIELD_MANAGER, Metrics};
use crate::crd::{StreamStatus, WebRTCEgress};
use crate::outage::{ApiOutage, is_unavailable};

/// First retry after a failure; each further failure doubles it up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Also how often a steady resource is looked at again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub agent: AgentConfig,
    /// The API server's availability, so an outage is logged once rather than per retry.
    pub api: Arc<ApiOutage>,
    /// Consecutive failures per resource, for its backoff; cleared by a success.
    failures: Mutex<HashMap<ObjectRef<WebRTCEgress>, u32>>,
    /// Per resource, the processes announced in trouble and not yet announced recovered.
    troubled: Mutex<HashMap<ObjectRef<WebRTCEgress>, Troubled>>,
}

impl Context {
    /// `instance` tells replicas apart in events (the pod name).
    pub fn new(
        client: Client,
        agent: AgentConfig,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            agent,
            api: Arc::default(),
            failures: Mutex::default(),
            troubled: Mutex::default(),
        }
    }

    /// Counts a failure of `object` and returns how long to wait before retrying it.
    pub fn backoff(&self, object: ObjectRef<WebRTCEgress>) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let count = failures.entry(object).or_insert(0);
        *count = count.saturating_add(1);
        FIRST_BACKOFF
            .saturating_mul(2u32.saturating_pow(*count - 1))
            .min(MAX_BACKOFF)
    }

    pub fn clear_failures(&self, object: &ObjectRef<WebRTCEgress>) {
        self.failures.lock().expect("failures lock").remove(object);
    }

    /// The events for the streams of `egress` going from `old` to `new`, remembering which
    /// processes are in trouble.
    pub fn stream_events(
        &self,
        egress: &WebRTCEgress,
        old: &[StreamStatus],
        new: &[StreamStatus],
    ) -> Vec<StreamEvent> {
        let mut troubled = self.troubled.lock().expect("troubled lock");
        let entry = troubled.entry(ObjectRef::from_obj(egress)).or_default();
        let events = stream_events(old, new, entry);
        if entry.is_empty() {
            troubled.remove(&ObjectRef::from_obj(egress));
        }
        events
    }

    /// Publishes an event about `egress`, related to one of its children if given; an event
    /// that cannot be written is logged, never a reason to fail the reconcile.
    ///
    /// The recorder folds repeats of an event (same reason and related object) into a series,
    /// so each child gets its own series rather than one series under the first child's note.
    pub async fn publish(
        &self,
        egress: &WebRTCEgress,
        type_: EventType,
        reason: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: related,
        };
        let reference = kube::Resource::object_ref(egress, &());
        match self.recorder.publish(&event, &reference).await {
            Ok(()) => {}
            Err(error) if is_unavailable(&error) => self.api.failed("publish an event", &error),
            Err(error) => warn!(%error, reason, "cannot publish event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fixtures::{egress, test_context};

    #[tokio::test]
    async fn backoff_doubles_per_object_up_to_the_cap_and_resets() {
        let (context, _server) = test_context();
        let a = ObjectRef::from_obj(&egress("a", &[]));
        let b = ObjectRef::from_obj(&egress("b", &[]));
        let seconds: Vec<_> = (0..8)
            .map(|_| context.backoff(a.clone()).as_secs())
            .collect();
        assert_eq!(seconds, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(context.backoff(b.clone()).as_secs(), 5, "per object");
        context.clear_failures(&a);
        assert_eq!(context.backoff(a).as_secs(), 5);
    }
}
