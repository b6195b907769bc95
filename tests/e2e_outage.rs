//! Control-plane failures on the local control plane of `tests/cluster/up`: the API server, or
//! etcd behind it, gone for a minute while two agents serve viewers; and the operator SIGKILLed
//! in the middle of a burst of edits.
//!
//! Run by `scripts/test-cluster` after `e2e_cluster`, on the same cluster: these tests stop and
//! restart its components (as `tests/cluster/up` started them, through
//! `tests/cluster/component`), so they run one at a time and after everything else. By hand:
//!   tests/cluster/up /tmp/c && source /tmp/c/env
//!   cargo test --test e2e_outage -- --test-threads=1 --nocapture

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::free_udp_port;
use serde_json::Value;
use webrtc_egress::client::{Viewer, ViewerOptions, subscribe};

/// How long a component stays down.
const OUTAGE: Duration = Duration::from_secs(60);
/// After convergence, how long nothing of ours may write.
const QUIET: Duration = Duration::from_secs(20);
/// Writes of ours allowed from the restart until converged on the edit made right after it:
/// the edit itself costs a ConfigMap apply, a few status writes and events, and each agent's
/// report of the new process starting and running; a re-list that rewrote everything, or a
/// retry storm, costs many more.
const MAX_WRITES_AFTER_RECOVERY: usize = 25;
/// Warnings and errors one process may log over the whole outage: one when the API goes away,
/// not one per retry (nor per watch).
const MAX_OUTAGE_LOG_LINES: usize = 1;

/// The cluster's directory (what `tests/cluster/up DIR` made).
fn cluster_dir() -> PathBuf {
    match std::env::var("WEBRTC_EGRESS_CLUSTER_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => kubeconfig().parent().unwrap().to_path_buf(),
    }
}

/// `tests/cluster/component DIR stop|start NAME`.
fn component(action: &str, name: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/component");
    let status = Command::new(script)
        .arg(cluster_dir())
        .args([action, name])
        .status()
        .expect("run tests/cluster/component");
    assert!(status.success(), "component {action} {name} failed");
}

fn api_ready() -> bool {
    kubectl_raw(&["get", "--raw", "/readyz", "--request-timeout=5s"], None)
        .status
        .success()
}

/// Runs blocking work (kubectl, the component script, sleeps) off the runtime's workers, so
/// that the viewers and the gap watch keep running meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Watches viewers' packet arrival times and keeps the largest gap of each.
struct GapWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Duration>>,
}

