//! The Helm chart (`charts/webrtc-egress`): `helm lint`, and `helm template` with the default
//! values and with every optional feature on, checked object by object — least-privilege RBAC,
//! secure pod defaults, flags the real operator parses, images that agree — plus the values
//! schema refusing bad values and the chart's CRD matching `crds/`.
//!
//! Needs `helm` (v3): `$HELM`, else `helm` on `PATH`, else the one the cluster scripts build
//! under `~/.cache/webrtc-egress/k8s-*/bin/`. Missing helm is a failure, not a skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use clap::{Args, FromArgMatches};
use serde::Deserialize;
use serde_json::{Value, json};
use webrtc_egress::operator::{DEFAULT_AGENT_IMAGE, OperatorArgs};

const RELEASE: &str = "egress";
const NAMESPACE: &str = "media-system";
/// Object name prefix for the release `egress` of the chart `webrtc-egress`.
const FULLNAME: &str = "egress-webrtc-egress";
const OPERATOR: &str = "egress-webrtc-egress-operator";
const AGENT_SA: &str = "webrtc-egress-agent";

/// Every optional feature on.
const ALL_FEATURES: &[&str] = &[
    "--set",
    "replicaCount=2",
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.serviceMonitor.labels.release=prometheus",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "podDisruptionBudget.enabled=true",
    "--set",
    "agent.hostNetworkNodeLookup=true",
    "--set",
    "agent.namespaces={default,media,studio}",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/webrtc-egress")
}

/// The helm binary; panics with what to do when there is none.
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let found = find_helm();
        let helm = found.unwrap_or_else(|| {
            panic!(
                "helm (v3) not found: set $HELM, put helm on PATH, or let tests/cluster/up build \
                 it into ~/.cache/webrtc-egress/k8s-*/bin/ — the chart tests cannot run without it"
            )
        });
        let version = Command::new(&helm)
            .args(["version", "--short"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm.display()));
        let version = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.trim_start().starts_with("v3."),
            "{} is not helm v3: {version}",
            helm.display()
        );
        helm
    })
}

fn find_helm() -> Option<PathBuf> {
    if let Some(helm) = std::env::var_os("HELM") {
        return Some(PathBuf::from(helm));
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("helm"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let cache = PathBuf::from(std::env::var_os("HOME")?).join(".cache/webrtc-egress");
        let mut candidates: Vec<PathBuf> = std::fs::read_dir(cache)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("k8s-"))
            .flat_map(|e| [e.path().join("bin/helm"), e.path().join("helm")])
            .filter(|p| p.is_file())
            .collect();
        candidates.sort();
        candidates.pop()
    })
}

fn run_helm(args: &[&str]) -> Output {
    // Keep helm away from the user's repositories, plugins and kubeconfig.
    let home = tempfile::tempdir().unwrap();
    Command::new(helm())
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm().display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `helm template` output, or helm's error message.
fn try_render(extra: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let output = run_helm(&args);
    if !output.status.success() {
        return Err(text(&output.stderr));
    }
    let stdout = text(&output.stdout);
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&stdout) {
        let value = serde_yaml::Value::deserialize(document)
            .unwrap_or_else(|e| panic!("helm template printed invalid YAML ({e}):\n{stdout}"));
        if !value.is_null() {
            objects.push(serde_json::to_value(value).unwrap());
        }
    }
    Ok(objects)
}

fn render(extra: &[&str]) -> Rendered {
    Rendered(try_render(extra).unwrap_or_else(|e| panic!("helm template {extra:?} failed:\n{e}")))
}

/// `helm template` must refuse these values; returns its message.
fn render_error(extra: &[&str]) -> String {
    match try_render(extra) {
        Ok(_) => panic!("helm template {extra:?} succeeded; it should have been refused"),
        Err(message) => message,
    }
}

