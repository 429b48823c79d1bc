//! Properties of the parsers of untrusted input, stated once and checked by both the property
//! tests (normal test suite) and the fuzz targets (`fuzz/`). The running director never calls
//! these; each returns what was violated instead of panicking, so callers choose how to fail.
//! The session table's own invariants are `SessionTable::check_invariants`.
//!
//! Owns the properties. Must not be called by the running director.

use crate::config::{Config, ValidConfig, ValidSource};
use crate::model::ErrorCode;
use crate::model::{TokenFormat, TokenId};
use crate::protocol::datagram::{Datagram, classify, parse_token};
use crate::protocol::query::parse_request;

/// The classifier agrees with an independent reading of SPEC §3: a datagram starting with
/// the magic is a client frame (RESPONSE: tag 2, 16 bytes of nonce, a token; PING: tag 3 and
/// at least 24 more bytes, shorter is a short ping) or a reset (well-formed when a token
/// follows), never data; otherwise it is a bare token exactly when the oracle says so; the
/// token found is the one the oracle reads, and its wire form parses back to itself.
pub fn datagram(datagram: &[u8], magic: &[u8]) -> Result<(), String> {
    if magic.is_empty() {
        return Ok(()); // the config guarantees a magic of 1..=32 bytes
    }
    let prefixed = datagram.starts_with(magic);
    let rest = if prefixed {
        &datagram[magic.len()..]
    } else {
        datagram
    };
    if prefixed && matches!(rest.first(), Some(2 | 3)) {
        return frame(datagram, magic, rest);
    }
    let expected = oracle_token(rest);
    let id = |t: &[u8]| TokenId::from_wire(t);
    let uuid = classify(datagram, magic, TokenFormat::Uuid);
    let ok = match uuid {
        Datagram::Reset(t) => prefixed && expected.is_some() && id(t) == expected,
        Datagram::MalformedReset => prefixed && expected.is_none(),
        Datagram::Token(t) => {
            !prefixed
                && expected.is_some()
                && id(t) == expected
                && expected.and_then(|e| parse_token(e.to_wire().as_bytes())) == expected
        }
        Datagram::Data => !prefixed && expected.is_none(),
        Datagram::Response { .. } | Datagram::Ping { .. } | Datagram::ShortPing => false,
    };
    if !ok {
        return Err(format!(
            "classify({datagram:?}, magic {magic:?}, uuid) = {uuid:?}, oracle {expected:?}"
        ));
    }
    let sealed_expected = oracle_sealed(rest);
    let sealed = classify(datagram, magic, TokenFormat::Sealed);
    let ok = match sealed {
        Datagram::Reset(t) => prefixed && sealed_expected == Some(t),
        Datagram::MalformedReset => prefixed && sealed_expected.is_none(),
        Datagram::Token(t) => !prefixed && sealed_expected == Some(t),
        Datagram::Data => !prefixed && sealed_expected.is_none(),
        Datagram::Response { .. } | Datagram::Ping { .. } | Datagram::ShortPing => false,
    };
    if !ok {
        return Err(format!(
            "classify({datagram:?}, magic {magic:?}, sealed) = {sealed:?}, oracle {sealed_expected:?}"
        ));
    }
    token_bits(datagram)
}

/// A RESPONSE or PING (`rest` is what follows the magic), read without the codec.
fn frame(datagram: &[u8], magic: &[u8], rest: &[u8]) -> Result<(), String> {
    for format in [TokenFormat::Uuid, TokenFormat::Sealed] {
        let got = classify(datagram, magic, format);
        let ok = match (rest[0], got) {
            (2, Datagram::Response { nonce, token }) => {
                rest.len() > 17
                    && nonce[..] == rest[1..17]
                    && match format {
                        TokenFormat::Uuid => {
                            oracle_token(&rest[17..]) == TokenId::from_wire(token)
                                && TokenId::from_wire(token).is_some()
                        }
                        TokenFormat::Sealed => oracle_sealed(&rest[17..]) == Some(token),
                    }
            }
            (2, Datagram::MalformedReset) => {
                rest.len() < 17
                    || match format {
                        TokenFormat::Uuid => oracle_token(&rest[17..]).is_none(),
                        TokenFormat::Sealed => oracle_sealed(&rest[17..]).is_none(),
                    }
            }
            (3, Datagram::Ping { id }) => rest.len() >= 25 && id[..] == rest[1..9],
            (3, Datagram::ShortPing) => rest.len() < 25,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "classify({datagram:?}, magic {magic:?}, {format:?}) = {got:?}: not the frame SPEC §3 reads"
            ));
        }
    }
    Ok(())
}

