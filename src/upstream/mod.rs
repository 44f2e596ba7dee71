//! Upstream pools: load balancing, peer construction, connect-retry bookkeeping.
//!
//! Pools are compiled from `upstreams:` into the [`Snapshot`](crate::config::Snapshot).
//! `upstream_peer` calls [`Pool::select`] and [`Pool::peer`]; health checks are driven by
//! the [`health::HealthService`] background service, never from a request phase.
//!
//! A pool with no healthy target answers 503 `no_healthy_upstream` rather than trying dead
//! targets ("panic mode" in Envoy): failing fast and visibly is the safer default for a
//! security gateway, and the health check threshold controls how quickly targets come back.

pub mod health;

use crate::config::raw::{Balance, HealthKind};
use log::info;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::tls::x509::X509;
use pingora::upstreams::peer::HttpPeer;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What `consistent_hash` hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Path,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
    pub ca: Option<Arc<Box<[X509]>>>,
    /// Hash of the CA bundle bytes; part of the connection-pool key (see [`Pool::peer`]).
    pub ca_digest: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub kind: HealthKind,
    pub path: String,
    pub host: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: usize,
    pub unhealthy_threshold: usize,
}

/// Everything needed to build a pool; produced by the config compiler.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub name: String,
    pub targets: Vec<(SocketAddr, usize)>,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub timeouts: Timeouts,
    pub retries: usize,
    pub tls: Option<UpstreamTls>,
    pub health: Option<HealthSettings>,
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
}

/// A compiled upstream pool.
pub struct Pool {
    pub name: Arc<str>,
    balancer: Balancer,
    pub hash_key: HashKey,
    pub timeouts: Timeouts,
    pub retries: usize,
    pub tls: Option<UpstreamTls>,
    pub health: Option<HealthSettings>,
    /// Targets in config order, with their metric label.
    pub targets: Vec<(SocketAddr, Arc<str>)>,
    /// Per target (same order): the kept `portcullis_upstream_attempts_total` handle.
    attempts: Vec<std::sync::OnceLock<Option<prometheus::IntCounter>>>,
    /// Connection-pool partition for this pool's peers, see [`Pool::peer`].
    group_key: u64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .finish()
    }
}

/// Logs health flips so operators see them without scraping metrics.
struct HealthLogger {
    pool: Arc<str>,
}

#[async_trait::async_trait]
impl HealthObserve for HealthLogger {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if healthy {
            info!(
                "upstream {} target {} is healthy again",
                self.pool, target.addr
            );
        } else {
            log::warn!("upstream {} target {} is unhealthy", self.pool, target.addr);
        }
    }
}

fn build_lb<S>(
    backends: BTreeSet<Backend>,
    hc: Option<Box<dyn HealthCheck + Send + Sync>>,
) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(Static::new(backends)));
    if let Some(hc) = hc {
        lb.set_health_check(hc);
    }
    // Static discovery resolves immediately; this only builds the selector.
    use futures::FutureExt;
    if let Some(Err(e)) = lb.update().now_or_never() {
        log::error!("building load balancer selector failed: {e}");
    }
    lb
}

static POOLS: crate::carry::Registry<Pool> = crate::carry::Registry::new();

impl Pool {
    /// The pool for `spec`: the live one when a published snapshot has exactly this
    /// definition (a reload keeps its targets' health, its health-check schedule and its
    /// round-robin position), a new one otherwise. A changed pool starts with every target
    /// healthy until its first check, like a pool at start.
    pub fn shared(spec: PoolSpec) -> Arc<Pool> {
        let definition = format!("{spec:?}|{:?}", spec.tls.as_ref().map(|t| t.ca_digest));
        POOLS.shared(definition, || Pool::build(spec)).0
    }

