//! `--format` of `ps`, `images` and `inspect`, in docker's model: `table`
//! (the default columns), `json` (one compact JSON object per line, so
//! `jq` and line tools both read it), or a template where `{{.Field}}` is
//! replaced by a field of the API's JSON object.
//!
//! Templates are a small subset of Go's that covers what people write
//! after `docker ps --format`: `{{.Field}}`, nested `{{.Network.Ip}}`,
//! `{{json .Field}}` and `{{json .}}`; `\t` and `\n` are a tab and a
//! newline. Field names match the JSON keys ignoring case and
//! underscores, so docker's spellings work (`.ID`, `.CreatedAt` for
//! `created_at`). Objects and arrays print as JSON, strings bare, an
//! absent field as `<no value>` (Go's). Anything else between `{{ }}` is
//! an error before anything is printed.

use anyhow::{bail, Result};
use serde_json::Value;

/// How a list or an object is printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Template(Template),
}

impl Format {
    /// Parses a `--format` value (`None`: the table).
    pub fn parse(raw: Option<&str>) -> Result<Format> {
        Ok(match raw {
            None | Some("table") => Format::Table,
            Some("json") => Format::Json,
            Some(t) => Format::Template(Template::parse(t)?),
        })
    }
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A field path (empty: the whole object), printed bare or as JSON.
    Field {
        path: Vec<String>,
        json: bool,
    },
}

impl Template {
    pub fn parse(raw: &str) -> Result<Template> {
        let raw = raw.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = raw.as_str();
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                bail!("--format: unclosed {{{{ in {raw:?}");
            };
            parts.push(action(after[..close].trim())?);
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The template applied to `value`.
    pub fn render(&self, value: &Value) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field { path, json } => match lookup(value, path) {
                    None => out.push_str("<no value>"),
                    Some(v) if *json => out.push_str(&v.to_string()),
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Null) => out.push_str("<no value>"),
                    Some(v) => out.push_str(&v.to_string()),
                },
            }
        }
        out
    }
}

/// One `{{ … }}`: `.A.B`, `.`, `json .A`, `json .`.
fn action(inner: &str) -> Result<Part> {
    let (json, expr) = match inner.strip_prefix("json ") {
        Some(e) => (true, e.trim()),
        None => (false, inner),
    };
    let Some(dotted) = expr.strip_prefix('.') else {
        bail!("--format: unsupported {{{{{inner}}}}} (use {{{{.Field}}}} or {{{{json .Field}}}})");
    };
    let path: Vec<String> = if dotted.is_empty() {
        Vec::new()
    } else {
        dotted.split('.').map(str::to_string).collect()
    };
    if path
        .iter()
        .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        bail!("--format: bad field {expr:?}");
    }
    Ok(Part::Field { path, json })
}

/// Key comparison ignoring case and underscores (`CreatedAt` = `created_at`).
fn same_key(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    norm(a) == norm(b)
}

fn lookup<'a>(mut value: &'a Value, path: &[String]) -> Option<&'a Value> {
    for key in path {
        let obj = value.as_object()?;
        value = match obj.get(key.as_str()) {
            Some(v) => v,
            None => obj.iter().find(|(k, _)| same_key(k, key)).map(|(_, v)| v)?,
        };
    }
    Some(value)
}

/// Prints `items` in a non-table format: one line per item (JSON or the
/// template). Returns false for [`Format::Table`], which the caller prints.
pub fn print_list<T: serde::Serialize>(format: &Format, items: &[T]) -> Result<bool> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Table => return Ok(false),
        Format::Json => {
            for item in items {
                writeln!(out, "{}", serde_json::to_string(item)?)?;
            }
        }
        Format::Template(t) => {
            for item in items {
                writeln!(out, "{}", t.render(&serde_json::to_value(item)?))?;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_take_docker_spellings() -> Result<()> {
        let v = json!({"id": "ab12", "name": "web", "created_at": "2026",
            "network": {"ip": "10.0.0.2"}, "tags": {"a": "b"}, "exit_code": null});
        let t = Template::parse("{{.ID}}\\t{{.Name}} {{.CreatedAt}} {{.Network.IP}}")?;
        assert_eq!(t.render(&v), "ab12\tweb 2026 10.0.0.2");
        assert_eq!(
            Template::parse("{{json .Tags}}")?.render(&v),
            r#"{"a":"b"}"#
        );
        assert_eq!(
            Template::parse("{{.Missing}}/{{.ExitCode}}")?.render(&v),
            "<no value>/<no value>"
        );
        assert_eq!(
            Template::parse("{{ json . }}")?.render(&json!({"a": 1})),
            r#"{"a":1}"#
        );
        Ok(())
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in ["{{.Name", "{{range .}}", "{{.a..b}}", "{{Name}}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Format::parse(Some("json")).ok(), Some(Format::Json));
        assert_eq!(Format::parse(None).ok(), Some(Format::Table));
    }
}
