//! Every config shipped in `k8s/` (ConfigMap `config.yaml` keys) and `config.example.yaml`
//! goes through the real validator, and every manifest is well-formed YAML with the fields
//! Kubernetes requires of any object.

use std::path::Path;

use udp_director::config::Config;

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
            Config::from_yaml(text).unwrap_or_else(|e| panic!("{path}: {e}"));
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "static, agones, agones-service, pods, pods-multiport: {checked}"
    );
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml")).unwrap();
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

#[test]
fn rbac_is_read_only() {
    let mut rules = 0;
    for (path, doc) in manifests() {
        if doc["kind"] == "Role" || doc["kind"] == "ClusterRole" {
            for rule in doc["rules"].as_sequence().unwrap() {
                rules += 1;
                for verb in rule["verbs"].as_sequence().unwrap() {
                    let verb = verb.as_str().unwrap();
                    assert!(
                        ["get", "list", "watch"].contains(&verb),
                        "{path}: verb {verb}"
                    );
                }
            }
        }
    }
    assert!(rules >= 2);
}
