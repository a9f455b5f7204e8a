//! Instance identity: generated ids and validated user-chosen names.
//!
//! Names follow hypeman (and DNS labels): lowercase letters, digits and
//! dashes, not starting or ending with a dash. Ids are random lowercase
//! alphanumerics starting with a letter, so an id never looks like a number
//! and any unique prefix of it can address the instance. [`Claims`] keeps
//! a name taken while a create prepares its disks, before its record exists.

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;

use rand::Rng;

pub const MAX_NAME_LEN: usize = 63;
const ID_LEN: usize = 24;

/// A validated instance name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name must not be empty")]
    Empty,
    #[error("name {0:?} is longer than {MAX_NAME_LEN} characters")]
    TooLong(String),
    #[error("name {0:?} may only contain lowercase letters, digits and dashes, and must not start or end with a dash")]
    BadCharacters(String),
}

impl Name {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.to_string()));
        }
        let allowed = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !allowed || s.starts_with('-') || s.ends_with('-') {
            return Err(NameError::BadCharacters(s.to_string()));
        }
        Ok(Name(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fresh random instance id.
pub fn new_id() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut id = String::with_capacity(ID_LEN);
    id.push(LETTERS[rng.random_range(0..LETTERS.len())] as char);
    for _ in 1..ID_LEN {
        id.push(ALNUM[rng.random_range(0..ALNUM.len())] as char);
    }
    id
}

/// Whether `s` could be an id (used to refuse path tricks before touching disk).
pub fn is_id_like(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Names claimed by creates still preparing their disks.
#[derive(Debug, Default)]
pub struct Claims {
    reserved: Mutex<HashSet<String>>,
}

/// A claimed name; released when dropped (by then the record is on disk,
/// so the name stays taken, or the create failed and the name is free).
#[derive(Debug)]
pub struct Claim<'a> {
    claims: &'a Claims,
    name: String,
}

impl Claims {
    /// Claims `name` unless another create holds it or `taken` (the names
    /// of existing records) says it is in use; `None` if it is not free.
    pub fn claim<E>(
        &self,
        name: &str,
        taken: impl FnOnce(&str) -> Result<bool, E>,
    ) -> Result<Option<Claim<'_>>, E> {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if reserved.contains(name) || taken(name)? {
            return Ok(None);
        }
        reserved.insert(name.to_string());
        Ok(Some(Claim {
            claims: self,
            name: name.to_string(),
        }))
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.claims
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_name_is_refused_until_released() {
        let claims = Claims::default();
        let free = |_: &str| Ok::<_, ()>(false);
        let first = claims.claim("web", free).expect("no error");
        assert!(first.is_some());
        assert!(claims.claim("web", free).expect("no error").is_none());
        assert!(claims.claim("db", free).expect("no error").is_some());
        drop(first);
        assert!(claims.claim("web", free).expect("no error").is_some());
    }

    #[test]
    fn an_existing_record_takes_the_name() {
        let claims = Claims::default();
        let taken = |n: &str| Ok::<_, ()>(n == "web");
        assert!(claims.claim("web", taken).expect("no error").is_none());
        assert_eq!(
            claims.claim("x", |_| Err("unreadable")).err(),
            Some("unreadable")
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "web-1", "x9", "my-app-2"] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a b", "a,b", "../x", "é"] {
            assert!(Name::parse(bad).is_err(), "{bad}");
        }
        assert!(Name::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn ids_are_distinct_and_id_like() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), ID_LEN);
        assert!(is_id_like(&a));
        assert!(a.as_bytes()[0].is_ascii_lowercase());
        assert!(!is_id_like("../etc"));
    }
}
