//! Prometheus metrics. Recorded from `logging` (one observation per request), from
//! `upstream_peer`/`fail_to_connect` (attempts and errors) and from background services.
//! Served by the admin listener (`/metrics`).
//!
//! Labels are bounded by configuration: route ids, pool names, configured target addresses,
//! a fixed method set, status classes and reason codes. Never raw paths, hosts, tokens or
//! subjects.

use prometheus::IntCounter;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::OnceLock;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    denials: IntCounterVec,
    client_timeouts: IntCounterVec,
    protocol_rejections: IntCounterVec,
    upstream_attempts: IntCounterVec,
    upstream_errors: IntCounterVec,
    healthy_targets: IntGaugeVec,
    config_generation: IntGauge,
    config_reloads: IntCounterVec,
    config_last_success: prometheus::Gauge,
    config_last_ok: IntGauge,
    config_restart_required: IntGauge,
    tls_cert_expiry: IntGaugeVec,
    auth_attempts: IntCounterVec,
    jwks_fetches: IntCounterVec,
    jwks_keys: IntGaugeVec,
    jwks_last_success: IntGaugeVec,
    token_cache: IntCounterVec,
    token_cache_entries: IntGaugeVec,
    authz_decisions: IntCounterVec,
    ratelimit_decisions: IntCounterVec,
    ratelimit_key_fallbacks: IntCounterVec,
    ratelimit_redis_fallbacks: IntCounterVec,
    redis_errors: IntCounterVec,
    redis_duration: prometheus::Histogram,
    redis_connected: IntGauge,
    audit_written: prometheus::IntCounter,
    audit_dropped: IntCounterVec,
    audit_queue: IntGauge,
    audit_write_errors: prometheus::IntCounter,
    audit_last_write: IntGauge,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new(
            "portcullis_requests_total",
            "Requests answered, by route, method and status class",
        ),
        &["route", "method", "status_class"],
    )?;
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "portcullis_request_duration_seconds",
            "Time from request start to the end of the response, by route",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]),
        &["route"],
    )?;
    let denials = IntCounterVec::new(
        Opts::new(
            "portcullis_gateway_responses_total",
            "Responses the gateway wrote itself (rejections and upstream failures), by route and reason",
        ),
        &["route", "reason"],
    )?;
    let client_timeouts = IntCounterVec::new(
        Opts::new(
            "portcullis_client_timeouts_total",
            "Downstream connections cut for slowness, by phase (header: 408 before the header section was complete; keepalive: idle between requests; idle: a stalled body read or response write)",
        ),
        &["phase"],
    )?;
    let protocol_rejections = IntCounterVec::new(
        Opts::new(
            "portcullis_protocol_rejections_total",
            "HTTP/1 requests refused by the protocol layer before any route saw them (unparsable header section: 400; CONNECT: 405), by status",
        ),
        &["status"],
    )?;
    let upstream_attempts = IntCounterVec::new(
        Opts::new(
            "portcullis_upstream_attempts_total",
            "Connection attempts to upstream targets",
        ),
        &["pool", "target"],
    )?;
    let upstream_errors = IntCounterVec::new(
        Opts::new(
            "portcullis_upstream_errors_total",
            "Failed upstream attempts, by kind (connect, timeout, response)",
        ),
        &["pool", "target", "kind"],
    )?;
    let healthy_targets = IntGaugeVec::new(
        Opts::new(
            "portcullis_upstream_healthy_targets",
            "Targets currently passing health checks",
        ),
        &["pool"],
    )?;
    let config_generation = IntGauge::new(
        "portcullis_config_generation",
        "Generation of the configuration snapshot being served (1 = loaded at start)",
    )?;
    let config_reloads = IntCounterVec::new(
        Opts::new(
            "portcullis_config_reloads_total",
            "Config reload attempts by result (ok, rejected)",
        ),
        &["result"],
    )?;
    // Both series exist from the start, so `increase(...{result="rejected"}[5m])` alerts work.
    for r in ["ok", "rejected"] {
        config_reloads.with_label_values(&[r]);
    }
    let config_last_success = prometheus::Gauge::new(
        "portcullis_config_last_reload_success_timestamp_seconds",
        "Unix time the snapshot being served was loaded (start or last successful reload)",
    )?;
    let config_last_ok = IntGauge::new(
        "portcullis_config_last_reload_successful",
        "1 when the last reload attempt succeeded (or none was made), 0 when it was rejected",
    )?;
    let config_restart_required = IntGauge::new(
        "portcullis_config_restart_required",
        "1 when the config file changes settings that only an upgrade or restart applies (listeners, threads, audit)",
    )?;
    let tls_cert_expiry = IntGaugeVec::new(
        Opts::new(
            "portcullis_tls_certificate_expiry_timestamp_seconds",
            "Unix time the certificate a TLS listener serves expires (alert on this minus time())",
        ),
        &["listener"],
    )?;
    let auth_attempts = IntCounterVec::new(
        Opts::new(
            "portcullis_auth_attempts_total",
            "Authentication outcomes by authenticator (\"none\" when no single credential was presented), result and reason",
        ),
        &["authenticator", "result", "reason"],
    )?;
    let jwks_fetches = IntCounterVec::new(
        Opts::new(
            "portcullis_jwks_fetches_total",
            "JWKS URL fetches by authenticator and result (ok, error, invalid)",
        ),
        &["authenticator", "result"],
    )?;
    let jwks_keys = IntGaugeVec::new(
        Opts::new(
            "portcullis_jwks_keys",
            "Keys in the last good JWKS, by authenticator",
        ),
        &["authenticator"],
    )?;
    let jwks_last_success = IntGaugeVec::new(
        Opts::new(
            "portcullis_jwks_last_success_timestamp_seconds",
            "Unix time of the last successful JWKS fetch (alert on time() minus this)",
        ),
        &["authenticator"],
    )?;
    let token_cache = IntCounterVec::new(
        Opts::new(
            "portcullis_token_cache_total",
            "Verified-token cache lookups by authenticator and result (hit, miss)",
        ),
        &["authenticator", "result"],
    )?;
    let token_cache_entries = IntGaugeVec::new(
        Opts::new(
            "portcullis_token_cache_entries",
            "Verified tokens held in the cache, by authenticator",
        ),
        &["authenticator"],
    )?;
    let authz_decisions = IntCounterVec::new(
        Opts::new(
            "portcullis_authz_decisions_total",
            "Authorization decisions by route, decision (allow, deny, shadow_deny) and reason",
        ),
        &["route", "decision", "reason"],
    )?;
    let ratelimit_decisions = IntCounterVec::new(
        Opts::new(
            "portcullis_ratelimit_decisions_total",
            "Rate-limit checks by route, policy and result (allowed, limited, shadow_limited, auth_failure_counted)",
        ),
        &["route", "policy", "result"],
    )?;
    let ratelimit_key_fallbacks = IntCounterVec::new(
        Opts::new(
            "portcullis_ratelimit_key_fallbacks_total",
            "Requests that had no value for a policy's key and used its fallback key",
        ),
        &["policy"],
    )?;
    let ratelimit_redis_fallbacks = IntCounterVec::new(
        Opts::new(
            "portcullis_ratelimit_redis_fallbacks_total",
            "Checks Redis could not answer, by policy and the on_redis_error action taken (allow, deny, local)",
        ),
        &["policy", "action"],
    )?;
    let redis_errors = IntCounterVec::new(
        Opts::new(
            "portcullis_redis_errors_total",
            "Failed Redis checks by kind (timeout, error, not_connected, breaker_open)",
        ),
        &["kind"],
    )?;
    let redis_duration = prometheus::Histogram::with_opts(
        HistogramOpts::new(
            "portcullis_redis_duration_seconds",
            "Round-trip time of successful Redis rate-limit checks",
        )
        .buckets(vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
        ]),
    )?;
    let redis_connected = IntGauge::new(
        "portcullis_redis_connected",
        "1 while the Redis rate-limit backend is connected and its circuit breaker closed",
    )?;
    let audit_written = prometheus::IntCounter::new(
        "portcullis_audit_records_total",
        "Audit records written (request, gap and chain_start records)",
    )?;
    let audit_dropped = IntCounterVec::new(
        Opts::new(
            "portcullis_audit_dropped_total",
            "Audit records lost, by cause (queue_full, write_failed); each loss is also a gap record in the file",
        ),
        &["cause"],
    )?;
    let audit_queue = IntGauge::new(
        "portcullis_audit_queue_depth",
        "Audit records waiting for the writer",
    )?;
    let audit_write_errors = prometheus::IntCounter::new(
        "portcullis_audit_write_errors_total",
        "Failed writes or fsyncs of the audit file",
    )?;
    let audit_last_write = IntGauge::new(
        "portcullis_audit_last_write_timestamp_seconds",
        "Unix time of the last successful audit write (alert on time() minus this under load)",
    )?;
    let build_info = IntGaugeVec::new(
        Opts::new("portcullis_build_info", "Build information; always 1"),
        &["version"],
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    registry.register(Box::new(requests.clone()))?;
    registry.register(Box::new(duration.clone()))?;
    registry.register(Box::new(denials.clone()))?;
    registry.register(Box::new(client_timeouts.clone()))?;
    registry.register(Box::new(protocol_rejections.clone()))?;
    registry.register(Box::new(upstream_attempts.clone()))?;
    registry.register(Box::new(upstream_errors.clone()))?;
    registry.register(Box::new(healthy_targets.clone()))?;
    registry.register(Box::new(config_generation.clone()))?;
    registry.register(Box::new(config_reloads.clone()))?;
    registry.register(Box::new(config_last_success.clone()))?;
    registry.register(Box::new(config_last_ok.clone()))?;
    registry.register(Box::new(config_restart_required.clone()))?;
    registry.register(Box::new(tls_cert_expiry.clone()))?;
    registry.register(Box::new(auth_attempts.clone()))?;
    registry.register(Box::new(jwks_fetches.clone()))?;
    registry.register(Box::new(jwks_keys.clone()))?;
    registry.register(Box::new(jwks_last_success.clone()))?;
    registry.register(Box::new(token_cache.clone()))?;
    registry.register(Box::new(token_cache_entries.clone()))?;
    registry.register(Box::new(authz_decisions.clone()))?;
    registry.register(Box::new(ratelimit_decisions.clone()))?;
    registry.register(Box::new(ratelimit_key_fallbacks.clone()))?;
    registry.register(Box::new(ratelimit_redis_fallbacks.clone()))?;
    registry.register(Box::new(redis_errors.clone()))?;
    registry.register(Box::new(redis_duration.clone()))?;
    registry.register(Box::new(redis_connected.clone()))?;
    registry.register(Box::new(audit_written.clone()))?;
    registry.register(Box::new(audit_dropped.clone()))?;
    registry.register(Box::new(audit_queue.clone()))?;
    registry.register(Box::new(audit_write_errors.clone()))?;
    registry.register(Box::new(audit_last_write.clone()))?;
    registry.register(Box::new(build_info))?;
    Ok(Metrics {
        registry,
        requests,
        duration,
        denials,
        client_timeouts,
        protocol_rejections,
        upstream_attempts,
        upstream_errors,
        healthy_targets,
        config_generation,
        config_reloads,
        config_last_success,
        config_last_ok,
        config_restart_required,
        tls_cert_expiry,
        auth_attempts,
        jwks_fetches,
        jwks_keys,
        jwks_last_success,
        token_cache,
        token_cache_entries,
        authz_decisions,
        ratelimit_decisions,
        ratelimit_key_fallbacks,
        ratelimit_redis_fallbacks,
        redis_errors,
        redis_duration,
        redis_connected,
        audit_written,
        audit_dropped,
        audit_queue,
        audit_write_errors,
        audit_last_write,
    })
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

fn get() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| match build() {
            Ok(m) => Some(m),
            Err(e) => {
                // Only possible through a programming error (duplicate names); serve without
                // metrics rather than refuse traffic.
                log::error!("metrics registry could not be built: {e}");
                None
            }
        })
        .as_ref()
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// Method label: a fixed set, everything else is `OTHER`.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Status classes in label order (index = `status_index`).
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// Method labels in index order (`method_index`).
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

