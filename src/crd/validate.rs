//! The schema's rules in Rust, for manifests that never meet an API server; each error names
//! the field the way the API server would (`spec.processes[1].id`).

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use super::quantity::quantity_value;
use super::*;

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

/// Every field error of a manifest, so a user fixes them all in one pass: those of its shape
/// (unknown fields, types) first, then the rules its spec breaks, each in document order.
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
            // The API server names the list item (`processes` is a map keyed by `id`).
            errors.push(FieldError::new(
                &path,
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
        validate_renditions(&process.video, &format!("{path}.video"), &mut errors);
        check_range(
            &format!("{path}.maxViewers"),
            process.max_viewers,
            (1, MAX_VIEWERS),
            &mut errors,
        );
    }
    check_range(
        "spec.limits.maxViewersPerPod",
        spec.limits.max_viewers_per_pod,
        (1, MAX_VIEWERS),
        &mut errors,
    );
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
            // As the pattern's `.+` reads it (RE2: `.` is any character but a newline).
            let valid = ICE_URL_SCHEMES.iter().any(|scheme| {
                url.strip_prefix(scheme)
                    .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('\n'))
            });
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
    if let Some(drain) = pod.drain_seconds
        && drain > MAX_DRAIN_SECONDS
    {
        errors.push(FieldError::new(
            "spec.pod.drainSeconds",
            format!("{drain} is out of range 0..{MAX_DRAIN_SECONDS}"),
        ));
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

fn validate_renditions(video: &VideoSpec, path: &str, errors: &mut Vec<FieldError>) {
    let renditions = &video.renditions;
    if renditions.is_empty() {
        return;
    }
    if video.mode != VideoMode::Transcode || video.bitrate_kbps.is_some() {
        errors.push(FieldError::new(path, schema::RENDITIONS_MODE_MESSAGE));
    }
    let path = format!("{path}.renditions");
    if renditions.len() > MAX_RENDITIONS {
        errors.push(FieldError::new(
            &path,
            format!("at most {MAX_RENDITIONS} renditions are allowed"),
        ));
    }
    let mut names = HashSet::new();
    for (i, rendition) in renditions.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if !is_dns_label(&rendition.name) || rendition.name.len() > RENDITION_NAME_MAX_LEN {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!(
                    "{:?} is not a DNS-1123 label of at most {RENDITION_NAME_MAX_LEN} characters",
                    rendition.name
                ),
            ));
        } else if !names.insert(rendition.name.as_str()) {
            errors.push(FieldError::new(
                &at,
                format!("duplicate rendition name {:?}", rendition.name),
            ));
        }
        check_range(
            &format!("{at}.height"),
            Some(rendition.height),
            RENDITION_HEIGHT,
            errors,
        );
        check_range(
            &format!("{at}.bitrateKbps"),
            Some(rendition.bitrate_kbps),
            VIDEO_BITRATE_KBPS,
            errors,
        );
    }
    let rates: Vec<u32> = renditions.iter().map(|r| r.bitrate_kbps).collect();
    let up = rates.windows(2).all(|w| w[0] < w[1]);
    let down = rates.windows(2).all(|w| w[0] > w[1]);
    if !up && !down {
        errors.push(FieldError::new(&path, schema::RENDITIONS_ORDER_MESSAGE));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::fixtures::*;
    use serde_json::json;

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

        // Beyond u16 the type itself refuses, naming the field.
        let text = manifest_with_spec("  webrtc: {udpPort: 70000}\n");
        let message = field_errors(&text);
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
            r#"spec.processes[2]: duplicate process id "cam1""#
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
                urls: vec![
                    "https://example.org".into(),
                    "stun:".into(),
                    "stun:\nx".into(),
                    "stun:x\n".into(),
                ],
                ..Default::default()
            },
        ];
        assert_eq!(
            errors(&spec),
            "spec.webrtc.iceServers[1].urls: at least one URL is required; \
             spec.webrtc.iceServers[2].urls[0]: \"https://example.org\" is not a stun:, stuns:, \
             turn: or turns: URL; \
             spec.webrtc.iceServers[2].urls[1]: \"stun:\" is not a stun:, stuns:, turn: or turns: URL; \
             spec.webrtc.iceServers[2].urls[2]: \"stun:\\nx\" is not a stun:, stuns:, turn: or turns: URL"
        );
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
}
