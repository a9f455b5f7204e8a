//! Ingress rules: hypeman's JSON shape as it arrives (`RuleInput`), the
//! validated form the store keeps and the proxy routes by (`Rule`), and the
//! hostname patterns (`{instance}.example.com`).
//!
//! Parse, then validate once: ports arrive as plain JSON numbers so that
//! 70000 is "port out of range" rather than a serde error about `u16`, and
//! every check that needs no outside knowledge happens here, in one pure
//! function with a typed error per mistake. What needs the world (does the
//! target instance exist, can the port be bound, is the hostname taken) is
//! checked by the caller against the store and the host.
//!
//! A pattern label is a whole label `{name}`; it matches exactly one
//! non-empty DNS label of the request's host, and the captures may be
//! spliced into the target instance (`{instance}` → `web`). A literal host
//! matches itself, case-insensitively.
//!
//! lodge's extension: a rule whose `match.protocol` is `"tcp"` forwards a
//! host port to the instance at layer 4 (no hostname, no HTTP); `lodge run
//! -p HOSTPORT:GUESTPORT` makes one.

use serde::{Deserialize, Serialize};

/// The default `match.port`.
pub const DEFAULT_PORT: u16 = 80;

/// The hostname of an L4 rule (it matches every connection on its port).
pub const ANY_HOST: &str = "*";

/// Headers `request_header_auth` may not use (hypeman: authentication,
/// cookies, host, framing, proxy and hop-by-hop headers).
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "proxy-authenticate",
    "www-authenticate",
    "cookie",
    "set-cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// A rule as a client sends it (hypeman's `IngressRuleParam`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    #[serde(rename = "match")]
    pub match_: MatchInput,
    pub target: TargetInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_auth: Option<HeaderAuth>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchInput {
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// lodge's extension: `"http"` (default) or `"tcp"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetInput {
    pub instance: String,
    pub port: i64,
}

/// `request_header_auth`: the request must carry `header: value` exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderAuth {
    pub header: String,
    pub value: String,
}

/// How a rule's port is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

impl Protocol {
    fn is_http(&self) -> bool {
        *self == Protocol::Http
    }
}

/// A validated rule, as stored and served (hypeman's `IngressRule`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(rename = "match")]
    pub match_: Match,
    pub target: Target,
    pub tls: bool,
    pub redirect_http: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_auth: Option<HeaderAuth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// Lowercase, without a trailing dot; [`ANY_HOST`] for an L4 rule.
    pub hostname: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Protocol::is_http")]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// An instance id or name, or a template over the hostname's captures.
    pub instance: String,
    pub port: u16,
}

