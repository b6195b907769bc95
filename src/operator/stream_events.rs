//! Events for the changes of a process's live state, from the status as it was to the status
//! as it will be. Pure: the previous status is the memory, so an event is published once per
//! transition however often the pods report, and an operator restart does not repeat it.
//!
//! One thing the status forgets: a process that failed and is being started afresh (its input
//! fixed in the spec) shows Starting before Running. So which processes were reported in
//! trouble is carried from one call to the next ([`Troubled`]), to announce their recovery.

use std::collections::BTreeSet;

use kube::runtime::events::EventType;

use super::live::{DEGRADED, FAILED, RUNNING};
use crate::crd::StreamStatus;

/// Restart totals at which a Warning is recorded: once each, so a crash loop produces a few
/// events over hours rather than one per restart.
const RESTART_MARKS: [i64; 8] = [3, 10, 30, 100, 300, 1_000, 3_000, 10_000];

/// One event to publish about the resource.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    pub type_: EventType,
    /// `ProcessFailed`, `ProcessDegraded`, `ProcessRestarting`, `ProcessRecovered`.
    pub reason: &'static str,
    pub note: String,
}

/// Processes of one resource announced Failed or Degraded and not announced recovered since.
pub type Troubled = BTreeSet<String>;

/// The events that going from `old` to `new` calls for; `troubled` is updated. Processes the
/// old status shows Failed or Degraded count as troubled too (an operator that restarted has
/// no memory but the status).
pub fn stream_events(
    old: &[StreamStatus],
    new: &[StreamStatus],
    troubled: &mut Troubled,
) -> Vec<StreamEvent> {
    troubled.extend(
        old.iter()
            .filter(|s| s.state == FAILED || s.state == DEGRADED)
            .map(|s| s.id.clone()),
    );
    troubled.retain(|id| new.iter().any(|s| s.id == *id));
    let mut events = Vec::new();
    for stream in new {
        let before = old.iter().find(|s| s.id == stream.id);
        let was = before.map(|s| s.state.as_str());
        let id = &stream.id;
        let pods = stream.ready_pods.as_deref().unwrap_or("?");
        let why = stream
            .last_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        match stream.state.as_str() {
            FAILED if was != Some(FAILED) => {
                troubled.insert(id.clone());
                events.push(StreamEvent {
                    type_: EventType::Warning,
                    reason: "ProcessFailed",
                    note: format!("{id} failed on every ready pod{why}"),
                });
            }
            // Live on some pods only because the others are still starting (a rollout, a first
            // start) is no news; live on some because FFmpeg failed on the others is.
            DEGRADED
                if stream.last_error.is_some() && !before.is_some_and(degraded_for_a_reason) =>
            {
                troubled.insert(id.clone());
                events.push(StreamEvent {
                    type_: EventType::Warning,
                    reason: "ProcessDegraded",
                    note: format!(
                        "{id} live on {pods} pods; {}{why}",
                        stream.message.as_deref().unwrap_or_default()
                    ),
                });
            }
            RUNNING if troubled.remove(id) => events.push(StreamEvent {
                type_: EventType::Normal,
                reason: "ProcessRecovered",
                note: format!("{id} live again on {pods} pods"),
            }),
            _ => {}
        }
        let restarts = stream.restarts.unwrap_or(0);
        let restarts_before = before.and_then(|s| s.restarts).unwrap_or(0);
        if let Some(mark) = RESTART_MARKS
            .iter()
            .rev()
            .find(|mark| restarts_before < **mark && **mark <= restarts)
        {
            events.push(StreamEvent {
                type_: EventType::Warning,
                reason: "ProcessRestarting",
                note: format!("{id}: FFmpeg restarted {restarts} times (≥ {mark}){why}"),
            });
        }
    }
    events
}

