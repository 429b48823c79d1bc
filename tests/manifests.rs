//! Every config shipped in `k8s/` (ConfigMap `config.yaml` keys) and `config.example.yaml`
//! goes through the real validator; every manifest in `k8s/` and every object the Helm chart
//! renders is loaded through its k8s-openapi type and must serialize back unchanged (so a
//! misspelt field, which serde would silently drop, or a wrong type fails).
//!
//! The chart is rendered and linted by real Helm: Helm 4's Go SDK through `helm-python-sdk`
//! (`tests/helm.py`, the code of `helm template` and `helm lint`; `.ci/run` installs it).

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

/// Every Role/ClusterRole rule among `objects` with its object's namespace: read-only verbs,
/// or exactly the allocation grant. Returns the namespaces holding the allocation grant.
fn check_rbac_rules(what: &str, objects: &[Value]) -> Vec<String> {
    let mut allocating = Vec::new();
    let mut rules = 0;
    for o in objects {
        if o["kind"] == "Role" || o["kind"] == "ClusterRole" {
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
        .filter(|o| o["kind"] == "Role")
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
    for (_, text) in manifests {
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
    ] {
        assert!(kinds.contains(&kind), "chart renders a {kind}: {kinds:?}");
    }
    assert!(
        !kinds.contains(&"ServiceMonitor"),
        "ServiceMonitor is opt-in"
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
    let svc = objects.iter().find(|o| o["kind"] == "Service").unwrap();
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
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
    assert_eq!(config.query_port, 9100);
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
        "portName": "default", "allocate": {"playersList": "players", "preferAllocated": true}});
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

/// The key text the chart's Secret holds, checked by the director's own parser.
fn chart_keys(objects: &[Value]) -> Option<String> {
    use base64::Engine;
    let secret = objects.iter().find(|o| o["kind"] == "Secret")?;
    let b64 = secret["data"]["token-keys"].as_str()?;
    let text =
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()?;
    Some(text)
}

#[test]
fn chart_runs_several_replicas_with_sealed_tokens_and_a_kept_key_secret() {
    let objects = render_chart(&[]);
    let d = the_deployment(&objects);
    assert_eq!(d.spec.replicas, Some(2));
    let pod = d.spec.template.spec.as_ref().unwrap();
    let spread = pod.topology_spread_constraints.as_ref().unwrap();
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(spread[0].when_unsatisfiable, "DoNotSchedule");
    // The Secret: one random key the director parses, kept across upgrades and uninstalls.
    let secret = objects.iter().find(|o| o["kind"] == "Secret").unwrap();
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let keys = chart_keys(&objects).unwrap();
    let set = udp_director::token::KeySet::parse(&keys).unwrap_or_else(|e| panic!("{e}: {keys:?}"));
    assert_eq!(set.ids().len(), 1);
    assert_ne!(
        chart_keys(&render_chart(&[])),
        Some(keys),
        "each install draws its own key"
    );
    // The config names that Secret; the RBAC reads that one Secret only.
    let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let config = ValidConfig::from_yaml(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        config.token_format,
        udp_director::config::TokenFormat::Sealed
    );
    let name = secret["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        config.token_keys_secret.as_deref(),
        Some(format!("udp-director/{name}").as_str())
    );
    let secret_rules: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Role")
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
