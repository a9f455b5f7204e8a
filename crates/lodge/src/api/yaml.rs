//! A JSON value written as block-style YAML, for `/spec.yaml`.
//!
//! The OpenAPI document is built as JSON; YAML is only another spelling of
//! it, so a few lines of emitter replace a YAML library. Every string is
//! written as a JSON string, which is a valid YAML double-quoted scalar
//! (same escapes), so no key or value can be misread as a number, a
//! boolean or YAML syntax.

use serde_json::Value;

/// `value` as a YAML document.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        // Null, booleans, numbers and strings are spelled as in JSON.
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_map(out: &mut String, m: &serde_json::Map<String, Value>, depth: usize) {
    for (k, v) in m {
        indent(out, depth);
        out.push_str(&Value::String(k.clone()).to_string());
        out.push(':');
        write_value_after_key(out, v, depth);
    }
}

fn write_value_after_key(out: &mut String, v: &Value, depth: usize) {
    match v {
        Value::Object(m) if is_block(v) => {
            out.push('\n');
            write_map(out, m, depth + 2);
        }
        Value::Array(a) if is_block(v) => {
            out.push('\n');
            write_seq(out, a, depth + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, a: &[Value], depth: usize) {
    for v in a {
        indent(out, depth);
        out.push('-');
        match v {
            Value::Object(m) if is_block(v) => {
                // The first key on the dash's line, the rest aligned to it.
                let mut first = true;
                for (k, item) in m {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        indent(out, depth + 2);
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write_value_after_key(out, item, depth + 2);
                }
            }
            Value::Array(inner) if is_block(v) => {
                out.push('\n');
                write_seq(out, inner, depth + 2);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_documents_are_block_yaml() {
        let doc = json!({
            "openapi": "3.1.0",
            "paths": {"/a": {"get": {"tags": ["x", "y"], "responses": {}}}},
            "list": [{"k": 1, "m": {"n": null}}, [true], "s: not a key"],
            "empty": []
        });
        // serde_json's maps are sorted by key.
        let want = r#""empty": []
"list":
  - "k": 1
    "m":
      "n": null
  -
    - true
  - "s: not a key"
"openapi": "3.1.0"
"paths":
  "/a":
    "get":
      "responses": {}
      "tags":
        - "x"
        - "y"
"#;
        assert_eq!(to_string(&doc), want);
    }

    #[test]
    fn strings_are_quoted_and_escaped() {
        let doc = json!({"yes": "no", "n": "1", "q": "a\"b\n"});
        assert_eq!(
            to_string(&doc),
            "\"n\": \"1\"\n\"q\": \"a\\\"b\\n\"\n\"yes\": \"no\"\n"
        );
    }
}
