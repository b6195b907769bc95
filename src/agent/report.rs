//! Publishes this pod's processes' state on its own Pod (see [`crate::reports`]), so that the
//! operator can tell in the resource's status what FFmpeg is really doing.
//!
//! Writes happen only when the report changes, never per packet or viewer: the subsystem
//! signals status changes of its FFmpeg supervisors, changes arriving together are folded into
//! one write, and a token bucket bounds a crash loop's writes. While nothing changes, nothing is
//! written.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, instrument, warn};

use crate::dataplane::ffmpeg::ProcessStatus;
use crate::dataplane::subsystem::Subsystem;
use crate::outage::{ApiOutage, is_unavailable};
use crate::reports::{FIELD_MANAGER, PodReport, ProcessReport, REPORT_ANNOTATION, STREAMS_LIVE};

/// Changes within this time of the first one go out in the same write (a process restart is
/// several status changes in a row).
const SETTLE: Duration = Duration::from_secs(1);
/// Writes allowed back to back, e.g. a process going Starting → Running right after the first
/// report.
const BURST: u32 = 4;
/// Past the burst, one write per this long: a process that crash-loops on every pod costs each
/// pod at most four writes a minute.
const REFILL: Duration = Duration::from_secs(15);

/// The report of what the subsystem runs now.
pub fn pod_report(statuses: &[(String, ProcessStatus)]) -> PodReport {
    PodReport {
        processes: statuses
            .iter()
            .map(|(id, status)| {
                let report =
                    ProcessReport::new(status.state, status.restarts, status.reason.as_deref());
                (id.clone(), report)
            })
            .collect(),
    }
}

/// A token bucket: [`BURST`] writes at once, then one per [`REFILL`].
#[derive(Debug)]
pub struct Pacer {
    burst: u32,
    refill: Duration,
    tokens: u32,
    /// When the token being refilled started to refill.
    since: Instant,
}

impl Pacer {
    pub fn new(burst: u32, refill: Duration, now: Instant) -> Self {
        Pacer {
            burst,
            refill,
            tokens: burst,
            since: now,
        }
    }

    fn top_up(&mut self, now: Instant) {
        if self.tokens >= self.burst {
            self.since = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.since);
        let earned = (elapsed.as_nanos() / self.refill.as_nanos().max(1)) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.burst);
            self.since += self.refill * earned;
            if self.tokens == self.burst {
                self.since = now;
            }
        }
    }

    /// When the next write may go out (`now` if at once).
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.top_up(now);
        if self.tokens > 0 {
            now
        } else {
            self.since + self.refill
        }
    }

    /// Counts a write (or a failed attempt, which costs the API server as much).
    pub fn spend(&mut self, now: Instant) {
        self.top_up(now);
        self.tokens = self.tokens.saturating_sub(1);
    }
}

