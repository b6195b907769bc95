//! One reconcile of one `WebRTCEgress`: read its children, apply what differs, report status.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::apply::{Outcome, apply};
use super::children::{self, effective_webrtc, load_balancer_ips};
use super::context::MAX_BACKOFF;
use super::status::{Failure, Observed, desired_status};
use super::{Context, Error, FIELD_MANAGER};
use crate::crd::{WebRTCEgress, WebRtcSettings, validate};

/// Brings the children of `egress` to their desired state and reports it in the status.
/// Writes nothing when everything already matches.
#[instrument(skip_all, fields(namespace = egress.namespace(), name = egress.name_any()))]
pub async fn reconcile(egress: Arc<WebRTCEgress>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile();
    let namespace = egress
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;

    if egress.metadata.deletion_timestamp.is_some() {
        // The children go with their owner through garbage collection; applying them now
        // would fight a foreground deletion.
        return Ok(Action::await_change());
    }

    if let Err(errors) = validate(&egress.spec) {
        // Only an edit can fix the spec, and an edit triggers a reconcile: no retries.
        let error = Error::InvalidSpec(errors);
        ctx.metrics.failed(&error);
        let failure = Failure {
            reason: "InvalidSpec",
            message: error.to_string(),
        };
        let observed = Observed {
            failure: Some(failure.clone()),
            ..Default::default()
        };
        if write_status(&egress, &ctx, &observed).await? {
            warn!(%error, "not reconciling");
            ctx.publish(
                &egress,
                EventType::Warning,
                failure.reason,
                failure.message,
                None,
            )
            .await;
        }
        return Ok(Action::await_change());
    }

    let mut report = Report::default();
    match apply_children(&egress, &ctx, &namespace, &mut report).await {
        Ok(()) => {
            ctx.clear_failures(&ObjectRef::from_obj(&*egress));
            report.publish_changes(&egress, &ctx).await;
            write_status(&egress, &ctx, &report.observed(None)).await?;
            Ok(Action::requeue(MAX_BACKOFF))
        }
        // The event and the status would not get through either.
        Err(error) if error.is_unavailable() => Err(error),
        Err(error) => {
            // What was written before the failure is announced now: the retry will find it
            // in place and have nothing to report.
            report.publish_changes(&egress, &ctx).await;
            let message = error.to_string();
            ctx.publish(
                &egress,
                EventType::Warning,
                "ReconcileFailed",
                message.clone(),
                None,
            )
            .await;
            let failure = Failure {
                reason: "ApplyFailed",
                message,
            };
            // Best effort: the API server may be what failed.
            if let Err(status_error) =
                write_status(&egress, &ctx, &report.observed(Some(failure))).await
            {
                warn!(error = %status_error, "cannot report the failure in the status");
            }
            Err(error)
        }
    }
}

/// Retries a failed resource with exponential backoff of its own, so one broken resource
/// neither hot-loops nor delays the others.
pub fn error_policy(egress: Arc<WebRTCEgress>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error);
    let delay = ctx.backoff(ObjectRef::from_obj(&*egress));
    if error.is_unavailable() {
        ctx.api.failed("reconcile", error);
        return Action::requeue(delay);
    }
    warn!(
        namespace = egress.namespace(),
        name = egress.name_any(),
        %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// What applying the children found and did, kept as far as it got when it fails.
#[derive(Default)]
struct Report {
    deployment: Option<Deployment>,
    /// The egress pods, whose reports go into the streams' status.
    pods: Vec<Pod>,
    webrtc: Option<WebRtcSettings>,
    /// Children written, for events.
    changes: Vec<(Outcome, ObjectReference)>,
}

impl Report {
    fn observed(&self, failure: Option<Failure>) -> Observed<'_> {
        Observed {
            deployment: self.deployment.as_ref(),
            webrtc: self.webrtc.as_ref(),
            pods: &self.pods,
            failure,
        }
    }

    /// A Normal event per child written, related to that child.
    async fn publish_changes(&self, egress: &WebRTCEgress, ctx: &Context) {
        for (outcome, child) in &self.changes {
            let verb = if *outcome == Outcome::Created {
                "Created"
            } else {
                "Updated"
            };
            let kind = child.kind.as_deref().unwrap_or_default();
            let name = child.name.as_deref().unwrap_or_default();
            info!("{verb} {kind} {name}");
            let note = format!("{verb} {kind} {name}");
            ctx.publish(egress, EventType::Normal, verb, note, Some(child.clone()))
                .await;
        }
    }

    /// [`apply`], counting and remembering a write.
    async fn apply<K>(
        &mut self,
        ctx: &Context,
        api: &Api<K>,
        desired: &K,
        existing: Option<K>,
    ) -> Result<K, Error>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let (object, outcome) = apply(api, desired, existing).await?;
        if outcome != Outcome::Unchanged {
            ctx.metrics.wrote(&K::kind(&()));
            self.changes.push((outcome, object.object_ref(&())));
        }
        Ok(object)
    }
}

