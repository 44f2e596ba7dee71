//! Rate limiting: named policies compiled from `rate_limits:`, enforced per route in
//! `request_filter` (through [`crate::gateway::admit`]), with `RateLimit` headers added in
//! `response_filter`.
//!
//! Where the checks sit in admission:
//! - `count: auth_failures` policies are looked at *before* authentication (a key over its
//!   limit gets 429 without its credentials being checked) and charged when authentication
//!   fails — credential stuffing is throttled per client IP.
//! - Every other policy is charged after authentication and authorization succeeded, so keys
//!   can use the verified identity, and a request another check refused does not use up the
//!   caller's budget.
//!
//! All policies of a route are enforced. When one refuses, what the earlier ones counted for
//! this request is taken back, so a refused request costs no policy anything.
//!
//! Window semantics (both backends): a sliding window approximated from two fixed windows —
//! `previous × (1 − elapsed fraction) + current` — so a burst at a window edge cannot pass
//! twice the limit.

pub mod lease;
pub mod local;
pub mod redis;
pub mod sketch;

use crate::auth::Principal;
use crate::config::raw::{LimitCount, OnRedisError};
use crate::error::Reject;
use http::header::HeaderName;
use pingora::http::RequestHeader;
use pingora::OkOrErr;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// `limit` requests per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub interval: Duration,
}

/// The two window counts a decision is made from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowCounts {
    pub prev: u64,
    pub curr: u64,
    /// Fraction of the current window that has elapsed (0..1).
    pub frac: f64,
}

impl Window {
    pub fn weighted(&self, c: &WindowCounts) -> f64 {
        c.prev as f64 * (1.0 - c.frac) + c.curr as f64
    }

    pub fn remaining(&self, c: &WindowCounts) -> u64 {
        (self.limit as f64 - self.weighted(c)).max(0.0).floor() as u64
    }

    /// Whole seconds until the end of the current fixed window.
    pub fn reset_secs(&self, c: &WindowCounts) -> u64 {
        let secs = self.interval.as_secs_f64() * (1.0 - c.frac);
        (secs.ceil() as u64).max(1)
    }

    /// Whole seconds (at least 1) until one more request would fit, assuming nothing else is
    /// admitted meanwhile: the previous window's weight decays, then the current one rolls.
    pub fn retry_after(&self, c: &WindowCounts) -> u64 {
        let i = self.interval.as_secs_f64();
        let room = self.limit as f64 - 1.0;
        let t = if c.curr as f64 > room {
            // Not before the next window, and then until this window's weight has decayed.
            let decay = if c.curr == 0 {
                0.0
            } else {
                (1.0 - room / c.curr as f64).max(0.0)
            };
            (1.0 - c.frac) * i + decay * i
        } else if c.prev == 0 {
            0.0
        } else {
            (i * ((1.0 - c.frac) - (room - c.curr as f64) / c.prev as f64)).max(0.0)
        };
        (t.ceil() as u64).clamp(1, self.interval.as_secs().max(1) * 2)
    }
}

/// One part of a rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client address (through trusted proxies only).
    ClientIp,
    /// The principal's consumer (API key consumer, or the JWT `consumer_claim`).
    Consumer,
    /// The principal's subject, qualified by the authenticator that verified it.
    Subject,
    /// The API key id: the same bucket whichever header spelling or query parameter carried it.
    ApiKey,
    /// The matched route.
    Route,
    Header(HeaderName),
    /// A claim of the verified JWT (dot path).
    Claim(Arc<str>),
}

