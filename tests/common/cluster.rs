//! The local control plane of `tests/cluster/up` as the cluster tests use it: kubectl, a
//! namespace per test, WebRTCEgress manifests, and the operator and agents as processes.
//! Shared by `e2e_cluster.rs` and `e2e_outage.rs`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{BIN, free_tcp_port};

pub const CRD: &str = "webrtcegresses.webrtc.dragonfork.io";
/// Generous: the machine is shared and the control plane is slow under load.
pub const CONVERGE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Cluster access

/// The kubeconfig of the test cluster; fails loudly when none is configured.
pub fn kubeconfig() -> PathBuf {
    if let Ok(path) = std::env::var("WEBRTC_EGRESS_KUBECONFIG") {
        return PathBuf::from(path);
    }
    if let Ok(dir) = std::env::var("WEBRTC_EGRESS_CLUSTER_DIR") {
        return PathBuf::from(dir).join("kubeconfig");
    }
    panic!(
        "no test cluster: set WEBRTC_EGRESS_KUBECONFIG (or WEBRTC_EGRESS_CLUSTER_DIR). \
         Run scripts/test-cluster, or `tests/cluster/up DIR && source DIR/env` first"
    );
}

/// kubectl next to the cluster (DIR/bin), else the one on PATH.
pub fn kubectl_bin() -> PathBuf {
    let beside = kubeconfig().with_file_name("bin").join("kubectl");
    if beside.exists() {
        beside
    } else {
        PathBuf::from("kubectl")
    }
}

pub fn kubectl_raw(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(kubectl_bin());
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().expect("kubectl output")
}

/// Runs kubectl, panicking with its stderr when it fails; returns stdout.
pub fn kubectl(args: &[&str]) -> String {
    let out = kubectl_raw(args, None);
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn kubectl_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(&all)).expect("kubectl JSON")
}

/// The object as JSON, or None when it does not exist.
pub fn get(ns: &str, kind: &str, name: &str) -> Option<Value> {
    let out = kubectl_raw(
        &[
            "get",
            kind,
            name,
            "-n",
            ns,
            "-o",
            "json",
            "--ignore-not-found",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    (!text.trim().is_empty()).then(|| serde_json::from_str(&text).unwrap())
}

/// Polls `probe` every 250 ms until it yields a value or `timeout` passes (then panics).
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Installs `crds/` (server-side apply, as a user would) once per test binary.
pub fn install_crds() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", dir]);
        kubectl(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{CRD}"),
            "--timeout=60s",
        ]);
    });
}

/// A fresh namespace per test, deleted (without waiting) when dropped.
pub struct Namespace(pub String);

