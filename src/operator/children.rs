//! The objects a `WebRTCEgress` owns, as pure functions of the resource.
//!
//! For a resource `N`: ConfigMap `N-streams` (stream entries), Deployment `N-egress` (the pods)
//! and Service `N-egress` (WHEP over TCP, media over UDP).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use super::{Error, FIELD_MANAGER};
use crate::crd::{ServiceType, WebRTCEgress, WebRTCEgressSpec, WebRtcSettings};
use crate::entries::{self, StreamEntries};

/// Port of WHEP, the player, health and metrics in every egress pod.
pub const HTTP_PORT: u16 = 8080;
/// Marks the pod template with the pod-level settings it was built from.
pub const POD_CONFIG_HASH: &str = "webrtc.dragonfork.io/pod-config-hash";
/// Marks each child with the desired state it was applied from: it changes whenever the
/// desired object does, including when a field is dropped (which "desired ⊆ existing" alone
/// would not notice).
pub const DESIRED_HASH: &str = "webrtc.dragonfork.io/desired-hash";

const CONTAINER: &str = "egress";
/// Beyond the drain time: closing what is left and stopping FFmpeg.
const TERMINATION_SLACK_SECONDS: i64 = 30;
const COMPONENT: &str = "egress";
const APP_NAME: &str = "webrtc-egress";
/// UID and GID of the image's non-root user (created in the Dockerfile).
const NONROOT: i64 = 65532;

/// Name of the Deployment and of the Service of the resource `name`.
pub fn workload_name(name: &str) -> String {
    format!("{name}-egress")
}

/// Operator-wide settings of the egress pods.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// Image when the resource names none.
    pub image: String,
    pub service_account: String,
}

/// Labels of every child of the resource `instance`.
pub fn labels(instance: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(instance);
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels
}

