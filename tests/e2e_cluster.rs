//! End to end against a real control plane (etcd, kube-apiserver, controller-manager,
//! scheduler, kwok fake nodes) started by `tests/cluster/up`: our CRD, the operator and the
//! agent as processes, kubectl as a user would run it.
//!
//! Run with `scripts/test-cluster`, or by hand:
//!   tests/cluster/up /tmp/c && source /tmp/c/env
//!   cargo test --test e2e_cluster -- --test-threads=1
//! Without a cluster (`WEBRTC_EGRESS_KUBECONFIG` / `WEBRTC_EGRESS_CLUSTER_DIR`) every test fails.

mod common;
mod parity;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::{BIN, free_tcp_port, free_udp_port};
use serde_json::Value;
use webrtc_egress::client::{ViewerOptions, ViewerStats, subscribe};

// ---------------------------------------------------------------------------------------------
// Tests: API server schema

#[test]
fn crds_install_and_become_established() {
    install_crds();
    let crd = kubectl_json(&["get", "crd", CRD]);
    let established = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established, "{crd:#}");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "wegress");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    // The short name resolves through discovery, as users type it.
    let ns = Namespace::new("crd");
    kubectl(&["get", "wegress", "-n", &ns.0]);
    // `crds/` is what `webrtc-egress crd` prints.
    let printed = Command::new(BIN).arg("crd").output().unwrap();
    let on_disk = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/webrtcegress.yaml"
    ))
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout), on_disk);
}

