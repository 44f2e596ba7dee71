//! JWT authenticator (RFC 7519/7515) on `jsonwebtoken` with the aws-lc-rs backend. Called from
//! `request_filter` through [`super::authenticate`]; pure computation, no I/O.
//!
//! Stricter than the library defaults, on purpose:
//! - the algorithm comes from a per-authenticator allow-list, never from the token; `none` in
//!   any spelling is refused before anything else; the key's type must match the algorithm
//!   (the library refuses an HMAC algorithm with an RSA key);
//! - keys come only from configuration (PEM files, a JWKS file, an HMAC secret from an
//!   environment variable or file): `jku`, `x5u`, `x5c` and embedded `jwk` headers are never
//!   used, and `kid` is only a map key;
//! - `exp` and `sub` are required; `nbf` and `iat` are checked; leeway defaults to 30 s (the
//!   library's is 60 s and it skips `nbf`); `iss`/`aud` are checked when configured;
//! - a `crit` header is refused (we implement no extensions), and so is `cty: JWT` (nested
//!   tokens are not supported); tokens over `max_token_bytes` (default 8 KiB) are refused
//!   unparsed;
//! - parsing is strict where parsers differ: base64url without padding and with zero spare bits
//!   (one text per byte string), JSON objects without duplicate member names at any depth
//!   (serde keeps the last of `{"sub":"alice","sub":"admin"}`, other parsers the first), and
//!   `exp`/`nbf`/`iat` integers of Unix seconds only (the library would round floats);
//! - RSA keys must be 2048–8192 bits with an odd exponent from 3 to 2^33 − 1 (what aws-lc
//!   verifies with); anything else is refused when loaded rather than failing every token.

use super::jwks::{KeySet, RemoteJwks};
use super::{AuthError, AuthMethod, Principal};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, Validation};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::sync::Arc;

/// One verification key.
pub struct JwtKey {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    /// Set when the key is bound to one algorithm (a JWKS `alg`).
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish()
    }
}

#[derive(Debug)]
pub struct JwtAuth {
    pub name: Arc<str>,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: u64,
    pub max_token_bytes: usize,
    pub scopes_claims: Vec<String>,
    /// Forward the token (header or cookie) upstream (default: removed).
    pub forward_token: bool,
    pub cookie: Option<String>,
    pub header: Option<http::HeaderName>,
    pub roles_claim: Option<Vec<String>>,
    pub groups_claim: Option<Vec<String>>,
    pub forward_claims: Vec<String>,
    pub required_claims: Vec<String>,
    /// Claim paths that authorization policies test; extracted into the principal.
    pub policy_claims: Vec<Arc<str>>,
    /// Keys from the config file(s).
    pub static_keys: KeySet,
    /// Keys from a JWKS URL, fetched in the background.
    pub remote: Option<Arc<RemoteJwks>>,
    /// Verified-token cache (None when `token_cache: 0`); shared across reloads, see
    /// [`JwtAuth::keep_cache_of`].
    pub cache: Option<Arc<TokenCache>>,
    validation: Validation,
}

/// Verified tokens only. Bounded (TinyUFO: lock-free, TinyLFU admission, S3-FIFO eviction),
/// keyed by a per-process randomly keyed 64-bit hash of the token; the entry keeps the token
/// itself and a hit requires byte equality, so a hash collision can never hand one token's
/// identity to another. Entries are used only before the token's `exp` and only while the key
/// set they were verified with is current (a JWKS change empties the cache, lazily).
pub struct TokenCache {
    ufo: tinyufo::TinyUfo<u64, Arc<CachedToken>>,
    hasher: ahash::RandomState,
    /// Entries held, for `portcullis_token_cache_entries`: +1 per insert of a new key, −1 per
    /// eviction TinyUFO reports. Two threads inserting the same token at once can over-count by
    /// one, so it is clamped to the capacity.
    entries: std::sync::atomic::AtomicUsize,
    capacity: usize,
    /// Tokens recently refused for a reason that cannot change under the same key set (a bad
    /// signature, or expired): a direct-mapped table of tags (see [`TokenCache::refused`]), so
    /// a client replaying one bad token costs a lookup, not a verification. Fixed size, no
    /// allocation per entry: a flood of distinct bad tokens only overwrites slots.
    refused: Box<[std::sync::atomic::AtomicU64]>,
}

/// Slots of the refused-token table (8 bytes each).
const REFUSED_SLOTS: usize = 4096;
/// The low bits of a refused tag hold the verdict.
const VERDICT_BITS: u64 = 0b11;

/// What a cache lookup found.
enum Lookup {
    Hit(Principal),
    /// An entry for this hash exists but is expired, from an older key set, or another token:
    /// the next `put` replaces it rather than adding one.
    Stale,
    Miss,
}

