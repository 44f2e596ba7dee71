//! Compile step: validates a [`RawConfig`] and builds the runtime model.
//!
//! It collects *every* problem with its YAML path instead of stopping at the first, so an
//! operator fixes a broken file in one round. It builds nothing that touches the network
//! except name resolution of upstream targets (blocking, but only at load time).

use super::raw::LimitCount;
use super::raw::{
    AuthMethodName, Balance, ClaimValues, HashOn, HealthKind, Method, PathCase, PolicyMode,
    RawApiKey, RawConfig, RawListener, RawPolicy, RawRoute, RawUpstream,
};
use super::{Config, H2Settings, Issue, Limits, Listener, ListenerTls, ProcessSettings, Snapshot};
use crate::auth::api_key::{parse_hex32, ApiKeyAuth, ApiKeyEntry};
use crate::auth::jwt::{self as jwtmod, JwtAuth, JwtKey};
use crate::auth::AuthMethod;
use crate::auth::Authenticator;
use crate::authz::Policy;
use crate::clientip::{Cidr, CidrSet};
use crate::ratelimit::{KeyPart, LimitPolicy};
use crate::route::normalize::{normalize_host, normalize_path};
use crate::route::{HostSpec, PathSpec, Route, Router, ALL_METHODS};
use crate::upstream::{HashKey, HealthSettings, Pool, PoolSpec, Timeouts, UpstreamTls};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod audit;
mod limits;
pub use limits::{parse_rate, DEFAULT_EXPECTED_KEYS};
use limits::{rate_limits, redis_backend};

pub const DEFAULT_ADMIN: &str = "127.0.0.1:9100";
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_H2_STREAMS: u32 = 100;
/// Pingora's HTTP/1 parser stops at this many header fields (`MAX_HEADERS`).
pub const PARSER_MAX_HEADERS: usize = 256;

struct Ctx<'a> {
    issues: Vec<Issue>,
    warnings: Vec<Issue>,
    base: &'a Path,
    /// Claim paths named in any policy's `claims:`; JWT authenticators extract these.
    policy_claims: Vec<Arc<str>>,
}

impl Ctx<'_> {
    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Issue {
            path: super::escape_controls(&path.into()),
            message: super::escape_controls(&message.into()),
        });
    }

    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        // Paths and messages may quote YAML keys and values: one issue, one line.
        self.issues.push(Issue {
            path: super::escape_controls(&path.into()),
            message: super::escape_controls(&message.into()),
        });
    }

    fn file(&mut self, path: &str, value: &str) -> Option<PathBuf> {
        let p = self.base.join(value);
        match std::fs::File::open(&p) {
            Ok(_) => Some(p),
            Err(e) => {
                self.err(path, format!("cannot read {}: {e}", p.display()));
                None
            }
        }
    }
}

pub fn compile(raw: &RawConfig, base: &Path) -> Result<Config, Vec<Issue>> {
    let mut cx = Ctx {
        issues: Vec::new(),
        warnings: Vec::new(),
        base,
        policy_claims: policy_claim_paths(raw),
    };
    let process = process_settings(&mut cx, raw);
    let trusted = trusted_proxies(&mut cx, raw);
    let limits = limits(&mut cx, raw);
    let authenticators = authenticators(&mut cx, raw);
    let pools = pools(&mut cx, raw);
    let policies = policies(&mut cx, raw);
    let redis = redis_backend(&mut cx, raw);
    let limits_by_name = rate_limits(&mut cx, raw, redis.as_ref());
    let router = routes(
        &mut cx,
        raw,
        &pools,
        &authenticators,
        &policies,
        &limits_by_name,
    );
    if !cx.issues.is_empty() {
        return Err(cx.issues);
    }
    Ok(Config {
        warnings: cx.warnings,
        process,
        source_sha256: String::new(),
        snapshot: Snapshot {
            generation: 0,
            router,
            pools,
            authenticators,
            trusted_proxies: trusted,
            client_ip_header: raw.server.client_ip_header,
            limits,
            redis,
        },
    })
}

fn process_settings(cx: &mut Ctx, raw: &RawConfig) -> ProcessSettings {
    let s = &raw.server;
    let mut listeners = Vec::new();
    let mut seen = HashSet::new();
    if s.listen.is_empty() {
        cx.err("server.listen", "at least one listener is required");
    }
    for (i, l) in s.listen.iter().enumerate() {
        let path = format!("server.listen[{i}]");
        if let Some(listener) = listener(cx, &path, l) {
            if !seen.insert(listener.addr) {
                cx.err(
                    format!("{path}.addr"),
                    format!("duplicate listener {}", l.addr),
                );
            }
            listeners.push(listener);
        }
    }
    let admin_str = s.admin.as_deref().unwrap_or(DEFAULT_ADMIN);
    let admin = match admin_str.parse::<SocketAddr>() {
        Ok(a) => {
            if !a.ip().is_loopback() {
                cx.warn(
                    "server.admin",
                    format!("{a} is not a loopback address: /metrics is reachable from the network (make sure a firewall restricts it)"),
                );
            }
            if listeners.iter().any(|l| l.addr.port() == a.port()) {
                cx.err(
                    "server.admin",
                    format!("admin address {a} shares a port with a proxy listener; the admin endpoint must never be reachable on a public listener"),
                );
            }
            a
        }
        Err(_) => {
            cx.err(
                "server.admin",
                format!("invalid address {admin_str:?}: expected ip:port like \"127.0.0.1:9100\""),
            );
            DEFAULT_ADMIN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9100)))
        }
    };
    let threads = match s.threads {
        Some(0) => {
            cx.err("server.threads", "must be at least 1");
            1
        }
        Some(n) if n > 1024 => {
            cx.err("server.threads", "must be at most 1024");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let upgrade_sock = s
        .upgrade_sock
        .clone()
        .unwrap_or_else(|| "/tmp/portcullis_upgrade.sock".into());
    if let Some(dir) = Path::new(&upgrade_sock).parent() {
        use std::os::unix::fs::PermissionsExt;
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(m) = std::fs::metadata(dir) {
            if m.permissions().mode() & 0o022 != 0 {
                cx.warn(
                    "server.upgrade_sock",
                    format!("{} is writable by other users: during a binary upgrade another local user could race for the socket (upgrades then abort) — use a private directory such as /run/portcullis", dir.display()),
                );
            }
        }
    }
    ProcessSettings {
        listeners,
        admin,
        threads,
        pid_file: s
            .pid_file
            .clone()
            .unwrap_or_else(|| "/tmp/portcullis.pid".into()),
        upgrade_sock,
        grace_period: s.grace_period.map_or(Duration::from_secs(30), |d| d.0),
        graceful_shutdown_timeout: s
            .graceful_shutdown_timeout
            .map_or(Duration::from_secs(5), |d| d.0),
        audit: raw.audit.as_ref().and_then(|a| audit::settings(cx, a, raw)),
        watch_config: s.watch_config,
        h2: h2_settings(cx, raw),
    }
}

/// A secret from `{ env: VAR }` or `{ file: PATH }` (never inline in the YAML).
fn secret_bytes(cx: &mut Ctx, sp: &str, sec: &super::raw::RawSecret) -> Option<Vec<u8>> {
    match (&sec.env, &sec.file) {
        (Some(var), None) => match std::env::var(var) {
            Ok(v) => Some(v.into_bytes()),
            Err(_) => {
                cx.err(sp, format!("environment variable {var} is not set"));
                None
            }
        },
        (None, Some(f)) => cx.file(sp, f).and_then(|p| match super::read_file(&p) {
            Ok(mut b) => {
                // A trailing newline from `echo > file` is not part of the secret.
                while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                    b.pop();
                }
                Some(b)
            }
            Err(e) => {
                cx.err(sp, format!("cannot read {}: {e}", p.display()));
                None
            }
        }),
        _ => {
            cx.err(
                sp,
                "exactly one of env or file is required (secrets never go in the YAML)",
            );
            None
        }
    }
}