impl KeyPart {
    pub fn parse(s: &str) -> Result<KeyPart, String> {
        Ok(match s {
            "client_ip" => KeyPart::ClientIp,
            "consumer" => KeyPart::Consumer,
            "subject" => KeyPart::Subject,
            "api_key" => KeyPart::ApiKey,
            "route" => KeyPart::Route,
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    let name = HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("invalid header name {h:?}"))?;
                    KeyPart::Header(name)
                } else if let Some(c) = s.strip_prefix("claim:") {
                    if c.is_empty() || c.split('.').any(str::is_empty) {
                        return Err(format!("invalid claim path {c:?}"));
                    }
                    KeyPart::Claim(c.into())
                } else {
                    return Err(format!(
                        "unknown key {s:?} (use client_ip, consumer, subject, api_key, route, header:NAME or claim:PATH)"
                    ));
                }
            }
        })
    }

    /// Parts that need a verified principal.
    pub fn needs_principal(&self) -> bool {
        matches!(
            self,
            KeyPart::Consumer | KeyPart::Subject | KeyPart::ApiKey | KeyPart::Claim(_)
        )
    }

    fn tag(&self) -> u8 {
        match self {
            KeyPart::ClientIp => 1,
            KeyPart::Consumer => 2,
            KeyPart::Subject => 3,
            KeyPart::ApiKey => 4,
            KeyPart::Route => 5,
            KeyPart::Header(_) => 6,
            KeyPart::Claim(_) => 7,
        }
    }
}

/// Where a policy's rate counters live.
#[derive(Debug)]
pub enum RateBackend {
    Local(Arc<local::LocalCounters>),
    Redis {
        backend: Arc<redis::RedisBackend>,
        on_error: OnRedisError,
        /// Used while Redis cannot answer and `on_error` is `local`.
        fallback: Arc<local::LocalCounters>,
        /// `lease: N`: units taken from Redis N at a time and spent locally.
        lease: Option<Arc<lease::LeaseTable>>,
    },
}

/// A compiled rate-limit policy.
#[derive(Debug)]
pub struct LimitPolicy {
    pub name: Arc<str>,
    pub key: Vec<KeyPart>,
    /// Used when the request has no value for a part of `key`; only parts every request has.
    pub fallback: Vec<KeyPart>,
    pub rate: Option<(Window, RateBackend)>,
    pub inflight: Option<Arc<local::LocalInflight>>,
    pub count: LimitCount,
    pub shadow: bool,
    /// Add `RateLimit` headers to allowed responses.
    pub headers: bool,
    /// `RateLimit-Policy` item for this policy, precomputed.
    pub policy_item: Arc<str>,
    /// IPv6 client addresses are bucketed per prefix of this length (default 64).
    pub ipv6_prefix: u8,
}

/// Request facts a key is built from.
pub struct KeyFacts<'a> {
    pub client_ip: Option<IpAddr>,
    pub route: &'a str,
    pub headers: &'a http::HeaderMap,
    pub principal: Option<&'a Principal>,
}

/// Append one value, length-prefixed so that no two different value lists encode alike.
fn push_value(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(v);
}

/// The bucket address of a client: IPv4 as is, IPv6 masked to `v6_prefix` bits, because one
/// IPv6 host usually holds a whole /64 and could otherwise rotate into fresh buckets.
fn client_ip_value(ip: IpAddr, v6_prefix: u8) -> String {
    match crate::clientip::canonical(&ip) {
        IpAddr::V6(v6) if v6_prefix < 128 => {
            let mask = if v6_prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(v6_prefix))
            };
            format!(
                "{}/{v6_prefix}",
                std::net::Ipv6Addr::from(u128::from(v6) & mask)
            )
        }
        other => crate::gateway::ip_text(&other),
    }
}

