//! Token keys (SPEC §7): the text format of `tokenKeysFile` and of the Secret key
//! `token-keys`, and the ring of keys in force.
//!
//! ```text
//! # comments and blank lines are ignored
//! 2026-12 3q2+7w...base64 of 32 random bytes...=
//! 2026-11 Zm9v...
//! ```
//!
//! One key a line: an id (1..=64 of `A-Z a-z 0-9 . _ -`) and the base64 of 32 random bytes
//! (`openssl rand -base64 32`). The first line seals new tokens; every line opens. A text
//! with any bad line is rejected whole, so the keys in force stay.
//!
//! Owns parsing keys and swapping them. Must not read files or watch anything (`reload` does).

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use ring::aead::{AES_256_GCM, LessSafeKey, UnboundKey};

/// Bytes of one key.
pub const KEY_BYTES: usize = 32;
/// Longest key id.
pub const MAX_ID: usize = 64;

/// A key text that cannot be used, naming the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no key: expected one line per key, \"<id> <base64 of 32 random bytes>\"")]
    Empty,
    #[error("line {line}: expected \"<id> <base64 of 32 random bytes>\"")]
    Shape { line: usize },
    #[error("line {line}: key id must be 1..={MAX_ID} characters of A-Z a-z 0-9 . _ -")]
    Id { line: usize },
    #[error("line {line}: the key is not base64 of {KEY_BYTES} bytes ({problem})")]
    Key { line: usize, problem: String },
    #[error("line {line}: key id `{id}` is listed twice")]
    Duplicate { line: usize, id: String },
    #[error("line {line}: key ids `{id}` and `{other}` share a 2-byte fingerprint; rename one")]
    Fingerprint {
        line: usize,
        id: String,
        other: String,
    },
}

/// One key: its id, the fingerprint tokens carry, and the AEAD key.
pub struct Key {
    pub id: String,
    pub fingerprint: [u8; 2],
    pub(super) aead: LessSafeKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The keys of one version of the key text; the first seals.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// The 2-byte fingerprint of a key id, carried in every token sealed with it.
pub fn fingerprint(id: &str) -> [u8; 2] {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let d = digest.as_ref();
    [d[0], d[1]]
}

/// Standard or URL-safe base64, padded or not.
fn engine(alphabet: &base64::alphabet::Alphabet) -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        alphabet,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

impl KeySet {
    /// Parses a key text whole.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let mut parts = content.split_whitespace();
            let (Some(id), Some(material), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(KeyError::Shape { line });
            };
            if id.is_empty()
                || id.len() > MAX_ID
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(KeyError::Id { line });
            }
            let bytes = engine(&base64::alphabet::STANDARD)
                .decode(material)
                .or_else(|_| engine(&base64::alphabet::URL_SAFE).decode(material))
                .map_err(|e| KeyError::Key {
                    line,
                    problem: e.to_string(),
                })?;
            if bytes.len() != KEY_BYTES {
                return Err(KeyError::Key {
                    line,
                    problem: format!("{} bytes", bytes.len()),
                });
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyError::Duplicate {
                    line,
                    id: id.to_string(),
                });
            }
            let fp = fingerprint(id);
            if let Some(other) = keys.iter().find(|k| k.fingerprint == fp) {
                return Err(KeyError::Fingerprint {
                    line,
                    id: id.to_string(),
                    other: other.id.clone(),
                });
            }
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyError::Key {
                line,
                problem: "rejected by the cipher".into(),
            })?;
            keys.push(Key {
                id: id.to_string(),
                fingerprint: fp,
                aead: LessSafeKey::new(unbound),
            });
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { keys })
    }

    /// The key that seals new tokens.
    pub fn sealing(&self) -> &Key {
        // `parse` never builds an empty set.
        &self.keys[0]
    }

    /// The key a token's fingerprint names.
    pub fn by_fingerprint(&self, fp: [u8; 2]) -> Option<&Key> {
        self.keys.iter().find(|k| k.fingerprint == fp)
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }
}

/// The keys in force, swapped whole when the key source changes.
pub struct KeyRing {
    current: ArcSwap<KeySet>,
}

impl KeyRing {
    pub fn new(first: KeySet) -> Self {
        Self {
            current: ArcSwap::from_pointee(first),
        }
    }

    pub fn load(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// Parses `text` and swaps it in, or leaves the keys in force and says why.
    pub fn replace(&self, text: &str) -> Result<Arc<KeySet>, KeyError> {
        let set = Arc::new(KeySet::parse(text)?);
        self.current.store(Arc::clone(&set));
        Ok(set)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A key line with `byte` repeated 32 times.
    pub(crate) fn line(id: &str, byte: u8) -> String {
        format!(
            "{id} {}\n",
            base64::engine::general_purpose::STANDARD.encode([byte; KEY_BYTES])
        )
    }

    #[test]
    fn parses_keys_in_order_and_skips_comments() {
        let text = format!("# keys\n\n{}  {}", line("new", 1), line("old", 2));
        let set = KeySet::parse(&text).unwrap();
        assert_eq!(set.ids(), ["new", "old"]);
        assert_eq!(set.sealing().id, "new");
        assert_eq!(set.by_fingerprint(fingerprint("old")).unwrap().id, "old");
        assert!(set.by_fingerprint(fingerprint("gone")).is_none());
    }

    #[test]
    fn url_safe_and_unpadded_base64_are_accepted() {
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfb; KEY_BYTES]);
        assert!(KeySet::parse(&format!("k {key}")).is_ok());
        let key = base64::engine::general_purpose::STANDARD_NO_PAD.encode([0xfb; KEY_BYTES]);
        assert!(KeySet::parse(&format!("k {key}")).is_ok());
    }

    #[test]
    fn every_bad_text_is_rejected_whole_with_its_line() {
        let good = line("a", 1);
        let cases: Vec<(String, KeyError)> = vec![
            (String::new(), KeyError::Empty),
            ("# only a comment\n".into(), KeyError::Empty),
            (format!("{good}lonely\n"), KeyError::Shape { line: 2 }),
            (format!("{good}a b c\n"), KeyError::Shape { line: 2 }),
            (line("bad/id", 1), KeyError::Id { line: 1 }),
            (line(&"x".repeat(65), 1), KeyError::Id { line: 1 }),
            (
                format!("{good}{}", line("a", 2)),
                KeyError::Duplicate {
                    line: 2,
                    id: "a".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(KeySet::parse(&text).unwrap_err(), want, "{text:?}");
        }
        let short = format!(
            "k {}",
            base64::engine::general_purpose::STANDARD.encode([1; 16])
        );
        assert!(matches!(
            KeySet::parse(&short),
            Err(KeyError::Key { line: 1, .. })
        ));
        assert!(matches!(
            KeySet::parse("k not*base64"),
            Err(KeyError::Key { line: 1, .. })
        ));
    }

    #[test]
    fn a_rejected_text_leaves_the_keys_in_force() {
        let ring = KeyRing::new(KeySet::parse(&line("a", 1)).unwrap());
        assert!(ring.replace("garbage").is_err());
        assert_eq!(ring.load().ids(), ["a"]);
        ring.replace(&format!("{}{}", line("b", 2), line("a", 1)))
            .unwrap();
        assert_eq!(ring.load().ids(), ["b", "a"]);
    }
}