#[test]
fn invalid_resources_are_refused_naming_the_field() {
    let ns = Namespace::new("invalid");
    let valid = egress("ok", 8189, &["cam1", "cam2"]);
    // Baseline: the unmodified manifest is accepted (dry run), so each refusal below is
    // caused by its one edit.
    let out = kubectl_raw(
        &["create", "--dry-run=server", "-n", &ns.0, "-f", "-"],
        Some(&valid),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dup = valid.replace("id: cam2", "id: cam1");
    let bad_nat = valid.replace(
        "    udpPort: 8189\n",
        "    udpPort: 8189\n    nat1To1IPs: [203.0.113.7, 300.1.1.1]\n",
    );
    let bad_public = valid.replace(
        "    udpPort: 8189\n",
        "    udpPort: 8189\n    publicIP: not-an-ip\n",
    );
    let port0 = valid.replace("udpPort: 8189", "udpPort: 0");
    let port_big = valid.replace("udpPort: 8189", "udpPort: 70000");
    let vp8 = valid.replacen("codec: h264", "codec: vp8", 1);
    let no_inputs = {
        let start = valid.find("      inputs:").unwrap();
        let end = valid.find("      video:").unwrap();
        format!("{}      inputs: []\n{}", &valid[..start], &valid[end..])
    };
    let bad_id = valid.replace("id: cam1", "id: Cam_1");
    let cases: [(&str, &str, &[&str]); 8] = [
        (
            "duplicate process ids",
            &dup,
            &["spec.processes[1]", "Duplicate value"],
        ),
        (
            "bad IP in nat1To1IPs",
            &bad_nat,
            &[
                "spec.webrtc.nat1To1IPs[1]",
                "300.1.1.1 is not an IP address",
            ],
        ),
        (
            "bad publicIP",
            &bad_public,
            &["spec.webrtc.publicIP", "not an IP address"],
        ),
        ("udpPort 0", &port0, &["spec.webrtc.udpPort"]),
        ("udpPort 70000", &port_big, &["spec.webrtc.udpPort"]),
        ("codec vp8", &vp8, &["spec.processes[0].video.codec", "vp8"]),
        ("empty inputs", &no_inputs, &["spec.processes[0].inputs"]),
        ("id Cam_1", &bad_id, &["spec.processes[0].id", "Cam_1"]),
    ];
    let mut failures = vec![];
    for (what, yaml, needles) in cases {
        let out = kubectl_raw(&["create", "-n", &ns.0, "-f", "-"], Some(yaml));
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{what}: {}", err.trim());
        if out.status.success() {
            failures.push(format!("{what}: accepted"));
        } else if let Some(n) = needles.iter().find(|n| !err.contains(**n)) {
            failures.push(format!("{what}: error lacks {n:?}: {err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(ns.get("wegress", "ok").is_none(), "nothing was created");
}

/// `webrtc-egress validate` and the API server (strict field validation, kubectl's default)
/// judge every manifest of `tests/parity/cases.yaml` alike: same verdict, same field paths.
#[test]
fn validate_agrees_with_the_api_server() {
    let ns = Namespace::new("parity");
    let dir = tempfile::tempdir().unwrap();
    let mut failures = vec![];
    let started = Instant::now();
    let cases = parity::cases();
    for case in &cases {
        let path = dir.path().join(format!("{}.yaml", case.name));
        std::fs::write(&path, case.manifest()).unwrap();
        let file = path.to_str().unwrap();
        let api = parity::api_verdict(&kubectl_raw(
            &["apply", "--dry-run=server", "-n", &ns.0, "-f", file],
            None,
        ));
        let ours = parity::our_verdict(
            &Command::new(BIN)
                .args(["validate", "-f", file])
                .output()
                .unwrap(),
        );
        let agree = api == ours;
        println!(
            "{:<32} api: {api}\n{:<32} validate: {ours}{}",
            case.name,
            "",
            if agree { "" } else { "   <-- differ" }
        );
        if api.accepted != case.valid {
            failures.push(format!(
                "{}: meant to be {}, but the API server says {api}",
                case.name,
                if case.valid { "valid" } else { "invalid" }
            ));
        }
        match (&case.divergence, agree) {
            (None, false) => failures.push(format!(
                "{}: the API server says {api}, validate says {ours}\n  kubectl: {}\n  validate: {}",
                case.name,
                api.text.trim(),
                ours.text.trim()
            )),
            (Some(_), true) => failures.push(format!(
                "{}: allowed to differ but both say {api}; remove its `divergence`",
                case.name
            )),
            _ => {}
        }
    }
    println!(
        "{} parity cases in {:.1}s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Tests: operator

/// Children of `name`: ConfigMap, Deployment, Service, each owned (controller) by the resource.
fn assert_owned_children(ns: &Namespace, name: &str, uid: &str) {
    for (kind, child) in [
        ("configmap", format!("{name}-streams")),
        ("deployment", format!("{name}-egress")),
        ("service", format!("{name}-egress")),
    ] {
        let obj = ns
            .get(kind, &child)
            .unwrap_or_else(|| panic!("{kind}/{child} missing"));
        let owners = obj["metadata"]["ownerReferences"].as_array().unwrap();
        assert!(
            owners
                .iter()
                .any(|o| o["uid"] == uid && o["controller"] == true && o["kind"] == "WebRTCEgress"),
            "{kind}/{child} not controlled by the resource: {owners:?}"
        );
        let labels = &obj["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/instance"], name, "{kind}/{child}");
        assert!(
            labels["app.kubernetes.io/name"].is_string(),
            "{kind}/{child}"
        );
        assert!(
            labels["app.kubernetes.io/managed-by"].is_string(),
            "{kind}/{child}"
        );
    }
}

#[test]
fn operator_creates_owned_children_and_reports_status() {
    let ns = Namespace::new("children");
    let _op = Operator::start(&ns, None);
    let udp = free_udp_port();
    ns.apply(&egress("studio", udp, &["cam1", "cam2"]));

    // kwok runs the pod; an agent standing for it runs FFmpeg and reports, so `kubectl wait`
    // sees Ready once every process is live, as a user would.
    let pod = &ready_pods(&ns, "studio", 1)[0];
    let _agent = Agent::start(&ns, "studio", pod, "127.0.0.1", None);
    kubectl_wait_ready(&ns, "studio");
    let obj = wait_converged(&ns, "studio", &["cam1", "cam2"]);
    let uid = obj["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_owned_children(&ns, "studio", &uid);

    // Status: one stream per process with its WHEP path; every condition carries its own
    // observedGeneration and a reason.
    for s in obj["status"]["streams"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        assert_eq!(s["whepPath"], format!("/whep/{id}"), "{s}");
        assert_eq!(s["state"], "Running", "{s}");
        assert_eq!(s["readyPods"], "1/1", "{s}");
    }
    for c in obj["status"]["conditions"].as_array().unwrap() {
        assert_eq!(
            c["observedGeneration"], obj["metadata"]["generation"],
            "{c}"
        );
        assert!(c["reason"].as_str().is_some_and(|r| !r.is_empty()), "{c}");
    }
    assert!(condition(&obj, "Reconciled").is_some() || condition(&obj, "Degraded").is_some());

    // Printer columns.
    let table = kubectl(&["get", "wegress", "-n", &ns.0]);
    println!("{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "LIVE", "STREAMS", "REPLICAS", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], ["studio", "True", "2/2", "2", "1"], "{table}");

    // Events are recorded against the resource.
    let events = kubectl_json(&[
        "get",
        "events",
        "-n",
        &ns.0,
        "--field-selector",
        "involvedObject.name=studio",
    ]);
    assert!(
        !events["items"].as_array().unwrap().is_empty(),
        "no events for wegress/studio"
    );
}

/// What changes with any write to the pod or the resource: resourceVersions, and the time of
/// the agent's last apply to its pod.
fn write_marks(ns: &Namespace, pod: &str, name: &str) -> (Value, Value, Value) {
    let pod = kubectl_json(&["get", "pod", pod, "-n", &ns.0, "--show-managed-fields"]);
    let agent_apply = pod["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["manager"] == "webrtc-egress-agent")
        .map(|f| f["time"].clone())
        .expect("the agent has applied to its pod");
    let egress = ns.get("wegress", name).expect("the resource");
    (
        pod["metadata"]["resourceVersion"].clone(),
        agent_apply,
        egress["metadata"]["resourceVersion"].clone(),
    )
}

#[test]
fn steady_resource_causes_no_writes() {
    let ns = Namespace::new("steady");
    let op = Operator::start(&ns, None);
    ns.apply(&egress("quiet", free_udp_port(), &["cam1"]));
    wait_converged(&ns, "quiet", &["cam1"]);
    // With an agent running FFmpeg and reporting on its pod: steady processes, steady state.
    let pod = &ready_pods(&ns, "quiet", 1)[0];
    let _agent = Agent::start(&ns, "quiet", pod, "127.0.0.1", None);
    kubectl_wait_ready(&ns, "quiet");
    // Let readyReplicas and the like settle, then watch for a while.
    std::thread::sleep(Duration::from_secs(5));
    let before = (op.metric(WRITES), op.metric(RECONCILES));
    let marks_before = write_marks(&ns, pod, "quiet");
    std::thread::sleep(Duration::from_secs(20));
    let after = (op.metric(WRITES), op.metric(RECONCILES));
    let marks_after = write_marks(&ns, pod, "quiet");
    println!("writes/reconciles before {before:?} after {after:?}");
    println!("pod rv, agent apply, resource rv: {marks_before:?} -> {marks_after:?}");
    assert_eq!(
        before.0, after.0,
        "a steady resource caused operator writes"
    );
    assert_eq!(
        marks_before, marks_after,
        "steady processes caused writes to the pod or the resource"
    );
}

#[test]
fn process_edits_change_only_the_configmap() {
    let ns = Namespace::new("edit");
    let _op = Operator::start(&ns, None);
    ns.apply(&egress("studio", 8189, &["cam1", "cam2"]));
    wait_converged(&ns, "studio", &["cam1", "cam2"]);
    let deploy = ns.get("deployment", "studio-egress").unwrap();
    let generation = deploy["metadata"]["generation"].clone();
    let template = deploy["spec"]["template"].clone();

    // Remove cam2, add cam3.
    ns.apply(&egress("studio", 8189, &["cam1", "cam3"]));
    let obj = wait_converged(&ns, "studio", &["cam1", "cam3"]);
    assert_eq!(obj["metadata"]["generation"], 2);
    let cm = ns.get("configmap", "studio-streams").unwrap();
    let keys: Vec<&String> = cm["data"].as_object().unwrap().keys().collect();
    assert!(
        keys.iter().any(|k| k.contains("cam3")) && !keys.iter().any(|k| k.contains("cam2")),
        "ConfigMap keys {keys:?}"
    );
    let deploy = ns.get("deployment", "studio-egress").unwrap();
    assert_eq!(
        deploy["metadata"]["generation"], generation,
        "a process edit rolled the Deployment"
    );
    assert_eq!(deploy["spec"]["template"], template);
    assert_eq!(ns.children("replicaset", "studio").len(), 1);

    // A pod-level setting does roll it.
    ns.apply(&egress("studio", 8190, &["cam1", "cam3"]));
    wait_converged(&ns, "studio", &["cam1", "cam3"]);
    wait_for(CONVERGE, "Deployment rolled for udpPort", || {
        let d = ns.get("deployment", "studio-egress")?;
        (d["metadata"]["generation"] != generation).then_some(())
    });
}

#[test]
fn deleting_the_resource_garbage_collects_children() {
    let ns = Namespace::new("gc");
    let _op = Operator::start(&ns, None);
    ns.apply(&egress("studio", 8189, &["cam1"]));
    wait_converged(&ns, "studio", &["cam1"]);
    wait_for(CONVERGE, "an egress pod", || {
        (!ns.children("pod", "studio").is_empty()).then_some(())
    });

    kubectl(&["delete", "wegress", "studio", "-n", &ns.0, "--timeout=60s"]);
    // The garbage collector (kube-controller-manager) removes everything owned, down to pods.
    wait_for(CONVERGE, "children collected", || {
        let left: Vec<String> = ["configmap", "deployment", "service", "replicaset", "pod"]
            .iter()
            .flat_map(|k| {
                ns.children(k, "studio")
                    .into_iter()
                    .map(move |o| format!("{k}/{}", o["metadata"]["name"]))
            })
            .collect();
        if !left.is_empty() {
            println!("still present: {left:?}");
        }
        left.is_empty().then_some(())
    });
}

#[test]
fn operator_restart_converges_without_duplicates() {
    let ns = Namespace::new("restart");
    let mut op = Operator::start(&ns, None);
    ns.apply(&egress("studio", 8189, &["cam1"]));
    wait_converged(&ns, "studio", &["cam1"]);

    // Killed without warning; the resource changes while no operator runs.
    op.proc.kill_hard();
    ns.apply(&egress("studio", 8189, &["cam1", "cam2"]));
    let op = Operator::start(&ns, None);
    wait_converged(&ns, "studio", &["cam1", "cam2"]);
    for kind in ["configmap", "deployment", "service", "replicaset"] {
        let items = ns.children(kind, "studio");
        assert_eq!(items.len(), 1, "{kind}: {items:#?}");
    }
    assert!(op.metric(RECONCILES) >= 1.0);
}

#[test]
fn leader_election_one_leads_and_the_other_takes_over() {
    let ns = Namespace::new("leader");
    let lease = "e2e-operator";
    let a = Operator::start(&ns, Some(lease));
    let b = Operator::start(&ns, Some(lease));
    let holder = || -> Option<String> {
        ns.get("lease", lease)?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    };
    let first = wait_for(CONVERGE, "a Lease holder", || {
        holder().filter(|h| *h == a.identity() || *h == b.identity())
    });
    let (mut leader, standby) = if first == a.identity() {
        (a, b)
    } else {
        (b, a)
    };
    println!("leader {first}, standby {}", standby.identity());

    ns.apply(&egress("one", 8189, &["cam1"]));
    wait_converged(&ns, "one", &["cam1"]);
    assert_eq!(standby.metric(WRITES), 0.0, "the standby wrote to the API");
    assert_eq!(holder().as_deref(), Some(first.as_str()));

    // The leader dies without releasing the Lease: the standby takes over once it expires.
    leader.proc.kill_hard();
    let new = wait_for(CONVERGE, "the standby to take the Lease", || {
        holder().filter(|h| *h == standby.identity())
    });
    println!("new leader {new}");
    ns.apply(&egress("two", 8189, &["cam1", "cam2"]));
    wait_converged(&ns, "two", &["cam1", "cam2"]);
    assert!(standby.metric(WRITES) > 0.0);
}

// ---------------------------------------------------------------------------------------------
// Tests: agent, the data plane fed through the API server

fn has_av(s: &ViewerStats) -> bool {
    s.idr_seen && s.opus_seen
}

async fn agent_streams(base: &str) -> Value {
    match reqwest::get(format!("{base}/api/v1/streams")).await {
        Ok(r) => serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

async fn post_status(url: &str) -> Option<u16> {
    let resp = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/sdp")
        .body("v=0\r\n")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    Some(resp.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_plays_processes_and_cuts_removed_ones() {
    let ns = Namespace::new("agent");
    let _op = Operator::start(&ns, None);
    let udp = free_udp_port();
    ns.apply(&egress("studio", udp, &["cam1", "cam2"]));
    wait_converged(&ns, "studio", &["cam1", "cam2"]);

    let http = free_tcp_port();
    let listen = format!("127.0.0.1:{http}");
    let mut agent = Proc::spawn(
        "agent",
        &[
            "agent",
            "--namespace",
            &ns.0,
            "--name",
            "studio",
            "--listen",
            &listen,
            "--udp-bind",
            "127.0.0.1",
        ],
    );
    let base = format!("http://{listen}");
    // Both processes live (FFmpeg up, RTP arriving) as read from the ConfigMap.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let streams = agent_streams(&base).await;
        let live = |id: &str| {
            streams["streams"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["id"] == id && s["live"] == true))
        };
        if live("cam1") && live("cam2") {
            break;
        }
        assert!(agent.running(), "agent exited:\n{}", agent.log_tail());
        assert!(
            Instant::now() < deadline,
            "streams never live: {streams}\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let cam1 = subscribe(ViewerOptions::new(format!("{base}/whep/cam1")))
        .await
        .expect("subscribe cam1");
    let cam2 = subscribe(ViewerOptions::new(format!("{base}/whep/cam2")))
        .await
        .expect("subscribe cam2");
    for v in [&cam1, &cam2] {
        v.wait_for(has_av, Duration::from_secs(30))
            .await
            .expect("H.264 IDR and Opus");
    }

    // Remove cam2 from the resource: the operator rewrites the ConfigMap, the agent applies
    // it live — cam2's subscriber is cut and its endpoint 404s; cam1 keeps playing.
    let agent_pid = agent.pid();
    ns.apply(&egress("studio", udp, &["cam1"]));
    cam2.wait_for(|s| s.closed_by_server, Duration::from_secs(30))
        .await
        .expect("cam2 subscriber closed by the server");
    let cam2_url = format!("{base}/whep/cam2");
    let deadline = Instant::now() + Duration::from_secs(30);
    while post_status(&cam2_url).await != Some(404) {
        assert!(Instant::now() < deadline, "POST /whep/cam2 never 404");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = cam1.stats().media_packets();
    cam1.wait_for(|s| s.media_packets() > before + 50, Duration::from_secs(20))
        .await
        .expect("cam1 keeps playing");
    assert!(!cam1.stats().closed_by_server);
    assert!(
        agent.running() && agent.pid() == agent_pid,
        "agent restarted"
    );
    wait_converged(&ns, "studio", &["cam1"]);
    cam1.close().await;
}

// ---------------------------------------------------------------------------------------------
// Tests: live state from the pods

/// A WebRTCEgress whose processes are video-only, each from one input address (a lavfi graph
/// when it has `=`, else a path or URL as FFmpeg's `-i` takes it).
fn egress_inputs(name: &str, udp_port: u16, replicas: u32, processes: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: webrtc.dragonfork.io/v1alpha1\nkind: WebRTCEgress\nmetadata:\n  name: {name}\n\
         spec:\n  replicas: {replicas}\n  webrtc:\n    udpPort: {udp_port}\n  processes:\n"
    );
    for (id, address) in processes {
        let options = if address.contains('=') {
            "[\"-re\", \"-f\", \"lavfi\"]"
        } else {
            "[]"
        };
        yaml.push_str(&format!(
            "    - id: {id}\n      inputs:\n\
             \x20       - address: \"{address}\"\n          options: {options}\n\
             \x20     video: {{codec: h264}}\n"
        ));
    }
    yaml
}

const PATTERN: &str = "testsrc2=size=320x180:rate=15";

#[test]
fn an_input_that_cannot_be_opened_fails_with_ffmpegs_reason_then_recovers() {
    let ns = Namespace::new("failing");
    let _op = Operator::start(&ns, None);
    let udp = free_udp_port();
    let missing = format!("/nonexistent/{}/input.mp4", ns.0);
    ns.apply(&egress_inputs(
        "studio",
        udp,
        1,
        &[("cam1", PATTERN), ("cam2", &missing)],
    ));
    let pod = ready_pods(&ns, "studio", 1).remove(0);
    let agent = Agent::start(&ns, "studio", &pod, "127.0.0.1", None);

    // cam2 fails on the pod, with FFmpeg's own words for it; cam1 plays.
    let obj = wait_for(CONVERGE, "cam2 Failed in the status", || {
        let obj = ns.get("wegress", "studio")?;
        let failed = stream(&obj, "cam2")?["state"] == "Failed";
        let running = stream(&obj, "cam1")?["state"] == "Running";
        (failed && running).then_some(obj)
    });
    let cam2 = stream(&obj, "cam2").unwrap();
    let reason = format!("{missing}: No such file or directory");
    assert_eq!(cam2["lastError"], reason.as_str(), "{cam2}");
    assert_eq!(cam2["readyPods"], "0/1", "{cam2}");
    assert!(cam2["restarts"].as_i64().unwrap() >= 4, "{cam2}");
    let ready = condition(&obj, "Ready").unwrap();
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["reason"], "StreamsFailing", "{ready}");
    assert!(
        ready["message"].as_str().unwrap().contains(&reason),
        "{ready}"
    );
    let degraded = condition(&obj, "Degraded").unwrap();
    assert_eq!(degraded["status"], "True", "{degraded}");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .starts_with("cam2 Failed"),
        "{degraded}"
    );
    assert_eq!(live_column(&ns, "studio"), "1/2");
    let events = wait_for(CONVERGE, "a ProcessFailed event", || {
        let events = events_of(&ns, "studio");
        events
            .iter()
            .any(|(r, _)| r == "ProcessFailed")
            .then_some(events)
    });
    let (_, note) = events.iter().find(|(r, _)| r == "ProcessFailed").unwrap();
    assert!(note.contains(&reason), "{note}");
    let describe = capture_kubectl(&ns, "studio", "failing");
    assert!(
        describe.contains(&reason),
        "describe shows FFmpeg's reason:\n{describe}"
    );
    assert!(describe.contains("StreamsFailing"), "{describe}");

    // The pod carries the report and its condition beside the kubelet's (kwok's) own.
    let pod_obj = ns.get("pod", &pod).unwrap();
    let conditions = pod_obj["status"]["conditions"].as_array().unwrap();
    let live = conditions
        .iter()
        .find(|c| c["type"] == "webrtc.dragonfork.io/StreamsLive")
        .expect("the agent's condition");
    assert_eq!(live["status"], "False", "{live}");
    assert_eq!(live["reason"], "ProcessesFailed", "{live}");
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "the kubelet's conditions stay: {conditions:?}"
    );
    let report = pod_obj["metadata"]["annotations"]["webrtc.dragonfork.io/streams"]
        .as_str()
        .expect("the report annotation");
    assert!(report.contains(r#""cam2":{"state":"Failed""#), "{report}");

    // Fix the input in the resource: the agent restarts cam2, it plays, Ready comes back.
    let agent_pid = agent.proc.pid();
    ns.apply(&egress_inputs(
        "studio",
        udp,
        1,
        &[("cam1", PATTERN), ("cam2", PATTERN)],
    ));
    kubectl_wait_ready(&ns, "studio");
    let obj = ns.get("wegress", "studio").unwrap();
    let cam2 = stream(&obj, "cam2").unwrap();
    assert_eq!(cam2["state"], "Running", "{cam2}");
    assert_eq!(cam2["readyPods"], "1/1", "{cam2}");
    assert!(cam2.get("lastError").is_none(), "{cam2}");
    assert_eq!(condition(&obj, "Ready").unwrap()["reason"], "StreamsLive");
    assert_eq!(condition(&obj, "Degraded").unwrap()["status"], "False");
    assert_eq!(live_column(&ns, "studio"), "2/2");
    wait_for(CONVERGE, "a ProcessRecovered event", || {
        events_of(&ns, "studio")
            .iter()
            .any(|(r, n)| r == "ProcessRecovered" && n.starts_with("cam2"))
            .then_some(())
    });
    assert_eq!(
        agent.proc.pid(),
        agent_pid,
        "the agent applied the fix live"
    );
    capture_kubectl(&ns, "studio", "recovered");
    let failed_events = events_of(&ns, "studio")
        .iter()
        .filter(|(r, _)| r == "ProcessFailed")
        .count();
    assert_eq!(
        failed_events, 1,
        "one event for the failure, not one per restart"
    );
}

#[test]
fn ffmpeg_killed_in_one_of_two_pods_degrades_then_recovers() {
    let ns = Namespace::new("degraded");
    let _op = Operator::start(&ns, None);
    let udp = free_udp_port();
    ns.apply(&egress_inputs("studio", udp, 2, &[("cam1", PATTERN)]));
    let pods = ready_pods(&ns, "studio", 2);

    // The second agent's FFmpeg goes through a wrapper that, while a marker file exists, stands
    // for an input that is gone: it prints a line and exits, so FFmpeg stays down after the
    // kill until the test says otherwise (a bare kill would be restarted within a second).
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("blocked");
    let wrapper = dir.path().join("ffmpeg");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e {} ]; then echo 'input gone (blocked by the test)' >&2; exit 1; fi\n\
             exec ffmpeg \"$@\"\n",
            blocked.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", wrapper.to_str().unwrap()])
        .status()
        .unwrap();
    let _a = Agent::start(&ns, "studio", &pods[0], "127.0.0.1", None);
    let b = Agent::start(&ns, "studio", &pods[1], "127.0.0.2", wrapper.to_str());
    kubectl_wait_ready(&ns, "studio");
    // Ready means live somewhere; wait until it is live on both pods.
    wait_for(CONVERGE, "cam1 live on both pods", || {
        let obj = ns.get("wegress", "studio")?;
        (stream(&obj, "cam1")?["readyPods"] == "2/2").then_some(())
    });
    assert_eq!(live_column(&ns, "studio"), "1/1");

    // Kill the second pod's FFmpeg; it cannot come back.
    std::fs::write(&blocked, "").unwrap();
    let ffmpeg = wait_for(CONVERGE, "agent b's FFmpeg", || {
        b.ffmpeg_pids().first().copied()
    });
    let killed = Command::new("kill")
        .args(["-KILL", &ffmpeg.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let obj = wait_for(CONVERGE, "cam1 Degraded", || {
        let obj = ns.get("wegress", "studio")?;
        (stream(&obj, "cam1")?["state"] == "Degraded").then_some(obj)
    });
    let cam1 = stream(&obj, "cam1").unwrap();
    assert_eq!(cam1["readyPods"], "1/2", "{cam1}");
    assert!(
        cam1["message"].as_str().unwrap().contains(&pods[1]),
        "names the pod: {cam1}"
    );
    let degraded = condition(&obj, "Degraded").unwrap();
    assert_eq!(degraded["status"], "True", "{degraded}");
    assert_eq!(degraded["reason"], "StreamsDegraded", "{degraded}");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .starts_with("cam1 Degraded"),
        "{degraded}"
    );
    assert_eq!(
        condition(&obj, "Ready").unwrap()["status"],
        "True",
        "still live on one pod"
    );
    assert_eq!(live_column(&ns, "studio"), "0/1");
    // FFmpeg's last line reaches the status once the pod reports why.
    wait_for(CONVERGE, "the reason in the status", || {
        let obj = ns.get("wegress", "studio")?;
        let cam1 = stream(&obj, "cam1")?;
        (cam1["lastError"] == "input gone (blocked by the test)").then_some(())
    });
    wait_for(CONVERGE, "a ProcessDegraded event", || {
        events_of(&ns, "studio")
            .iter()
            .any(|(r, _)| r == "ProcessDegraded")
            .then_some(())
    });
    capture_kubectl(&ns, "studio", "degraded");

    // The input comes back: the next restart plays again on both pods.
    std::fs::remove_file(&blocked).unwrap();
    wait_for(CONVERGE, "cam1 Running on both pods", || {
        let obj = ns.get("wegress", "studio")?;
        let cam1 = stream(&obj, "cam1")?;
        (cam1["state"] == "Running" && cam1["readyPods"] == "2/2").then_some(())
    });
    assert_eq!(live_column(&ns, "studio"), "1/1");
    let obj = ns.get("wegress", "studio").unwrap();
    assert_eq!(condition(&obj, "Degraded").unwrap()["status"], "False");
    wait_for(CONVERGE, "a ProcessRecovered event", || {
        events_of(&ns, "studio")
            .iter()
            .any(|(r, _)| r == "ProcessRecovered")
            .then_some(())
    });
    capture_kubectl(&ns, "studio", "degraded-recovered");
}

// ---------------------------------------------------------------------------------------------
// Scale check: a benchmark that prints figures, not a pass/fail test of speed.
//   scripts/test-cluster scale_500 --ignored --nocapture

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored"]
fn scale_500_resources_benchmark() {
    const N: usize = 500;
    let ns = Namespace::new("scale");
    let op = Operator::start(&ns, None);
    let manifests: String = (0..N)
        .map(|i| {
            format!(
                "---\n{}",
                egress(&format!("s{i:03}"), 8189, &["cam1", "cam2"])
            )
        })
        .collect();
    let t0 = Instant::now();
    ns.apply(&manifests);
    let applied = t0.elapsed();
    let ready = || {
        let list = kubectl_json(&["get", "wegress", "-n", &ns.0]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| {
                // Kwok pods run no agents, so no process is live: reconciled is what counts.
                o["status"]["observedGeneration"] == o["metadata"]["generation"]
                    && condition(o, "Reconciled").is_some_and(|c| c["status"] == "True")
                    && o["status"]["readyReplicas"] == 1
            })
            .count()
    };
    wait_for(
        Duration::from_secs(1200),
        "all resources reconciled",
        || {
            let n = ready();
            println!("{:>6.1}s  {n}/{N} reconciled", t0.elapsed().as_secs_f64());
            (n == N).then_some(())
            // (polling every 250 ms plus the list itself)
        },
    );
    let all_ready = t0.elapsed();
    let (reconciles, writes) = (op.metric(RECONCILES), op.metric(WRITES));
    std::thread::sleep(Duration::from_secs(60));
    let (reconciles_q, writes_q) = (op.metric(RECONCILES), op.metric(WRITES));
    println!("--- scale: {N} WebRTCEgress objects (2 processes each), kwok pods");
    println!("apply of all {N}: {applied:?}; all reconciled after {all_ready:?}");
    println!(
        "reconciles: {reconciles} ({:.2}/object); API writes: {writes} ({:.2}/object)",
        reconciles / N as f64,
        writes / N as f64
    );
    println!(
        "operator peak RSS (VmHWM): {} MiB",
        vm_hwm_kib(op.proc.pid()) / 1024
    );
    println!(
        "quiet minute: {} writes, {} reconciles",
        writes_q - writes,
        reconciles_q - reconciles
    );
    assert_eq!(writes_q, writes, "writes during the quiet minute");
}

// ---------------------------------------------------------------------------------------------
// Tests: scaling, capacity and drain

#[test]
fn kubectl_scale_and_an_autoscaler_drive_the_replicas() {
    let ns = Namespace::new("scale");
    let _op = Operator::start(&ns, None);
    ns.apply(&egress("studio", free_udp_port(), &["cam1"]));
    wait_converged(&ns, "studio", &["cam1"]);

    kubectl(&["scale", "-n", &ns.0, "wegress/studio", "--replicas=3"]);
    let obj = wait_for(CONVERGE, "3 replicas in the status", || {
        let obj = ns.get("wegress", "studio")?;
        let status = &obj["status"];
        (status["replicas"] == 3 && status["readyReplicas"] == 3).then_some(obj)
    });
    assert_eq!(obj["spec"]["replicas"], 3);
    let deployment = ns.get("deployment", "studio-egress").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let scale = kubectl_json(&["get", "-n", &ns.0, "wegress/studio", "--subresource=scale"]);
    assert_eq!(scale["kind"], "Scale", "{scale}");
    assert_eq!(scale["spec"]["replicas"], 3, "{scale}");
    assert_eq!(scale["status"]["replicas"], 3, "{scale}");
    let selector = scale["status"]["selector"].as_str().unwrap_or_default();
    assert!(
        selector.contains("app.kubernetes.io/instance=studio"),
        "{scale}"
    );
    // The selector finds exactly the egress pods.
    let pods = kubectl_json(&["get", "pods", "-n", &ns.0, "-l", selector]);
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(3));

    // An autoscaler can drive it: the controller-manager's HPA reads and writes the scale
    // subresource (AbleToScale); with no metrics server here it cannot compute a target.
    ns.apply(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: studio\n\
         spec:\n  scaleTargetRef:\n    apiVersion: webrtc.dragonfork.io/v1alpha1\n    \
         kind: WebRTCEgress\n    name: studio\n  minReplicas: 1\n  maxReplicas: 4\n  metrics:\n  \
         - type: Resource\n    resource:\n      name: cpu\n      target:\n        \
         type: Utilization\n        averageUtilization: 70\n",
    );
    // The controller-manager learns of a CRD installed after it started on its next discovery
    // refresh, so a first FailedGetScale may come before True.
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(hpa) = ns.get("hpa", "studio")
            && let Some(able) = hpa["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "AbleToScale"))
        {
            last = able.clone();
        }
        if last["status"] == "True" {
            break;
        }
        assert!(Instant::now() < deadline, "HPA never AbleToScale: {last}");
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("HPA: {last}");
    // Scaling in through the subresource reaches the pods as well.
    kubectl(&["scale", "-n", &ns.0, "wegress/studio", "--replicas=2"]);
    wait_for(CONVERGE, "2 replicas in the status", || {
        let obj = ns.get("wegress", "studio")?;
        (obj["status"]["replicas"] == 2).then_some(())
    });
}

async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn refused_with(url: &str) -> String {
    subscribe(ViewerOptions::new(url))
        .await
        .err()
        .expect("the viewer is refused")
        .to_string()
}

async fn keeps_playing(viewer: &webrtc_egress::client::Viewer, seconds: u32) {
    for _ in 0..seconds {
        let before = viewer.stats().media_packets();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = viewer.stats().media_packets();
        assert!(after > before + 10, "media stalled: {before} -> {after}");
        assert!(!viewer.stats().closed_by_server);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_agent_sends_newcomers_to_its_peer_and_a_draining_agent_keeps_its_viewer() {
    let ns = Namespace::new("capacity");
    let _op = Operator::start(&ns, None);
    let udp = free_udp_port();
    let yaml = egress("studio", udp, &["cam1"])
        .replace("replicas: 1", "replicas: 2")
        .replace("spec:\n", "spec:\n  limits:\n    maxViewersPerPod: 2\n");
    ns.apply(&yaml);
    let pods = ready_pods(&ns, "studio", 2);
    let a = Agent::start_with(&ns, "studio", &pods[0], "127.0.0.1", None, &[]);
    let mut b = Agent::start_with(
        &ns,
        "studio",
        &pods[1],
        "127.0.0.2",
        None,
        &["--drain-seconds=600"],
    );
    wait_for(CONVERGE, "cam1 live on both pods", || {
        let obj = ns.get("wegress", "studio")?;
        (stream(&obj, "cam1")?["readyPods"] == "2/2").then_some(())
    });
    let (url_a, url_b) = (
        format!("{}/whep/cam1", a.base),
        format!("{}/whep/cam1", b.base),
    );

    // Agent a takes two viewers — the cap that came from the resource through the operator —
    // then refuses the third and reports not-ready, so the Service stops sending it newcomers.
    let first = common::playing_viewer(url_a.clone()).await;
    let second = common::playing_viewer(url_a.clone()).await;
    let refused = refused_with(&url_a).await;
    println!("third viewer on the full agent: {refused}");
    assert!(
        refused.contains("503") && refused.contains("limit of 2 viewers"),
        "{refused}"
    );
    let (status, reason) = get_text(&format!("{}/readyz", a.base)).await;
    assert_eq!((status, reason.trim()), (503, "full: 2/2 viewers"));
    assert_eq!(get_text(&format!("{}/readyz", b.base)).await.0, 200);
    // The newcomer lands on the agent with room; a's viewers play on.
    let third = common::playing_viewer(url_b.clone()).await;
    keeps_playing(&first, 2).await;
    keeps_playing(&second, 2).await;

    // Agent b is terminated (a rollout): it turns not-ready, refuses new viewers at once, and
    // keeps its viewer for as long as it stays.
    b.proc.terminate();
    let terminated = Instant::now();
    let readyz = format!("{}/readyz", b.base);
    let draining = common::wait_until(Duration::from_secs(10), "b not ready", || async {
        let (status, body) = get_text(&readyz).await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(draining.contains("draining"), "{draining}");
    let refused = refused_with(&url_b).await;
    println!("new viewer on the draining agent: {refused}");
    assert!(
        refused.contains("503") && refused.contains("draining"),
        "{refused}"
    );
    keeps_playing(&third, 5).await;
    assert!(b.proc.running(), "b left before its viewer did");
    println!(
        "drained viewer kept playing {:?} after SIGTERM",
        terminated.elapsed()
    );
    // Its last viewer leaves: b exits now, not at the end of its 600 s drain.
    assert_eq!(third.delete().await.unwrap(), 200);
    let left = Instant::now();
    let status = common::wait_until(Duration::from_secs(15), "b exits", || {
        let status = b.proc.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    println!("b exited {:?} after its last viewer left", left.elapsed());
    assert!(status.success(), "{status}");
    first.close().await;
    second.close().await;
}

// ---------------------------------------------------------------------------------------------
// Tests: secrets out of the spec, scoped viewer tokens

/// The chart's agent RBAC (templates/agent.yaml, rendered by helm) for `ns`: the grants the
/// agents get in a real install, applied as they come.
fn apply_chart_agent_rbac(ns: &Namespace) {
    let helm = kubeconfig().with_file_name("bin").join("helm");
    let out = Command::new(&helm)
        .args([
            "template",
            &ns.0,
            "charts/webrtc-egress",
            "--show-only",
            "templates/agent.yaml",
            "--set",
            &format!("agent.namespaces={{{}}}", ns.0),
            "--set",
            "agent.serviceAccount.create=false",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", helm.display()));
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ns.apply(&String::from_utf8(out.stdout).unwrap());
}

/// A kubeconfig that authenticates as the agents' ServiceAccount of `ns` (a TokenRequest
/// token), so that an agent runs with exactly the permissions the chart grants it.
fn agent_kubeconfig(ns: &Namespace) -> PathBuf {
    let token = kubectl(&[
        "create",
        "token",
        "webrtc-egress-agent",
        "-n",
        &ns.0,
        "--duration=1h",
    ]);
    let admin = kubectl_json(&["config", "view", "--raw", "--minify", "--flatten"]);
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "agent", "user": {"token": token.trim()}}],
        "contexts": [{"name": "agent", "context": {"cluster": "e2e", "user": "agent"}}],
        "current-context": "agent",
    });
    let path = log_dir().join(format!("kubeconfig-agent-{}", ns.0));
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

const HS256_KEY: &str = "an e2e HS256 key of at least 32 bytes";

fn viewer_jwt(processes: &[&str]) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    let claims = serde_json::json!({
        "exp": get_current_timestamp() + 600,
        "processes": processes,
    });
    let key = EncodingKey::from_secret(HS256_KEY.as_bytes()).unwrap();
    encode(&Header::default(), &claims, &key).unwrap()
}

/// POST of a Chromium offer: status, the `Link` headers, and the session's URL.
async fn offer_with(url: &str, bearer: Option<&str>) -> (u16, Vec<String>, Option<String>) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/sdp")
        .body(include_str!("fixtures/chromium-offer.sdp"));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.expect("POST offer");
    let header = |name: &str| -> Vec<String> {
        response
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    let (links, location) = (header("link"), header("location").pop());
    (response.status().as_u16(), links, location)
}

/// A TURN password and the HS256 key of viewer tokens live in Secrets the resource names:
/// `kubectl apply` refuses a password in the spec, nothing the operator writes (ConfigMap, pod
/// spec) holds either value, and the agent, running with nothing but the chart's RBAC, reads
/// both through the API server: players get the password in the WHEP `Link` header (again
/// after the Secret changes and the resource is edited), and viewers need a JWT that names
/// their process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reads_the_named_secrets_with_the_charts_rbac_and_checks_viewer_jwts() {
    let ns = Namespace::new("secrets");
    apply_chart_agent_rbac(&ns);
    let agent_sa = format!("system:serviceaccount:{}:webrtc-egress-agent", ns.0);
    let can_i = |verb: &str, namespace: &str| {
        let out = kubectl_raw(
            &[
                "auth", "can-i", verb, "secrets", "-n", namespace, "--as", &agent_sa,
            ],
            None,
        );
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can_i("get", &ns.0), "agents get Secrets of their namespace");
    for verb in ["list", "watch", "create", "update", "patch", "delete"] {
        assert!(!can_i(verb, &ns.0), "agents may not {verb} Secrets");
    }
    assert!(!can_i("get", "default"), "nor get them elsewhere");

    let secret = |name: &str, key: &str, value: &str| {
        let yaml = kubectl(&[
            "create",
            "secret",
            "generic",
            name,
            "-n",
            &ns.0,
            &format!("--from-literal={key}={value}"),
            "--dry-run=client",
            "-o",
            "yaml",
        ]);
        ns.apply(&yaml);
    };
    secret("turn", "password", "turn-pass-1");
    secret("viewer-jwt", "hs256", HS256_KEY);

    let udp = free_udp_port();
    let manifest = |ids: &[&str], ice: &str| {
        egress("secured", udp, ids).replace(
            "  webrtc:\n",
            &format!(
                "  auth: {{jwt: {{secretRef: {{name: viewer-jwt, key: hs256}}}}}}\n  webrtc:\n\
                 \x20   iceServers: [{{urls: [\"turn:turn.example.org:3478\"], username: u, {ice}}}]\n"
            ),
        )
    };
    // A password in the spec is refused, and the message says where it goes instead.
    let refused = kubectl_raw(
        &["apply", "-n", &ns.0, "-f", "-"],
        Some(&manifest(&["cam1"], "credential: turn-pass-1")),
    );
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "plain credential accepted");
    assert!(
        message.contains("spec.webrtc.iceServers[0].credential")
            && message.contains("credentialSecretRef"),
        "{message}"
    );

    let secret_ref = "credentialSecretRef: {name: turn, key: password}";
    let _op = Operator::start(&ns, None);
    ns.apply(&manifest(&["cam1", "cam2"], secret_ref));
    wait_converged(&ns, "secured", &["cam1", "cam2"]);
    let deployment = ns.get("deployment", "secured-egress").unwrap();
    let configmap = ns.get("configmap", "secured-streams").unwrap();
    for (what, object) in [("Deployment", &deployment), ("ConfigMap", &configmap)] {
        let text = object.to_string();
        assert!(
            !text.contains("turn-pass") && !text.contains(HS256_KEY),
            "{what} holds a secret value: {text}"
        );
    }

    // The agent runs with the operator's arguments (the HS256 key named as viewer-jwt/hs256),
    // this test's addresses, and the ServiceAccount's own credentials.
    let listen = format!("127.0.0.1:{}", free_tcp_port());
    let mut args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .filter(|a| a != "0.0.0.0:8080" && a != "--listen" && !a.starts_with("--drain-seconds"))
        .collect();
    assert!(
        args.contains(&"--jwt-secret-ref=viewer-jwt/hs256".to_owned()),
        "{args:?}"
    );
    args.extend([
        "--listen".into(),
        listen.clone(),
        "--udp-bind".into(),
        "127.0.0.1".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kubeconfig = agent_kubeconfig(&ns).to_str().unwrap().to_owned();
    let mut agent = Proc::spawn_with_env("agent-secrets", &args, &[("KUBECONFIG", kubeconfig)]);
    let base = format!("http://{listen}");
    let deadline = Instant::now() + CONVERGE;
    loop {
        let streams = agent_streams(&base).await;
        let live = streams["streams"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["id"] == "cam1" && s["live"] == true));
        if live {
            break;
        }
        assert!(agent.running(), "agent exited:\n{}", agent.log_tail());
        assert!(Instant::now() < deadline, "cam1 never live: {streams}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let cam1 = format!("{base}/whep/cam1");
    let for_cam1 = viewer_jwt(&["cam1"]);
    assert_eq!(offer_with(&cam1, None).await.0, 401);
    assert_eq!(offer_with(&cam1, Some("not-a-jwt")).await.0, 401);
    assert_eq!(
        offer_with(&format!("{base}/whep/cam2"), Some(&for_cam1))
            .await
            .0,
        403
    );
    let (status, links, session) = offer_with(&cam1, Some(&for_cam1)).await;
    assert_eq!(status, 201, "{}", agent.log_tail());
    assert!(
        links
            .iter()
            .any(|l| l.contains("username=\"u\"; credential=\"turn-pass-1\"")),
        "TURN password from the Secret: {links:?}"
    );
    let delete = reqwest::Client::new()
        .delete(format!("{base}{}", session.unwrap()))
        .bearer_auth(&for_cam1)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status().as_u16(), 200);

    // A real viewer plays with its scoped token, as the player page sends it.
    let mut opts = ViewerOptions::new(cam1.clone());
    opts.token = Some(for_cam1.clone());
    let viewer = subscribe(opts).await.expect("viewer with a JWT");
    viewer
        .wait_for(has_av, Duration::from_secs(30))
        .await
        .expect("H.264 IDR and Opus");
    viewer.close().await;

    // The password changes, then the resource: the agent reads the Secret again.
    secret("turn", "password", "turn-pass-2");
    ns.apply(&manifest(&["cam1"], secret_ref));
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (status, links, session) = offer_with(&cam1, Some(&for_cam1)).await;
        if let Some(session) = session {
            let url = format!("{base}{session}");
            let _ = reqwest::Client::new()
                .delete(url)
                .bearer_auth(&for_cam1)
                .send()
                .await;
        }
        if status == 201 && links.iter().any(|l| l.contains("turn-pass-2")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new TURN password never offered: {links:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(agent.running(), "agent restarted");
}