fn push_part(out: &mut Vec<u8>, part: &KeyPart, f: &KeyFacts<'_>, v6_prefix: u8) -> bool {
    out.push(part.tag());
    let p = f.principal;
    match part {
        KeyPart::ClientIp => match f.client_ip {
            Some(ip) => out.extend_from_slice(client_ip_value(ip, v6_prefix).as_bytes()),
            // Only unix-socket peers have no address: they share one bucket, never none.
            None => out.extend_from_slice(b"unknown"),
        },
        KeyPart::Route => out.extend_from_slice(f.route.as_bytes()),
        KeyPart::Consumer => match p.and_then(|p| p.consumer.as_deref().map(|c| (p, c))) {
            Some((p, c)) => {
                // Qualified like `subject`: two authenticators may both have a consumer "acme".
                push_value(out, p.authenticator.as_bytes());
                push_value(out, c.as_bytes());
            }
            None => return false,
        },
        KeyPart::Subject => match p {
            Some(p) => {
                push_value(out, p.authenticator.as_bytes());
                push_value(out, p.subject.as_bytes());
            }
            None => return false,
        },
        KeyPart::ApiKey => match p.and_then(|p| p.key_id.as_deref()) {
            Some(k) if p.is_some_and(|p| p.method == crate::auth::AuthMethod::ApiKey) => {
                push_value(out, p.map_or("", |p| &p.authenticator).as_bytes());
                push_value(out, k.as_bytes());
            }
            _ => return false,
        },
        KeyPart::Header(name) => match f.headers.get(name) {
            Some(v) if !v.is_empty() => push_value(out, v.as_bytes()),
            _ => return false,
        },
        KeyPart::Claim(path) => {
            let values = p.and_then(|p| {
                p.policy_claims
                    .iter()
                    .find(|(k, _)| k == path)
                    .map(|(_, v)| v)
            });
            match values {
                Some(v) if !v.is_empty() => {
                    for s in v.iter() {
                        push_value(out, s.as_bytes());
                    }
                }
                _ => return false,
            }
        }
    }
    out.push(0x1f);
    true
}

impl LimitPolicy {
    /// The key value for this request and whether the fallback key was used.
    pub fn key_for(&self, f: &KeyFacts<'_>) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(48);
        if self
            .key
            .iter()
            .all(|p| push_part(&mut out, p, f, self.ipv6_prefix))
        {
            return (out, false);
        }
        out.clear();
        // A distinct namespace: anonymous callers never share a bucket with a consumer.
        out.push(0xff);
        for p in &self.fallback {
            push_part(&mut out, p, f, self.ipv6_prefix);
        }
        (out, true)
    }

    fn rate_item(&self, w: &Window, c: &WindowCounts, limited: bool) -> String {
        let t = if limited {
            w.retry_after(c)
        } else {
            w.reset_secs(c)
        };
        let r = if limited { 0 } else { w.remaining(c) };
        format!("\"{}\";r={r};t={t}", self.name)
    }
}

/// `RateLimit-Policy` item: `"name";q=LIMIT;w=SECONDS`.
pub fn policy_item(name: &str, w: &Window) -> String {
    format!("\"{name}\";q={};w={}", w.limit, w.interval.as_secs().max(1))
}

/// Rate-limit state of one request, kept in its context.
#[derive(Default)]
pub struct RequestLimits {
    /// Concurrency slots held until the request ends (dropped with the context).
    pub guards: Vec<pingora_limits::inflight::Guard>,
    /// `(RateLimit-Policy item, RateLimit item)` for allowed responses.
    pub headers: Vec<(Arc<str>, String)>,
    /// A shadow policy that would have refused the request (for the audit record).
    pub shadow_limited: Option<Arc<str>>,
    /// The policy that refused the request.
    pub limited: Option<Arc<str>>,
}

/// Why a policy refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Rate,
    Inflight,
    /// Redis could not answer and the policy fails closed.
    Unavailable,
}

/// What one policy counted for this request, to take back if a later one refuses.
enum Taken {
    Local(Arc<local::LocalCounters>, Vec<u8>, local::Counted),
    Redis(Arc<redis::RedisBackend>, String, i64),
    Lease(Arc<lease::Lease>),
}

fn undo(taken: Vec<Taken>) {
    for t in taken {
        match t {
            Taken::Local(c, key, at) => c.release(&key, at),
            Taken::Redis(b, key, idx) => b.release(key, idx),
            Taken::Lease(l) => l.give_back(),
        }
    }
}

enum Verdict {
    Allowed(WindowCounts, Option<Taken>),
    Limited(WindowCounts),
    /// Redis failed and the policy lets the request through uncounted.
    Open,
    Unavailable,
}

