//! API key authenticator. Keys are presented in a header (case-insensitive name, default
//! `x-api-key`) or, when configured, a query parameter. The config stores only the SHA-256 of
//! each key; a presented key is hashed and looked up, so the gateway never holds the secret.
//! `portcullis keygen` makes a key and its config line.

use super::{AuthError, AuthMethod, Credentials, Principal};
use std::collections::HashMap;
use std::sync::Arc;

/// Keys longer than this are refused without hashing (keygen makes 68-character keys).
pub const MAX_KEY_LEN: usize = 512;

#[derive(Debug)]
pub struct ApiKeyEntry {
    pub id: Arc<str>,
    pub consumer: Arc<str>,
    pub scopes: Arc<[String]>,
    pub groups: Arc<[String]>,
    pub roles: Arc<[String]>,
    pub expires_at: Option<u64>,
    pub disabled: bool,
}

#[derive(Debug)]
pub struct ApiKeyAuth {
    pub name: Arc<str>,
    pub header: http::HeaderName,
    pub query: Option<String>,
    /// SHA-256 of the key → entry.
    pub keys: HashMap<[u8; 32], Arc<ApiKeyEntry>>,
}

/// SHA-256 (aws-lc: SHA-NI/AVX2 where the CPU has them, no allocation). Kept fallible for
/// its callers, which treat a failure as "no hash" and fail closed.
pub fn sha256(data: &[u8]) -> Option<[u8; 32]> {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().try_into().ok()
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let v = std::str::from_utf8(chunk).ok()?;
        if !v.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        out[i] = u8::from_str_radix(v, 16).ok()?;
    }
    Some(out)
}

impl ApiKeyAuth {
    /// The presented key, if any. Two copies (two headers, or header and query) are ambiguous.
    pub fn extract<'a>(&self, c: &Credentials<'a>) -> Result<Option<&'a [u8]>, AuthError> {
        let mut values = c.headers.get_all(&self.header).iter();
        let mut key = values.next().map(|v| v.as_bytes());
        if values.next().is_some() {
            return Err(AuthError::AmbiguousCredentials);
        }
        if let (Some(name), Some(q)) = (&self.query, c.query) {
            for pair in q.split('&') {
                let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
                if n == name {
                    if key.is_some() {
                        return Err(AuthError::AmbiguousCredentials);
                    }
                    key = Some(v.as_bytes());
                }
            }
        }
        Ok(key)
    }

    pub fn verify(&self, key: &[u8], now: u64) -> Result<Principal, AuthError> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(AuthError::InvalidApiKey);
        }
        let digest = sha256(key).ok_or(AuthError::InvalidApiKey)?;
        let entry = self.keys.get(&digest).ok_or(AuthError::InvalidApiKey)?;
        if entry.disabled {
            return Err(AuthError::KeyDisabled);
        }
        if entry.expires_at.is_some_and(|t| now >= t) {
            return Err(AuthError::KeyExpired);
        }
        Ok(Principal {
            method: AuthMethod::ApiKey,
            authenticator: self.name.clone(),
            subject: entry.consumer.clone(),
            consumer: Some(entry.consumer.clone()),
            key_id: Some(entry.id.clone()),
            issuer: None,
            scopes: entry.scopes.clone(),
            roles: entry.roles.clone(),
            groups: entry.groups.clone(),
            claims: Vec::new().into(),
            policy_claims: Vec::new().into(),
            expires_at: entry.expires_at,
        })
    }
}

/// A new random key (256 bits from the OS-seeded CSPRNG) and its SHA-256 hex.
pub fn generate() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let key = format!("pck_{}", hex(&bytes));
    let digest = sha256(key.as_bytes()).map(|d| hex(&d)).unwrap_or_default();
    (key, digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> ApiKeyAuth {
        let mut keys = HashMap::new();
        for (k, id, disabled, exp) in [
            ("good", "g", false, None),
            ("off", "o", true, None),
            ("old", "x", false, Some(100)),
        ] {
            keys.insert(
                sha256(k.as_bytes()).unwrap(),
                Arc::new(ApiKeyEntry {
                    id: id.into(),
                    consumer: "c".into(),
                    scopes: vec!["s".to_string()].into(),
                    groups: Vec::new().into(),
                    roles: Vec::new().into(),
                    expires_at: exp,
                    disabled,
                }),
            );
        }
        ApiKeyAuth {
            name: "k".into(),
            header: http::HeaderName::from_static("x-api-key"),
            query: Some("api_key".into()),
            keys,
        }
    }

    #[test]
    fn verify_outcomes() {
        let a = auth();
        assert_eq!(
            a.verify(b"good", 1000).unwrap().key_id.as_deref(),
            Some("g")
        );
        assert_eq!(a.verify(b"bad", 1000), Err(AuthError::InvalidApiKey));
        assert_eq!(a.verify(b"", 1000), Err(AuthError::InvalidApiKey));
        assert_eq!(a.verify(b"off", 1000), Err(AuthError::KeyDisabled));
        assert_eq!(a.verify(b"old", 99).map(|p| p.key_id.is_some()), Ok(true));
        assert_eq!(a.verify(b"old", 100), Err(AuthError::KeyExpired));
        assert_eq!(a.verify(&[b'a'; 600], 0), Err(AuthError::InvalidApiKey));
    }

    #[test]
    fn extraction() {
        let a = auth();
        let mut h = http::HeaderMap::new();
        let c = Credentials {
            headers: &h,
            query: Some("x=1&api_key=good"),
            client_cert: None,
        };
        assert_eq!(a.extract(&c), Ok(Some(&b"good"[..])));
        let c = Credentials {
            headers: &h,
            query: Some("api_key=a&api_key=b"),
            client_cert: None,
        };
        assert_eq!(a.extract(&c), Err(AuthError::AmbiguousCredentials));
        h.append("x-api-key", "good".parse().unwrap());
        let c = Credentials {
            headers: &h,
            query: None,
            client_cert: None,
        };
        assert_eq!(a.extract(&c), Ok(Some(&b"good"[..])));
        let c = Credentials {
            headers: &h,
            query: Some("api_key=good"),
            client_cert: None,
        };
        assert_eq!(a.extract(&c), Err(AuthError::AmbiguousCredentials));
        h.append("X-API-KEY", "other".parse().unwrap());
        let c = Credentials {
            headers: &h,
            query: None,
            client_cert: None,
        };
        assert_eq!(a.extract(&c), Err(AuthError::AmbiguousCredentials));
    }

    #[test]
    fn generated_keys_hash_to_their_line() {
        let (k, d) = generate();
        assert!(k.starts_with("pck_") && k.len() == 68);
        assert_eq!(hex(&sha256(k.as_bytes()).unwrap()), d);
        assert_eq!(parse_hex32(&d).map(|b| hex(&b)), Some(d));
        assert!(parse_hex32("ZZ").is_none());
        assert_eq!(parse_hex32(&"A".repeat(64)), Some([0xAA; 32]));
        assert!(parse_hex32(&"g".repeat(64)).is_none());
    }
}
