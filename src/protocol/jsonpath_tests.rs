use super::*;
use serde_json::json;

#[test]
fn plain_paths_become_pointers_and_others_queries() {
    assert!(
        matches!(CompiledPath::compile("status.state").unwrap(), CompiledPath::Keys(k) if k == ["status", "state"])
    );
    assert!(matches!(
        CompiledPath::compile("{.status.state}").unwrap(),
        CompiledPath::Keys(_)
    ));
    assert!(matches!(
        CompiledPath::compile("status.ports[0].port").unwrap(),
        CompiledPath::Query(..)
    ));
    assert!(CompiledPath::compile("$[").is_err());
}

#[test]
fn both_forms_select_the_same_values() {
    let obj = json!({"status": {"state": "Ready", "ports": [{"name": "default", "port": 7654}]}});
    let v = |p: &str| {
        CompiledPath::compile(p)
            .unwrap()
            .values(&obj)
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(v("status.state"), [json!("Ready")]);
    assert_eq!(v("$['status']['state']"), [json!("Ready")]);
    assert_eq!(v("status.ports[?(@.name=='default')].port"), [json!(7654)]);
    assert!(v("status.missing").is_empty());
    assert!(v("status.missing[0]").is_empty());
}

#[test]
fn prefixes_are_the_leading_plain_keys() {
    let prefix = |p: &str| CompiledPath::compile(p).unwrap().prefix().to_vec();
    assert_eq!(prefix("status.state"), ["status", "state"]);
    assert_eq!(
        prefix("status.ports[?(@.name=='default')].port"),
        ["status", "ports"]
    );
    assert_eq!(prefix("$.spec.containers[0].ports"), ["spec", "containers"]);
    assert_eq!(prefix("status.*.x"), ["status"]);
    assert!(
        prefix("$..state").is_empty(),
        "recursive descent reaches anywhere"
    );
    assert!(prefix("$['status']['state']").is_empty());
}

#[test]
fn regex_functions_are_recognised_wherever_they_are() {
    for path in [
        "status.ports[?match(@.name, 'd.*')].port",
        "status.ports[?(@.x == 1 || search(@.name, 'a'))]",
        "status.ports[?!match(@.name, 'x')]",
    ] {
        assert!(CompiledPath::compile(path).unwrap().uses_regex(), "{path}");
    }
    for path in [
        "status.state",
        "status.ports[?(@.name == 'match(')].port",
        "status.match",
        "status.ports[?length(@.name) > 1]",
    ] {
        let p = CompiledPath::compile(path).unwrap();
        // A literal holding `match(` is refused too (safe side), so only check the rest.
        if !path.contains("'match(") {
            assert!(!p.uses_regex(), "{path}");
        }
    }
}