pub struct CachedToken {
    token: Box<[u8]>,
    principal: Principal,
    exp: u64,
    key_generation: u64,
}

static TOKEN_CACHES: crate::carry::Registry<TokenCache> = crate::carry::Registry::new();

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache")
    }
}

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        TokenCache {
            ufo: tinyufo::TinyUfo::new(max_entries, max_entries),
            hasher: ahash::RandomState::new(),
            entries: std::sync::atomic::AtomicUsize::new(0),
            capacity: max_entries,
            refused: (0..REFUSED_SLOTS.min(max_entries.next_power_of_two()))
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        }
    }

    fn get(&self, token: &[u8], now: u64, generation: u64) -> Lookup {
        match self.ufo.get(&self.hasher.hash_one(token)) {
            None => Lookup::Miss,
            Some(e) if now < e.exp && e.key_generation == generation && *e.token == *token => {
                Lookup::Hit(e.principal.clone())
            }
            Some(_) => Lookup::Stale,
        }
    }

    /// The refused-token tag of `token` under key set `generation`: a randomly keyed 64-bit
    /// hash (an attacker cannot aim a collision), with the verdict bits cleared.
    fn refused_tag(&self, token: &[u8], generation: u64) -> u64 {
        let h = self.hasher.hash_one((token, generation));
        // Never 0 (an empty slot) once the verdict is added.
        h & !VERDICT_BITS
    }

    /// The earlier verdict on `token`, if it was refused under this key set. A false match
    /// needs a 62-bit collision of a secret-keyed hash; it would refuse (never admit) a token.
    fn refused(&self, token: &[u8], generation: u64) -> Option<AuthError> {
        let tag = self.refused_tag(token, generation);
        let slot = &self.refused[(tag >> 2) as usize & (self.refused.len() - 1)];
        let v = slot.load(std::sync::atomic::Ordering::Relaxed);
        if v & !VERDICT_BITS != tag {
            return None;
        }
        match v & VERDICT_BITS {
            1 => Some(AuthError::BadSignature),
            2 => Some(AuthError::TokenExpired),
            _ => None,
        }
    }

    /// Remember a refusal that repeating the verification could not change.
    fn refuse(&self, token: &[u8], generation: u64, e: AuthError) {
        let verdict = match e {
            AuthError::BadSignature => 1,
            AuthError::TokenExpired => 2,
            _ => return,
        };
        let tag = self.refused_tag(token, generation);
        let slot = &self.refused[(tag >> 2) as usize & (self.refused.len() - 1)];
        slot.store(tag | verdict, std::sync::atomic::Ordering::Relaxed);
    }

    /// Insert a verified token; returns the number of entries now held.
    fn put(&self, token: &[u8], p: &Principal, generation: u64, replaces: bool) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(exp) = p.expires_at else {
            return self.len();
        };
        let entry = Arc::new(CachedToken {
            token: token.into(),
            principal: p.clone(),
            exp,
            key_generation: generation,
        });
        let evicted = self.ufo.put(self.hasher.hash_one(token), entry, 1).len();
        let added = usize::from(!replaces);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self.entries.fetch_update(Relaxed, Relaxed, |n| {
            Some((n + added).saturating_sub(evicted))
        });
        self.len()
    }

    /// Entries currently held (see the field's comment for the bound).
    pub fn len(&self) -> usize {
        self.entries
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(self.capacity)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything configurable about a JWT authenticator besides its keys.
#[derive(Debug)]
pub struct JwtOptions {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: u64,
    pub max_token_bytes: usize,
    pub scopes_claims: Vec<String>,
    pub forward_token: bool,
    pub cache_entries: usize,
    pub cookie: Option<String>,
    pub header: Option<http::HeaderName>,
    pub roles_claim: Option<String>,
    pub groups_claim: Option<String>,
    pub forward_claims: Vec<String>,
    pub required_claims: Vec<String>,
    pub policy_claims: Vec<Arc<str>>,
}

impl JwtOptions {
    /// Defaults as in the config reference, for the given algorithms.
    pub fn new(algorithms: Vec<Algorithm>) -> JwtOptions {
        JwtOptions {
            issuer: None,
            audiences: Vec::new(),
            algorithms,
            leeway: 30,
            max_token_bytes: 8192,
            scopes_claims: vec!["scope".into(), "scp".into()],
            forward_token: false,
            cache_entries: 10_000,
            cookie: None,
            header: None,
            roles_claim: None,
            groups_claim: None,
            forward_claims: Vec::new(),
            required_claims: Vec::new(),
            policy_claims: Vec::new(),
        }
    }
}

/// Strings at a dot path: a JSON array of strings or a space-separated string.
fn strings_at(claims: &Map<String, Value>, path: &[String]) -> Vec<String> {
    let mut v: Option<&Value> = None;
    for (i, seg) in path.iter().enumerate() {
        v = if i == 0 {
            claims.get(seg)
        } else {
            v.and_then(|x| x.get(seg))
        };
    }
    let mut out: Vec<String> = match v {
        Some(Value::String(s)) => s
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    out.retain(|s| header_safe(s) && s.len() <= 128);
    out
}

/// Most values a policy claim may carry (array claims); more are ignored (fail closed: a
/// value that is not kept cannot match).
const MAX_POLICY_CLAIM_VALUES: usize = 64;

/// Values of a claim for policy matching. `path` is tried as a top-level name first (so
/// namespaced claims like `https://example.com/tenant` work), then as a dot path into nested
/// objects. Strings, numbers and booleans become their text; arrays yield their scalar elements.
pub fn claim_values(claims: &Map<String, Value>, path: &str) -> Box<[String]> {
    let found = claims.get(path).or_else(|| {
        let mut it = path.split('.');
        let first = claims.get(it.next()?)?;
        it.try_fold(first, |v, seg| v.get(seg))
    });
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match found {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(scalar)
            .take(MAX_POLICY_CLAIM_VALUES)
            .collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => Box::default(),
    }
}

pub fn family_of(alg: Algorithm) -> AlgorithmFamily {
    alg.family()
}

/// Decode base64url without padding (RFC 7515 §2). Strict: no padding, no other alphabet, and
/// the spare low bits of a final partial group must be zero (RFC 4648 §3.5), so every byte
/// string has exactly one accepted text — the same rule as the library's decoder.
pub fn b64url_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        // Bits below the `n` bytes this chunk yields: zero in a canonical encoding.
        if acc & (0xff_ffff >> (8 * n)) != 0 {
            return None;
        }
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&bytes[..n]);
    }
    Some(out)
}

