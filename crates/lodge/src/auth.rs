//! Bearer-token auth, compatible with hypeman's: HS256-signed JWTs.
//!
//! The signing secret is `LODGE_JWT_SECRET` or, when unset, a random secret
//! kept in `<data dir>/jwt-secret` (created on first use, mode 0600), so that
//! `lodge token` on the same host mints tokens the daemon accepts. Creating
//! it is race-free: a daemon starting while CLIs mint tokens all end up with
//! the one secret that was published first.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lodge_common::paths::Paths;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

/// Keys derived once from the secret.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Auth {
    pub fn load(data_dir: &Path) -> Result<Self> {
        let secret = match std::env::var("LODGE_JWT_SECRET") {
            Ok(s) if !s.is_empty() => s.into_bytes(),
            _ => load_or_create_secret(&Paths::new(data_dir).jwt_secret())?,
        };
        Ok(Auth {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
        })
    }

    pub fn mint(&self, subject: &str, ttl_secs: u64) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub: subject.to_string(),
            iat: now,
            exp: now + ttl_secs,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Checks an `Authorization` header value; returns why it is refused.
    pub fn verify_header(&self, header: Option<&str>) -> Result<(), &'static str> {
        let value = header.ok_or("missing bearer token")?;
        let token = value
            .strip_prefix("Bearer ")
            .ok_or("authorization header is not a bearer token")?;
        let validation = Validation::new(Algorithm::HS256);
        jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding, &validation)
            .map(|_| ())
            .map_err(|_| "invalid or expired token")
    }
}

/// The secret in `path`, creating it if there is none yet. Any number of
/// daemons and CLIs may race here: each writes a fresh secret under its own
/// temporary name and `link`s it into place, which only the first manages;
/// everyone then uses the secret that landed (see `lodge_common::fsutil`).
fn load_or_create_secret(path: &Path) -> Result<Vec<u8>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let secret: [u8; 32] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    lodge_common::fsutil::create_once(path, hex.as_bytes(), 0o600)
        .with_context(|| format!("creating {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_verifies_and_tampered_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = Auth::load(dir.path()).expect("auth");
        let token = auth.mint("test", 60).expect("mint");
        assert!(auth.verify_header(Some(&format!("Bearer {token}"))).is_ok());
        assert!(auth.verify_header(None).is_err());
        assert!(auth.verify_header(Some(&token)).is_err());
        assert!(auth
            .verify_header(Some(&format!("Bearer {token}x")))
            .is_err());
        // The same data dir yields the same secret.
        let again = Auth::load(dir.path()).expect("auth");
        assert!(again
            .verify_header(Some(&format!("Bearer {token}")))
            .is_ok());
    }
}
