//! The agent→operator half of the contract: what each egress pod reports about its processes,
//! written on its own Pod and read back by the operator. Both sides import this module and
//! neither owns it, so the data plane never depends on the operator (as with [`crate::entries`]
//! for the other direction).
//!
//! A pod carries one annotation, [`REPORT_ANNOTATION`], with compact JSON keyed by process id
//! (state, restarts, FFmpeg's last error line), and one condition, [`STREAMS_LIVE`], that sums
//! it up for people (`kubectl describe pod`, `kubectl wait --for=condition=...`). Both go in one
//! server-side apply to `pods/status` under [`FIELD_MANAGER`], which the API server lets touch a
//! pod's metadata but never its spec, so the agents need no write access to pods themselves.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Annotation holding a pod's [`PodReport`] (JSON).
pub const REPORT_ANNOTATION: &str = "webrtc.dragonfork.io/streams";
/// Pod condition: True while every process of the pod is Running.
pub const STREAMS_LIVE: &str = "webrtc.dragonfork.io/StreamsLive";
/// Field manager of the agents' writes to their pods.
pub const FIELD_MANAGER: &str = "webrtc-egress-agent";
/// Version of the report encoding; a reader refuses others rather than misreading them.
pub const REPORT_VERSION: u32 = 1;
/// Longest `lastError` carried in a report: one FFmpeg line, which is short, but a pod's
/// annotations are bounded in size (256 KiB in total) and a report has one per process.
pub const LAST_ERROR_MAX: usize = 256;

/// A process's state on one pod, as its FFmpeg supervisor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ProcessState {
    /// Spawned, no media seen yet.
    #[default]
    Starting,
    /// Media is arriving.
    Running,
    /// Exited on its own; waiting out the backoff before the next start.
    Restarting,
    /// Cannot be spawned, or keeps dying without producing media. Still retried: a live
    /// input may come back.
    Failed,
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Restarting => "Restarting",
            Self::Failed => "Failed",
        })
    }
}

/// One process on one pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessReport {
    pub state: ProcessState,
    /// FFmpeg starts after the first one.
    #[serde(default)]
    pub restarts: u32,
    /// FFmpeg's own last stderr line of the run that ended last (or why it could not start),
    /// kept after a recovery as history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Everything one pod reports: its processes by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodReport {
    pub processes: BTreeMap<String, ProcessReport>,
}

/// The encoded form: a version beside the processes.
#[derive(Serialize, Deserialize)]
struct Wire {
    v: u32,
    processes: BTreeMap<String, ProcessReport>,
}

/// Why a report could not be read; the operator then treats the pod as having reported nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{REPORT_ANNOTATION}: not a report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{REPORT_ANNOTATION}: version {0}, this build reads version {REPORT_VERSION}")]
    Version(u32),
}

/// The [`STREAMS_LIVE`] condition of a report, without its transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveCondition {
    /// `"True"` or `"False"`.
    pub status: &'static str,
    /// `AllRunning`, `NoProcesses`, `ProcessesFailed`, `ProcessesNotRunning`.
    pub reason: &'static str,
    /// The processes that are not Running, with their state and last error.
    pub message: String,
}

impl ProcessReport {
    /// A report with `last_error` cut to [`LAST_ERROR_MAX`] at a character boundary.
    pub fn new(state: ProcessState, restarts: u32, last_error: Option<&str>) -> Self {
        ProcessReport {
            state,
            restarts,
            last_error: last_error.map(|e| truncate(e, LAST_ERROR_MAX).to_owned()),
        }
    }
}

impl PodReport {
    /// The annotation value: compact JSON, stable for equal reports (processes sorted by id),
    /// so an unchanged report is byte-for-byte the same and an apply of it changes nothing.
    pub fn encode(&self) -> String {
        serde_json::to_string(&Wire {
            v: REPORT_VERSION,
            processes: self.processes.clone(),
        })
        .expect("a report always serializes")
    }

    pub fn decode(text: &str) -> Result<Self, ReportError> {
        let wire: Wire = serde_json::from_str(text)?;
        if wire.v != REPORT_VERSION {
            return Err(ReportError::Version(wire.v));
        }
        Ok(PodReport {
            processes: wire.processes,
        })
    }

    /// The pod's report, from its annotations: `None` when it has not reported (yet).
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Option<Result<Self, ReportError>> {
        annotations?.get(REPORT_ANNOTATION).map(|v| Self::decode(v))
    }

