//! The `WebRTCEgress` custom resource: its Rust types, the CRD schema the API server enforces,
//! and the same validation rules in Rust for manifests that never meet an API server
//! (`serve -f FILE.yaml`).
//!
//! Every rule lives in two places, the schema (for `kubectl apply`) and [`validate`] (for files
//! on disk); `tests/crd.rs` and the unit tests below keep them in step.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::{CustomResource, CustomResourceExt};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// `apiVersion` of every `WebRTCEgress` manifest.
pub const API_VERSION: &str = "webrtc.dragonfork.io/v1alpha1";
/// `kind` of every `WebRTCEgress` manifest.
pub const KIND: &str = "WebRTCEgress";
/// Name used when a manifest on disk has no `metadata.name`.
pub const DEFAULT_NAME: &str = "default";
/// UDP port shared by all peers of a pod unless the manifest says otherwise.
pub const DEFAULT_UDP_PORT: u16 = 8189;

/// A process id must be a DNS-1123 label: it becomes part of URLs and Kubernetes names.
const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const DNS_LABEL_MAX_LEN: usize = 63;
/// Longest textual IP address (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`). CEL rules on a
/// string of unbounded length or a list of unbounded size blow the API server's cost budget, so
/// every string or list that a CEL rule reads is bounded.
const IP_MAX_LEN: usize = 45;
const NAT_IPS_MAX_ITEMS: usize = 32;
/// ICE server URL schemes of RFC 7064/7065; anything else cannot go into a WHEP `Link` header.
const ICE_URL_PATTERN: &str = "^(stun|stuns|turn|turns):.+";
const ICE_URL_SCHEMES: [&str; 4] = ["stun:", "stuns:", "turn:", "turns:"];
const VIDEO_BITRATE_KBPS: (u32, u32) = (100, 50_000);
const AUDIO_BITRATE_KBPS: (u32, u32) = (16, 512);

/// Desired state of a set of egress pods, each of which serves every process over WHEP.
// Clippy reads two printer columns of the same type as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "webrtc.dragonfork.io",
    version = "v1alpha1",
    kind = "WebRTCEgress",
    plural = "webrtcegresses",
    shortname = "wegress",
    category = "webrtc",
    namespaced,
    status = "WebRTCEgressStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Live FFmpeg inputs served to browsers over WebRTC (WHEP).",
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "STREAMS", type_ = "integer", json_path = ".status.streamCount"),
    printcolumn(
        name = "REPLICAS",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", default)]
pub struct WebRTCEgressSpec {
    /// Number of egress pods; each one serves every process.
    #[schemars(range(min = 0), extend("format" = "int32"))]
    pub replicas: i32,
    /// Network settings of the WebRTC peers.
    pub webrtc: WebRtcSettings,
    /// Require a bearer token on WHEP requests; omit for open access.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Live inputs, each served at `/whep/{id}`.
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["id"]
    ))]
    pub processes: Vec<ProcessSpec>,
    /// How the operator runs the egress pods; ignored by `serve`.
    #[serde(skip_serializing_if = "PodSettings::is_default")]
    pub pod: PodSettings,
}

impl Default for WebRTCEgressSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            webrtc: WebRtcSettings::default(),
            auth: None,
            processes: Vec::new(),
            pod: PodSettings::default(),
        }
    }
}

/// Pod-level settings of the egress Deployment and Service. Changing any of them rolls the pods;
/// process edits never do.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSettings {
    /// Egress image; the operator's `--agent-image` when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Run in the node's network namespace: the UDP port is the node's, and the pods advertise
    /// the node's address when `webrtc` names none.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Type of the Service in front of the pods. `NodePort` exposes the media port on the same
    /// node port as `udpPort` (which must then lie in the cluster's node-port range), because
    /// peers are told that port.
    #[serde(skip_serializing_if = "ServiceType::is_default")]
    pub service_type: ServiceType,
    /// CPU and memory of the egress container; requests `cpu: 250m, memory: 256Mi` and limit
    /// `memory: 1Gi` when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,
    /// Nodes the pods may run on.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

impl PodSettings {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `imagePullPolicy` of the egress container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Kubernetes Service type in front of the egress pods.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }

    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How peers reach the pod: the addresses advertised as ICE candidates and the one UDP port.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct WebRtcSettings {
    /// Address advertised to peers when `nat1To1IPs` is empty.
    #[serde(rename = "publicIP", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = IP_MAX_LEN), transform = require_ip)]
    pub public_ip: Option<String>,
    /// Addresses that map 1:1 onto the pod (node or load balancer IPs). All are advertised, and
    /// they take precedence over `publicIP`.
    #[serde(rename = "nat1To1IPs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = NAT_IPS_MAX_ITEMS), inner(length(max = IP_MAX_LEN)))]
    #[schemars(transform = require_ip_items)]
    pub nat_1to1_ips: Vec<String>,
    /// The single UDP port all peers of a pod share.
    #[schemars(range(min = 1, max = 65535), extend("format" = "int32"))]
    pub udp_port: u16,
    /// STUN/TURN servers offered to players (WHEP `Link` headers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<IceServerSpec>,
}

