//! The token that mutating dashboard actions need. Read-only views need none; the listener
//! binds localhost by default, and the token keeps other local users (and pages in a browser
//! that might be tricked into posting) from flipping services.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use axum::http::HeaderMap;

/// Where a generated token is stored when the config names no token file.
pub const TOKEN_FILE: &str = "http.token";

pub struct Token {
    pub value: String,
    pub path: PathBuf,
    /// Made at this start (print it once) rather than read from a configured file.
    pub generated: bool,
}

/// Reads the configured token file, or generates a fresh token into `<state_dir>/http.token`
/// (0600; replaced at every start so a leaked token dies with the daemon).
pub fn load_or_generate(configured: Option<&Path>, state_dir: &Path) -> Result<Token> {
    if let Some(path) = configured {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading the HTTP token from {}", path.display()))?;
        let value = text.trim().to_string();
        if value.len() < 16 {
            bail!(
                "{}: the token must be at least 16 characters",
                path.display()
            );
        }
        return Ok(Token {
            value,
            path: path.to_path_buf(),
            generated: false,
        });
    }
    let mut raw = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom for the HTTP token")?;
    let value: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let path = state_dir.join(TOKEN_FILE);
    let tmp = state_dir.join(format!("{TOKEN_FILE}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // The mode above applies only to a new file; an old leftover keeps its own.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", tmp.display()))?;
    writeln!(f, "{value}").with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(Token {
        value,
        path,
        generated: true,
    })
}

/// Whether the request carries `Authorization: Bearer <token>`. Compares in constant time.
pub fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    if token.is_empty() {
        return false;
    }
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(axum::http::header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        let t = "0123456789abcdef0123";
        assert!(authorized(&headers(&format!("Bearer {t}")), t));
        assert!(!authorized(&headers("Bearer 0123456789abcdef012"), t));
        assert!(!authorized(&headers("Bearer 0123456789abcdef0124"), t));
        assert!(!authorized(&headers(t), t));
        assert!(!authorized(&HeaderMap::new(), t));
        assert!(
            !authorized(&headers("Bearer "), ""),
            "no token set: nothing passes"
        );
    }

    #[test]
    fn generated_token_is_private_and_fresh() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("switcher-token-{}", std::process::id()));
        let a = load_or_generate(None, &dir)?;
        let b = load_or_generate(None, &dir)?;
        assert!(a.generated && b.generated);
        assert_ne!(a.value, b.value);
        assert_eq!(fs::read_to_string(&b.path)?.trim(), b.value);
        assert_eq!(fs::metadata(&b.path)?.permissions().mode() & 0o777, 0o600);
        let configured = load_or_generate(Some(&b.path), &dir)?;
        assert!(!configured.generated);
        assert_eq!(configured.value, b.value);
        fs::write(dir.join("short"), "abc\n")?;
        assert!(load_or_generate(Some(&dir.join("short")), &dir).is_err());
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
