//! Manifests and specs shared by the crd tests.

use super::*;
pub(super) const DEMO: &str = include_str!("../../examples/demo.yaml");

/// A manifest with every optional field set.
pub(super) const FULL: &str = r#"
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
pub(super) fn spec_with_processes(count: usize) -> WebRTCEgressSpec {
    let process = |i: usize| ProcessSpec {
        id: format!("p{i}"),
        inputs: vec![InputSpec {
            address: "testsrc2".into(),
            options: vec![],
        }],
        video: VideoSpec::default(),
        audio: Some(AudioSpec::default()),
        max_viewers: None,
    };
    WebRTCEgressSpec {
        processes: (0..count).map(process).collect(),
        ..Default::default()
    }
}

/// The errors of `spec`, as displayed.
pub(super) fn errors(spec: &WebRTCEgressSpec) -> String {
    validate(spec)
        .expect_err("spec should be invalid")
        .to_string()
}

pub(super) fn manifest_with_spec(spec_yaml: &str) -> String {
    format!("apiVersion: {API_VERSION}\nkind: {KIND}\nspec:\n{spec_yaml}")
}

/// The field errors of a manifest, as displayed.
pub(super) fn field_errors(text: &str) -> String {
    match parse_manifest(text) {
        Err(ManifestError::Invalid(errors)) => errors.to_string(),
        other => panic!("expected field errors, got {other:?}"),
    }
}