impl Default for WebRtcSettings {
    fn default() -> Self {
        Self {
            public_ip: None,
            nat_1to1_ips: Vec::new(),
            udp_port: DEFAULT_UDP_PORT,
            ice_servers: Vec::new(),
        }
    }
}

/// One STUN or TURN server, as in the W3C `RTCIceServer` dictionary.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IceServerSpec {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs of the same server.
    #[schemars(length(min = 1), inner(regex(pattern = ICE_URL_PATTERN)))]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// WHEP authentication.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret key whose value clients must send as `Authorization: Bearer <token>`.
    pub bearer_token_secret_ref: SecretKeyRef,
}

/// A key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

/// One live input, read by FFmpeg and served as one WHEP stream.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec {
    /// Stream id: a DNS-1123 label, unique within the resource; the stream is at `/whep/{id}`.
    #[schemars(length(max = DNS_LABEL_MAX_LEN), regex(pattern = DNS_LABEL_PATTERN))]
    pub id: String,
    /// FFmpeg inputs, in order; the first video and first audio stream among them are served.
    #[schemars(length(min = 1))]
    pub inputs: Vec<InputSpec>,
    #[serde(default)]
    pub video: VideoSpec,
    /// Omit for a video-only stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioSpec>,
}

impl ProcessSpec {
    /// Path of the WHEP endpoint that serves this process.
    pub fn whep_path(&self) -> String {
        format!("/whep/{}", self.id)
    }
}

/// One FFmpeg input: what follows `-i`, and the options that precede it.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InputSpec {
    /// URL, file or lavfi graph, as FFmpeg's `-i` takes it.
    #[schemars(length(min = 1))]
    pub address: String,
    /// FFmpeg input options placed before `-i`, e.g. `["-re", "-f", "lavfi"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Video output of a process.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct VideoSpec {
    pub codec: VideoCodec,
    pub mode: VideoMode,
    /// Target bitrate when transcoding; FFmpeg's default when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = VIDEO_BITRATE_KBPS.0, max = VIDEO_BITRATE_KBPS.1))]
    #[schemars(extend("format" = "int32"))]
    pub bitrate_kbps: Option<u32>,
}

/// Video codec sent to players; H.264 is the one every browser decodes over WebRTC.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    #[default]
    H264,
}

/// `transcode` re-encodes to constrained-baseline H.264 without B-frames, which every browser
/// decodes; `passthrough` copies the input's H.264 as is (cheap, but only plays if the input
/// already suits browsers).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum VideoMode {
    #[default]
    Transcode,
    Passthrough,
}

/// Audio output of a process.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct AudioSpec {
    pub codec: AudioCodec,
    /// Target bitrate; FFmpeg's default when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = AUDIO_BITRATE_KBPS.0, max = AUDIO_BITRATE_KBPS.1))]
    #[schemars(extend("format" = "int32"))]
    pub bitrate_kbps: Option<u32>,
}

/// Audio codec sent to players; Opus is the one every WebRTC endpoint supports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AudioCodec {
    #[default]
    Opus,
}

