//! The status a reconcile reports, as a pure function of what it saw: the Deployment, the
//! egress pods and their reports ([`super::live`]), and what applying the children did.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::children::pod_selector;
use super::live::{self, FAILED, PENDING, STARTING};
use crate::crd::{StreamStatus, WebRTCEgress, WebRTCEgressStatus, WebRtcSettings};

pub const READY: &str = "Ready";
pub const RECONCILED: &str = "Reconciled";
pub const DEGRADED: &str = "Degraded";

/// Why the children are not as desired.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// `ApplyFailed`, `InvalidSpec`.
    pub reason: &'static str,
    pub message: String,
}

/// What a reconcile found.
#[derive(Debug, Default)]
pub struct Observed<'a> {
    pub deployment: Option<&'a Deployment>,
    /// The WebRTC settings the pods were given.
    pub webrtc: Option<&'a WebRtcSettings>,
    /// The egress pods, with their reports.
    pub pods: &'a [Pod],
    pub failure: Option<Failure>,
}

/// The status to report for `egress`. Conditions keep their `lastTransitionTime` unless their
/// status flips, so the same observation yields the same status, which is then not written.
pub fn desired_status(
    egress: &WebRTCEgress,
    observed: &Observed,
    now: Timestamp,
) -> WebRTCEgressStatus {
    let generation = egress.metadata.generation;
    let previous = egress
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(
                // The API server keeps whole seconds; so do we, to read back what we wrote.
                || Time(Timestamp::from_second(now.as_second()).expect("now is in range")),
                |c| c.last_transition_time.clone(),
            );
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    };

    let streams = live::stream_statuses(&egress.spec.processes, &live::reporters(observed.pods));
    let failing = named(&streams, |s| s.state == FAILED);
    let not_live = named(&streams, |s| s.state == STARTING || s.state == PENDING);
    let live = live::live_summary(&streams);

    let wanted = egress.spec.replicas;
    let ready_replicas = observed
        .deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let ready = if wanted == 0 {
        condition(READY, true, "ScaledToZero", "replicas is 0".into())
    } else {
        let needed = wanted.max(1);
        let message = format!("{ready_replicas}/{needed} pods ready");
        if !failing.is_empty() {
            // Failing on every pod: no viewer can watch it, whatever the pods' readiness.
            condition(
                READY,
                false,
                "StreamsFailing",
                format!("failing on every ready pod: {}", failing.join("; ")),
            )
        } else if ready_replicas >= needed && not_live.is_empty() {
            let total = streams.len();
            let partly = streams.iter().filter(|s| s.state == live::DEGRADED).count();
            let mut text = format!("{message}, {total}/{total} processes live");
            if partly > 0 {
                text.push_str(&format!(", {partly} of them not on every pod"));
            }
            condition(READY, true, "StreamsLive", text)
        } else if ready_replicas >= needed {
            condition(
                READY,
                false,
                "StreamsNotLive",
                format!("{message}; not live yet: {}", not_live.join("; ")),
            )
        } else if let Some(failure) = observed.deployment.and_then(replica_failure) {
            // Pods that cannot even be created (a missing ServiceAccount, a quota): say why.
            condition(
                READY,
                false,
                "ReplicaFailure",
                format!("{message}: {failure}"),
            )
        } else {
            condition(READY, false, "PodsNotReady", message)
        }
    };
    let hurting = named(&streams, |s| s.state == FAILED || s.state == live::DEGRADED);
    let (reconciled, degraded) = match &observed.failure {
        None => (
            condition(
                RECONCILED,
                true,
                "Applied",
                "children are up to date".into(),
            ),
            if hurting.is_empty() {
                condition(DEGRADED, false, "AsExpected", "no errors".into())
            } else {
                let reason = if failing.is_empty() {
                    "StreamsDegraded"
                } else {
                    "StreamsFailing"
                };
                condition(DEGRADED, true, reason, hurting.join("; "))
            },
        ),
        Some(failure) => (
            condition(RECONCILED, false, failure.reason, failure.message.clone()),
            condition(DEGRADED, true, failure.reason, failure.message.clone()),
        ),
    };
    WebRTCEgressStatus {
        observed_generation: generation,
        conditions: vec![ready, reconciled, degraded],
        streams,
        live: Some(live),
        stream_count: Some(i32::try_from(egress.spec.processes.len()).unwrap_or(i32::MAX)),
        ready_replicas: observed.deployment.map(|_| ready_replicas),
        replicas: observed
            .deployment
            .map(|d| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0)),
        selector: egress.metadata.name.as_deref().map(pod_selector),
        advertised_ips: observed.webrtc.map(advertised_ips).unwrap_or_default(),
    }
}