fn listener(cx: &mut Ctx, path: &str, l: &RawListener) -> Option<Listener> {
    let addr = match l.addr.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(
                format!("{path}.addr"),
                format!(
                    "invalid address {:?}: expected ip:port like \"0.0.0.0:8080\"",
                    l.addr
                ),
            );
            None
        }
    };
    let tls = l.tls.as_ref().and_then(|t| {
        let cert = cx.file(&format!("{path}.tls.cert"), &t.cert);
        let key = cx.file(&format!("{path}.tls.key"), &t.key);
        let client_auth = match (&t.client_ca, t.client_auth) {
            (None, None) => None,
            (None, Some(_)) => {
                cx.err(format!("{path}.tls.client_auth"), "requires client_ca");
                return None;
            }
            (Some(ca), mode) => {
                let cap = format!("{path}.tls.client_ca");
                let file = cx.file(&cap, ca)?;
                let ok = super::read_file(&file)
                    .ok()
                    .and_then(|pem| pingora::tls::x509::X509::stack_from_pem(&pem).ok())
                    .is_some_and(|v| !v.is_empty());
                if !ok {
                    cx.err(&cap, format!("{} holds no PEM certificate", file.display()));
                    return None;
                }
                Some((file, mode.unwrap_or(super::raw::ClientAuth::Optional)))
            }
        };
        let (cert, key) = (cert?, key?);
        match crate::tls::load_pair(&cert, &key) {
            Err(e) => {
                cx.err(format!("{path}.tls"), e);
                return None;
            }
            Ok(pair) if pair.expired() => cx.warn(
                format!("{path}.tls.cert"),
                format!(
                    "{}: the certificate has expired: clients will refuse it",
                    cert.display()
                ),
            ),
            Ok(_) => {}
        }
        Some(ListenerTls {
            cert,
            key,
            client_auth,
        })
    });
    if l.tls.is_some() && tls.is_none() {
        return None;
    }
    Some(Listener { addr: addr?, tls })
}

fn trusted_proxies(cx: &mut Ctx, raw: &RawConfig) -> CidrSet {
    let mut v = Vec::new();
    for (i, c) in raw.server.trusted_proxies.iter().enumerate() {
        match Cidr::parse(c) {
            Ok(cidr) if cidr.prefix_len() == 0 => cx.err(
                format!("server.trusted_proxies[{i}]"),
                format!("{c:?} trusts every address, so anyone could forge X-Forwarded-For; list your proxies' networks"),
            ),
            Ok(c) => v.push(c),
            Err(e) => cx.err(format!("server.trusted_proxies[{i}]"), e),
        }
    }
    CidrSet::new(v)
}

fn limits(cx: &mut Ctx, raw: &RawConfig) -> Limits {
    let l = &raw.server.limits;
    let max_header_bytes = l
        .max_header_bytes
        .map_or(DEFAULT_MAX_HEADER_BYTES as u64, |s| s.0);
    if !(1024..=1024 * 1024).contains(&max_header_bytes) {
        cx.err(
            "server.limits.max_header_bytes",
            "must be between 1KiB and 1MiB",
        );
    }
    // Unset: 8 KiB, or less when the whole header section may not be that large.
    let max_uri_bytes = l
        .max_uri_bytes
        .map_or((DEFAULT_MAX_URI_BYTES as u64).min(max_header_bytes), |s| {
            s.0
        });
    if !(256..=max_header_bytes.max(256)).contains(&max_uri_bytes) {
        cx.err(
            "server.limits.max_uri_bytes",
            "must be between 256B and max_header_bytes (the request line is part of the header section)",
        );
    }
    let max_headers = l.max_headers.unwrap_or(DEFAULT_MAX_HEADERS);
    if !(1..=PARSER_MAX_HEADERS).contains(&max_headers) {
        cx.err(
            "server.limits.max_headers",
            format!("must be between 1 and {PARSER_MAX_HEADERS} (the HTTP/1 parser refuses more with a bare 400)"),
        );
    }
    let mut timeout =
        |field: &str, v: Option<&super::units::DurationStr>, default: Duration, max: Duration| {
            let d = v.map_or(default, |d| d.0);
            if d < Duration::from_millis(100) || d > max {
                cx.err(
                    format!("server.limits.{field}"),
                    format!("must be between 100ms and {}s", max.as_secs()),
                );
            }
            d
        };
    Limits {
        max_uri_bytes: max_uri_bytes as usize,
        max_header_bytes: max_header_bytes as usize,
        max_headers,
        max_body_bytes: l.max_body_bytes.map_or(DEFAULT_MAX_BODY_BYTES, |s| s.0),
        header_timeout: timeout(
            "header_timeout",
            l.header_timeout.as_ref(),
            DEFAULT_HEADER_TIMEOUT,
            Duration::from_secs(300),
        ),
        idle_timeout: timeout(
            "idle_timeout",
            l.idle_timeout.as_ref(),
            DEFAULT_IDLE_TIMEOUT,
            Duration::from_secs(3600),
        ),
        // Pingora closes a keep-alive connection idle for 60 s on its own.
        keepalive_timeout: timeout(
            "keepalive_timeout",
            l.keepalive_timeout.as_ref(),
            DEFAULT_KEEPALIVE_TIMEOUT,
            Duration::from_secs(60),
        ),
    }
}