async fn check_rate(
    policy: &LimitPolicy,
    w: &Window,
    backend: &RateBackend,
    key: &[u8],
) -> Verdict {
    match backend {
        RateBackend::Local(c) => local_verdict(c, key),
        RateBackend::Redis {
            backend,
            on_error,
            fallback,
            lease,
        } => {
            let mut want = 1;
            let mut hash = 0;
            if let Some(table) = lease {
                hash = table.hash(key);
                match table.take(hash) {
                    lease::Local::Taken(l) => {
                        return Verdict::Allowed(l.counts(), Some(Taken::Lease(l)));
                    }
                    lease::Local::Refused(counts) => return Verdict::Limited(counts),
                    lease::Local::Ask => want = table.size,
                }
            }
            let rkey = backend.key(&policy.name, key);
            match backend.check(&rkey, w, redis::Mode::Acquire(want)).await {
                Ok(a) if a.admitted => {
                    let left = Duration::from_millis(a.window_left_ms);
                    let taken = match lease {
                        Some(table) => {
                            let l = table.store_grant(hash, a.granted, left, a.counts);
                            Taken::Lease(l)
                        }
                        None => Taken::Redis(backend.clone(), rkey, a.window_index),
                    };
                    let counts = match &taken {
                        Taken::Lease(l) => l.counts(),
                        _ => a.counts,
                    };
                    Verdict::Allowed(counts, Some(taken))
                }
                Ok(a) => {
                    if let Some(table) = lease {
                        table.store_refusal(
                            hash,
                            Duration::from_millis(a.window_left_ms),
                            a.counts,
                        );
                    }
                    Verdict::Limited(a.counts)
                }
                Err(_) => {
                    crate::metrics::ratelimit_redis_fallback(
                        &policy.name,
                        on_error_label(*on_error),
                    );
                    match on_error {
                        OnRedisError::Allow => Verdict::Open,
                        OnRedisError::Deny => Verdict::Unavailable,
                        OnRedisError::Local => local_verdict(fallback, key),
                    }
                }
            }
        }
    }
}

fn local_verdict(c: &Arc<local::LocalCounters>, key: &[u8]) -> Verdict {
    match c.acquire(key) {
        (true, counts, at) => {
            Verdict::Allowed(counts, Some(Taken::Local(c.clone(), key.to_vec(), at)))
        }
        (false, counts, _) => Verdict::Limited(counts),
    }
}

fn on_error_label(e: OnRedisError) -> &'static str {
    match e {
        OnRedisError::Allow => "allow",
        OnRedisError::Deny => "deny",
        OnRedisError::Local => "local",
    }
}

fn limited(
    policy: &LimitPolicy,
    kind: LimitKind,
    retry_after: u64,
    item: Option<String>,
) -> Reject {
    Reject::RateLimited {
        policy: policy.name.clone(),
        kind,
        retry_after,
        policy_item: item.as_ref().map(|_| policy.policy_item.clone()),
        rate_item: item,
    }
}

/// Charge every `count: requests` policy of the route for this request (after authentication
/// and authorization). On refusal nothing stays counted.
pub async fn acquire(
    policies: &[Arc<LimitPolicy>],
    facts: &KeyFacts<'_>,
    state: &mut RequestLimits,
) -> Result<(), Reject> {
    charge(policies, LimitCount::Requests, facts, state)
        .await
        .map(drop)
}

/// Units of `count: auth_failures` policies held while the credentials are checked.
#[must_use]
pub struct Reservation(Vec<Taken>);

/// Before authentication: take one unit of every `auth_failures` policy, as if the attempt
/// were going to fail. Reserving first (rather than checking, then counting failures after)
/// means concurrent attempts cannot all slip past the check: at most `limit` credential checks
/// per window per key, however many arrive at once. A key over the limit gets 429 without its
/// credentials being checked.
pub async fn reserve_auth_attempt(
    policies: &[Arc<LimitPolicy>],
    facts: &KeyFacts<'_>,
    state: &mut RequestLimits,
) -> Result<Reservation, Reject> {
    charge(policies, LimitCount::AuthFailures, facts, state)
        .await
        .map(Reservation)
}

