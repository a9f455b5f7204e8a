//! hypeman's routes that lodge does not serve yet, in one table.
//!
//! A request that no real route takes is looked up here before it becomes
//! a 404 (unknown path) or 405 (known path, other method): a hypeman route
//! answers 501 `not_implemented` instead, so a client can tell "this server
//! lacks the feature" from "no such instance". The table is only consulted
//! for requests the router did not match, so a line whose route has since
//! been built is dead, not harmful; delete it when the route lands (the
//! compatibility suite, tests/compat/hypeman_methods.py, flips the method
//! from 501 to working in its own one-line table).
//!
//! Patterns are hypeman's paths with `{…}` for one path segment.

use axum::http::{HeaderMap, Method, StatusCode, Uri};

use super::error::ApiError;
use super::state::AppState;

/// The OpenAPI tag of these routes in `/spec.json`.
pub const TAG: &str = "not_implemented";

/// `(method, path pattern, what it is)`: hypeman routes lodge lacks.
pub const NOT_IMPLEMENTED: &[(&str, &str, &str)] = &[
    // Image builds.
    ("GET", "/builds", "image builds"),
    ("POST", "/builds", "image builds"),
    ("GET", "/builds/{id}", "image builds"),
    ("DELETE", "/builds/{id}", "image builds"),
    ("GET", "/builds/{id}/events", "image builds"),
    ("GET", "/builders", "image builders"),
    ("POST", "/builders", "image builders"),
    ("GET", "/builders/{id}", "image builders"),
    ("DELETE", "/builders/{id}", "image builders"),
    ("POST", "/builders/{id}/prune", "image builders"),
];

/// Whether `path` fits `pattern` segment by segment (`{…}` is any one
/// non-empty segment).
fn fits(pattern: &str, path: &str) -> bool {
    let mut want = pattern.trim_matches('/').split('/');
    let mut got = path
        .trim_end_matches('/')
        .trim_start_matches('/')
        .split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) => {
                let any = w.starts_with('{') && w.ends_with('}');
                if g.is_empty() || (!any && w != g) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The feature a hypeman route lodge lacks belongs to, if `method path`
/// is one.
pub fn lookup(method: &Method, path: &str) -> Option<&'static str> {
    NOT_IMPLEMENTED
        .iter()
        .find(|(m, p, _)| method.as_str() == *m && fits(p, path))
        .map(|(_, _, what)| *what)
}

fn not_implemented(what: &str, method: &Method, path: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_IMPLEMENTED,
        code: "not_implemented",
        message: format!("{what} ({method} {path}) is not implemented by lodge yet"),
    }
}

/// The router's fallback: a hypeman route lodge lacks is 501 (after the
/// token check, as a real route would be), anything else 404.
pub async fn unrouted(
    axum::extract::State(state): axum::extract::State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiError {
    match lookup(&method, uri.path()) {
        Some(what) => {
            checked(&state, &headers).unwrap_or_else(|| not_implemented(what, &method, uri.path()))
        }
        None => ApiError::not_found("no such endpoint"),
    }
}

/// A known path asked with a method it does not have: 501 when hypeman has
/// that method there, else 405 (axum adds the `Allow` header).
pub async fn wrong_method(
    axum::extract::State(state): axum::extract::State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiError {
    match lookup(&method, uri.path()) {
        Some(what) => {
            checked(&state, &headers).unwrap_or_else(|| not_implemented(what, &method, uri.path()))
        }
        None => ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: format!("method {method} is not allowed here"),
        },
    }
}

/// The token check's refusal, if any.
fn checked(state: &AppState, headers: &HeaderMap) -> Option<ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state
        .auth
        .verify_header(header)
        .err()
        .map(ApiError::unauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_one_segment_per_placeholder() {
        assert!(fits("/instances/{id}/standby", "/instances/abc/standby"));
        assert!(fits("/volumes", "/volumes/"));
        assert!(!fits("/instances/{id}/standby", "/instances//standby"));
        assert!(!fits("/instances/{id}/standby", "/instances/a/b/standby"));
        assert!(!fits("/volumes/{id}", "/volumes"));
        assert!(fits(
            "/instances/{id}/snapshots/{snapshot_id}/restore",
            "/instances/a/snapshots/s1/restore"
        ));
    }

    #[test]
    fn lookups_need_the_method_too() {
        assert_eq!(
            lookup(&Method::POST, "/builders/x/prune"),
            Some("image builders")
        );
        assert_eq!(lookup(&Method::GET, "/builders/x/prune"), None);
        assert_eq!(lookup(&Method::GET, "/no/such/thing"), None);
        assert_eq!(lookup(&Method::GET, "/builds/b1"), Some("image builds"));
    }

    #[test]
    fn every_line_is_a_distinct_route() {
        let mut seen = std::collections::BTreeSet::new();
        for (m, p, _) in NOT_IMPLEMENTED {
            assert!(seen.insert((m, p)), "{m} {p} twice");
            assert!(p.starts_with('/'), "{p}");
            assert!(Method::from_bytes(m.as_bytes()).is_ok(), "{m}");
        }
    }
}