fn h2_settings(cx: &mut Ctx, raw: &RawConfig) -> H2Settings {
    let l = &raw.server.limits;
    let streams = l.h2_max_concurrent_streams.unwrap_or(DEFAULT_H2_STREAMS);
    if !(1..=1000).contains(&streams) {
        cx.err(
            "server.limits.h2_max_concurrent_streams",
            "must be between 1 and 1000",
        );
    }
    let header_bytes = l
        .max_header_bytes
        .map_or(DEFAULT_MAX_HEADER_BYTES as u64, |s| s.0)
        .min(u32::MAX as u64) as u32;
    H2Settings {
        max_concurrent_streams: streams,
        max_header_list_size: header_bytes,
        idle_timeout: l
            .keepalive_timeout
            .as_ref()
            .map_or(DEFAULT_KEEPALIVE_TIMEOUT, |d| d.0),
    }
}

fn authenticators(cx: &mut Ctx, raw: &RawConfig) -> BTreeMap<String, Arc<Authenticator>> {
    let mut out = BTreeMap::new();
    for (name, a) in &raw.authenticators {
        let path = format!("authenticators.{name}");
        if !valid_name(name) {
            cx.err(
                &path,
                "authenticator names use letters, digits, '-', '_' or '.' (at most 64)",
            );
            continue;
        }
        let kinds = [a.api_key.is_some(), a.jwt.is_some(), a.mtls.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            cx.err(&path, "exactly one of api_key, jwt or mtls is required");
            continue;
        }
        if let Some(j) = &a.jwt {
            if let Some(auth) = jwt(cx, &format!("{path}.jwt"), name, j) {
                out.insert(name.clone(), Arc::new(Authenticator::Jwt(Box::new(auth))));
            }
        }
        if let Some(m) = &a.mtls {
            use super::raw::MtlsIdentity as I;
            use crate::auth::mtls::{Identity, MtlsAuth};
            let identity = match m.identity {
                I::SanUri => Identity::SanUri,
                I::SanDns => Identity::SanDns,
                I::SubjectCn => Identity::SubjectCn,
            };
            if !raw
                .server
                .listen
                .iter()
                .any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca.is_some()))
            {
                cx.err(
                    format!("{path}.mtls"),
                    "no listener has tls.client_ca, so no client certificate can ever be presented",
                );
            }
            out.insert(
                name.clone(),
                Arc::new(Authenticator::Mtls(MtlsAuth {
                    name: name.as_str().into(),
                    identity,
                })),
            );
        }
        if let Some(k) = &a.api_key {
            if let Some(auth) = api_key(cx, &format!("{path}.api_key"), name, k) {
                out.insert(
                    name.clone(),
                    Arc::new(Authenticator::ApiKey(Box::new(auth))),
                );
            }
        }
    }
    out
}

fn to_alg(a: super::raw::JwtAlg) -> Algorithm {
    use super::raw::JwtAlg as J;
    match a {
        J::HS256 => Algorithm::HS256,
        J::HS384 => Algorithm::HS384,
        J::HS512 => Algorithm::HS512,
        J::RS256 => Algorithm::RS256,
        J::RS384 => Algorithm::RS384,
        J::RS512 => Algorithm::RS512,
        J::PS256 => Algorithm::PS256,
        J::PS384 => Algorithm::PS384,
        J::PS512 => Algorithm::PS512,
        J::ES256 => Algorithm::ES256,
        J::ES384 => Algorithm::ES384,
        J::EdDSA => Algorithm::EdDSA,
    }
}