/// Authentication succeeded: the attempt does not count, give the units back.
pub fn auth_succeeded(r: Reservation) {
    undo(r.0);
}

/// Authentication failed: the units stay counted.
pub fn auth_failed(r: Reservation, route: &str, policies: &[Arc<LimitPolicy>]) {
    if !r.0.is_empty() {
        for p in policies
            .iter()
            .filter(|p| p.count == LimitCount::AuthFailures)
        {
            crate::metrics::ratelimit_decision(route, &p.name, "auth_failure_counted");
        }
    }
}

async fn charge(
    policies: &[Arc<LimitPolicy>],
    count: LimitCount,
    facts: &KeyFacts<'_>,
    state: &mut RequestLimits,
) -> Result<Vec<Taken>, Reject> {
    let mut taken = Vec::new();
    if policies.is_empty() {
        return Ok(taken);
    }
    // Redis-backed policies first: a local count is then never held across a network wait,
    // so its undo cannot land in a newer window than the one it was counted in.
    let remote = |p: &&Arc<LimitPolicy>| matches!(p.rate, Some((_, RateBackend::Redis { .. })));
    let ordered = policies
        .iter()
        .filter(|p| p.count == count)
        .filter(remote)
        .chain(
            policies
                .iter()
                .filter(|p| p.count == count)
                .filter(|p| !remote(p)),
        );
    for p in ordered {
        let (key, fell_back) = p.key_for(facts);
        if fell_back {
            crate::metrics::ratelimit_key_fallback(&p.name);
        }
        let mut refusal = None;
        if let Some(inflight) = &p.inflight {
            let (guard, ok) = inflight.enter(&key);
            if ok || p.shadow {
                state.guards.push(guard);
            }
            if !ok {
                refusal = Some(limited(p, LimitKind::Inflight, 1, None));
            }
        }
        if let (None, Some((w, backend))) = (&refusal, &p.rate) {
            match check_rate(p, w, backend, &key).await {
                Verdict::Allowed(counts, t) => {
                    taken.extend(t);
                    if p.headers {
                        state
                            .headers
                            .push((p.policy_item.clone(), p.rate_item(w, &counts, false)));
                    }
                }
                Verdict::Limited(counts) => {
                    let item = p.rate_item(w, &counts, true);
                    refusal = Some(limited(
                        p,
                        LimitKind::Rate,
                        w.retry_after(&counts),
                        Some(item),
                    ));
                }
                Verdict::Open => {}
                Verdict::Unavailable => {
                    refusal = Some(limited(p, LimitKind::Unavailable, 1, None));
                }
            }
        }
        match refusal {
            None if count == LimitCount::Requests => {
                crate::metrics::ratelimit_decision(facts.route, &p.name, "allowed")
            }
            None => {}
            Some(_) if p.shadow => {
                crate::metrics::ratelimit_decision(facts.route, &p.name, "shadow_limited");
                state.shadow_limited.get_or_insert_with(|| p.name.clone());
            }
            Some(r) => {
                crate::metrics::ratelimit_decision(facts.route, &p.name, "limited");
                state.limited = Some(p.name.clone());
                state.guards.clear();
                undo(taken);
                return Err(r);
            }
        }
    }
    Ok(taken)
}

/// `response_filter`: `RateLimit-Policy` and `RateLimit` on allowed responses of policies
/// with `headers: true`.
pub fn add_response_headers(
    state: &RequestLimits,
    headers: &mut http::HeaderMap,
) -> pingora::Result<()> {
    if state.headers.is_empty() {
        return Ok(());
    }
    let policies: Vec<&str> = state.headers.iter().map(|(p, _)| &**p).collect();
    let limits: Vec<&str> = state.headers.iter().map(|(_, l)| l.as_str()).collect();
    for (name, v) in [
        ("ratelimit-policy", policies.join(", ")),
        ("ratelimit", limits.join(", ")),
    ] {
        let v = http::HeaderValue::try_from(v).ok().or_err(
            pingora::ErrorType::InvalidHTTPHeader,
            "invalid rate-limit header",
        )?;
        headers.insert(http::HeaderName::from_static(name), v);
    }
    Ok(())
}

