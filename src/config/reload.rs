//! Pure decisions of a config reload: command-line overrides re-applied to every loaded
//! document, which keys a running process can take over and which need a restart, and the
//! redacted view served on `/config`. The I/O (file polling, ConfigMap watch, swapping the
//! shared state) lives in `crate::reload`.
//!
//! Owns these decisions. Must not read files, watch the API or swap live state.

use std::net::IpAddr;

use serde_json::Value;

use super::{Config, ConfigError, ValidConfig};

/// Values given on the command line or through `UDP_DIRECTOR_*` variables. They win over
/// the file at start and over every reloaded document, so a reload cannot undo them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub bind_address: Option<IpAddr>,
    pub query_port: Option<u16>,
    pub data_port: Option<u16>,
    pub admin_port: Option<u16>,
    pub max_sessions: Option<usize>,
    pub session_timeout_seconds: Option<u64>,
    pub token_ttl_seconds: Option<u64>,
    pub drain_seconds: Option<u64>,
    pub data_workers: Option<usize>,
    /// `--token-keys-secret NAMESPACE/NAME`.
    pub token_keys_secret: Option<String>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        set!(
            bind_address,
            query_port,
            data_port,
            admin_port,
            max_sessions,
            session_timeout_seconds,
            token_ttl_seconds,
            drain_seconds,
            data_workers
        );
        // `--data-port` moves the main data port, also in the several-port form.
        if let (Some(port), Some(first)) = (
            self.data_port,
            config.data_ports.as_mut().and_then(|d| d.first_mut()),
        ) {
            first.port = port;
        }
        if let Some(secret) = &self.token_keys_secret {
            config.token_keys_secret = Some(secret.clone());
        }
    }

    /// Parses a YAML document (serde only), applies the overrides, then validates the
    /// result once, whole: an override can rescue a file (a clashing port replaced on the
    /// command line) and an invalid override is reported like a bad file value.
    pub fn load(&self, text: &str) -> Result<ValidConfig, ConfigError> {
        let mut config = Config::parse(text)?;
        self.apply(&mut config);
        config.validate()
    }
}

/// Keys a running process cannot change: sockets are bound and sized, threads started and
/// the token store sized at start. A reload that changes them is applied without them.
pub const RESTART_ONLY: [&str; 18] = [
    "bindAddress",
    "queryPort",
    "dataPort",
    "dataPorts",
    "adminPort",
    "adminBindAddress",
    "adminTokenFile",
    "dataWorkers",
    "socketBufferBytes",
    "limits.maxTokens",
    "limits.ipv6PrefixLength",
    "tokenFormat",
    "tokenKeysFile",
    "tokenKeysSecret",
    "reusePort",
    "queryAuth",
    "queryTls",
    "fastPath",
];

/// The outcome of comparing a validated new document with the running config.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    /// What will run: the new document with restart-only keys kept at their running values.
    pub effective: Config,
    /// Restart-only keys the new document changes (reported, otherwise ignored).
    pub needs_restart: Vec<&'static str>,
    /// False when nothing that a running process can apply changed.
    pub changed: bool,
}