/// `cam1 Failed on 0/2 pods: x.mp4: No such file` for each stream that `pick` selects.
fn named(streams: &[StreamStatus], pick: impl Fn(&StreamStatus) -> bool) -> Vec<String> {
    streams
        .iter()
        .filter(|s| pick(s))
        .map(|s| {
            let mut text = format!(
                "{} {} (live on {} pods)",
                s.id,
                s.state,
                s.ready_pods.as_deref().unwrap_or("0/0")
            );
            if let Some(error) = &s.last_error {
                text.push_str(": ");
                text.push_str(error);
            }
            text
        })
        .collect()
}

/// The message of the Deployment's `ReplicaFailure=True` condition, if it has one.
fn replica_failure(deployment: &Deployment) -> Option<String> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_.as_deref() == Some("ReplicaFailure") && c.status.as_deref() == Some("True")
        })
        .map(|c| {
            c.message
                .clone()
                .unwrap_or_else(|| "pods cannot be created".into())
        })
}

/// The addresses peers are told: NAT 1:1 IPs win over the public IP. Empty when the pods find
/// their own (the node's address on the host network).
pub fn advertised_ips(webrtc: &WebRtcSettings) -> Vec<String> {
    if webrtc.nat_1to1_ips.is_empty() {
        webrtc.public_ip.iter().cloned().collect()
    } else {
        webrtc.nat_1to1_ips.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fixtures::{deployment_with_ready, egress, reporting_pod};
    use crate::reports::ProcessState::{Failed, Running, Starting};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn find<'a>(status: &'a WebRTCEgressStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn ready_when_enough_pods_are_ready() {
        let mut egress = egress("studio", &["cam1", "cam2"]);
        egress.spec.replicas = 2;
        egress.metadata.generation = Some(4);
        let one = deployment_with_ready(1);
        let observed = Observed {
            deployment: Some(&one),
            ..Default::default()
        };
        let status = desired_status(&egress, &observed, at(1000));
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.ready_replicas, Some(1));
        // The scale subresource: pods that exist, and how to find them.
        assert_eq!(status.replicas, Some(2));
        assert_eq!(
            status.selector.as_deref(),
            Some(
                "app.kubernetes.io/component=egress,app.kubernetes.io/instance=studio,\
                 app.kubernetes.io/name=webrtc-egress"
            )
        );
        assert_eq!(status.stream_count, Some(2));
        let ready = find(&status, READY);
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", "PodsNotReady", "1/2 pods ready")
        );
        assert_eq!(ready.observed_generation, Some(4));
        let states: Vec<_> = status
            .streams
            .iter()
            .map(|s| (s.whep_path.as_str(), s.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [("/whep/cam1", "Pending"), ("/whep/cam2", "Pending")]
        );
        assert_eq!(find(&status, RECONCILED).status, "True");
        assert_eq!(find(&status, DEGRADED).status, "False");

        // Two ready pods that have not reported: the pods are up, the streams not known live.
        let two = deployment_with_ready(2);
        let silent = [reporting_pod("p-a", &[]), reporting_pod("p-b", &[])];
        let observed = Observed {
            deployment: Some(&two),
            pods: &silent,
            ..Default::default()
        };
        let status = desired_status(&egress, &observed, at(1000));
        let ready = find(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "StreamsNotLive")
        );
        assert!(
            ready.message.contains("cam1 Starting (live on 0/2 pods)"),
            "{}",
            ready.message
        );

        let live = [
            reporting_pod("p-a", &[("cam1", Running), ("cam2", Running)]),
            reporting_pod("p-b", &[("cam1", Running), ("cam2", Running)]),
        ];
        let observed = Observed {
            deployment: Some(&two),
            pods: &live,
            ..Default::default()
        };
        let status = desired_status(&egress, &observed, at(1000));
        let ready = find(&status, READY);
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("True", "StreamsLive", "2/2 pods ready, 2/2 processes live")
        );
        assert!(status.streams.iter().all(|s| s.state == "Running"));
        assert_eq!(status.live.as_deref(), Some("2/2"));
        assert_eq!(find(&status, DEGRADED).status, "False");
    }

    #[test]
    fn a_process_failing_on_every_pod_makes_the_resource_not_ready() {
        let mut egress = egress("studio", &["cam1", "cam2"]);
        egress.spec.replicas = 2;
        let two = deployment_with_ready(2);
        let mut a = reporting_pod("p-a", &[("cam1", Failed), ("cam2", Running)]);
        let mut b = reporting_pod("p-b", &[("cam1", Failed), ("cam2", Running)]);
        for pod in [&mut a, &mut b] {
            crate::operator::fixtures::set_last_error(pod, "cam1", "in.mp4: No such file");
        }
        let pods = [a, b];
        let observed = Observed {
            deployment: Some(&two),
            pods: &pods,
            ..Default::default()
        };
        let status = desired_status(&egress, &observed, at(1000));
        let ready = find(&status, READY);
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            (
                "False",
                "StreamsFailing",
                "failing on every ready pod: cam1 Failed (live on 0/2 pods): in.mp4: No such file"
            )
        );
        let degraded = find(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "StreamsFailing")
        );
        assert_eq!(status.live.as_deref(), Some("1/2"));
        assert_eq!(
            status.streams[0].last_error.as_deref(),
            Some("in.mp4: No such file")
        );
        assert_eq!(
            find(&status, RECONCILED).status,
            "True",
            "the children are fine"
        );
    }

    #[test]
    fn live_on_some_pods_is_degraded_but_ready() {
        let mut egress = egress("studio", &["cam1", "cam2"]);
        egress.spec.replicas = 2;
        let two = deployment_with_ready(2);
        let pods = [
            reporting_pod("p-a", &[("cam1", Running), ("cam2", Running)]),
            reporting_pod("p-b", &[("cam1", Starting), ("cam2", Running)]),
        ];
        let observed = Observed {
            deployment: Some(&two),
            pods: &pods,
            ..Default::default()
        };
        let status = desired_status(&egress, &observed, at(1000));
        let ready = find(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            (
                "True",
                "2/2 pods ready, 2/2 processes live, 1 of them not on every pod"
            ),
            "every process is live somewhere"
        );
        let degraded = find(&status, DEGRADED);
        assert_eq!(
            (
                degraded.status.as_str(),
                degraded.reason.as_str(),
                degraded.message.as_str()
            ),
            (
                "True",
                "StreamsDegraded",
                "cam1 Degraded (live on 1/2 pods)"
            )
        );
        assert_eq!(status.live.as_deref(), Some("1/2"));
    }

    #[test]
    fn pods_that_cannot_be_created_say_why() {
        let egress = egress("studio", &["cam1"]);
        let mut stuck = deployment_with_ready(0);
        stuck.status.get_or_insert_default().conditions =
            Some(vec![k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: Some("ReplicaFailure".into()),
                status: Some("True".into()),
                message: Some("serviceaccount \"webrtc-egress-agent\" not found".into()),
                ..Default::default()
            }]);
        let observed = Observed {
            deployment: Some(&stuck),
            ..Default::default()
        };
        let ready = desired_status(&egress, &observed, at(1000))
            .conditions
            .into_iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        assert_eq!(ready.reason, "ReplicaFailure");
        assert!(
            ready.message.contains("webrtc-egress-agent"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn zero_replicas_is_ready_without_pods() {
        let mut egress = egress("studio", &["cam1"]);
        egress.spec.replicas = 0;
        let status = desired_status(&egress, &Observed::default(), at(1000));
        let ready = find(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "ScaledToZero")
        );
        assert_eq!(status.ready_replicas, None, "no Deployment seen");
        assert_eq!(status.streams[0].state, "Pending");
    }

    #[test]
    fn failures_set_reconciled_false_and_degraded_true() {
        let egress = egress("studio", &[]);
        let observed = Observed {
            failure: Some(Failure {
                reason: "ApplyFailed",
                message: "boom".into(),
            }),
            ..Default::default()
        };
        let status = desired_status(&egress, &observed, at(1000));
        let reconciled = find(&status, RECONCILED);
        assert_eq!(
            (
                reconciled.status.as_str(),
                reconciled.reason.as_str(),
                reconciled.message.as_str()
            ),
            ("False", "ApplyFailed", "boom")
        );
        assert_eq!(find(&status, DEGRADED).status, "True");
    }

    #[test]
    fn transition_time_changes_only_when_the_status_flips() {
        let mut egress = egress("studio", &[]);
        let zero = deployment_with_ready(0);
        let one = deployment_with_ready(1);
        let not_ready = Observed {
            deployment: Some(&zero),
            ..Default::default()
        };
        let first = desired_status(&egress, &not_ready, at(1000));
        assert_eq!(find(&first, READY).last_transition_time, Time(at(1000)));

        egress.status = Some(first.clone());
        let again = desired_status(&egress, &not_ready, at(2000));
        assert_eq!(again, first, "same observation, same status");

        let ready = Observed {
            deployment: Some(&one),
            ..Default::default()
        };
        let flipped = desired_status(&egress, &ready, at(3000));
        assert_eq!(find(&flipped, READY).last_transition_time, Time(at(3000)));
        assert_eq!(
            find(&flipped, RECONCILED).last_transition_time,
            Time(at(1000)),
            "unchanged conditions keep their time"
        );
    }

    #[test]
    fn advertised_ips_prefer_nat_ips() {
        let mut webrtc = WebRtcSettings::default();
        assert!(advertised_ips(&webrtc).is_empty());
        webrtc.public_ip = Some("203.0.113.1".into());
        assert_eq!(advertised_ips(&webrtc), ["203.0.113.1"]);
        webrtc.nat_1to1_ips = vec!["198.51.100.1".into(), "198.51.100.2".into()];
        assert_eq!(advertised_ips(&webrtc), ["198.51.100.1", "198.51.100.2"]);

        let egress = egress("studio", &[]);
        let observed = Observed {
            webrtc: Some(&webrtc),
            ..Default::default()
        };
        let status = desired_status(&egress, &observed, at(0));
        assert_eq!(status.advertised_ips, ["198.51.100.1", "198.51.100.2"]);
    }
}