impl GapWatch {
    fn start(viewers: Vec<Arc<Viewer>>) -> GapWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut last: Vec<Option<Instant>> =
                    viewers.iter().map(|v| v.stats().last_packet_at).collect();
                let mut largest = vec![Duration::ZERO; viewers.len()];
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    for (i, v) in viewers.iter().enumerate() {
                        let now = v.stats().last_packet_at;
                        let gap = match (last[i], now) {
                            (Some(a), Some(b)) if b > a => b - a,
                            // Nothing new yet: the gap so far counts too.
                            (Some(a), _) => a.elapsed(),
                            _ => Duration::ZERO,
                        };
                        largest[i] = largest[i].max(gap);
                        if now > last[i] {
                            last[i] = now;
                        }
                    }
                }
                largest
            }
        });
        GapWatch { stop, task }
    }

    async fn finish(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Lines of `log` from byte `from` on that are warnings or errors, without colours.
fn warnings_since(log: &std::path::Path, from: usize) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let ansi = regex::Regex::new("\x1b\\[[0-9;]*m").unwrap();
    let plain = ansi.replace_all(text.get(from..).unwrap_or_default(), "");
    plain
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

fn log_len(proc: &Proc) -> usize {
    std::fs::metadata(&proc.log).map_or(0, |m| m.len() as usize)
}

/// One accepted write in the API server's audit log.
#[derive(Debug)]
struct Write {
    who: String,
    what: String,
}

/// The audit log's lines so far (its length is where "since" starts).
fn audit_lines() -> Vec<String> {
    let text = std::fs::read_to_string(cluster_dir().join("audit.log"))
        .expect("the API server's audit log (tests/cluster/up enables it)");
    text.lines().map(str::to_owned).collect()
}

/// Writes to namespace `ns` accepted since audit line `from`, by anything but the cluster's
/// own components and kubectl (the test's edits): the operator's and the agents'. The
/// leader's Lease renewals (one per 10 s, its heartbeat) are left out too.
fn our_writes_since(ns: &str, from: usize) -> Vec<Write> {
    let others = [
        "kubectl/",
        "kube-controller-manager/",
        "kube-scheduler/",
        "kwok/",
    ];
    audit_lines()
        .iter()
        .skip(from)
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete" && e["objectRef"]["namespace"] == ns)
        .filter(|e| e["objectRef"]["resource"] != "leases")
        .filter(|e| {
            let code = e["responseStatus"]["code"].as_u64().unwrap_or(0);
            (200..300).contains(&code)
        })
        .filter(|e| {
            let agent = e["userAgent"].as_str().unwrap_or_default();
            !others.iter().any(|o| agent.starts_with(o))
        })
        .map(|e| {
            let uri = e["requestURI"].as_str().unwrap_or_default();
            let who = if uri.contains("fieldManager=webrtc-egress-agent") {
                "agent"
            } else {
                "operator"
            };
            let r = &e["objectRef"];
            let resource = match r["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or("")),
                None => r["resource"].as_str().unwrap_or("").to_owned(),
            };
            Write {
                who: who.to_owned(),
                what: format!(
                    "{} {resource} {}",
                    e["verb"].as_str().unwrap_or(""),
                    r["name"].as_str().unwrap_or("")
                ),
            }
        })
        .collect()
}

/// Whether `id` is live on an agent, read from its /api/v1/streams.
async fn live_on(agent_http: &str, id: &str) -> bool {
    let Ok(resp) = reqwest::get(format!("{agent_http}/api/v1/streams")).await else {
        return false;
    };
    let streams: Value =
        serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    streams["streams"]
        .as_array()
        .is_some_and(|a| a.iter().any(|s| s["id"] == id && s["live"] == true))
}

/// Two agents serve a viewer each, the operator runs with leader election as in a cluster;
/// `name` (etcd or apiserver) goes away for [`OUTAGE`] and comes back; an edit made right
/// after must apply, with no process torn down on the way.
async fn outage_of(name: &'static str) {
    let ns = blocking(move || Namespace::new(&format!("outage-{name}"))).await;
    let ns = Arc::new(ns);
    let udp = free_udp_port();
    let op = {
        let ns = ns.clone();
        blocking(move || {
            let op = Operator::start(&ns, Some("outage-operator"));
            ns.apply(&egress_replicas("studio", udp, 2, &["cam1"]));
            op
        })
        .await
    };
    let pods = {
        let ns = ns.clone();
        blocking(move || ready_pods(&ns, "studio", 2)).await
    };
    let agents = [
        Agent::start(&ns, "studio", &pods[0], "127.0.0.1", None),
        Agent::start(&ns, "studio", &pods[1], "127.0.0.2", None),
    ];
    {
        let ns = ns.clone();
        blocking(move || {
            wait_for(CONVERGE, "cam1 live on both pods", || {
                let obj = ns.get("wegress", "studio")?;
                (stream(&obj, "cam1")?["readyPods"] == "2/2").then_some(())
            })
        })
        .await;
    }
    let mut viewers = vec![];
    for agent in &agents {
        let viewer = subscribe(ViewerOptions::new(format!("{}/whep/cam1", agent.base)))
            .await
            .expect("subscribe");
        viewer
            .wait_for(|s| s.idr_seen && s.opus_seen, Duration::from_secs(30))
            .await
            .expect("H.264 keyframe and Opus");
        viewers.push(Arc::new(viewer));
    }
    let ffmpeg_before: Vec<Vec<u32>> = agents.iter().map(Agent::ffmpeg_pids).collect();
    let agent_pids: Vec<u32> = agents.iter().map(|a| a.proc.pid()).collect();
    let logs_from: Vec<usize> = std::iter::once(log_len(&op.proc))
        .chain(agents.iter().map(|a| log_len(&a.proc)))
        .collect();
    let gaps = GapWatch::start(viewers.clone());

    // The outage.
    println!("== stopping {name} for {OUTAGE:?}");
    blocking(move || component("stop", name)).await;
    let down_at = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    let audit_from = blocking(|| audit_lines().len()).await;
    blocking(move || component("start", name)).await;
    blocking(|| {
        wait_for(CONVERGE, "the API server ready again", || {
            api_ready().then_some(())
        })
    })
    .await;
    let recovered_at = Instant::now();
    println!(
        "== {name} back after {:.1}s down; API ready {:.1}s after its restart",
        (recovered_at - down_at).as_secs_f64(),
        (recovered_at - down_at - OUTAGE).as_secs_f64()
    );

    // An edit right after recovery applies: cam2 plays on both agents, the status says so.
    {
        let ns = ns.clone();
        blocking(move || ns.apply(&egress_replicas("studio", udp, 2, &["cam1", "cam2"]))).await;
    }
    let deadline = Instant::now() + CONVERGE;
    for agent in &agents {
        while !live_on(&agent.base, "cam2").await {
            assert!(
                Instant::now() < deadline,
                "cam2 never live on {}:\n{}",
                agent.base,
                agent.proc.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let agents_applied = recovered_at.elapsed();
    {
        let ns = ns.clone();
        blocking(move || {
            wait_converged(&ns, "studio", &["cam1", "cam2"]);
            wait_for(CONVERGE, "cam2 live on both pods", || {
                let obj = ns.get("wegress", "studio")?;
                (stream(&obj, "cam2")?["readyPods"] == "2/2").then_some(())
            });
            kubectl_wait_ready(&ns, "studio");
        })
        .await;
    }
    let converged = recovered_at.elapsed();
    println!(
        "== the edit made on recovery: on both agents after {:.1}s, status converged after {:.1}s",
        agents_applied.as_secs_f64(),
        converged.as_secs_f64()
    );
    let writes_to_converge = {
        let ns = ns.0.clone();
        blocking(move || our_writes_since(&ns, audit_from)).await
    };
    let audit_quiet_from = blocking(|| audit_lines().len()).await;
    tokio::time::sleep(QUIET).await;
    let largest_gaps = gaps.finish().await;

    // What the viewers saw, and what stayed up.
    println!("== largest media gap per viewer: {largest_gaps:?}");
    for (viewer, gap) in viewers.iter().zip(&largest_gaps) {
        let stats = viewer.stats();
        assert!(!stats.closed_by_server, "a viewer was cut");
        // Media flows at 15 fps plus 50 audio packets a second. A data plane that waited on
        // the control plane would stall for the whole minute; the bound leaves room for a
        // loaded machine (gaps of 0.1-1.1 s were seen at load 23 on 2 cores).
        assert!(*gap < Duration::from_secs(5), "media stopped for {gap:?}");
    }
    let ffmpeg_after: Vec<Vec<u32>> = agents.iter().map(Agent::ffmpeg_pids).collect();
    for (before, after) in ffmpeg_before.iter().zip(&ffmpeg_after) {
        for pid in before {
            assert!(after.contains(pid), "FFmpeg {pid} was restarted: {after:?}");
        }
    }
    for (agent, pid) in agents.iter().zip(&agent_pids) {
        assert_eq!(agent.proc.pid(), *pid);
    }
    let mut procs: Vec<&Proc> = vec![&op.proc];
    procs.extend(agents.iter().map(|a| &a.proc));
    for p in &procs {
        let mut child = std::fs::read_to_string(format!("/proc/{}/stat", p.pid()))
            .unwrap_or_default()
            .split_whitespace()
            .nth(2)
            .unwrap_or("X")
            .to_owned();
        child.retain(|c| c != 'Z');
        assert!(
            !child.is_empty(),
            "{} exited:\n{}",
            p.log.display(),
            p.log_tail()
        );
    }

    // Logged once, not per retry.
    let mut too_chatty = vec![];
    for (p, from) in procs.iter().zip(&logs_from) {
        let lines = warnings_since(&p.log, *from);
        println!("== {} warned {} times:", p.log.display(), lines.len());
        for l in &lines {
            println!("   {l}");
        }
        if lines.len() > MAX_OUTAGE_LOG_LINES {
            too_chatty.push(format!("{}: {} lines", p.log.display(), lines.len()));
        }
    }

    // Writes: bounded until converged, none once quiet; children not duplicated.
    println!(
        "== writes of ours from the restart until converged: {}",
        writes_to_converge.len()
    );
    for w in &writes_to_converge {
        println!("   {:<8} {}", w.who, w.what);
    }
    let quiet_writes = {
        let ns = ns.0.clone();
        blocking(move || our_writes_since(&ns, audit_quiet_from)).await
    };
    println!("== writes of ours in the next {QUIET:?}: {quiet_writes:?}");
    {
        let ns = ns.clone();
        blocking(move || {
            for kind in ["configmap", "deployment", "service", "replicaset"] {
                let items = ns.children(kind, "studio");
                assert_eq!(items.len(), 1, "{kind}: {items:#?}");
            }
            let pods = ns.children("pod", "studio");
            assert_eq!(pods.len(), 2, "{pods:#?}");
        })
        .await;
    }
    assert!(too_chatty.is_empty(), "logged per retry: {too_chatty:?}");
    assert!(
        writes_to_converge.len() <= MAX_WRITES_AFTER_RECOVERY,
        "a burst of {} writes after recovery",
        writes_to_converge.len()
    );
    assert!(quiet_writes.is_empty(), "writes once converged");
    for viewer in viewers {
        if let Ok(viewer) = Arc::try_unwrap(viewer) {
            viewer.close().await;
        }
    }
    drop(agents);
    drop(op);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_server_down_for_a_minute_viewers_keep_playing_and_it_converges_quietly() {
    outage_of("apiserver").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_down_for_a_minute_viewers_keep_playing_and_it_converges_quietly() {
    outage_of("etcd").await;
}

/// The operator SIGKILLed in the middle of 100 edits in a row, started again: the children
/// and the status end at the last edit, with nothing duplicated.
#[test]
fn operator_killed_during_a_burst_of_edits_converges_on_the_last() {
    const EDITS: usize = 100;
    let ns = Namespace::new("burst");
    let mut op = Operator::start(&ns, None);
    let udp = free_udp_port();
    ns.apply(&egress_replicas("studio", udp, 1, &["cam0"]));
    wait_converged(&ns, "studio", &["cam0"]);
    let generation = |ns: &Namespace| {
        ns.get("wegress", "studio").unwrap()["metadata"]["generation"]
            .as_i64()
            .unwrap()
    };
    let first = generation(&ns);

    // Edit i names processes p{i} (and, every third edit, a second one), one kubectl call for
    // all so they follow each other as fast as the API server takes them.
    let ids_of = |i: usize| -> Vec<String> {
        let mut ids = vec![format!("p{i}")];
        if i.is_multiple_of(3) {
            ids.push("steady".to_owned());
        }
        ids
    };
    let burst: String = (1..=EDITS)
        .map(|i| {
            let ids = ids_of(i);
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            format!("---\n{}", egress_replicas("studio", udp, 1, &refs))
        })
        .collect();
    let applier = {
        let ns = ns.0.clone();
        std::thread::spawn(move || kubectl_raw(&["apply", "-n", &ns, "-f", "-"], Some(&burst)))
    };
    // Kill it once a third of the edits are in, while the rest keep coming.
    let killed_at = wait_for(CONVERGE, "a third of the edits", || {
        let g = generation(&ns);
        (g >= first + (EDITS as i64) / 3).then_some(g)
    });
    op.proc.kill_hard();
    let out = applier.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = generation(&ns);
    println!("operator SIGKILLed at generation {killed_at}; edits ended at {last}");
    assert!(last > killed_at, "the burst ended before the kill");

    let op = Operator::start(&ns, None);
    let want = ids_of(EDITS);
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let obj = wait_converged(&ns, "studio", &want);
    assert_eq!(obj["status"]["observedGeneration"], last);
    let cm = ns.get("configmap", "studio-streams").unwrap();
    let mut keys: Vec<String> = cm["data"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("process"))
        .cloned()
        .collect();
    keys.sort();
    println!("ConfigMap keys after the restart: {keys:?}");
    let mut want_keys: Vec<String> = want.iter().map(|id| format!("process.{id}.yaml")).collect();
    want_keys.sort();
    assert_eq!(
        keys, want_keys,
        "the ConfigMap holds the last edit's processes"
    );
    for kind in ["configmap", "deployment", "service", "replicaset"] {
        let items = ns.children(kind, "studio");
        assert_eq!(items.len(), 1, "{kind}: {items:#?}");
    }
    println!("writes by the restarted operator: {}", op.metric(WRITES));
}
