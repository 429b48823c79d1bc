//! The operator page (`/` on the admin port, SPEC §6): one plain HTML document rendered on
//! the server from a [`Page`] the admin server gathers from the sources `/sessions`,
//! `/config`, `/metrics` and `/readyz` read. No script framework and no build step: a
//! `<meta http-equiv="refresh">` reloads it, and every value from the config or from a
//! client (mapping and target names, addresses, a player id) is HTML-escaped here, the one
//! place text enters the document.
//!
//! Owns the page's markup. Must not read state, sockets or the clock: the data comes in.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// Everything the page shows, gathered by the admin server.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub version: String,
    pub revision: String,
    /// `None` when `/readyz` answers 200, otherwise why not (its text).
    pub not_ready: Option<String>,
    pub draining: bool,
    /// Seconds between automatic reloads of the page (0: none).
    pub refresh_seconds: u32,
    pub sessions_active: u64,
    pub max_sessions: u64,
    /// Live sessions per data-port protocol (`sessions_by_protocol`).
    pub by_protocol: Vec<(String, u64)>,
    pub mappings: Vec<MappingRow>,
    /// Targets with live sessions on this replica, most first (what `leastSessions` reads).
    pub targets: Vec<TargetRow>,
    /// Targets with live sessions beyond those listed.
    pub targets_omitted: usize,
    /// A bounded sample of the live UDP sessions (`/sessions`).
    pub sessions: Vec<SessionRow>,
    pub reload: ReloadState,
    pub keys: KeyState,
}

/// One `resourceQueryMapping` and its cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MappingRow {
    pub name: String,
    /// `static`, `kubernetes`, `allocate`.
    pub source: String,
    pub load_balancing: String,
    /// Objects cached (static: endpoints).
    pub objects: u64,
    /// Every cache behind it has listed once.
    pub synced: bool,
    /// Live UDP sessions to its targets on this replica (`mapping_sessions`).
    pub sessions: u64,
}

/// A target with live sessions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetRow {
    pub addr: Option<SocketAddr>,
    /// `mapping/namespace/name` when a sampled session names it, else the mappings that know
    /// the address.
    pub name: String,
    pub sessions: u64,
}

/// One live session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionRow {
    pub client: String,
    pub mapping: String,
    /// `namespace/name`.
    pub target: String,
    pub target_addr: String,
    pub player: Option<String>,
    pub age_seconds: f64,
    pub idle_seconds: f64,
    pub bytes_to_target: u64,
    pub bytes_to_client: u64,
}

/// Config reloads since start (`config_reloads_total`, `config_restart_required`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReloadState {
    /// Generation in force (0: the config the process started with).
    pub generation: u64,
    pub applied: u64,
    pub rejected: u64,
    pub restart_required: bool,
}

/// Tokens and their keys (`tokenFormat`, `token_keys`, `token_key_reloads_total`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyState {
    /// `uuid` or `sealed`.
    pub format: String,
    pub keys_in_force: u64,
    pub reloads_applied: u64,
    pub reloads_rejected: u64,
    pub tokens_active: u64,
}

/// `text` with `& < > " '` replaced by entities: safe in element content and quoted attributes.
#[must_use]
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}\
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#176f2c;font-weight:600}.bad{color:#b00020;font-weight:600}.muted{color:#777}";

/// Writes into a `String` (cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => { let _ = write!($out, $($arg)*); };
}

fn state(ok: bool, yes: &str, no: &str) -> String {
    if ok {
        format!("<span class=\"ok\">{}</span>", escape(yes))
    } else {
        format!("<span class=\"bad\">{}</span>", escape(no))
    }
}

/// The whole page: head, then the state, mappings, targets and sessions sections in order.
#[must_use]
pub fn render(p: &Page) -> String {
    let mut out = String::with_capacity(4096 + 256 * (p.sessions.len() + p.targets.len()));
    render_head(&mut out, p);
    render_state(&mut out, p);
    render_mappings(&mut out, p);
    render_targets(&mut out, p);
    render_sessions(&mut out, p);
    out
}

/// The document head (refresh, title, style) and the title line with version and links.
fn render_head(out: &mut String, p: &Page) {
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    if p.refresh_seconds > 0 {
        w!(
            out,
            "<meta http-equiv=\"refresh\" content=\"{}\">",
            p.refresh_seconds
        );
    }
    w!(
        out,
        "<title>udp-director</title><style>{STYLE}</style></head><body>\n\
         <h1>udp-director</h1><p class=\"muted\">version {} · revision {} · \
         <a href=\"/metrics\">/metrics</a> · <a href=\"/sessions\">/sessions</a> · \
         <a href=\"/config\">/config</a> · <a href=\"/readyz\">/readyz</a></p>\n",
        escape(&p.version),
        escape(&p.revision)
    );
}