/// What is wrong with one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// not a hostname
    #[error("hostname {0:?} is not a valid hostname (DNS labels of letters, digits and dashes, or whole-label captures like {{instance}})")]
    BadHostname(String),
    /// port outside 1..=65535
    #[error("{what} {port} is out of range (1-65535)")]
    PortRange { what: &'static str, port: i64 },
    /// a template refers to a capture the hostname lacks
    #[error("target instance {target:?} refers to {{{capture}}}, which hostname {hostname:?} does not capture")]
    UnknownCapture {
        target: String,
        capture: String,
        hostname: String,
    },
    /// a pattern hostname with a fixed target
    #[error("hostname {hostname:?} is a pattern, so the target instance must use its capture (e.g. \"{{instance}}\"), not {target:?}")]
    PatternWithoutCapture { hostname: String, target: String },
    #[error("target instance is empty")]
    EmptyTarget,
    #[error("target instance {0:?} is not an instance name, id or {{capture}} template")]
    BadTarget(String),
    #[error("request_header_auth header {0:?} is reserved or not a header name")]
    ReservedHeader(String),
    #[error("request_header_auth value must be non-empty visible ASCII")]
    BadHeaderValue,
    #[error("protocol {0:?} is not \"http\" or \"tcp\"")]
    BadProtocol(String),
    #[error("a tcp rule has hostname \"*\" (it takes every connection on its port), not {0:?}")]
    TcpHostname(String),
    #[error("a tcp rule cannot use {0} (it is not HTTP)")]
    TcpHttpOption(&'static str),
    #[error("redirect_http needs tls")]
    RedirectWithoutTls,
    #[error("tls needs a literal hostname (one certificate per name), not the pattern {0:?}")]
    TlsPattern(String),
}

impl RuleInput {
    /// The validated rule, or what is wrong with it.
    pub fn validate(&self) -> Result<Rule, RuleError> {
        let protocol = match self.match_.protocol.as_deref() {
            None | Some("http") => Protocol::Http,
            Some("tcp") => Protocol::Tcp,
            Some(other) => return Err(RuleError::BadProtocol(other.to_string())),
        };
        let port = checked_port(
            "match.port",
            self.match_.port.unwrap_or(DEFAULT_PORT.into()),
        )?;
        let target_port = checked_port("target.port", self.target.port)?;
        let tls = self.tls.unwrap_or(false);
        let redirect_http = self.redirect_http.unwrap_or(false);
        let hostname = self
            .match_
            .hostname
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let instance = self.target.instance.trim().to_string();
        if instance.is_empty() {
            return Err(RuleError::EmptyTarget);
        }
        if protocol == Protocol::Tcp {
            if hostname != ANY_HOST && !hostname.is_empty() {
                return Err(RuleError::TcpHostname(self.match_.hostname.clone()));
            }
            if tls {
                return Err(RuleError::TcpHttpOption("tls"));
            }
            if redirect_http {
                return Err(RuleError::TcpHttpOption("redirect_http"));
            }
            if self.request_header_auth.is_some() {
                return Err(RuleError::TcpHttpOption("request_header_auth"));
            }
            if instance.contains('{') || instance.contains('}') {
                return Err(RuleError::BadTarget(instance));
            }
            check_plain_target(&instance)?;
            return Ok(Rule {
                match_: Match {
                    hostname: ANY_HOST.to_string(),
                    port,
                    protocol,
                },
                target: Target {
                    instance,
                    port: target_port,
                },
                tls: false,
                redirect_http: false,
                request_header_auth: None,
            });
        }
        if redirect_http && !tls {
            return Err(RuleError::RedirectWithoutTls);
        }
        let pattern = HostPattern::parse(&hostname)
            .ok_or_else(|| RuleError::BadHostname(self.match_.hostname.clone()))?;
        if tls && !pattern.is_literal() {
            return Err(RuleError::TlsPattern(hostname));
        }
        check_target(&pattern, &hostname, &instance)?;
        if let Some(auth) = &self.request_header_auth {
            check_header_auth(auth)?;
        }
        Ok(Rule {
            match_: Match {
                hostname,
                port,
                protocol,
            },
            target: Target {
                instance,
                port: target_port,
            },
            tls,
            redirect_http,
            request_header_auth: self.request_header_auth.clone(),
        })
    }
}

impl Rule {
    /// The literal instance this rule targets, when it is not a template.
    pub fn fixed_instance(&self) -> Option<&str> {
        (!self.target.instance.contains('{')).then_some(self.target.instance.as_str())
    }

    pub fn is_tcp(&self) -> bool {
        self.match_.protocol == Protocol::Tcp
    }

    /// How the rule's port is served: `"TCP"`, `"HTTPS"` or `"HTTP"`.
    pub fn port_kind(&self) -> &'static str {
        if self.is_tcp() {
            "TCP"
        } else if self.tls {
            "HTTPS"
        } else {
            "HTTP"
        }
    }
}

fn checked_port(what: &'static str, port: i64) -> Result<u16, RuleError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(RuleError::PortRange { what, port })
}

fn check_plain_target(instance: &str) -> Result<(), RuleError> {
    let ok = instance.len() <= 253
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RuleError::BadTarget(instance.to_string()))
    }
}

/// The target against the hostname: a template's captures must exist, and
/// a pattern hostname needs a template.
fn check_target(pattern: &HostPattern, hostname: &str, instance: &str) -> Result<(), RuleError> {
    let template =
        Template::parse(instance).ok_or_else(|| RuleError::BadTarget(instance.to_string()))?;
    let captures = pattern.captures();
    for name in template.captures() {
        if !captures.contains(&name) {
            return Err(RuleError::UnknownCapture {
                target: instance.to_string(),
                capture: name.to_string(),
                hostname: hostname.to_string(),
            });
        }
    }
    if !captures.is_empty() && template.captures().next().is_none() {
        return Err(RuleError::PatternWithoutCapture {
            hostname: hostname.to_string(),
            target: instance.to_string(),
        });
    }
    if template.captures().next().is_none() {
        check_plain_target(instance)?;
    }
    Ok(())
}

fn check_header_auth(auth: &HeaderAuth) -> Result<(), RuleError> {
    let name = auth.header.trim().to_ascii_lowercase();
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token
        || RESERVED_HEADERS.contains(&name.as_str())
        || name.starts_with("proxy-")
        || name.starts_with("sec-")
    {
        return Err(RuleError::ReservedHeader(auth.header.clone()));
    }
    let value_ok = !auth.value.is_empty() && auth.value.bytes().all(|b| (b' '..=b'~').contains(&b));
    if !value_ok {
        return Err(RuleError::BadHeaderValue);
    }
    Ok(())
}

/// One label of a hostname pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Label {
    Literal(String),
    Capture(String),
}

/// A parsed `match.hostname`: literal labels and whole-label captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    labels: Vec<Label>,
}

