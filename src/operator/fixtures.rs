//! Test helpers: sample resources and a fake API server behind a `tower_test` mock client.
//!
//! The fake keeps objects by URL path, answers GET from them (404 when absent), stores what is
//! applied after adding defaults the way the real API server does (so that the no-op test
//! proves the subset check tolerates them), and logs every request for the tests to inspect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};

use super::{AgentConfig, Context, Metrics};
use crate::crd::{InputSpec, ProcessSpec, WebRTCEgress, WebRTCEgressSpec};
use crate::reports::{PodReport, ProcessReport, ProcessState, REPORT_ANNOTATION};

pub const NAMESPACE: &str = "media";

pub fn process(id: &str) -> ProcessSpec {
    ProcessSpec {
        id: id.into(),
        inputs: vec![InputSpec {
            address: "testsrc2=size=1280x720:rate=30".into(),
            options: vec!["-re".into(), "-f".into(), "lavfi".into()],
        }],
        ..Default::default()
    }
}

/// A resource as the API server would hand it over: namespaced, with a uid and a generation.
pub fn egress(name: &str, process_ids: &[&str]) -> WebRTCEgress {
    let mut egress = WebRTCEgress::new(
        name,
        WebRTCEgressSpec {
            processes: process_ids.iter().map(|id| process(id)).collect(),
            ..Default::default()
        },
    );
    egress.metadata.namespace = Some(NAMESPACE.into());
    egress.metadata.uid = Some(format!("uid-{name}"));
    egress.metadata.generation = Some(1);
    egress
}

pub fn agent_config() -> AgentConfig {
    AgentConfig {
        image: "example.org/egress:test".into(),
        service_account: "egress-agent".into(),
    }
}

pub fn deployment_with_ready(ready: i32) -> Deployment {
    Deployment {
        status: Some(DeploymentStatus {
            ready_replicas: Some(ready),
            replicas: Some(ready + 1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A ready egress pod of `studio` reporting `processes` (none: a pod that has not reported).
pub fn reporting_pod(name: &str, processes: &[(&str, ProcessState)]) -> Pod {
    let report = PodReport {
        processes: processes
            .iter()
            .map(|(id, state)| ((*id).to_owned(), ProcessReport::new(*state, 0, None)))
            .collect(),
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(super::children::labels("studio")),
            annotations: (!processes.is_empty())
                .then(|| BTreeMap::from([(REPORT_ANNOTATION.to_owned(), report.encode())])),
            ..Default::default()
        },
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Sets FFmpeg's last line for process `id` in the pod's report.
pub fn set_last_error(pod: &mut Pod, id: &str, error: &str) {
    let annotations = pod.metadata.annotations.as_mut().expect("a report");
    let mut report = PodReport::decode(&annotations[REPORT_ANNOTATION]).unwrap();
    report
        .processes
        .get_mut(id)
        .expect("process in the report")
        .last_error = Some(error.into());
    annotations.insert(REPORT_ANNOTATION.into(), report.encode());
}

/// A context whose client talks to a fresh [`FakeApi`].
pub fn test_context() -> (Arc<Context>, FakeApi) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let fake = FakeApi::default();
    tokio::spawn(fake.clone().serve(handle));
    let context = Context::new(
        client,
        agent_config(),
        Arc::new(Metrics::default()),
        Some("test".into()),
    );
    (Arc::new(context), fake)
}

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    log: Arc<Mutex<Vec<Logged>>>,
    /// Requests answered with an error status instead: (method, path) → status.
    failing: Arc<Mutex<BTreeMap<(String, String), StatusCode>>>,
}

impl FakeApi {
    pub fn configmap_path(name: &str) -> String {
        format!("/api/v1/namespaces/{NAMESPACE}/configmaps/{name}")
    }

    pub fn service_path(name: &str) -> String {
        format!("/api/v1/namespaces/{NAMESPACE}/services/{name}")
    }

    pub fn deployment_path(name: &str) -> String {
        format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}")
    }

    pub fn pod_path(name: &str) -> String {
        format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}")
    }

    /// Puts a pod where a list of pods finds it.
    pub fn put_pod(&self, pod: &Pod) {
        let name = pod.metadata.name.as_deref().expect("a named pod");
        self.put(&Self::pod_path(name), serde_json::to_value(pod).unwrap());
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    pub fn put(&self, path: &str, object: Value) {
        self.objects.lock().unwrap().insert(path.into(), object);
    }

    /// Answers `method path` with a 500 from now on: the API server unwell.
    pub fn fail(&self, method: Method, path: &str) {
        self.fail_with(method, path, StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// Answers `method path` with `code` from now on (403: a quota or a policy refusing it).
    pub fn fail_with(&self, method: Method, path: &str, code: StatusCode) {
        let key = (method.to_string(), path.to_owned());
        self.failing.lock().unwrap().insert(key, code);
    }

    /// Every request, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    /// Every request but reads, in order.
    pub fn writes(&self) -> Vec<Logged> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method != Method::GET)
            .cloned()
            .collect()
    }

    /// `METHOD path` of every write, events shortened to `event <reason>` (whether the
    /// recorder creates one or extends a series).
    pub fn write_summary(&self) -> Vec<String> {
        self.writes()
            .iter()
            .map(|w| {
                if w.path.contains("/events") {
                    let reason = w.body["reason"].as_str().unwrap_or("(series)");
                    format!("event {reason}")
                } else {
                    format!("{} {}", w.method, w.path)
                }
            })
            .collect()
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    /// The status of the last status write.
    pub fn last_status(&self) -> Option<Value> {
        self.writes()
            .iter()
            .rev()
            .find(|w| w.path.ends_with("/status"))
            .map(|w| w.body["status"].clone())
    }

    async fn serve(self, mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON request body")
            };
            self.log.lock().unwrap().push(Logged {
                method: method.clone(),
                path: path.clone(),
                query,
                body: body.clone(),
            });
            let (code, response) = self.answer(&method, &path, body);
            respond.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&response).unwrap()))
                    .unwrap(),
            );
        }
    }

    fn answer(&self, method: &Method, path: &str, body: Value) -> (StatusCode, Value) {
        let failing = self
            .failing
            .lock()
            .unwrap()
            .get(&(method.to_string(), path.to_owned()))
            .copied();
        if let Some(code) = failing {
            return status_error(code, code.canonical_reason().unwrap_or("Error"));
        }
        match *method {
            Method::GET if path.ends_with("/pods") => {
                // Lists are not filtered by label: the tests keep one resource's pods only.
                let prefix = format!("{path}/");
                let items: Vec<Value> = self
                    .objects
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(p, _)| p.starts_with(&prefix))
                    .map(|(_, pod)| pod.clone())
                    .collect();
                let list = json!({
                    "apiVersion": "v1",
                    "kind": "PodList",
                    "metadata": {"resourceVersion": "1"},
                    "items": items,
                });
                (StatusCode::OK, list)
            }
            Method::GET => match self.get(path) {
                Some(object) => (StatusCode::OK, object),
                None => status_error(StatusCode::NOT_FOUND, "NotFound"),
            },
            Method::POST => (StatusCode::CREATED, body),
            Method::PATCH if path.ends_with("/status") => {
                let name = path.rsplit('/').nth(1).unwrap_or_default();
                let egress = json!({
                    "apiVersion": crate::crd::API_VERSION,
                    "kind": crate::crd::KIND,
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": {},
                    "status": body["status"],
                });
                (StatusCode::OK, egress)
            }
            Method::PATCH => {
                let mut object = body;
                if let Some(existing) = self.get(path) {
                    // Apply keeps what others own: here, the status and server metadata.
                    for field in ["status"] {
                        if let Some(value) = existing.get(field) {
                            object[field] = value.clone();
                        }
                    }
                }
                add_server_defaults(&mut object);
                self.put(path, object.clone());
                (StatusCode::OK, object)
            }
            _ => status_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }
}