fn jwt(cx: &mut Ctx, path: &str, name: &str, j: &super::raw::RawJwt) -> Option<JwtAuth> {
    let before = cx.issues.len();
    let mut algorithms: Vec<Algorithm> = Vec::new();
    for a in &j.algorithms {
        let a = to_alg(*a);
        if !algorithms.contains(&a) {
            algorithms.push(a);
        }
    }
    if algorithms.is_empty() {
        cx.err(
            format!("{path}.algorithms"),
            "at least one algorithm is required",
        );
        return None;
    }
    let hmac = algorithms
        .iter()
        .any(|a| a.family() == AlgorithmFamily::Hmac);
    let public = algorithms
        .iter()
        .any(|a| a.family() != AlgorithmFamily::Hmac);
    if hmac && public {
        cx.err(
            format!("{path}.algorithms"),
            "do not mix HMAC (HS*) and public-key algorithms in one authenticator; use two authenticators",
        );
    }
    let remote = j.jwks.as_ref().and_then(|w| {
        let wp = format!("{path}.jwks");
        let ok_url = w.url.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some()
        });
        if !ok_url {
            cx.err(
                format!("{wp}.url"),
                format!(
                    "invalid URL {:?}: expected http(s)://host[:port]/path",
                    w.url
                ),
            );
            return None;
        }
        let refresh = w.refresh.map_or(Duration::from_secs(600), |d| d.0);
        let min_refetch = w.min_refetch.map_or(Duration::from_secs(30), |d| d.0);
        if min_refetch < Duration::from_millis(100) || min_refetch > refresh {
            cx.err(
                format!("{wp}.min_refetch"),
                "must be at least 100ms and at most refresh",
            );
            return None;
        }
        Some(crate::auth::jwks::remote_for(
            &w.url,
            name,
            &algorithms,
            refresh,
            min_refetch,
        ))
    });
    if let Some(i) = &j.issuer {
        if i.is_empty() {
            cx.err(format!("{path}.issuer"), "must not be empty");
        }
    }
    let mut keys: Vec<JwtKey> = Vec::new();
    // Digests of every key source read, for the token cache's identity (see keep_cache_of).
    let mut material = String::new();
    let mut digest = |bytes: &[u8]| {
        match crate::auth::api_key::sha256(bytes) {
            Some(d) => material.push_str(&crate::auth::api_key::hex(&d)),
            // Never let key material drop out of the identity: no digest, no shared cache.
            None => material.push_str(&format!("unhashed-{}", rand::random::<u64>())),
        }
        material.push(',');
    };
    for (i, k) in j.keys.iter().enumerate() {
        let kp = format!("{path}.keys[{i}].pem_file");
        let Some(file) = cx.file(&kp, &k.pem_file) else {
            continue;
        };
        match super::read_file(&file)
            .map_err(|e| e.to_string())
            .and_then(|pem| {
                digest(&pem);
                jwtmod::key_from_pem(&pem, k.kid.clone())
            }) {
            Ok(key) => keys.push(key),
            Err(e) => cx.err(&kp, format!("{}: {e}", file.display())),
        }
    }
    if let Some(f) = &j.jwks_file {
        let fp = format!("{path}.jwks_file");
        if let Some(file) = cx.file(&fp, f) {
            match super::read_file(&file)
                .map_err(|e| e.to_string())
                .and_then(|doc| {
                    digest(&doc);
                    jwtmod::keys_from_jwks(&doc, &algorithms)
                }) {
                Ok(ks) => keys.extend(ks),
                Err(e) => cx.err(&fp, format!("{}: {e}", file.display())),
            }
        }
    }
    if let Some(sec) = &j.hmac_secret {
        let sp = format!("{path}.hmac_secret");
        let bytes = secret_bytes(cx, &sp, sec);
        if let Some(b) = bytes {
            digest(&b);
            if b.len() < 32 {
                cx.err(&sp, "the secret must be at least 32 bytes (RFC 7518 §3.2)");
            } else {
                match jwtmod::key_from_secret(&b, sec.kid.clone()) {
                    Ok(k) => keys.push(k),
                    Err(e) => cx.err(&sp, e),
                }
            }
        }
    }
    if hmac && j.hmac_secret.is_none() {
        cx.err(format!("{path}.hmac_secret"), "required for HS* algorithms");
    }
    if !hmac && j.hmac_secret.is_some() {
        cx.err(
            format!("{path}.hmac_secret"),
            "only used with HS* algorithms",
        );
    }
    if public && j.keys.is_empty() && j.jwks_file.is_none() && j.jwks.is_none() {
        cx.err(path, "public-key algorithms need keys, jwks_file or jwks");
    }
    for k in &keys {
        if !algorithms.iter().any(|a| a.family() == k.family) {
            cx.err(
                path,
                format!(
                    "key {:?} is of a type none of the algorithms uses",
                    k.kid.as_deref().unwrap_or("(no kid)")
                ),
            );
        }
    }
    let mut kids = HashSet::new();
    for k in &keys {
        if let Some(kid) = &k.kid {
            if !kids.insert(kid.clone()) {
                cx.err(path, format!("duplicate kid {kid:?}"));
            }
        }
    }
    let leeway = j.leeway.map_or(30, |d| d.0.as_secs());
    if leeway > 300 {
        cx.err(format!("{path}.leeway"), "must be at most 5m");
    }
    let max_token_bytes = j.max_token_bytes.map_or(8192, |b| b.0);
    if !(512..=65536).contains(&max_token_bytes) {
        cx.err(
            format!("{path}.max_token_bytes"),
            "must be between 512 and 64KiB",
        );
    }
    let cache_entries = j.token_cache.unwrap_or(10_000);
    if cache_entries > 1_000_000 {
        cx.err(format!("{path}.token_cache"), "must be at most 1000000");
    }
    if cx.issues.len() != before {
        return None;
    }
    let header = match &j.header {
        None => None,
        Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) if n != http::header::AUTHORIZATION && n != http::header::COOKIE => Some(n),
            _ => {
                cx.err(
                    format!("{path}.header"),
                    format!("invalid header name {h:?}"),
                );
                None
            }
        },
    };
    if let Some(c) = &j.cookie {
        if c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            cx.err(
                format!("{path}.cookie"),
                format!("invalid cookie name {c:?}"),
            );
        }
    }
    for (i, c) in j.forward_claims.iter().enumerate() {
        if c.is_empty()
            || c.len() > 64
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            cx.err(
                format!("{path}.forward_claims[{i}]"),
                format!("invalid claim name {c:?} (letters, digits, - and _)"),
            );
        }
    }
    if cx.issues.len() != before {
        return None;
    }
    let mut o = jwtmod::JwtOptions::new(algorithms);
    o.issuer = j.issuer.clone();
    o.audiences = j.audiences.clone();
    o.leeway = leeway;
    o.max_token_bytes = max_token_bytes as usize;
    if let Some(sc) = &j.scopes_claim {
        o.scopes_claims = sc.clone();
    }
    o.forward_token = j.forward_token;
    o.cache_entries = cache_entries;
    o.cookie = j.cookie.clone();
    o.header = header;
    o.roles_claim = j.roles_claim.clone();
    o.groups_claim = j.groups_claim.clone();
    o.forward_claims = j.forward_claims.clone();
    o.required_claims = j.required_claims.clone();
    o.policy_claims = cx.policy_claims.clone();
    let definition = format!(
        "{name}|{o:?}|{material}|{:?}|{:?}",
        keys.iter().map(|k| (&k.kid, k.alg)).collect::<Vec<_>>(),
        remote.as_ref().map(|r| Arc::as_ptr(r) as usize)
    );
    Some(JwtAuth::new(name, o, keys, remote).keep_cache_of(&definition))
}

/// Characters allowed in values that end up in identity headers (consumer, scopes, groups).
fn header_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@*+=".contains(&b))
}

