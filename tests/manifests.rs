//! Every config shipped in `k8s/` (ConfigMap `config.yaml` keys) and `config.example.yaml`
//! goes through the real validator; every manifest in `k8s/` and every object the Helm chart
//! renders is loaded through its k8s-openapi type and must serialize back unchanged (so a
//! misspelt field, which serde would silently drop, or a wrong type fails).
//!
//! The chart is rendered and linted by real Helm: Helm 4's Go SDK through `helm-python-sdk`
//! (`tests/helm.py`, the code of `helm template` and `helm lint`, values.schema.json included;
//! `make test-deps` installs it). The chart's two shell scripts run here with `sh` and `curl`:
//! the key Job's against a fake API server, the `helm test` pod's against a director on
//! loopback.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use udp_director::config::ValidConfig;

fn manifests() -> Vec<(String, serde_yaml::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde::Deserialize::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((path.display().to_string(), value));
            }
        }
    }
    out
}

#[test]
fn every_manifest_names_its_kind_and_object() {
    let all = manifests();
    assert!(all.len() >= 4);
    for (path, doc) in &all {
        assert!(doc["apiVersion"].is_string(), "{path}: apiVersion");
        assert!(doc["kind"].is_string(), "{path}: kind");
        assert!(doc["metadata"]["name"].is_string(), "{path}: metadata.name");
    }
}

#[test]
fn every_embedded_config_passes_validation() {
    let mut checked = 0;
    for (path, doc) in manifests() {
        if doc["kind"] == "ConfigMap"
            && let Some(text) = doc["data"]["config.yaml"].as_str()
        {
            ValidConfig::from_yaml(text).unwrap_or_else(|e| panic!("{path}: {e}"));
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "static, agones, agones-service, pods, pods-multiport: {checked}"
    );
    ValidConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml")).unwrap();
}

#[test]
fn service_keeps_client_addresses_and_exposes_both_protocols() {
    let svc = manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "Service")
        .expect("a Service")
        .1;
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    let ports = svc["spec"]["ports"].as_sequence().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["port"] == 9000 && p["protocol"] == "TCP")
    );
    assert!(
        ports
            .iter()
            .any(|p| p["port"] == 7777 && p["protocol"] == "UDP")
    );
}

/// The one write permission the director may hold: creating Agones allocations.
fn is_allocation_grant(rule: &Value) -> bool {
    rule == &serde_json::json!({"apiGroups": ["allocation.agones.dev"],
        "resources": ["gameserverallocations"], "verbs": ["create"]})
}

/// A Helm hook (the key Job and its RBAC, the test pod): not part of the running release.
fn is_hook(o: &Value) -> bool {
    o["metadata"]["annotations"]["helm.sh/hook"].is_string()
}

/// Every Role/ClusterRole rule among `objects` with its object's namespace: read-only verbs,
/// or exactly the allocation grant. Returns the namespaces holding the allocation grant.
/// Hooks are checked on their own (`chart_creates_the_key_secret_once_in_the_cluster`).
fn check_rbac_rules(what: &str, objects: &[Value]) -> Vec<String> {
    let mut allocating = Vec::new();
    let mut rules = 0;
    for o in objects {
        if (o["kind"] == "Role" || o["kind"] == "ClusterRole") && !is_hook(o) {
            for r in o["rules"].as_array().unwrap() {
                rules += 1;
                if is_allocation_grant(r) {
                    assert_eq!(
                        o["kind"], "Role",
                        "{what}: the allocation grant is namespaced"
                    );
                    allocating.push(o["metadata"]["namespace"].as_str().unwrap().to_string());
                    continue;
                }
                for v in r["verbs"].as_array().unwrap() {
                    assert!(
                        ["get", "list", "watch"].contains(&v.as_str().unwrap()),
                        "{what}: verb {v} in {r}"
                    );
                }
            }
        }
    }
    assert!(rules >= 2, "{what}");
    allocating
}

/// The namespaces of mappings with `allocate:` in every embedded config of `objects`.
fn allocating_namespaces(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .filter_map(|o| o["data"]["config.yaml"].as_str())
        .flat_map(|text| {
            let config = ValidConfig::from_yaml(text).unwrap();
            config
                .mappings
                .values()
                .filter(|m| m.allocate.is_some())
                .map(|m| m.default_namespace.clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn rbac_is_read_only_but_for_allocations_where_a_mapping_allocates() {
    let all = manifests();
    let objects: Vec<Value> = all.iter().map(|(_, d)| as_json(d)).collect();
    let granted: BTreeSet<String> = check_rbac_rules("k8s/", &objects).into_iter().collect();
    // The grant lives in its own file, applied only with an allocating config, and covers
    // exactly the namespaces such mappings allocate in.
    for (path, doc) in &all {
        let rules = doc["rules"].as_sequence().map(|r| r.len()).unwrap_or(0);
        let grants = (0..rules)
            .filter(|i| is_allocation_grant(&as_json(&doc["rules"][*i])))
            .count();
        assert!(
            grants == 0 || path.ends_with("rbac-agones-allocation.yaml"),
            "{path}"
        );
    }
    assert_eq!(granted, allocating_namespaces(&objects));
    assert!(!granted.is_empty(), "the Agones example allocates");
}

/// Loads `doc` as `T` and requires it to serialize back to the same JSON.
fn roundtrip<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if back == *doc {
        Ok(())
    } else {
        Err(format!(
            "fields lost or changed by the typed round trip:\n  written: {doc}\n  typed:   {back}"
        ))
    }
}

/// Checks one object through its k8s-openapi type; Prometheus Operator kinds (not in
/// k8s-openapi) are checked for their required shape only.
fn typed(doc: &Value) -> Result<(), String> {
    match doc["kind"].as_str().unwrap_or_default() {
        "Namespace" => roundtrip::<Namespace>(doc),
        "ServiceAccount" => roundtrip::<ServiceAccount>(doc),
        "ConfigMap" => roundtrip::<ConfigMap>(doc),
        "Service" => roundtrip::<Service>(doc),
        "Deployment" => roundtrip::<Deployment>(doc),
        "PodDisruptionBudget" => roundtrip::<PodDisruptionBudget>(doc),
        "Secret" => roundtrip::<k8s_openapi::api::core::v1::Secret>(doc),
        "HorizontalPodAutoscaler" => {
            roundtrip::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>(doc)
        }
        "Role" => roundtrip::<Role>(doc),
        "RoleBinding" => roundtrip::<RoleBinding>(doc),
        "ClusterRole" => roundtrip::<ClusterRole>(doc),
        "ClusterRoleBinding" => roundtrip::<ClusterRoleBinding>(doc),
        "NetworkPolicy" => roundtrip::<k8s_openapi::api::networking::v1::NetworkPolicy>(doc),
        "Job" => roundtrip::<k8s_openapi::api::batch::v1::Job>(doc),
        "Pod" => roundtrip::<k8s_openapi::api::core::v1::Pod>(doc),
        "PrometheusRule" if doc["apiVersion"] == "monitoring.coreos.com/v1" => {
            let rules = doc["spec"]["groups"][0]["rules"].as_array();
            if rules.is_some_and(|r| {
                !r.is_empty()
                    && r.iter()
                        .all(|r| r["alert"].is_string() && r["expr"].is_string())
            }) {
                Ok(())
            } else {
                Err("PrometheusRule needs spec.groups[].rules[] with alert and expr".into())
            }
        }
        "ServiceMonitor" if doc["apiVersion"] == "monitoring.coreos.com/v1" => {
            if doc["spec"]["endpoints"][0]["port"].is_string()
                && doc["spec"]["selector"]["matchLabels"].is_object()
            {
                Ok(())
            } else {
                Err(
                    "ServiceMonitor needs spec.selector.matchLabels and spec.endpoints[].port"
                        .into(),
                )
            }
        }
        other => Err(format!("no typed check for kind {other:?}")),
    }
}

fn as_json(v: &serde_yaml::Value) -> Value {
    serde_json::to_value(v).unwrap()
}

#[test]
fn every_manifest_loads_through_its_kubernetes_type() {
    let all = manifests();
    let mut kinds = std::collections::BTreeSet::new();
    for (path, doc) in &all {
        let doc = as_json(doc);
        typed(&doc).unwrap_or_else(|e| panic!("{path}: {e}"));
        kinds.insert(doc["kind"].as_str().unwrap().to_string());
    }
    for kind in [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
    ] {
        assert!(kinds.contains(kind), "k8s/ has a {kind}");
    }
}

#[test]
fn a_misspelt_field_fails_the_typed_check() {
    let doc: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"externalTrafficPolcy": "Local"}
    });
    assert!(typed(&doc).is_err());
    let doc: Value = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"replicas": "two", "selector": {}, "template": {}}
    });
    assert!(typed(&doc).is_err());
}

