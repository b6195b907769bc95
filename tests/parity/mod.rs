//! The parity cases of `tests/parity/cases.yaml` and how each side's verdict is read: the API
//! server's through kubectl's error text, `webrtc-egress validate`'s through its output. Both
//! are reduced to accepted-or-not plus the set of field paths named.

use std::collections::BTreeSet;
use std::fmt;
use std::process::Output;
use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub valid: bool,
    pub yaml: String,
    #[serde(default)]
    pub divergence: Option<String>,
}

pub fn cases() -> Vec<Case> {
    let text = include_str!("cases.yaml");
    let cases: Vec<Case> = serde_yaml::from_str(text).expect("tests/parity/cases.yaml");
    let mut names = BTreeSet::new();
    for case in &cases {
        assert!(names.insert(&case.name), "duplicate case {}", case.name);
    }
    cases
}

impl Case {
    /// The whole manifest: the case's YAML under the type and object metadata.
    pub fn manifest(&self) -> String {
        format!(
            "apiVersion: webrtc.dragonfork.io/v1alpha1\nkind: WebRTCEgress\nmetadata:\n  name: {}\n{}",
            self.name, self.yaml
        )
    }
}

/// One side's judgement of a manifest.
#[derive(Debug)]
pub struct Verdict {
    pub accepted: bool,
    pub paths: BTreeSet<String>,
    /// What the tool printed, shown when the two differ.
    pub text: String,
}

impl PartialEq for Verdict {
    fn eq(&self, other: &Self) -> bool {
        (self.accepted, &self.paths) == (other.accepted, &other.paths)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.accepted {
            f.write_str("accepted")
        } else {
            let paths: Vec<&str> = self.paths.iter().map(String::as_str).collect();
            write!(f, "refused [{}]", paths.join(", "))
        }
    }
}

/// A field path as the API server writes it: `spec.processes[0].id`, `spec.pod.x.y`.
const PATH: &str = r"[A-Za-z][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_./-]*[A-Za-z0-9_-]|\[[^\]\s]*\])*";

/// `field.ErrorType` texts the API server puts after a path.
const ERROR_TYPES: &str = "Invalid value|Required value|Unsupported value|Duplicate value|\
                           Too many|Too long|Too short|Forbidden|Not found|Internal error";

/// The API server's verdict from `kubectl apply --dry-run=server`'s output. Field errors read
/// `PATH: Invalid value: ...` (one, or several in a list); unknown fields read
/// `unknown field "PATH"`. A refusal that is neither (no cluster, no CRD) is a test failure,
/// never a verdict.
pub fn api_verdict(output: &Output) -> Verdict {
    static FIELD: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(&format!(r"({PATH}): (?:{ERROR_TYPES})\b")).unwrap());
    static STRICT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"(?:unknown|duplicate) field "([^"]+)""#).unwrap());
    // An integer past its `format` is reported without a path (`<nil>: ...`), naming the
    // field only in the message.
    static FORMAT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&format!(
            r"Checked value must be of type \w+ with format \w+ in ({PATH})"
        ))
        .unwrap()
    });
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        return Verdict {
            accepted: true,
            paths: BTreeSet::new(),
            text,
        };
    }
    assert!(
        text.contains(" is invalid") || text.contains("strict decoding error"),
        "kubectl failed for another reason than the manifest: {text}"
    );
    // The message of an `Invalid value` repeats its path (`spec.x in body should ...`), never
    // followed by an error type; `<nil>` (rules skipped after a type error) is no path.
    let paths = [&*STRICT, &*FIELD, &*FORMAT]
        .iter()
        .flat_map(|re| re.captures_iter(&text).map(|c| c[1].to_owned()))
        .collect();
    Verdict {
        accepted: false,
        paths,
        text,
    }
}

/// `webrtc-egress validate`'s verdict: it prints one `  PATH: message` line per field error.
pub fn our_verdict(output: &Output) -> Verdict {
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    let paths = text
        .lines()
        .filter_map(|line| line.strip_prefix("  "))
        .filter_map(|line| line.split_once(": ").map(|(path, _)| path.to_owned()))
        .collect();
    Verdict {
        accepted: output.status.success(),
        paths,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn output(code: i32, stderr: &str) -> Output {
        Output {
            status: ExitStatus::from_raw(code << 8),
            stdout: vec![],
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    fn paths(verdict: &Verdict) -> Vec<&str> {
        verdict.paths.iter().map(String::as_str).collect()
    }

    /// The shapes of kubectl's refusals, as kube-apiserver 1.37 words them.
    #[test]
    fn api_server_refusals_are_read_as_paths() {
        let list = api_verdict(&output(
            1,
            "The WebRTCEgress \"x\" is invalid: \n\
             * spec.processes[2].inputs[0].address: Invalid value: \"boolean\": \
             spec.processes[2].inputs[0].address in body must be of type string: \"boolean\"\n\
             * spec.processes[2]: Duplicate value: {\"id\":\"cam1\"}\n\
             * spec.pod.resources.limits.example.org/gpu: Invalid value: \"x\": ...\n\
             * <nil>: Invalid value: null: some validation rules were not checked because the \
             object was invalid; correct the existing errors to complete validation\n",
        ));
        assert!(!list.accepted);
        assert_eq!(
            paths(&list),
            [
                "spec.pod.resources.limits.example.org/gpu",
                "spec.processes[2]",
                "spec.processes[2].inputs[0].address"
            ]
        );
        let one = api_verdict(&output(
            1,
            "The WebRTCEgress \"x\" is invalid: spec.replicas: Invalid value: -1: spec.replicas \
             in body should be greater than or equal to 0\n",
        ));
        assert_eq!(paths(&one), ["spec.replicas"]);
        let strict = api_verdict(&output(
            1,
            "Error from server (BadRequest): error when creating \"/tmp/a.yaml\": WebRTCEgress in \
             version \"v1alpha1\" cannot be handled as a WebRTCEgress: strict decoding error: \
             unknown field \"spec.webrtc.nat1to1IPs\", unknown field \"sepc\"\n",
        ));
        assert_eq!(paths(&strict), ["sepc", "spec.webrtc.nat1to1IPs"]);
        let format = api_verdict(&output(
            1,
            "The WebRTCEgress \"x\" is invalid: <nil>: Invalid value: \"\": Checked value must be \
             of type integer with format int32 in spec.replicas\n",
        ));
        assert_eq!(paths(&format), ["spec.replicas"]);
        let ok = api_verdict(&output(0, ""));
        assert!(ok.accepted && ok.paths.is_empty());
    }

    #[test]
    #[should_panic(expected = "another reason than the manifest")]
    fn a_kubectl_failure_is_no_verdict() {
        api_verdict(&output(
            1,
            "error: resource mapping not found for name: \"x\": no matches for kind \"WebRTCEgress\"",
        ));
    }

    #[test]
    fn validate_output_is_read_as_paths() {
        let ours = our_verdict(&output(
            1,
            "error: /tmp/a.yaml: invalid WebRTCEgress (2 errors):\n  \
             spec.webrtc.nat1to1IPs: unknown field; did you mean nat1To1IPs?\n  \
             spec.processes[0].id: \"Cam1\" is not a DNS-1123 label\n",
        ));
        assert_eq!(
            paths(&ours),
            ["spec.processes[0].id", "spec.webrtc.nat1to1IPs"]
        );
        assert!(our_verdict(&output(0, "")).accepted);
    }
}
