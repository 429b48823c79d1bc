//! Properties of the parsers of untrusted input, stated once and checked by both the property
//! tests (normal test suite) and the fuzz targets (`fuzz/`). The running director never calls
//! these; each returns what was violated instead of panicking, so callers choose how to fail.
//! The session table's own invariants are `SessionTable::check_invariants`.

use crate::config::Config;
use crate::protocol::datagram::{Datagram, classify, parse_token};
use crate::protocol::query::{ErrorCode, parse_request};
use crate::token::TokenId;

/// The classifier agrees with its definition: magic-prefixed datagrams are control packets
/// (well-formed or not), anything else is a bare token exactly when it parses as one, and a
/// token's wire form parses back to itself.
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
    let ok = match classify(datagram, magic) {
        Datagram::Reset(t) => prefixed && parse_token(rest) == Some(t),
        Datagram::MalformedReset => prefixed && parse_token(rest).is_none(),
        Datagram::Token(t) => {
            !prefixed
                && parse_token(datagram) == Some(t)
                && parse_token(t.to_wire().as_bytes()) == Some(t)
        }
        Datagram::Data => !prefixed && parse_token(datagram).is_none(),
    };
    if !ok {
        return Err(format!(
            "classify({datagram:?}, magic {magic:?}) = {:?}",
            classify(datagram, magic)
        ));
    }
    token_bits(datagram)
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

/// The config loader is total: an accepted config validates and survives a serialize/parse
/// round trip unchanged.
pub fn config_text(text: &str) -> Result<(), String> {
    let Ok(config) = Config::from_yaml(text) else {
        return Ok(());
    };
    config
        .validate()
        .map_err(|e| format!("accepted but invalid: {e}"))?;
    let yaml = serde_yaml::to_string(&config).map_err(|e| e.to_string())?;
    match Config::from_yaml(&yaml) {
        Ok(back) if back == config => Ok(()),
        other => Err(format!("round trip changed the config: {other:?}")),
    }
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
        fn classifier_holds_for_tokens_and_control_packets(token in token_like(), control in any::<bool>(),
                                                           flip in any::<Option<(usize, u8)>>()) {
            let mut d = if control { [MAGIC, &token[..]].concat() } else { token };
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
            expected in proptest::option::of("[A-Za-z]{0,6}"), extra in any::<bool>()) {
            let mut v = serde_json::json!({"resourceType": rt, "labelSelector": labels,
                "statusQuery": {"jsonPath": path}});
            if let Some(ns) = ns { v["namespace"] = serde_json::json!(ns); }
            if let Some(e) = expected { v["statusQuery"]["expectedValue"] = serde_json::json!(e); }
            if extra { v["surprise"] = serde_json::json!(1); }
            prop_assert_eq!(query_line(v.to_string().as_bytes()), Ok(()));
        }

        #[test]
        fn config_loader_holds_for_key_soup(
            keys in prop::collection::vec((prop::sample::select(vec![
                "tokenTTLSeconds", "sessionTimeoutSeconds", "maxSessions", "drainSeconds",
                "controlPacketMagicBytes", "singleUseTokens", "dataWorkers", "queryPort",
                "busyPollMicros", "accessLog", "bogusKey"]),
                prop::sample::select(vec!["0", "1", "30", "-1", "true", "\"FFFF\"", "\"zz\"", "[]", "{}", "99999999999"])), 0..6)) {
            let mut text = String::new();
            for (k, v) in keys { text.push_str(&format!("{k}: {v}\n")); }
            text.push_str("resourceQueryMapping:\n  e:\n    static: [{name: a, address: 127.0.0.1, port: 9}]\n");
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
        assert!(Config::from_yaml(&text).is_ok());
    }
}
