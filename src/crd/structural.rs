//! A manifest's shape checked against the CRD's own `openAPIV3Schema` — the schema the API
//! server enforces — before it is decoded into the Rust types: unknown fields (refused, as
//! `kubectl apply`'s strict field validation refuses them), value types, enums and required
//! fields, each named by its full path the way the API server names it
//! (`spec.processes[0].inputs[1].optionz`).
//!
//! The Rust types themselves stay tolerant (no `deny_unknown_fields`): the operator decodes
//! objects that a newer CRD may have extended. The walk also normalises the document the way
//! the API server does before validating: a `null` in a field that is not nullable counts as
//! absent, and a whole float (`1.0`, which kubectl sends as `1`) is an integer.

use std::sync::OnceLock;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use super::{FieldError, WebRTCEgress};
use kube::CustomResourceExt;

/// What the walk found: the errors, and the document normalised for decoding.
pub(super) struct Checked {
    pub document: Yaml,
    pub errors: Vec<FieldError>,
    /// Some error (a wrong type, a value outside an enum, a missing required field) means
    /// the document cannot be decoded into the Rust types.
    pub undecodable: bool,
}

/// Fields every object of a kind has at its root; the API server checks `metadata` itself.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// The `openAPIV3Schema` of the CRD's (single) version.
fn root_schema() -> &'static Json {
    static SCHEMA: OnceLock<Json> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = serde_json::to_value(WebRTCEgress::crd()).expect("the CRD serializes");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    })
}

/// Walks `document` (a whole manifest) against the CRD's schema.
pub(super) fn check(document: Yaml) -> Checked {
    check_against(document, root_schema())
}

fn check_against(mut document: Yaml, schema: &Json) -> Checked {
    let mut walk = Walk::default();
    walk.node(&mut document, schema, "", true);
    Checked {
        document,
        errors: walk.errors,
        undecodable: walk.undecodable,
    }
}

#[derive(Default)]
struct Walk {
    errors: Vec<FieldError>,
    undecodable: bool,
}

impl Walk {
    fn error(&mut self, path: &str, message: String, undecodable: bool) {
        self.errors.push(FieldError {
            path: path.to_owned(),
            message,
        });
        self.undecodable |= undecodable;
    }

    fn node(&mut self, value: &mut Yaml, schema: &Json, path: &str, root: bool) {
        if let Yaml::Tagged(tagged) = value {
            *value = std::mem::take(&mut tagged.value);
        }
        normalise_number(value);
        if value.is_null() && flag(schema, "nullable") {
            return;
        }
        let actual = json_type(value);
        let int_or_string = flag(schema, "x-kubernetes-int-or-string");
        let expected = schema.get("type").and_then(Json::as_str);
        let allowed = if int_or_string {
            matches!(actual, "integer" | "string")
        } else {
            expected.is_none_or(|t| t == actual || (t == "number" && actual == "integer"))
        };
        if !allowed {
            self.undecodable = true;
            // The API server prunes a mapping's fields against the schema before it checks
            // types: where no object belongs, each of its fields is unknown.
            if let Yaml::Mapping(map) = value
                && !map.is_empty()
            {
                let unknown = schema_without_fields(schema);
                return self.object(map, &unknown, path, false);
            }
            let wanted = if int_or_string {
                "integer or string"
            } else {
                expected.unwrap_or_default()
            };
            self.error(
                path,
                format!("must be of type {wanted}, not {actual}"),
                true,
            );
            return;
        }
        if let Some(options) = schema.get("enum").and_then(Json::as_array) {
            let json = serde_json::to_value(&*value).unwrap_or(Json::Null);
            if !options.contains(&json) {
                let supported: Vec<String> = options
                    .iter()
                    .filter(|o| !o.is_null())
                    .map(Json::to_string)
                    .collect();
                self.error(
                    path,
                    format!(
                        "unsupported value {json}: supported values: {}",
                        supported.join(", ")
                    ),
                    true,
                );
            }
        }
        match value {
            Yaml::Mapping(map) => self.object(map, schema, path, root),
            Yaml::Sequence(items) => {
                let item_schema = schema.get("items").unwrap_or(&Json::Bool(true));
                for (i, item) in items.iter_mut().enumerate() {
                    self.node(item, item_schema, &format!("{path}[{i}]"), false);
                }
            }
            _ => {}
        }
    }