fn api_key(cx: &mut Ctx, path: &str, name: &str, k: &RawApiKey) -> Option<ApiKeyAuth> {
    let before = cx.issues.len();
    let header_name = k.header.as_deref().unwrap_or("x-api-key");
    let header = match http::HeaderName::from_bytes(header_name.as_bytes()) {
        Ok(h)
            if h != http::header::HOST
                && h != http::header::CONTENT_LENGTH
                && h != http::header::TRANSFER_ENCODING =>
        {
            h
        }
        _ => {
            cx.err(
                format!("{path}.header"),
                format!("invalid header name {header_name:?}"),
            );
            return None;
        }
    };
    if let Some(q) = &k.query {
        if q.is_empty()
            || !q
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            cx.err(
                format!("{path}.query"),
                format!("invalid query parameter name {q:?}"),
            );
        }
    }
    if k.keys.is_empty() {
        cx.err(format!("{path}.keys"), "at least one key is required");
    }
    let mut keys = HashMap::new();
    let mut ids = HashSet::new();
    for (i, e) in k.keys.iter().enumerate() {
        let kp = format!("{path}.keys[{i}]");
        if !valid_name(&e.id) {
            cx.err(format!("{kp}.id"), format!("invalid key id {:?}", e.id));
        } else if !ids.insert(e.id.as_str()) {
            cx.err(format!("{kp}.id"), format!("duplicate key id {:?}", e.id));
        }
        let digest = parse_hex32(&e.sha256);
        if digest.is_none() {
            cx.err(
                format!("{kp}.sha256"),
                "must be the 64 hex digits of the key's SHA-256 (portcullis keygen prints it)",
            );
        }
        if !header_safe(&e.consumer) {
            cx.err(
                format!("{kp}.consumer"),
                format!(
                    "invalid consumer {:?}: letters, digits and -_.:/@*+= only",
                    e.consumer
                ),
            );
        }
        for (j, v) in e.scopes.iter().enumerate() {
            if !header_safe(v) {
                cx.err(format!("{kp}.scopes[{j}]"), format!("invalid scope {v:?}"));
            }
        }
        for (j, v) in e.groups.iter().enumerate() {
            if !header_safe(v) {
                cx.err(format!("{kp}.groups[{j}]"), format!("invalid group {v:?}"));
            }
        }
        for (j, v) in e.roles.iter().enumerate() {
            if !header_safe(v) {
                cx.err(format!("{kp}.roles[{j}]"), format!("invalid role {v:?}"));
            }
        }
        let expires_at = match &e.expires {
            None => None,
            Some(t) => match crate::auth::time::parse_rfc3339(t) {
                Ok(v) => Some(v),
                Err(m) => {
                    cx.err(format!("{kp}.expires"), m);
                    None
                }
            },
        };
        if let Some(d) = digest {
            let entry = Arc::new(ApiKeyEntry {
                id: e.id.as_str().into(),
                consumer: e.consumer.as_str().into(),
                scopes: e.scopes.clone().into(),
                groups: e.groups.clone().into(),
                roles: e.roles.clone().into(),
                expires_at,
                disabled: e.disabled,
            });
            if keys.insert(d, entry).is_some() {
                cx.err(format!("{kp}.sha256"), "the same key hash appears twice");
            }
        }
    }
    if cx.issues.len() != before {
        return None;
    }
    Some(ApiKeyAuth {
        name: name.into(),
        header,
        query: k.query.clone(),
        keys,
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn pools(cx: &mut Ctx, raw: &RawConfig) -> BTreeMap<String, Arc<Pool>> {
    let mut out = BTreeMap::new();
    for (name, u) in &raw.upstreams {
        let path = format!("upstreams.{name}");
        if !valid_name(name) {
            cx.err(
                &path,
                "upstream names use letters, digits, '-', '_' or '.' (at most 64)",
            );
            continue;
        }
        if let Some(spec) = pool_spec(cx, &path, name, u) {
            out.insert(name.clone(), Pool::shared(spec));
        }
    }
    out
}

fn pool_spec(cx: &mut Ctx, path: &str, name: &str, u: &RawUpstream) -> Option<PoolSpec> {
    let before = cx.issues.len();
    if u.targets.is_empty() {
        cx.err(format!("{path}.targets"), "at least one target is required");
    }
    let mut targets = Vec::new();
    for (i, t) in u.targets.iter().enumerate() {
        let tpath = format!("{path}.targets[{i}]");
        let weight = t.weight.unwrap_or(1);
        if !(1..=1000).contains(&weight) {
            cx.err(format!("{tpath}.weight"), "must be between 1 and 1000");
        }
        let addr = match t.addr.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            // Names are resolved once, here; the first address is used.
            Err(_) => match t.addr.to_socket_addrs() {
                Ok(mut it) => it.next(),
                Err(_) => None,
            },
        };
        match addr {
            Some(a) if targets.iter().any(|(x, _)| *x == a) => {
                cx.err(&tpath, format!("duplicate target {}", t.addr))
            }
            Some(a) => targets.push((a, weight as usize)),
            None => cx.err(
                &tpath,
                format!("cannot resolve target {:?}: expected host:port", t.addr),
            ),
        }
    }
    let hash_key = match (u.balance, u.hash_on, &u.hash_header) {
        (Balance::ConsistentHash, None | Some(HashOn::ClientIp), None) => HashKey::ClientIp,
        (Balance::ConsistentHash, Some(HashOn::Path), None) => HashKey::Path,
        (Balance::ConsistentHash, Some(HashOn::Header), Some(h)) => {
            match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => HashKey::Header(h),
                Err(_) => {
                    cx.err(
                        format!("{path}.hash_header"),
                        format!("invalid header name {h:?}"),
                    );
                    HashKey::ClientIp
                }
            }
        }
        (Balance::ConsistentHash, Some(HashOn::Header), None) => {
            cx.err(
                format!("{path}.hash_header"),
                "required when hash_on is header",
            );
            HashKey::ClientIp
        }
        (Balance::ConsistentHash, Some(_), Some(_)) => {
            cx.err(
                format!("{path}.hash_header"),
                "only used when hash_on is header",
            );
            HashKey::ClientIp
        }
        (_, None, None) => HashKey::ClientIp,
        (_, _, _) => {
            cx.err(
                format!("{path}.hash_on"),
                "hash_on and hash_header are only used with balance: consistent_hash",
            );
            HashKey::ClientIp
        }
    };
    let t = &u.timeouts;
    let d = Timeouts::default();
    let timeouts = Timeouts {
        connect: t.connect.map_or(d.connect, |x| x.0),
        read: t.read.map_or(d.read, |x| x.0),
        write: t.write.map_or(d.write, |x| x.0),
        idle: t.idle.map_or(d.idle, |x| x.0),
    };
    for (field, v) in [
        ("connect", timeouts.connect),
        ("read", timeouts.read),
        ("write", timeouts.write),
        ("idle", timeouts.idle),
    ] {
        if v.is_zero() {
            cx.err(format!("{path}.timeouts.{field}"), "must be greater than 0");
        }
    }
    let retries = u.retries.unwrap_or(1);
    if retries > 10 {
        cx.err(format!("{path}.retries"), "must be at most 10");
    }
    let tls = u.tls.as_ref().and_then(|t| {
        if normalize_host(t.sni.as_bytes()).ok().as_deref() != Some(t.sni.as_str()) {
            cx.err(
                format!("{path}.tls.sni"),
                format!(
                    "invalid server name {:?}: a lower-case host name without port",
                    t.sni
                ),
            );
        }
        if t.verify == Some(false) {
            cx.warn(
                format!("{path}.tls.verify"),
                "certificate verification is off: anyone on the path can impersonate this upstream",
            );
        }
        let mut ca_digest = 0u64;
        let ca = match &t.ca_file {
            None => None,
            Some(f) => {
                let fpath = format!("{path}.tls.ca_file");
                let file = cx.file(&fpath, f)?;
                let pem = match super::read_file(&file) {
                    Ok(p) => p,
                    Err(e) => {
                        cx.err(&fpath, format!("cannot read {}: {e}", file.display()));
                        return None;
                    }
                };
                ca_digest = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    pem.hash(&mut h);
                    h.finish()
                };
                match pingora::tls::x509::X509::stack_from_pem(&pem) {
                    Ok(certs) if !certs.is_empty() => Some(Arc::new(certs.into_boxed_slice())),
                    _ => {
                        cx.err(
                            &fpath,
                            format!("{} holds no PEM certificate", file.display()),
                        );
                        return None;
                    }
                }
            }
        };
        Some(UpstreamTls {
            sni: t.sni.clone(),
            verify: t.verify.unwrap_or(true),
            ca,
            ca_digest,
        })
    });
    let health = u.health_check.as_ref().map(|h| {
        let hp = format!("{path}.health_check");
        let hpath = h.path.clone().unwrap_or_else(|| "/healthz".into());
        if h.kind == HealthKind::Http
            && (!hpath.starts_with('/') || hpath.parse::<http::Uri>().is_err())
        {
            cx.err(format!("{hp}.path"), format!("invalid path {hpath:?}"));
        }
        if h.kind == HealthKind::Tcp && (h.path.is_some() || h.host.is_some()) {
            cx.err(&hp, "path and host are only used with type: http");
        }
        let interval = h.interval.map_or(Duration::from_secs(5), |d| d.0);
        if interval < Duration::from_millis(100) {
            cx.err(format!("{hp}.interval"), "must be at least 100ms");
        }
        let timeout = h.timeout.map_or(Duration::from_secs(1), |d| d.0);
        if timeout.is_zero() {
            cx.err(format!("{hp}.timeout"), "must be greater than 0");
        }
        let healthy_threshold = h.healthy_threshold.unwrap_or(1);
        let unhealthy_threshold = h.unhealthy_threshold.unwrap_or(1);
        for (f, v) in [
            ("healthy_threshold", healthy_threshold),
            ("unhealthy_threshold", unhealthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                cx.err(format!("{hp}.{f}"), "must be between 1 and 100");
            }
        }
        HealthSettings {
            kind: h.kind,
            path: hpath,
            host: h.host.clone().unwrap_or_else(|| "localhost".into()),
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
        }
    });
    if cx.issues.len() != before {
        return None;
    }
    Some(PoolSpec {
        name: name.to_string(),
        targets,
        balance: u.balance,
        hash_key,
        timeouts,
        retries,
        tls,
        health,
    })
}

