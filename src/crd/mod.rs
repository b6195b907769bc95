//! The `WebRTCEgress` custom resource: its Rust types and the CRD the API server enforces
//! ([`schema`] adds what schemars cannot derive). Manifests that never meet an API server
//! (`serve -f FILE.yaml`, `validate`) go through [`manifest`], which walks them against the
//! CRD's own schema ([`structural`]: unknown fields, types, enums, required fields) and applies
//! its rules in Rust ([`validate`]); `tests/crd.rs` and the parity test (`tests/parity/`, run
//! against a real API server) keep them in step.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod fixtures;
mod manifest;
mod quantity;
mod schema;
mod structural;
mod validate;

pub use manifest::{ManifestError, load_manifest, parse_manifest};
pub use quantity::quantity_value;
pub use validate::{FieldError, ValidationErrors, validate};

use schema::{
    conditions_schema, renditions_rules, require_ip, require_ip_items, resources_schema,
    video_rules,
};

/// `apiVersion` of every `WebRTCEgress` manifest.
pub const API_VERSION: &str = "webrtc.dragonfork.io/v1alpha1";
/// `kind` of every `WebRTCEgress` manifest.
pub const KIND: &str = "WebRTCEgress";
/// Name used when a manifest on disk has no `metadata.name`.
pub const DEFAULT_NAME: &str = "default";
/// How long terminating pods keep their viewers unless the resource says otherwise: long, as
/// live viewers are not to be cut by a rollout.
pub const DEFAULT_DRAIN_SECONDS: u32 = 3600;
const MAX_DRAIN_SECONDS: u32 = 86_400;
/// Far beyond what one pod can serve; bounds the viewer caps.
const MAX_VIEWERS: u32 = 1_000_000;
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
/// A ladder costs one encode per rendition; four covers 1080p down to mobile.
const MAX_RENDITIONS: usize = 4;
const RENDITION_NAME_MAX_LEN: usize = 15;
const RENDITION_HEIGHT: (u32, u32) = (90, 2160);

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
    // `kubectl scale` and HorizontalPodAutoscalers drive `spec.replicas` through this.
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "LIVE", type_ = "string", json_path = ".status.live"),
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
    /// Viewer capacity of each pod.
    #[serde(skip_serializing_if = "Limits::is_default")]
    pub limits: Limits,
    /// How the operator runs the egress pods; ignored by `serve`.
    #[serde(skip_serializing_if = "PodSettings::is_default")]
    pub pod: PodSettings,
}

/// Capacity of each egress pod; edits apply to running pods without rolling them.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Limits {
    /// Most viewers one pod holds, all processes together. A full pod answers new viewers 503
    /// with `Retry-After` and reports not-ready, so the Service sends them to pods with room;
    /// the viewers it holds keep playing.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_VIEWERS), extend("format" = "int32"))]
    pub max_viewers_per_pod: Option<u32>,
}

impl Limits {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for WebRTCEgressSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            webrtc: WebRtcSettings::default(),
            auth: None,
            processes: Vec::new(),
            limits: Limits::default(),
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
    /// Seconds a terminating pod (rollout, scale-in, node drain) keeps serving the viewers it
    /// holds, refusing new ones, before closing what is left; it exits as soon as the last
    /// viewer leaves. 3600 when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_DRAIN_SECONDS), extend("format" = "int32"))]
    pub drain_seconds: Option<u32>,
}

impl PodSettings {
    /// `drainSeconds`, or its default.
    pub fn drain_seconds(&self) -> u32 {
        self.drain_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS)
    }
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
    /// Also offer media over ICE-TCP (RFC 6544) on the HTTP port, at the host and port each
    /// viewer sent its WHEP request to: the fallback that makes `kubectl port-forward` and
    /// UDP-blocking networks play. UDP keeps priority wherever it gets through.
    #[serde(rename = "iceTCP", skip_serializing_if = "is_true")]
    pub ice_tcp: bool,
}

fn is_true(value: &bool) -> bool {
    *value
}