    fn object(&mut self, map: &mut serde_yaml::Mapping, schema: &Json, path: &str, root: bool) {
        let properties = schema.get("properties").and_then(Json::as_object);
        let additional = schema.get("additionalProperties");
        let open = flag(schema, "x-kubernetes-preserve-unknown-fields")
            || additional == Some(&Json::Bool(true));
        let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
        let mut absent = Vec::new();
        for (key, child) in map.iter_mut() {
            let name = key_text(key);
            let child_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            if embedded && ROOT_FIELDS.contains(&name.as_str()) {
                continue;
            }
            let child_schema = match properties.and_then(|p| p.get(&name)) {
                Some(property) => property,
                None => match additional {
                    Some(additional @ Json::Object(_)) => additional,
                    _ if open => continue,
                    _ => {
                        let known = properties.into_iter().flat_map(|p| p.keys());
                        let message = match suggestion(&name, known) {
                            Some(close) => format!("unknown field; did you mean {close}?"),
                            None => "unknown field".to_owned(),
                        };
                        self.error(&child_path, message, false);
                        absent.push(key.clone());
                        continue;
                    }
                },
            };
            // The API server drops a null where null is not allowed (and then applies the
            // field's default, if any): it counts as absent.
            if child.is_null() && !flag(child_schema, "nullable") {
                absent.push(key.clone());
                continue;
            }
            self.node(child, child_schema, &child_path, false);
        }
        for key in &absent {
            map.remove(key);
        }
        for required in schema
            .get("required")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
        {
            if !map.contains_key(required) {
                let field = if path.is_empty() {
                    required.to_owned()
                } else {
                    format!("{path}.{required}")
                };
                self.error(&field, "required value is missing".into(), true);
            }
        }
    }
}

/// `schema` as an object schema would be read with no fields allowed.
fn schema_without_fields(schema: &Json) -> Json {
    let open = flag(schema, "x-kubernetes-preserve-unknown-fields");
    serde_json::json!({"x-kubernetes-preserve-unknown-fields": open})
}

fn flag(schema: &Json, name: &str) -> bool {
    schema.get(name).and_then(Json::as_bool).unwrap_or(false)
}

/// The JSON type kubectl sends for a YAML value.
fn json_type(value: &Yaml) -> &'static str {
    match value {
        Yaml::Null => "null",
        Yaml::Bool(_) => "boolean",
        Yaml::Number(n) if n.is_f64() => "number",
        Yaml::Number(_) => "integer",
        Yaml::String(_) => "string",
        Yaml::Sequence(_) => "array",
        Yaml::Mapping(_) => "object",
        Yaml::Tagged(tagged) => json_type(&tagged.value),
    }
}

/// kubectl encodes a whole float (`1.0`, `1e3`) as an integer, so the API server sees one.
fn normalise_number(value: &mut Yaml) {
    if let Yaml::Number(n) = value
        && let Some(f) = n.as_f64().filter(|_| n.is_f64())
        && f.fract() == 0.0
        && f.abs() < 9.0e15
    {
        *value = Yaml::Number((f as i64).into());
    }
}

/// A mapping key as text (YAML allows `1:` or `true:` where JSON has only strings).
fn key_text(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default(),
    }
}

/// The known field `unknown` was most likely meant to be: the same but for case, or within a
/// small edit distance (1 for short names, 2 from five characters on).
fn suggestion<'a>(unknown: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    let lower = unknown.to_lowercase();
    let budget = if lower.chars().count() >= 5 { 2 } else { 1 };
    known
        .map(|name| (edit_distance(&lower, &name.to_lowercase()), name))
        .filter(|(distance, _)| *distance <= budget)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name.as_str())
}