fn host_spec(cx: &mut Ctx, path: &str, h: &str) -> Option<HostSpec> {
    if let Some(rest) = h.strip_prefix("*.") {
        match normalize_host(rest.as_bytes()) {
            Ok(n) if n == rest && !rest.contains('*') && !rest.contains(':') => {
                return Some(HostSpec::Wildcard(format!(".{n}")))
            }
            _ => {}
        }
    } else if let Ok(n) = normalize_host(h.as_bytes()) {
        if (h.starts_with('[') || !h.contains(':')) && n == h {
            return Some(HostSpec::Exact(n));
        }
    }
    cx.err(
        path,
        format!("invalid host {h:?}: use a lower-case name without port, or \"*.example.com\""),
    );
    None
}

fn path_spec(cx: &mut Ctx, path: &str, p: &str) -> Option<String> {
    match normalize_path(p.as_bytes()) {
        Ok(n) if n == p && !p.contains('?') => {
            // Stored without a trailing slash; matching treats `/a` and `/a/` alike.
            let s = if p.len() > 1 {
                p.trim_end_matches('/').to_string()
            } else {
                p.to_string()
            };
            Some(s)
        }
        Ok(n) => {
            cx.err(
                path,
                format!("path {p:?} is not in normal form (did you mean {n:?}?)"),
            );
            None
        }
        Err(e) => {
            cx.err(path, format!("invalid path {p:?}: {e}"));
            None
        }
    }
}

fn routes(
    cx: &mut Ctx,
    config: &RawConfig,
    pools: &BTreeMap<String, Arc<Pool>>,
    authenticators: &BTreeMap<String, Arc<Authenticator>>,
    policies: &BTreeMap<String, Arc<Policy>>,
    limits: &BTreeMap<String, Arc<LimitPolicy>>,
) -> Router {
    let raw: &[RawRoute] = &config.routes;
    let mut used_limits: HashSet<&str> = HashSet::new();
    let insensitive = config.server.path_case == PathCase::Insensitive;
    let mut router = Router::new(insensitive);
    let mut used_policies: HashSet<String> = HashSet::new();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    // (host, path) → [(route index, id, methods)] to detect overlaps.
    type Group = Vec<(usize, String, u8)>;
    let mut groups: HashMap<(HostSpec, PathSpec), Group> = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let path = format!("routes[{i}]");
        let before = cx.issues.len();
        if !valid_name(&r.id) {
            cx.err(
                format!("{path}.id"),
                format!(
                    "invalid route id {:?}: letters, digits, '-', '_' or '.' (at most 64)",
                    r.id
                ),
            );
        } else if let Some(prev) = ids.insert(&r.id, i) {
            cx.err(
                format!("{path}.id"),
                format!("duplicate route id {:?} (also routes[{prev}])", r.id),
            );
        }
        let pool = pools.get(&r.upstream).cloned();
        if pool.is_none() {
            cx.err(
                format!("{path}.upstream"),
                format!("unknown upstream {:?}", r.upstream),
            );
        }
        match (r.public, r.authn.is_empty()) {
            (true, false) => cx.err(
                format!("{path}.public"),
                "a route is either public or has authn, not both",
            ),
            (false, true) => cx.err(
                &path,
                "route must name authenticators in authn or say public: true (default deny)",
            ),
            _ => {}
        }
        let mut authn = Vec::new();
        for (j, a) in r.authn.iter().enumerate() {
            match authenticators.get(a) {
                Some(x) if authn.iter().any(|y: &Arc<Authenticator>| Arc::ptr_eq(x, y)) => cx.err(
                    format!("{path}.authn[{j}]"),
                    format!("authenticator {a:?} listed twice"),
                ),
                Some(x) => authn.push(x.clone()),
                // Defined but invalid: its own errors are already reported.
                None if config.authenticators.contains_key(a) => {}
                None => cx.err(
                    format!("{path}.authn[{j}]"),
                    format!("unknown authenticator {a:?}"),
                ),
            }
        }
        let (policy, shadow) =
            route_policy(cx, &path, r, config, policies, &authn, &mut used_policies);
        let mut rate_limits: Vec<Arc<LimitPolicy>> = Vec::new();
        for (j, name) in r.rate_limits.iter().enumerate() {
            let lpath = format!("{path}.rate_limits[{j}]");
            match limits.get(name) {
                Some(l) if rate_limits.iter().any(|x| Arc::ptr_eq(x, l)) => {
                    cx.err(lpath, format!("rate limit {name:?} listed twice"))
                }
                Some(l) => {
                    let api_keys = authn
                        .iter()
                        .any(|a| matches!(**a, Authenticator::ApiKey(_)));
                    if !r.public
                        && !api_keys
                        && l.key
                            .iter()
                            .any(|k| matches!(k, KeyPart::Consumer | KeyPart::ApiKey))
                    {
                        cx.warn(
                            &lpath,
                            format!("policy {name:?} keys on consumer or api_key, which only API-key authenticators provide: callers of this route use its fallback key"),
                        );
                    }
                    if r.public && l.key.iter().any(KeyPart::needs_principal) {
                        cx.warn(
                            &lpath,
                            format!("route is public: policy {name:?} keys on the caller's identity, so every request uses its fallback key"),
                        );
                    }
                    if r.public && l.count == LimitCount::AuthFailures {
                        cx.err(
                            lpath,
                            "count: auth_failures policies need a route with authn (a public route has no failed authentications)",
                        );
                    } else {
                        used_limits.insert(name.as_str());
                        rate_limits.push(l.clone());
                    }
                }
                None if config.rate_limits.contains_key(name) => {}
                None => cx.err(lpath, format!("unknown rate limit {name:?}")),
            }
        }
        let m = &r.matcher;
        let pspec = match (&m.path, &m.path_prefix) {
            (Some(p), None) => path_spec(cx, &format!("{path}.match.path"), p).map(PathSpec::Exact),
            (None, Some(p)) => {
                path_spec(cx, &format!("{path}.match.path_prefix"), p).map(PathSpec::Prefix)
            }
            (Some(_), Some(_)) => {
                cx.err(
                    format!("{path}.match"),
                    "use either path or path_prefix, not both",
                );
                None
            }
            (None, None) => {
                cx.err(
                    format!("{path}.match"),
                    "one of path or path_prefix is required (use path_prefix: / for everything)",
                );
                None
            }
        };
        if r.strip_prefix && m.path_prefix.is_none() {
            cx.err(format!("{path}.strip_prefix"), "requires match.path_prefix");
        }
        let mut hosts = Vec::new();
        for (j, h) in m.hosts.iter().enumerate() {
            if let Some(hs) = host_spec(cx, &format!("{path}.match.hosts[{j}]"), h) {
                if hosts.contains(&hs) {
                    cx.err(
                        format!("{path}.match.hosts[{j}]"),
                        format!("duplicate host {h:?}"),
                    );
                }
                hosts.push(hs);
            }
        }
        if hosts.is_empty() {
            hosts.push(HostSpec::Any);
        }
        let methods = if m.methods.is_empty() {
            ALL_METHODS
        } else {
            m.methods.iter().fold(0u8, |acc, m: &Method| acc | m.bit())
        };
        if cx.issues.len() != before {
            continue;
        }
        let (Some(pool), Some(mut pspec)) = (pool, pspec) else {
            continue;
        };
        if insensitive {
            // One spelling per route: `/Admin` and `/admin` are the same route, and two routes
            // differing only in case are reported as overlapping below.
            pspec = match pspec {
                PathSpec::Exact(p) => PathSpec::Exact(p.to_ascii_lowercase()),
                PathSpec::Prefix(p) => PathSpec::Prefix(p.to_ascii_lowercase()),
            };
        }
        let strip_prefix = match (&pspec, r.strip_prefix) {
            (PathSpec::Prefix(p), true) => Some(p.clone()),
            _ => None,
        };
        let route = Arc::new(Route {
            id: r.id.as_str().into(),
            pool,
            public: r.public,
            authn,
            strip_prefix,
            methods,
            websocket: r.websocket,
            policy,
            shadow,
            rate_limits,
            metrics: Default::default(),
        });
        for h in &hosts {
            let key = (h.clone(), pspec.clone());
            let group = groups.entry(key).or_default();
            if let Some((j, other, _)) = group.iter().find(|(_, _, om)| om & methods != 0) {
                cx.err(
                    format!("{path}.match"),
                    format!(
                        "overlaps route {other:?} (routes[{j}]): same host, path and method; the winner would be ambiguous"
                    ),
                );
                continue;
            }
            group.push((i, r.id.clone(), methods));
            router.insert(h, &pspec, route.clone());
        }
    }
    for name in limits.keys() {
        if !used_limits.contains(name.as_str()) {
            cx.warn(
                format!("rate_limits.{name}"),
                "rate limit is not used by any route",
            );
        }
    }
    for name in policies.keys() {
        if !used_policies.contains(name.as_str()) {
            cx.warn(
                format!("policies.{name}"),
                "policy is not used by any route",
            );
        }
    }
    router
}