/// The checks an operator relies on, for the manifests and the chart alike.
fn check_deployment(what: &str, d: &Deployment, drain_seconds: i64) {
    let spec = &d.spec;
    let pod = spec.template.spec.as_ref().unwrap();
    let grace = pod.termination_grace_period_seconds.unwrap();
    assert!(
        grace > drain_seconds,
        "{what}: grace {grace} > drainSeconds {drain_seconds}"
    );
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true), "{what}");
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault",
        "{what}"
    );
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
    assert_eq!(sc.run_as_non_root, Some(true), "{what}");
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "{what}"
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(probe_path(&c.liveness_probe), "/healthz", "{what}");
    assert_eq!(probe_path(&c.readiness_probe), "/readyz", "{what}");
    let resources = c.resources.as_ref().unwrap();
    assert!(
        resources.requests.is_some() && resources.limits.is_some(),
        "{what}"
    );
    let annotations = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{what}");
    assert_eq!(annotations["prometheus.io/path"], "/metrics", "{what}");
    let args = c.args.as_ref().unwrap();
    assert!(args.iter().any(|a| a == "--configmap"), "{what}: {args:?}");
    let ports: Vec<_> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.protocol.clone().unwrap()))
        .collect();
    for (name, proto) in [("query", "TCP"), ("data", "UDP"), ("admin", "TCP")] {
        assert!(
            ports.contains(&(name.to_string(), proto.to_string())),
            "{what}: {ports:?}"
        );
    }
}

/// The ConfigMap named by `--configmap NS/NAME` is the only one the RBAC lets it read.
fn check_config_rbac(what: &str, objects: &[Value], deployment: &Deployment) {
    let args = deployment.spec.template.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let target = &args[args.iter().position(|a| a == "--configmap").unwrap() + 1];
    let (ns, name) = target.split_once('/').unwrap();
    let grants: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Role" && !is_hook(o))
        .flat_map(|o| o["rules"].as_array().unwrap())
        .filter(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == "configmaps")
        })
        .collect();
    assert_eq!(grants.len(), 1, "{what}: one rule for configmaps");
    assert_eq!(
        grants[0]["resourceNames"],
        serde_json::json!([name]),
        "{what}"
    );
    assert!(
        objects.iter().any(|o| o["kind"] == "Role"
            && o["metadata"]["namespace"] == ns
            && o["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["resources"][0] == "configmaps")),
        "{what}: the configmap Role lives in {ns}"
    );
    let cm = objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"] == name
                && o["metadata"]["namespace"] == ns
        })
        .unwrap_or_else(|| panic!("{what}: ConfigMap {ns}/{name}"));
    ValidConfig::from_yaml(cm["data"]["config.yaml"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    check_rbac_rules(what, objects);
}

/// The one Deployment among `objects`, typed.
fn the_deployment(objects: &[Value]) -> Deployment {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .collect();
    assert_eq!(found.len(), 1, "exactly one Deployment");
    serde_json::from_value(found[0].clone()).unwrap()
}

#[test]
fn deployment_is_locked_down_probed_and_drains() {
    let objects: Vec<Value> = manifests().iter().map(|(_, d)| as_json(d)).collect();
    let d = the_deployment(&objects);
    check_deployment("k8s/deployment.yaml", &d, 10);
    check_config_rbac("k8s/", &objects, &d);
    let pdb = objects
        .iter()
        .find(|o| o["kind"] == "PodDisruptionBudget")
        .unwrap();
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        serde_json::to_value(&d.spec.selector.match_labels).unwrap()
    );
}

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/helm/udp-director")
}

/// Runs `tests/helm.py` (real Helm through helm-python-sdk): `mode` render or lint, with
/// `set` as dotted keys.
fn helm(mode: &str, set: &[(&str, Value)]) -> Value {
    let mut values = serde_json::json!({});
    for (k, v) in set {
        let mut slot = &mut values;
        for part in k.split('.') {
            slot = &mut slot[part];
        }
        *slot = v.clone();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(mode)
        .arg(chart_dir())
        .arg(values.to_string())
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let answer: Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out.status.code() != Some(3),
        "{} (.ci/run installs it)",
        answer["error"]
    );
    answer
}

/// Renders the chart with real Helm; `Err` carries Helm's message (e.g. a `fail`).
fn try_render_chart(set: &[(&str, Value)]) -> Result<Vec<Value>, String> {
    let answer = helm("render", set);
    if let Some(e) = answer["error"].as_str() {
        return Err(e.to_string());
    }
    let mut objects = Vec::new();
    let manifests = answer["manifests"].as_object().unwrap();
    // NOTES.txt is text for the user, not an object (helm template leaves it out too).
    for (_, text) in manifests
        .iter()
        .filter(|(file, _)| !file.ends_with("NOTES.txt"))
    {
        for doc in serde_yaml::Deserializer::from_str(text.as_str().unwrap()) {
            let v = as_json(&serde::Deserialize::deserialize(doc).unwrap());
            if !v.is_null() {
                objects.push(v);
            }
        }
    }
    Ok(objects)
}

fn render_chart(set: &[(&str, Value)]) -> Vec<Value> {
    try_render_chart(set).unwrap_or_else(|e| panic!("helm render: {e}"))
}

