//! The operator↔agent contract: the stream entries of a `WebRTCEgress`, which the operator
//! writes into ConfigMap `NAME-streams` and every egress pod reads back. Both sides import this
//! module and neither owns it, so the data plane never depends on the operator.
//!
//! One key per process (`process.{id}.yaml`, YAML of its `ProcessSpec`), so adding or removing
//! a process touches only its own entry, plus `webrtc.yaml` with the effective WebRTC settings
//! and `limits.yaml` with the pod's viewer capacity (absent: no cap of the resource's own).

use std::collections::BTreeMap;

use crate::crd::{
    Limits, ProcessSpec, ValidationErrors, WebRTCEgressSpec, WebRtcSettings, validate,
};

/// Key holding the effective `spec.webrtc` (YAML).
pub const WEBRTC_KEY: &str = "webrtc.yaml";
/// Key holding `spec.limits` (YAML); written only when the resource sets a limit.
pub const LIMITS_KEY: &str = "limits.yaml";
const PROCESS_PREFIX: &str = "process.";
const PROCESS_SUFFIX: &str = ".yaml";

/// Name of the ConfigMap with the stream entries of the resource `name`.
pub fn configmap_name(name: &str) -> String {
    format!("{name}-streams")
}

/// Key of one process's entry.
pub fn process_key(id: &str) -> String {
    format!("{PROCESS_PREFIX}{id}{PROCESS_SUFFIX}")
}

/// What an egress pod serves: the WebRTC settings and the processes, sorted by id.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StreamEntries {
    pub webrtc: WebRtcSettings,
    pub limits: Limits,
    pub processes: Vec<ProcessSpec>,
}

/// Why entries could not be read back; what runs is kept when this happens.
#[derive(Debug, thiserror::Error)]
pub enum EntriesError {
    #[error("no {WEBRTC_KEY} entry")]
    MissingWebrtc,
    #[error("{key}: {source}")]
    Yaml {
        key: String,
        source: serde_yaml::Error,
    },
    #[error("{key}: holds process {id:?}")]
    WrongId { key: String, id: String },
    #[error("{0}")]
    Invalid(#[from] ValidationErrors),
}

impl StreamEntries {
    /// The entries of a resource's spec, with `webrtc` as the pods should use it.
    pub fn new(webrtc: WebRtcSettings, limits: Limits, processes: &[ProcessSpec]) -> Self {
        let mut processes = processes.to_vec();
        processes.sort_by(|a, b| a.id.cmp(&b.id));
        StreamEntries {
            webrtc,
            limits,
            processes,
        }
    }

    /// The entries of a spec as it stands (what `serve` runs from a manifest).
    pub fn of_spec(spec: &WebRTCEgressSpec) -> Self {
        Self::new(spec.webrtc.clone(), spec.limits.clone(), &spec.processes)
    }

    /// The ConfigMap data the operator writes.
    pub fn encode(&self) -> Result<BTreeMap<String, String>, serde_yaml::Error> {
        let mut data =
            BTreeMap::from([(WEBRTC_KEY.to_owned(), serde_yaml::to_string(&self.webrtc)?)]);
        // Left out when unset, so that resources without limits keep the ConfigMap they had.
        if self.limits != Limits::default() {
            data.insert(LIMITS_KEY.to_owned(), serde_yaml::to_string(&self.limits)?);
        }
        for process in &self.processes {
            data.insert(process_key(&process.id), serde_yaml::to_string(process)?);
        }
        Ok(data)
    }