/// Decides what of `proposed` applies on top of `running` (both as written; the caller
/// validates the effective result).
pub fn reconcile(running: &Config, proposed: Config) -> Reconciled {
    let mut effective = proposed;
    let mut needs_restart = Vec::new();
    macro_rules! keep {
        ($key:literal, $($field:tt).+) => {
            if effective.$($field).+ != running.$($field).+ {
                needs_restart.push($key);
                effective.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!("bindAddress", bind_address);
    keep!("queryPort", query_port);
    keep!("dataPort", data_port);
    keep!("dataPorts", data_ports);
    keep!("adminPort", admin_port);
    keep!("adminBindAddress", admin_bind_address);
    keep!("adminTokenFile", admin_token_file);
    keep!("dataWorkers", data_workers);
    keep!("socketBufferBytes", socket_buffer_bytes);
    keep!("limits.maxTokens", limits.max_tokens);
    keep!("limits.ipv6PrefixLength", limits.ipv6_prefix_length);
    keep!("tokenFormat", token_format);
    keep!("tokenKeysFile", token_keys_file);
    keep!("tokenKeysSecret", token_keys_secret);
    keep!("reusePort", reuse_port);
    keep!("queryAuth", query_auth);
    keep!("queryTls", query_tls);
    keep!("fastPath", fast_path);
    let changed = effective != *running;
    Reconciled {
        effective,
        needs_restart,
        changed,
    }
}

/// The config as JSON for `/config`. The reset magic (`controlPacketMagicBytes`) is the one value clients are
/// told privately (it lets a datagram move a session), so only its length is shown.
pub fn redacted_json(config: &ValidConfig) -> Value {
    let config = config.raw();
    let mut value = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(magic) = value.get_mut("controlPacketMagicBytes") {
        *magic = Value::String(format!(
            "<redacted: {} bytes>",
            config.control_packet_magic_bytes.len() / 2
        ));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        ValidConfig::from_yaml(
            "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\nresourceQueryMapping:\n  echo:\n    static:\n      - {name: a, address: 127.0.0.1, port: 9001}\n",
        )
        .unwrap()
        .into_raw()
    }

    #[test]
    fn routing_changes_apply_and_port_changes_are_kept_and_reported() {
        let running = base();
        let mut proposed = running.clone();
        proposed.token_ttl_seconds = 5;
        proposed.query_port = 9000;
        proposed.limits.max_tokens = 7;
        proposed.limits.query_burst = 3;
        let r = reconcile(&running, proposed);
        assert!(r.changed);
        assert_eq!(r.needs_restart, vec!["queryPort", "limits.maxTokens"]);
        assert_eq!(r.effective.query_port, 0);
        assert_eq!(r.effective.limits.max_tokens, running.limits.max_tokens);
        assert_eq!(r.effective.token_ttl_seconds, 5);
        assert_eq!(r.effective.limits.query_burst, 3);
    }

    #[test]
    fn only_restart_keys_changed_is_not_a_change() {
        let running = base();
        let mut proposed = running.clone();
        proposed.data_workers = 3;
        let r = reconcile(&running, proposed);
        assert!(!r.changed);
        assert_eq!(r.needs_restart, vec!["dataWorkers"]);
        assert_eq!(r.effective, running);
    }

    #[test]
    fn every_restart_key_is_listed() {
        let running = base();
        let mut p = running.clone();
        p.bind_address = "127.0.0.2".parse().unwrap();
        p.query_port = 1;
        p.data_port = 2;
        p.data_ports = Some(vec![crate::config::DataPortEntry {
            port: 2,
            target_port_name: None,
            target_port: None,
            protocol: None,
        }]);
        p.admin_port = 3;
        p.admin_bind_address = Some("0.0.0.0".parse().unwrap());
        p.admin_token_file = Some("/token".into());
        p.data_workers = 4;
        p.socket_buffer_bytes = 5;
        p.limits.max_tokens = 6;
        p.limits.ipv6_prefix_length = 48;
        p.token_format = crate::config::TokenFormat::Sealed;
        p.token_keys_file = Some("/keys".into());
        p.token_keys_secret = Some("ns/keys".into());
        p.reuse_port = true;
        p.query_auth = Some(crate::config::QueryAuth {
            jwks_file: Some("/jwks.json".into()),
            jwks_secret: None,
            audience: "a".into(),
            issuer: None,
            leeway_seconds: 5,
        });
        p.query_tls = Some(crate::config::QueryTls {
            cert_file: "/tls.crt".into(),
            key_file: "/tls.key".into(),
            client_ca_file: None,
        });
        p.fast_path = crate::config::FastPath {
            enabled: true,
            interfaces: vec!["net1".into()],
        };
        let r = reconcile(&running, p);
        assert_eq!(r.needs_restart, RESTART_ONLY.to_vec());
        assert_eq!(r.effective, running);
    }

    #[test]
    fn overrides_win_over_every_reloaded_document() {
        let o = Overrides {
            query_port: Some(0),
            token_ttl_seconds: Some(9),
            ..Overrides::default()
        };
        let doc = "queryPort: 9100\ntokenTTLSeconds: 1\nresourceQueryMapping:\n  e:\n    static: [{name: a, address: 127.0.0.1, port: 9}]\n";
        let c = o.load(doc).unwrap();
        assert_eq!(c.query_addr.port(), 0);
        assert_eq!(c.token_ttl, std::time::Duration::from_secs(9));
        let bad = Overrides {
            max_sessions: Some(0),
            ..Overrides::default()
        };
        let e = bad.load(doc).unwrap_err().to_string();
        assert!(e.contains("maxSessions"), "{e}");
    }

    #[test]
    fn an_override_can_rescue_a_file_and_the_file_alone_is_refused() {
        let clash = "queryPort: 9000\nadminPort: 9000\nresourceQueryMapping:\n  e:\n    static: [{name: a, address: 127.0.0.1, port: 9}]\n";
        let e = Overrides::default().load(clash).unwrap_err().to_string();
        assert!(e.contains("adminPort"), "{e}");
        let rescued = Overrides {
            admin_port: Some(9100),
            ..Overrides::default()
        }
        .load(clash)
        .unwrap();
        assert_eq!(rescued.raw().admin_port, 9100);
        assert_eq!(
            rescued.admin_addr.port(),
            9100,
            "decoded after the override"
        );
    }

    #[test]
    fn redaction_hides_the_magic_but_keeps_everything_else() {
        let c = base();
        let v = redacted_json(&c.clone().validate().unwrap());
        assert_eq!(v["controlPacketMagicBytes"], "<redacted: 9 bytes>");
        assert!(!v.to_string().contains(&c.control_packet_magic_bytes));
        assert_eq!(v["resourceQueryMapping"]["echo"]["static"][0]["port"], 9001);
        assert_eq!(v["tokenTTLSeconds"], 30);
    }
}