/// The State table: readiness, drain, session counts, config reloads and tokens.
fn render_state(out: &mut String, p: &Page) {
    out.push_str("<h2>State</h2><table id=\"state\">");
    let ready = match &p.not_ready {
        None => state(true, "ready", ""),
        Some(why) => state(false, "", &format!("not ready: {why}")),
    };
    w!(out, "<tr><th>readiness</th><td>{ready}</td></tr>");
    w!(
        out,
        "<tr><th>drain</th><td>{}</td></tr>",
        if p.draining {
            state(false, "", "draining: no new sessions")
        } else {
            state(true, "accepting new sessions", "")
        }
    );
    w!(
        out,
        "<tr><th>sessions</th><td id=\"sessions-active\">{} of maxSessions {}</td></tr>",
        p.sessions_active,
        p.max_sessions
    );
    render_by_protocol(out, p);
    let r = &p.reload;
    w!(
        out,
        "<tr><th>config</th><td>generation {} · reloads applied {}, rejected {} · {}</td></tr>",
        r.generation,
        r.applied,
        r.rejected,
        if r.restart_required {
            state(false, "", "restart required (a restart-only key changed)")
        } else {
            state(true, "in force", "")
        }
    );
    let k = &p.keys;
    w!(
        out,
        "<tr><th>tokens</th><td>format {} · keys in force {} · key reloads applied {}, \
         rejected {} · tokens held {}</td></tr></table>\n",
        escape(&k.format),
        k.keys_in_force,
        k.reloads_applied,
        k.reloads_rejected,
        k.tokens_active
    );
}

/// The "by protocol" row of the State table: live sessions per data-port protocol.
fn render_by_protocol(out: &mut String, p: &Page) {
    out.push_str("<tr><th>by protocol</th><td>");
    for (i, (protocol, n)) in p.by_protocol.iter().enumerate() {
        if i > 0 {
            out.push_str(" · ");
        }
        w!(
            out,
            "<span id=\"protocol-{0}\">{0}: {1}</span>",
            escape(protocol),
            n
        );
    }
    out.push_str("</td></tr>");
}

/// The Mappings table: one row per `resourceQueryMapping` and its cache.
fn render_mappings(out: &mut String, p: &Page) {
    out.push_str(
        "<h2>Mappings</h2><table id=\"mappings\"><tr><th>mapping</th><th>source</th>\
         <th>load balancing</th><th>objects cached</th><th>cache</th><th>live sessions</th></tr>",
    );
    for m in &p.mappings {
        w!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td>\
             <td class=\"n\">{}</td></tr>",
            escape(&m.name),
            escape(&m.source),
            escape(&m.load_balancing),
            m.objects,
            state(m.synced, "synced", "not synced"),
            m.sessions
        );
    }
    out.push_str("</table>\n");
}

/// The "Targets with live sessions" table, and how many more were left out.
fn render_targets(out: &mut String, p: &Page) {
    out.push_str(
        "<h2>Targets with live sessions</h2><p class=\"muted\">What leastSessions and \
         labelArithmetic read on this replica.</p><table id=\"targets\"><tr><th>target</th>\
         <th>address</th><th>live sessions</th></tr>",
    );
    if p.targets.is_empty() {
        out.push_str("<tr><td colspan=\"3\" class=\"muted\">none</td></tr>");
    }
    for t in &p.targets {
        let addr = t.addr.map(|a| a.to_string()).unwrap_or_default();
        w!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            escape(&t.name),
            escape(&addr),
            t.sessions
        );
    }
    out.push_str("</table>");
    if p.targets_omitted > 0 {
        w!(
            out,
            "<p class=\"muted\">and {} more targets</p>",
            p.targets_omitted
        );
    }
}