/// A JSON value parsed like `serde_json::Value`, except that an object with the same member
/// name twice is an error, at any depth. RFC 7515 §4 / RFC 7519 §4 let a parser reject
/// duplicates; we must, because serde keeps the last value silently while other JWT parsers
/// (an upstream re-reading the forwarded token, an IdP's introspection) may keep the first.
/// Names are compared after unescaping, so `"s\u0075b"` is `sub`. serde_json's recursion
/// limit (128) still bounds nesting.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value without duplicate object keys")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde_json::map::Entry;
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            match out.entry(k) {
                Entry::Occupied(e) => {
                    return Err(de::Error::custom(format_args!(
                        "duplicate key {:?}",
                        e.key()
                    )))
                }
                Entry::Vacant(e) => {
                    e.insert(map.next_value::<StrictValue>()?.0);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// The unverified header and payload of a compact JWS, as JSON objects.
pub struct Parts {
    pub header: Map<String, Value>,
    pub payload: Map<String, Value>,
}

pub fn split(token: &[u8]) -> Result<Parts, AuthError> {
    let mut it = token.split(|&b| b == b'.');
    let (Some(h), Some(p), Some(_sig), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(AuthError::MalformedToken);
    };
    let obj = |seg: &[u8]| -> Result<Map<String, Value>, AuthError> {
        let bytes = b64url_decode(seg).ok_or(AuthError::MalformedToken)?;
        match serde_json::from_slice::<StrictValue>(&bytes) {
            Ok(StrictValue(Value::Object(m))) => Ok(m),
            _ => Err(AuthError::MalformedToken),
        }
    };
    Ok(Parts {
        header: obj(h)?,
        payload: obj(p)?,
    })
}

impl JwtAuth {
    pub fn new(
        name: &str,
        o: JwtOptions,
        keys: Vec<JwtKey>,
        remote: Option<Arc<RemoteJwks>>,
    ) -> JwtAuth {
        let JwtOptions {
            issuer,
            audiences,
            algorithms,
            leeway,
            max_token_bytes,
            scopes_claims,
            forward_token,
            cache_entries,
            cookie,
            header,
            roles_claim,
            groups_claim,
            forward_claims,
            required_claims,
            policy_claims,
        } = o;
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.clone();
        validation.leeway = leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(i) = &issuer {
            validation.set_issuer(&[i]);
            required.push("iss");
        }
        if audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        JwtAuth {
            name: name.into(),
            issuer,
            audiences,
            algorithms,
            leeway,
            max_token_bytes,
            scopes_claims,
            forward_token,
            cookie,
            header,
            roles_claim: roles_claim.map(|p| p.split('.').map(str::to_string).collect()),
            groups_claim: groups_claim.map(|p| p.split('.').map(str::to_string).collect()),
            forward_claims,
            required_claims,
            policy_claims,
            static_keys: KeySet::new(keys),
            remote,
            cache: (cache_entries > 0).then(|| Arc::new(TokenCache::new(cache_entries))),
            validation,
        }
    }

    /// Share the verified-token cache with a live authenticator of the same `definition`
    /// (everything that decides whether a token verifies and which principal it yields: the
    /// options, a digest of the key material, the JWKS source), so an unchanged authenticator
    /// keeps its cache across a reload. Any change gives it an empty cache.
    pub fn keep_cache_of(mut self, definition: &str) -> JwtAuth {
        if let Some(c) = &self.cache {
            let capacity = c.capacity;
            let id = crate::auth::api_key::sha256(definition.as_bytes())
                .map(|d| crate::auth::api_key::hex(&d))
                .unwrap_or_else(|| definition.to_string());
            self.cache = Some(TOKEN_CACHES.shared(id, || TokenCache::new(capacity)).0);
        }
        self
    }

    /// Verify (through the cache), and on an unknown `kid` with a JWKS URL, ask for a refetch
    /// (rate-limited) and try once more when it arrives in time.
    pub async fn verify_async(&self, token: &[u8], now: u64) -> Result<Principal, AuthError> {
        let generation = self.remote.as_ref().map_or(0, |r| {
            r.generation.load(std::sync::atomic::Ordering::Acquire)
        });
        let mut replaces = false;
        if let Some(c) = &self.cache {
            match c.get(token, now, generation) {
                Lookup::Hit(p) => {
                    crate::metrics::token_cache(&self.name, "hit");
                    return Ok(p);
                }
                Lookup::Stale => replaces = true,
                Lookup::Miss => {}
            }
            if let Some(e) = c.refused(token, generation) {
                crate::metrics::token_cache(&self.name, "refused");
                return Err(e);
            }
            crate::metrics::token_cache(&self.name, "miss");
        }
        let result = match self.verify(token, now) {
            Err(AuthError::UnknownKey) => match &self.remote {
                Some(r) if r.refetch_and_wait(std::time::Duration::from_secs(2)).await => {
                    self.verify(token, now)
                }
                _ => Err(AuthError::UnknownKey),
            },
            other => other,
        };
        if let Some(c) = &self.cache {
            // Cache under the generation that was current *before* verifying: if keys changed
            // meanwhile, the entry is simply never used.
            match &result {
                Ok(p) => {
                    let n = c.put(token, p, generation, replaces);
                    crate::metrics::token_cache_entries(&self.name, n);
                }
                Err(e) => c.refuse(token, generation, *e),
            }
        }
        result
    }

    pub fn verify(&self, token: &[u8], now: u64) -> Result<Principal, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TokenTooLarge);
        }
        let parts = split(token)?;
        let alg_name = parts
            .header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(AuthError::MalformedToken)?;
        // Compare the raw string against the allow-list: `none`, `None`, `NONE`, or anything
        // the library might parse loosely, never get further.
        let alg = self
            .algorithms
            .iter()
            .copied()
            .find(|a| alg_name == alg_str(*a))
            .ok_or(AuthError::AlgNotAllowed)?;
        if parts.header.contains_key("crit") {
            return Err(AuthError::MalformedToken);
        }
        // `cty: JWT` says the payload is another token (RFC 7519 §5.2), which we do not unwrap:
        // refuse rather than read the outer claims that a nesting-aware party would not.
        if parts
            .header
            .get("cty")
            .and_then(Value::as_str)
            .is_some_and(|c| c.eq_ignore_ascii_case("JWT"))
        {
            return Err(AuthError::MalformedToken);
        }
        // Dates must be integer Unix seconds (see the module comment). The library treats an
        // unparsable `exp` as missing and rounds floats; checked here so that every
        // non-integer is `malformed_token`, and the `exp` we cache by is the one it checked.
        for c in ["exp", "nbf", "iat"] {
            if parts.payload.get(c).is_some_and(|v| v.as_u64().is_none()) {
                return Err(AuthError::MalformedToken);
            }
        }
        let remote = self.remote.as_ref().map(|r| r.keys.load_full());
        let remote = remote.as_ref().and_then(|o| o.as_deref());
        if self.static_keys.is_empty() && remote.is_none() {
            return Err(AuthError::KeysUnavailable);
        }
        let key = match parts.header.get("kid") {
            Some(Value::String(kid)) => self
                .static_keys
                .by_kid
                .get(kid)
                .or_else(|| remote.and_then(|r| r.by_kid.get(kid)))
                .ok_or(AuthError::UnknownKey)?,
            Some(_) => return Err(AuthError::MalformedToken),
            None => {
                // Without a kid, only an unambiguous key of the right family is tried: never
                // "try every key" (a CPU amplification vector).
                let mut c = self
                    .static_keys
                    .no_kid
                    .iter()
                    .chain(remote.iter().flat_map(|r| r.no_kid.iter()))
                    .filter(|k| k.family == alg.family());
                match (c.next(), c.next()) {
                    (Some(k), None) => k,
                    _ => return Err(AuthError::UnknownKey),
                }
            }
        };
        if key.family != alg.family() || key.alg.is_some_and(|a| a != alg) {
            return Err(AuthError::AlgNotAllowed);
        }
        let text = std::str::from_utf8(token).map_err(|_| AuthError::MalformedToken)?;
        // The library verifies the signature and the registered claims; the claims themselves
        // are `parts.payload`, parsed (strictly) from the same bytes the signature covers, so
        // they are not built a second time.
        jsonwebtoken::decode::<de::IgnoredAny>(text, &key.key, &self.validation)
            .map_err(map_error)?;
        let claims = &parts.payload;
        // iat: optional, but when present (an integer, checked above) not in the future.
        if let Some(iat) = claims.get("iat").and_then(Value::as_u64) {
            if iat > now.saturating_add(self.leeway) {
                return Err(AuthError::TokenNotYetValid);
            }
        }
        if self
            .required_claims
            .iter()
            .any(|c| claims.get(c).is_none_or(Value::is_null))
        {
            return Err(AuthError::MissingClaim);
        }
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 && header_safe(s) => s,
            _ => return Err(AuthError::MalformedToken),
        };
        let mut scopes = Vec::new();
        for c in &self.scopes_claims {
            match claims.get(c) {
                Some(Value::String(s)) => {
                    scopes.extend(s.split(' ').filter(|x| !x.is_empty()).map(str::to_string))
                }
                Some(Value::Array(a)) => {
                    scopes.extend(a.iter().filter_map(Value::as_str).map(str::to_string))
                }
                _ => {}
            }
        }
        // Scopes end up in a header: drop anything that is not header-safe.
        scopes.retain(|s| header_safe(s) && s.len() <= 128);
        Ok(Principal {
            method: AuthMethod::Jwt,
            authenticator: self.name.clone(),
            subject: sub.as_str().into(),
            consumer: None,
            key_id: key.kid.as_deref().map(Into::into),
            issuer: claims.get("iss").and_then(Value::as_str).map(Into::into),
            scopes: scopes.into(),
            roles: self
                .roles_claim
                .as_ref()
                .map_or_else(Vec::new, |p| strings_at(claims, p))
                .into(),
            groups: self
                .groups_claim
                .as_ref()
                .map_or_else(Vec::new, |p| strings_at(claims, p))
                .into(),
            claims: self
                .forward_claims
                .iter()
                .filter_map(|name| {
                    let v = match claims.get(name)? {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return None,
                    };
                    (v.len() <= 256 && header_safe(&v)).then(|| (name.clone(), v))
                })
                .collect::<Vec<_>>()
                .into(),
            policy_claims: self
                .policy_claims
                .iter()
                .map(|p| (p.clone(), claim_values(claims, p)))
                .collect::<Vec<_>>()
                .into(),
            expires_at: claims.get("exp").and_then(Value::as_u64),
        })
    }
}