/// Levenshtein distance over characters, one row at a time.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::fixtures::FULL;
    use serde_json::json;

    fn errors_of(yaml: &str) -> Vec<String> {
        check(serde_yaml::from_str(yaml).unwrap())
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn manifest(spec: &str) -> String {
        format!("apiVersion: webrtc.dragonfork.io/v1alpha1\nkind: WebRTCEgress\nspec:\n{spec}")
    }

    #[test]
    fn a_full_manifest_has_nothing_unknown() {
        let checked = check(serde_yaml::from_str(FULL).unwrap());
        assert!(checked.errors.is_empty(), "{:?}", checked.errors);
        assert!(!checked.undecodable);
    }

    #[test]
    fn unknown_fields_are_named_by_full_path_at_every_depth() {
        let text = manifest(
            "  replica: 2\n  webrtc: {nat1to1IPs: [1.2.3.4], iceServers: [{urls: [stun:x], user: u}]}\n  \
             processes:\n  - id: a\n    inputs: [{address: x}, {address: y, optionz: []}]\n    \
             video: {codec: h264, bitrate: 5}\n  pod: {resources: {requests: {cpu: 1}, claims: []}}\n\
             status: {streams: [{id: a, whepPath: /whep/a, state: Running, extra: 1}]}\nextra: 1\n",
        );
        assert_eq!(
            errors_of(&text),
            [
                "spec.replica: unknown field; did you mean replicas?",
                "spec.webrtc.nat1to1IPs: unknown field; did you mean nat1To1IPs?",
                "spec.webrtc.iceServers[0].user: unknown field",
                "spec.processes[0].inputs[1].optionz: unknown field; did you mean options?",
                "spec.processes[0].video.bitrate: unknown field",
                "spec.pod.resources.claims: unknown field",
                "status.streams[0].extra: unknown field",
                "extra: unknown field",
            ]
        );
        let checked = check(serde_yaml::from_str(&text).unwrap());
        assert!(!checked.undecodable, "unknown fields alone still decode");
        assert!(
            checked.document["spec"]["webrtc"]
                .get("nat1to1IPs")
                .is_none(),
            "unknown fields are dropped"
        );
    }

    #[test]
    fn metadata_and_open_maps_are_not_checked_here() {
        let text = "apiVersion: webrtc.dragonfork.io/v1alpha1\nkind: WebRTCEgress\n\
                    metadata: {name: a, labels: {x: y}, anything: 1}\n\
                    spec: {pod: {nodeSelector: {any-key: v}, resources: {limits: {example.org/gpu: 1}}}}\n";
        assert_eq!(errors_of(text), Vec::<String>::new());
    }

    #[test]
    fn wrong_types_enums_and_missing_fields_make_a_document_undecodable() {
        let text = manifest(
            "  replicas: \"2\"\n  webrtc: {udpPort: 1.5, nat1To1IPs: 1.2.3.4}\n  \
             processes: [{id: 7, inputs: [{options: [-re]}], video: {codec: vp8}}]\n  \
             pod: {hostNetwork: \"yes\", nodeSelector: {a: 1}, resources: {limits: {cpu: 0.5}}}\n",
        );
        assert_eq!(
            errors_of(&text),
            [
                "spec.replicas: must be of type integer, not string",
                "spec.webrtc.udpPort: must be of type integer, not number",
                "spec.webrtc.nat1To1IPs: must be of type array, not string",
                "spec.processes[0].id: must be of type string, not integer",
                "spec.processes[0].inputs[0].address: required value is missing",
                "spec.processes[0].video.codec: unsupported value \"vp8\": supported values: \"h264\"",
                "spec.pod.hostNetwork: must be of type boolean, not string",
                "spec.pod.nodeSelector.a: must be of type string, not integer",
                "spec.pod.resources.limits.cpu: must be of type integer or string, not number",
            ]
        );
        assert!(check(serde_yaml::from_str(&text).unwrap()).undecodable);
        // Where no object belongs, a mapping's fields are unknown (an empty one is a type
        // error), as the API server's pruning reports them.
        let text = manifest(
            "  processes: {cam1: {inputs: []}}\n  webrtc: {nat1To1IPs: [{ip: 1.2.3.4}], publicIP: {}}\n",
        );
        assert_eq!(
            errors_of(&text),
            [
                "spec.processes.cam1: unknown field",
                "spec.webrtc.nat1To1IPs[0].ip: unknown field",
                "spec.webrtc.publicIP: must be of type string, not object",
            ]
        );
        assert!(check(serde_yaml::from_str(&text).unwrap()).undecodable);
        assert_eq!(
            errors_of("apiVersion: v\nkind: k\n"),
            ["spec: required value is missing"]
        );
    }

    #[test]
    fn nulls_count_as_absent_unless_nullable_and_whole_floats_are_integers() {
        let text = manifest(
            "  replicas:\n  webrtc: {publicIP: null, udpPort: 8.19e3}\n  \
             processes: [{id: a, inputs: [{address: x}], audio: null}]\n",
        );
        let checked = check(serde_yaml::from_str(&text).unwrap());
        assert!(checked.errors.is_empty(), "{:?}", checked.errors);
        let spec = serde_json::to_value(&checked.document["spec"]).unwrap();
        assert_eq!(
            spec,
            json!({
                "webrtc": {"publicIP": null, "udpPort": 8190},
                "processes": [{"id": "a", "inputs": [{"address": "x"}], "audio": null}],
            })
        );
    }

    #[test]
    fn suggestions_are_close_names_only() {
        let known: Vec<String> = ["nat1To1IPs", "publicIP", "udpPort", "iceServers", "id"]
            .map(String::from)
            .to_vec();
        let suggest = |unknown| suggestion(unknown, known.iter());
        assert_eq!(suggest("nat1to1IPs"), Some("nat1To1IPs"));
        assert_eq!(suggest("publicIp"), Some("publicIP"));
        assert_eq!(suggest("udp_port"), Some("udpPort"));
        assert_eq!(suggest("iceServer"), Some("iceServers"));
        assert_eq!(suggest("ID"), Some("id"));
        assert_eq!(suggest("ide"), Some("id"));
        assert_eq!(suggest("port"), None);
        assert_eq!(suggest("servers"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