/// Facts for a request header and context values.
pub fn facts<'a>(
    req: &'a RequestHeader,
    client_ip: Option<IpAddr>,
    route: &'a str,
    principal: Option<&'a Principal>,
) -> KeyFacts<'a> {
    KeyFacts {
        client_ip,
        route,
        headers: &req.headers,
        principal,
    }
}

#[cfg(test)]
pub(crate) const DEFAULT_EXPECTED_KEYS_FOR_TESTS: u64 =
    crate::config::compile::DEFAULT_EXPECTED_KEYS;

#[cfg(test)]
mod tests {
    use super::*;

    fn w(limit: u64, secs: u64) -> Window {
        Window {
            limit,
            interval: Duration::from_secs(secs),
        }
    }

    #[test]
    fn key_parts_parse() {
        assert_eq!(KeyPart::parse("client_ip").unwrap(), KeyPart::ClientIp);
        assert!(
            matches!(KeyPart::parse("header:X-Tenant").unwrap(), KeyPart::Header(h) if h == "x-tenant")
        );
        assert!(
            matches!(KeyPart::parse("claim:org.id").unwrap(), KeyPart::Claim(c) if &*c == "org.id")
        );
        assert!(KeyPart::parse("ip").is_err());
        assert!(KeyPart::parse("header:bad name").is_err());
        assert!(KeyPart::parse("claim:a..b").is_err());
    }

    #[test]
    fn sliding_weight_blocks_the_window_edge_burst() {
        let win = w(100, 60);
        // Previous window used the whole limit; 10 % into the new one only 10 more fit.
        let c = WindowCounts {
            prev: 100,
            curr: 0,
            frac: 0.1,
        };
        assert_eq!(win.remaining(&c), 10);
        let full = WindowCounts {
            prev: 100,
            curr: 10,
            frac: 0.1,
        };
        assert_eq!(win.remaining(&full), 0);
        // One more fits once 1 % more of the previous window has slid out: 0.6 s → 1 s.
        assert_eq!(win.retry_after(&full), 1);
    }

    #[test]
    fn retry_after_when_the_current_window_is_full() {
        let win = w(10, 60);
        let c = WindowCounts {
            prev: 0,
            curr: 10,
            frac: 0.5,
        };
        // 30 s to the next window, then 10 % of it until 9/10 of the weight is left.
        assert_eq!(win.retry_after(&c), 36);
        assert_eq!(win.reset_secs(&c), 30);
    }

    #[test]
    fn anonymous_falls_back_to_its_own_namespace() {
        let p = LimitPolicy {
            name: "p".into(),
            key: vec![KeyPart::Consumer],
            fallback: vec![KeyPart::ClientIp],
            rate: None,
            inflight: None,
            count: LimitCount::Requests,
            shadow: false,
            headers: false,
            policy_item: "".into(),
            ipv6_prefix: 64,
        };
        let headers = http::HeaderMap::new();
        let f = KeyFacts {
            client_ip: Some("10.0.0.1".parse().unwrap()),
            route: "r",
            headers: &headers,
            principal: None,
        };
        let (k, fb) = p.key_for(&f);
        assert!(fb);
        assert_eq!(k[0], 0xff);
        assert!(k.ends_with(b"10.0.0.1\x1f"));
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_ip_value(a, 64), client_ip_value(b, 64));
        assert_ne!(client_ip_value(a, 64), client_ip_value(c, 64));
        assert_eq!(client_ip_value(a, 64), "2001:db8:1:2::/64");
        assert_ne!(client_ip_value(a, 128), client_ip_value(b, 128));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_ip_value(mapped, 64), "10.0.0.1");
    }
}