impl HostPattern {
    /// The pattern, or `None` when `host` (already lowercase) is not one.
    pub fn parse(host: &str) -> Option<HostPattern> {
        if host.is_empty() || host.len() > 253 {
            return None;
        }
        let mut labels = Vec::new();
        for label in host.split('.') {
            if let Some(name) = label.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
                if !is_capture_name(name) || labels.contains(&Label::Capture(name.to_string())) {
                    return None;
                }
                labels.push(Label::Capture(name.to_string()));
            } else if is_dns_label(label) {
                labels.push(Label::Literal(label.to_string()));
            } else {
                return None;
            }
        }
        // A bare capture would match every single-label host.
        let literal = labels.iter().any(|l| matches!(l, Label::Literal(_)));
        literal.then_some(HostPattern { labels })
    }

    pub fn is_literal(&self) -> bool {
        self.labels.iter().all(|l| matches!(l, Label::Literal(_)))
    }

    fn captures(&self) -> Vec<&str> {
        self.labels
            .iter()
            .filter_map(|l| match l {
                Label::Capture(n) => Some(n.as_str()),
                Label::Literal(_) => None,
            })
            .collect()
    }

    /// The captures when `host` (lowercase, no port) matches.
    pub fn matches<'h>(&self, host: &'h str) -> Option<Vec<(&str, &'h str)>> {
        let mut got = host.split('.');
        let mut out = Vec::new();
        for want in &self.labels {
            let label = got.next()?;
            match want {
                Label::Literal(l) => {
                    if l != label {
                        return None;
                    }
                }
                Label::Capture(name) => {
                    if !is_dns_label(label) {
                        return None;
                    }
                    out.push((name.as_str(), label));
                }
            }
        }
        got.next().is_none().then_some(out)
    }
}

fn is_capture_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A target instance with `{capture}` references.
struct Template<'a> {
    parts: Vec<(bool, &'a str)>,
}

impl<'a> Template<'a> {
    fn parse(s: &'a str) -> Option<Template<'a>> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push((false, &rest[..open]));
            }
            let close = rest[open..].find('}')? + open;
            let name = &rest[open + 1..close];
            if !is_capture_name(name) {
                return None;
            }
            parts.push((true, name));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return None;
        }
        if !rest.is_empty() {
            parts.push((false, rest));
        }
        Some(Template { parts })
    }

    fn captures(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.parts.iter().filter(|(c, _)| *c).map(|(_, n)| *n)
    }
}

