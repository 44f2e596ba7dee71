//! Cluster-wide counters on Redis, for `backend: redis` policies. Called from `request_filter`
//! through [`super::acquire`].
//!
//! This is the one place a request phase waits on the network, and it is bounded: one
//! `EVALSHA` per check with a deadline of `redis.timeout` (default 25 ms), and a circuit
//! breaker that, after `breaker_failures` consecutive failures, skips Redis entirely for
//! `breaker_cooldown` so an outage costs no latency at all — the policy's `on_redis_error`
//! decides meanwhile. Connections are made by [`RedisConnector`], a background service, never
//! by a request.
//!
//! The check is one Lua script, atomic on the server: the same sliding window as the local
//! backend (previous window weighted by the part of it still inside the sliding window, plus
//! the current one), with the window index taken from the server's clock so gateways with
//! skewed clocks still share windows. Keys are `<prefix>{<policy>:<hash of key value>}:<window>`
//! — hashed so no subject or address is stored in Redis, hash-tagged so both windows of a key
//! live in one Redis Cluster slot — and expire two windows after their last write.

use super::{Window, WindowCounts};
use crate::state::GatewayState;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use thiserror::Error;

/// KEYS[1] = key base; ARGV = interval ms, limit, mode (`acquire` | `peek` | `add`), and for
/// `acquire` how many units to take at most (1, or a lease size). Returns {units granted (peek:
/// 1 = under the limit), current count (after the grant), previous count, ms into window,
/// window index}. A grant is the most that fits: min(wanted, floor(limit − weighted)).
const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local idx = math.floor(now / interval)
local elapsed = now - idx * interval
local ck = KEYS[1] .. ':' .. idx
local prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. (idx - 1)) or '0')
local curr = tonumber(redis.call('GET', ck) or '0')
local weighted = prev * (interval - elapsed) / interval + curr
local ok = 1
if ARGV[3] == 'acquire' then
  local room = math.floor(limit - weighted)
  if room < 1 then
    ok = 0
  else
    ok = math.min(tonumber(ARGV[4]), room)
    curr = redis.call('INCRBY', ck, ok)
    redis.call('PEXPIRE', ck, interval * 2 + 1000)
  end
elseif ARGV[3] == 'peek' then
  if weighted >= limit then ok = 0 end
else
  curr = redis.call('INCR', ck)
  redis.call('PEXPIRE', ck, interval * 2 + 1000)
end
return {ok, curr, prev, elapsed, idx}
";

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RedisError {
    #[error("not connected")]
    NotConnected,
    #[error("circuit breaker open")]
    BreakerOpen,
    #[error("timed out")]
    Timeout,
    #[error("command failed")]
    Command,
}

impl RedisError {
    pub fn code(&self) -> &'static str {
        match self {
            RedisError::NotConnected => "not_connected",
            RedisError::BreakerOpen => "breaker_open",
            RedisError::Timeout => "timeout",
            RedisError::Command => "error",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Take up to this many units (1 per request; more for a lease).
    Acquire(u32),
    Peek,
    Add,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Acquire(_) => "acquire",
            Mode::Peek => "peek",
            Mode::Add => "add",
        }
    }
}

/// What Redis answered for one check.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub admitted: bool,
    /// Units granted (`Acquire`).
    pub granted: u32,
    /// Milliseconds left in the window the units were counted in.
    pub window_left_ms: u64,
    pub counts: WindowCounts,
    /// Window the request was counted in (to take it back if a later policy refuses).
    pub window_index: i64,
}

/// Take back one unit without resurrecting an expired key (a bare DECR would create it at −1
/// with no TTL).
const UNDO: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return 0
";

