//! Compile step for `rate_limits:` and `redis:` (called from [`super::compile`]): policies
//! with their counters taken from the process-wide registries, so unchanged definitions keep
//! their state across reloads.

use super::{valid_name, Ctx};
use crate::config::raw::{
    LimitBackend, LimitCount, OnRedisError, PolicyMode, RawConfig, RawRateLimit,
};
use crate::ratelimit::{self, KeyPart, LimitPolicy, RateBackend, Window};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_EXPECTED_KEYS: u64 = 100_000;
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(25);

/// `100/s`, `1000/min`, `50000/h`, `10/30s`: a positive count per window of 1 s to 1 day.
pub fn parse_rate(s: &str) -> Result<Window, String> {
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("invalid rate {s:?}: expected COUNT/WINDOW like \"100/s\""))?;
    let limit: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("invalid rate {s:?}: {n:?} is not a whole number"))?;
    let per = per.trim();
    let interval = match per {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86400),
        other => crate::config::units::parse_duration(other)
            .map_err(|e| format!("invalid rate {s:?}: {e}"))?,
    };
    if limit == 0 || limit > 1_000_000_000 {
        return Err(format!(
            "invalid rate {s:?}: count must be between 1 and 1000000000"
        ));
    }
    if interval < Duration::from_secs(1) || interval > Duration::from_secs(86400) {
        return Err(format!(
            "invalid rate {s:?}: window must be between 1s and 1d"
        ));
    }
    if interval.subsec_millis() != 0 {
        return Err(format!("invalid rate {s:?}: window must be whole seconds"));
    }
    Ok(Window { limit, interval })
}

