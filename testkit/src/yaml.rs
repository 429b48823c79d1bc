//! Config builders for directors on loopback: every listener on 127.0.0.1 with an
//! OS-assigned port (the bound addresses are read back from the start-up line or the
//! in-process handle), and static mappings over local backends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A whole config: 127.0.0.1, ports 0, two data workers unless `extra` sets `dataWorkers`,
/// then `extra` (top-level keys), then `resourceQueryMapping` with `mappings`.
pub fn director(extra: &str, mappings: &[String]) -> String {
    director_on(IpAddr::V4(Ipv4Addr::LOCALHOST), extra, mappings)
}

/// [`director`] with every listener on `bind` instead of 127.0.0.1 (a director in a network
/// namespace listens on its interface's address).
pub fn director_on(bind: IpAddr, extra: &str, mappings: &[String]) -> String {
    // An IPv6 address is quoted (a plain YAML scalar cannot start with `:`).
    let bind = match bind {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"{v6}\""),
    };
    let mut yaml = format!("bindAddress: {bind}\nqueryPort: 0\ndataPort: 0\nadminPort: 0\n");
    if !extra.contains("dataWorkers") {
        yaml.push_str("dataWorkers: 2\n");
    }
    yaml.push_str(extra);
    if !extra.is_empty() && !extra.ends_with('\n') {
        yaml.push('\n');
    }
    yaml.push_str("resourceQueryMapping:\n");
    for m in mappings {
        yaml.push_str(m);
    }
    yaml
}

/// The mapping `echo` over `backends`: endpoint `i` is named `b{i}`, labelled `zone: z{i}`
/// and has `status.state: Ready`.
pub fn echo_mapping(backends: &[SocketAddr]) -> String {
    let mut yaml = String::from("  echo:\n    static:\n");
    for (i, b) in backends.iter().enumerate() {
        yaml.push_str(&format!(
            "      - {{name: b{i}, address: \"{}\", port: {}, labels: {{zone: z{i}}}, status: {{state: Ready}}}}\n",
            b.ip(),
            b.port()
        ));
    }
    yaml
}

/// A mapping `name` with one endpoint `{name}-0` at `backend`.
pub fn static_mapping(name: &str, backend: SocketAddr) -> String {
    format!(
        "  {name}:\n    static:\n      - {{name: {name}-0, address: \"{}\", port: {}}}\n",
        backend.ip(),
        backend.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_loopback_config_with_mappings() {
        let b: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let y = director(
            "maxSessions: 2",
            &[echo_mapping(&[b]), static_mapping("x", b)],
        );
        assert!(y.starts_with("bindAddress: 127.0.0.1\nqueryPort: 0\n"));
        let v6 = director_on(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), "", &[]);
        assert!(v6.starts_with("bindAddress: \"::1\"\n"), "{v6}");
        assert!(y.contains("dataWorkers: 2\nmaxSessions: 2\nresourceQueryMapping:\n  echo:\n"));
        assert!(y.contains("{name: b0, address: \"127.0.0.1\", port: 9001, labels: {zone: z0}"));
        assert!(y.contains("  x:\n    static:\n      - {name: x-0,"));
        assert!(!director("dataWorkers: 1\n", &[]).contains("dataWorkers: 2"));
    }
}