fn degraded_for_a_reason(stream: &StreamStatus) -> bool {
    stream.state == DEGRADED && stream.last_error.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(state: &str, pods: &str, restarts: i64, error: Option<&str>) -> StreamStatus {
        StreamStatus {
            id: "cam1".into(),
            whep_path: "/whep/cam1".into(),
            state: state.into(),
            ready_pods: Some(pods.into()),
            last_error: error.map(Into::into),
            restarts: Some(restarts),
            message: (state != RUNNING).then(|| "not live on p-b (Failed)".into()),
            renditions: Vec::new(),
        }
    }

    fn reasons(events: &[StreamEvent]) -> Vec<&str> {
        events.iter().map(|e| e.reason).collect()
    }

    /// Events with a memory that starts empty, as after an operator start.
    fn fresh(old: &[StreamStatus], new: &[StreamStatus]) -> Vec<StreamEvent> {
        stream_events(old, new, &mut Troubled::new())
    }

    #[test]
    fn turning_failed_warns_once_with_the_reason() {
        let starting = [stream("Starting", "0/1", 0, None)];
        let failed = [stream("Failed", "0/1", 2, Some("x.mp4: No such file"))];
        let events = fresh(&starting, &failed);
        assert_eq!(
            events,
            [StreamEvent {
                type_: EventType::Warning,
                reason: "ProcessFailed",
                note: "cam1 failed on every ready pod: x.mp4: No such file".into(),
            }]
        );
        // Still failing, one more restart: nothing new.
        let still = [stream("Failed", "0/1", 2, Some("x.mp4: No such file"))];
        assert!(fresh(&failed, &still).is_empty());
    }

    #[test]
    fn degraded_warns_and_recovery_is_normal() {
        let running = [stream("Running", "2/2", 0, None)];
        let degraded = [stream("Degraded", "1/2", 1, Some("Killed"))];
        let events = fresh(&running, &degraded);
        assert_eq!(reasons(&events), ["ProcessDegraded"]);
        assert_eq!(
            events[0].note,
            "cam1 live on 1/2 pods; not live on p-b (Failed): Killed"
        );
        assert!(fresh(&degraded, &degraded).is_empty());
        // Degraded only while a pod starts: no warning; once it fails there: a warning.
        let starting_on_one = [stream("Degraded", "1/2", 0, None)];
        assert!(fresh(&running, &starting_on_one).is_empty());
        assert_eq!(
            reasons(&fresh(&starting_on_one, &degraded)),
            ["ProcessDegraded"]
        );
        let back = [stream("Running", "2/2", 1, None)];
        let events = fresh(&degraded, &back);
        assert_eq!(reasons(&events), ["ProcessRecovered"]);
        assert_eq!(events[0].type_, EventType::Normal);
        assert_eq!(events[0].note, "cam1 live again on 2/2 pods");
        // A first start is no recovery.
        let starting = [stream("Starting", "0/2", 0, None)];
        assert!(fresh(&starting, &back).is_empty());
        assert!(fresh(&[], &back).is_empty());
    }

    #[test]
    fn recovery_through_a_fresh_start_is_announced_once() {
        // Failed, then the input is fixed: the process starts afresh (Starting), then runs.
        let mut troubled = Troubled::new();
        let failed = [stream("Failed", "0/1", 5, Some("x.mp4: No such file"))];
        let starting = [stream("Starting", "0/1", 0, None)];
        let running = [stream("Running", "1/1", 0, None)];
        let events = stream_events(&[], &failed, &mut troubled);
        assert_eq!(reasons(&events), ["ProcessFailed", "ProcessRestarting"]);
        assert!(stream_events(&failed, &starting, &mut troubled).is_empty());
        let events = stream_events(&starting, &running, &mut troubled);
        assert_eq!(reasons(&events), ["ProcessRecovered"]);
        assert!(stream_events(&running, &running, &mut troubled).is_empty());
        assert!(troubled.is_empty());
        // A process removed while failing is forgotten.
        stream_events(&[], &failed, &mut troubled);
        stream_events(&failed, &[], &mut troubled);
        assert!(troubled.is_empty());
    }

    #[test]
    fn restarts_warn_at_marks_not_per_restart() {
        let at = |n| [stream("Running", "1/1", n, None)];
        assert!(fresh(&at(0), &at(2)).is_empty());
        assert_eq!(reasons(&fresh(&at(2), &at(3))), ["ProcessRestarting"]);
        assert!(fresh(&at(3), &at(9)).is_empty());
        let events = fresh(&at(9), &at(31));
        assert_eq!(
            reasons(&events),
            ["ProcessRestarting"],
            "one event, the highest mark"
        );
        assert!(
            events[0].note.contains("31 times (≥ 30)"),
            "{}",
            events[0].note
        );
        // Fewer restarts (a pod went away) then more again: the marks count from the status.
        assert!(fresh(&at(31), &at(5)).is_empty());
    }
}