/// Observed state, written by the operator.
// Empty lists and absent values are serialized (as `[]` and `null`) rather than skipped, so
// that a merge patch of the whole status clears what is no longer true.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct WebRTCEgressStatus {
    /// `metadata.generation` this status describes.
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciled`, ... with reasons.
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    pub streams: Vec<StreamStatus>,
    /// Number of processes being served (shown by `kubectl get`).
    pub stream_count: Option<i32>,
    /// Egress pods that are ready.
    pub ready_replicas: Option<i32>,
    /// Addresses the pods advertise as ICE candidates.
    #[serde(rename = "advertisedIPs")]
    pub advertised_ips: Vec<String>,
}

/// State of one process's stream.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    pub id: String,
    pub whep_path: String,
    /// E.g. `Starting`, `Running`, `Restarting`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl WebRTCEgress {
    /// `metadata.name`, or [`DEFAULT_NAME`] for a manifest on disk that has none.
    pub fn name_or_default(&self) -> String {
        match self.metadata.name.as_deref() {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => DEFAULT_NAME.to_owned(),
        }
    }
}

/// The CustomResourceDefinition, as YAML; `crds/webrtcegress.yaml` holds this output.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&WebRTCEgress::crd()).expect("a CRD always serializes to YAML")
}

// ---- Schema pieces schemars cannot derive ----

/// The CEL rule behind every IP field. `isIP` (Kubernetes >= 1.30) rejects zones and
/// IPv4-mapped IPv6 addresses, as [`ip_error`] does.
fn ip_rule() -> serde_json::Value {
    json!([{
        "rule": "isIP(self)",
        "messageExpression": "self + ' is not an IP address'",
        "message": "must be an IPv4 or IPv6 address",
    }])
}

fn require_ip(schema: &mut Schema) {
    schema.insert("x-kubernetes-validations".into(), ip_rule());
}

fn require_ip_items(schema: &mut Schema) {
    if let Some(items) = schema.get_mut("items").and_then(|v| v.as_object_mut()) {
        items.insert("x-kubernetes-validations".into(), ip_rule());
    }
}

/// `metav1.Condition` as the API server defines it (k8s-openapi's own schema needs a feature
/// this crate does not enable), kept as a map keyed by `type` so that each condition is merged
/// and owned on its own.
fn conditions_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "maxLength": 316},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "reason": {"type": "string", "maxLength": 1024},
                "message": {"type": "string", "maxLength": 32768},
            },
        },
    })
}

/// Kubernetes quantity syntax (`250m`, `1.5Gi`, `2`), as the API server's own types declare it.
const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// `requests` and `limits` maps of quantities, each an int-or-string as in the core API; other
/// fields of `ResourceRequirements` (`claims`) are not offered.
fn resources_schema(_: &mut SchemaGenerator) -> Schema {
    let quantities = json!({
        "type": "object",
        "additionalProperties": {
            "x-kubernetes-int-or-string": true,
            "pattern": QUANTITY_PATTERN,
        },
    });
    json_schema!({
        "type": "object",
        "properties": {"limits": quantities, "requests": quantities},
    })
}

// ---- Validation in Rust ----

/// One rule broken, at a JSON path such as `spec.processes[1].id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every rule a spec breaks, in document order, so a user fixes them all in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Checks the rules the CRD schema makes the API server enforce, for manifests that never
/// meet one. Codecs and other closed enums are already enforced by deserialization.
pub fn validate(spec: &WebRTCEgressSpec) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    if spec.replicas < 0 {
        errors.push(FieldError::new(
            "spec.replicas",
            format!("{} must not be negative", spec.replicas),
        ));
    }
    validate_webrtc(&spec.webrtc, &mut errors);
    if let Some(auth) = &spec.auth {
        let secret = &auth.bearer_token_secret_ref;
        let path = "spec.auth.bearerTokenSecretRef";
        for (field, value) in [("name", &secret.name), ("key", &secret.key)] {
            if value.is_empty() {
                errors.push(FieldError::new(
                    format!("{path}.{field}"),
                    "must not be empty",
                ));
            }
        }
    }
    validate_pod(&spec.pod, &mut errors);
    let mut seen_ids = HashSet::new();
    for (i, process) in spec.processes.iter().enumerate() {
        let path = format!("spec.processes[{i}]");
        if !is_dns_label(&process.id) {
            errors.push(FieldError::new(
                format!("{path}.id"),
                format!(
                    "{:?} is not a DNS-1123 label (lowercase letters, digits and '-', \
                     starting and ending with a letter or digit, at most 63 characters)",
                    process.id
                ),
            ));
        } else if !seen_ids.insert(process.id.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.id"),
                format!("duplicate process id {:?}", process.id),
            ));
        }
        if process.inputs.is_empty() {
            errors.push(FieldError::new(
                format!("{path}.inputs"),
                "at least one input is required",
            ));
        }
        for (j, input) in process.inputs.iter().enumerate() {
            if input.address.is_empty() {
                errors.push(FieldError::new(
                    format!("{path}.inputs[{j}].address"),
                    "must not be empty",
                ));
            }
        }
        check_range(
            &format!("{path}.video.bitrateKbps"),
            process.video.bitrate_kbps,
            VIDEO_BITRATE_KBPS,
            &mut errors,
        );
        if let Some(audio) = &process.audio {
            check_range(
                &format!("{path}.audio.bitrateKbps"),
                audio.bitrate_kbps,
                AUDIO_BITRATE_KBPS,
                &mut errors,
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors))
    }
}

fn validate_webrtc(webrtc: &WebRtcSettings, errors: &mut Vec<FieldError>) {
    if let Some(ip) = &webrtc.public_ip
        && let Some(message) = ip_error(ip)
    {
        errors.push(FieldError::new("spec.webrtc.publicIP", message));
    }
    if webrtc.nat_1to1_ips.len() > NAT_IPS_MAX_ITEMS {
        errors.push(FieldError::new(
            "spec.webrtc.nat1To1IPs",
            format!("at most {NAT_IPS_MAX_ITEMS} addresses are allowed"),
        ));
    }
    for (i, ip) in webrtc.nat_1to1_ips.iter().enumerate() {
        if let Some(message) = ip_error(ip) {
            errors.push(FieldError::new(
                format!("spec.webrtc.nat1To1IPs[{i}]"),
                message,
            ));
        }
    }
    if webrtc.udp_port == 0 {
        errors.push(FieldError::new(
            "spec.webrtc.udpPort",
            "0 is out of range 1..65535",
        ));
    }
    for (i, server) in webrtc.ice_servers.iter().enumerate() {
        let path = format!("spec.webrtc.iceServers[{i}].urls");
        if server.urls.is_empty() {
            errors.push(FieldError::new(&path, "at least one URL is required"));
        }
        for (j, url) in server.urls.iter().enumerate() {
            let valid = ICE_URL_SCHEMES
                .iter()
                .any(|scheme| url.len() > scheme.len() && url.starts_with(scheme));
            if !valid {
                errors.push(FieldError::new(
                    format!("{path}[{j}]"),
                    format!("{url:?} is not a stun:, stuns:, turn: or turns: URL"),
                ));
            }
        }
    }
}