impl Default for WebRtcSettings {
    fn default() -> Self {
        Self {
            public_ip: None,
            nat_1to1_ips: Vec::new(),
            udp_port: DEFAULT_UDP_PORT,
            ice_servers: Vec::new(),
            ice_tcp: true,
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
    /// Most viewers this process takes on each pod; more get 503 with `Retry-After`. Changing
    /// it never restarts the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_VIEWERS), extend("format" = "int32"))]
    pub max_viewers: Option<u32>,
}

impl ProcessSpec {
    /// Whether `other` produces the same stream: everything but the viewer cap is equal.
    pub fn same_media(&self, other: &ProcessSpec) -> bool {
        let ProcessSpec {
            id,
            inputs,
            video,
            audio,
            max_viewers: _,
        } = self;
        *id == other.id && *inputs == other.inputs && *video == other.video && *audio == other.audio
    }

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
#[schemars(transform = video_rules)]
pub struct VideoSpec {
    pub codec: VideoCodec,
    pub mode: VideoMode,
    /// Target bitrate when transcoding; FFmpeg's default when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = VIDEO_BITRATE_KBPS.0, max = VIDEO_BITRATE_KBPS.1))]
    #[schemars(extend("format" = "int32"))]
    pub bitrate_kbps: Option<u32>,
    /// A quality ladder: one FFmpeg decodes once and encodes each rendition, keyframe-aligned;
    /// each viewer gets the best one its network carries, switched at keyframes. Ordered by
    /// bitrate (either way, no two alike); `transcode` only, instead of `bitrateKbps`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RENDITIONS), transform = renditions_rules)]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["name"]
    ))]
    pub renditions: Vec<RenditionSpec>,
}

/// One rung of a quality ladder; the width follows the input's aspect ratio.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RenditionSpec {
    /// What viewers pin with `?rendition=NAME`: a DNS-1123 label.
    #[schemars(length(max = RENDITION_NAME_MAX_LEN), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// Picture height in pixels.
    #[schemars(range(min = RENDITION_HEIGHT.0, max = RENDITION_HEIGHT.1), extend("format" = "int32"))]
    pub height: u32,
    #[schemars(range(min = VIDEO_BITRATE_KBPS.0, max = VIDEO_BITRATE_KBPS.1))]
    #[schemars(extend("format" = "int32"))]
    pub bitrate_kbps: u32,
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
    /// Processes Running on every ready pod, out of all processes, e.g. `2/3` (shown by
    /// `kubectl get` as LIVE). A process live on only some pods is Degraded and not counted.
    pub live: Option<String>,
    /// Number of processes being served (shown by `kubectl get`).
    pub stream_count: Option<i32>,
    /// Egress pods that are ready.
    pub ready_replicas: Option<i32>,
    /// Egress pods that exist (the scale subresource's `status.replicas`).
    pub replicas: Option<i32>,
    /// Label selector of the egress pods, for the scale subresource (an autoscaler finds the
    /// pods whose metrics it reads with it).
    pub selector: Option<String>,
    /// Addresses the pods advertise as ICE candidates.
    #[serde(rename = "advertisedIPs")]
    pub advertised_ips: Vec<String>,
}

/// State of one process's stream, folded from what its egress pods report.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    pub id: String,
    pub whep_path: String,
    /// `Running` on every ready pod, `Degraded` (live on some), `Failed` (failing on every
    /// one), `Starting` (not live yet, or not reported yet), `Pending` (no ready pod).
    pub state: String,
    /// Ready pods where the process is live, out of the ready pods, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_pods: Option<String>,
    /// FFmpeg's own last stderr line (e.g. the input's `Connection refused`) from a pod where
    /// the process is not live; absent while it is Running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// FFmpeg restarts, summed over the ready pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<i64>,
    /// Which pods the process is not live on, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The process's renditions in ladder order (`hd 720p 2500 kbit/s`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renditions: Vec<String>,
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

#[cfg(test)]
mod tests {
    use super::schema::QUANTITY_PATTERN;
    use super::*;
    use crate::crd::fixtures::*;
    use serde_json::json;

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
                ..Default::default()
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
    fn empty_name_counts_as_missing() {
        let mut egress = WebRTCEgress::new("", WebRTCEgressSpec::default());
        assert_eq!(egress.name_or_default(), DEFAULT_NAME);
        egress.metadata.name = Some("x".into());
        assert_eq!(egress.name_or_default(), "x");
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
        assert!(field_errors(&bad).starts_with("spec.pod.serviceType: unsupported value"));
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
}