fn header_safe(s: &str) -> bool {
    s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

pub fn alg_str(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

fn map_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => AuthError::BadSignature,
        K::ExpiredSignature => AuthError::TokenExpired,
        K::ImmatureSignature => AuthError::TokenNotYetValid,
        K::InvalidIssuer => AuthError::BadIssuer,
        K::InvalidAudience => AuthError::BadAudience,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            AuthError::AlgNotAllowed
        }
        K::MissingRequiredClaim(c) if c == "iss" => AuthError::BadIssuer,
        K::MissingRequiredClaim(c) if c == "aud" => AuthError::BadAudience,
        K::MissingRequiredClaim(_) => AuthError::MissingClaim,
        K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
            AuthError::BadSignature
        }
        _ => AuthError::MalformedToken,
    }
}

/// Parse a JWKS document into keys. Refuses secrets (`oct`: a JWKS is public), RSA keys
/// [`rsa_key_checks`] refuses, keys whose `alg` is outside `allowed`, and two keys with one
/// `kid` (which one would verify?). Errors are for the config compiler and the JWKS fetcher.
pub fn keys_from_jwks(json: &[u8], allowed: &[Algorithm]) -> Result<Vec<JwtKey>, String> {
    let set: JwkSet =
        serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out: Vec<JwtKey> = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        // Encryption keys (`use: enc`, RSA-OAEP…) sit in many IdPs' JWKS (Keycloak publishes
        // one by default) and can never verify a signature: skipped, not an error. Every
        // other key must be usable, or the whole document is refused.
        if is_encryption_key(jwk) {
            continue;
        }
        let key = key_from_jwk(jwk, allowed).map_err(|e| format!("keys[{i}]: {e}"))?;
        if let Some(kid) = &key.kid {
            if out.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                return Err(format!("keys[{i}]: duplicate kid {kid:?}"));
            }
        }
        out.push(key);
    }
    if out.is_empty() {
        return Err("the JWKS holds no signature keys".into());
    }
    Ok(out)
}

