//! Schema pieces schemars cannot derive: CEL rules, `metav1.Condition`, quantities.

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::json;

/// The CEL rule behind every IP field. `isIP` (Kubernetes >= 1.30) rejects zones and
/// IPv4-mapped IPv6 addresses, as [`ip_error`] does.
fn ip_rule() -> serde_json::Value {
    json!([{
        "rule": "isIP(self)",
        "messageExpression": "self + ' is not an IP address'",
        "message": "must be an IPv4 or IPv6 address",
    }])
}

pub(super) fn require_ip(schema: &mut Schema) {
    schema.insert("x-kubernetes-validations".into(), ip_rule());
}

pub(super) fn require_ip_items(schema: &mut Schema) {
    if let Some(items) = schema.get_mut("items").and_then(|v| v.as_object_mut()) {
        items.insert("x-kubernetes-validations".into(), ip_rule());
    }
}

/// Renditions: ordered by bitrate, up or down, with no two bitrates alike (`isSorted` is in
/// Kubernetes' CEL list library since 1.28).
pub(super) fn renditions_rules(schema: &mut Schema) {
    schema.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": "size(self) < 2 || (self.all(a, self.exists_one(b, b.bitrateKbps == a.bitrateKbps)) \
                     && (self.map(r, r.bitrateKbps).isSorted() || self.map(r, -r.bitrateKbps).isSorted()))",
            "message": RENDITIONS_ORDER_MESSAGE,
        }]),
    );
}

pub(super) const RENDITIONS_ORDER_MESSAGE: &str =
    "renditions must be ordered by bitrateKbps (ascending or descending), no two alike";
pub(super) const RENDITIONS_MODE_MESSAGE: &str =
    "renditions need mode transcode, and replace bitrateKbps";

/// Video: a ladder is encoded by us, so it excludes passthrough and a single `bitrateKbps`.
pub(super) fn video_rules(schema: &mut Schema) {
    schema.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": "!has(self.renditions) || size(self.renditions) == 0 || \
                     ((!has(self.mode) || self.mode == 'transcode') && !has(self.bitrateKbps))",
            "message": RENDITIONS_MODE_MESSAGE,
        }]),
    );
}

/// `metav1.Condition` as the API server defines it (k8s-openapi's own schema needs a feature
/// this crate does not enable), kept as a map keyed by `type` so that each condition is merged
/// and owned on its own.
pub(super) fn conditions_schema(_: &mut SchemaGenerator) -> Schema {
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
pub(super) const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// `requests` and `limits` maps of quantities, each an int-or-string as in the core API; other
/// fields of `ResourceRequirements` (`claims`) are not offered.
pub(super) fn resources_schema(_: &mut SchemaGenerator) -> Schema {
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
