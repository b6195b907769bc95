//! The checked-in CRD matches the Rust types, and its schema carries the rules that make the
//! API server refuse what `crd::validate` refuses.

use std::path::PathBuf;

use kube::{CustomResourceExt, Resource};
use serde_json::{Value, json};
use webrtc_egress::crd::{self, WebRTCEgress};

fn crd_json() -> Value {
    serde_json::to_value(WebRTCEgress::crd()).unwrap()
}

/// The schema at `pointer` below the version's `openAPIV3Schema`.
fn schema_at(pointer: &str) -> Value {
    let root = crd_json();
    let path = format!("/spec/versions/0/schema/openAPIV3Schema{pointer}");
    root.pointer(&path)
        .unwrap_or_else(|| panic!("no schema at {path}"))
        .clone()
}

const PROCESS: &str = "/properties/spec/properties/processes";
const WEBRTC: &str = "/properties/spec/properties/webrtc/properties";

#[test]
fn checked_in_crd_matches_the_types() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds/webrtcegress.yaml");
    let generated = crd::crd_yaml();
    if std::env::var_os("UPDATE_CRDS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is out of date with src/crd/; regenerate it with \
         `UPDATE_CRDS=1 cargo test --test crd` and commit the result",
        path.display()
    );
}

#[test]
fn crd_yaml_is_the_crd() {
    let parsed: Value = serde_yaml::from_str(&crd::crd_yaml()).unwrap();
    assert_eq!(parsed, crd_json());
}