/// Claim paths used by `claims:` conditions anywhere in the config (named and inline policies).
fn policy_claim_paths(raw: &RawConfig) -> Vec<Arc<str>> {
    let mut set = std::collections::BTreeSet::new();
    for p in raw.policies.values() {
        set.extend(p.claims.keys().cloned());
    }
    for r in &raw.routes {
        if let Some(p) = &r.authz {
            set.extend(p.claims.keys().cloned());
        }
    }
    // Rate-limit keys on claims read them from the same extracted set.
    for l in raw.rate_limits.values() {
        for k in l.key.items() {
            if let Some(c) = k.strip_prefix("claim:") {
                set.insert(c.to_string());
            }
        }
    }
    set.into_iter().map(|s| Arc::from(s.as_str())).collect()
}

fn policies(cx: &mut Ctx, raw: &RawConfig) -> BTreeMap<String, Arc<Policy>> {
    let mut out = BTreeMap::new();
    for (name, p) in &raw.policies {
        let path = format!("policies.{name}");
        if !valid_name(name) {
            cx.err(
                &path,
                "policy names use letters, digits, '-', '_' or '.' (at most 64)",
            );
            continue;
        }
        if let Some(policy) = policy(cx, &path, p) {
            out.insert(name.clone(), Arc::new(policy));
        }
    }
    out
}

/// Values compared against credentials: non-empty, no control characters, bounded.
fn policy_value_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= 256 && !v.chars().any(char::is_control)
}