/// The labels that pick out the pods of `instance`; a Deployment's selector cannot change, so
/// this set never grows.
fn selector_labels(instance: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", APP_NAME),
        ("app.kubernetes.io/instance", instance),
        ("app.kubernetes.io/component", COMPONENT),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Label selector of the egress pods of `instance`: the Deployment's own selector.
pub fn pod_selector(instance: &str) -> String {
    selector_labels(instance)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The resource an egress pod (or any child) belongs to, by its instance label.
pub fn instance_of(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels.get("app.kubernetes.io/instance").map(String::as_str)
}

/// Label selector matching every child of every resource, for the operator's watches.
pub fn managed_by_selector() -> String {
    format!("app.kubernetes.io/managed-by={FIELD_MANAGER}")
}

/// The spec's WebRTC settings as the pods should use them: when the spec names no address and
/// a LoadBalancer has ingress IPs, those are what clients reach, so they are advertised.
pub fn effective_webrtc(spec: &WebRTCEgressSpec, load_balancer_ips: &[String]) -> WebRtcSettings {
    let mut webrtc = spec.webrtc.clone();
    if webrtc.public_ip.is_none()
        && webrtc.nat_1to1_ips.is_empty()
        && spec.pod.service_type == ServiceType::LoadBalancer
    {
        webrtc.nat_1to1_ips = load_balancer_ips.to_vec();
    }
    webrtc
}

/// Ingress IPs of a LoadBalancer Service, sorted; host names are skipped (peers need IPs).
pub fn load_balancer_ips(service: &Service) -> Vec<String> {
    let mut ips: Vec<String> = service
        .status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|ingress| ingress.ip.clone())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// ConfigMap `N-streams`: the effective WebRTC settings and one entry per process.
pub fn configmap(egress: &WebRTCEgress, webrtc: &WebRtcSettings) -> Result<ConfigMap, Error> {
    let spec = &egress.spec;
    let data = StreamEntries::new(webrtc.clone(), spec.limits.clone(), &spec.processes).encode()?;
    Ok(with_desired_hash(ConfigMap {
        metadata: metadata(egress, entries::configmap_name(&egress.name_any()))?,
        data: Some(data),
        ..Default::default()
    }))
}

/// Service `N-egress`: WHEP over TCP and the media port over UDP.
///
/// Several pods behind one Service must see a session's PATCH/DELETE and its media on the pod
/// that holds the session, so the Service is sticky per client IP (`sessionAffinity:
/// ClientIP`). Node ports and load balancers keep the client's address for that stickiness
/// with `externalTrafficPolicy: Local`, at the price of reaching only nodes that run a pod.
pub fn service(egress: &WebRTCEgress) -> Result<Service, Error> {
    let pod = &egress.spec.pod;
    let udp_port = i32::from(egress.spec.webrtc.udp_port);
    let external = pod.service_type != ServiceType::ClusterIP;
    let port = |name: &str, port: i32, protocol: &str| ServicePort {
        name: Some(name.into()),
        port,
        protocol: Some(protocol.into()),
        target_port: Some(IntOrString::String(name.into())),
        ..Default::default()
    };
    let media = ServicePort {
        // Peers are told `udpPort`, so a node port must be that very port.
        node_port: (pod.service_type == ServiceType::NodePort).then_some(udp_port),
        ..port("media", udp_port, "UDP")
    };
    Ok(with_desired_hash(Service {
        metadata: metadata(egress, workload_name(&egress.name_any()))?,
        spec: Some(ServiceSpec {
            type_: Some(pod.service_type.as_str().into()),
            selector: Some(selector_labels(&egress.name_any())),
            ports: Some(vec![port("http", i32::from(HTTP_PORT), "TCP"), media]),
            session_affinity: Some("ClientIP".into()),
            external_traffic_policy: external.then(|| "Local".into()),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// Deployment `N-egress`: `replicas` pods running `webrtc-egress agent`.
///
/// The pod template carries a hash of the pod spec, so that pod-level changes (image, udpPort,
/// resources, hostNetwork, auth) roll the pods. Processes and advertised addresses are not part
/// of it: agents follow the ConfigMap live, so a load balancer's IP arriving rolls nothing.
pub fn deployment(egress: &WebRTCEgress, agent: &AgentConfig) -> Result<Deployment, Error> {
    let name = egress.name_any();
    let namespace = egress
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let pod = pod_spec(egress, agent, &name, &namespace);
    let pod_hash = hash(&pod);
    let host_network = egress.spec.pod.host_network;
    // Pods on the host network hold the node's ports: a surge pod could not start beside the
    // old one, so roll one down first; otherwise bring the new pod up before the old one goes.
    let (max_surge, max_unavailable) = if host_network { (0, 1) } else { (1, 0) };
    Ok(with_desired_hash(Deployment {
        metadata: metadata(egress, workload_name(&name))?,
        spec: DeploymentSpec {
            replicas: Some(egress.spec.replicas),
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(max_surge)),
                    max_unavailable: Some(IntOrString::Int(max_unavailable)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    annotations: Some(BTreeMap::from([(POD_CONFIG_HASH.into(), pod_hash)])),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        },
        ..Default::default()
    }))
}

/// Pods of one resource go to different nodes where the scheduler can manage it, so that losing
/// a node loses one pod's viewers, not all; never a reason to leave a pod unscheduled. Counted
/// per revision (`pod-template-hash`), so a rollout's surge pod is placed by its own kind.
fn spread_over_nodes(name: &str) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(name)),
            ..Default::default()
        }),
        match_label_keys: Some(vec!["pod-template-hash".into()]),
        ..Default::default()
    }
}

fn pod_spec(egress: &WebRTCEgress, agent: &AgentConfig, name: &str, namespace: &str) -> PodSpec {
    let settings = &egress.spec.pod;
    let udp_port = i32::from(egress.spec.webrtc.udp_port);
    let drain = settings.drain_seconds();
    let args = [
        "agent",
        "--namespace",
        namespace,
        "--name",
        name,
        "--listen",
    ]
    .into_iter()
    .map(String::from)
    .chain([
        format!("0.0.0.0:{HTTP_PORT}"),
        format!("--drain-seconds={drain}"),
    ])
    .collect();
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    PodSpec {
        service_account_name: Some(agent.service_account.clone()),
        host_network: settings.host_network.then_some(true),
        dns_policy: settings
            .host_network
            .then(|| "ClusterFirstWithHostNet".into()),
        enable_service_links: Some(false),
        node_selector: (!settings.node_selector.is_empty()).then(|| settings.node_selector.clone()),
        topology_spread_constraints: Some(vec![spread_over_nodes(name)]),
        // No preStop sleep: on SIGTERM the agent turns unready, refuses new sessions and keeps
        // its viewers for the drain time itself; the grace period only has to outlast it.
        termination_grace_period_seconds: Some(i64::from(drain) + TERMINATION_SLACK_SECONDS),
        containers: vec![Container {
            name: CONTAINER.into(),
            image: Some(
                settings
                    .image
                    .clone()
                    .unwrap_or_else(|| agent.image.clone()),
            ),
            image_pull_policy: settings.image_pull_policy.map(|p| p.as_str().into()),
            args: Some(args),
            env: Some(env(egress)),
            ports: Some(vec![
                ContainerPort {
                    name: Some("http".into()),
                    container_port: i32::from(HTTP_PORT),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
                ContainerPort {
                    name: Some("media".into()),
                    container_port: udp_port,
                    host_port: settings.host_network.then_some(udp_port),
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
            ]),
            // Readiness turns false as soon as a pod drains, so it leaves the Service quickly.
            readiness_probe: Some(probe("/readyz", 2, 2)),
            liveness_probe: Some(probe("/healthz", 10, 3)),
            resources: Some(settings.resources.clone().unwrap_or_else(default_resources)),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(NONROOT),
                run_as_group: Some(NONROOT),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }],
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The pod's identity and addresses from the downward API (the agent advertises the node's
/// address on the host network), and the WHEP token when the resource requires one.
fn env(egress: &WebRTCEgress) -> Vec<EnvVar> {
    let from = |name: &str, source: EnvVarSource| EnvVar {
        name: name.into(),
        value_from: Some(source),
        ..Default::default()
    };
    let field = |name: &str, path: &str| {
        from(
            name,
            EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: path.into(),
                }),
                ..Default::default()
            },
        )
    };
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("NODE_NAME", "spec.nodeName"),
        field("HOST_IP", "status.hostIP"),
        field("POD_IP", "status.podIP"),
    ];
    if let Some(auth) = &egress.spec.auth {
        let secret = &auth.bearer_token_secret_ref;
        env.push(from(
            "WEBRTC_EGRESS_TOKEN",
            EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: None,
                }),
                ..Default::default()
            },
        ));
    }
    env
}

