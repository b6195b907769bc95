//! Folds what the egress pods report (see [`crate::reports`]) into each process's stream
//! status: a pure function of the pods as listed, so that every case is a unit test.
//!
//! Only pods that serve count: Ready and not terminating. A pod that is gone is not listed, and
//! one that is not ready or is shutting down may carry a report that no longer holds (its
//! FFmpeg stopped with it), so both are left out rather than trusted.

use k8s_openapi::api::core::v1::Pod;

use crate::crd::{ProcessSpec, StreamStatus};
use crate::reports::{PodReport, ProcessReport, ProcessState};

pub const PENDING: &str = "Pending";
pub const STARTING: &str = "Starting";
pub const RUNNING: &str = "Running";
pub const DEGRADED: &str = "Degraded";
pub const FAILED: &str = "Failed";

/// A pod that serves, with what it reported (`None`: nothing yet, or nothing readable).
#[derive(Clone, Debug, PartialEq)]
pub struct Reporter {
    pub pod: String,
    pub report: Option<PodReport>,
}

/// The pods whose reports count, sorted by name.
pub fn reporters(pods: &[Pod]) -> Vec<Reporter> {
    let mut out: Vec<Reporter> = pods
        .iter()
        .filter(|pod| serves(pod))
        .map(|pod| Reporter {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            // An unreadable report (a newer agent, say) says nothing about the processes.
            report: PodReport::from_annotations(pod.metadata.annotations.as_ref())
                .and_then(Result::ok),
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

/// Ready, and not on its way out.
fn serves(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

/// The status of each process, in spec order.
pub fn stream_statuses(processes: &[ProcessSpec], reporters: &[Reporter]) -> Vec<StreamStatus> {
    processes
        .iter()
        .map(|process| stream_status(process, reporters))
        .collect()
}

fn stream_status(process: &ProcessSpec, reporters: &[Reporter]) -> StreamStatus {
    let on_pods: Vec<(&str, Option<&ProcessReport>)> = reporters
        .iter()
        .map(|r| {
            let report = r.report.as_ref().and_then(|p| p.processes.get(&process.id));
            (r.pod.as_str(), report)
        })
        .collect();
    let state_of = |report: Option<&ProcessReport>| report.map(|p| p.state);
    let ready = on_pods.len();
    let live = on_pods
        .iter()
        .filter(|(_, r)| state_of(*r) == Some(ProcessState::Running))
        .count();
    let failed = on_pods
        .iter()
        .filter(|(_, r)| state_of(*r) == Some(ProcessState::Failed))
        .count();
    let state = if ready == 0 {
        PENDING
    } else if live == ready {
        RUNNING
    } else if live > 0 {
        DEGRADED
    } else if failed == ready {
        FAILED
    } else {
        STARTING
    };
    let not_live: Vec<(&str, Option<&ProcessReport>)> = on_pods
        .iter()
        .copied()
        .filter(|(_, r)| state_of(*r) != Some(ProcessState::Running))
        .collect();
    // The reason of a pod where it fails first: that is what needs fixing.
    let last_error = not_live
        .iter()
        .filter(|(_, r)| state_of(*r) == Some(ProcessState::Failed))
        .chain(not_live.iter())
        .find_map(|(_, r)| r.and_then(|p| p.last_error.clone()));
    let message = match state {
        PENDING => Some("no ready egress pod".to_owned()),
        RUNNING => None,
        _ => Some(format!(
            "not live on {}",
            not_live
                .iter()
                .map(|(pod, r)| match r {
                    Some(p) => format!("{pod} ({})", p.state),
                    None => format!("{pod} (not reported)"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        )),
    };
    StreamStatus {
        id: process.id.clone(),
        whep_path: process.whep_path(),
        state: state.to_owned(),
        ready_pods: Some(format!("{live}/{ready}")),
        last_error: if state == RUNNING { None } else { last_error },
        restarts: Some(
            on_pods
                .iter()
                .filter_map(|(_, r)| r.map(|p| i64::from(p.restarts)))
                .sum(),
        ),
        message,
        renditions: process
            .video
            .renditions
            .iter()
            .map(|r| format!("{} {}p {} kbit/s", r.name, r.height, r.bitrate_kbps))
            .collect(),
    }
}

/// `Running` processes out of all, e.g. `2/3`.
pub fn live_summary(streams: &[StreamStatus]) -> String {
    let running = streams.iter().filter(|s| s.state == RUNNING).count();
    format!("{running}/{}", streams.len())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::operator::fixtures::process;
    use crate::reports::{REPORT_ANNOTATION, report};

    /// A pod as listed: ready or not, with a report annotation if given.
    fn pod(name: &str, ready: bool, report: Option<&PodReport>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: report
                    .map(|r| BTreeMap::from([(REPORT_ANNOTATION.to_owned(), r.encode())])),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn statuses(ids: &[&str], pods: &[Pod]) -> Vec<StreamStatus> {
        let processes: Vec<ProcessSpec> = ids.iter().map(|id| process(id)).collect();
        stream_statuses(&processes, &reporters(pods))
    }

    fn states(streams: &[StreamStatus]) -> Vec<(&str, &str, &str)> {
        streams
            .iter()
            .map(|s| {
                (
                    s.id.as_str(),
                    s.state.as_str(),
                    s.ready_pods.as_deref().unwrap_or("-"),
                )
            })
            .collect()
    }

    use ProcessState::{Failed, Restarting, Running, Starting};

    #[test]
    fn running_on_every_ready_pod_is_running() {
        let a = report(&[
            ("cam1", Running, 0, None),
            ("cam2", Running, 1, Some("old")),
        ]);
        let b = report(&[("cam1", Running, 2, None), ("cam2", Running, 0, None)]);
        let streams = statuses(
            &["cam1", "cam2"],
            &[pod("p-a", true, Some(&a)), pod("p-b", true, Some(&b))],
        );
        assert_eq!(
            states(&streams),
            [("cam1", RUNNING, "2/2"), ("cam2", RUNNING, "2/2")]
        );
        assert_eq!(streams[0].restarts, Some(2), "summed over pods");
        assert_eq!(
            streams[1].last_error, None,
            "history is not shown while running"
        );
        assert_eq!(streams[1].message, None);
        assert_eq!(streams[0].whep_path, "/whep/cam1");
        assert_eq!(live_summary(&streams), "2/2");
    }

    #[test]
    fn failing_everywhere_is_failed_with_ffmpegs_reason() {
        let why = "rtmp://origin/live: Connection refused";
        let a = report(&[("cam1", Failed, 5, Some(why)), ("cam2", Running, 0, None)]);
        let b = report(&[("cam1", Failed, 4, Some(why)), ("cam2", Running, 0, None)]);
        let streams = statuses(
            &["cam1", "cam2"],
            &[pod("p-a", true, Some(&a)), pod("p-b", true, Some(&b))],
        );
        assert_eq!(
            states(&streams),
            [("cam1", FAILED, "0/2"), ("cam2", RUNNING, "2/2")]
        );
        assert_eq!(streams[0].last_error.as_deref(), Some(why));
        assert_eq!(streams[0].restarts, Some(9));
        assert_eq!(
            streams[0].message.as_deref(),
            Some("not live on p-a (Failed), p-b (Failed)")
        );
        assert_eq!(live_summary(&streams), "1/2");
    }

    #[test]
    fn live_on_some_pods_is_degraded_naming_the_others() {
        let a = report(&[("cam1", Running, 0, None)]);
        let b = report(&[("cam1", Restarting, 1, Some("Killed"))]);
        let c = report(&[("cam1", Failed, 5, Some("x.mp4: No such file"))]);
        let streams = statuses(
            &["cam1"],
            &[
                pod("p-a", true, Some(&a)),
                pod("p-b", true, Some(&b)),
                pod("p-c", true, Some(&c)),
            ],
        );
        assert_eq!(states(&streams), [("cam1", DEGRADED, "1/3")]);
        assert_eq!(
            streams[0].last_error.as_deref(),
            Some("x.mp4: No such file"),
            "the failing pod's reason first"
        );
        assert_eq!(
            streams[0].message.as_deref(),
            Some("not live on p-b (Restarting), p-c (Failed)")
        );
        assert_eq!(live_summary(&streams), "0/1");
    }

    #[test]
    fn not_live_anywhere_and_not_failed_everywhere_is_starting() {
        let a = report(&[("cam1", Failed, 5, Some("boom"))]);
        let b = report(&[("cam1", Starting, 0, None)]);
        let streams = statuses(
            &["cam1", "cam2"],
            &[pod("p-a", true, Some(&a)), pod("p-b", true, Some(&b))],
        );
        // cam2 is in no report yet (the pod has not applied its new entries).
        assert_eq!(
            states(&streams),
            [("cam1", STARTING, "0/2"), ("cam2", STARTING, "0/2")]
        );
        assert_eq!(streams[0].last_error.as_deref(), Some("boom"));
        assert_eq!(
            streams[1].message.as_deref(),
            Some("not live on p-a (not reported), p-b (not reported)")
        );
        // A ready pod that never reported: its processes are not known to be live.
        let streams = statuses(&["cam1"], &[pod("p-a", true, None)]);
        assert_eq!(states(&streams), [("cam1", STARTING, "0/1")]);
    }

    #[test]
    fn stale_reports_of_unready_or_terminating_pods_are_ignored() {
        let failing = report(&[("cam1", Failed, 9, Some("stale failure"))]);
        let running = report(&[("cam1", Running, 0, None)]);
        let mut terminating = pod("p-old", true, Some(&failing));
        terminating.metadata.deletion_timestamp =
            Some(Time(Timestamp::from_second(1_000).unwrap()));
        let streams = statuses(
            &["cam1"],
            &[
                terminating,
                pod("p-unready", false, Some(&failing)),
                pod("p-new", true, Some(&running)),
            ],
        );
        assert_eq!(states(&streams), [("cam1", RUNNING, "1/1")]);
        assert_eq!(
            streams[0].restarts,
            Some(0),
            "restarts of gone pods not counted"
        );
    }

    #[test]
    fn no_ready_pod_is_pending() {
        let running = report(&[("cam1", Running, 0, None)]);
        let streams = statuses(&["cam1"], &[pod("p-a", false, Some(&running))]);
        assert_eq!(states(&streams), [("cam1", PENDING, "0/0")]);
        assert_eq!(streams[0].message.as_deref(), Some("no ready egress pod"));
        assert_eq!(statuses(&["cam1"], &[])[0].state, PENDING);
    }

    #[test]
    fn unreadable_reports_count_as_not_reported() {
        let mut broken = pod("p-a", true, None);
        broken.metadata.annotations = Some(BTreeMap::from([(
            REPORT_ANNOTATION.to_owned(),
            r#"{"v":99,"processes":{}}"#.to_owned(),
        )]));
        let reporters = reporters(&[broken]);
        assert_eq!(
            reporters,
            [Reporter {
                pod: "p-a".into(),
                report: None
            }]
        );
    }
}