fn status_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

fn method_index(m: &str) -> usize {
    METHODS.iter().position(|x| *x == m).unwrap_or(7)
}

/// A counter handle of `vec` for `labels`, resolved on first use and kept. Looking a series
/// up by label values hashes every value and takes the vector's read lock on each request;
/// a kept handle is one atomic add.
fn cached_counter(
    slot: &OnceLock<Option<IntCounter>>,
    resolve: impl FnOnce(&'static Metrics) -> IntCounter,
) -> Option<&IntCounter> {
    slot.get_or_init(|| get().map(resolve)).as_ref()
}

/// The hot per-route series (`portcullis_requests_total`, `portcullis_request_duration_seconds`,
/// the "allow" authorization decision), resolved on first use. Lives in the compiled route, so
/// a reload that recompiles a route resolves its handles again (the series themselves persist).
#[derive(Default)]
pub struct RouteMetrics {
    requests: [[OnceLock<Option<IntCounter>>; 6]; 8],
    duration: OnceLock<Option<prometheus::Histogram>>,
    authz: [OnceLock<Option<IntCounter>>; 3],
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

/// One request, by route: `cached` are the route's handles (None: a request that matched no
/// route, counted under `route`'s label the slow way).
pub fn record_request(
    route: &str,
    cached: Option<&RouteMetrics>,
    method: &str,
    status: u16,
    seconds: f64,
) {
    let Some(rm) = cached else {
        if let Some(m) = get() {
            m.requests
                .with_label_values(&[route, method, status_class(status)])
                .inc();
            m.duration.with_label_values(&[route]).observe(seconds);
        }
        return;
    };
    let (mi, si) = (method_index(method), status_index(status));
    if let Some(c) = cached_counter(&rm.requests[mi][si], |m| {
        m.requests
            .with_label_values(&[route, METHODS[mi], STATUS_CLASSES[si]])
    }) {
        c.inc();
    }
    if let Some(h) = rm
        .duration
        .get_or_init(|| get().map(|m| m.duration.with_label_values(&[route])))
    {
        h.observe(seconds);
    }
}

/// A downstream connection cut for slowness (`phase`: header, keepalive, idle).
pub fn client_timeout(phase: &'static str) {
    if let Some(m) = get() {
        m.client_timeouts.with_label_values(&[phase]).inc();
    }
}

/// Pingora answered a request itself before our phases ran (`status` from a fixed set).
pub fn protocol_rejection(status: &'static str) {
    if let Some(m) = get() {
        m.protocol_rejections.with_label_values(&[status]).inc();
    }
}

pub fn gateway_response(route: &str, reason: &str) {
    if let Some(m) = get() {
        m.denials.with_label_values(&[route, reason]).inc();
    }
}

/// An "allow" authorization decision through the route's kept handles (`reason`: public,
/// authenticated or policy); other decisions go through [`authz_decision`].
pub fn authz_allow(route: &str, cached: &RouteMetrics, reason: &'static str) {
    let i = match reason {
        "public" => 0,
        "authenticated" => 1,
        "policy" => 2,
        _ => return authz_decision(route, "allow", reason),
    };
    if let Some(c) = cached_counter(&cached.authz[i], |m| {
        m.authz_decisions
            .with_label_values(&[route, "allow", reason])
    }) {
        c.inc();
    }
}

/// One authorization decision (once per request that reached it).
pub fn authz_decision(route: &str, decision: &str, reason: &str) {
    if let Some(m) = get() {
        m.authz_decisions
            .with_label_values(&[route, decision, reason])
            .inc();
    }
}

/// One authentication outcome: `reason` is `None` on success.
pub fn auth_attempt(authenticator: &str, reason: Option<&str>) {
    if let Some(m) = get() {
        let (result, reason) = match reason {
            None => ("success", "ok"),
            Some(r) => ("failure", r),
        };
        m.auth_attempts
            .with_label_values(&[authenticator, result, reason])
            .inc();
    }
}

/// A verified-token cache lookup: `hit`, `miss`, or `refused` (a token refused before under
/// the same keys, refused again without verifying).
pub fn token_cache(authenticator: &str, result: &'static str) {
    if let Some(m) = get() {
        m.token_cache
            .with_label_values(&[authenticator, result])
            .inc();
    }
}

pub fn token_cache_entries(authenticator: &str, n: usize) {
    if let Some(m) = get() {
        m.token_cache_entries
            .with_label_values(&[authenticator])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

pub fn jwks_fetch(authenticator: &str, result: &str) {
    if let Some(m) = get() {
        m.jwks_fetches
            .with_label_values(&[authenticator, result])
            .inc();
    }
}

pub fn jwks_loaded(authenticator: &str, keys: usize, unix_secs: u64) {
    if let Some(m) = get() {
        m.jwks_keys
            .with_label_values(&[authenticator])
            .set(keys as i64);
        m.jwks_last_success
            .with_label_values(&[authenticator])
            .set(unix_secs as i64);
    }
}

/// One upstream attempt; `cached` is the target's kept handle (see [`cached_counter`]).
pub fn upstream_attempt(pool: &str, target: &str, cached: &OnceLock<Option<IntCounter>>) {
    if let Some(c) = cached_counter(cached, |m| {
        m.upstream_attempts.with_label_values(&[pool, target])
    }) {
        c.inc();
    }
}

pub fn upstream_error(pool: &str, target: &str, kind: &str) {
    if let Some(m) = get() {
        m.upstream_errors
            .with_label_values(&[pool, target, kind])
            .inc();
    }
}

pub fn set_healthy_targets(pool: &str, n: usize) {
    if let Some(m) = get() {
        m.healthy_targets.with_label_values(&[pool]).set(n as i64);
    }
}

/// At start and after every reload attempt: whether the last attempt succeeded, when the
/// snapshot being served was loaded, whether the file waits for a restart.
pub fn config_reload(ok: bool, loaded_at: f64, restart_required: bool) {
    if let Some(m) = get() {
        m.config_last_success.set(loaded_at);
        m.config_last_ok.set(i64::from(ok));
        m.config_restart_required.set(i64::from(restart_required));
    }
}

pub fn tls_cert_expiry(listener: &str, not_after: i64) {
    if let Some(m) = get() {
        m.tls_cert_expiry
            .with_label_values(&[listener])
            .set(not_after);
    }
}

pub fn config_reload_attempt(ok: bool) {
    if let Some(m) = get() {
        m.config_reloads
            .with_label_values(&[if ok { "ok" } else { "rejected" }])
            .inc();
    }
}

pub fn set_config_generation(g: u64) {
    if let Some(m) = get() {
        m.config_generation.set(g as i64);
    }
}

pub fn ratelimit_decision(route: &str, policy: &str, result: &str) {
    if let Some(m) = get() {
        m.ratelimit_decisions
            .with_label_values(&[route, policy, result])
            .inc();
    }
}

pub fn ratelimit_key_fallback(policy: &str) {
    if let Some(m) = get() {
        m.ratelimit_key_fallbacks.with_label_values(&[policy]).inc();
    }
}

pub fn ratelimit_redis_fallback(policy: &str, action: &str) {
    if let Some(m) = get() {
        m.ratelimit_redis_fallbacks
            .with_label_values(&[policy, action])
            .inc();
    }
}

pub fn redis_error(kind: &str) {
    if let Some(m) = get() {
        m.redis_errors.with_label_values(&[kind]).inc();
    }
}

pub fn redis_duration(seconds: f64) {
    if let Some(m) = get() {
        m.redis_duration.observe(seconds);
    }
}

pub fn set_redis_connected(up: bool) {
    if let Some(m) = get() {
        m.redis_connected.set(i64::from(up));
    }
}

pub fn audit_written(n: u64, unix_secs: u64) {
    if let Some(m) = get() {
        m.audit_written.inc_by(n);
        m.audit_last_write.set(unix_secs as i64);
    }
}

pub fn audit_dropped(cause: &str, n: u64) {
    if let Some(m) = get() {
        m.audit_dropped.with_label_values(&[cause]).inc_by(n);
    }
}

pub fn audit_queue_depth(n: usize) {
    if let Some(m) = get() {
        m.audit_queue.set(n as i64);
    }
}

pub fn audit_write_error() {
    if let Some(m) = get() {
        m.audit_write_errors.inc();
    }
}

/// Prometheus text exposition of every metric.
pub fn encode() -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(m) = get() {
        if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut buf) {
            log::error!("metrics encoding failed: {e}");
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept handles are indexed by (method, status class): the index tables must give
    /// exactly the labels the slow path would.
    #[test]
    fn handle_indexes_match_the_labels() {
        for s in [
            0u16, 99, 100, 101, 199, 200, 204, 301, 404, 429, 499, 500, 599, 600, 999,
        ] {
            assert_eq!(
                STATUS_CLASSES[status_index(s)],
                status_class(s),
                "status {s}"
            );
        }
        for m in [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
        ] {
            assert_eq!(METHODS[method_index(m)], m);
        }
        assert_eq!(METHODS[method_index("TRACE")], "OTHER");
    }
}
