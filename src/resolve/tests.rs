use super::*;
use crate::config::ValidConfig;
use crate::protocol::query::parse_request;
use std::collections::HashMap;

struct Counts(HashMap<SocketAddr, usize>);
impl SessionCounts for Counts {
    fn sessions_to(&self, addr: &SocketAddr) -> usize {
        self.0.get(addr).copied().unwrap_or(0)
    }
}

const CONFIG: &str = r#"
resourceQueryMapping:
  echo:
    namespace: games
    namespaces: [games, eu]
    labelSelector: {tier: public}
    static:
      - {name: b, address: 127.0.0.1, port: 9002, labels: {tier: public, zone: b}, status: {state: Ready}}
      - {name: a, address: 127.0.0.1, port: 9001, labels: {tier: public, zone: a}, annotations: {status: accepting}, status: {state: Ready, players: 3}}
      - {name: c, address: 127.0.0.1, port: 9003, labels: {tier: public, zone: a}, status: {state: Shutdown}}
      - {name: hidden, address: 127.0.0.1, port: 9004, labels: {tier: internal}, status: {state: Ready}}
      - {name: eu1, namespace: eu, address: 127.0.0.1, port: 9005, labels: {tier: public}}
  exposed:
    exposeTargetAddress: true
    loadBalancing: {type: first}
    static:
      - {name: x, address: 10.1.2.3, port: 7654}
"#;

fn resolver() -> Resolver {
    Resolver::from_config(&ValidConfig::from_yaml(CONFIG).unwrap())
}

fn q(resolver: &Resolver, json: &str, counts: &Counts) -> Result<Resolved, QueryError> {
    resolver.resolve(&parse_request(json.as_bytes()).unwrap(), counts)
}

fn no_counts() -> Counts {
    Counts(HashMap::new())
}

#[test]
fn error_codes() {
    let r = resolver();
    let c = no_counts();
    let code = |json: &str| q(&r, json, &c).unwrap_err().code;
    assert_eq!(
        code(r#"{"resourceType":"nope"}"#),
        ErrorCode::UnknownResourceType
    );
    assert_eq!(
        code(r#"{"resourceType":"echo","namespace":"kube-system"}"#),
        ErrorCode::ForbiddenNamespace
    );
    assert_eq!(
        code(r#"{"resourceType":"echo","labelSelector":{"zone":"z"}}"#),
        ErrorCode::NoMatch
    );
}

#[test]
fn filters_and_fixed_selector_apply() {
    let r = resolver();
    let c = no_counts();
    let name = |json: &str| q(&r, json, &c).unwrap().target.name.clone();
    // Fixed selector hides `hidden`; first by name among a, b (c is Shutdown but no status query).
    assert_eq!(
        name(r#"{"resourceType":"echo","labelSelector":{"zone":"b"}}"#),
        "b"
    );
    assert_eq!(
        name(r#"{"resourceType":"echo","annotationSelector":{"status":"accepting"}}"#),
        "a"
    );
    assert_eq!(
        name(
            r#"{"resourceType":"echo","labelSelector":{"zone":"a"},"statusQuery":{"jsonPath":"status.state","expectedValue":"Shutdown"}}"#
        ),
        "c"
    );
    assert_eq!(
        name(
            r#"{"resourceType":"echo","statusQuery":{"jsonPath":"{.status.players}","expectedValues":[3]}}"#
        ),
        "a"
    );
    assert_eq!(name(r#"{"resourceType":"echo","namespace":"eu"}"#), "eu1");
    let e = q(
        &r,
        r#"{"resourceType":"echo","labelSelector":{"tier":"internal"}}"#,
        &c,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::NoMatch);
}

#[test]
fn least_sessions_prefers_the_emptier_target() {
    let r = resolver();
    let counts = Counts([("127.0.0.1:9001".parse().unwrap(), 2)].into());
    let res = q(&r, r#"{"resourceType":"echo","statusQuery":{"jsonPath":"status.state","expectedValue":"Ready"}}"#, &counts).unwrap();
    assert_eq!(res.target.name, "b");
    assert!(!res.expose_address);
    assert_eq!(res.target.mapping, "echo");
}

#[test]
fn label_arithmetic_reads_labels_or_annotations_and_counts_sessions() {
    let r = Resolver::from_config(&ValidConfig::from_yaml(r#"
resourceQueryMapping:
  gs:
    loadBalancing: {type: labelArithmetic, currentLabel: players, maxLabel: capacity, overlap: 1}
    static:
      - {name: full, address: 127.0.0.1, port: 1, labels: {players: "9", capacity: "10"}}
      - {name: roomy, address: 127.0.0.1, port: 2, labels: {players: "2"}, annotations: {capacity: "10"}}
      - {name: unlabeled, address: 127.0.0.1, port: 3}
"#).unwrap());
    let q =
        |counts: &Counts| r.resolve(&parse_request(br#"{"resourceType":"gs"}"#).unwrap(), counts);
    assert_eq!(q(&no_counts()).unwrap().target.name, "roomy");
    // roomy with 6 sessions: free 10 - 2 - 6 - 1 = 1 beats full's 0.
    let six = Counts([("127.0.0.1:2".parse().unwrap(), 6)].into());
    assert_eq!(q(&six).unwrap().target.name, "roomy");
    // With 8, roomy is over (2 + 8 + 1 > 10): full (free 0) is the only eligible one.
    let eight = Counts([("127.0.0.1:2".parse().unwrap(), 8)].into());
    assert_eq!(q(&eight).unwrap().target.name, "full");
    // One session on full too: nothing fits.
    let none = Counts(
        [
            ("127.0.0.1:2".parse().unwrap(), 8),
            ("127.0.0.1:1".parse().unwrap(), 1),
        ]
        .into(),
    );
    let e = q(&none).unwrap_err();
    assert_eq!(e.code, ErrorCode::NoMatch);
    assert!(e.message.contains("free capacity"), "{}", e.message);
}

#[test]
fn exposure_follows_the_mapping() {
    let r = resolver();
    let res = q(&r, r#"{"resourceType":"exposed"}"#, &no_counts()).unwrap();
    assert!(res.expose_address);
    assert_eq!(res.target.addr, "10.1.2.3:7654".parse().unwrap());
    assert_eq!(res.target.namespace, "default");
}
