//! `WebRTCEgress` manifests on disk: read, parse, validate.

use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::*;

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not a YAML mapping; carries serde_yaml's message, which names the line.
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
/// [`WebRTCEgress::name_or_default`]). Every field error is reported in one pass: unknown
/// fields, wrong types and enum values ([`structural`]) and, once the document decodes, the
/// schema's rules ([`validate`]).
pub fn parse_manifest(text: &str) -> Result<WebRTCEgress, ManifestError> {
    /// Read first, so that a manifest of another kind is reported as such rather than as a
    /// confusing error about its fields.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TypeMeta {
        api_version: Option<String>,
        kind: Option<String>,
    }

    /// The resource with `metadata` optional.
    #[derive(Deserialize)]
    struct Manifest {
        #[serde(default)]
        metadata: ObjectMeta,
        spec: WebRTCEgressSpec,
        #[serde(default)]
        status: Option<WebRTCEgressStatus>,
    }

    let parse_error = |e: serde_yaml::Error| ManifestError::Parse(e.to_string());
    let document: serde_yaml::Value = serde_yaml::from_str(text).map_err(parse_error)?;
    if document.is_null() {
        return Err(ManifestError::Parse("the document is empty".into()));
    }
    let type_meta: TypeMeta = serde_yaml::from_value(document.clone()).map_err(parse_error)?;
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
    let checked = structural::check(document);
    let mut errors = checked.errors;
    if checked.undecodable {
        return Err(ValidationErrors(errors).into());
    }
    let manifest = match serde_path_to_error::deserialize::<_, Manifest>(checked.document) {
        Ok(manifest) => manifest,
        // The schema walk lets through only what decodes, but for a value beyond what the
        // Rust type holds (a port past 65535): name that field.
        Err(e) => {
            errors.push(FieldError {
                path: e.path().to_string(),
                message: e.into_inner().to_string(),
            });
            return Err(ValidationErrors(errors).into());
        }
    };
    if let Err(ValidationErrors(rules)) = validate(&manifest.spec) {
        errors.extend(rules);
    }
    if !errors.is_empty() {
        return Err(ValidationErrors(errors).into());
    }
    Ok(WebRTCEgress {
        metadata: manifest.metadata,
        spec: manifest.spec,
        status: manifest.status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::fixtures::*;

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
    fn unknown_codecs_and_modes_are_refused_naming_the_field() {
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
            let message = field_errors(&process(media));
            assert!(message.starts_with(&format!("{field}: ")), "{message}");
            assert!(message.contains(&format!("{value:?}")), "{message}");
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
        let message = field_errors(&format!("apiVersion: {API_VERSION}\nkind: {KIND}\n"));
        assert_eq!(message, "spec: required value is missing");
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