fn is_encryption_key(jwk: &Jwk) -> bool {
    use jsonwebtoken::jwk::{KeyAlgorithm, PublicKeyUse};
    matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
        || matches!(
            jwk.common.key_algorithm,
            Some(KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256)
        )
}

/// Big-endian unsigned integer without its leading zero bytes.
fn trim_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// The RSA public keys we accept, by modulus `n` and exponent `e` (big-endian, no leading
/// zeros): what aws-lc verifies with (RFC 7518 §3.3 asks for ≥ 2048 bits; the library's
/// verifiers take 2048–8192; aws-lc wants an odd `e` from 3 to 2^33 − 1). A key outside these
/// bounds can never verify a token, and e = 1 or a short modulus would let anyone forge one
/// with a lax verifier — refuse it when it is loaded, with the reason.
fn rsa_key_checks(n: &[u8], e: &[u8]) -> Result<(), String> {
    let bits = n.first().map_or(0, |&top| {
        (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
    });
    if bits < 2048 {
        return Err(format!("RSA key of {bits} bits is too weak (minimum 2048)"));
    }
    if bits > 8192 {
        return Err(format!(
            "RSA key of {bits} bits is too large (maximum 8192)"
        ));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA modulus is even: not an RSA key".into());
    }
    let e_val = match e.len() {
        1..=5 => e.iter().fold(0u64, |a, &b| a << 8 | u64::from(b)),
        _ => u64::MAX,
    };
    if e_val < 3 || e_val & 1 == 0 || e_val >= 1 << 33 {
        return Err("RSA exponent must be odd and between 3 and 2^33 - 1".into());
    }
    Ok(())
}

fn key_from_jwk(jwk: &Jwk, allowed: &[Algorithm]) -> Result<JwtKey, String> {
    // RSA components, decoded and checked here; the key is built from them below (with leading
    // zero bytes removed: some IdPs emit them, and aws-lc refuses such components).
    let mut rsa: Option<(Vec<u8>, Vec<u8>)> = None;
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = b64url_decode(p.n.as_bytes()).ok_or("invalid RSA modulus")?;
            let e = b64url_decode(p.e.as_bytes()).ok_or("invalid RSA exponent")?;
            let (n, e) = (trim_zeros(&n), trim_zeros(&e));
            rsa_key_checks(n, e)?;
            rsa = Some((n.to_vec(), e.to_vec()));
            AlgorithmFamily::Rsa
        }
        AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
        AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are not accepted from a JWKS; use hmac_secret".into())
        }
        _ => return Err("unsupported key type".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => {
            let a: Algorithm = format!("{ka:?}")
                .parse()
                .map_err(|_| format!("unsupported alg {ka:?}"))?;
            if !allowed.contains(&a) {
                return Err(format!("alg {} is not in algorithms", alg_str(a)));
            }
            if a.family() != family {
                return Err("alg does not match the key type".into());
            }
            Some(a)
        }
    };
    let key = match &rsa {
        Some((n, e)) => DecodingKey::from_rsa_raw_components(n, e),
        None => DecodingKey::from_jwk(jwk).map_err(|_| "invalid key parameters".to_string())?,
    };
    Ok(JwtKey {
        kid: jwk.common.key_id.clone(),
        family,
        alg,
        key,
    })
}

