//! Renders the Helm chart when no `helm` binary is available (none can be installed from this
//! machine's package registries). It implements only the subset of Helm's template language
//! the chart uses — `define`/`include`, `if`/`else`/`end`, pipelines, `.Values`/`.Release`/
//! `.Chart` paths, `default`, `quote`, `toYaml`, `nindent`, `indent`, whitespace trimming —
//! and is stricter than Helm: a path that does not exist in the values is an error, and any
//! other construct is an error, so a template the subset cannot express fails the test
//! instead of rendering wrongly.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(String),
    If {
        cond: String,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

pub struct Chart {
    templates: Vec<(String, Vec<Node>)>,
    defines: HashMap<String, Vec<Node>>,
    pub values: Value,
    chart: Value,
}

impl Chart {
    pub fn load(dir: &Path) -> Result<Self, String> {
        let meta: Value = yaml_file(&dir.join("Chart.yaml"))?;
        let values = yaml_file(&dir.join("values.yaml"))?;
        let mut templates = Vec::new();
        let mut defines = HashMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir.join("templates"))
            .map_err(|e| e.to_string())?
            .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let src = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            let nodes = parse(
                &tokenize(&src).map_err(|e| format!("{name}: {e}"))?,
                &mut defines,
            )
            .map_err(|e| format!("{name}: {e}"))?;
            if name.ends_with(".yaml") {
                templates.push((name, nodes));
            }
        }
        Ok(Self {
            templates,
            defines,
            values,
            chart: json!({
                "Name": meta["name"],
                "Version": meta["version"],
                "AppVersion": meta["appVersion"],
            }),
        })
    }

    /// Every rendered object (empty documents dropped), with the template it came from.
    pub fn render(&self, release: &str, namespace: &str) -> Result<Vec<(String, Value)>, String> {
        let ctx = json!({
            "Values": self.values,
            "Chart": self.chart,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        });
        let mut out = Vec::new();
        for (name, nodes) in &self.templates {
            let text = self
                .render_nodes(nodes, &ctx)
                .map_err(|e| format!("{name}: {e}"))?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)
                    .map_err(|e| format!("{name}: rendered YAML: {e}\n{text}"))?;
                if !v.is_null() {
                    out.push((
                        name.clone(),
                        serde_json::to_value(v).map_err(|e| e.to_string())?,
                    ));
                }
            }
        }
        Ok(out)
    }

    fn render_nodes(&self, nodes: &[Node], ctx: &Value) -> Result<String, String> {
        let mut out = String::new();
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => out.push_str(&stringify(&self.pipeline(p, ctx)?)?),
                Node::If {
                    cond,
                    then,
                    otherwise,
                } => {
                    let branch = if truthy(&self.pipeline(cond, ctx)?) {
                        then
                    } else {
                        otherwise
                    };
                    out.push_str(&self.render_nodes(branch, ctx)?);
                }
            }
        }
        Ok(out)
    }

    fn pipeline(&self, src: &str, ctx: &Value) -> Result<Value, String> {
        let mut value: Option<Value> = None;
        for command in split_outside_quotes(src, '|') {
            let words = words(&command);
            let (head, args) = words.split_first().ok_or("empty command")?;
            let mut args: Vec<Value> =
                args.iter().map(|a| arg(a, ctx)).collect::<Result<_, _>>()?;
            if let Some(v) = value.take() {
                args.push(v);
            }
            value = Some(if is_function(head) {
                self.call(head, args)?
            } else if args.is_empty() {
                arg(head, ctx)?
            } else {
                return Err(format!("{head:?} is not a function the subset knows"));
            });
        }
        value.ok_or_else(|| "empty pipeline".to_string())
    }

    fn call(&self, f: &str, args: Vec<Value>) -> Result<Value, String> {
        let want = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("{f} takes {n} arguments, got {}", args.len()))
            }
        };
        Ok(match f {
            "include" => {
                want(2)?;
                let name = args[0].as_str().ok_or("include: name must be a string")?;
                let nodes = self
                    .defines
                    .get(name)
                    .ok_or_else(|| format!("include: no template {name:?}"))?;
                Value::String(self.render_nodes(nodes, &args[1])?)
            }
            "default" => {
                want(2)?;
                if truthy(&args[1]) {
                    args[1].clone()
                } else {
                    args[0].clone()
                }
            }
            "quote" => {
                want(1)?;
                Value::String(format!("{:?}", stringify(&args[0])?))
            }
            "toYaml" => {
                want(1)?;
                let text = serde_yaml::to_string(&args[0]).map_err(|e| e.to_string())?;
                Value::String(text.trim_end_matches('\n').to_string())
            }
            "nindent" | "indent" => {
                want(2)?;
                let n = args[0].as_u64().ok_or("indent width must be a number")? as usize;
                let pad = " ".repeat(n);
                let body = stringify(&args[1])?
                    .lines()
                    .map(|l| format!("{pad}{l}"))
                    .collect::<Vec<_>>()
                    .join("\n");
                Value::String(if f == "nindent" {
                    format!("\n{body}")
                } else {
                    body
                })
            }
            _ => return Err(format!("unknown function {f}")),
        })
    }
}