/// The Sessions table: a sample of the live UDP sessions, then the end of the document.
fn render_sessions(out: &mut String, p: &Page) {
    w!(
        out,
        "\n<h2>Sessions</h2><p class=\"muted\">{} of {} live UDP sessions (a sample; \
         <a href=\"/sessions\">/sessions</a> has more).</p><table id=\"sessions\"><tr>\
         <th>client</th><th>mapping</th><th>target</th><th>target address</th><th>player</th>\
         <th>age s</th><th>idle s</th><th>bytes to target</th><th>bytes to client</th></tr>",
        p.sessions.len(),
        p.sessions_active
    );
    if p.sessions.is_empty() {
        out.push_str("<tr><td colspan=\"9\" class=\"muted\">none</td></tr>");
    }
    for s in &p.sessions {
        w!(
            out,
            "<tr class=\"session\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"n\">{:.1}</td><td class=\"n\">{:.1}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            escape(&s.client),
            escape(&s.mapping),
            escape(&s.target),
            escape(&s.target_addr),
            escape(s.player.as_deref().unwrap_or("")),
            s.age_seconds,
            s.idle_seconds,
            s.bytes_to_target,
            s.bytes_to_client
        );
    }
    out.push_str("</table>\n</body></html>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Page {
        Page {
            version: "0.1.0".into(),
            revision: "abc123".into(),
            refresh_seconds: 5,
            sessions_active: 3,
            max_sessions: 100,
            by_protocol: vec![("udp".into(), 2), ("tcp".into(), 1)],
            mappings: vec![MappingRow {
                name: "echo".into(),
                source: "static".into(),
                load_balancing: "leastSessions".into(),
                objects: 2,
                synced: true,
                sessions: 2,
            }],
            targets: vec![TargetRow {
                addr: Some("127.0.0.1:9001".parse().unwrap()),
                name: "echo/default/echo-a".into(),
                sessions: 2,
            }],
            sessions: vec![SessionRow {
                client: "127.0.0.1:40000".into(),
                mapping: "echo".into(),
                target: "default/echo-a".into(),
                target_addr: "127.0.0.1:9001".into(),
                player: Some("player-7".into()),
                age_seconds: 1.26,
                idle_seconds: 0.5,
                bytes_to_target: 10,
                bytes_to_client: 7,
            }],
            reload: ReloadState {
                generation: 2,
                applied: 2,
                rejected: 1,
                restart_required: false,
            },
            keys: KeyState {
                format: "sealed".into(),
                keys_in_force: 2,
                reloads_applied: 1,
                reloads_rejected: 0,
                tokens_active: 4,
            },
            ..Page::default()
        }
    }

    #[test]
    fn every_section_shows_its_data() {
        let html = render(&page());
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        for needle in [
            "<meta http-equiv=\"refresh\" content=\"5\">",
            "version 0.1.0 · revision abc123",
            "<span class=\"ok\">ready</span>",
            "accepting new sessions",
            "3 of maxSessions 100",
            "<span id=\"protocol-udp\">udp: 2</span>",
            "<span id=\"protocol-tcp\">tcp: 1</span>",
            "generation 2 · reloads applied 2, rejected 1",
            "format sealed · keys in force 2 · key reloads applied 1, rejected 0 · tokens held 4",
            "<td>echo</td><td>static</td><td>leastSessions</td><td class=\"n\">2</td><td><span class=\"ok\">synced</span></td><td class=\"n\">2</td>",
            "<td>echo/default/echo-a</td><td>127.0.0.1:9001</td><td class=\"n\">2</td>",
            "<td>127.0.0.1:40000</td><td>echo</td><td>default/echo-a</td><td>127.0.0.1:9001</td><td>player-7</td><td class=\"n\">1.3</td>",
            "1 of 3 live UDP sessions",
        ] {
            assert!(html.contains(needle), "missing {needle:?} in\n{html}");
        }
        assert!(html.ends_with("</html>\n"));
    }

    #[test]
    fn trouble_is_shown_as_trouble() {
        let mut p = page();
        p.not_ready = Some("draining".into());
        p.draining = true;
        p.reload.restart_required = true;
        p.mappings[0].synced = false;
        p.sessions.clear();
        p.targets.clear();
        p.targets_omitted = 0;
        p.refresh_seconds = 0;
        let html = render(&p);
        for needle in [
            "<span class=\"bad\">not ready: draining</span>",
            "<span class=\"bad\">draining: no new sessions</span>",
            "restart required",
            "<span class=\"bad\">not synced</span>",
            "<td colspan=\"9\" class=\"muted\">none</td>",
            "<td colspan=\"3\" class=\"muted\">none</td>",
        ] {
            assert!(html.contains(needle), "missing {needle:?} in\n{html}");
        }
        assert!(!html.contains("http-equiv"), "no refresh when 0");
        assert!(!html.contains("class=\"ok\">ready"));
    }

    #[test]
    fn text_from_config_and_clients_is_escaped() {
        let mut p = page();
        let evil = "<script>alert('x')</script>&\"";
        p.mappings[0].name = evil.into();
        p.targets[0].name = evil.into();
        p.sessions[0].player = Some(evil.into());
        p.sessions[0].target = evil.into();
        p.not_ready = Some(evil.into());
        p.version = evil.into();
        p.keys.format = evil.into();
        let html = render(&p);
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("alert('x')"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"),
            "{html}"
        );
    }

    #[test]
    fn escape_replaces_exactly_the_five_characters() {
        assert_eq!(escape("a&b<c>d\"e'f"), "a&amp;b&lt;c&gt;d&quot;e&#39;f");
        assert_eq!(escape("plain text · ünïcode"), "plain text · ünïcode");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn omitted_targets_are_counted() {
        let mut p = page();
        p.targets_omitted = 17;
        assert!(render(&p).contains("and 17 more targets"));
    }
}