    pub fn build(spec: PoolSpec) -> Pool {
        let name: Arc<str> = spec.name.as_str().into();
        let backends: BTreeSet<Backend> = spec
            .targets
            .iter()
            .map(|(addr, weight)| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(*addr),
                weight: *weight,
                ext: Default::default(),
            })
            .collect();
        let hc = spec
            .health
            .as_ref()
            .map(|h| health_check(h, spec.tls.as_ref(), name.clone()));
        let balancer = match spec.balance {
            Balance::RoundRobin => Balancer::RoundRobin(build_lb(backends, hc)),
            Balance::Random => Balancer::Random(build_lb(backends, hc)),
            Balance::ConsistentHash => Balancer::Consistent(build_lb(backends, hc)),
        };
        let group_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            spec.name.hash(&mut h);
            spec.tls.as_ref().map(|t| t.ca_digest).hash(&mut h);
            h.finish()
        };
        Pool {
            group_key,
            targets: spec
                .targets
                .iter()
                .map(|(a, _)| (*a, a.to_string().into()))
                .collect(),
            attempts: spec.targets.iter().map(|_| Default::default()).collect(),
            name,
            balancer,
            hash_key: spec.hash_key,
            timeouts: spec.timeouts,
            retries: spec.retries,
            tls: spec.tls,
            health: spec.health,
        }
    }

    /// Pick a healthy target not in `tried`. `key` matters only for consistent hashing.
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<SocketAddr> {
        let accept = |b: &Backend, healthy: bool| {
            healthy && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
        };
        // One target (the common case behind a service VIP): no selection to make, only its
        // health to check; skips the balancer's iterator (≈ 1.5 k instructions a request).
        if let [(only, _)] = self.targets.as_slice() {
            if tried.contains(only) {
                return None;
            }
            let backends = self.backends();
            let set = backends.get_backend();
            let b = set.iter().next()?;
            return backends.ready(b).then_some(*only);
        }
        // Bounded search: every target at least once, plus slack for weighted duplicates.
        let max_iter = 16 + self.targets.len() * 4;
        let b = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, max_iter, accept),
            Balancer::Random(lb) => lb.select_with(key, max_iter, accept),
            Balancer::Consistent(lb) => lb.select_with(key, max_iter, accept),
        }?;
        b.addr.as_inet().copied()
    }

    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::Consistent(lb) => lb.backends(),
        }
    }

    /// One health-check pass over every target (background service only).
    pub async fn run_health_check(&self) {
        self.backends().run_health_check(true).await;
    }

    /// Number of targets currently considered healthy.
    pub fn healthy_count(&self) -> usize {
        let backends = self.backends();
        backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .count()
    }

    /// Count an attempt on `addr` (`portcullis_upstream_attempts_total`).
    pub fn count_attempt(&self, addr: &SocketAddr) {
        match self.targets.iter().position(|(a, _)| a == addr) {
            Some(i) => {
                crate::metrics::upstream_attempt(&self.name, &self.targets[i].1, &self.attempts[i])
            }
            None => crate::metrics::upstream_attempt(&self.name, "unknown", &Default::default()),
        }
    }

    /// Metric label for a target address (the configured address, so cardinality is bounded).
    pub fn target_label(&self, addr: &SocketAddr) -> Arc<str> {
        self.targets
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| "unknown".into())
    }

    /// Build the peer for one attempt.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let (tls, sni) = match &self.tls {
            Some(t) => (true, t.sni.clone()),
            None => (false, String::new()),
        };
        let mut peer = HttpPeer::new(addr, tls, sni);
        // Pingora's connection-reuse key covers address, SNI and the verify flags but not the
        // CA bundle: without this, a connection verified for one pool's CA could be reused by
        // another pool that trusts a different CA. Partition pooled connections per pool.
        peer.group_key = self.group_key;
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = Some(self.timeouts.connect * 2);
        o.read_timeout = Some(self.timeouts.read);
        o.write_timeout = Some(self.timeouts.write);
        o.idle_timeout = Some(self.timeouts.idle);
        if let Some(t) = &self.tls {
            o.verify_cert = t.verify;
            o.verify_hostname = t.verify;
            o.ca = t.ca.clone();
        }
        peer
    }

    #[cfg(test)]
    pub fn for_tests(name: &str) -> Arc<Pool> {
        Arc::new(Pool::build(PoolSpec {
            name: name.into(),
            targets: vec![(([127, 0, 0, 1], 1).into(), 1)],
            balance: Balance::RoundRobin,
            hash_key: HashKey::ClientIp,
            timeouts: Timeouts::default(),
            retries: 1,
            tls: None,
            health: None,
        }))
    }
}

fn health_check(
    h: &HealthSettings,
    tls: Option<&UpstreamTls>,
    pool: Arc<str>,
) -> Box<dyn HealthCheck + Send + Sync> {
    let observer: Box<dyn HealthObserve + Send + Sync> = Box::new(HealthLogger { pool });
    match h.kind {
        HealthKind::Tcp => {
            let mut hc = match tls {
                Some(t) => TcpHealthCheck::new_tls(&t.sni),
                None => TcpHealthCheck::new(),
            };
            hc.consecutive_success = h.healthy_threshold;
            hc.consecutive_failure = h.unhealthy_threshold;
            hc.peer_template.options.connection_timeout = Some(h.timeout);
            if let Some(t) = tls {
                hc.peer_template.options.verify_cert = t.verify;
                hc.peer_template.options.verify_hostname = t.verify;
                hc.peer_template.options.ca = t.ca.clone();
            }
            hc.health_changed_callback = Some(observer);
            hc
        }
        HealthKind::Http => {
            let mut hc = HttpHealthCheck::new(&h.host, tls.is_some());
            if let Ok(uri) = h.path.parse() {
                hc.req.set_uri(uri);
            }
            hc.consecutive_success = h.healthy_threshold;
            hc.consecutive_failure = h.unhealthy_threshold;
            let o = &mut hc.peer_template.options;
            o.connection_timeout = Some(h.timeout);
            o.read_timeout = Some(h.timeout);
            if let Some(t) = tls {
                hc.peer_template.sni = t.sni.clone();
                o.verify_cert = t.verify;
                o.verify_hostname = t.verify;
                o.ca = t.ca.clone();
            }
            hc.health_changed_callback = Some(observer);
            Box::new(hc)
        }
    }
}

/// `upstream_peer`: pick a target for this attempt (skipping ones already tried) and build the
/// peer. Never blocks; selection reads atomically published balancer state.
pub fn choose_peer(
    req: &pingora::http::RequestHeader,
    ctx: &mut crate::gateway::RequestCtx,
) -> Result<Box<HttpPeer>, crate::error::Reject> {
    use crate::error::Reject;
    let Some(route) = ctx.route.clone() else {
        return Err(Reject::NoRoute);
    };
    let pool = &route.pool;
    let ip_key;
    let key: &[u8] = match (&pool.balancer, &pool.hash_key) {
        (Balancer::Consistent(_), HashKey::ClientIp) => {
            ip_key = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
            ip_key.as_bytes()
        }
        (Balancer::Consistent(_), HashKey::Header(h)) => match req.headers.get(h) {
            Some(v) => v.as_bytes(),
            None => {
                ip_key = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
                ip_key.as_bytes()
            }
        },
        (Balancer::Consistent(_), HashKey::Path) => ctx.path.as_bytes(),
        _ => b"",
    };
    let Some(addr) = pool.select(key, &ctx.tried) else {
        return Err(if ctx.tried.is_empty() {
            Reject::NoHealthyUpstream
        } else {
            Reject::UpstreamConnect
        });
    };
    ctx.tried.push(addr);
    ctx.target = Some(addr);
    pool.count_attempt(&addr);
    Ok(Box::new(pool.peer(addr)))
}