#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    pub password: Option<String>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Opens after `threshold` consecutive failures; after `cooldown` lets exactly one probe
/// through (half-open) and closes again on its success.
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    epoch: Instant,
    consecutive: AtomicU32,
    /// ms since `epoch` until which Redis is skipped; 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn permit(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now_ms() < until {
            return false;
        }
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn success(&self) {
        self.consecutive.store(0, Ordering::Release);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            log::info!("redis: circuit breaker closed");
        }
        self.probing.store(false, Ordering::Release);
    }

    fn failure(&self) {
        let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if n >= self.threshold || was_probe {
            let until = self.now_ms() + self.cooldown_ms;
            if self.open_until.swap(until, Ordering::AcqRel) == 0 {
                log::warn!("redis: circuit breaker open for {} ms", self.cooldown_ms);
            }
        }
    }

    fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

/// One Redis server as used by the policies of a snapshot. Shared across reloads while the
/// settings are unchanged, so the connection and breaker state carry over.
pub struct RedisBackend {
    pub settings: RedisSettings,
    conn: ArcSwapOption<ConnectionManager>,
    connecting: AtomicBool,
    breaker: Breaker,
    script: redis::Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &redacted_url(&self.settings.url))
            .finish()
    }
}

/// The URL without a password, for logs.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl RedisBackend {
    fn new(settings: RedisSettings) -> RedisBackend {
        RedisBackend {
            breaker: Breaker {
                threshold: settings.breaker_failures.max(1),
                cooldown_ms: settings.breaker_cooldown.as_millis() as u64,
                epoch: Instant::now(),
                consecutive: AtomicU32::new(0),
                open_until: AtomicU64::new(0),
                probing: AtomicBool::new(false),
            },
            settings,
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            script: redis::Script::new(SCRIPT),
        }
    }

    pub fn connected(&self) -> bool {
        self.conn.load().is_some()
    }

    /// The Redis key base for a policy and a key value.
    pub fn key(&self, policy: &str, key: &[u8]) -> String {
        let digest = crate::auth::api_key::sha256(key).unwrap_or([0; 32]);
        let mut s = String::with_capacity(self.settings.key_prefix.len() + policy.len() + 36);
        s.push_str(&self.settings.key_prefix);
        s.push('{');
        s.push_str(policy);
        s.push(':');
        s.push_str(&crate::auth::api_key::hex(&digest[..16]));
        s.push('}');
        s
    }

    /// Run one check. Errors are counted here; the caller applies `on_redis_error`.
    pub async fn check(
        &self,
        key: &str,
        window: &Window,
        mode: Mode,
    ) -> Result<Answer, RedisError> {
        let result = self.check_inner(key, window, mode).await;
        if let Err(e) = result {
            crate::metrics::redis_error(e.code());
        }
        result
    }

    async fn check_inner(&self, key: &str, w: &Window, mode: Mode) -> Result<Answer, RedisError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(RedisError::NotConnected);
        };
        if !self.breaker.permit() {
            return Err(RedisError::BreakerOpen);
        }
        let mut conn = (*conn).clone();
        let start = Instant::now();
        let mut inv = self.script.key(key);
        let want = match mode {
            Mode::Acquire(n) => n.max(1),
            _ => 1,
        };
        inv.arg(w.interval.as_millis() as u64)
            .arg(w.limit)
            .arg(mode.arg())
            .arg(want);
        let call = inv.invoke_async::<(i64, i64, i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok((ok, curr, prev, elapsed, idx))) => {
                self.breaker.success();
                crate::metrics::redis_duration(start.elapsed().as_secs_f64());
                let interval_ms = (w.interval.as_millis() as f64).max(1.0);
                Ok(Answer {
                    admitted: ok >= 1,
                    granted: u32::try_from(ok.max(0)).unwrap_or(0),
                    window_left_ms: (interval_ms as i64 - elapsed).max(0) as u64,
                    counts: WindowCounts {
                        prev: prev.max(0) as u64,
                        curr: curr.max(0) as u64,
                        frac: (elapsed as f64 / interval_ms).clamp(0.0, 1.0),
                    },
                    window_index: idx,
                })
            }
            Ok(Err(e)) => {
                log::debug!("redis check failed: {e}");
                self.breaker.failure();
                Err(RedisError::Command)
            }
            Err(_) => {
                self.breaker.failure();
                Err(RedisError::Timeout)
            }
        }
    }

    /// Take back a request counted in `window_index` (a later policy refused it). Not awaited
    /// by the request: a lost decrement only makes the limit stricter by one.
    pub fn release(&self, key: String, window_index: i64) {
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        if self.breaker.is_open() {
            return;
        }
        let timeout = self.settings.timeout;
        tokio::spawn(async move {
            let mut conn = (*conn).clone();
            let script = redis::Script::new(UNDO);
            let inv = script.key(format!("{key}:{window_index}"));
            let _ = tokio::time::timeout(timeout, inv.invoke_async::<i64>(&mut conn)).await;
        });
    }

    /// Connect if not connected (the background connector calls this; so do the benches).
    pub async fn connect(&self) {
        if self.connected() || self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let s = &self.settings;
        let result = async {
            let mut info: redis::ConnectionInfo =
                redis::IntoConnectionInfo::into_connection_info(s.url.as_str())?;
            if let Some(p) = &s.password {
                info.redis.password = Some(p.clone());
            }
            let client = redis::Client::open(info)?;
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(s.connect_timeout)
                .set_response_timeout(s.timeout.max(Duration::from_millis(250)))
                .set_number_of_retries(2)
                .set_max_delay(1000);
            tokio::time::timeout(
                s.connect_timeout + Duration::from_millis(100),
                ConnectionManager::new_with_config(client, cfg),
            )
            .await
            .map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out"))
            })?
        }
        .await;
        match result {
            Ok(conn) => {
                log::info!("redis: connected to {}", redacted_url(&s.url));
                self.conn.store(Some(Arc::new(conn)));
            }
            Err(e) => log::warn!("redis: cannot connect to {}: {e}", redacted_url(&s.url)),
        }
        self.connecting.store(false, Ordering::Release);
    }
}