/// A sealed token in `bytes` by SPEC §7, read without the codec: at most 8 bytes of ASCII
/// whitespace either side of base64url characters of a sealed token's length.
fn oracle_sealed(bytes: &[u8]) -> Option<&[u8]> {
    const PADDING: usize = 8;
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
    if start > PADDING || bytes.len() - end > PADDING {
        return None;
    }
    let t = &bytes[start..end];
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    (t.len() >= crate::token::sealed::MIN_WIRE
        && t.len() <= crate::token::sealed::MAX_WIRE
        && t.iter().all(alphabet))
    .then_some(t)
}

/// The token in `bytes` by SPEC §3, read without the codec: at most 8 bytes of ASCII
/// whitespace either side of a 36-character hyphenated UUID (as `uuid` parses strings).
fn oracle_token(bytes: &[u8]) -> Option<TokenId> {
    const PADDING: usize = 8;
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
    if start > PADDING || bytes.len() - end > PADDING {
        return None;
    }
    let text = std::str::from_utf8(&bytes[start..end]).ok()?;
    // `parse_str` also takes the simple, braced and URN forms; a token is only hyphenated.
    if text.len() != 36 || text.as_bytes()[8] != b'-' {
        return None;
    }
    uuid::Uuid::parse_str(text)
        .ok()
        .map(|u| TokenId(u.as_u128()))
}

/// Any 128 bits survive the 36-byte wire form.
fn token_bits(seed: &[u8]) -> Result<(), String> {
    let mut raw = [0u8; 16];
    for (dst, src) in raw.iter_mut().zip(seed) {
        *dst = *src;
    }
    let id = TokenId(u128::from_le_bytes(raw));
    match parse_token(id.to_wire().as_bytes()) {
        Some(back) if back == id => Ok(()),
        other => Err(format!("{id:?} came back as {other:?}")),
    }
}

/// The query parser is total: what it accepts has a resource type and survives a
/// serialize/parse round trip unchanged; what it refuses is a `bad_request`.
pub fn query_line(line: &[u8]) -> Result<(), String> {
    match parse_request(line) {
        Ok(request) => {
            if request.resource_type.is_empty() {
                return Err("accepted an empty resourceType".into());
            }
            let again = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
            match parse_request(&again) {
                Ok(back) if back == request => Ok(()),
                other => Err(format!("{request:?} round-tripped to {other:?}")),
            }
        }
        Err(e) if e.code == ErrorCode::BadRequest => Ok(()),
        Err(e) => Err(format!("refused with {:?}, not bad_request", e.code)),
    }
}

/// The config loader is total, and what it accepts it decodes faithfully: the decoded values
/// agree with an independent reading of the document ([`config_agrees`]), and the document
/// survives a serialize/parse/validate round trip unchanged.
pub fn config_text(text: &str) -> Result<(), String> {
    let Ok(parsed) = Config::parse(text) else {
        return Ok(());
    };
    let Ok(valid) = parsed.clone().validate() else {
        return Ok(());
    };
    config_agrees(&parsed, &valid)?;
    let yaml = serde_yaml::to_string(valid.raw()).map_err(|e| e.to_string())?;
    let again = Config::parse(&yaml).map_err(|e| format!("serialized form does not parse: {e}"))?;
    if &again != valid.raw() {
        return Err(format!("round trip changed the config: {again:?}"));
    }
    let revalidated = again
        .clone()
        .validate()
        .map_err(|e| format!("round trip no longer validates: {e}"))?;
    config_agrees(&again, &revalidated)
}