#[test]
fn chart_default_output_loads_through_kubernetes_types() {
    let objects = render_chart(&[]);
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "ServiceAccount",
        "ConfigMap",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Namespace",
        "Job",
        "Pod",
    ] {
        assert!(kinds.contains(&kind), "chart renders a {kind}: {kinds:?}");
    }
    for kind in ["ServiceMonitor", "PrometheusRule", "Secret"] {
        assert!(
            !kinds.contains(&kind),
            "{kind} is not in the default output"
        );
    }
    assert_eq!(
        objects.iter().filter(|o| o["kind"] == "ConfigMap").count(),
        1,
        "the dashboard is opt-in"
    );
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
        let labels = &o["metadata"]["labels"];
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ] {
            assert!(
                labels[key].is_string(),
                "chart {} label {key}: {labels}",
                o["kind"]
            );
        }
    }
    let d = the_deployment(&objects);
    check_deployment("chart", &d, 10);
    check_config_rbac("chart", &objects, &d);
    let svc = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["spec"]["type"] == "LoadBalancer")
        .unwrap();
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(
        d.spec.template.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("ghcr.io/udp-director/udp-director:0.1.0")
    );
}

#[test]
fn chart_values_drive_the_output() {
    let objects = render_chart(&[
        ("replicas", serde_json::json!(5)),
        ("image.tag", serde_json::json!("9.9.9")),
        ("metrics.serviceMonitor.enabled", serde_json::json!(true)),
        ("podDisruptionBudget.enabled", serde_json::json!(false)),
        (
            "rbac.rules",
            serde_json::json!([{"apiGroups": ["example.com"], "resources": ["arenas"], "verbs": ["get", "list", "watch"]}]),
        ),
        ("config.queryPort", serde_json::json!(9100)),
    ]);
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
    }
    let find = |kind: &str| {
        objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .collect::<Vec<_>>()
    };
    assert!(find("PodDisruptionBudget").is_empty());
    assert_eq!(find("ServiceMonitor").len(), 1);
    let d = find("Deployment")[0];
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/udp-director/udp-director:9.9.9"
    );
    assert!(
        find("Role")
            .iter()
            .any(|r| r["rules"][0]["resources"][0] == "arenas")
    );
    let cm = find("ConfigMap")[0];
    let config = ValidConfig::from_yaml(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(config.query_addr.port(), 9100);
    let public = find("Service")
        .into_iter()
        .find(|s| s["spec"]["type"] == "LoadBalancer")
        .unwrap();
    assert_eq!(public["spec"]["ports"][0]["port"], 9100);
    assert!(
        public["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "admin"),
        "the admin port stays off the public Service"
    );
}

#[test]
fn chart_grants_allocation_only_when_a_mapping_allocates_and_exposes_every_data_port() {
    let objects = render_chart(&[]);
    assert!(check_rbac_rules("chart", &objects).is_empty());
    let mapping = serde_json::json!({"group": "agones.dev", "version": "v1",
        "resource": "gameservers", "namespace": "game-servers", "addressPath": "status.address",
        "portName": "default", "auth": "none", "allocate": {"playersList": "players", "preferAllocated": true}});
    let objects = render_chart(&[
        ("config.resourceQueryMapping.match", mapping),
        (
            "config.dataPorts",
            serde_json::json!([{"port": 7777}, {"port": 7778, "targetPortName": "voice"},
                {"port": 7780, "protocol": "TCP", "targetPortName": "chat"}]),
        ),
    ]);
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
    }
    assert_eq!(check_rbac_rules("chart", &objects), ["game-servers"]);
    assert_eq!(
        allocating_namespaces(&objects),
        BTreeSet::from(["game-servers".to_string()])
    );
    let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let config = ValidConfig::from_yaml(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(config.data_ports.len(), 3);
    let udp = |ports: &Value, key: &str| -> Vec<(String, u64)> {
        ports
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["protocol"] == "UDP")
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p[key].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let want = vec![("data".to_string(), 7777), ("data-1".to_string(), 7778)];
    let public = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["spec"]["type"] == "LoadBalancer")
        .unwrap();
    assert_eq!(udp(&public["spec"]["ports"], "port"), want);
    assert!(
        public["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "data-2"
                && p["port"] == 7780
                && p["protocol"] == "TCP"
                && p["targetPort"] == "data-2"),
        "{}",
        public["spec"]["ports"]
    );
    assert!(
        public["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["protocol"] == "UDP")
            .all(|p| p["targetPort"] == p["name"])
    );
    let d = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(
        udp(
            &d["spec"]["template"]["spec"]["containers"][0]["ports"],
            "containerPort"
        ),
        want
    );
}

#[test]
fn chart_runs_several_replicas_with_sealed_tokens_and_a_key_secret_it_never_renders() {
    let objects = render_chart(&[]);
    let d = the_deployment(&objects);
    assert_eq!(d.spec.replicas, Some(2));
    let pod = d.spec.template.spec.as_ref().unwrap();
    let spread = pod.topology_spread_constraints.as_ref().unwrap();
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(spread[0].when_unsatisfiable, "DoNotSchedule");
    // No key in any rendered object: every render is the same (GitOps tools re-render on
    // every sync), and the release history never holds a key.
    assert!(objects.iter().all(|o| o["kind"] != "Secret"));
    assert_eq!(
        serde_json::to_string(&render_chart(&[])).unwrap(),
        serde_json::to_string(&objects).unwrap(),
        "rendering is deterministic"
    );
    // The config names the Secret the hook Job creates; the RBAC reads that one Secret only.
    let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let config = ValidConfig::from_yaml(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        config.token_format,
        udp_director::config::TokenFormat::Sealed
    );
    let name = "udp-director-token-keys";
    assert_eq!(
        config.key_source,
        Some(udp_director::config::KeySource::Secret {
            namespace: "udp-director".into(),
            name: name.into()
        })
    );
    let job = key_job(&objects).expect("the key Job");
    assert_eq!(job_env(&job, "SECRET"), name);
    let secret_rules: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Role" && !is_hook(o))
        .flat_map(|o| o["rules"].as_array().unwrap())
        .filter(|r| r["resources"][0] == "secrets")
        .collect();
    assert_eq!(secret_rules.len(), 1);
    assert_eq!(secret_rules[0]["resourceNames"], serde_json::json!([name]));
    assert!(
        objects
            .iter()
            .all(|o| o["kind"] != "HorizontalPodAutoscaler")
    );
    let pdb = objects
        .iter()
        .find(|o| o["kind"] == "PodDisruptionBudget")
        .unwrap();
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    // Real `helm lint --strict`: no errors, no warnings.
    let lint = helm("lint", &[]);
    let messages = lint["lint"]["messages"].as_array().unwrap();
    assert!(
        messages.iter().all(|m| m["severity"].as_i64() < Some(2)),
        "{messages:?}"
    );
    assert_eq!(lint["lint"]["errors"], serde_json::json!([]));
}

/// The hook Job that creates the key Secret, if rendered.
fn key_job(objects: &[Value]) -> Option<Value> {
    objects
        .iter()
        .find(|o| o["kind"] == "Job" && o["metadata"]["name"] == "udp-director-token-keys-init")
        .cloned()
}

/// The value of the env var `name` of a Job's or Pod's first container.
fn job_env(o: &Value, name: &str) -> String {
    let spec = if o["kind"] == "Job" {
        &o["spec"]["template"]["spec"]
    } else {
        &o["spec"]
    };
    spec["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("env {name}"))["value"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs a rendered Job's or Pod's `sh -euc SCRIPT` container here, with its env plus
/// `extra`; returns (success, output).
fn run_container_script(o: &Value, extra: &[(&str, String)]) -> (bool, String) {
    let spec = if o["kind"] == "Job" {
        &o["spec"]["template"]["spec"]
    } else {
        &o["spec"]
    };
    let c = &spec["containers"][0];
    assert!(
        std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the chart's scripts need curl (as in their image): apt-get install curl"
    );
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(&command[..2], ["/bin/sh", "-euc"]);
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-euc").arg(command[2]);
    for e in c["env"].as_array().unwrap() {
        cmd.env(e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A fake Kubernetes API for the key Job: answers GET of the Secret with `get_status`, and a
/// POST with 201; records every request as (method, path, authorization, body).
struct FakeSecretsApi {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
}

/// (method, path, authorization header, body)
type Request = (String, String, String, String);

impl FakeSecretsApi {
    fn start(get_status: u16) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                );
                let (mut length, mut auth) = (0, String::new());
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => length = v.trim().parse().unwrap(),
                        "authorization" => auth = v.trim().to_string(),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let status = if method == "GET" { get_status } else { 201 };
                log.lock()
                    .unwrap()
                    .push((method, path, auth, String::from_utf8(body).unwrap()));
                let answer = "{}";
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .unwrap();
            }
        });
        Self { addr, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

#[test]
fn chart_creates_the_key_secret_once_in_the_cluster() {
    use base64::Engine;
    let objects = render_chart(&[]);
    let job = key_job(&objects).unwrap();
    // A hook before install and every upgrade (it does nothing once the Secret exists),
    // removed once done; its RBAC exists only for the hook: read that one Secret, create.
    let hooks: Vec<&Value> = objects.iter().filter(|o| is_hook(o)).collect();
    for o in hooks.iter().filter(|o| o["kind"] != "Pod") {
        let a = &o["metadata"]["annotations"];
        assert_eq!(
            a["helm.sh/hook"], "pre-install,pre-upgrade",
            "{}",
            o["kind"]
        );
        assert!(
            a["helm.sh/hook-delete-policy"]
                .as_str()
                .unwrap()
                .contains("hook-succeeded")
        );
    }
    let role = hooks.iter().find(|o| o["kind"] == "Role").unwrap();
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["secrets"],
             "resourceNames": ["udp-director-token-keys"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}])
    );
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], role["metadata"]["name"]);
    let c = &pod["containers"][0]["securityContext"];
    assert_eq!(c["runAsNonRoot"], true);
    assert_eq!(c["readOnlyRootFilesystem"], true);
    assert_eq!(c["capabilities"]["drop"], serde_json::json!(["ALL"]));

    // The Job's own script, against a fake API server: no Secret yet → one created with a
    // key the director parses; run again with the Secret there → nothing written.
    let sa = testkit::TempDir::new("sa").unwrap();
    std::fs::write(sa.path.join("token"), "sa-token").unwrap();
    std::fs::write(sa.path.join("namespace"), "udp-director").unwrap();
    std::fs::write(sa.path.join("ca.crt"), "").unwrap();
    let tmp = testkit::TempDir::new("job-tmp").unwrap();
    let env = |api: &FakeSecretsApi| {
        vec![
            ("API", format!("http://{}", api.addr)),
            ("SA", sa.path.display().to_string()),
            ("TMPDIR", tmp.path.display().to_string()),
        ]
    };
    let api = FakeSecretsApi::start(404);
    let (ok, out) = run_container_script(&job, &env(&api));
    assert!(ok, "{out}");
    let requests = api.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let path = "/api/v1/namespaces/udp-director/secrets";
    assert_eq!(
        (requests[0].0.as_str(), requests[0].1.as_str()),
        ("GET", format!("{path}/udp-director-token-keys").as_str())
    );
    assert_eq!(
        (requests[1].0.as_str(), requests[1].1.as_str()),
        ("POST", path)
    );
    assert!(requests.iter().all(|r| r.2 == "Bearer sa-token"));
    let secret: Value = serde_json::from_str(&requests[1].3).unwrap();
    typed(&secret).unwrap();
    assert_eq!(secret["metadata"]["name"], "udp-director-token-keys");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/instance"],
        "udp-director"
    );
    let keys = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["token-keys"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let set = udp_director::token::KeySet::parse(&keys).unwrap_or_else(|e| panic!("{e}: {keys:?}"));
    assert_eq!(set.ids().len(), 1);
    // A second run draws another key (the Job never reuses one).
    let again = FakeSecretsApi::start(404);
    assert!(run_container_script(&job, &env(&again)).0);
    assert_ne!(again.requests()[1].3, requests[1].3);

    let existing = FakeSecretsApi::start(200);
    let (ok, out) = run_container_script(&job, &env(&existing));
    assert!(ok, "{out}");
    assert_eq!(existing.requests().len(), 1, "only the GET");
    // Anything else from the API fails the Job (Helm then stops the install).
    let broken = FakeSecretsApi::start(403);
    assert!(!run_container_script(&job, &env(&broken)).0);
    assert_eq!(broken.requests().len(), 1);

    // An existing Secret of the studio's, or uuid tokens: no Job.
    assert!(
        key_job(&render_chart(&[(
            "tokens.keys.existingSecret",
            serde_json::json!("studio-keys")
        )]))
        .is_none()
    );
    assert!(
        key_job(&render_chart(&[(
            "tokens.keys.create",
            serde_json::json!(false)
        )]))
        .is_none()
    );
}