type Registry = Mutex<HashMap<String, Weak<RedisBackend>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The backend for these settings: the live one if a snapshot already uses identical settings.
pub fn backend(settings: RedisSettings) -> Arc<RedisBackend> {
    // Every field (the password too: a changed password needs a new connection), never logged.
    let s = &settings;
    let id = format!(
        "{}|{:?}|{}|{:?}|{:?}|{}|{:?}",
        s.url,
        s.password,
        s.key_prefix,
        s.timeout,
        s.connect_timeout,
        s.breaker_failures,
        s.breaker_cooldown
    );
    let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(b) = map.get(&id).and_then(Weak::upgrade) {
        return b;
    }
    let b = Arc::new(RedisBackend::new(settings));
    map.insert(id, Arc::downgrade(&b));
    b
}

/// Background service: connects the current snapshot's Redis backend (and reconnects after a
/// reload names a new one), and keeps `portcullis_redis_connected` current. The connection
/// manager itself re-establishes a dropped connection.
pub struct RedisConnector {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for RedisConnector {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let snapshot = self.state.snapshot.load_full();
            if let Some(b) = &snapshot.redis {
                b.connect().await;
                crate::metrics::set_redis_connected(b.connected() && !b.breaker.is_open());
            }
            drop(snapshot);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_and_half_opens_with_one_probe() {
        let b = Breaker {
            threshold: 2,
            cooldown_ms: 30,
            epoch: Instant::now(),
            consecutive: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        };
        assert!(b.permit());
        b.failure();
        assert!(b.permit(), "one failure does not open it");
        b.failure();
        assert!(!b.permit(), "open after two");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.permit(), "one probe after the cooldown");
        assert!(!b.permit(), "only one probe");
        b.failure();
        assert!(!b.permit(), "a failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.permit());
        b.success();
        assert!(b.permit() && b.permit(), "closed again");
    }

    #[test]
    fn url_redaction() {
        assert_eq!(
            redacted_url("redis://user:secret@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