fn validate_pod(pod: &PodSettings, errors: &mut Vec<FieldError>) {
    if pod.image.as_deref() == Some("") {
        errors.push(FieldError::new("spec.pod.image", "must not be empty"));
    }
    let Some(resources) = &pod.resources else {
        return;
    };
    for (field, quantities) in [
        ("limits", &resources.limits),
        ("requests", &resources.requests),
    ] {
        for (name, quantity) in quantities.iter().flatten() {
            if quantity_value(&quantity.0).is_none() {
                errors.push(FieldError::new(
                    format!("spec.pod.resources.{field}.{name}"),
                    format!("{:?} is not a quantity (e.g. 250m, 1.5, 512Mi)", quantity.0),
                ));
            }
        }
    }
}

/// The value of a Kubernetes quantity (`250m` → 0.25, `1Ki` → 1024), or `None` when `text` is
/// not one. Precise enough to compare quantities, which is all it is for.
pub fn quantity_value(text: &str) -> Option<f64> {
    let (number, suffix) = split_number(text)?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            match split_number(exponent)? {
                (exponent, "") => 10f64.powf(exponent),
                _ => return None,
            }
        }
    };
    Some(number * multiplier)
}

/// Splits a leading signed decimal number (`-1.5`, `.5`, `2.`) from the rest of `text`.
fn split_number(text: &str) -> Option<(f64, &str)> {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let mut end = usize::from(text.starts_with(['+', '-']));
    let whole = digits(&text[end..]);
    end += whole;
    let mut fraction = 0;
    if text[end..].starts_with('.') {
        fraction = digits(&text[end + 1..]);
        end += 1 + fraction;
    }
    if whole + fraction == 0 {
        return None;
    }
    Some((text[..end].parse().ok()?, &text[end..]))
}

/// Why `text` is not an IP address as Kubernetes' `isIP` sees it, or `None` if it is one.
fn ip_error(text: &str) -> Option<String> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => Some(format!(
            "{text} is not an IP address (IPv4-mapped IPv6 is not allowed; use the IPv4 form)"
        )),
        Ok(_) => None,
        Err(_) => Some(format!("{text} is not an IP address")),
    }
}

fn check_range(
    path: &str,
    value: Option<u32>,
    (min, max): (u32, u32),
    errors: &mut Vec<FieldError>,
) {
    if let Some(value) = value
        && !(min..=max).contains(&value)
    {
        errors.push(FieldError::new(
            path,
            format!("{value} is out of range {min}..{max}"),
        ));
    }
}

/// Same as [`DNS_LABEL_PATTERN`] plus the length limit.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= DNS_LABEL_MAX_LEN
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
}

// ---- Manifests on disk ----

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not shaped like a `WebRTCEgress`; carries serde_yaml's message, which names
    /// the field and the line.
    #[error("invalid manifest: {0}")]
    Parse(String),
    #[error("{0}")]
    WrongKind(String),
    #[error("invalid WebRTCEgress: {0}")]
    Invalid(#[from] ValidationErrors),
}

/// Reads, parses and validates a `WebRTCEgress` manifest file.
pub fn load_manifest(path: &Path) -> Result<WebRTCEgress, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_manifest(&text)
}