impl Namespace {
    pub fn new(prefix: &str) -> Self {
        install_crds();
        let name = format!("e2e-{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        kubectl(&["create", "namespace", &name]);
        // The egress pods run as this ServiceAccount, which the chart creates per namespace
        // (`agent.serviceAccount`); without it the ReplicaSet cannot create pods.
        kubectl(&[
            "create",
            "serviceaccount",
            "webrtc-egress-agent",
            "-n",
            &name,
        ]);
        Namespace(name)
    }
    pub fn apply(&self, yaml: &str) {
        let out = kubectl_raw(&["apply", "-n", &self.0, "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    pub fn get(&self, kind: &str, name: &str) -> Option<Value> {
        get(&self.0, kind, name)
    }
    /// Items of `kind` carrying the instance label of `name`.
    pub fn children(&self, kind: &str, name: &str) -> Vec<Value> {
        let list = kubectl_json(&[
            "get",
            kind,
            "-n",
            &self.0,
            "-l",
            &format!("app.kubernetes.io/instance={name}"),
        ]);
        list["items"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl_raw(&["delete", "namespace", &self.0, "--wait=false"], None);
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests

/// A WebRTCEgress with lavfi test-pattern processes (video + Opus audio).
pub fn egress(name: &str, udp_port: u16, ids: &[&str]) -> String {
    egress_replicas(name, udp_port, 1, ids)
}

/// [`egress`] with `replicas` egress pods.
pub fn egress_replicas(name: &str, udp_port: u16, replicas: u32, ids: &[&str]) -> String {
    let mut yaml = format!(
        "apiVersion: webrtc.dragonfork.io/v1alpha1\nkind: WebRTCEgress\nmetadata:\n  name: {name}\n\
         spec:\n  replicas: {replicas}\n  webrtc:\n    udpPort: {udp_port}\n  processes:\n"
    );
    for id in ids {
        yaml.push_str(&format!(
            "    - id: {id}\n      inputs:\n\
             \x20       - address: \"testsrc2=size=320x180:rate=15\"\n          options: [\"-re\", \"-f\", \"lavfi\"]\n\
             \x20       - address: \"sine=frequency=440:sample_rate=48000\"\n          options: [\"-re\", \"-f\", \"lavfi\"]\n\
             \x20     video: {{codec: h264}}\n      audio: {{codec: opus}}\n"
        ));
    }
    yaml
}

pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

pub fn stream_ids(obj: &Value) -> Vec<String> {
    let mut ids: Vec<String> = obj["status"]["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Waits until the operator has observed the current generation, applied it (Reconciled=True),
/// reports exactly `ids` as streams and sees its pods ready (`readyReplicas` = `replicas`);
/// returns the resource. Whether the processes are live is the agents' to report: kwok pods
/// run none, so Ready needs an [`Agent`] per pod.
pub fn wait_converged(ns: &Namespace, name: &str, ids: &[&str]) -> Value {
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for(CONVERGE, &format!("{name} converged on {ids:?}"), || {
        let obj = ns.get("wegress", name)?;
        let current = obj["status"]["observedGeneration"] == obj["metadata"]["generation"];
        let applied = condition(&obj, "Reconciled").is_some_and(|c| c["status"] == "True");
        let pods = obj["status"]["readyReplicas"] == obj["spec"]["replicas"];
        (current && applied && pods && stream_ids(&obj) == want).then_some(obj)
    })
}

/// `kubectl wait --for=condition=Ready`, as a user waits until every process is live.
pub fn kubectl_wait_ready(ns: &Namespace, name: &str) {
    kubectl(&[
        "wait",
        "-n",
        &ns.0,
        "--for=condition=Ready",
        &format!("wegress/{name}"),
        "--timeout=90s",
    ]);
}

/// The names of `n` ready, not terminating egress pods of `name` (kwok runs them), sorted.
pub fn ready_pods(ns: &Namespace, name: &str, n: usize) -> Vec<String> {
    wait_for(CONVERGE, &format!("{n} ready pods of {name}"), || {
        let mut names: Vec<String> = ns
            .children("pod", name)
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        (names.len() == n).then_some(names)
    })
}

/// The stream `id` of the resource's status.
pub fn stream<'a>(obj: &'a Value, id: &str) -> Option<&'a Value> {
    obj["status"]["streams"]
        .as_array()?
        .iter()
        .find(|s| s["id"] == id)
}

/// `kubectl get wegress NAME`: the header and the row, split into columns.
pub fn table_row(ns: &Namespace, name: &str) -> (String, Vec<String>, Vec<String>) {
    let table = kubectl(&["get", "wegress", name, "-n", &ns.0]);
    let mut lines = table.lines();
    let columns = |line: Option<&str>| -> Vec<String> {
        line.unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let header = columns(lines.next());
    let row = columns(lines.next());
    (table, header, row)
}

/// The LIVE column of `kubectl get wegress NAME`.
pub fn live_column(ns: &Namespace, name: &str) -> String {
    let (table, header, row) = table_row(ns, name);
    let at = header
        .iter()
        .position(|h| h == "LIVE")
        .unwrap_or_else(|| panic!("no LIVE column:\n{table}"));
    row.get(at).cloned().unwrap_or_default()
}

/// Reasons and notes of the events recorded against `wegress/name`.
pub fn events_of(ns: &Namespace, name: &str) -> Vec<(String, String)> {
    let events = kubectl_json(&[
        "get",
        "events.events.k8s.io",
        "-n",
        &ns.0,
        "--field-selector",
        &format!("regarding.name={name}"),
    ]);
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Prints what a user would look at and keeps it under target/tmp/e2e_cluster.
pub fn capture_kubectl(ns: &Namespace, name: &str, label: &str) -> String {
    let get = kubectl(&["get", "wegress", "-n", &ns.0]);
    let describe = kubectl(&["describe", "wegress", name, "-n", &ns.0]);
    let text =
        format!("$ kubectl get wegress\n{get}\n$ kubectl describe wegress {name}\n{describe}");
    println!("---- {label}\n{text}");
    std::fs::write(log_dir().join(format!("kubectl-{label}.txt")), &text).unwrap();
    describe
}

// ---------------------------------------------------------------------------------------------
// Operator and agent processes

pub fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e_cluster");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `webrtc-egress` subcommand as a child process with the cluster's KUBECONFIG; output goes
/// to a log file under target/tmp; SIGTERM (then SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(label: &str, args: &[&str]) -> Proc {
        Self::spawn_with_env(label, args, &[])
    }
    pub fn spawn_with_env(label: &str, args: &[&str], env: &[(&str, String)]) -> Proc {
        let log = log_dir().join(format!("{label}-{}.log", rand::random::<u32>()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            // Ours first, so that a test can override it (an agent with a ServiceAccount's).
            .env("KUBECONFIG", kubeconfig())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("HOSTNAME", "e2e")
            .env("RUST_LOG", "info,rtc=error,rtc_ice=error,kube=warn")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn webrtc-egress");
        println!("{label}: pid {}, log {}", child.id(), log.display());
        Proc { child, log }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    pub fn kill_hard(&mut self) {
        super::sigkill(&mut self.child);
    }
    /// SIGTERM, as the kubelet stops a pod; the process drains and exits on its own.
    pub fn terminate(&self) {
        super::sigterm(&self.child);
    }
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        super::stop_gracefully(&mut self.child);
    }
}

pub struct Operator {
    pub proc: Proc,
    pub http: String,
}

impl Operator {
    /// An operator watching only `ns`; `lease` turns leader election on with that Lease name.
    pub fn start(ns: &Namespace, lease: Option<&str>) -> Operator {
        let port = free_tcp_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["operator", "--listen", &listen, "--namespace", &ns.0];
        let lease_flags;
        match lease {
            Some(name) => {
                lease_flags = [
                    "--leader-election=true",
                    "--lease-name",
                    name,
                    "--lease-namespace",
                    &ns.0,
                ];
                args.extend(lease_flags);
            }
            None => args.push("--leader-election=false"),
        }
        let op = Operator {
            proc: Proc::spawn("operator", &args),
            http: format!("http://{listen}"),
        };
        let mut op = op;
        wait_for(Duration::from_secs(30), "operator /healthz", || {
            assert!(
                op.proc.running(),
                "operator exited:\n{}",
                op.proc.log_tail()
            );
            http_get(&format!("{}/healthz", op.http)).filter(|(s, _)| *s == 200)
        });
        op
    }
    pub fn identity(&self) -> String {
        format!("e2e-{}", self.proc.pid())
    }
    /// Sum of a metric's samples (all label sets) from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(&format!("{}/metrics", self.http)).expect("operator /metrics");
        metric_sum(&body, name)
    }
}

/// An agent standing for one kwok pod: `webrtc-egress agent` with POD_NAME/POD_NAMESPACE set
/// as the downward API sets them, so it reports on that pod. Each agent binds its own loopback
/// address for media, as pods have their own IPs.
pub struct Agent {
    pub proc: Proc,
    /// Its HTTP base URL (WHEP, `/readyz`, `/api/v1/streams`).
    pub base: String,
}

impl Agent {
    pub fn start(
        ns: &Namespace,
        name: &str,
        pod: &str,
        udp_bind: &str,
        ffmpeg: Option<&str>,
    ) -> Agent {
        Self::start_with(ns, name, pod, udp_bind, ffmpeg, &[])
    }

    /// [`Agent::start`] with more arguments, as the Deployment passes `--drain-seconds`.
    pub fn start_with(
        ns: &Namespace,
        name: &str,
        pod: &str,
        udp_bind: &str,
        ffmpeg: Option<&str>,
        extra: &[&str],
    ) -> Agent {
        let listen = format!("127.0.0.1:{}", free_tcp_port());
        let mut args = vec![
            "agent",
            "--name",
            name,
            "--listen",
            &listen,
            "--udp-bind",
            udp_bind,
        ];
        args.extend(extra);
        let mut extra_env = vec![
            ("POD_NAME", pod.to_owned()),
            ("POD_NAMESPACE", ns.0.clone()),
        ];
        if let Some(ffmpeg) = ffmpeg {
            extra_env.push(("WEBRTC_EGRESS_FFMPEG", ffmpeg.to_owned()));
        }
        Agent {
            proc: Proc::spawn_with_env(&format!("agent-{pod}"), &args, &extra_env),
            base: format!("http://{listen}"),
        }
    }

    /// Pids of the FFmpeg processes this agent runs (its children named ffmpeg).
    pub fn ffmpeg_pids(&self) -> Vec<u32> {
        let pid = self.proc.pid();
        let mut pids = vec![];
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids.retain(|child| {
            std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|c| c.trim() == "ffmpeg")
        });
        pids
    }
}

pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Blocking GET on loopback: (status, body), or None when the connection fails.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let resp = reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?;
            let status = resp.status().as_u16();
            Some((status, resp.text().await.unwrap_or_default()))
        })
    })
    .join()
    .unwrap()
}

pub const WRITES: &str = "webrtc_egress_operator_writes_total";
pub const RECONCILES: &str = "webrtc_egress_operator_reconciles_total";