    /// Reads the entries back and checks them with the resource's rules. Keys other than ours
    /// are ignored, so that newer operators may add some.
    pub fn decode(data: &BTreeMap<String, String>) -> Result<Self, EntriesError> {
        let yaml = |key: &str, source| EntriesError::Yaml {
            key: key.to_owned(),
            source,
        };
        let webrtc = data.get(WEBRTC_KEY).ok_or(EntriesError::MissingWebrtc)?;
        let webrtc: WebRtcSettings =
            serde_yaml::from_str(webrtc).map_err(|e| yaml(WEBRTC_KEY, e))?;
        let limits: Limits = match data.get(LIMITS_KEY) {
            Some(text) => serde_yaml::from_str(text).map_err(|e| yaml(LIMITS_KEY, e))?,
            None => Limits::default(),
        };
        let mut processes = Vec::new();
        for (key, value) in data {
            let Some(id) = key
                .strip_prefix(PROCESS_PREFIX)
                .and_then(|rest| rest.strip_suffix(PROCESS_SUFFIX))
            else {
                continue;
            };
            let process: ProcessSpec = serde_yaml::from_str(value).map_err(|e| yaml(key, e))?;
            if process.id != id {
                return Err(EntriesError::WrongId {
                    key: key.clone(),
                    id: process.id,
                });
            }
            processes.push(process);
        }
        let entries = Self::new(webrtc, limits, &processes);
        validate(&WebRTCEgressSpec {
            webrtc: entries.webrtc.clone(),
            limits: entries.limits.clone(),
            processes: entries.processes.clone(),
            ..Default::default()
        })?;
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::InputSpec;

    fn entries(ids: &[&str]) -> StreamEntries {
        let processes: Vec<ProcessSpec> = ids
            .iter()
            .map(|id| ProcessSpec {
                id: (*id).into(),
                inputs: vec![InputSpec {
                    address: "testsrc2".into(),
                    options: vec!["-f".into(), "lavfi".into()],
                }],
                ..Default::default()
            })
            .collect();
        StreamEntries::new(
            WebRtcSettings {
                udp_port: 9000,
                ..Default::default()
            },
            Limits::default(),
            &processes,
        )
    }

    #[test]
    fn limits_travel_only_when_set() {
        let mut original = entries(&["cam1"]);
        assert!(!original.encode().unwrap().contains_key(LIMITS_KEY));
        original.limits.max_viewers_per_pod = Some(2);
        original.processes[0].max_viewers = Some(1);
        let data = original.encode().unwrap();
        assert_eq!(data[LIMITS_KEY], "maxViewersPerPod: 2\n");
        assert!(data["process.cam1.yaml"].contains("maxViewers: 1"));
        assert_eq!(StreamEntries::decode(&data).unwrap(), original);
    }

    #[test]
    fn names_and_keys() {
        assert_eq!(configmap_name("studio"), "studio-streams");
        assert_eq!(process_key("cam1"), "process.cam1.yaml");
    }

    #[test]
    fn entries_round_trip_sorted_by_id() {
        let original = entries(&["cam2", "cam1"]);
        let data = original.encode().unwrap();
        let keys: Vec<_> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["process.cam1.yaml", "process.cam2.yaml", "webrtc.yaml"]
        );
        assert!(data[WEBRTC_KEY].contains("udpPort: 9000"));
        let back = StreamEntries::decode(&data).unwrap();
        assert_eq!(back, original);
        let ids: Vec<_> = back.processes.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["cam1", "cam2"]);
    }

    #[test]
    fn broken_entries_are_refused_with_the_key_named() {
        let good = entries(&["cam1"]).encode().unwrap();

        let mut data = good.clone();
        data.remove(WEBRTC_KEY);
        let error = StreamEntries::decode(&data).unwrap_err();
        assert!(matches!(error, EntriesError::MissingWebrtc));
        assert_eq!(error.to_string(), "no webrtc.yaml entry");

        let mut data = good.clone();
        data.insert(
            "process.other.yaml".into(),
            good["process.cam1.yaml"].clone(),
        );
        assert_eq!(
            StreamEntries::decode(&data).unwrap_err().to_string(),
            r#"process.other.yaml: holds process "cam1""#
        );

        let mut data = good.clone();
        data.insert("process.x.yaml".into(), "id: [".into());
        let error = StreamEntries::decode(&data).unwrap_err();
        assert!(matches!(&error, EntriesError::Yaml { key, .. } if key == "process.x.yaml"));

        let mut data = good.clone();
        data.insert(WEBRTC_KEY.into(), "udpPort: 0\n".into());
        let error = StreamEntries::decode(&data).unwrap_err();
        assert!(matches!(error, EntriesError::Invalid(_)));
        assert!(error.to_string().contains("spec.webrtc.udpPort"), "{error}");

        let mut data = good;
        data.insert("future.yaml".into(), "anything".into());
        assert!(
            StreamEntries::decode(&data).is_ok(),
            "unknown keys are ignored"
        );
    }
}