fn is_function(word: &str) -> bool {
    matches!(
        word,
        "include" | "default" | "quote" | "toYaml" | "nindent" | "indent"
    )
}

fn yaml_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::to_value(v).map_err(|e| e.to_string())
}

fn arg(word: &str, ctx: &Value) -> Result<Value, String> {
    if let Some(s) = word.strip_prefix('"') {
        return Ok(Value::String(
            s.strip_suffix('"')
                .ok_or("unterminated string")?
                .to_string(),
        ));
    }
    if word == "." {
        return Ok(ctx.clone());
    }
    if let Some(path) = word.strip_prefix('.') {
        let mut v = ctx;
        for key in path.split('.') {
            v = v.get(key).ok_or_else(|| format!("{word}: no such value"))?;
        }
        return Ok(v.clone());
    }
    if let Ok(n) = word.parse::<u64>() {
        return Ok(json!(n));
    }
    Err(format!("cannot evaluate {word:?}"))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn stringify(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("cannot print {other} (Helm would print Go syntax)")),
    }
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c == sep && !quoted {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn words(s: &str) -> Vec<String> {
    split_outside_quotes(s.trim(), ' ')
        .into_iter()
        .filter(|w| !w.is_empty())
        .collect()
}

#[derive(Debug)]
enum Tok {
    Text(String),
    Action(String),
}

/// Splits into text and `{{ … }}` actions, applying `{{-` / `-}}` trimming and dropping
/// comments.
fn tokenize(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let mut inner = &after[..end];
        if let Some(i) = inner.strip_prefix("- ") {
            text = text.trim_end();
            inner = i;
        }
        trim_next = false;
        if let Some(i) = inner.strip_suffix(" -") {
            trim_next = true;
            inner = i;
        }
        out.push(Tok::Text(text.to_string()));
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            out.push(Tok::Action(inner.to_string()));
        }
        rest = &after[end + 2..];
    }
    out.push(Tok::Text(if trim_next {
        rest.trim_start().to_string()
    } else {
        rest.to_string()
    }));
    Ok(out)
}

/// Builds the node tree; `define` blocks go to `defines`.
fn parse(toks: &[Tok], defines: &mut HashMap<String, Vec<Node>>) -> Result<Vec<Node>, String> {
    let mut i = 0;
    let (nodes, stop) = parse_until(toks, &mut i, defines)?;
    match stop {
        None => Ok(nodes),
        Some(s) => Err(format!("unexpected {{{{ {s} }}}}")),
    }
}

/// Parses until `end`/`else` (returned) or the end of input (`None`).
fn parse_until(
    toks: &[Tok],
    i: &mut usize,
    defines: &mut HashMap<String, Vec<Node>>,
) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while *i < toks.len() {
        let tok = &toks[*i];
        *i += 1;
        match tok {
            Tok::Text(t) => nodes.push(Node::Text(t.clone())),
            Tok::Action(a) if a == "end" || a == "else" => return Ok((nodes, Some(a.clone()))),
            Tok::Action(a) => {
                if let Some(name) = a.strip_prefix("define ") {
                    let name = name.trim().trim_matches('"').to_string();
                    let (body, stop) = parse_until(toks, i, defines)?;
                    if stop.as_deref() != Some("end") {
                        return Err(format!("define {name:?} without end"));
                    }
                    defines.insert(name, body);
                } else if let Some(cond) = a.strip_prefix("if ") {
                    let (then, stop) = parse_until(toks, i, defines)?;
                    let otherwise = match stop.as_deref() {
                        Some("end") => Vec::new(),
                        Some("else") => {
                            let (otherwise, stop) = parse_until(toks, i, defines)?;
                            if stop.as_deref() != Some("end") {
                                return Err("if/else without end".into());
                            }
                            otherwise
                        }
                        _ => return Err(format!("if {cond} without end")),
                    };
                    nodes.push(Node::If {
                        cond: cond.to_string(),
                        then,
                        otherwise,
                    });
                } else if a.starts_with("range ") || a.starts_with("with ") || a.starts_with("$") {
                    return Err(format!("{{{{ {a} }}}} is outside the supported subset"));
                } else {
                    nodes.push(Node::Action(a.clone()));
                }
            }
        }
    }
    Ok((nodes, None))
}