/// Parses and validates one `WebRTCEgress` YAML document. `metadata` may be omitted (see
/// [`WebRTCEgress::name_or_default`]).
pub fn parse_manifest(text: &str) -> Result<WebRTCEgress, ManifestError> {
    /// Read first, so that a manifest of another kind is reported as such rather than as a
    /// confusing error about its fields.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TypeMeta {
        api_version: Option<String>,
        kind: Option<String>,
    }

    /// The resource with `metadata` optional; parsed straight from the text so that errors
    /// keep their line numbers.
    #[derive(Deserialize)]
    struct Manifest {
        #[serde(default)]
        metadata: ObjectMeta,
        spec: WebRTCEgressSpec,
        #[serde(default)]
        status: Option<WebRTCEgressStatus>,
    }

    let parse_error = |e: serde_yaml::Error| ManifestError::Parse(e.to_string());
    let type_meta: TypeMeta = serde_yaml::from_str::<Option<TypeMeta>>(text)
        .map_err(parse_error)?
        .ok_or_else(|| ManifestError::Parse("the document is empty".into()))?;
    if type_meta.api_version.as_deref() != Some(API_VERSION)
        || type_meta.kind.as_deref() != Some(KIND)
    {
        let shown = |v: Option<String>| v.unwrap_or_else(|| "(missing)".into());
        return Err(ManifestError::WrongKind(format!(
            "expected apiVersion {API_VERSION} and kind {KIND}, found apiVersion {} and kind {}",
            shown(type_meta.api_version),
            shown(type_meta.kind),
        )));
    }
    let manifest: Manifest = serde_yaml::from_str(text).map_err(parse_error)?;
    validate(&manifest.spec)?;
    Ok(WebRTCEgress {
        metadata: manifest.metadata,
        spec: manifest.spec,
        status: manifest.status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../examples/demo.yaml");

    /// The example of DESIGN.md section 3, every optional field set.
    const FULL: &str = r#"
apiVersion: webrtc.dragonfork.io/v1alpha1
kind: WebRTCEgress
metadata: {name: studio}
spec:
  replicas: 2
  webrtc:
    publicIP: 203.0.113.10
    nat1To1IPs: [203.0.113.10, "2001:db8::10"]
    udpPort: 8190
    iceServers: [{urls: ["stun:stun.example.org:3478"]}, {urls: ["turn:turn.example.org"], username: u, credential: c}]
  auth: {bearerTokenSecretRef: {name: whep-token, key: token}}
  processes:
    - id: cam1
      inputs:
        - address: "testsrc2=size=1280x720:rate=30"
          options: ["-re", "-f", "lavfi"]
      video: {codec: h264, mode: passthrough}
      audio: {codec: opus, bitrateKbps: 96}
    - id: cam2
      inputs: [{address: "srt://example.org:9000"}]
      video: {bitrateKbps: 2500}
"#;

    /// A valid spec with `count` processes named `p0`, `p1`, ..., for the bad cases to spoil.
    fn spec_with_processes(count: usize) -> WebRTCEgressSpec {
        let process = |i: usize| ProcessSpec {
            id: format!("p{i}"),
            inputs: vec![InputSpec {
                address: "testsrc2".into(),
                options: vec![],
            }],
            video: VideoSpec::default(),
            audio: Some(AudioSpec::default()),
        };
        WebRTCEgressSpec {
            processes: (0..count).map(process).collect(),
            ..Default::default()
        }
    }

    /// The errors of `spec`, as displayed.
    fn errors(spec: &WebRTCEgressSpec) -> String {
        validate(spec)
            .expect_err("spec should be invalid")
            .to_string()
    }

    fn manifest_with_spec(spec_yaml: &str) -> String {
        format!("apiVersion: {API_VERSION}\nkind: {KIND}\nspec:\n{spec_yaml}")
    }

    fn parse_error(text: &str) -> String {
        match parse_manifest(text) {
            Err(ManifestError::Parse(message)) => message,
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn demo_manifest_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.yaml");
        let egress = load_manifest(&path).unwrap();
        assert_eq!(egress, parse_manifest(DEMO).unwrap());
        assert_eq!(egress.name_or_default(), "demo");
        assert_eq!(egress.spec.replicas, 1);
        assert_eq!(egress.spec.webrtc, WebRtcSettings::default());
        let [process] = egress.spec.processes.as_slice() else {
            panic!("one process expected");
        };
        assert_eq!(process.id, "demo");
        assert_eq!(process.whep_path(), "/whep/demo");
        let lavfi = ["-re", "-f", "lavfi"].map(String::from).to_vec();
        assert_eq!(
            process.inputs,
            [
                InputSpec {
                    address: "testsrc2=size=1280x720:rate=30".into(),
                    options: lavfi.clone(),
                },
                InputSpec {
                    address: "sine=frequency=440:sample_rate=48000".into(),
                    options: lavfi,
                },
            ]
        );
        assert_eq!(process.video, VideoSpec::default());
        assert_eq!(process.audio, Some(AudioSpec::default()));
    }

    #[test]
    fn full_manifest_parses_every_field() {
        let egress = parse_manifest(FULL).unwrap();
        let spec = &egress.spec;
        assert_eq!(egress.name_or_default(), "studio");
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.webrtc.public_ip.as_deref(), Some("203.0.113.10"));
        assert_eq!(spec.webrtc.nat_1to1_ips, ["203.0.113.10", "2001:db8::10"]);
        assert_eq!(spec.webrtc.udp_port, 8190);
        assert_eq!(spec.webrtc.ice_servers[1].username.as_deref(), Some("u"));
        assert_eq!(spec.webrtc.ice_servers[1].credential.as_deref(), Some("c"));
        let secret = &spec.auth.as_ref().unwrap().bearer_token_secret_ref;
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("whep-token", "token")
        );
        assert_eq!(spec.processes[0].video.mode, VideoMode::Passthrough);
        assert_eq!(
            spec.processes[0].audio.as_ref().unwrap().bitrate_kbps,
            Some(96)
        );
        assert_eq!(spec.processes[1].video.bitrate_kbps, Some(2500));
        assert_eq!(spec.processes[1].video.mode, VideoMode::Transcode);
        assert_eq!(spec.processes[1].audio, None);
        assert!(spec.processes[1].inputs[0].options.is_empty());
    }

    #[test]
    fn serialization_round_trips_with_json_names() {
        let egress = parse_manifest(FULL).unwrap();
        let json = serde_json::to_value(&egress).unwrap();
        assert_eq!(json["apiVersion"], API_VERSION);
        assert_eq!(json["kind"], KIND);
        assert_eq!(json["spec"]["webrtc"]["publicIP"], "203.0.113.10");
        assert_eq!(json["spec"]["webrtc"]["nat1To1IPs"][1], "2001:db8::10");
        assert_eq!(
            json["spec"]["auth"]["bearerTokenSecretRef"]["name"],
            "whep-token"
        );
        assert_eq!(json["spec"]["processes"][0]["video"]["mode"], "passthrough");
        assert_eq!(json["spec"]["processes"][0]["audio"]["bitrateKbps"], 96);
        let back: WebRTCEgress = serde_json::from_value(json).unwrap();
        assert_eq!(back, egress);

        let status = WebRTCEgressStatus {
            stream_count: Some(1),
            advertised_ips: vec!["203.0.113.10".into()],
            streams: vec![StreamStatus {
                id: "cam1".into(),
                whep_path: "/whep/cam1".into(),
                state: "Running".into(),
                message: None,
            }],
            ..Default::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["streamCount"], 1);
        assert_eq!(json["advertisedIPs"][0], "203.0.113.10");
        assert_eq!(json["streams"][0]["whepPath"], "/whep/cam1");
        // Cleared fields are sent, so that a merge patch removes them.
        assert!(json["readyReplicas"].is_null() && json["conditions"] == json!([]));
    }

    #[test]
    fn omitted_fields_take_their_defaults() {
        let text = manifest_with_spec("  processes: [{id: a, inputs: [{address: x}]}]\n");
        let egress = parse_manifest(&text).unwrap();
        assert_eq!(egress.name_or_default(), DEFAULT_NAME);
        assert_eq!(egress.spec.replicas, 1);
        assert_eq!(egress.spec.webrtc.udp_port, DEFAULT_UDP_PORT);
        assert_eq!(egress.spec.auth, None);
        let process = &egress.spec.processes[0];
        assert_eq!(process.video.codec, VideoCodec::H264);
        assert_eq!(process.video.mode, VideoMode::Transcode);
        assert_eq!(process.audio, None);

        let empty = parse_manifest(&manifest_with_spec("  {}\n")).unwrap();
        assert_eq!(empty.spec, WebRTCEgressSpec::default());
        let audio = parse_manifest(&manifest_with_spec(
            "  processes: [{id: a, inputs: [{address: x}], audio: {}}]\n",
        ))
        .unwrap();
        assert_eq!(audio.spec.processes[0].audio, Some(AudioSpec::default()));
    }

    #[test]
    fn empty_name_counts_as_missing() {
        let mut egress = WebRTCEgress::new("", WebRTCEgressSpec::default());
        assert_eq!(egress.name_or_default(), DEFAULT_NAME);
        egress.metadata.name = Some("x".into());
        assert_eq!(egress.name_or_default(), "x");
    }

    #[test]
    fn negative_replicas_are_rejected() {
        let spec = WebRTCEgressSpec {
            replicas: -1,
            ..spec_with_processes(1)
        };
        assert_eq!(errors(&spec), "spec.replicas: -1 must not be negative");
        let zero = WebRTCEgressSpec {
            replicas: 0,
            ..spec_with_processes(1)
        };
        assert_eq!(validate(&zero), Ok(()));
    }

    #[test]
    fn ip_addresses_must_be_ipv4_or_ipv6() {
        let mut spec = spec_with_processes(1);
        spec.webrtc.public_ip = Some("2001:db8::1".into());
        spec.webrtc.nat_1to1_ips = vec!["203.0.113.7".into(), "::1".into(), "fe80::1".into()];
        assert_eq!(validate(&spec), Ok(()));

        spec.webrtc.nat_1to1_ips = vec!["10.0.0.1".into(), "300.1.2.3".into()];
        assert_eq!(
            errors(&spec),
            "spec.webrtc.nat1To1IPs[1]: 300.1.2.3 is not an IP address"
        );

        spec.webrtc.nat_1to1_ips.clear();
        // What Kubernetes' isIP() rejects too: names, CIDRs, zones, leading zeros, mapped IPv4.
        for bad in [
            "example.org",
            "10.0.0.0/8",
            "fe80::1%eth0",
            "010.0.0.1",
            "",
            " 1.2.3.4",
        ] {
            spec.webrtc.public_ip = Some(bad.into());
            assert_eq!(
                errors(&spec),
                format!("spec.webrtc.publicIP: {bad} is not an IP address")
            );
        }
        spec.webrtc.public_ip = Some("::ffff:1.2.3.4".into());
        let message = errors(&spec);
        assert!(message.starts_with("spec.webrtc.publicIP: ::ffff:1.2.3.4 is not an IP address"));
        assert!(message.contains("IPv4-mapped"), "{message}");
    }

    #[test]
    fn nat_ips_are_bounded() {
        let mut spec = spec_with_processes(1);
        spec.webrtc.nat_1to1_ips = vec!["192.0.2.1".into(); NAT_IPS_MAX_ITEMS];
        assert_eq!(validate(&spec), Ok(()));
        spec.webrtc.nat_1to1_ips.push("192.0.2.2".into());
        assert_eq!(
            errors(&spec),
            "spec.webrtc.nat1To1IPs: at most 32 addresses are allowed"
        );
    }

    #[test]
    fn udp_port_must_be_in_range() {
        let mut spec = spec_with_processes(1);
        spec.webrtc.udp_port = 0;
        assert_eq!(
            errors(&spec),
            "spec.webrtc.udpPort: 0 is out of range 1..65535"
        );
        spec.webrtc.udp_port = 65535;
        assert_eq!(validate(&spec), Ok(()));

        // Beyond u16 the type itself refuses, and serde_yaml names the field.
        let text = manifest_with_spec("  webrtc: {udpPort: 70000}\n");
        let message = parse_error(&text);
        assert!(message.contains("spec.webrtc.udpPort"), "{message}");
        assert!(message.contains("70000"), "{message}");
    }

    #[test]
    fn process_ids_must_be_dns_labels() {
        for good in ["a", "cam1", "0", "a-b-c", &"x".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "Cam1", "-a", "a-", "a_b", "a.b", "câm", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
            let mut spec = spec_with_processes(2);
            spec.processes[1].id = bad.into();
            let message = errors(&spec);
            let expected = format!("spec.processes[1].id: {bad:?} is not a DNS-1123 label");
            assert!(message.starts_with(&expected), "{message}");
        }
    }

    #[test]
    fn process_ids_must_be_unique() {
        let mut spec = spec_with_processes(3);
        spec.processes[0].id = "cam1".into();
        spec.processes[2].id = "cam1".into();
        assert_eq!(
            errors(&spec),
            r#"spec.processes[2].id: duplicate process id "cam1""#
        );
    }

    #[test]
    fn every_process_needs_an_input_with_an_address() {
        let mut spec = spec_with_processes(2);
        spec.processes[0].inputs.clear();
        spec.processes[1].inputs.push(InputSpec::default());
        assert_eq!(
            errors(&spec),
            "spec.processes[0].inputs: at least one input is required; \
             spec.processes[1].inputs[1].address: must not be empty"
        );
    }

    #[test]
    fn bitrates_must_be_in_range() {
        let mut spec = spec_with_processes(1);
        spec.processes[0].video.bitrate_kbps = Some(99);
        spec.processes[0].audio = Some(AudioSpec {
            bitrate_kbps: Some(513),
            ..Default::default()
        });
        assert_eq!(
            errors(&spec),
            "spec.processes[0].video.bitrateKbps: 99 is out of range 100..50000; \
             spec.processes[0].audio.bitrateKbps: 513 is out of range 16..512"
        );
        spec.processes[0].video.bitrate_kbps = Some(50_000);
        spec.processes[0].audio = Some(AudioSpec {
            bitrate_kbps: Some(16),
            ..Default::default()
        });
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn ice_servers_need_stun_or_turn_urls() {
        let mut spec = spec_with_processes(1);
        spec.webrtc.ice_servers = vec![
            IceServerSpec {
                urls: vec![
                    "stun:stun.example.org".into(),
                    "turns:t.example.org:443".into(),
                ],
                ..Default::default()
            },
            IceServerSpec::default(),
            IceServerSpec {
                urls: vec!["https://example.org".into(), "stun:".into()],
                ..Default::default()
            },
        ];
        assert_eq!(
            errors(&spec),
            "spec.webrtc.iceServers[1].urls: at least one URL is required; \
             spec.webrtc.iceServers[2].urls[0]: \"https://example.org\" is not a stun:, stuns:, \
             turn: or turns: URL; \
             spec.webrtc.iceServers[2].urls[1]: \"stun:\" is not a stun:, stuns:, turn: or turns: URL"
        );
    }

    #[test]
    fn pod_settings_parse_with_defaults_and_are_omitted_when_default() {
        let text = manifest_with_spec(
            "  pod:\n    image: example.org/egress:1\n    imagePullPolicy: IfNotPresent\n    \
             hostNetwork: true\n    serviceType: LoadBalancer\n    nodeSelector: {media: \"yes\"}\n    \
             resources: {requests: {cpu: 1, memory: 512Mi}, limits: {memory: 2Gi}}\n",
        );
        let pod = parse_manifest(&text).unwrap().spec.pod;
        assert_eq!(pod.image.as_deref(), Some("example.org/egress:1"));
        assert_eq!(pod.image_pull_policy, Some(ImagePullPolicy::IfNotPresent));
        assert!(pod.host_network);
        assert_eq!(pod.service_type, ServiceType::LoadBalancer);
        assert_eq!(pod.node_selector["media"], "yes");
        let requests = pod.resources.unwrap().requests.unwrap();
        assert_eq!(requests["cpu"].0, "1", "integers are quantities too");
        assert_eq!(requests["memory"].0, "512Mi");

        let spec = WebRTCEgressSpec::default();
        assert_eq!(spec.pod.service_type, ServiceType::ClusterIP);
        assert!(!spec.pod.host_network && spec.pod.image.is_none());
        let json = serde_json::to_value(&spec).unwrap();
        assert!(json.get("pod").is_none(), "{json}");

        let bad = manifest_with_spec("  pod: {serviceType: ExternalName}\n");
        assert!(parse_error(&bad).contains("spec.pod.serviceType"));
    }

    #[test]
    fn pod_image_and_quantities_are_checked() {
        let mut spec = spec_with_processes(1);
        spec.pod.image = Some(String::new());
        spec.pod.resources = Some(
            serde_json::from_value(json!({
                "requests": {"cpu": "250m", "memory": "lots"},
                "limits": {"memory": "1.5Gi"},
            }))
            .unwrap(),
        );
        assert_eq!(
            errors(&spec),
            "spec.pod.image: must not be empty; \
             spec.pod.resources.requests.memory: \"lots\" is not a quantity (e.g. 250m, 1.5, 512Mi)"
        );
    }

    #[test]
    fn quantities_have_values() {
        for (text, value) in [
            ("1", 1.0),
            ("250m", 0.25),
            ("0.5", 0.5),
            (".5", 0.5),
            ("2.", 2.0),
            ("+1k", 1000.0),
            ("-1", -1.0),
            ("1Ki", 1024.0),
            ("256Mi", 268_435_456.0),
            ("1E", 1e18),
            ("1e3", 1000.0),
            ("1.5E-3", 0.0015),
            ("100n", 1e-7),
        ] {
            let parsed = quantity_value(text).unwrap_or_else(|| panic!("{text}"));
            assert!(
                (parsed - value).abs() <= 1e-12 * value.abs(),
                "{text}: {parsed}"
            );
        }
        for bad in ["", "m", "1x", "1Mb", "1e", "1ki", "--1", "1 m", "e3", "."] {
            assert_eq!(quantity_value(bad), None, "{bad}");
        }
    }

    #[test]
    fn pod_schema_has_closed_enums_and_int_or_string_quantities() {
        let crd = serde_json::to_value(WebRTCEgress::crd()).unwrap();
        let pod = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["pod"];
        assert!(
            pod.get("default").is_none(),
            "no pod section is written into objects"
        );
        let properties = &pod["properties"];
        assert_eq!(
            properties["serviceType"]["enum"],
            json!(["ClusterIP", "NodePort", "LoadBalancer"])
        );
        assert_eq!(
            properties["imagePullPolicy"]["enum"],
            json!(["Always", "IfNotPresent", "Never", null])
        );
        let quantity = &properties["resources"]["properties"]["limits"]["additionalProperties"];
        assert_eq!(quantity["x-kubernetes-int-or-string"], true);
        assert_eq!(quantity["pattern"], QUANTITY_PATTERN);
        assert!(
            quantity.get("type").is_none(),
            "int-or-string nodes have no type"
        );
    }

    #[test]
    fn auth_secret_ref_needs_name_and_key() {
        let spec = WebRTCEgressSpec {
            auth: Some(AuthSpec::default()),
            ..spec_with_processes(1)
        };
        assert_eq!(
            errors(&spec),
            "spec.auth.bearerTokenSecretRef.name: must not be empty; \
             spec.auth.bearerTokenSecretRef.key: must not be empty"
        );
    }

    #[test]
    fn invalid_manifest_reports_every_error() {
        let text = manifest_with_spec(
            "  webrtc: {udpPort: 0, nat1To1IPs: [300.1.2.3]}\n  processes: [{id: a, inputs: []}]\n",
        );
        match parse_manifest(&text) {
            Err(ManifestError::Invalid(ValidationErrors(errors))) => {
                let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
                assert_eq!(
                    paths,
                    [
                        "spec.webrtc.nat1To1IPs[0]",
                        "spec.webrtc.udpPort",
                        "spec.processes[0].inputs"
                    ]
                );
            }
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn unknown_codecs_and_modes_fail_at_parse_time_naming_the_field() {
        let process = |media: &str| {
            manifest_with_spec(&format!(
                "  processes:\n  - id: a\n    inputs: [{{address: x}}]\n    {media}\n"
            ))
        };
        for (media, field, value) in [
            (
                "video: {codec: vp8}",
                "spec.processes[0].video.codec",
                "vp8",
            ),
            (
                "video: {mode: copy}",
                "spec.processes[0].video.mode",
                "copy",
            ),
            (
                "audio: {codec: aac}",
                "spec.processes[0].audio.codec",
                "aac",
            ),
            (
                "video: {codec: H264}",
                "spec.processes[0].video.codec",
                "H264",
            ),
        ] {
            let message = parse_error(&process(media));
            assert!(message.contains(field), "{message}");
            assert!(message.contains(value), "{message}");
            assert!(message.contains("line 7"), "{message}");
        }
    }

    #[test]
    fn other_kinds_are_refused_before_their_fields() {
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nspec: {replicas: x}\n";
        let Err(ManifestError::WrongKind(message)) = parse_manifest(deployment) else {
            panic!("expected WrongKind");
        };
        assert_eq!(
            message,
            "expected apiVersion webrtc.dragonfork.io/v1alpha1 and kind WebRTCEgress, \
             found apiVersion apps/v1 and kind Deployment"
        );
        let old_version = "apiVersion: webrtc.dragonfork.io/v1\nkind: WebRTCEgress\nspec: {}\n";
        assert!(matches!(
            parse_manifest(old_version),
            Err(ManifestError::WrongKind(_))
        ));
        let Err(ManifestError::WrongKind(message)) = parse_manifest("spec: {}\n") else {
            panic!("expected WrongKind");
        };
        assert!(message.ends_with("found apiVersion (missing) and kind (missing)"));
    }

    #[test]
    fn malformed_documents_are_parse_errors() {
        for text in ["", "# nothing\n", "[1, 2]", "apiVersion: [", "kind: {a: b}"] {
            assert!(
                matches!(parse_manifest(text), Err(ManifestError::Parse(_))),
                "{text:?}"
            );
        }
        let message = parse_error(&format!("apiVersion: {API_VERSION}\nkind: {KIND}\n"));
        assert!(message.contains("missing field `spec`"), "{message}");
    }

    #[test]
    fn unreadable_file_is_an_io_error_naming_the_path() {
        let path = Path::new("/nonexistent/egress.yaml");
        let error = load_manifest(path).unwrap_err();
        assert!(matches!(&error, ManifestError::Io { path: p, .. } if p == path));
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/egress.yaml: ")
        );
    }
}
