//! Raw configuration: serde structs that mirror the YAML file exactly.
//!
//! Nothing here is trusted or cross-checked; `compile.rs` turns these into the runtime
//! [`Snapshot`](super::Snapshot). Every struct denies unknown fields so a typo (`pth:`) is a
//! config error with its path instead of a silently ignored setting. Security-relevant choices
//! are enums, so an unknown value is a parse error too.

use super::units::{ByteSize, DurationStr};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Named authenticators that routes reference in `authn`.
    #[serde(default)]
    pub authenticators: BTreeMap<String, RawAuthenticator>,
    /// Named authorization policies that routes reference with `policy:`.
    #[serde(default)]
    pub policies: BTreeMap<String, RawPolicy>,
    /// Named rate-limit policies that routes reference in `rate_limits`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RawRateLimit>,
    /// The shared Redis server for `backend: redis` policies.
    pub redis: Option<RawRedis>,
    /// The audit trail: one record per request.
    pub audit: Option<RawAudit>,
}

/// Exactly one of the fields is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthenticator {
    pub api_key: Option<RawApiKey>,
    pub jwt: Option<RawJwt>,
    pub mtls: Option<RawMtls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// Required `iss` value; also selects this authenticator when a route lists several.
    pub issuer: Option<String>,
    /// Accepted `aud` values (the token needs one of them). Empty = `aud` not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allow-list; the token's `alg` must be one of these. Never inferred from the token.
    pub algorithms: Vec<JwtAlg>,
    /// Static public keys (PEM files: RSA, EC or Ed25519).
    #[serde(default)]
    pub keys: Vec<RawJwtKey>,
    /// A JWKS document on disk.
    pub jwks_file: Option<String>,
    /// A JWKS URL fetched in the background (see docs/authentication.md).
    pub jwks: Option<RawJwksUrl>,
    /// Shared secret for HS256/384/512, from an environment variable or a file — never inline.
    pub hmac_secret: Option<RawSecret>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`. Default 30s.
    pub leeway: Option<DurationStr>,
    /// Larger tokens are refused unparsed. Default 8KiB.
    pub max_token_bytes: Option<ByteSize>,
    /// Claims holding scopes (space-separated string or array). Default [scope, scp].
    pub scopes_claim: Option<Vec<String>>,
    /// Send the `Authorization` header upstream. Default false (removed).
    #[serde(default)]
    pub forward_token: bool,
    /// Verified-token cache entries (0 disables). Default 10000.
    pub token_cache: Option<usize>,
    /// Also accept the token from this cookie (in addition to `Authorization: Bearer`).
    pub cookie: Option<String>,
    /// Also accept the token (no `Bearer ` prefix) from this header.
    pub header: Option<String>,
    /// Claim (dot path, e.g. `realm_access.roles`) holding roles → `X-Portcullis-Roles`.
    pub roles_claim: Option<String>,
    /// Claim (dot path) holding groups → `X-Portcullis-Groups`.
    pub groups_claim: Option<String>,
    /// Claims that must be present (besides `exp` and `sub`, which always are).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Top-level claims forwarded as `X-Portcullis-Claim-<name>` (strings, numbers, booleans).
    #[serde(default)]
    pub forward_claims: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwksUrl {
    pub url: String,
    /// Regular refresh (upper bound for `Cache-Control: max-age`). Default 10m.
    pub refresh: Option<DurationStr>,
    /// Lower bound between fetches, also for refetches on an unknown `kid`. Default 30s.
    pub min_refetch: Option<DurationStr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtKey {
    pub kid: Option<String>,
    pub pem_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub env: Option<String>,
    pub file: Option<String>,
    pub kid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// Header carrying the key (case-insensitive). Default `x-api-key`.
    pub header: Option<String>,
    /// Optional query parameter carrying the key (exact name).
    pub query: Option<String>,
    pub keys: Vec<RawApiKeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeyEntry {
    pub id: String,
    /// Lower-case hex SHA-256 of the key. The key itself never appears in the config.
    pub sha256: String,
    pub consumer: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// RFC 3339 time after which the key is refused (`key_expired`).
    pub expires: Option<String>,
    /// A disabled key is refused (`key_disabled`) but stays in the file for the record.
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Vec<RawListener>,
    /// Admin listener for /metrics, /healthz, /readyz. Default `127.0.0.1:9100`.
    pub admin: Option<String>,
    /// Worker threads of the proxy service. Default: number of CPUs.
    pub threads: Option<usize>,
    /// Peers whose `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and
    /// `X-Request-Id` are believed. Everyone else's are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub limits: RawLimits,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    /// How long an old process keeps serving in-flight requests after SIGQUIT/SIGTERM.
    pub grace_period: Option<DurationStr>,
    /// Hard stop for the final shutdown of services after the grace period.
    pub graceful_shutdown_timeout: Option<DurationStr>,
    /// Reload by itself when the config file changes (polled every second). Default false.
    #[serde(default)]
    pub watch_config: bool,
    /// Which header a trusted proxy uses to pass the client address. Default `x_forwarded_for`.
    #[serde(default)]
    pub client_ip_header: ClientIpHeader,
    /// Whether route paths match case-sensitively. Default `sensitive` (RFC 3986); set
    /// `insensitive` when any upstream treats paths case-insensitively.
    #[serde(default)]
    pub path_case: PathCase,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientIpHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=...`.
    Forwarded,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathCase {
    #[default]
    Sensitive,
    Insensitive,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub addr: String,
    pub tls: Option<RawListenerTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub cert: String,
    pub key: String,
    /// PEM bundle of CAs that issue client certificates (enables mTLS on this listener).
    pub client_ca: Option<String>,
    /// `optional` (default with `client_ca`) or `required`.
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// A certificate, if sent, must verify; connections without one are accepted.
    Optional,
    /// The handshake fails without a certificate that verifies.
    Required,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    /// Which certificate field names the caller.
    pub identity: MtlsIdentity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MtlsIdentity {
    SanUri,
    SanDns,
    SubjectCn,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Request target (path and query). Longer → 414.
    pub max_uri_bytes: Option<ByteSize>,
    /// Request line plus all header names and values. Larger → 431.
    pub max_header_bytes: Option<ByteSize>,
    /// Number of request header fields. More → 431.
    pub max_headers: Option<usize>,
    /// Request body. Larger → 413 (declared `Content-Length` or counted chunked body).
    pub max_body_bytes: Option<ByteSize>,
    /// From a connection's accept, or a request's first byte, to its complete header
    /// section. Slower → 408 and the connection closed. Default 10s.
    pub header_timeout: Option<DurationStr>,
    /// Longest pause while reading a request body or writing a response. Default 30s.
    pub idle_timeout: Option<DurationStr>,
    /// Idle keep-alive connection between requests, then closed. Default 60s (at most 60s).
    pub keepalive_timeout: Option<DurationStr>,
    /// HTTP/2 streams open at once per connection (needs a restart). Default 100.
    pub h2_max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub targets: Vec<RawTarget>,
    #[serde(default)]
    pub balance: Balance,
    /// What `consistent_hash` hashes on. Default `client_ip`.
    pub hash_on: Option<HashOn>,
    /// Header name when `hash_on: header`.
    pub hash_header: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Extra attempts on *connect* failure, each to another healthy target. Default 1.
    pub retries: Option<usize>,
    pub tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    ClientIp,
    Header,
    Path,
}

/// A target is either `"127.0.0.1:9001"` or `{ addr: "127.0.0.1:9001", weight: 3 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTarget {
    pub addr: String,
    pub weight: Option<u64>,
}

impl<'de> Deserialize<'de> for RawTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTarget;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or { addr: \"host:port\", weight: N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTarget, E> {
                Ok(RawTarget {
                    addr: v.to_string(),
                    weight: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawTarget, A::Error> {
                let mut addr = None;
                let mut weight = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "addr" => addr = Some(map.next_value::<String>()?),
                        "weight" => weight = Some(map.next_value::<u64>()?),
                        other => return Err(de::Error::unknown_field(other, &["addr", "weight"])),
                    }
                }
                let addr = addr.ok_or_else(|| de::Error::missing_field("addr"))?;
                Ok(RawTarget { addr, weight })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(rename = "type", default)]
    pub kind: HealthKind,
    /// Path for `type: http`. Default `/healthz`.
    pub path: Option<String>,
    /// Host header for `type: http`. Default `localhost`.
    pub host: Option<String>,
    pub interval: Option<DurationStr>,
    pub timeout: Option<DurationStr>,
    /// Consecutive successes to mark a target healthy again. Default 1.
    pub healthy_threshold: Option<usize>,
    /// Consecutive failures to mark a target unhealthy. Default 1.
    pub unhealthy_threshold: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<DurationStr>,
    pub read: Option<DurationStr>,
    pub write: Option<DurationStr>,
    /// How long an idle pooled upstream connection is kept.
    pub idle: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// Server name sent in SNI and checked against the certificate. Required.
    pub sni: String,
    /// Verify the certificate chain and host name. Default true.
    pub verify: Option<bool>,
    /// PEM bundle of CAs to trust instead of the system store.
    pub ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub id: String,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    pub upstream: String,
    /// Explicitly open route. Exactly one of `public: true` or a non-empty `authn` is required.
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub authn: Vec<String>,
    /// Remove the matched `path_prefix` before forwarding (`/api/v1/x` → `/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Allow WebSocket upgrades on this route. Off by default: any `Upgrade` request is 400.
    #[serde(default)]
    pub websocket: bool,
    /// Name of a policy in `policies:` (mutually exclusive with an inline `authz`).
    pub policy: Option<String>,
    /// Inline authorization policy.
    pub authz: Option<RawPolicy>,
    /// `shadow`: authorization denials are counted and logged but the request passes.
    pub mode: Option<PolicyMode>,
    /// Names of rate-limit policies in `rate_limits:`; every one is enforced.
    #[serde(default)]
    pub rate_limits: Vec<String>,
}

/// A rate-limit policy: a key, and a request rate and/or a concurrency cap per key value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// `client_ip`, `consumer`, `subject`, `api_key`, `route`, `header:NAME`, `claim:PATH`,
    /// or a list of these (a composite key).
    pub key: OneOrMany,
    /// `100/s`, `1000/min`, `50000/h`, `10/30s`.
    pub rate: Option<String>,
    /// Concurrent requests per key value.
    pub max_inflight: Option<u32>,
    /// Key used when the request has no value for `key` (anonymous caller, missing header).
    /// `client_ip` (default) or `route`, or a list of both.
    pub fallback: Option<OneOrMany>,
    /// What counts: every admitted request (default), or only failed authentications.
    #[serde(default)]
    pub count: LimitCount,
    /// `shadow`: over-limit requests are counted and logged but pass.
    pub mode: Option<PolicyMode>,
    #[serde(default)]
    pub backend: LimitBackend,
    /// What to do when Redis cannot answer (backend redis). Default: `redis.on_error`.
    pub on_redis_error: Option<OnRedisError>,
    /// Send `RateLimit`/`RateLimit-Policy` on allowed responses too (always on 429s).
    #[serde(default)]
    pub headers: bool,
    /// IPv6 client addresses share a bucket per prefix of this many bits. Default 64 (one
    /// host usually holds a whole /64); 128 buckets each address.
    pub ipv6_prefix: Option<u8>,
    /// Redis only: take this many units per round trip and spend them locally (stricter by at
    /// most `gateways × (lease − 1)` per window, never looser).
    pub lease: Option<u32>,
    /// Distinct key values per window the local sketch is sized for. Default 100000.
    pub expected_keys: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitCount {
    #[default]
    Requests,
    /// Only failed authentications count; once over the limit, the key gets 429 before its
    /// credentials are even checked (credential stuffing).
    AuthFailures,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitBackend {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    /// Let the request through (availability first).
    Allow,
    /// Answer 503 `rate_limit_unavailable` (fail closed).
    Deny,
    /// Enforce the same limit with this gateway's local counters.
    Local,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[user:password@]host:port[/db]`; a password may come from `password_env`.
    pub url: String,
    pub password_env: Option<String>,
    /// Prefix of every key the gateway writes. Default `portcullis:`.
    pub key_prefix: Option<String>,
    /// Per-check deadline. Default 25ms.
    pub timeout: Option<DurationStr>,
    /// Connection attempt deadline. Default 1s.
    pub connect_timeout: Option<DurationStr>,
    /// Default for policies without `on_redis_error`. Default `local`.
    pub on_error: Option<OnRedisError>,
    /// Consecutive failures that open the circuit breaker. Default 3.
    pub breaker_failures: Option<u32>,
    /// How long an open breaker skips Redis before one probe is tried. Default 2s.
    pub breaker_cooldown: Option<DurationStr>,
}

/// An authorization policy: every condition present must hold (AND); within a list, `_any`
/// means one of, `_all` means every one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub scopes_all: Vec<String>,
    #[serde(default)]
    pub scopes_any: Vec<String>,
    #[serde(default)]
    pub roles_all: Vec<String>,
    #[serde(default)]
    pub roles_any: Vec<String>,
    #[serde(default)]
    pub groups_all: Vec<String>,
    #[serde(default)]
    pub groups_any: Vec<String>,
    /// Claim (dot path) → accepted value or values.
    #[serde(default)]
    pub claims: BTreeMap<String, ClaimValues>,
    /// How the caller must have authenticated.
    #[serde(default)]
    pub auth_methods: Vec<AuthMethodName>,
    pub client_ips: Option<RawIpRule>,
    pub mode: Option<PolicyMode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpRule {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    Enforce,
    Shadow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethodName {
    ApiKey,
    Jwt,
    Mtls,
}

/// A claim value in a policy: a scalar or a list of scalars (any of them matches).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ClaimValues {
    One(ClaimScalar),
    Many(Vec<ClaimScalar>),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ClaimScalar {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl ClaimScalar {
    /// The text a claim value is compared against (JSON numbers and booleans as written).
    pub fn text(&self) -> String {
        match self {
            ClaimScalar::Str(s) => s.clone(),
            ClaimScalar::Int(i) => i.to_string(),
            ClaimScalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Vec<Method>,
}

/// HTTP methods a route may allow. `CONNECT` and `TRACE` are deliberately absent: a gateway
/// never tunnels, and TRACE reflects credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
        Method::Options,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }

    pub fn from_http(m: &http::Method) -> Option<Method> {
        Some(match *m {
            http::Method::GET => Method::Get,
            http::Method::HEAD => Method::Head,
            http::Method::POST => Method::Post,
            http::Method::PUT => Method::Put,
            http::Method::PATCH => Method::Patch,
            http::Method::DELETE => Method::Delete,
            http::Method::OPTIONS => Method::Options,
            _ => return None,
        })
    }

    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// JSON-lines file, opened for append (created 0600 if missing).
    pub file: Option<String>,
    /// Also (or only) write records to standard output.
    #[serde(default)]
    pub stdout: bool,
    /// Records the queue holds before `on_overflow` applies. Default 65536.
    pub queue: Option<usize>,
    #[serde(default)]
    pub on_overflow: OnOverflow,
    #[serde(default)]
    pub fsync: FsyncMode,
    /// For `fsync: interval`. Default 1s.
    pub fsync_interval: Option<DurationStr>,
    /// Each record carries the hash of the previous one and its own.
    #[serde(default)]
    pub chain: bool,
    /// HMAC key for the chain (from an environment variable or a file).
    pub hmac_key: Option<RawSecret>,
    /// Request headers copied into records (allow-list); credentials are refused.
    #[serde(default)]
    pub capture_headers: Vec<String>,
    /// A short SHA-256 fingerprint of a bearer token (never the token).
    #[serde(default)]
    pub token_fingerprint: bool,
    /// `drop` (default): no query string; `names`: parameter names only.
    #[serde(default)]
    pub query: AuditQuery,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOverflow {
    /// Count the record as dropped and write a `gap` record as soon as possible.
    #[default]
    Drop,
    /// Fail closed: new requests get 503 while the sink cannot keep up.
    Reject,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    #[default]
    Never,
    Interval,
    Always,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditQuery {
    #[default]
    Drop,
    Names,
}