#[test]
fn chart_refuses_several_replicas_with_uuid_tokens() {
    let uuid = ("tokens.format", serde_json::json!("uuid"));
    let e = try_render_chart(std::slice::from_ref(&uuid)).unwrap_err();
    assert!(e.contains("tokens.format: sealed"), "{e}");
    let e = try_render_chart(&[
        uuid.clone(),
        ("replicas", serde_json::json!(1)),
        ("autoscaling.enabled", serde_json::json!(true)),
    ])
    .unwrap_err();
    assert!(e.contains("maxReplicas"), "{e}");
    assert!(try_render_chart(&[("tokens.format", serde_json::json!("fast"))]).is_err());
    // One replica with uuid tokens: no Secret, no Secret access.
    let objects = render_chart(&[uuid, ("replicas", serde_json::json!(1))]);
    assert!(objects.iter().all(|o| o["kind"] != "Secret"));
    assert!(
        !serde_json::to_string(&objects)
            .unwrap()
            .contains("\"secrets\"")
    );
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
    }
}

#[test]
fn chart_autoscales_and_uses_an_existing_key_secret_on_request() {
    let objects = render_chart(&[
        ("autoscaling.enabled", serde_json::json!(true)),
        (
            "tokens.keys.existingSecret",
            serde_json::json!("studio-keys"),
        ),
    ]);
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
    }
    let hpa = objects
        .iter()
        .find(|o| o["kind"] == "HorizontalPodAutoscaler")
        .unwrap();
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let d = the_deployment(&objects);
    assert_eq!(d.spec.replicas, None, "the HPA owns the count");
    assert!(
        objects.iter().all(|o| o["kind"] != "Secret"),
        "the studio's own Secret is used"
    );
    let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert!(
        cm["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("tokenKeysSecret: udp-director/studio-keys")
    );
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn pod_spec(objects: &[Value]) -> Value {
    find(objects, "Deployment")[0]["spec"]["template"].clone()
}

#[test]
fn chart_schema_refuses_unknown_keys_and_bad_values() {
    use serde_json::json;
    for (key, bad) in [
        ("tokens.fromat", json!("sealed")),
        ("servce.type", json!("LoadBalancer")),
        ("fastPath.enable", json!(true)),
        ("networkPolicy.kubeletCidrs", json!([])),
        ("tokens.format", json!("fast")),
        ("config.queryPort", json!(70000)),
        ("config.dataPort", json!("7777")),
        ("service.externalTrafficPolicy", json!("local")),
        ("service.loadBalancerSourceRanges", json!(["10.0.0.1"])),
        ("fastPath.enabled", json!("yes")),
        ("fastPath.interfaces", json!([])),
        ("replicas", json!(-1)),
        (
            "rbac.rules",
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]),
        ),
        ("extraEnv", json!([{"value": "no name"}])),
        ("logFormat", json!("xml")),
    ] {
        let e = try_render_chart(&[(key, bad.clone())])
            .err()
            .unwrap_or_else(|| panic!("{key} = {bad} was accepted"));
        assert!(e.contains("schema"), "{key}: {e}");
        let lint = helm("lint", &[(key, bad.clone())]);
        assert_ne!(lint["lint"]["errors"], json!([]), "lint {key} = {bad}");
    }
    // The same keys with good values, and free-form fields, pass.
    let objects = render_chart(&[
        ("tokens.format", json!("uuid")),
        ("replicas", json!(1)),
        ("config.queryPort", json!(9100)),
        ("service.externalTrafficPolicy", json!("Local")),
        (
            "service.loadBalancerSourceRanges",
            json!(["10.0.0.0/8", "2001:db8::/32"]),
        ),
        ("fastPath.interfaces", json!(["eth0", "eth1"])),
        ("extraEnv", json!([{"name": "A", "value": "1"}])),
        ("logFormat", json!("text")),
        ("affinity", json!({"nodeAffinity": {}})),
        ("config.limits", json!({"maxTokens": 5})),
    ]);
    assert_eq!(find(&objects, "Deployment").len(), 1);
}