#[test]
fn names_scope_and_subresources() {
    let crd = crd_json();
    assert_eq!(
        crd["metadata"]["name"],
        "webrtcegresses.webrtc.dragonfork.io"
    );
    assert_eq!(crd["spec"]["group"], "webrtc.dragonfork.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let names = &crd["spec"]["names"];
    assert_eq!(names["kind"], "WebRTCEgress");
    assert_eq!(names["plural"], "webrtcegresses");
    assert_eq!(names["singular"], "webrtcegress");
    assert_eq!(names["shortNames"], json!(["wegress"]));
    assert_eq!(names["categories"], json!(["webrtc"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["served"], true);
    assert_eq!(version["storage"], true);
    assert_eq!(
        version["subresources"],
        json!({"status": {}, "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }})
    );
    assert_eq!(WebRTCEgress::api_version(&()), crd::API_VERSION);
    assert_eq!(WebRTCEgress::kind(&()), crd::KIND);
}

#[test]
fn printer_columns() {
    let columns = &crd_json()["spec"]["versions"][0]["additionalPrinterColumns"];
    assert_eq!(
        columns,
        &json!([
            {"name": "READY", "type": "string",
             "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
            {"name": "LIVE", "type": "string", "jsonPath": ".status.live"},
            {"name": "STREAMS", "type": "integer", "jsonPath": ".status.streamCount"},
            {"name": "REPLICAS", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ])
    );
}

#[test]
fn process_ids_are_unique_dns_labels() {
    let processes = schema_at(PROCESS);
    assert_eq!(processes["x-kubernetes-list-type"], "map");
    assert_eq!(processes["x-kubernetes-list-map-keys"], json!(["id"]));
    let item = &processes["items"];
    assert_eq!(
        item["properties"]["id"]["pattern"],
        "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    );
    assert_eq!(item["properties"]["id"]["maxLength"], 63);
    // A list-map key must be required.
    assert!(item["required"].as_array().unwrap().contains(&json!("id")));
}

#[test]
fn every_process_has_an_input_with_an_address() {
    let inputs = schema_at(&format!("{PROCESS}/items/properties/inputs"));
    assert_eq!(inputs["minItems"], 1);
    assert_eq!(inputs["items"]["properties"]["address"]["minLength"], 1);
    assert_eq!(inputs["items"]["required"], json!(["address"]));
}

#[test]
fn ip_fields_are_checked_with_cel_isip() {
    let rule = json!([{
        "rule": "isIP(self)",
        "messageExpression": "self + ' is not an IP address'",
        "message": "must be an IPv4 or IPv6 address",
    }]);
    let public_ip = schema_at(&format!("{WEBRTC}/publicIP"));
    assert_eq!(public_ip["x-kubernetes-validations"], rule);
    assert_eq!(public_ip["maxLength"], 45);
    let nat = schema_at(&format!("{WEBRTC}/nat1To1IPs"));
    assert_eq!(nat["items"]["x-kubernetes-validations"], rule);
    assert_eq!(nat["items"]["maxLength"], 45);
    assert_eq!(nat["maxItems"], 32);
}

#[test]
fn numbers_are_bounded() {
    let udp_port = schema_at(&format!("{WEBRTC}/udpPort"));
    assert_eq!(
        (&udp_port["type"], &udp_port["format"]),
        (&json!("integer"), &json!("int32"))
    );
    assert_eq!(
        (udp_port["minimum"].as_f64(), udp_port["maximum"].as_f64()),
        (Some(1.0), Some(65535.0))
    );
    assert_eq!(udp_port["default"], 8189);

    let replicas = schema_at("/properties/spec/properties/replicas");
    assert_eq!(replicas["minimum"].as_f64(), Some(0.0));
    assert_eq!(replicas["default"], 1);

    for (media, min, max) in [("video", 100.0, 50000.0), ("audio", 16.0, 512.0)] {
        let bitrate = schema_at(&format!(
            "{PROCESS}/items/properties/{media}/properties/bitrateKbps"
        ));
        assert_eq!(bitrate["format"], "int32", "{media}");
        assert_eq!(
            (bitrate["minimum"].as_f64(), bitrate["maximum"].as_f64()),
            (Some(min), Some(max)),
            "{media}"
        );
    }
}

#[test]
fn codecs_and_modes_are_closed_string_enums() {
    let media = format!("{PROCESS}/items/properties");
    for (field, values) in [
        ("video/properties/codec", json!(["h264"])),
        ("video/properties/mode", json!(["transcode", "passthrough"])),
        ("audio/properties/codec", json!(["opus"])),
    ] {
        let schema = schema_at(&format!("{media}/{field}"));
        assert_eq!(schema["type"], "string", "{field}");
        assert_eq!(schema["enum"], values, "{field}");
    }
}

#[test]
fn ice_server_urls_are_stun_or_turn() {
    let urls = schema_at(&format!("{WEBRTC}/iceServers/items/properties/urls"));
    assert_eq!(urls["minItems"], 1);
    assert_eq!(urls["items"]["pattern"], "^(stun|stuns|turn|turns):.+");
}

#[test]
fn status_conditions_are_a_map_keyed_by_type() {
    let conditions = schema_at("/properties/status/properties/conditions");
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    let required = conditions["items"]["required"].as_array().unwrap();
    assert!(required.contains(&json!("type")));
    for field in [
        "streamCount",
        "readyReplicas",
        "observedGeneration",
        "advertisedIPs",
    ] {
        schema_at(&format!("/properties/status/properties/{field}"));
    }
}

/// Kubernetes refuses schemas that are not structural: every node declares its type, and
/// there is no `$ref` nor any `oneOf`/`anyOf`/`allOf` (we need none of them).
#[test]
fn schema_is_structural() {
    fn walk(node: &Value, path: &str) {
        let map = node
            .as_object()
            .unwrap_or_else(|| panic!("non-object schema at {path}"));
        for key in [
            "$ref",
            "oneOf",
            "anyOf",
            "allOf",
            "not",
            "const",
            "$defs",
            "definitions",
        ] {
            assert!(!map.contains_key(key), "{key} at {path}");
        }
        assert!(map.contains_key("type"), "untyped node at {path}");
        if let Some(properties) = map.get("properties").and_then(Value::as_object) {
            for (name, child) in properties {
                walk(child, &format!("{path}.{name}"));
            }
        }
        if let Some(items) = map.get("items") {
            walk(items, &format!("{path}[]"));
        }
    }
    walk(&schema_at(""), "");
}