/// Service first (its load balancer IPs feed the stream entries), then the ConfigMap, then
/// the Deployment, so that new pods find their stream entries in place.
async fn apply_children(
    egress: &WebRTCEgress,
    ctx: &Context,
    namespace: &str,
    report: &mut Report,
) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let name = egress.name_any();
    let workload = children::workload_name(&name);
    let streams = crate::entries::configmap_name(&name);
    let (service, configmap, deployment, pods) = tokio::try_join!(
        get(&services, &workload),
        get(&configmaps, &streams),
        get(&deployments, &workload),
        list_pods(&pods, &name),
    )?;
    report.deployment = deployment.clone();
    report.pods = pods;

    let service = report
        .apply(ctx, &services, &children::service(egress)?, service)
        .await?;
    let webrtc = effective_webrtc(&egress.spec, &load_balancer_ips(&service));
    let desired = children::configmap(egress, &webrtc)?;
    report.apply(ctx, &configmaps, &desired, configmap).await?;
    report.webrtc = Some(webrtc.clone());
    let desired = children::deployment(egress, &ctx.agent)?;
    report.deployment = Some(
        report
            .apply(ctx, &deployments, &desired, deployment)
            .await?,
    );
    Ok(())
}

async fn get<K>(api: &Api<K>, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(Error::kube(format!("get {} {name}", K::kind(&()))))
}

/// The egress pods of the resource `name` (the Deployment's selector).
async fn list_pods(api: &Api<Pod>, name: &str) -> Result<Vec<Pod>, Error> {
    let params = ListParams::default().labels(&children::pod_selector(name));
    api.list(&params)
        .await
        .map(|list| list.items)
        .map_err(Error::kube(format!("list the pods of {name}")))
}