fn policy(cx: &mut Ctx, path: &str, p: &RawPolicy) -> Option<Policy> {
    use crate::authz::ClaimRule;
    let before = cx.issues.len();
    let mut lists = |field: &str, v: &[String]| -> Vec<String> {
        for (i, x) in v.iter().enumerate() {
            if !policy_value_ok(x) {
                cx.err(
                    format!("{path}.{field}[{i}]"),
                    format!("invalid value {x:?}"),
                );
            }
        }
        v.to_vec()
    };
    let scopes_all = lists("scopes_all", &p.scopes_all);
    let scopes_any = lists("scopes_any", &p.scopes_any);
    let roles_all = lists("roles_all", &p.roles_all);
    let roles_any = lists("roles_any", &p.roles_any);
    let groups_all = lists("groups_all", &p.groups_all);
    let groups_any = lists("groups_any", &p.groups_any);
    let mut claims = Vec::new();
    for (k, v) in &p.claims {
        let kp = format!("{path}.claims.{k}");
        if k.is_empty() || k.len() > 256 || k.starts_with('.') || k.ends_with('.') {
            cx.err(&kp, "invalid claim path");
            continue;
        }
        let accepted: Vec<String> = match v {
            ClaimValues::One(x) => vec![x.text()],
            ClaimValues::Many(xs) => xs.iter().map(|x| x.text()).collect(),
        };
        if accepted.is_empty() || accepted.iter().any(|a| !policy_value_ok(a)) {
            cx.err(&kp, "needs one or more non-empty values");
            continue;
        }
        claims.push(ClaimRule {
            path: k.as_str().into(),
            accepted,
        });
    }
    let mut auth_methods = Vec::new();
    for m in &p.auth_methods {
        let m = match m {
            AuthMethodName::ApiKey => AuthMethod::ApiKey,
            AuthMethodName::Jwt => AuthMethod::Jwt,
            AuthMethodName::Mtls => AuthMethod::Mtls,
        };
        if !auth_methods.contains(&m) {
            auth_methods.push(m);
        }
    }
    let cidrs = |cx: &mut Ctx, field: &str, v: &[String]| -> CidrSet {
        let mut out = Vec::new();
        for (i, c) in v.iter().enumerate() {
            match Cidr::parse(c) {
                Ok(c) => out.push(c),
                Err(m) => cx.err(format!("{path}.client_ips.{field}[{i}]"), m),
            }
        }
        CidrSet::new(out)
    };
    let (ip_allow, ip_deny) = match &p.client_ips {
        Some(r) => {
            if r.allow.is_empty() && r.deny.is_empty() {
                cx.err(
                    format!("{path}.client_ips"),
                    "needs allow or deny (or remove it)",
                );
            }
            (cidrs(cx, "allow", &r.allow), cidrs(cx, "deny", &r.deny))
        }
        None => (CidrSet::default(), CidrSet::default()),
    };
    let policy = Policy {
        name: path.to_string(),
        ip_allow,
        ip_deny,
        auth_methods,
        scopes_all,
        scopes_any,
        roles_all,
        roles_any,
        groups_all,
        groups_any,
        claims,
        shadow: p.mode == Some(PolicyMode::Shadow),
    };
    if cx.issues.len() == before
        && !policy.needs_principal()
        && policy.ip_allow.is_empty()
        && policy.ip_deny.is_empty()
    {
        cx.err(
            path,
            "policy has no conditions (authentication alone needs no policy)",
        );
    }
    (cx.issues.len() == before).then_some(policy)
}

/// Resolve a route's `policy:`/`authz:`/`mode:` and check they fit the route.
fn route_policy(
    cx: &mut Ctx,
    path: &str,
    r: &RawRoute,
    config: &RawConfig,
    policies: &BTreeMap<String, Arc<Policy>>,
    authn: &[Arc<Authenticator>],
    used: &mut HashSet<String>,
) -> (Option<Arc<Policy>>, bool) {
    let policy = match (&r.policy, &r.authz) {
        (Some(_), Some(_)) => {
            cx.err(
                format!("{path}.authz"),
                "use either policy (a named policy) or authz (inline), not both",
            );
            None
        }
        (Some(name), None) => {
            used.insert(name.clone());
            match policies.get(name) {
                Some(p) => Some(p.clone()),
                None if config.policies.contains_key(name) => None,
                None => {
                    cx.err(format!("{path}.policy"), format!("unknown policy {name:?}"));
                    None
                }
            }
        }
        (None, Some(raw)) => policy(cx, &format!("{path}.authz"), raw).map(Arc::new),
        (None, None) => None,
    };
    let route_shadow = r.mode == Some(PolicyMode::Shadow);
    if route_shadow && r.policy.is_none() && r.authz.is_none() {
        cx.err(
            format!("{path}.mode"),
            "shadow mode applies to an authorization policy; this route has none",
        );
    }
    if let Some(p) = &policy {
        if r.public && p.needs_principal() {
            cx.err(
                format!("{path}.public"),
                "a public route has no authenticated caller; its policy may only use client_ips",
            );
        }
        if !p.auth_methods.is_empty()
            && !authn.is_empty()
            && !authn.iter().any(|a| p.auth_methods.contains(&a.method()))
        {
            cx.err(
                format!("{path}.authn"),
                "none of these authenticators produces an authentication method the policy allows; the route could never be used",
            );
        }
    }
    let shadow = route_shadow || policy.as_ref().is_some_and(|p| p.shadow);
    (policy, shadow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        match super::super::load_str(yaml, Path::new(".")) {
            Ok(_) => vec![],
            Err(e) => e.lines(),
        }
    }

    const BASE: &str = r#"
server:
  listen: [{ addr: "127.0.0.1:18080" }]
upstreams:
  orders: { targets: ["127.0.0.1:9001"] }
"#;

    #[test]
    fn minimal_config_compiles() {
        let y = format!("{BASE}routes:\n  - {{ id: a, match: {{ path_prefix: / }}, upstream: orders, public: true }}\n");
        assert!(errors(&y).is_empty(), "{:?}", errors(&y));
    }

    #[test]
    fn collects_all_errors_with_paths() {
        let y = format!(
            r#"{BASE}routes:
  - {{ id: a, match: {{ path_prefix: /a }}, upstream: ordrs, public: true }}
  - {{ id: a, match: {{ path_prefix: /b }}, upstream: orders, public: true }}
  - {{ id: c, match: {{ path_prefix: /c }}, upstream: orders }}
  - {{ id: d, match: {{ path: /d/../e }}, upstream: orders, public: true }}
  - {{ id: e, match: {{ path_prefix: /e, hosts: ["Bad Host"] }}, upstream: orders, public: true }}
"#
        );
        let e = errors(&y);
        let want = [
            "routes[0].upstream: unknown upstream \"ordrs\"",
            "routes[1].id: duplicate route id \"a\" (also routes[0])",
            "routes[2]: route must name authenticators in authn or say public: true (default deny)",
            "routes[3].match.path: path \"/d/../e\" is not in normal form (did you mean \"/e\"?)",
            "routes[4].match.hosts[0]: invalid host",
        ];
        for w in want {
            assert!(
                e.iter().any(|l| l.starts_with(w)),
                "missing {w:?} in {e:#?}"
            );
        }
    }

    #[test]
    fn overlapping_routes_are_rejected() {
        let y = format!(
            r#"{BASE}routes:
  - {{ id: a, match: {{ path_prefix: /a, methods: [GET] }}, upstream: orders, public: true }}
  - {{ id: b, match: {{ path_prefix: /a/, methods: [POST] }}, upstream: orders, public: true }}
  - {{ id: c, match: {{ path_prefix: /a }}, upstream: orders, public: true }}
"#
        );
        let e = errors(&y);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("routes[2].match: overlaps route \"a\""),
            "{e:?}"
        );
    }

    #[test]
    fn syntax_errors_have_paths() {
        let y =
            "server:\n  listen: [{ addr: \"127.0.0.1:1\" }]\n  limits: { max_body_bytes: 10XB }\n";
        let e = errors(y);
        assert!(
            e[0].starts_with("server.limits.max_body_bytes: invalid size"),
            "{e:?}"
        );
        let y = "server:\n  listen: [{ addr: \"127.0.0.1:1\", tls_: 1 }]\n";
        let e = errors(y);
        assert!(
            e[0].starts_with("server.listen[0]: unknown field `tls_`"),
            "{e:?}"
        );
    }
}