/// Requests `cpu: 250m, memory: 256Mi`, limit `memory: 1Gi`; no CPU limit, so that media
/// bursts are not throttled. Canonical quantity strings, so they read back unchanged.
fn default_resources() -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                .collect(),
        )
    };
    ResourceRequirements {
        requests: quantities(&[("cpu", "250m"), ("memory", "256Mi")]),
        limits: quantities(&[("memory", "1Gi")]),
        ..Default::default()
    }
}

/// Name, namespace, labels and controlling owner reference, shared by every child.
fn metadata(egress: &WebRTCEgress, name: String) -> Result<ObjectMeta, Error> {
    let namespace = egress
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let owner = egress
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: Some(labels(&egress.name_any())),
        owner_references: Some(vec![owner]),
        ..Default::default()
    })
}

/// Sets [`DESIRED_HASH`] from the object as built.
fn with_desired_hash<K: Resource + Serialize>(mut object: K) -> K {
    let digest = hash(&object);
    object.annotations_mut().insert(DESIRED_HASH.into(), digest);
    object
}

/// FNV-1a of the JSON form: stable across Rust versions and operator restarts (unlike
/// `DefaultHasher`), so an operator upgrade alone does not roll every pod.
fn hash(value: &impl Serialize) -> String {
    let json = serde_json::to_vec(value).expect("Kubernetes objects serialize to JSON");
    let digest = json.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{digest:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AuthSpec, ImagePullPolicy, SecretKeyRef};
    use crate::operator::fixtures::{agent_config, egress, process};

    fn container(deployment: &Deployment) -> &Container {
        &pod_of(deployment).containers[0]
    }

    fn pod_of(deployment: &Deployment) -> &PodSpec {
        deployment.spec.template.spec.as_ref().unwrap()
    }

    fn pod_hash(egress: &WebRTCEgress) -> String {
        let deployment = deployment(egress, &agent_config()).unwrap();
        deployment
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[POD_CONFIG_HASH]
            .clone()
    }

    #[test]
    fn names_are_derived_from_the_resource() {
        assert_eq!(workload_name("studio"), "studio-egress");
    }

    #[test]
    fn every_child_has_labels_and_a_controller_reference() {
        let egress = egress("studio", &["cam1"]);
        let webrtc = effective_webrtc(&egress.spec, &[]);
        let metas = [
            configmap(&egress, &webrtc).unwrap().metadata,
            service(&egress).unwrap().metadata,
            deployment(&egress, &agent_config()).unwrap().metadata,
        ];
        let names: Vec<_> = metas.iter().map(|m| m.name.clone().unwrap()).collect();
        assert_eq!(names, ["studio-streams", "studio-egress", "studio-egress"]);
        for meta in metas {
            assert_eq!(meta.namespace.as_deref(), Some("media"));
            let labels = meta.labels.unwrap();
            assert_eq!(labels["app.kubernetes.io/name"], "webrtc-egress");
            assert_eq!(labels["app.kubernetes.io/instance"], "studio");
            assert_eq!(
                labels["app.kubernetes.io/managed-by"],
                "webrtc-egress-operator"
            );
            assert_eq!(labels["app.kubernetes.io/component"], "egress");
            let [owner] = meta.owner_references.unwrap().try_into().unwrap();
            assert_eq!(owner.kind, "WebRTCEgress");
            assert_eq!(owner.api_version, "webrtc.dragonfork.io/v1alpha1");
            assert_eq!(owner.name, "studio");
            assert_eq!(owner.uid, "uid-studio");
            assert_eq!(owner.controller, Some(true));
            assert_eq!(meta.annotations.unwrap()[DESIRED_HASH].len(), 16);
        }
    }

    #[test]
    fn children_need_namespace_and_uid() {
        let mut egress = egress("studio", &[]);
        egress.metadata.uid = None;
        assert!(matches!(
            service(&egress),
            Err(Error::MissingMetadata("uid"))
        ));
        egress.metadata.namespace = None;
        assert!(matches!(
            service(&egress),
            Err(Error::MissingMetadata("namespace"))
        ));
    }

    #[test]
    fn configmap_holds_the_stream_entries() {
        let mut egress = egress("studio", &["cam2", "cam1"]);
        egress.spec.webrtc.udp_port = 9000;
        let webrtc = effective_webrtc(&egress.spec, &[]);
        let data = configmap(&egress, &webrtc).unwrap().data.unwrap();
        let entries = StreamEntries::decode(&data).unwrap();
        assert_eq!(entries, StreamEntries::of_spec(&egress.spec));
    }

    #[test]
    fn load_balancer_ips_fill_nat_ips_only_when_the_spec_names_none() {
        let lb = ["198.51.100.7".to_owned()];
        let mut egress = egress("studio", &[]);
        assert!(
            effective_webrtc(&egress.spec, &lb).nat_1to1_ips.is_empty(),
            "ClusterIP"
        );

        egress.spec.pod.service_type = ServiceType::LoadBalancer;
        assert_eq!(effective_webrtc(&egress.spec, &lb).nat_1to1_ips, lb);

        egress.spec.webrtc.public_ip = Some("203.0.113.1".into());
        assert!(effective_webrtc(&egress.spec, &lb).nat_1to1_ips.is_empty());
        egress.spec.webrtc.public_ip = None;
        egress.spec.webrtc.nat_1to1_ips = vec!["203.0.113.2".into()];
        assert_eq!(
            effective_webrtc(&egress.spec, &lb).nat_1to1_ips,
            ["203.0.113.2"]
        );
    }

    #[test]
    fn load_balancer_ips_are_read_from_the_service_status() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "status": {"loadBalancer": {"ingress": [
                {"ip": "198.51.100.9"}, {"hostname": "lb.example.org"}, {"ip": "198.51.100.7"},
            ]}}
        }))
        .unwrap();
        assert_eq!(
            load_balancer_ips(&service),
            ["198.51.100.7", "198.51.100.9"]
        );
        assert!(load_balancer_ips(&Service::default()).is_empty());
    }

    #[test]
    fn service_is_sticky_with_http_and_media_ports() {
        let mut egress = egress("studio", &[]);
        egress.spec.webrtc.udp_port = 9000;
        let spec = service(&egress).unwrap().spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(spec.external_traffic_policy, None);
        assert_eq!(spec.selector.unwrap(), selector_labels("studio"));
        let ports: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap(), p.node_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("http".into(), 8080, "TCP".into(), None),
                ("media".into(), 9000, "UDP".into(), None)
            ]
        );

        egress.spec.pod.service_type = ServiceType::NodePort;
        let spec = service(&egress).unwrap().spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.ports.unwrap()[1].node_port, Some(9000));
    }

    #[test]
    fn deployment_runs_the_agent_for_this_resource() {
        let egress = egress("studio", &["cam1"]);
        let deployment = deployment(&egress, &agent_config()).unwrap();
        let spec = &deployment.spec;
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap(),
            &selector_labels("studio")
        );
        let pod = pod_of(&deployment);
        assert_eq!(pod.service_account_name.as_deref(), Some("egress-agent"));
        assert_eq!(pod.termination_grace_period_seconds, Some(3630));
        assert_eq!(pod.host_network, None);
        let c = container(&deployment);
        assert_eq!(c.image.as_deref(), Some("example.org/egress:test"));
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "agent",
                "--namespace",
                "media",
                "--name",
                "studio",
                "--listen",
                "0.0.0.0:8080",
                "--drain-seconds=3600"
            ]
        );
        let env: Vec<_> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            env,
            [
                "POD_NAME",
                "POD_NAMESPACE",
                "NODE_NAME",
                "HOST_IP",
                "POD_IP"
            ]
        );
        let host_ip = &c.env.as_ref().unwrap()[3];
        assert_eq!(
            host_ip
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "status.hostIP"
        );
        let ports: Vec<_> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p.name.as_deref().unwrap(),
                    p.container_port,
                    p.protocol.as_deref().unwrap(),
                    p.host_port,
                )
            })
            .collect();
        assert_eq!(
            ports,
            [("http", 8080, "TCP", None), ("media", 8189, "UDP", None)]
        );
        let probe_path =
            |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
        assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(c.resources, Some(default_resources()));
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, "/tmp");
        assert!(pod.volumes.as_ref().unwrap()[0].empty_dir.is_some());
        let spread = &pod.topology_spread_constraints.as_ref().unwrap()[0];
        assert_eq!(
            (
                spread.topology_key.as_str(),
                spread.when_unsatisfiable.as_str()
            ),
            ("kubernetes.io/hostname", "ScheduleAnyway")
        );
        assert_eq!(
            spread.label_selector.as_ref().unwrap().match_labels,
            Some(selector_labels("studio"))
        );
    }

    #[test]
    fn pods_run_locked_down() {
        let egress = egress("studio", &[]);
        let deployment = deployment(&egress, &agent_config()).unwrap();
        let security = container(&deployment).security_context.clone().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(65532));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn pod_settings_reach_the_pod() {
        let mut egress = egress("studio", &[]);
        egress.spec.pod.image = Some("example.org/custom:1".into());
        egress.spec.pod.image_pull_policy = Some(ImagePullPolicy::Always);
        egress.spec.pod.host_network = true;
        egress.spec.pod.node_selector = BTreeMap::from([("media".into(), "yes".into())]);
        egress.spec.auth = Some(AuthSpec {
            bearer_token_secret_ref: SecretKeyRef {
                name: "whep".into(),
                key: "token".into(),
            },
        });
        let deployment = deployment(&egress, &agent_config()).unwrap();
        let pod = pod_of(&deployment);
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        assert_eq!(pod.node_selector.as_ref().unwrap()["media"], "yes");
        let c = container(&deployment);
        assert_eq!(c.image.as_deref(), Some("example.org/custom:1"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(c.ports.as_ref().unwrap()[1].host_port, Some(8189));
        let token = c.env.as_ref().unwrap().last().unwrap();
        assert_eq!(token.name, "WEBRTC_EGRESS_TOKEN");
        let secret = token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("whep", "token")
        );
        let rolling = deployment.spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    }

    #[test]
    fn pod_level_edits_change_the_pod_hash_and_process_edits_do_not() {
        let base = egress("studio", &["cam1"]);
        let base_hash = pod_hash(&base);

        let mut processes = base.clone();
        processes.spec.processes.push(process("cam2"));
        processes.spec.processes[0].inputs[0].address = "smptebars".into();
        assert_eq!(pod_hash(&processes), base_hash, "process edits");
        let mut replicas = base.clone();
        replicas.spec.replicas = 3;
        assert_eq!(pod_hash(&replicas), base_hash, "replicas");
        let mut addresses = base.clone();
        addresses.spec.webrtc.public_ip = Some("203.0.113.1".into());
        assert_eq!(
            pod_hash(&addresses),
            base_hash,
            "advertised addresses apply live"
        );

        type Edit = fn(&mut WebRTCEgressSpec);
        let edits: [(&str, Edit); 5] = [
            ("image", |s| s.pod.image = Some("other:2".into())),
            ("udpPort", |s| s.webrtc.udp_port = 9000),
            ("hostNetwork", |s| s.pod.host_network = true),
            ("resources", |s| {
                s.pod.resources = Some(ResourceRequirements::default())
            }),
            ("auth", |s| s.auth = Some(AuthSpec::default())),
        ];
        for (what, edit) in edits {
            let mut edited = base.clone();
            edit(&mut edited.spec);
            assert_ne!(pod_hash(&edited), base_hash, "{what}");
        }
    }

    #[test]
    fn hash_is_stable() {
        // A changed value here means every pod of every user rolls on upgrade.
        assert_eq!(hash(&"webrtc"), "493ff8c5fcd7903a");
    }
}
