//! The status a reconcile reports, as a pure function of what it saw.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

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
        if ready_replicas >= needed {
            condition(READY, true, "PodsReady", message)
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
    let (reconciled, degraded) = match &observed.failure {
        None => (
            condition(
                RECONCILED,
                true,
                "Applied",
                "children are up to date".into(),
            ),
            condition(DEGRADED, false, "AsExpected", "no errors".into()),
        ),
        Some(failure) => (
            condition(RECONCILED, false, failure.reason, failure.message.clone()),
            condition(DEGRADED, true, failure.reason, failure.message.clone()),
        ),
    };
    let state = if ready.status == "True" && wanted > 0 {
        "Serving"
    } else {
        "Pending"
    };
    WebRTCEgressStatus {
        observed_generation: generation,
        conditions: vec![ready, reconciled, degraded],
        streams: egress
            .spec
            .processes
            .iter()
            .map(|p| StreamStatus {
                id: p.id.clone(),
                whep_path: p.whep_path(),
                state: state.into(),
                message: None,
            })
            .collect(),
        stream_count: Some(i32::try_from(egress.spec.processes.len()).unwrap_or(i32::MAX)),
        ready_replicas: observed.deployment.map(|_| ready_replicas),
        advertised_ips: observed.webrtc.map(advertised_ips).unwrap_or_default(),
    }
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
    use crate::operator::fixtures::{deployment_with_ready, egress};

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

        let two = deployment_with_ready(2);
        let observed = Observed {
            deployment: Some(&two),
            ..Default::default()
        };
        let status = desired_status(&egress, &observed, at(1000));
        assert_eq!(find(&status, READY).status, "True");
        assert!(status.streams.iter().all(|s| s.state == "Serving"));
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