/// Writes the status unless it is already what the resource shows, then records events for the
/// processes whose live state changed; `true` if written.
async fn write_status(
    egress: &WebRTCEgress,
    ctx: &Context,
    observed: &Observed<'_>,
) -> Result<bool, Error> {
    let status = desired_status(egress, observed, Timestamp::now());
    if egress.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let name = egress.name_any();
    let api: Api<WebRTCEgress> =
        Api::namespaced(ctx.client.clone(), &egress.namespace().unwrap_or_default());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    // A merge patch of the whole status: lists and cleared fields replace what was there.
    api.patch_status(&name, &params, &Patch::Merge(json!({ "status": status })))
        .await
        .map_err(Error::kube(format!(
            "write the status of WebRTCEgress {name}"
        )))?;
    ctx.metrics.wrote("WebRTCEgress");
    let before = egress
        .status
        .as_ref()
        .map(|s| s.streams.as_slice())
        .unwrap_or_default();
    for event in ctx.stream_events(egress, before, &status.streams) {
        info!(reason = event.reason, "{}", event.note);
        ctx.publish(egress, event.type_, event.reason, event.note, None)
            .await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, StatusCode};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::Value;

    use super::*;

    /// One entry of the `studio-streams` ConfigMap as the fake API holds it.
    fn streams_entry(fake: &FakeApi, key: &str) -> String {
        fake.get(&FakeApi::configmap_path("studio-streams"))
            .unwrap()["data"][key]
            .as_str()
            .unwrap()
            .to_owned()
    }
    use crate::crd::ServiceType;
    use crate::operator::fixtures::{
        FakeApi, egress, process, reporting_pod, set_last_error, test_context,
    };
    use crate::reports::ProcessState::{Failed, Running};

    const STATUS: &str =
        "PATCH /apis/webrtc.dragonfork.io/v1alpha1/namespaces/media/webrtcegresses/studio/status";
    const SERVICE: &str = "PATCH /api/v1/namespaces/media/services/studio-egress";
    const CONFIGMAP: &str = "PATCH /api/v1/namespaces/media/configmaps/studio-streams";
    const DEPLOYMENT: &str = "PATCH /apis/apps/v1/namespaces/media/deployments/studio-egress";

    async fn run(egress: &WebRTCEgress, ctx: &Arc<Context>) -> Result<Action, Error> {
        reconcile(Arc::new(egress.clone()), ctx.clone()).await
    }

    /// Reconciles until nothing is written, as the watch would re-trigger on each write, and
    /// returns the resource with its final status.
    async fn settle(egress: WebRTCEgress, ctx: &Arc<Context>, fake: &FakeApi) -> WebRTCEgress {
        let mut egress = egress;
        for _ in 0..5 {
            fake.clear_log();
            run(&egress, ctx).await.unwrap();
            if fake.writes().is_empty() {
                return egress;
            }
            egress = egress.with_status_from(fake);
        }
        panic!("no steady state: {:?}", fake.write_summary());
    }

    fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()
    }

    fn set_ready_replicas(fake: &FakeApi, ready: i32) {
        let path = FakeApi::deployment_path("studio-egress");
        let mut deployment = fake.get(&path).unwrap();
        deployment["status"] = serde_json::json!({"readyReplicas": ready});
        fake.put(&path, deployment);
    }

    #[tokio::test]
    async fn create_applies_every_child_then_reports_status() {
        let (ctx, fake) = test_context();
        let egress = egress("studio", &["cam1"]);
        let action = run(&egress, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
        assert_eq!(
            fake.write_summary(),
            [
                SERVICE,
                CONFIGMAP,
                DEPLOYMENT,
                "event Created",
                "event Created",
                "event Created",
                STATUS
            ]
        );
        for apply in &fake.writes()[..3] {
            assert!(
                apply.query.contains("fieldManager=webrtc-egress-operator"),
                "{}",
                apply.query
            );
            assert!(apply.query.contains("force=true"), "{}", apply.query);
        }
        // Three events, each related to its child, not one series under the first note.
        let events = &fake.writes()[3..6];
        assert!(events.iter().all(|w| w.method == Method::POST));
        assert_eq!(events[2].body["related"]["kind"], "Deployment");
        let notes: Vec<_> = events
            .iter()
            .map(|w| w.body["note"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            notes,
            [
                "Created Service studio-egress",
                "Created ConfigMap studio-streams",
                "Created Deployment studio-egress"
            ]
        );

        let status = fake.last_status().unwrap();
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["streamCount"], 1);
        assert_eq!(status["readyReplicas"], 0);
        assert_eq!(
            status["streams"],
            serde_json::json!([{
                "id": "cam1",
                "whepPath": "/whep/cam1",
                "state": "Pending",
                "readyPods": "0/0",
                "restarts": 0,
                "message": "no ready egress pod",
            }])
        );
        assert_eq!(condition(&status, "Reconciled")["status"], "True");
        assert_eq!(condition(&status, "Reconciled")["reason"], "Applied");
        assert_eq!(condition(&status, "Ready")["reason"], "PodsNotReady");
        assert_eq!(condition(&status, "Degraded")["status"], "False");
        assert_eq!(ctx.metrics.writes_of("Deployment"), 1);
        assert_eq!(ctx.metrics.writes_of("WebRTCEgress"), 1);
    }

    #[tokio::test]
    async fn steady_resource_causes_zero_writes() {
        let (ctx, fake) = test_context();
        let egress = settle(egress("studio", &["cam1", "cam2"]), &ctx, &fake).await;
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert!(fake.writes().is_empty(), "{:?}", fake.write_summary());

        // Pods become ready and report their processes live: only the status changes, once.
        set_ready_replicas(&fake, 1);
        fake.put_pod(&reporting_pod(
            "studio-egress-a",
            &[("cam1", Running), ("cam2", Running)],
        ));
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert_eq!(fake.write_summary(), [STATUS]);
        let status = fake.last_status().unwrap();
        assert_eq!(condition(&status, "Ready")["status"], "True");
        assert_eq!(status["streams"][1]["state"], "Running");
        assert_eq!(status["live"], "2/2");
        let egress = egress.with_status_from(&fake);
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert!(fake.writes().is_empty(), "{:?}", fake.write_summary());
    }

    #[tokio::test]
    async fn pod_reports_reach_the_status_with_one_event_per_transition() {
        let (ctx, fake) = test_context();
        let egress = settle(egress("studio", &["cam1"]), &ctx, &fake).await;
        set_ready_replicas(&fake, 1);
        let mut failing = reporting_pod("studio-egress-a", &[("cam1", Failed)]);
        set_last_error(&mut failing, "cam1", "in.mp4: No such file or directory");
        fake.put_pod(&failing);
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert_eq!(fake.write_summary(), [STATUS, "event ProcessFailed"]);
        let status = fake.last_status().unwrap();
        assert_eq!(
            status["streams"][0]["lastError"],
            "in.mp4: No such file or directory"
        );
        assert_eq!(status["streams"][0]["readyPods"], "0/1");
        assert_eq!(status["live"], "0/1");
        let ready = condition(&status, "Ready");
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&"False".into(), &"StreamsFailing".into())
        );
        let events = fake.writes();
        let event = &events[1].body;
        assert_eq!(event["type"], "Warning");
        assert_eq!(
            event["note"],
            "cam1 failed on every ready pod: in.mp4: No such file or directory"
        );

        // The same report again: no write, no event.
        let egress = egress.with_status_from(&fake);
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert!(fake.writes().is_empty(), "{:?}", fake.write_summary());

        // Fixed: Running, Ready, and a Normal event.
        fake.put_pod(&reporting_pod("studio-egress-a", &[("cam1", Running)]));
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert_eq!(fake.write_summary(), [STATUS, "event ProcessRecovered"]);
        let status = fake.last_status().unwrap();
        assert_eq!(condition(&status, "Ready")["status"], "True");
        assert_eq!(status["streams"][0]["state"], "Running");
        assert!(status["streams"][0].get("lastError").is_none(), "{status}");
        assert_eq!(fake.writes()[1].body["type"], "Normal");
    }

    #[tokio::test]
    async fn quantities_rewritten_by_the_server_are_not_reapplied() {
        let (ctx, fake) = test_context();
        let egress = egress("studio", &["cam1"]).edited(|spec| {
            spec.pod.resources = Some(
                serde_json::from_value(serde_json::json!({
                    "requests": {"cpu": "0.5"}
                }))
                .unwrap(),
            );
        });
        settle(egress, &ctx, &fake).await;
        let stored = fake
            .get(&FakeApi::deployment_path("studio-egress"))
            .unwrap();
        let cpu =
            &stored["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"];
        assert_eq!(cpu, "500m", "the fake canonicalized it");
    }

    #[tokio::test]
    async fn adding_a_process_patches_only_the_configmap() {
        let (ctx, fake) = test_context();
        let egress = settle(egress("studio", &["cam1"]), &ctx, &fake).await;
        let pod_template = |fake: &FakeApi| {
            fake.get(&FakeApi::deployment_path("studio-egress"))
                .unwrap()["spec"]["template"]
                .clone()
        };
        let template_before = pod_template(&fake);

        let egress = egress.edited(|spec| spec.processes.push(process("cam2")));
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert_eq!(fake.write_summary(), [CONFIGMAP, "event Updated", STATUS]);
        assert!(streams_entry(&fake, "process.cam2.yaml").contains("id: cam2"));
        assert_eq!(pod_template(&fake), template_before, "pods keep running");
        let status = fake.last_status().unwrap();
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["streamCount"], 2);
        assert_eq!(condition(&status, "Reconciled")["observedGeneration"], 2);

        // Removing it applies the entries without it, which drops the key.
        let egress = egress
            .with_status_from(&fake)
            .edited(|spec| spec.processes.retain(|p| p.id != "cam2"));
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert_eq!(fake.write_summary(), [CONFIGMAP, "event Updated", STATUS]);
        let applied = &fake.writes()[0].body["data"];
        assert!(applied.get("process.cam2.yaml").is_none(), "{applied}");
    }

    #[tokio::test]
    async fn pod_level_edits_roll_the_deployment() {
        let (ctx, fake) = test_context();
        let egress = settle(egress("studio", &["cam1"]), &ctx, &fake).await;
        let egress = egress.edited(|spec| spec.pod.image = Some("example.org/egress:2".into()));
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert_eq!(fake.write_summary(), [DEPLOYMENT, "event Updated", STATUS]);
    }

    #[tokio::test]
    async fn drift_is_repaired() {
        let (ctx, fake) = test_context();
        let egress = settle(egress("studio", &["cam1"]), &ctx, &fake).await;
        let path = FakeApi::deployment_path("studio-egress");
        let mut deployment = fake.get(&path).unwrap();
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else".into();
        fake.put(&path, deployment);
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert_eq!(fake.write_summary(), [DEPLOYMENT, "event Updated"]);
        let repaired = fake.get(&path).unwrap();
        assert_eq!(
            repaired["spec"]["template"]["spec"]["containers"][0]["image"],
            "example.org/egress:test"
        );
    }

    #[tokio::test]
    async fn load_balancer_ips_are_advertised_once_assigned() {
        let (ctx, fake) = test_context();
        let egress = egress("studio", &["cam1"])
            .edited(|spec| spec.pod.service_type = ServiceType::LoadBalancer);
        let egress = settle(egress, &ctx, &fake).await;
        let path = FakeApi::service_path("studio-egress");
        let mut service = fake.get(&path).unwrap();
        service["status"] =
            serde_json::json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}});
        fake.put(&path, service);

        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        // The pods learn the address through their entries, live: nothing rolls.
        assert_eq!(fake.write_summary(), [CONFIGMAP, "event Updated", STATUS]);
        assert!(streams_entry(&fake, "webrtc.yaml").contains("198.51.100.7"));
        assert_eq!(
            fake.last_status().unwrap()["advertisedIPs"],
            serde_json::json!(["198.51.100.7"])
        );
        settle(egress.with_status_from(&fake), &ctx, &fake).await;
    }

    #[tokio::test]
    async fn api_errors_are_reported_and_backed_off() {
        let (ctx, fake) = test_context();
        // Refused (a quota, an admission policy): the user must hear of it.
        let deployment = FakeApi::deployment_path("studio-egress");
        fake.fail_with(Method::PATCH, &deployment, StatusCode::FORBIDDEN);
        let egress = Arc::new(egress("studio", &["cam1"]));
        let error = reconcile(egress.clone(), ctx.clone()).await.unwrap_err();
        assert!(matches!(error, Error::Kube { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("cannot apply Deployment studio-egress: "),
            "{error}"
        );
        // The children written before the refusal are announced: the retry finds them in
        // place and has nothing to report of them.
        assert_eq!(
            fake.write_summary(),
            [
                SERVICE,
                CONFIGMAP,
                DEPLOYMENT,
                "event Created",
                "event Created",
                "event ReconcileFailed",
                STATUS
            ]
        );
        let status = fake.last_status().unwrap();
        let reconciled = condition(&status, "Reconciled");
        assert_eq!(
            (&reconciled["status"], &reconciled["reason"]),
            (&"False".into(), &"ApplyFailed".into())
        );
        assert!(
            reconciled["message"]
                .as_str()
                .unwrap()
                .contains("studio-egress")
        );
        assert_eq!(condition(&status, "Degraded")["status"], "True");

        let first = error_policy(egress.clone(), &error, ctx.clone());
        let second = error_policy(egress.clone(), &error, ctx.clone());
        assert_eq!(first, Action::requeue(Duration::from_secs(5)));
        assert_eq!(second, Action::requeue(Duration::from_secs(10)));
        let failures = ctx
            .metrics
            .failures
            .get_or_create(&super::super::metrics::ErrorLabels {
                error: "kube".into(),
            })
            .get();
        assert_eq!(failures, 2);
    }

    #[tokio::test]
    async fn an_unavailable_api_server_is_not_written_to_while_it_is_away() {
        let (ctx, fake) = test_context();
        fake.fail(Method::PATCH, &FakeApi::deployment_path("studio-egress"));
        let egress = Arc::new(egress("studio", &["cam1"]));
        let error = reconcile(egress.clone(), ctx.clone()).await.unwrap_err();
        assert!(error.is_unavailable(), "{error:?}");
        // No event and no status: they would fail too, and pile up on its return.
        assert_eq!(fake.write_summary(), [SERVICE, CONFIGMAP, DEPLOYMENT]);
        let first = error_policy(egress.clone(), &error, ctx.clone());
        assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn deleted_resource_is_left_to_garbage_collection() {
        let (ctx, fake) = test_context();
        let mut egress = egress("studio", &["cam1"]);
        egress.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1).unwrap()));
        assert_eq!(run(&egress, &ctx).await.unwrap(), Action::await_change());
        assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    }

    #[tokio::test]
    async fn invalid_spec_is_reported_once_and_not_applied() {
        let (ctx, fake) = test_context();
        let egress = egress("studio", &["cam1"]).edited(|spec| spec.webrtc.udp_port = 0);
        assert_eq!(run(&egress, &ctx).await.unwrap(), Action::await_change());
        assert_eq!(fake.write_summary(), [STATUS, "event InvalidSpec"]);
        let status = fake.last_status().unwrap();
        let reconciled = condition(&status, "Reconciled");
        assert_eq!(reconciled["reason"], "InvalidSpec");
        assert!(
            reconciled["message"]
                .as_str()
                .unwrap()
                .contains("spec.webrtc.udpPort")
        );

        let egress = egress.with_status_from(&fake);
        fake.clear_log();
        run(&egress, &ctx).await.unwrap();
        assert!(fake.writes().is_empty(), "{:?}", fake.write_summary());
    }
}