#[test]
fn chart_scheduling_pod_and_service_knobs_reach_the_objects() {
    use serde_json::json;
    let toleration = json!({"key": "games", "operator": "Exists", "effect": "NoSchedule"});
    let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["edge"]}]}]}}});
    let objects = render_chart(&[
        ("nodeSelector", json!({"pool": "edge"})),
        ("tolerations", json!([toleration])),
        ("affinity", affinity.clone()),
        ("priorityClassName", json!("game-critical")),
        ("podAnnotations", json!({"example.com/team": "net"})),
        ("podLabels", json!({"team": "net"})),
        (
            "extraEnv",
            json!([{"name": "UDP_DIRECTOR_X", "value": "1"}]),
        ),
        ("imagePullSecrets", json!([{"name": "regcred"}])),
        (
            "service.annotations",
            json!({"service.beta.kubernetes.io/aws-load-balancer-type": "external"}),
        ),
        (
            "service.loadBalancerSourceRanges",
            json!(["203.0.113.0/24"]),
        ),
    ]);
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
    }
    let t = pod_spec(&objects);
    let pod = &t["spec"];
    assert_eq!(pod["nodeSelector"], json!({"pool": "edge"}));
    assert_eq!(pod["tolerations"], json!([toleration]));
    assert_eq!(pod["affinity"], affinity);
    assert_eq!(pod["priorityClassName"], "game-critical");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(t["metadata"]["annotations"]["example.com/team"], "net");
    assert_eq!(t["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    assert_eq!(t["metadata"]["labels"]["team"], "net");
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "RUST_LOG"));
    assert!(
        env.iter()
            .any(|e| e == &json!({"name": "UDP_DIRECTOR_X", "value": "1"}))
    );
    let public = find(&objects, "Service")
        .into_iter()
        .find(|s| s["spec"]["type"] == "LoadBalancer")
        .unwrap();
    assert_eq!(
        public["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"],
        "external"
    );
    assert_eq!(
        public["spec"]["loadBalancerSourceRanges"],
        json!(["203.0.113.0/24"])
    );
    // None of it by default.
    let pod = pod_spec(&render_chart(&[]))["spec"].clone();
    for key in [
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "imagePullSecrets",
    ] {
        assert!(pod[key].is_null(), "{key}");
    }
}

#[test]
fn chart_splits_tcp_and_udp_into_two_services_sharing_an_address() {
    use serde_json::json;
    let shared = json!({"metallb.universe.tf/allow-shared-ip": "udp-director"});
    let objects = render_chart(&[
        ("service.split.enabled", json!(true)),
        ("service.annotations", shared.clone()),
        (
            "service.split.udpAnnotations",
            json!({"example.com/udp": "1"}),
        ),
        ("service.loadBalancerIP", json!("203.0.113.7")),
        (
            "config.dataPorts",
            json!([{"port": 7777}, {"port": 7778, "targetPortName": "voice"},
                {"port": 7780, "protocol": "TCP", "targetPortName": "chat"}]),
        ),
    ]);
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
    }
    let public: Vec<&Value> = find(&objects, "Service")
        .into_iter()
        .filter(|s| s["spec"]["type"] == "LoadBalancer")
        .collect();
    let names: Vec<&str> = public
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["udp-director-tcp", "udp-director-udp"]);
    let ports = |s: &Value| -> Vec<(String, String)> {
        s["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["protocol"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let pair = |n: &str, p: &str| (n.to_string(), p.to_string());
    assert_eq!(
        ports(public[0]),
        [pair("query", "TCP"), pair("data-2", "TCP")]
    );
    assert_eq!(
        ports(public[1]),
        [pair("data", "UDP"), pair("data-1", "UDP")]
    );
    let selector = &find(&objects, "Deployment")[0]["spec"]["selector"]["matchLabels"];
    for s in &public {
        assert_eq!(s["spec"]["loadBalancerIP"], "203.0.113.7");
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(&s["spec"]["selector"], selector);
        assert_eq!(
            s["metadata"]["annotations"]["metallb.universe.tf/allow-shared-ip"],
            "udp-director"
        );
    }
    assert!(public[0]["metadata"]["annotations"]["example.com/udp"].is_null());
    assert_eq!(public[1]["metadata"]["annotations"]["example.com/udp"], "1");
    // The helm test queries the TCP one.
    let test = find(&objects, "Pod")[0];
    assert!(job_env(test, "QUERY_HOST").starts_with("udp-director-tcp."));
    // Split needs LoadBalancer Services.
    assert!(
        try_render_chart(&[
            ("service.split.enabled", json!(true)),
            ("service.type", json!("NodePort"))
        ])
        .is_err()
    );
}

#[test]
fn chart_creates_the_watched_namespace_for_a_fresh_install_and_keeps_it() {
    use serde_json::json;
    let objects = render_chart(&[]);
    let ns = find(&objects, "Namespace");
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0]["metadata"]["name"], "game-servers");
    assert_eq!(
        ns[0]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(
        ns[0]["metadata"]["annotations"]["argocd.argoproj.io/sync-options"],
        "Delete=false"
    );
    let watched = find(&objects, "Role")
        .into_iter()
        .find(|r| r["metadata"]["namespace"] == "game-servers")
        .unwrap();
    assert_eq!(watched["metadata"]["name"], "udp-director");
    for set in [
        ("rbac.createNamespace", json!(false)),
        ("rbac.namespace", json!("udp-director")),
        ("rbac.create", json!(false)),
    ] {
        assert!(
            find(&render_chart(std::slice::from_ref(&set)), "Namespace").is_empty(),
            "{set:?}"
        );
    }
}