fn status_error(code: StatusCode, reason: &str) -> (StatusCode, Value) {
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": format!("fake API server: {reason}"),
        "code": code.as_u16(),
    });
    (code, status)
}

/// A few of the fields the API server adds to what we apply, and the canonical form it writes
/// quantities in.
fn add_server_defaults(object: &mut Value) {
    let meta = &mut object["metadata"];
    meta["resourceVersion"] = json!("1");
    meta["uid"] = json!("child-uid");
    meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    meta["managedFields"] = json!([{"manager": "webrtc-egress-operator", "operation": "Apply"}]);
    match object["kind"].as_str() {
        Some("Deployment") => {
            let spec = &mut object["spec"];
            spec["progressDeadlineSeconds"] = json!(600);
            let pod = &mut spec["template"]["spec"];
            pod["restartPolicy"] = json!("Always");
            pod["schedulerName"] = json!("default-scheduler");
            let container = &mut pod["containers"][0];
            container["terminationMessagePath"] = json!("/dev/termination-log");
            container["readinessProbe"]["timeoutSeconds"] = json!(1);
            container["readinessProbe"]["httpGet"]["scheme"] = json!("HTTP");
            if let Some(requests) = container["resources"]["requests"].as_object_mut() {
                for value in requests.values_mut() {
                    if value == "0.5" {
                        *value = json!("500m");
                    }
                }
            }
        }
        Some("Service") => {
            let spec = &mut object["spec"];
            spec["clusterIP"] = json!("10.96.0.10");
            spec["ipFamilies"] = json!(["IPv4"]);
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
        }
        _ => {}
    }
}

impl WebRTCEgress {
    /// The resource as the watch delivers it after the fake's last status write.
    pub fn with_status_from(mut self, fake: &FakeApi) -> Self {
        if let Some(status) = fake.last_status() {
            self.status = Some(serde_json::from_value(status).unwrap());
        }
        self
    }

    /// The next generation, as after a spec edit.
    pub fn edited(mut self, edit: impl FnOnce(&mut WebRTCEgressSpec)) -> Self {
        edit(&mut self.spec);
        *self.meta_mut().generation.as_mut().unwrap() += 1;
        self
    }
}