/// The instance a rule's target names for `captures` (from
/// [`HostPattern::matches`]).
pub fn expand_target(target: &str, captures: &[(&str, &str)]) -> String {
    let Some(t) = Template::parse(target) else {
        return target.to_string();
    };
    t.parts
        .iter()
        .map(|(is_capture, s)| {
            if *is_capture {
                captures
                    .iter()
                    .find(|(n, _)| n == s)
                    .map_or("", |(_, v)| *v)
            } else {
                s
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: &str) -> Result<Rule, RuleError> {
        serde_json::from_str::<RuleInput>(json)
            .expect("parses")
            .validate()
    }

    #[test]
    fn a_plain_rule_gets_its_defaults() {
        let r = rule(
            r#"{"match":{"hostname":"Web.Example.com."},"target":{"instance":"web","port":8080}}"#,
        )
        .expect("valid");
        assert_eq!(r.match_.hostname, "web.example.com");
        assert_eq!(r.match_.port, 80);
        assert_eq!(r.target.port, 8080);
        assert_eq!(r.fixed_instance(), Some("web"));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["match"]["port"], 80);
        assert!(json["match"].get("protocol").is_none());
        assert_eq!(json["tls"], false);
    }

    #[test]
    fn bad_hostnames_are_refused() {
        for host in [
            "",
            "a..b",
            "-a.com",
            "a-.com",
            "a b.com",
            "a_b.com",
            "{instance}",
            "x{instance}.com",
            "{a}.{a}.com",
            &"a".repeat(64),
        ] {
            let json = format!(
                r#"{{"match":{{"hostname":{host:?}}},"target":{{"instance":"{{a}}","port":1}}}}"#
            );
            assert!(
                matches!(rule(&json), Err(RuleError::BadHostname(_))),
                "{host:?}: {:?}",
                rule(&json)
            );
        }
    }

    #[test]
    fn ports_out_of_range_are_refused() {
        for (m, t) in [(0, 80), (65536, 80), (-1, 80), (80, 0), (80, 70000)] {
            let json = format!(
                r#"{{"match":{{"hostname":"a.com","port":{m}}},"target":{{"instance":"a","port":{t}}}}}"#
            );
            let err = rule(&json).expect_err("out of range");
            assert!(matches!(err, RuleError::PortRange { .. }), "{err}");
            assert!(err.to_string().contains("out of range"), "{err}");
        }
    }

    #[test]
    fn pattern_hostnames_need_their_capture_in_the_target() {
        let r = rule(r#"{"match":{"hostname":"{instance}.apps.test"},"target":{"instance":"{instance}","port":80}}"#)
            .expect("valid");
        assert_eq!(r.fixed_instance(), None);
        let err = rule(r#"{"match":{"hostname":"{instance}.apps.test"},"target":{"instance":"web","port":80}}"#)
            .expect_err("fixed target");
        assert!(
            matches!(err, RuleError::PatternWithoutCapture { .. }),
            "{err}"
        );
        let err = rule(r#"{"match":{"hostname":"{app}.apps.test"},"target":{"instance":"{instance}","port":80}}"#)
            .expect_err("unknown capture");
        assert!(matches!(err, RuleError::UnknownCapture { .. }), "{err}");
        let err = rule(
            r#"{"match":{"hostname":"web.test"},"target":{"instance":"{instance}","port":80}}"#,
        )
        .expect_err("literal host, template target");
        assert!(matches!(err, RuleError::UnknownCapture { .. }), "{err}");
    }

    #[test]
    fn patterns_match_one_label_per_capture() {
        let p = HostPattern::parse("{instance}.apps.test").expect("pattern");
        assert_eq!(p.matches("web.apps.test"), Some(vec![("instance", "web")]));
        assert_eq!(p.matches("a.b.apps.test"), None);
        assert_eq!(p.matches("apps.test"), None);
        assert_eq!(p.matches("web.apps.other"), None);
        assert_eq!(
            expand_target("{instance}", &[("instance", "web")]),
            "web".to_string()
        );
        assert_eq!(
            expand_target("x-{instance}", &[("instance", "web")]),
            "x-web".to_string()
        );
        let lit = HostPattern::parse("a.test").expect("literal");
        assert!(lit.is_literal());
        assert_eq!(lit.matches("a.test"), Some(vec![]));
    }

    #[test]
    fn header_auth_refuses_reserved_headers() {
        for h in [
            "Authorization",
            "cookie",
            "Host",
            "x forwarded",
            "Proxy-Foo",
            "",
        ] {
            let json = format!(
                r#"{{"match":{{"hostname":"a.com"}},"target":{{"instance":"a","port":1}},"request_header_auth":{{"header":{h:?},"value":"v"}}}}"#
            );
            assert!(
                matches!(rule(&json), Err(RuleError::ReservedHeader(_))),
                "{h}"
            );
        }
        let ok = rule(r#"{"match":{"hostname":"a.com"},"target":{"instance":"a","port":1},"request_header_auth":{"header":"X-Key","value":"s3cret"}}"#)
            .expect("valid");
        assert!(ok.request_header_auth.is_some());
        let err = rule(r#"{"match":{"hostname":"a.com"},"target":{"instance":"a","port":1},"request_header_auth":{"header":"X-Key","value":""}}"#)
            .expect_err("empty value");
        assert_eq!(err, RuleError::BadHeaderValue);
    }

    #[test]
    fn tcp_rules_are_plain_ports() {
        let r = rule(r#"{"match":{"hostname":"*","port":8080,"protocol":"tcp"},"target":{"instance":"web","port":80}}"#)
            .expect("valid");
        assert!(r.is_tcp());
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["match"]["protocol"], "tcp");
        assert!(matches!(
            rule(
                r#"{"match":{"hostname":"a.com","port":8080,"protocol":"tcp"},"target":{"instance":"web","port":80}}"#
            ),
            Err(RuleError::TcpHostname(_))
        ));
        assert!(matches!(
            rule(
                r#"{"match":{"hostname":"*","port":8080,"protocol":"udp"},"target":{"instance":"web","port":80}}"#
            ),
            Err(RuleError::BadProtocol(_))
        ));
    }

    #[test]
    fn tls_needs_a_literal_host_and_redirects_need_tls() {
        let r = rule(r#"{"match":{"hostname":"a.com","port":443},"target":{"instance":"a","port":1},"tls":true,"redirect_http":true}"#)
            .expect("valid");
        assert!(r.tls && r.redirect_http);
        assert!(matches!(
            rule(
                r#"{"match":{"hostname":"{instance}.a.com"},"target":{"instance":"{instance}","port":1},"tls":true}"#
            ),
            Err(RuleError::TlsPattern(_))
        ));
        assert_eq!(
            rule(
                r#"{"match":{"hostname":"a.com"},"target":{"instance":"a","port":1},"redirect_http":true}"#
            ),
            Err(RuleError::RedirectWithoutTls)
        );
    }
}
