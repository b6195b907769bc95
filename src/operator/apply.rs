//! Server-side apply that writes only when the cluster lacks part of what we want.
//!
//! The API server only ever adds to an applied object (defaults, other managers' fields), so
//! "every field we set already has our value" — desired ⊆ existing — means an apply would
//! change nothing. Skipping it keeps a steady resource at zero writes; a field someone else
//! changed breaks the inclusion and is applied back.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Error, FIELD_MANAGER};
use crate::crd::quantity_value;

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Created,
    Updated,
}

/// Applies `desired` (force, as [`FIELD_MANAGER`]) unless `existing` already includes it.
/// Returns the object as the cluster now holds it.
pub async fn apply<K>(api: &Api<K>, desired: &K, existing: Option<K>) -> Result<(K, Outcome), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let outcome = match existing {
        Some(existing) if is_subset(&json(desired), &json(&existing)) => {
            return Ok((existing, Outcome::Unchanged));
        }
        Some(_) => Outcome::Updated,
        None => Outcome::Created,
    };
    let name = desired.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(&name, &params, &Patch::Apply(desired))
        .await
        .map_err(Error::kube(format!("apply {} {name}", K::kind(&()))))?;
    Ok((applied, outcome))
}

fn json(object: &impl Serialize) -> Value {
    serde_json::to_value(object).expect("Kubernetes objects serialize to JSON")
}

/// Whether every field set in `desired` has the same value in `existing`.
///
/// - Objects: each key of `desired` must match in `existing`; `null` and `[]` match absence
///   (the API server drops empty fields).
/// - Lists of objects (containers, ports, env, owner references) are keyed lists to the API
///   server, which keeps our order and may hold other managers' items: each desired item must
///   match an existing item, in order, with extra items allowed.
/// - Other lists (args, capabilities) are atomic: equal or not.
/// - Values in `requests`/`limits` maps are quantities, compared by value (`0.5` = `500m`), as
///   the API server rewrites them in canonical form.
pub fn is_subset(desired: &Value, existing: &Value) -> bool {
    subset(desired, existing, Node::Plain)
}

#[derive(Clone, Copy, PartialEq)]
enum Node {
    Plain,
    QuantityMap,
    Quantity,
}

fn subset(desired: &Value, existing: &Value, node: Node) -> bool {
    match (desired, existing) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| {
            let child = match node {
                Node::QuantityMap => Node::Quantity,
                _ if key == "limits" || key == "requests" => Node::QuantityMap,
                _ => Node::Plain,
            };
            match have.get(key) {
                Some(existing) => subset(value, existing, child),
                None => is_empty(value),
            }
        }),
        (Value::Array(want), Value::Array(have)) if want.iter().all(Value::is_object) => {
            let mut have = have.iter();
            want.iter()
                .all(|item| have.any(|existing| subset(item, existing, Node::Plain)))
        }
        (want, have) if node == Node::Quantity => same_quantity(want, have),
        (Value::Null, have) => is_empty(have),
        (want, have) => want == have,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

fn same_quantity(a: &Value, b: &Value) -> bool {
    let value = |v: &Value| match v {
        Value::String(s) => quantity_value(s),
        Value::Number(n) => n.as_f64(),
        _ => None,
    };
    match (value(a), value(b)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_match_when_every_desired_field_matches() {
        let existing = json!({"a": 1, "b": {"c": "x", "d": true}, "extra": "server default"});
        assert!(is_subset(&json!({}), &existing));
        assert!(is_subset(&json!({"a": 1, "b": {"c": "x"}}), &existing));
        assert!(!is_subset(&json!({"a": 2}), &existing));
        assert!(!is_subset(&json!({"b": {"c": "y"}}), &existing));
        assert!(!is_subset(&json!({"missing": 1}), &existing));
        assert!(
            !is_subset(&json!({"b": {"e": {}}}), &existing),
            "empty object must exist"
        );
        // The API server drops empty fields.
        assert!(is_subset(&json!({"none": null, "empty": []}), &existing));
        assert!(!is_subset(&json!({"a": null}), &existing));
    }

    #[test]
    fn lists_of_objects_match_in_order_allowing_extra_items() {
        let existing = json!({"ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "added-by-someone", "port": 1},
            {"name": "media", "port": 8189, "protocol": "UDP"},
        ]});
        let want = |ports| json!({"ports": ports});
        assert!(is_subset(
            &want(json!([{"name": "http", "port": 8080}, {"name": "media"}])),
            &existing
        ));
        assert!(!is_subset(
            &want(json!([{"name": "media"}, {"name": "http"}])),
            &existing
        ));
        assert!(!is_subset(
            &want(json!([{"name": "media", "port": 9000}])),
            &existing
        ));
        assert!(!is_subset(
            &want(json!([{"name": "http"}, {"name": "http"}])),
            &existing
        ));
    }

    #[test]
    fn lists_of_scalars_are_atomic() {
        let existing = json!({"args": ["agent", "--name", "x"]});
        assert!(is_subset(
            &json!({"args": ["agent", "--name", "x"]}),
            &existing
        ));
        assert!(!is_subset(&json!({"args": ["agent", "--name"]}), &existing));
        assert!(!is_subset(
            &json!({"args": ["agent", "x", "--name"]}),
            &existing
        ));
    }

    #[test]
    fn resource_quantities_compare_by_value() {
        let existing = json!({"resources": {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"memory": "1Gi", "cpu": "2"},
        }});
        let want =
            |requests, limits| json!({"resources": {"requests": requests, "limits": limits}});
        assert!(is_subset(
            &want(
                json!({"cpu": "0.5", "memory": "268435456"}),
                json!({"memory": "1024Mi", "cpu": 2})
            ),
            &existing
        ));
        assert!(!is_subset(
            &want(json!({"cpu": "250m"}), json!({})),
            &existing
        ));
        assert!(!is_subset(
            &want(json!({}), json!({"memory": "1G"})),
            &existing
        ));
        // Only quantities: elsewhere "0.5" and "500m" are different strings.
        assert!(!is_subset(
            &json!({"image": "0.5"}),
            &json!({"image": "500m"})
        ));
    }
}