/// The Deployment's restart checksum for these values.
fn restart_checksum(set: &[(&str, Value)]) -> String {
    pod_spec(&render_chart(set))["metadata"]["annotations"]["checksum/restart-only-config"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn chart_rolls_the_pods_when_a_restart_only_key_changes_and_only_then() {
    use serde_json::json;
    let base = restart_checksum(&[]);
    assert_eq!(base.len(), 64);
    // Every key the daemon cannot take over live (config::reload::RESTART_ONLY), changed
    // through the values that set it.
    for key in udp_director::config::reload::RESTART_ONLY {
        let set: Vec<(&str, Value)> = match key {
            "bindAddress" => vec![("config.bindAddress", json!("127.0.0.1"))],
            "queryPort" => vec![("config.queryPort", json!(9100))],
            "dataPort" => vec![("config.dataPort", json!(7700))],
            "dataPorts" => vec![(
                "config.dataPorts",
                json!([{"port": 7777}, {"port": 7778, "targetPortName": "voice"}]),
            )],
            "adminPort" => vec![("config.adminPort", json!(8081))],
            "dataWorkers" => vec![("config.dataWorkers", json!(2))],
            "socketBufferBytes" => vec![("config.socketBufferBytes", json!(1048576))],
            "limits.maxTokens" => vec![("config.limits", json!({"maxTokens": 5}))],
            "limits.ipv6PrefixLength" => {
                vec![("config.limits", json!({"ipv6PrefixLength": 48}))]
            }
            "tokenFormat" => vec![("tokens.format", json!("uuid")), ("replicas", json!(1))],
            "tokenKeysFile" => vec![("config.tokenKeysFile", json!("/etc/keys/token-keys"))],
            "tokenKeysSecret" => vec![("tokens.keys.existingSecret", json!("studio-keys"))],
            "reusePort" => vec![("config.reusePort", json!(true))],
            "queryTls" => vec![(
                "config.queryTls",
                json!({"certFile": "/etc/udp-director/tls/tls.crt", "keyFile": "/etc/udp-director/tls/tls.key"}),
            )],
            "queryAuth" => vec![(
                "config.queryAuth",
                json!({"jwksFile": "/etc/udp-director/jwks/jwks.json", "audience": "udp-director"}),
            )],
            "fastPath" => vec![("fastPath.enabled", json!(true))],
            "adminBindAddress" => vec![("config.adminBindAddress", json!("0.0.0.0"))],
            "adminTokenFile" => vec![("admin.tokenSecret", json!("admin-token"))],
            other => panic!("the chart's checksum does not cover the restart-only key {other}"),
        };
        assert_ne!(restart_checksum(&set), base, "{key} rolls the pods");
    }
    for key in ["fastPath", "adminBindAddress", "adminTokenFile"] {
        let set: Vec<(&str, Value)> = match key {
            "fastPath" => vec![("fastPath.enabled", json!(true))],
            "adminBindAddress" => vec![("config.adminBindAddress", json!("0.0.0.0"))],
            _ => vec![("admin.tokenSecret", json!("admin-token"))],
        };
        assert_ne!(restart_checksum(&set), base, "{key} rolls the pods");
    }
    // Keys applied live leave the pods alone (the director reloads the ConfigMap).
    for set in [
        ("config.tokenTTLSeconds", json!(60)),
        ("config.sessionTimeoutSeconds", json!(120)),
        ("config.maxSessions", json!(5000)),
        ("rustLog", json!("debug")),
    ] {
        assert_eq!(
            restart_checksum(std::slice::from_ref(&set)),
            base,
            "{set:?}"
        );
    }
}

/// The ingress rules of a NetworkPolicy as (ports, from) pairs.
fn policy_rules(policy: &Value) -> Vec<(Vec<(u64, String)>, Value)> {
    policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let ports = r["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["port"].as_u64().unwrap(),
                        p["protocol"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (ports, r["from"].clone())
        })
        .collect()
}

fn check_network_policy(what: &str, policy: &Value, selector: &Value) {
    assert_eq!(
        &policy["spec"]["podSelector"]["matchLabels"], selector,
        "{what}"
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"]),
        "{what}"
    );
    let rules = policy_rules(policy);
    assert_eq!(rules.len(), 2, "{what}");
    // Public ports from anywhere.
    assert_eq!(
        rules[0].0,
        [(9000, "TCP".into()), (7777, "UDP".into())],
        "{what}"
    );
    assert!(rules[0].1.is_null(), "{what}");
    // The admin port from the monitoring namespace (and, in the chart, the test pod).
    assert_eq!(rules[1].0, [(8080, "TCP".into())], "{what}");
    let from = rules[1].1.as_array().unwrap();
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "monitoring",
        "{what}"
    );
    assert!(
        from[0]["podSelector"].is_null(),
        "{what}: the whole namespace"
    );
    for f in from {
        assert!(
            f["namespaceSelector"].is_object()
                || f["podSelector"].is_object()
                || f["ipBlock"].is_object(),
            "{what}: {f}"
        );
        assert_ne!(f["ipBlock"]["cidr"], "0.0.0.0/0", "{what}");
    }
}

#[test]
fn network_policy_admits_the_admin_port_only_from_monitoring_and_the_kubelet() {
    use serde_json::json;
    let all: Vec<Value> = manifests().iter().map(|(_, d)| as_json(d)).collect();
    let d = the_deployment(&all);
    let policy = find(&all, "NetworkPolicy");
    assert_eq!(policy.len(), 1, "k8s/networkpolicy.yaml");
    check_network_policy(
        "k8s/",
        policy[0],
        &serde_json::to_value(&d.spec.selector.match_labels).unwrap(),
    );

    let objects = render_chart(&[]);
    let policy = find(&objects, "NetworkPolicy")[0];
    let selector = &find(&objects, "Deployment")[0]["spec"]["selector"]["matchLabels"];
    check_network_policy("chart", policy, selector);
    let from = policy_rules(policy)[1].1.clone();
    let test = find(&objects, "Pod")[0];
    let admitted = &from[1]["podSelector"]["matchLabels"];
    for (k, v) in admitted.as_object().unwrap() {
        assert_eq!(
            &test["metadata"]["labels"][k], v,
            "the test pod is admitted"
        );
    }
    assert!(
        from[1]["namespaceSelector"].is_null(),
        "its own namespace only"
    );
    assert_eq!(from.as_array().unwrap().len(), 2);
    // The kubelet's addresses, the scraper pods, every data port; or no policy at all.
    let objects = render_chart(&[
        ("networkPolicy.kubeletCIDRs", json!(["10.0.0.0/16"])),
        (
            "networkPolicy.monitoringPodSelector",
            json!({"app.kubernetes.io/name": "prometheus"}),
        ),
        (
            "config.dataPorts",
            json!([{"port": 7777}, {"port": 7780, "protocol": "TCP", "targetPortName": "chat"}]),
        ),
    ]);
    let policy = find(&objects, "NetworkPolicy")[0];
    typed(policy).unwrap();
    let rules = policy_rules(policy);
    assert_eq!(
        rules[0].0,
        [
            (9000, "TCP".into()),
            (7777, "UDP".into()),
            (7780, "TCP".into())
        ]
    );
    let from = rules[1].1.as_array().unwrap();
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "prometheus"
    );
    assert_eq!(from[2]["ipBlock"]["cidr"], "10.0.0.0/16");
    assert!(
        find(
            &render_chart(&[("networkPolicy.enabled", json!(false))]),
            "NetworkPolicy"
        )
        .is_empty()
    );
}