/// A public key from PEM: RSA, EC or Ed25519, whichever parses. RSA keys get the same checks
/// as in a JWKS ([`rsa_key_checks`]).
pub fn key_from_pem(pem: &[u8], kid: Option<String>) -> Result<JwtKey, String> {
    let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        // The library keeps the PKCS#1 RSAPublicKey DER; anything else (a private key, a
        // certificate) could never verify.
        let DecodingKeyKind::SecretOrDer(der) = k.kind() else {
            return Err("not an RSA public key".into());
        };
        let rsa = openssl::rsa::Rsa::public_key_from_der_pkcs1(der)
            .map_err(|_| "not an RSA public key (a private key or a certificate?)".to_string())?;
        rsa_key_checks(&rsa.n().to_vec(), &rsa.e().to_vec())?;
        (AlgorithmFamily::Rsa, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        (AlgorithmFamily::Ec, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        (AlgorithmFamily::Ed, k)
    } else {
        return Err("not an RSA, EC or Ed25519 public key in PEM format".into());
    };
    Ok(JwtKey {
        kid,
        family,
        alg: None,
        key,
    })
}

/// An HMAC key. The caller checks the length (≥ 32 bytes); a secret of only whitespace (a
/// file of blanks, an unset template) is refused too: it is a configuration mistake, not a key.
pub fn key_from_secret(secret: &[u8], kid: Option<String>) -> Result<JwtKey, String> {
    if secret.iter().all(u8::is_ascii_whitespace) {
        return Err("the secret is blank (only whitespace)".into());
    }
    Ok(JwtKey {
        kid,
        family: AlgorithmFamily::Hmac,
        alg: None,
        key: DecodingKey::from_secret(secret).map_err(|_| "unusable HMAC secret".to_string())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_keys_in_a_jwks_are_skipped() {
        let pem = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/jwt/rsa.key"
        ))
        .unwrap();
        let enc = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
        let mut sig =
            serde_json::to_value(Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap()).unwrap();
        sig["kid"] = "sig-1".into();
        let mut oaep = sig.clone();
        oaep["kid"] = "enc-1".into();
        oaep["alg"] = "RSA-OAEP".into();
        oaep["use"] = "enc".into();
        let mut use_enc = sig.clone();
        use_enc["kid"] = "enc-2".into();
        use_enc["use"] = "enc".into();
        let doc = serde_json::json!({ "keys": [oaep, sig, use_enc] }).to_string();
        let keys = keys_from_jwks(doc.as_bytes(), &[Algorithm::RS256]).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig-1"));
        // Only encryption keys: nothing to verify with.
        let only = serde_json::json!({ "keys": [oaep] }).to_string();
        assert!(keys_from_jwks(only.as_bytes(), &[Algorithm::RS256]).is_err());
    }

    #[test]
    fn base64url() {
        assert_eq!(b64url_decode(b"").unwrap(), b"");
        assert_eq!(b64url_decode(b"Zg").unwrap(), b"f");
        assert_eq!(b64url_decode(b"Zm8").unwrap(), b"fo");
        assert_eq!(b64url_decode(b"Zm9v").unwrap(), b"foo");
        assert_eq!(b64url_decode(b"-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(b64url_decode(b"Zm9v=").is_none());
        assert!(b64url_decode(b"Z").is_none());
        assert!(b64url_decode(b"Zm+v").is_none());
        // Spare bits set: the same bytes in another text.
        assert!(b64url_decode(b"Zh").is_none());
        assert!(b64url_decode(b"Zm9").is_none());
        assert!(b64url_decode(b"Zm-").is_none());
    }

    #[test]
    fn duplicate_json_keys_are_malformed() {
        let seg = |j: &str| {
            let s: String = j
                .as_bytes()
                .chunks(3)
                .flat_map(|c| {
                    const A: &[u8; 64] =
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                    let n = c.iter().fold(0u32, |a, &b| a << 8 | b as u32) << (8 * (3 - c.len()));
                    (0..=c.len()).map(move |i| A[(n >> (18 - 6 * i) & 63) as usize] as char)
                })
                .collect();
            s
        };
        let tok = |h: &str, p: &str| format!("{}.{}.x", seg(h), seg(p));
        let h = r#"{"alg":"RS256"}"#;
        // Without duplicates, exactly what serde_json's own `Value` makes (numbers stay numbers
        // whatever serde_json features another crate turns on).
        let doc = r#"{"sub":"a","exp":5,"neg":-2,"f":1.5,"big":18446744073709551616,"x":[1,{"y":null,"z":true}],"s":"\u00e9"}"#;
        let p = split(tok(h, doc).as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Value::Object(p.payload),
            serde_json::from_str::<Value>(doc).unwrap()
        );
        for (h2, p) in [
            (r#"{"alg":"none","alg":"RS256"}"#, r#"{"sub":"a"}"#),
            (h, r#"{"sub":"a","sub":"b"}"#),
            (h, r#"{"sub":"a","s\u0075b":"b"}"#),
            (h, r#"{"sub":"a","x":{"y":1,"y":2}}"#),
            (h, r#"{"sub":"a","x":[[{"y":1,"y":2}]]}"#),
        ] {
            assert!(
                matches!(split(tok(h2, p).as_bytes()), Err(AuthError::MalformedToken)),
                "{h2} {p}"
            );
        }
    }

    #[test]
    fn rsa_key_bounds() {
        let n = |bits: usize| {
            let mut v = vec![0xffu8; bits.div_ceil(8)];
            v[0] = 0xff >> (v.len() * 8 - bits);
            v
        };
        let f4 = [1, 0, 1];
        assert!(rsa_key_checks(&n(2048), &f4).is_ok());
        assert!(rsa_key_checks(&n(8192), &[3]).is_ok());
        assert!(rsa_key_checks(&n(2047), &f4)
            .unwrap_err()
            .contains("2047 bits"));
        assert!(rsa_key_checks(&n(8193), &f4)
            .unwrap_err()
            .contains("too large"));
        let mut even = n(2048);
        *even.last_mut().unwrap() = 0xfe;
        assert!(rsa_key_checks(&even, &f4).is_err());
        for e in [
            &[1u8][..],
            &[2],
            &[1, 0, 0],
            &[2, 0, 0, 0, 1],
            &[1, 0, 0, 0, 0, 1],
            &[],
        ] {
            assert!(rsa_key_checks(&n(2048), e).is_err(), "{e:?}");
        }
        assert!(rsa_key_checks(&n(2048), &[1, 0xff, 0xff, 0xff, 0xff]).is_ok());
        assert!(key_from_secret(b"   \t\n  ", None).is_err());
    }

    fn principal(exp: u64) -> Principal {
        Principal {
            method: crate::auth::AuthMethod::Jwt,
            authenticator: "t".into(),
            subject: "s".into(),
            consumer: None,
            key_id: None,
            issuer: None,
            scopes: Arc::new([]),
            roles: Arc::new([]),
            groups: Arc::new([]),
            claims: Arc::new([]),
            policy_claims: Arc::new([]),
            expires_at: Some(exp),
        }
    }

    #[test]
    fn token_cache_counts_entries_and_stays_bounded() {
        let c = TokenCache::new(8);
        let p = principal(100);
        assert!(matches!(c.get(b"a", 10, 0), Lookup::Miss));
        assert_eq!(c.put(b"a", &p, 0, false), 1);
        assert!(matches!(c.get(b"a", 10, 0), Lookup::Hit(_)));
        // Expired, or verified under an older key set: stale, and replaced in place.
        assert!(matches!(c.get(b"a", 100, 0), Lookup::Stale));
        assert!(matches!(c.get(b"a", 10, 1), Lookup::Stale));
        assert_eq!(c.put(b"a", &p, 1, true), 1);
        for i in 0..100u32 {
            let t = format!("token-{i}");
            c.put(t.as_bytes(), &p, 1, false);
            assert!(c.len() <= 8, "{}", c.len());
        }
        assert!(c.len() >= 4, "evictions over-counted: {}", c.len());
    }

    #[test]
    fn refused_tokens_are_remembered_per_key_set_and_bounded() {
        let c = TokenCache::new(10_000);
        assert_eq!(c.refused.len(), REFUSED_SLOTS);
        assert_eq!(c.refused(b"bad", 0), None);
        c.refuse(b"bad", 0, AuthError::BadSignature);
        c.refuse(b"old", 0, AuthError::TokenExpired);
        assert_eq!(c.refused(b"bad", 0), Some(AuthError::BadSignature));
        assert_eq!(c.refused(b"old", 0), Some(AuthError::TokenExpired));
        // Another key set: the verdict no longer applies.
        assert_eq!(c.refused(b"bad", 1), None);
        // Only verdicts that cannot change are kept (a token not valid *yet* may become so;
        // an unknown key may appear in the next JWKS).
        c.refuse(b"early", 0, AuthError::TokenNotYetValid);
        c.refuse(b"nokey", 0, AuthError::UnknownKey);
        assert_eq!(c.refused(b"early", 0), None);
        assert_eq!(c.refused(b"nokey", 0), None);
        // A flood of distinct bad tokens only overwrites slots: nothing grows, and an entry
        // may be forgotten (then the token is simply verified again).
        for i in 0..100_000u32 {
            c.refuse(format!("flood-{i}").as_bytes(), 0, AuthError::BadSignature);
        }
        assert_eq!(c.refused.len(), REFUSED_SLOTS);
        let remembered = (99_000..100_000u32)
            .filter(|i| c.refused(format!("flood-{i}").as_bytes(), 0).is_some())
            .count();
        assert!(remembered > 700, "{remembered}");
        // A small cache gets a small table.
        assert_eq!(TokenCache::new(100).refused.len(), 128);
    }
}