    /// The summary condition: True when every process runs.
    pub fn condition(&self) -> LiveCondition {
        if self.processes.is_empty() {
            return LiveCondition {
                status: "True",
                reason: "NoProcesses",
                message: "no processes".into(),
            };
        }
        let not_running: Vec<String> = self
            .processes
            .iter()
            .filter(|(_, p)| p.state != ProcessState::Running)
            .map(|(id, p)| match (&p.state, &p.last_error) {
                (ProcessState::Starting, _) | (_, None) => format!("{id} {}", p.state),
                (state, Some(error)) => format!("{id} {state}: {error}"),
            })
            .collect();
        let total = self.processes.len();
        if not_running.is_empty() {
            return LiveCondition {
                status: "True",
                reason: "AllRunning",
                message: format!("{total}/{total} processes running"),
            };
        }
        let failed = self
            .processes
            .values()
            .any(|p| p.state == ProcessState::Failed);
        LiveCondition {
            status: "False",
            reason: if failed {
                "ProcessesFailed"
            } else {
                "ProcessesNotRunning"
            },
            message: format!(
                "{}/{total} processes running; {}",
                total - not_running.len(),
                not_running.join("; ")
            ),
        }
    }
}

/// A report of `(id, state, restarts, last error)` items, for the tests of both sides.
#[cfg(test)]
pub fn report(items: &[(&str, ProcessState, u32, Option<&str>)]) -> PodReport {
    PodReport {
        processes: items
            .iter()
            .map(|(id, state, restarts, error)| {
                (
                    (*id).to_owned(),
                    ProcessReport::new(*state, *restarts, *error),
                )
            })
            .collect(),
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn encoding_is_compact_stable_and_round_trips() {
        let original = report(&[
            ("cam2", ProcessState::Failed, 4, Some("x.mp4: No such file")),
            ("cam1", ProcessState::Running, 0, None),
        ]);
        let text = original.encode();
        assert_eq!(
            text,
            r#"{"v":1,"processes":{"cam1":{"state":"Running","restarts":0},"cam2":{"state":"Failed","restarts":4,"lastError":"x.mp4: No such file"}}}"#
        );
        assert_eq!(PodReport::decode(&text).unwrap(), original);
    }

    #[test]
    fn foreign_or_broken_reports_are_refused() {
        let error = PodReport::decode(r#"{"v":2,"processes":{}}"#).unwrap_err();
        assert!(matches!(error, ReportError::Version(2)), "{error}");
        assert!(error.to_string().contains("version 2"), "{error}");
        let error = PodReport::decode("cam1=Running").unwrap_err();
        assert!(matches!(error, ReportError::Json(_)));
        let error = PodReport::decode(r#"{"v":1,"processes":{"a":{"state":"Dancing"}}}"#);
        assert!(error.is_err(), "unknown states are not guessed");
    }

    #[test]
    fn annotations_without_a_report_mean_not_reported() {
        assert!(PodReport::from_annotations(None).is_none());
        let mut annotations = BTreeMap::from([("other".to_owned(), "x".to_owned())]);
        assert!(PodReport::from_annotations(Some(&annotations)).is_none());
        annotations.insert(REPORT_ANNOTATION.into(), report(&[]).encode());
        let read = PodReport::from_annotations(Some(&annotations)).unwrap();
        assert_eq!(read.unwrap(), PodReport::default());
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let long = "é".repeat(LAST_ERROR_MAX);
        let cut = ProcessReport::new(ProcessState::Failed, 0, Some(&long));
        let error = cut.last_error.unwrap();
        assert!(error.len() <= LAST_ERROR_MAX && error.chars().all(|c| c == 'é'));
    }

    #[test]
    fn condition_sums_up_the_processes() {
        let all = report(&[
            ("a", ProcessState::Running, 0, Some("old error, recovered")),
            ("b", ProcessState::Running, 2, None),
        ]);
        assert_eq!(
            all.condition(),
            LiveCondition {
                status: "True",
                reason: "AllRunning",
                message: "2/2 processes running".into()
            }
        );
        let failing = report(&[
            ("a", ProcessState::Running, 0, None),
            ("b", ProcessState::Failed, 5, Some("b.mp4: No such file")),
            ("c", ProcessState::Starting, 0, Some("from an earlier run")),
        ]);
        let condition = failing.condition();
        assert_eq!(
            (condition.status, condition.reason),
            ("False", "ProcessesFailed")
        );
        assert_eq!(
            condition.message,
            "1/3 processes running; b Failed: b.mp4: No such file; c Starting"
        );
        let starting = report(&[("a", ProcessState::Restarting, 1, Some("exit 1"))]);
        assert_eq!(starting.condition().reason, "ProcessesNotRunning");
        assert_eq!(report(&[]).condition().reason, "NoProcesses");
    }
}