#[test]
fn chart_ships_alert_rules_and_a_grafana_dashboard_behind_switches() {
    use serde_json::json;
    let objects = render_chart(&[
        ("metrics.prometheusRule.enabled", json!(true)),
        (
            "metrics.prometheusRule.labels",
            json!({"release": "kube-prometheus-stack"}),
        ),
        ("metrics.dashboard.enabled", json!(true)),
        ("metrics.dashboard.namespace", json!("monitoring")),
        ("config.maxSessions", json!(5000)),
    ]);
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
    }
    let rule = find(&objects, "PrometheusRule")[0];
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    assert!(rules.len() >= 10);
    let cap = rules
        .iter()
        .find(|r| r["alert"] == "UdpDirectorNearSessionCap")
        .unwrap();
    assert_eq!(cap["expr"], "udp_director_sessions_active > 0.9 * 5000");
    let dashboard = find(&objects, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "udp-director-dashboard")
        .unwrap();
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value =
        serde_json::from_str(dashboard["data"]["udp-director.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "udp-director");
    assert!(json["panels"].as_array().unwrap().len() >= 10);
    // Off by default.
    let objects = render_chart(&[]);
    assert!(find(&objects, "PrometheusRule").is_empty());
    assert!(
        find(&objects, "ConfigMap")
            .iter()
            .all(|c| c["metadata"]["name"] != "udp-director-dashboard")
    );
}

#[test]
fn chart_fast_path_adds_exactly_bpf_and_net_admin_and_renders_the_config() {
    use serde_json::json;
    let container = |objects: &[Value]| pod_spec(objects)["spec"]["containers"][0].clone();
    let config_doc = |objects: &[Value]| -> serde_yaml::Value {
        let cm = find(objects, "ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"] == "udp-director-config")
            .unwrap();
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap()
    };
    // Default: restricted exactly as before, no added capability, and no fastPath key in
    // the config (which the director validates).
    let objects = render_chart(&[]);
    let sc = container(&objects)["securityContext"].clone();
    assert_eq!(
        sc,
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "privileged": false,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert!(sc["capabilities"].get("add").is_none());
    let pod_sc = pod_spec(&objects)["spec"]["securityContext"].clone();
    assert_eq!(pod_sc["runAsNonRoot"], true);
    assert_eq!(pod_sc["runAsUser"], 65532);
    assert!(config_doc(&objects).get("fastPath").is_none());
    // Enabled: exactly CAP_BPF and CAP_NET_ADMIN on top of nothing, nothing else loosened.
    let objects = render_chart(&[("fastPath.enabled", json!(true))]);
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
    }
    let fast = container(&objects)["securityContext"].clone();
    assert_eq!(
        fast["capabilities"],
        json!({"drop": ["ALL"], "add": ["BPF", "NET_ADMIN"]})
    );
    for key in ["allowPrivilegeEscalation", "privileged"] {
        assert_eq!(fast[key], false, "{key}");
    }
    assert_eq!(fast["readOnlyRootFilesystem"], true);
    assert_eq!(fast["seccompProfile"], sc["seccompProfile"]);
    // Root inside the container: added capabilities reach a non-root process only as
    // ambient capabilities, which Kubernetes does not set. The container's runAsNonRoot
    // must say false, or the kubelet refuses UID 0 under the pod's runAsNonRoot: true.
    assert_eq!(fast["runAsUser"], 0);
    assert_eq!(fast["runAsNonRoot"], false);
    // Nothing else of the container's context differs from the default's.
    let mut loosened = fast.as_object().unwrap().clone();
    for key in ["capabilities", "runAsUser", "runAsNonRoot"] {
        loosened.remove(key);
    }
    let mut restricted = sc.as_object().unwrap().clone();
    for key in ["capabilities", "runAsNonRoot"] {
        restricted.remove(key);
    }
    assert_eq!(loosened, restricted);
    // The pod's own context is the default's (the container's overrides it).
    assert_eq!(pod_spec(&objects)["spec"]["securityContext"], pod_sc);
    assert_eq!(
        serde_json::to_value(config_doc(&objects)["fastPath"].clone()).unwrap(),
        json!({"enabled": true, "interfaces": ["eth0"]})
    );
    // The rendered config is what the director takes: valid in a build with the feature,
    // refused (naming the key) in one without it.
    let cm = find(&objects, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "udp-director-config")
        .unwrap();
    let checked = ValidConfig::from_yaml(cm["data"]["config.yaml"].as_str().unwrap());
    if cfg!(feature = "fast-path") {
        let valid = checked.unwrap();
        assert_eq!(valid.fast_path.unwrap().interfaces, ["eth0"]);
    } else {
        let e = checked.unwrap_err().to_string();
        assert!(e.contains("fastPath.enabled"), "{e}");
    }
    // NOTES.txt says what the namespace needs.
    let notes = helm("render", &[("fastPath.enabled", json!(true))])["manifests"]
        ["udp-director/templates/NOTES.txt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        notes.contains("pod-security.kubernetes.io/enforce=privileged"),
        "{notes}"
    );
    // Real `helm lint --strict` both ways: no errors, no warnings.
    for set in [vec![], vec![("fastPath.enabled", json!(true))]] {
        let lint = helm("lint", &set);
        let messages = lint["lint"]["messages"].as_array().unwrap();
        assert!(
            messages.iter().all(|m| m["severity"].as_i64() < Some(2)),
            "{set:?}: {messages:?}"
        );
        assert_eq!(lint["lint"]["errors"], json!([]), "{set:?}");
    }
    let objects = render_chart(&[
        ("fastPath.enabled", json!(true)),
        ("fastPath.interfaces", json!(["ens5"])),
    ]);
    assert_eq!(
        serde_json::to_value(config_doc(&objects)["fastPath"].clone()).unwrap(),
        json!({"enabled": true, "interfaces": ["ens5"]})
    );
    // Every other pod of the chart stays restricted.
    for o in find(&objects, "Pod")
        .into_iter()
        .chain(find(&objects, "Job"))
    {
        let spec = if o["kind"] == "Job" {
            &o["spec"]["template"]["spec"]
        } else {
            &o["spec"]
        };
        assert_eq!(
            spec["containers"][0]["securityContext"]["capabilities"],
            json!({"drop": ["ALL"]})
        );
    }
    let e = try_render_chart(&[
        ("fastPath.enabled", json!(true)),
        ("config.reusePort", json!(true)),
    ])
    .unwrap_err();
    assert!(e.contains("reusePort"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_helm_test_queries_the_director_and_requires_readyz() {
    use serde_json::json;
    let objects = render_chart(&[]);
    let tests: Vec<&Value> = find(&objects, "Pod");
    assert_eq!(tests.len(), 1);
    let pod = tests[0].clone();
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert_eq!(
        job_env(&pod, "RESOURCE_TYPE"),
        "gameserver",
        "the first mapping"
    );
    assert_eq!(job_env(&pod, "QUERY_HOST"), "udp-director.udp-director.svc");
    assert_eq!(
        job_env(&pod, "ADMIN_URL"),
        "http://udp-director-metrics.udp-director.svc:8080"
    );
    let metrics = find(&objects, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "udp-director-metrics")
        .unwrap();
    assert_eq!(metrics["spec"]["type"], "ClusterIP");
    let named = render_chart(&[("tests.resourceType", json!("arena"))]);
    assert_eq!(job_env(find(&named, "Pod")[0], "RESOURCE_TYPE"), "arena");

    // Its script, against a director on loopback: answered and ready.
    let b = common::Backend::new();
    let d = common::start(common::config_for(&[&b], "")).await;
    let env = move |query: std::net::SocketAddr, admin: std::net::SocketAddr| {
        vec![
            ("QUERY_HOST", query.ip().to_string()),
            ("QUERY_PORT", query.port().to_string()),
            ("RESOURCE_TYPE", "echo".to_string()),
            ("ADMIN_URL", format!("http://{admin}")),
        ]
    };
    let (q, a) = (d.query_addr, d.admin_addr);
    let script = pod.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || run_container_script(&script, &env(q, a)))
        .await
        .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("\"token\""), "{out}");
    assert!(out.contains("ready"), "{out}");
    // An unknown resource type is still an answer (the query server works).
    let script = pod.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let mut e = env(q, a);
        e[2].1 = "nothing".into();
        run_container_script(&script, &e)
    })
    .await
    .unwrap();
    assert!(ok && out.contains("unknown_resource_type"), "{out}");
    d.stop().await;
    // Nothing listening: the test fails.
    let script = pod.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || run_container_script(&script, &env(q, a)))
        .await
        .unwrap();
    assert!(!ok, "{out}");
}