struct Rendered(Vec<Value>);

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        self.get(kind, name).unwrap_or_else(|| {
            panic!(
                "no {kind} {name} among {:?}",
                self.kinds_and_names().collect::<Vec<_>>()
            )
        })
    }

    fn kinds_and_names(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().map(|o| {
            format!(
                "{}/{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["namespace"].as_str().unwrap_or("-"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
    }

    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for object in &self.0 {
            *kinds
                .entry(object["kind"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        kinds
    }

    fn deployment(&self) -> &Value {
        self.one("Deployment", OPERATOR)
    }

    fn container(&self) -> &Value {
        let containers = self.deployment()["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    fn args(&self) -> Vec<String> {
        strings(&self.container()["args"])
    }

    /// The container's args as the real `webrtc-egress operator` parses them.
    fn operator_args(&self) -> OperatorArgs {
        let args = self.args();
        assert_eq!(args.first().map(String::as_str), Some("operator"));
        let command = OperatorArgs::augment_args(clap::Command::new("operator"));
        let matches = command
            .try_get_matches_from(&args)
            .unwrap_or_else(|e| panic!("the operator refuses the chart's args {args:?}:\n{e}"));
        OperatorArgs::from_arg_matches(&matches).unwrap()
    }

    /// Rules of the Role or ClusterRole `name`.
    fn rules(&self, kind: &str, name: &str) -> Vec<Rule> {
        self.one(kind, name)["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(Rule::from)
            .collect()
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
    verbs: Vec<String>,
}

impl From<&Value> for Rule {
    fn from(rule: &Value) -> Self {
        Rule {
            api_groups: strings(&rule["apiGroups"]),
            resources: strings(&rule["resources"]),
            resource_names: strings(&rule["resourceNames"]),
            verbs: strings(&rule["verbs"]),
        }
    }
}

/// Every (apiGroup, resource, verb) a set of rules grants, resource names aside.
fn grants(rules: &[Rule]) -> BTreeSet<(String, String, String)> {
    let mut grants = BTreeSet::new();
    for rule in rules {
        for group in &rule.api_groups {
            for resource in &rule.resources {
                for verb in &rule.verbs {
                    grants.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    grants
}

fn grant_set(items: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    for (group, resource, verbs) in items {
        for verb in *verbs {
            set.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    set
}

/// What the operator's code calls (src/operator): its controller, reads, server-side apply,
/// status merge patch, events, and the egress pods' reports (list/watch). Nothing else.
fn operator_grants() -> BTreeSet<(String, String, String)> {
    const READ_APPLY: &[&str] = &["get", "list", "watch", "create", "patch"];
    grant_set(&[
        (
            "webrtc.dragonfork.io",
            "webrtcegresses",
            &["get", "list", "watch"],
        ),
        ("webrtc.dragonfork.io", "webrtcegresses/status", &["patch"]),
        (
            "webrtc.dragonfork.io",
            "webrtcegresses/finalizers",
            &["update"],
        ),
        ("", "configmaps", READ_APPLY),
        ("", "services", READ_APPLY),
        ("apps", "deployments", READ_APPLY),
        ("", "pods", &["list", "watch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
    ])
}

// ---------------------------------------------------------------------------------------------

#[test]
fn chart_crd_is_the_top_level_crd() {
    let top = root().join("crds/webrtcegress.yaml");
    let in_chart = chart().join("crds/webrtcegress.yaml");
    let top_text = std::fs::read_to_string(&top).unwrap();
    if std::env::var_os("UPDATE_CRDS").is_some() {
        // As tests/crd.rs regenerates crds/: from the types, whichever test runs first.
        std::fs::write(&in_chart, webrtc_egress::crd::crd_yaml()).unwrap();
        return;
    }
    let chart_text = std::fs::read_to_string(&in_chart).unwrap_or_default();
    assert!(
        chart_text == top_text,
        "{} differs from {}; copy it with `cp crds/webrtcegress.yaml charts/webrtc-egress/crds/` \
         (or `UPDATE_CRDS=1 cargo test --test chart`) and commit the result",
        in_chart.display(),
        top.display()
    );
    // Nothing else in the chart's crds/: Helm would install it too.
    let entries: Vec<_> = std::fs::read_dir(chart().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["webrtcegress.yaml"]);
}

#[test]
fn chart_follows_the_crate_version_and_image() {
    let chart_yaml: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(
        chart_yaml["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion must follow Cargo.toml's version (it is the default image tag)"
    );
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let (repository, _tag) = DEFAULT_AGENT_IMAGE.rsplit_once(':').unwrap();
    assert_eq!(
        values["image"]["repository"], repository,
        "the chart's image is the operator's default agent image"
    );
    let defaults = render(&[]).operator_args();
    // The chart's default agent ServiceAccount name is the operator's default.
    assert_eq!(values["agent"]["serviceAccount"]["name"], AGENT_SA);
    let bare = OperatorArgs::from_arg_matches(
        &OperatorArgs::augment_args(clap::Command::new("operator"))
            .try_get_matches_from(["operator"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bare.agent_service_account, AGENT_SA);
    assert_eq!(defaults.agent_service_account, AGENT_SA);
}

#[test]
fn helm_lint_passes_with_default_and_all_features() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for extra in [
        &[][..],
        ALL_FEATURES,
        &["--set", "operator.watchNamespace=media"],
    ] {
        let mut args = vec!["lint", "--strict", chart, "--namespace", NAMESPACE];
        args.extend_from_slice(extra);
        let output = run_helm(&args);
        assert!(
            output.status.success(),
            "helm lint {extra:?} failed:\n{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }
}

#[test]
fn default_values_render_the_operator_and_its_least_privilege() {
    let out = render(&[]);
    let kinds = out.kinds();
    let expected: BTreeMap<String, usize> = [
        ("CustomResourceDefinition", 1),
        ("ServiceAccount", 2), // the operator's, and the agents' in `default`
        ("ClusterRole", 2),    // operator, agent
        ("ClusterRoleBinding", 1),
        ("Role", 1),        // leader election
        ("RoleBinding", 2), // leader election, agent in `default`
        ("Service", 1),
        ("Deployment", 1),
        ("Lease", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    assert_eq!(
        kinds,
        expected,
        "{:#?}",
        out.kinds_and_names().collect::<Vec<_>>()
    );

    let deployment = out.deployment();
    assert_eq!(deployment["metadata"]["namespace"], NAMESPACE);
    assert_eq!(deployment["spec"]["replicas"], 1);
    let image = format!(
        "ghcr.io/dragonfork/webrtc-egress:{}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(out.container()["image"], image.as_str());
    assert_eq!(out.container()["imagePullPolicy"], "IfNotPresent");

    let args = out.operator_args();
    assert_eq!(
        args.agent_image, image,
        "egress pods default to the same image"
    );
    assert_eq!(args.agent_service_account, AGENT_SA);
    assert_eq!(args.leader_election, Some(true));
    assert_eq!(args.lease_name, OPERATOR);
    assert_eq!(args.lease_namespace, NAMESPACE);
    assert_eq!(args.namespace, None, "all namespaces");
    assert_eq!(args.listen.port(), 8081);

    // Leader election's Role: its own Lease only, which the chart creates.
    let lease_rules = out.rules("Role", &format!("{OPERATOR}-leader-election"));
    assert_eq!(
        lease_rules,
        [Rule {
            api_groups: vec!["coordination.k8s.io".into()],
            resources: vec!["leases".into()],
            resource_names: vec![OPERATOR.into()],
            verbs: vec!["get".into(), "patch".into()],
        }]
    );
    let lease = out.one("Lease", OPERATOR);
    assert_eq!(lease["metadata"]["namespace"], NAMESPACE);
    assert!(
        lease["spec"].is_null(),
        "the holder is the operator's to write"
    );
    assert_eq!(
        out.one("Role", &format!("{OPERATOR}-leader-election"))["metadata"]["namespace"],
        NAMESPACE
    );

    // The agents: ServiceAccount + RoleBinding in `default`, bound to a ClusterRole that reads
    // stream entries and writes nothing but its pods' status (src/agent: the ConfigMap watch,
    // the report's server-side apply to pods/status).
    let agent_sa = out.one("ServiceAccount", AGENT_SA);
    assert_eq!(agent_sa["metadata"]["namespace"], "default");
    assert_eq!(
        grants(&out.rules("ClusterRole", &format!("{FULLNAME}-agent"))),
        grant_set(&[
            ("", "configmaps", &["get", "list", "watch"]),
            ("", "pods/status", &["patch"]),
            ("", "secrets", &["get"]),
        ])
    );
    assert!(
        out.get("ClusterRole", &format!("{FULLNAME}-agent-nodes"))
            .is_none(),
        "no node access unless agent.hostNetworkNodeLookup"
    );
    for absent in ["ServiceMonitor", "NetworkPolicy", "PodDisruptionBudget"] {
        assert!(
            out.of_kind(absent).is_empty(),
            "{absent} is optional, off by default"
        );
    }
    check_invariants(&out);
}

#[test]
fn every_optional_feature_renders_consistently() {
    let out = render(ALL_FEATURES);
    let kinds = out.kinds();
    for (kind, count) in [
        ("ServiceMonitor", 1),
        ("NetworkPolicy", 1),
        ("PodDisruptionBudget", 1),
        ("Deployment", 1),
        ("Service", 1),
        ("ServiceAccount", 4), // operator + agent in default, media, studio
        ("ClusterRole", 3),    // operator, agent, agent-nodes
        ("ClusterRoleBinding", 2),
        ("Role", 1),
        ("RoleBinding", 4), // leader election + agent in 3 namespaces
    ] {
        assert_eq!(kinds.get(kind), Some(&count), "{kind}: {kinds:?}");
    }
    assert_eq!(out.deployment()["spec"]["replicas"], 2);
    assert_eq!(out.operator_args().leader_election, Some(true));
    // Two replicas prefer different nodes.
    let anti = &out.deployment()["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    assert!(anti.is_object(), "anti-affinity with replicas > 1");

    let pod_labels = &out.deployment()["spec"]["template"]["metadata"]["labels"];
    let selects_pods = |selector: &Value, what: &str| {
        let selector = selector.as_object().unwrap();
        assert!(!selector.is_empty(), "{what}: empty selector");
        for (key, value) in selector {
            assert_eq!(&pod_labels[key], value, "{what} selects {key}={value}");
        }
    };
    selects_pods(
        &out.deployment()["spec"]["selector"]["matchLabels"],
        "Deployment",
    );
    let service = out.one("Service", &format!("{OPERATOR}-metrics"));
    selects_pods(&service["spec"]["selector"], "metrics Service");
    let pdb = out.one("PodDisruptionBudget", OPERATOR);
    selects_pods(
        &pdb["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let policy = out.one("NetworkPolicy", OPERATOR);
    selects_pods(
        &policy["spec"]["podSelector"]["matchLabels"],
        "NetworkPolicy",
    );

    // ServiceMonitor → metrics Service → container port.
    let monitor = out.one("ServiceMonitor", OPERATOR);
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "ServiceMonitor selects {key}"
        );
    }
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(service["spec"]["ports"][0]["name"], "metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");

    // NetworkPolicy: metrics in; DNS and the API server out; nothing else.
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": "metrics", "protocol": "TCP"}])
    );
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 2);
    assert!(
        egress.iter().all(|rule| rule["ports"].is_array()),
        "egress by port only"
    );

    // Nodes: get only, for the agent ServiceAccounts of every listed namespace.
    assert_eq!(
        grants(&out.rules("ClusterRole", &format!("{FULLNAME}-agent-nodes"))),
        grant_set(&[("", "nodes", &["get"])])
    );
    let binding = out.one("ClusterRoleBinding", &format!("{FULLNAME}-agent-nodes"));
    let subjects: Vec<_> = binding["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["namespace"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        subjects,
        [
            (AGENT_SA, "default"),
            (AGENT_SA, "media"),
            (AGENT_SA, "studio")
        ]
    );
    for namespace in ["default", "media", "studio"] {
        let found = out.of_kind("RoleBinding").into_iter().any(|b| {
            b["metadata"]["namespace"] == namespace
                && b["roleRef"]["name"] == format!("{FULLNAME}-agent").as_str()
        });
        assert!(found, "agent RoleBinding in {namespace}");
    }
    check_invariants(&out);
}

/// Checks that hold for every rendering.
fn check_invariants(out: &Rendered) {
    // Namespaced objects say where they go.
    let cluster_scoped = [
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
    ];
    for object in &out.0 {
        let kind = object["kind"].as_str().unwrap();
        if !cluster_scoped.contains(&kind) {
            assert!(
                object["metadata"]["namespace"].is_string(),
                "{kind} {} has no namespace",
                object["metadata"]["name"]
            );
        }
    }

    // RBAC: no wildcard anywhere, secrets only as the agents' `get`, no RBAC or escalation verbs; the operator gets
    // exactly what its code uses; leases only in a namespaced Role.
    for role in out
        .of_kind("Role")
        .into_iter()
        .chain(out.of_kind("ClusterRole"))
    {
        let name = role["metadata"]["name"].as_str().unwrap();
        assert!(
            role["aggregationRule"].is_null(),
            "{name}: aggregation could add anything"
        );
        for raw in role["rules"].as_array().unwrap() {
            assert!(
                raw["nonResourceURLs"].is_null(),
                "{name}: nonResourceURLs in {raw}"
            );
            let rule = Rule::from(raw);
            for field in [
                &rule.api_groups,
                &rule.resources,
                &rule.resource_names,
                &rule.verbs,
            ] {
                assert!(
                    field.iter().all(|v| !v.contains('*')),
                    "{name}: wildcard in {rule:?}"
                );
            }
            // Secrets: only the agents' `get` (by name, in their own namespace through a
            // RoleBinding); nobody lists or watches them.
            if rule.resources.iter().any(|r| r.starts_with("secrets")) {
                assert_eq!(
                    name,
                    format!("{FULLNAME}-agent"),
                    "{name}: secrets in {rule:?}"
                );
                assert_eq!(rule.resources, ["secrets"], "{name}: {rule:?}");
                assert_eq!(rule.verbs, ["get"], "{name}: {rule:?}");
            }
            assert!(
                !rule
                    .api_groups
                    .iter()
                    .any(|g| g == "rbac.authorization.k8s.io"),
                "{name}: RBAC access in {rule:?}"
            );
            for verb in [
                "escalate",
                "bind",
                "impersonate",
                "deletecollection",
                "delete",
            ] {
                assert!(
                    !rule.verbs.iter().any(|v| v == verb),
                    "{name}: verb {verb} in {rule:?}"
                );
            }
        }
    }
    for role in out.of_kind("ClusterRole") {
        let rules: Vec<Rule> = role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(Rule::from)
            .collect();
        assert!(
            !rules
                .iter()
                .any(|r| r.resources.iter().any(|x| x == "leases")),
            "leases only in a namespaced Role"
        );
    }
    let watch_namespace = out.operator_args().namespace;
    let operator_kind = if watch_namespace.is_some() {
        "Role"
    } else {
        "ClusterRole"
    };
    let operator_role = out.one(operator_kind, OPERATOR);
    assert_eq!(
        operator_role["metadata"]["namespace"].as_str(),
        watch_namespace.as_deref()
    );
    let rules = out.rules(operator_kind, OPERATOR);
    assert!(rules.iter().all(|r| r.resource_names.is_empty()));
    assert_eq!(
        grants(&rules),
        operator_grants(),
        "the operator's permissions"
    );

    // Every binding names a rendered role and ServiceAccounts the chart creates.
    for binding in out
        .of_kind("RoleBinding")
        .into_iter()
        .chain(out.of_kind("ClusterRoleBinding"))
    {
        let role_ref = &binding["roleRef"];
        let role = out.one(
            role_ref["kind"].as_str().unwrap(),
            role_ref["name"].as_str().unwrap(),
        );
        if role["kind"] == "Role" {
            assert_eq!(
                role["metadata"]["namespace"],
                binding["metadata"]["namespace"]
            );
        }
        for subject in binding["subjects"].as_array().unwrap() {
            assert_eq!(subject["kind"], "ServiceAccount");
            let found = out.of_kind("ServiceAccount").into_iter().any(|sa| {
                sa["metadata"]["name"] == subject["name"]
                    && sa["metadata"]["namespace"] == subject["namespace"]
            });
            assert!(
                found,
                "binding to a ServiceAccount the chart lacks: {subject}"
            );
        }
    }
    let operator_sa = out.deployment()["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_owned();
    let bound_to_operator: BTreeSet<String> = out
        .of_kind("RoleBinding")
        .into_iter()
        .chain(out.of_kind("ClusterRoleBinding"))
        .filter(|b| {
            b["subjects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == operator_sa.as_str() && s["namespace"] == NAMESPACE)
        })
        .map(|b| {
            format!(
                "{}/{}",
                b["roleRef"]["kind"].as_str().unwrap(),
                b["roleRef"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let mut expected = BTreeSet::from([format!("{operator_kind}/{OPERATOR}")]);
    if out.operator_args().leader_election == Some(true) {
        expected.insert(format!("Role/{OPERATOR}-leader-election"));
    }
    assert_eq!(bound_to_operator, expected, "the operator's roles");

    check_pod_security(out);
}

fn check_pod_security(out: &Rendered) {
    let pod = &out.deployment()["spec"]["template"]["spec"];
    let container = out.container();
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null());
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert!(security["capabilities"]["add"].is_null());
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    let requests = &container["resources"]["requests"];
    assert!(
        requests["cpu"].is_string() && requests["memory"].is_string(),
        "resource requests set: {requests}"
    );

    // Probes hit /healthz and /readyz on the port the operator listens on.
    let port = &container["ports"][0];
    assert_eq!(port["name"], "metrics");
    assert_eq!(
        port["containerPort"].as_u64(),
        Some(u64::from(out.operator_args().listen.port()))
    );
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }

    // Identity from the downward API (leader election and events name the pod).
    let env = container["env"].as_array().unwrap();
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} env"));
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], path);
    }
    assert!(
        env.iter().all(|e| e["valueFrom"]["secretKeyRef"].is_null()),
        "the operator reads no secret"
    );
}

#[test]
fn watching_one_namespace_needs_only_a_role_there() {
    let out = render(&["--set", "operator.watchNamespace=media"]);
    assert_eq!(out.operator_args().namespace.as_deref(), Some("media"));
    assert!(
        out.get("ClusterRole", OPERATOR).is_none(),
        "no cluster-wide operator role"
    );
    assert!(out.get("ClusterRoleBinding", OPERATOR).is_none());
    let binding = out.one("RoleBinding", OPERATOR);
    assert_eq!(binding["metadata"]["namespace"], "media");
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    // The watched namespace gets the agent ServiceAccount, beside agent.namespaces.
    let agent_namespaces: BTreeSet<_> = out
        .of_kind("ServiceAccount")
        .into_iter()
        .filter(|sa| sa["metadata"]["name"] == AGENT_SA)
        .map(|sa| sa["metadata"]["namespace"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        agent_namespaces,
        BTreeSet::from(["default".to_owned(), "media".to_owned()])
    );
    check_invariants(&out);
}

#[test]
fn image_settings_agree_between_operator_and_egress_pods() {
    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let case = |extra: &[&str]| {
        let out = render(extra);
        (
            out.container()["image"].as_str().unwrap().to_owned(),
            out.operator_args().agent_image,
        )
    };
    let same = |image: &str| (image.to_owned(), image.to_owned());
    assert_eq!(
        case(&[
            "--set",
            "image.repository=registry.example/egress",
            "--set",
            "image.tag=1.2.3"
        ]),
        same("registry.example/egress:1.2.3")
    );
    assert_eq!(
        case(&["--set", &format!("image.digest={DIGEST}")]),
        same(&format!("ghcr.io/dragonfork/webrtc-egress@{DIGEST}"))
    );
    // An integer tag from --set is a tag all the same.
    assert_eq!(
        case(&["--set", "image.tag=7"]),
        same("ghcr.io/dragonfork/webrtc-egress:7")
    );
    // The egress image can differ; what is not given follows the operator's.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        case(&[
            "--set",
            "agent.image.repository=registry.example/egress-ffmpeg"
        ]),
        (
            format!("ghcr.io/dragonfork/webrtc-egress:{version}"),
            format!("registry.example/egress-ffmpeg:{version}")
        )
    );
    assert_eq!(
        case(&["--set", "agent.image.tag=2.0.0"]),
        (
            format!("ghcr.io/dragonfork/webrtc-egress:{version}"),
            "ghcr.io/dragonfork/webrtc-egress:2.0.0".to_owned()
        )
    );
    let out = render(&["--set", "image.pullPolicy=Always"]);
    assert_eq!(out.container()["imagePullPolicy"], "Always");
}

#[test]
fn leader_election_can_be_off_only_with_one_replica() {
    let out = render(&["--set", "operator.leaderElection.enabled=false"]);
    assert_eq!(out.operator_args().leader_election, Some(false));
    assert!(
        out.of_kind("Role").is_empty(),
        "no Lease access without leader election"
    );
    assert!(out.of_kind("Lease").is_empty());
    check_invariants(&out);

    let error = render_error(&[
        "--set",
        "operator.leaderElection.enabled=false",
        "--set",
        "replicaCount=3",
    ]);
    assert!(
        error.contains("replicaCount is 3 but operator.leaderElection.enabled is false"),
        "{error}"
    );
}

#[test]
fn rbac_and_service_accounts_can_be_brought_along() {
    let out = render(&[
        "--set",
        "rbac.create=false",
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=my-operator",
        "--set",
        "agent.serviceAccount.create=false",
    ]);
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ] {
        assert!(out.of_kind(kind).is_empty(), "{kind} rendered");
    }
    assert_eq!(
        out.deployment()["spec"]["template"]["spec"]["serviceAccountName"],
        "my-operator"
    );
    let error = render_error(&["--set", "serviceAccount.create=false"]);
    assert!(error.contains("serviceAccount.name is required"), "{error}");
}

#[test]
fn values_schema_refuses_bad_values_with_the_path() {
    for (values, path) in [
        (&["--set", "replicaCount=-1"][..], "replicaCount"),
        (&["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (&["--set", "replicas=2"], "replicas"),
        (&["--set", "image.repository="], "repository"),
        (&["--set", "agent.namespaces={Media_NS}"], "namespaces"),
        (&["--set", "metrics.port=70000"], "port"),
        (&["--set", "metrics.service.type=Ingress"], "type"),
        (&["--set", "image.digest=latest"], "digest"),
        (&["--set", "networkPolicy.apiServer.cidrs=null"], "cidrs"),
        (
            &["--set", "podDisruptionBudget.maxUnavailable=most"],
            "maxUnavailable",
        ),
        (&["--set", "operator.extraArgs={-v}"], "extraArgs"),
    ] {
        let error = render_error(values);
        assert!(
            error.contains("values don't meet the specifications of the schema"),
            "{values:?}: not refused by the schema:\n{error}"
        );
        assert!(
            error.contains(path),
            "{values:?}: message names no {path}:\n{error}"
        );
    }
}

#[test]
fn every_value_is_documented() {
    // Each key of values.yaml has a comment on the line above it or above one of the maps it
    // sits in (a documented Kubernetes object such as `securityContext` needs no more).
    let text = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // (indent, documented) of the enclosing keys.
    let mut parents: Vec<(usize, bool)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('#') || trimmed.starts_with('-') || trimmed.is_empty() {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        while parents.last().is_some_and(|(parent, _)| *parent >= indent) {
            parents.pop();
        }
        let commented = i > 0 && lines[i - 1].trim_start().starts_with('#');
        let documented = commented || parents.iter().any(|(_, documented)| *documented);
        let is_map = trimmed.ends_with(':');
        assert!(
            documented || is_map,
            "values.yaml line {}: `{key}` has no comment",
            i + 1
        );
        parents.push((indent, documented));
    }
}

#[test]
fn agents_read_no_secrets_when_told_not_to() {
    let out = render(&["--set", "agent.readSecrets=false"]);
    assert_eq!(
        grants(&out.rules("ClusterRole", &format!("{FULLNAME}-agent"))),
        grant_set(&[
            ("", "configmaps", &["get", "list", "watch"]),
            ("", "pods/status", &["patch"]),
        ])
    );
}
