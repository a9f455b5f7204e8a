//! User tags (hypeman's `tags`): key/value strings on instances and images,
//! validated once where a request enters, and hypeman's `tags[k]=v` list
//! filter (every pair must match).
//!
//! The limits are lodge's, chosen to keep records small and keys safe to
//! show and to use in query strings: at most [`MAX_TAGS`] pairs; a key is
//! 1–63 characters of letters, digits and `-_.:/` starting with a letter
//! or digit; a value is at most 255 characters and holds no control
//! character.

use std::collections::{BTreeMap, HashMap};

pub type Tags = BTreeMap<String, String>;

/// Most tags one object may carry.
pub const MAX_TAGS: usize = 50;
const MAX_KEY: usize = 63;
const MAX_VALUE: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("at most {MAX_TAGS} tags are allowed, got {0}")]
    TooMany(usize),
    #[error("tag key {0:?} is invalid: 1-{MAX_KEY} letters, digits and -_.:/, starting with a letter or digit")]
    Key(String),
    #[error(
        "the value of tag {0:?} is invalid: at most {MAX_VALUE} characters, no control characters"
    )]
    Value(String),
}

/// Checks every rule above.
pub fn validate(tags: &Tags) -> Result<(), TagError> {
    if tags.len() > MAX_TAGS {
        return Err(TagError::TooMany(tags.len()));
    }
    for (k, v) in tags {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_KEY
            && k.starts_with(|c: char| c.is_ascii_alphanumeric())
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
        if !key_ok {
            return Err(TagError::Key(k.clone()));
        }
        if v.chars().count() > MAX_VALUE || v.chars().any(char::is_control) {
            return Err(TagError::Value(k.clone()));
        }
    }
    Ok(())
}

/// The `tags[key]=value` pairs of a query string.
pub fn filter_from_query(query: &HashMap<String, String>) -> Tags {
    query
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("tags[")?.strip_suffix(']')?;
            Some((key.to_string(), v.clone()))
        })
        .collect()
}

/// Whether `tags` carries every pair of `filter`.
pub fn matches(tags: &Tags, filter: &Tags) -> bool {
    filter.iter().all(|(k, v)| tags.get(k) == Some(v))
}

/// `k=v` (docker's `--label`) as a pair; `k` alone is an empty value.
pub fn parse_pair(s: &str) -> (String, String) {
    match s.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (s.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn valid_tags_pass() {
        assert_eq!(validate(&Tags::new()), Ok(()));
        assert_eq!(
            validate(&tags(&[
                ("team", "backend"),
                ("app.kubernetes.io/name", ""),
                ("a", &"x".repeat(255))
            ])),
            Ok(())
        );
        let fifty: Tags = (0..50).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(validate(&fifty), Ok(()));
    }

    #[test]
    fn invalid_tags_say_why() {
        let many: Tags = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(validate(&many), Err(TagError::TooMany(51)));
        for bad in ["", "-lead", "has space", "x=y", "k[1]", &"k".repeat(64)] {
            assert_eq!(
                validate(&tags(&[(bad, "v")])),
                Err(TagError::Key(bad.to_string())),
                "{bad:?}"
            );
        }
        for bad in ["line\nbreak", "\u{7f}", &"v".repeat(256)] {
            assert_eq!(
                validate(&tags(&[("k", bad)])),
                Err(TagError::Value("k".into()))
            );
        }
    }

    #[test]
    fn filters_and_all_pairs() {
        let q: HashMap<String, String> = [
            ("tags[team]", "a"),
            ("tags[env]", "x"),
            ("state", "Running"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let f = filter_from_query(&q);
        assert_eq!(f, tags(&[("env", "x"), ("team", "a")]));
        assert!(matches(
            &tags(&[("team", "a"), ("env", "x"), ("more", "1")]),
            &f
        ));
        assert!(!matches(&tags(&[("team", "a")]), &f));
        assert!(matches(&tags(&[]), &Tags::new()));
        assert_eq!(parse_pair("a=b=c"), ("a".into(), "b=c".into()));
        assert_eq!(parse_pair("a"), ("a".into(), "".into()));
    }
}
