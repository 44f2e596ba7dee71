//! Remote JWKS: keys fetched from an identity provider's URL by a background service, never in a
//! request phase. Shared through a process-wide registry keyed by URL, so a config reload that
//! keeps the same URL keeps the loaded keys (no 503 window after a reload).
//!
//! - Refresh every `refresh`, or sooner when the response's `Cache-Control: max-age` says so
//!   (bounded below by `min_refetch`).
//! - A failed fetch keeps the last good key set and is retried after `min_refetch`.
//! - A token with an unknown `kid` asks for a refetch (at most once per `min_refetch`) and waits
//!   for it briefly (asynchronously — no thread blocks), so a rotated IdP key works at once.
//! - Until the first successful fetch, requests get `503 keys_unavailable`.

use super::jwt::{keys_from_jwks, JwtKey};
use arc_swap::ArcSwapOption;
use jsonwebtoken::Algorithm;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub struct KeySet {
    pub by_kid: HashMap<String, Arc<JwtKey>>,
    pub no_kid: Vec<Arc<JwtKey>>,
}

impl KeySet {
    pub fn new(keys: Vec<JwtKey>) -> KeySet {
        let mut by_kid = HashMap::new();
        let mut no_kid = Vec::new();
        for k in keys {
            let k = Arc::new(k);
            match &k.kid {
                Some(kid) => {
                    by_kid.insert(kid.clone(), k);
                }
                None => no_kid.push(k),
            }
        }
        KeySet { by_kid, no_kid }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.no_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct RemoteJwks {
    pub url: String,
    /// Metric label: the first authenticator that registered this URL.
    pub label: Arc<str>,
    pub algorithms: Vec<Algorithm>,
    pub refresh: AtomicU64,
    pub min_refetch: AtomicU64,
    pub keys: ArcSwapOption<KeySet>,
    /// Bumped on every published key set; token-cache entries of older generations are unused.
    pub generation: AtomicU64,
    /// Unix ms of the last fetch attempt / success.
    pub last_attempt_ms: AtomicU64,
    pub last_success_ms: AtomicU64,
    /// Set after the first attempt, successful or not (readiness).
    pub attempted: AtomicBool,
    /// A request saw an unknown kid.
    pub refetch: AtomicBool,
    /// Wakes requests waiting for a refetch.
    pub fetched: Notify,
    /// Seconds until the next scheduled fetch, from max-age/refresh (set by the fetcher).
    pub next_in_ms: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .finish()
    }
}

impl RemoteJwks {
    /// Ask the background fetcher for a refetch after an unknown `kid`, and wait (async, at most
    /// `wait`) for it. Returns false when a refetch happened too recently to ask again.
    pub async fn refetch_and_wait(&self, wait: Duration) -> bool {
        let min = self.min_refetch.load(Ordering::Relaxed);
        if now_ms().saturating_sub(self.last_attempt_ms.load(Ordering::Relaxed)) < min {
            return false;
        }
        let done = self.fetched.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        self.refetch.store(true, Ordering::Release);
        wake().notify_one();
        tokio::time::timeout(wait, done).await.is_ok()
    }
}

/// Wakes the fetcher service when a request asks for a refetch.
fn wake() -> &'static Notify {
    static W: OnceLock<Notify> = OnceLock::new();
    W.get_or_init(Notify::new)
}

/// Every remote JWKS the snapshot uses (deduplicated).
pub fn remotes(s: &crate::config::Snapshot) -> Vec<Arc<RemoteJwks>> {
    let mut out: Vec<Arc<RemoteJwks>> = Vec::new();
    for a in s.authenticators.values() {
        if let super::Authenticator::Jwt(j) = a.as_ref() {
            if let Some(r) = &j.remote {
                if !out.iter().any(|x| Arc::ptr_eq(x, r)) {
                    out.push(r.clone());
                }
            }
        }
    }
    out
}

/// Whether every JWKS of the snapshot has had its first fetch attempt (readiness).
pub fn all_attempted(s: &crate::config::Snapshot) -> bool {
    remotes(s)
        .iter()
        .all(|r| r.attempted.load(Ordering::Acquire))
}