#[test]
fn chart_writes_the_admin_token_file_only_when_a_secret_is_named() {
    use serde_json::json;
    let config_text = |objects: &[Value]| {
        find(objects, "ConfigMap")[0]["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Default: none of the keys today's director may not know (it refuses unknown keys).
    let objects = render_chart(&[]);
    let text = config_text(&objects);
    for key in ["adminTokenFile", "adminBindAddress", "fastPath"] {
        assert!(!text.contains(key), "{key} in {text}");
    }
    assert!(pod_spec(&objects)["spec"]["volumes"].is_null());
    let objects = render_chart(&[("admin.tokenSecret", json!("admin-token"))]);
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
    }
    let config: serde_yaml::Value = serde_yaml::from_str(&config_text(&objects)).unwrap();
    assert_eq!(config["adminTokenFile"], "/etc/udp-director/admin/token");
    let pod = pod_spec(&objects)["spec"].clone();
    assert_eq!(
        pod["volumes"],
        json!([{"name": "admin-token", "secret": {"secretName": "admin-token",
            "items": [{"key": "token", "path": "token"}]}}])
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"],
        json!([{"name": "admin-token", "mountPath": "/etc/udp-director/admin", "readOnly": true}])
    );
    // NOTES.txt tells the user how to reach and check the install.
    let notes = helm("render", &[])["manifests"]["udp-director/templates/NOTES.txt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(notes.contains("helm test udp-director"), "{notes}");
    assert!(notes.contains("udp-director-token-keys"), "{notes}");
    // Every switch on at once still lints clean (strict).
    let lint = helm(
        "lint",
        &[
            ("metrics.prometheusRule.enabled", json!(true)),
            ("metrics.dashboard.enabled", json!(true)),
            ("metrics.serviceMonitor.enabled", json!(true)),
            ("service.split.enabled", json!(true)),
            ("fastPath.enabled", json!(true)),
            ("admin.tokenSecret", json!("admin-token")),
            ("networkPolicy.kubeletCIDRs", json!(["10.0.0.0/8"])),
            ("autoscaling.enabled", json!(true)),
        ],
    );
    let messages = lint["lint"]["messages"].as_array().unwrap();
    assert!(
        messages.iter().all(|m| m["severity"].as_i64() < Some(2)),
        "{messages:?}"
    );
    assert_eq!(lint["lint"]["errors"], json!([]));
}

#[test]
fn chart_mounts_the_ticket_keys_and_query_tls_from_secrets() {
    use serde_json::json;
    let config_of = |objects: &[Value]| {
        find(objects, "ConfigMap")[0]["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Default: neither key, no volume.
    let text = config_of(&render_chart(&[]));
    assert!(
        !text.contains("queryAuth") && !text.contains("queryTls"),
        "{text}"
    );
    // An allocating mapping without `auth` needs tickets: the chart's queryAuth gives them.
    let mapping = json!({"group": "agones.dev", "version": "v1", "resource": "gameservers",
        "namespace": "game-servers", "addressPath": "status.address", "portName": "default",
        "allocate": {"playersList": "players"}});
    let objects = render_chart(&[
        ("config.resourceQueryMapping.match", mapping),
        ("queryAuth.jwksSecret", json!("studio-jwks")),
        ("queryAuth.issuer", json!("https://auth.example.com")),
        ("queryTls.secret", json!("director-tls")),
        ("admin.tokenSecret", json!("admin-token")),
    ]);
    for o in &objects {
        typed(o).unwrap_or_else(|e| panic!("chart {}: {e}", o["kind"]));
    }
    let config = ValidConfig::from_yaml(&config_of(&objects)).unwrap();
    let auth = config.query_auth.unwrap();
    assert_eq!(
        auth.source,
        udp_director::config::KeySource::File("/etc/udp-director/jwks/jwks.json".into())
    );
    assert_eq!(auth.audience, "udp-director");
    assert_eq!(auth.issuer.as_deref(), Some("https://auth.example.com"));
    assert_eq!(
        config.mappings["match"].auth,
        udp_director::config::Auth::Ticket
    );
    let tls = config.query_tls.unwrap();
    assert_eq!(
        tls.cert_file,
        PathBuf::from("/etc/udp-director/tls/tls.crt")
    );
    assert_eq!(
        tls.client_ca_file,
        Some(PathBuf::from("/etc/udp-director/tls/ca.crt"))
    );
    let pod = pod_spec(&objects)["spec"].clone();
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "admin-token", "secret": {"secretName": "admin-token",
                "items": [{"key": "token", "path": "token"}]}},
            {"name": "jwks", "secret": {"secretName": "studio-jwks",
                "items": [{"key": "jwks.json", "path": "jwks.json"}]}},
            {"name": "query-tls", "secret": {"secretName": "director-tls"}}
        ])
    );
    let mounts: Vec<&str> = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts,
        [
            "/etc/udp-director/admin",
            "/etc/udp-director/jwks",
            "/etc/udp-director/tls"
        ]
    );
    // Without clientCa the director speaks TLS but knows no backend callers.
    let objects = render_chart(&[
        ("queryTls.secret", json!("director-tls")),
        ("queryTls.clientCa", json!(false)),
    ]);
    let config = ValidConfig::from_yaml(&config_of(&objects)).unwrap();
    assert_eq!(config.query_tls.unwrap().client_ca_file, None);
    // The schema refuses what the chart would not understand.
    assert!(try_render_chart(&[("queryAuth.leewaySeconds", json!(301))]).is_err());
    assert!(try_render_chart(&[("queryTls.caFile", json!("x"))]).is_err());
}