/// `valid` is what `raw` says, read independently of the validator: the magic is the
/// document's hex, durations its seconds, listener addresses its bind address and ports,
/// the mappings its mappings with their namespaces and load balancing.
pub fn config_agrees(raw: &Config, valid: &ValidConfig) -> Result<(), String> {
    let fail = |what: &str| Err(format!("decoded {what} disagrees with the document"));
    if valid.raw() != raw {
        return fail("document");
    }
    match hex::decode(&raw.control_packet_magic_bytes) {
        Ok(m) if m == valid.magic && (1..=32).contains(&m.len()) => {}
        _ => return fail("magic"),
    }
    let secs = [
        (valid.token_ttl, raw.token_ttl_seconds),
        (valid.session_timeout, raw.session_timeout_seconds),
        (valid.drain, raw.drain_seconds),
    ];
    if secs
        .iter()
        .any(|(d, s)| d.as_secs() != *s || d.subsec_nanos() != 0)
        || valid.token_ttl.is_zero()
        || valid.session_timeout.is_zero()
        || valid.busy_poll.as_micros() != u128::from(raw.busy_poll_micros)
    {
        return fail("durations");
    }
    // `dataPorts`, when given, names the data ports (its first is the main one).
    let data_ports: Vec<u16> = match &raw.data_ports {
        Some(entries) => entries.iter().map(|e| e.port).collect(),
        None => vec![raw.data_port],
    };
    let admin_ip = raw.admin_bind_address.unwrap_or(raw.bind_address);
    if valid.admin_addr.ip() != admin_ip || valid.admin_addr.port() != raw.admin_port {
        return fail("admin address");
    }
    let mut ports = vec![(valid.query_addr, raw.query_port)];
    ports.extend(
        valid
            .data_ports
            .iter()
            .map(|d| d.addr)
            .zip(data_ports.iter().copied()),
    );
    if valid.data_ports.len() != data_ports.len()
        || valid.data_ports.first().map(|d| d.addr) != Some(valid.data_addr)
        || ports
            .iter()
            .any(|(a, p)| a.ip() != raw.bind_address || a.port() != *p)
    {
        return fail("listener addresses");
    }
    if !valid.mappings.keys().eq(raw.resource_query_mapping.keys()) {
        return fail("mapping names");
    }
    for (name, m) in &raw.resource_query_mapping {
        let Some(v) = valid.mappings.get(name) else {
            return fail("mappings");
        };
        let own_ns = m.namespace.clone().unwrap_or_else(|| "default".to_string());
        let lb = m.load_balancing.as_ref().unwrap_or(&raw.load_balancing);
        if v.default_namespace != own_ns
            || !v.allowed.contains(&own_ns)
            || &v.load_balancing != lb
            || v.allow_regex != m.allow_regex
        {
            return fail(&format!("mapping {name}"));
        }
        let endpoints = m.static_endpoints.as_ref().map(Vec::len);
        let decoded = match &v.source {
            ValidSource::Static(e) => Some(e.len()),
            ValidSource::Kube(_) => None,
        };
        if endpoints != decoded {
            return fail(&format!("mapping {name}'s source"));
        }
        // `allocate:` decodes as written (the in-flight default filled in), only on Agones
        // GameServers, never with a list-less preferAllocated.
        let allocate_agrees = match (&m.allocate, &v.allocate) {
            (None, None) => true,
            (Some(a), Some(d)) => {
                d.scheduling == a.scheduling
                    && d.prefer_allocated == a.prefer_allocated
                    && d.players_list == a.players_list
                    && d.metadata == a.metadata
                    && d.max_in_flight
                        == a.max_in_flight
                            .unwrap_or(crate::config::ALLOCATIONS_IN_FLIGHT)
                    && d.max_in_flight > 0
                    && d.rate_per_second
                        == a.rate_per_second.unwrap_or(crate::config::ALLOCATION_RATE)
                    && d.burst == a.burst.unwrap_or(crate::config::ALLOCATION_BURST)
                    && d.rate_per_second > 0
                    && d.burst > 0
                    && (!d.prefer_allocated || d.players_list.is_some())
                    && matches!(&v.source, ValidSource::Kube(k)
                        if k.group == "agones.dev" && k.resource == "gameservers")
            }
            _ => false,
        };
        if !allocate_agrees {
            return fail(&format!("mapping {name}'s allocate"));
        }
        // `auth` as written, else `ticket` exactly for allocating mappings; a mapping that
        // needs tickets never without `queryAuth`.
        let auth = m.auth.unwrap_or(if m.allocate.is_some() {
            crate::config::Auth::Ticket
        } else {
            crate::config::Auth::None
        });
        if v.auth != auth || (auth == crate::config::Auth::Ticket && valid.query_auth.is_none()) {
            return fail(&format!("mapping {name}'s auth"));
        }
    }
    if let Some(d) = &raw.default_endpoint
        && !valid.mappings.contains_key(&d.query.resource_type)
    {
        return fail("default endpoint");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";

    fn token_like() -> impl Strategy<Value = Vec<u8>> {
        (any::<u128>(), 0usize..3, 0usize..3).prop_map(|(bits, pre, post)| {
            let mut v = vec![b' '; pre];
            v.extend_from_slice(TokenId(bits).to_wire().as_bytes());
            v.extend(std::iter::repeat_n(b'\n', post));
            v
        })
    }

    proptest! {
        #[test]
        fn classifier_holds_for_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..80),
                                          magic in prop::collection::vec(any::<u8>(), 1..33)) {
            prop_assert_eq!(datagram(&bytes, &magic), Ok(()));
        }

        #[test]
        fn classifier_holds_for_tokens_and_resets(token in token_like(), reset in any::<bool>(),
                                                           flip in any::<Option<(usize, u8)>>()) {
            let mut d = if reset { [MAGIC, &token[..]].concat() } else { token };
            if let Some((i, b)) = flip {
                let i = i % d.len();
                d[i] = b;
            }
            prop_assert_eq!(datagram(&d, MAGIC), Ok(()));
        }

        #[test]
        fn query_parser_holds_for_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(query_line(&bytes), Ok(()));
        }

        #[test]
        fn query_parser_holds_for_json_shaped_requests(
            rt in "[a-z]{0,8}", ns in proptest::option::of("[a-z-]{0,8}"),
            labels in prop::collection::btree_map("[a-z./]{1,6}", "[a-zA-Z0-9]{0,6}", 0..3),
            path in "(status|metadata)\\.[a-z]{1,6}|\\$\\.[a-z]{1,4}\\[0\\]|[a-z\\[\\]?@=.]{0,10}",
            expected in proptest::option::of("[A-Za-z]{0,6}"), extra in any::<bool>(),
            player in proptest::option::of("[ -~é]{0,40}")) {
            let mut v = serde_json::json!({"resourceType": rt, "labelSelector": labels,
                "statusQuery": {"jsonPath": path}});
            if let Some(ns) = ns { v["namespace"] = serde_json::json!(ns); }
            if let Some(e) = expected { v["statusQuery"]["expectedValue"] = serde_json::json!(e); }
            if extra { v["surprise"] = serde_json::json!(1); }
            if let Some(p) = player { v["playerId"] = serde_json::json!(p); }
            prop_assert_eq!(query_line(v.to_string().as_bytes()), Ok(()));
        }

        #[test]
        fn config_loader_holds_for_key_soup(
            keys in prop::collection::vec((prop::sample::select(vec![
                "tokenTTLSeconds", "sessionTimeoutSeconds", "maxSessions", "drainSeconds",
                "controlPacketMagicBytes", "singleUseTokens", "dataWorkers", "queryPort",
                "busyPollMicros", "accessLog", "dataPort", "dataPorts", "bogusKey"]),
                prop::sample::select(vec!["0", "1", "30", "-1", "true", "\"FFFF\"", "\"zz\"", "[]", "{}", "99999999999",
                    "[{port: 7000}]", "[{port: 0}, {port: 0, targetPortName: voice}]", "[{port: 1, targetPort: 0}]"])), 0..6)) {
            let mut text = String::new();
            for (k, v) in keys { text.push_str(&format!("{k}: {v}\n")); }
            text.push_str("resourceQueryMapping:\n  e:\n    static: [{name: a, address: 127.0.0.1, port: 9}]\n");
            prop_assert_eq!(config_text(&text), Ok(()));
        }

        #[test]
        fn config_loader_holds_for_allocate_soup(
            keys in prop::collection::vec((prop::sample::select(vec![
                "scheduling", "preferAllocated", "playersList", "maxInFlight", "ratePerSecond", "burst", "metadata", "bogus"]),
                prop::sample::select(vec!["0", "1", "true", "false", "Packed", "Distributed", "Random",
                    "players", "\"\"", "[]", "{}", "{labels: {a: b}}", "{labels: {'': b}}", "-3"])), 0..5),
            resource in prop::sample::select(vec!["gameservers", "pods"]),
            port in prop::sample::select(vec!["portName: default", "port: 7654", "portPath: status.ports[0].port"])) {
            let mut text = format!("resourceQueryMapping:\n  gs:\n    group: agones.dev\n    version: v1\n    resource: {resource}\n    addressPath: status.address\n    {port}\n    auth: none\n    allocate:\n");
            text.push_str("      maxInFlight: 2\n");
            for (k, v) in keys { text.push_str(&format!("      {k}: {v}\n")); }
            prop_assert_eq!(config_text(&text), Ok(()));
        }

        #[test]
        fn config_loader_holds_for_any_text(text in "\\PC{0,120}") {
            prop_assert_eq!(config_text(&text), Ok(()));
        }
    }

    #[test]
    fn shipped_configs_hold() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("config.example.yaml")).unwrap();
        assert_eq!(config_text(&text), Ok(()));
        assert!(ValidConfig::from_yaml(&text).is_ok());
    }

    /// The config property is not a tautology: a decoded config that does not match its
    /// document is caught, field by field.
    #[test]
    fn the_config_property_fires_on_a_mismatch() {
        let doc = |extra: &str| {
            format!(
                "{extra}resourceQueryMapping:\n  e:\n    static: [{{name: a, address: 127.0.0.1, port: 9}}]\n"
            )
        };
        let valid = ValidConfig::from_yaml(&doc("")).unwrap();
        assert_eq!(config_agrees(valid.raw(), &valid), Ok(()));
        for other in [
            "tokenTTLSeconds: 7\n",
            "controlPacketMagicBytes: AB\n",
            "queryPort: 1\n",
        ] {
            let raw = Config::parse(&doc(other)).unwrap();
            assert!(config_agrees(&raw, &valid).is_err(), "{other}");
        }
        let mut tampered = valid.clone();
        tampered.magic.push(0);
        assert!(config_agrees(valid.raw(), &tampered).is_err());
        let mut tampered = valid.clone();
        tampered.session_timeout += std::time::Duration::from_millis(1);
        assert!(config_agrees(valid.raw(), &tampered).is_err());
        // An allocate block decoded wrong, or lost, is caught too.
        let allocating = ValidConfig::from_yaml(
            "resourceQueryMapping:\n  gs:\n    group: agones.dev\n    version: v1\n    resource: gameservers\n    addressPath: status.address\n    portName: default\n    auth: none\n    allocate: {playersList: players}\n",
        )
        .unwrap();
        assert_eq!(config_agrees(allocating.raw(), &allocating), Ok(()));
        for tamper in [
            |a: &mut crate::config::ValidAllocate| a.max_in_flight += 1,
            |a: &mut crate::config::ValidAllocate| a.players_list = None,
            |a: &mut crate::config::ValidAllocate| {
                a.scheduling = crate::config::Scheduling::Distributed
            },
        ] {
            let mut tampered = allocating.clone();
            let m = tampered.mappings.get_mut("gs").unwrap();
            tamper(m.allocate.as_mut().unwrap());
            assert!(config_agrees(allocating.raw(), &tampered).is_err());
        }
        let mut tampered = allocating.clone();
        tampered.mappings.get_mut("gs").unwrap().allocate = None;
        assert!(config_agrees(allocating.raw(), &tampered).is_err());
    }

    /// The datagram oracle is independent of the codec and agrees on the byte vectors.
    #[test]
    fn the_datagram_oracle_reads_tokens_by_the_spec() {
        let t = b"550e8400-e29b-41d4-a716-446655440000";
        assert!(oracle_token(t).is_some());
        assert!(oracle_token(&[b"  ".as_slice(), t, b"\r\n"].concat()).is_some());
        assert!(
            oracle_token(&[b"         ".as_slice(), t].concat()).is_none(),
            "9 spaces"
        );
        assert!(
            oracle_token(b"550e8400e29b41d4a716446655440000").is_none(),
            "simple form"
        );
        assert!(oracle_token(b"{550e8400-e29b-41d4-a716-446655440000}").is_none());
        assert!(oracle_token(b"urn:uuid:550e8400-e29b-41d4-a716-446655440000").is_none());
    }
}