pub(super) fn redis_backend(
    cx: &mut Ctx,
    raw: &RawConfig,
) -> Option<Arc<ratelimit::redis::RedisBackend>> {
    let r = raw.redis.as_ref()?;
    let mut ok = true;
    if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
        cx.err(
            "redis.url",
            "must start with redis:// (rediss:// for TLS is not built in this version)",
        );
        ok = false;
    } else if r.url.starts_with("rediss://") {
        cx.err(
            "redis.url",
            "rediss:// (TLS) is not supported by this version; use a local Redis or a TLS tunnel",
        );
        ok = false;
    } else if redis::IntoConnectionInfo::into_connection_info(r.url.as_str()).is_err() {
        cx.err("redis.url", "not a valid Redis URL (redis://host:port/db)");
        ok = false;
    }
    if r.url.contains('@') {
        cx.warn(
            "redis.url",
            "the URL carries credentials; prefer password_env",
        );
    }
    let password = match &r.password_env {
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                cx.err(
                    "redis.password_env",
                    format!("environment variable {var} is not set"),
                );
                ok = false;
                None
            }
        },
        None => None,
    };
    let timeout = r.timeout.map_or(DEFAULT_REDIS_TIMEOUT, |d| d.0);
    if timeout.is_zero() || timeout > Duration::from_secs(1) {
        cx.err(
            "redis.timeout",
            "must be between 1ms and 1s (a request waits this long at most)",
        );
        ok = false;
    }
    let connect_timeout = r.connect_timeout.map_or(Duration::from_secs(1), |d| d.0);
    if connect_timeout < Duration::from_millis(10) || connect_timeout > Duration::from_secs(30) {
        cx.err("redis.connect_timeout", "must be between 10ms and 30s");
        ok = false;
    }
    let cooldown = r.breaker_cooldown.map_or(Duration::from_secs(2), |d| d.0);
    if cooldown < Duration::from_millis(100) || cooldown > Duration::from_secs(300) {
        cx.err("redis.breaker_cooldown", "must be between 100ms and 5m");
        ok = false;
    }
    let breaker_failures = r.breaker_failures.unwrap_or(3);
    if breaker_failures == 0 {
        cx.err("redis.breaker_failures", "must be at least 1");
        ok = false;
    }
    let key_prefix = r
        .key_prefix
        .clone()
        .unwrap_or_else(|| "portcullis:".to_string());
    if key_prefix.len() > 64 || key_prefix.contains(['{', '}']) {
        cx.err(
            "redis.key_prefix",
            "at most 64 characters, without '{' or '}'",
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(ratelimit::redis::backend(ratelimit::redis::RedisSettings {
        url: r.url.clone(),
        password,
        key_prefix,
        timeout,
        connect_timeout,
        breaker_failures,
        breaker_cooldown: cooldown,
    }))
}

pub(super) fn rate_limits(
    cx: &mut Ctx,
    raw: &RawConfig,
    redis: Option<&Arc<ratelimit::redis::RedisBackend>>,
) -> BTreeMap<String, Arc<LimitPolicy>> {
    let mut out = BTreeMap::new();
    for (name, l) in &raw.rate_limits {
        let path = format!("rate_limits.{name}");
        if !valid_name(name) {
            cx.err(
                &path,
                "rate limit names use letters, digits, '-', '_' or '.' (at most 64)",
            );
            continue;
        }
        if let Some(p) = rate_limit(cx, &path, name, l, raw, redis) {
            out.insert(name.clone(), Arc::new(p));
        }
    }
    out
}

fn key_parts(cx: &mut Ctx, path: &str, items: &[&str]) -> Option<Vec<KeyPart>> {
    let before = cx.issues.len();
    let mut parts = Vec::new();
    if items.is_empty() {
        cx.err(path, "at least one key part is required");
    }
    for (i, k) in items.iter().enumerate() {
        let p = if items.len() == 1 {
            path.to_string()
        } else {
            format!("{path}[{i}]")
        };
        match KeyPart::parse(k) {
            Ok(kp) if parts.contains(&kp) => cx.err(p, format!("{k:?} listed twice")),
            Ok(kp) => parts.push(kp),
            Err(e) => cx.err(p, e),
        }
    }
    (cx.issues.len() == before).then_some(parts)
}

fn rate_limit(
    cx: &mut Ctx,
    path: &str,
    name: &str,
    l: &RawRateLimit,
    raw: &RawConfig,
    redis: Option<&Arc<ratelimit::redis::RedisBackend>>,
) -> Option<LimitPolicy> {
    let before = cx.issues.len();
    let key = key_parts(cx, &format!("{path}.key"), &l.key.items());
    let fallback = match &l.fallback {
        None => Some(vec![KeyPart::ClientIp]),
        Some(f) => {
            let fpath = format!("{path}.fallback");
            let parts = key_parts(cx, &fpath, &f.items());
            if let Some(ps) = &parts {
                if ps
                    .iter()
                    .any(|p| !matches!(p, KeyPart::ClientIp | KeyPart::Route))
                {
                    cx.err(&fpath, "a fallback key may use only client_ip and route (values every request has)");
                }
            }
            parts
        }
    };
    let window = match &l.rate {
        Some(r) => match parse_rate(r) {
            Ok(w) => Some(w),
            Err(e) => {
                cx.err(format!("{path}.rate"), e);
                None
            }
        },
        None => None,
    };
    if l.rate.is_none() && l.max_inflight.is_none() {
        cx.err(path, "set rate, max_inflight or both");
    }
    if l.max_inflight == Some(0) {
        cx.err(format!("{path}.max_inflight"), "must be at least 1");
    }
    if l.count == LimitCount::AuthFailures {
        if l.rate.is_none() {
            cx.err(format!("{path}.rate"), "count: auth_failures needs a rate");
        }
        if l.max_inflight.is_some() {
            cx.err(
                format!("{path}.max_inflight"),
                "not used with count: auth_failures",
            );
        }
        if key
            .as_ref()
            .is_some_and(|k| k.iter().any(KeyPart::needs_principal))
        {
            cx.err(format!("{path}.key"), "count: auth_failures keys cannot use the caller's identity (there is none when authentication fails); use client_ip, route or a header");
        }
    }
    let expected = l.expected_keys.unwrap_or(DEFAULT_EXPECTED_KEYS);
    if expected == 0 || expected > 5_000_000 {
        cx.err(
            format!("{path}.expected_keys"),
            "must be between 1 and 5000000",
        );
    }
    if l.backend == LimitBackend::Redis && raw.redis.is_none() {
        cx.err(
            format!("{path}.backend"),
            "backend: redis needs a top-level redis: section",
        );
    }
    if l.backend == LimitBackend::Local && l.on_redis_error.is_some() {
        cx.err(
            format!("{path}.on_redis_error"),
            "only used with backend: redis",
        );
    }
    if l.backend == LimitBackend::Redis && l.rate.is_none() {
        cx.err(
            format!("{path}.backend"),
            "backend: redis applies to rate; max_inflight is always local",
        );
    }
    if l.ipv6_prefix.is_some_and(|n| !(32..=128).contains(&n)) {
        cx.err(format!("{path}.ipv6_prefix"), "must be between 32 and 128");
    }
    if let Some(parts) = &key {
        for k in parts {
            if let KeyPart::Header(h) = k {
                if l.count == LimitCount::AuthFailures {
                    cx.err(format!("{path}.key"), format!("count: auth_failures cannot key on header {h:?}: the client chooses its value and would get a fresh bucket per attempt"));
                } else if matches!(
                    h.as_str(),
                    "authorization"
                        | "cookie"
                        | "host"
                        | "x-forwarded-for"
                        | "forwarded"
                        | "x-real-ip"
                        | "user-agent"
                ) {
                    cx.err(format!("{path}.key"), format!("header {h:?} is not a usable key (clients vary it freely or it is normalised elsewhere); use client_ip, consumer, subject or api_key"));
                } else {
                    cx.warn(format!("{path}.key"), format!("header {h:?} is client-controlled unless your own edge sets it: a client can rotate it for fresh buckets"));
                }
            }
        }
    }
    if let Some(n) = l.lease {
        if l.backend != LimitBackend::Redis {
            cx.err(format!("{path}.lease"), "only used with backend: redis");
        } else if n < 2 || window.is_some_and(|w| u64::from(n) > w.limit) || n > 10_000 {
            cx.err(
                format!("{path}.lease"),
                "must be between 2 and the rate's count (at most 10000)",
            );
        }
        if l.count == LimitCount::AuthFailures {
            cx.err(
                format!("{path}.lease"),
                "not used with count: auth_failures",
            );
        }
    }
    if cx.issues.len() != before {
        return None;
    }
    let (key, fallback) = (key?, fallback?);
    let slots = ratelimit::local::slots_for(expected);
    // Counters are shared with the previous snapshot only when what they count is unchanged.
    let id = |w: &Window, what: &str| {
        format!(
            "{name}|{what}|{}/{}ms|{key:?}|{fallback:?}|{:?}|{slots}",
            w.limit,
            w.interval.as_millis(),
            l.count
        )
    };
    let rate = match window {
        None => None,
        Some(w) => {
            let backend = match l.backend {
                LimitBackend::Local => {
                    RateBackend::Local(ratelimit::local::counters(id(&w, "local"), w, slots))
                }
                LimitBackend::Redis => {
                    let backend = redis?.clone();
                    let on_error = l
                        .on_redis_error
                        .or(raw.redis.as_ref().and_then(|r| r.on_error))
                        .unwrap_or(OnRedisError::Local);
                    // Local counters only when the policy falls back to them: 16 MiB by default.
                    let fallback_slots = if on_error == OnRedisError::Local {
                        slots
                    } else {
                        1024
                    };
                    RateBackend::Redis {
                        backend,
                        on_error,
                        fallback: ratelimit::local::counters(
                            id(&w, &format!("redis-fallback-{fallback_slots}")),
                            w,
                            fallback_slots,
                        ),
                        lease: l.lease.map(|n| {
                            Arc::new(ratelimit::lease::LeaseTable::new(n, expected as usize))
                        }),
                    }
                }
            };
            Some((w, backend))
        }
    };
    let inflight = l.max_inflight.map(|max| {
        ratelimit::local::inflight(format!("{name}|inflight|{max}|{key:?}|{fallback:?}"), max)
    });
    let policy_item: Arc<str> = window
        .map(|w| ratelimit::policy_item(name, &w))
        .unwrap_or_default()
        .into();
    Some(LimitPolicy {
        name: name.into(),
        key,
        fallback,
        rate,
        inflight,
        count: l.count,
        shadow: l.mode == Some(PolicyMode::Shadow),
        headers: l.headers,
        policy_item,
        ipv6_prefix: l.ipv6_prefix.unwrap_or(64),
    })
}