/// Runs until the subsystem goes away: writes the first report at once, then each change.
#[instrument(skip_all, fields(%pod))]
pub async fn publish(pods: Api<Pod>, pod: String, subsystem: Arc<Subsystem>, api: Arc<ApiOutage>) {
    let mut changes = subsystem.changes();
    let mut pacer = Pacer::new(BURST, REFILL, Instant::now());
    let mut published: Option<PodReport> = None;
    let mut condition = ConditionClock::default();
    loop {
        changes.borrow_and_update();
        let report = pod_report(&subsystem.statuses());
        if published.as_ref() != Some(&report) {
            let at = pacer.ready_at(Instant::now());
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
                // What changed while waiting goes out in this write.
                continue;
            }
            pacer.spend(Instant::now());
            match write(&pods, &pod, &report, &mut condition).await {
                Ok(()) => {
                    api.recovered();
                    info!(report = %report.encode(), "reported the processes' state");
                    published = Some(report);
                }
                Err(error) => {
                    // Retried on the pacer's schedule, or sooner if something changes.
                    if is_unavailable(&error) {
                        api.failed("report the processes' state on the pod", &error);
                    } else {
                        warn!(%error, "cannot report the processes' state on the pod");
                    }
                    let retry = pacer.ready_at(Instant::now()).max(Instant::now() + SETTLE);
                    tokio::select! {
                        _ = tokio::time::sleep_until(retry) => {}
                        changed = changes.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(SETTLE).await;
    }
}

/// Keeps the condition's `lastTransitionTime` while its status stays the same.
#[derive(Default)]
struct ConditionClock {
    last: Option<(&'static str, Time)>,
}

impl ConditionClock {
    fn time_for(&mut self, status: &'static str) -> Time {
        match &self.last {
            Some((previous, time)) if *previous == status => time.clone(),
            _ => {
                // Whole seconds, as the API server stores them.
                let now =
                    Timestamp::from_second(Timestamp::now().as_second()).expect("now is in range");
                self.last = Some((status, Time(now)));
                Time(now)
            }
        }
    }
}

/// One server-side apply to `pods/status`: the report annotation and the summary condition,
/// owned by the agents' field manager alone (the kubelet's conditions are keyed by type and
/// stay its own).
async fn write(
    pods: &Api<Pod>,
    name: &str,
    report: &PodReport,
    clock: &mut ConditionClock,
) -> Result<(), kube::Error> {
    let condition = report.condition();
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": { REPORT_ANNOTATION: report.encode() },
        },
        "status": {
            "conditions": [{
                "type": STREAMS_LIVE,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": clock.time_for(condition.status),
            }],
        },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    pods.patch_status(name, &params, &Patch::Apply(patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::ProcessState;

    #[test]
    fn reports_carry_state_restarts_and_ffmpegs_reason() {
        let statuses = vec![
            (
                "cam1".to_owned(),
                ProcessStatus {
                    state: ProcessState::Failed,
                    last_error: Some("exit status: 1: a | x.mp4: No such file".into()),
                    reason: Some("x.mp4: No such file".into()),
                    restarts: 5,
                    pid: None,
                },
            ),
            (
                "cam2".to_owned(),
                ProcessStatus {
                    state: ProcessState::Running,
                    pid: Some(42),
                    ..Default::default()
                },
            ),
        ];
        let report = pod_report(&statuses);
        assert_eq!(
            report.processes["cam1"],
            ProcessReport::new(ProcessState::Failed, 5, Some("x.mp4: No such file"))
        );
        assert_eq!(
            report.processes["cam2"],
            ProcessReport::new(ProcessState::Running, 0, None)
        );
        // The pid is not part of it: a restart that changes nothing else is no new report.
        let mut again = statuses.clone();
        again[1].1.pid = Some(43);
        assert_eq!(pod_report(&again), report);
    }

    #[test]
    fn pacer_allows_a_burst_then_one_write_per_refill() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut pacer = Pacer::new(2, s(10), t0);
        for _ in 0..2 {
            assert_eq!(pacer.ready_at(t0), t0);
            pacer.spend(t0);
        }
        assert_eq!(pacer.ready_at(t0), t0 + s(10), "burst used up");
        assert_eq!(pacer.ready_at(t0 + s(9)), t0 + s(10));
        assert_eq!(pacer.ready_at(t0 + s(10)), t0 + s(10));
        pacer.spend(t0 + s(10));
        assert_eq!(pacer.ready_at(t0 + s(10)), t0 + s(20));
        // Quiet for long: the whole burst is back, not more.
        assert_eq!(pacer.ready_at(t0 + s(100)), t0 + s(100));
        pacer.spend(t0 + s(100));
        pacer.spend(t0 + s(100));
        assert_eq!(pacer.ready_at(t0 + s(100)), t0 + s(110));
    }

    #[test]
    fn condition_time_moves_only_when_the_status_flips() {
        let mut clock = ConditionClock::default();
        let first = clock.time_for("False");
        assert_eq!(clock.time_for("False"), first);
        clock.last = Some(("False", Time(Timestamp::from_second(1).unwrap())));
        let flipped = clock.time_for("True");
        assert_ne!(flipped, Time(Timestamp::from_second(1).unwrap()));
        assert_eq!(clock.time_for("True"), flipped);
    }
}