/// Background service: fetches every JWKS URL of the current snapshot on schedule and on
/// refetch requests. Follows reloads (it reads the snapshot each round).
pub struct JwksService {
    pub state: Arc<crate::state::GatewayState>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for JwksService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use std::time::Instant;
        let mut next_due: HashMap<usize, Instant> = HashMap::new();
        loop {
            let snapshot = self.state.snapshot.load_full();
            let list = remotes(&snapshot);
            let now = Instant::now();
            let mut due = Vec::new();
            for r in &list {
                let key = Arc::as_ptr(r) as usize;
                let scheduled = next_due.get(&key).is_none_or(|t| *t <= now);
                let requested = r.refetch.swap(false, Ordering::AcqRel);
                if scheduled || requested {
                    due.push(r.clone());
                }
            }
            if !due.is_empty() {
                let results = tokio::select! {
                    r = futures::future::join_all(due.iter().map(|r| fetch_once(r))) => r,
                    _ = shutdown.changed() => return,
                };
                let now = Instant::now();
                for (r, delay) in due.iter().zip(results) {
                    next_due.insert(Arc::as_ptr(r) as usize, now + delay);
                }
            }
            next_due.retain(|k, _| list.iter().any(|r| Arc::as_ptr(r) as usize == *k));
            let sleep = next_due
                .values()
                .min()
                .map_or(Duration::from_secs(1), |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = wake().notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

static REMOTES: crate::carry::Registry<RemoteJwks> = crate::carry::Registry::new();

/// The shared state for `url` (config load only; takes a lock, never on the request path).
pub fn remote_for(
    url: &str,
    label: &str,
    algorithms: &[Algorithm],
    refresh: Duration,
    min_refetch: Duration,
) -> Arc<RemoteJwks> {
    // Same URL and same algorithm allow-list: reuse (keys survive reloads).
    let (r, reused) = REMOTES.shared(format!("{url}|{algorithms:?}"), || RemoteJwks {
        url: url.to_string(),
        label: label.into(),
        algorithms: algorithms.to_vec(),
        refresh: AtomicU64::new(refresh.as_millis() as u64),
        min_refetch: AtomicU64::new(min_refetch.as_millis() as u64),
        keys: ArcSwapOption::empty(),
        generation: AtomicU64::new(0),
        last_attempt_ms: AtomicU64::new(0),
        last_success_ms: AtomicU64::new(0),
        attempted: AtomicBool::new(false),
        refetch: AtomicBool::new(false),
        fetched: Notify::new(),
        next_in_ms: AtomicU64::new(0),
    });
    if reused {
        r.refresh
            .store(refresh.as_millis() as u64, Ordering::Relaxed);
        r.min_refetch
            .store(min_refetch.as_millis() as u64, Ordering::Relaxed);
    }
    r
}

/// Fetch once and publish. Returns the delay until the next scheduled fetch.
pub async fn fetch_once(r: &RemoteJwks) -> Duration {
    r.last_attempt_ms.store(now_ms(), Ordering::Relaxed);
    let refresh = Duration::from_millis(r.refresh.load(Ordering::Relaxed));
    let min = Duration::from_millis(r.min_refetch.load(Ordering::Relaxed));
    let next = match get(&r.url).await {
        Ok((body, max_age)) => match keys_from_jwks(&body, &r.algorithms) {
            Ok(keys) => {
                let set = KeySet::new(keys);
                crate::metrics::jwks_loaded(&r.label, set.len(), now_ms() / 1000);
                r.keys.store(Some(Arc::new(set)));
                r.generation.fetch_add(1, Ordering::AcqRel);
                r.last_success_ms.store(now_ms(), Ordering::Relaxed);
                crate::metrics::jwks_fetch(&r.label, "ok");
                max_age.map_or(refresh, |a| a.clamp(min, refresh))
            }
            Err(e) => {
                log::warn!("JWKS {} rejected, keeping the previous keys: {e}", r.url);
                crate::metrics::jwks_fetch(&r.label, "invalid");
                min
            }
        },
        Err(e) => {
            log::warn!(
                "JWKS fetch {} failed, keeping the previous keys: {e}",
                r.url
            );
            crate::metrics::jwks_fetch(&r.label, "error");
            min
        }
    };
    r.attempted.store(true, Ordering::Release);
    r.fetched.notify_waiters();
    next
}

/// Minimal GET over Pingora's HTTP connector (HTTP/1.1, optional TLS with system roots).
async fn get(url: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
    use pingora::connectors::http::Connector;
    use pingora::http::RequestHeader;
    use pingora::upstreams::peer::HttpPeer;
    let uri: http::Uri = url.parse().map_err(|_| "invalid URL".to_string())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("URL scheme must be http or https".into()),
    };
    let host = uri.host().ok_or("URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or("no address")?;
    let mut peer = HttpPeer::new(
        addr,
        tls,
        host.trim_matches(|c| c == '[' || c == ']').to_string(),
    );
    peer.options.connection_timeout = Some(Duration::from_secs(3));
    peer.options.read_timeout = Some(Duration::from_secs(5));
    peer.options.total_connection_timeout = Some(Duration::from_secs(5));
    let connector = Connector::new(None);
    let (mut s, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
    req.insert_header(
        "Host",
        uri.authority().map_or(host.as_str(), |a| a.as_str()),
    )
    .map_err(|e| e.to_string())?;
    req.insert_header("Accept", "application/json")
        .map_err(|e| e.to_string())?;
    req.insert_header("Connection", "close")
        .map_err(|e| e.to_string())?;
    let work = async {
        s.write_request_header(Box::new(req)).await?;
        s.finish_request_body().await?;
        s.read_response_header().await?;
        let mut body = Vec::new();
        while let Some(chunk) = s.read_response_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                break;
            }
        }
        Ok::<_, pingora::BError>(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let resp = s.response_header().ok_or("no response")?;
    if resp.status != 200 {
        return Err(format!("HTTP status {}", resp.status));
    }
    if body.len() > MAX_JWKS_BYTES {
        return Err("JWKS document over 1 MiB".into());
    }
    let max_age = resp
        .headers
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .filter_map(|d| d.trim().strip_prefix("max-age="))
                .find_map(|n| n.parse::<u64>().ok())
        })
        .map(Duration::from_secs);
    Ok((body, max_age))
}
