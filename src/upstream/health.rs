//! Background service that runs active health checks for every pool of the *current*
//! snapshot and publishes the healthy-target gauge. Owning the loop ourselves (instead of
//! registering each `LoadBalancer` as its own Pingora service) is what lets pools change on a
//! config reload: Pingora cannot add services after start.

use crate::state::GatewayState;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct HealthService {
    pub state: Arc<GatewayState>,
}

const TICK: Duration = Duration::from_millis(100);

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Next due time per pool, keyed by the pool's address so a reloaded pool starts fresh.
        let mut next_due: HashMap<usize, Instant> = HashMap::new();
        loop {
            let snapshot = self.state.snapshot.load_full();
            let now = Instant::now();
            let mut due = Vec::new();
            for pool in snapshot.pools.values() {
                let Some(h) = &pool.health else { continue };
                let key = Arc::as_ptr(pool) as usize;
                if next_due.get(&key).is_none_or(|t| *t <= now) {
                    next_due.insert(key, now + h.interval);
                    due.push(pool.clone());
                }
            }
            if !due.is_empty() {
                let pass = futures::future::join_all(due.iter().map(|p| p.run_health_check()));
                tokio::select! {
                    _ = pass => {}
                    _ = shutdown.changed() => return,
                }
            }
            for pool in snapshot.pools.values() {
                crate::metrics::set_healthy_targets(&pool.name, pool.healthy_count());
            }
            // Ready once every pool of the current snapshot has had its first check.
            self.state.ready.store(true, Ordering::Release);
            next_due.retain(|k, _| {
                snapshot
                    .pools
                    .values()
                    .any(|p| Arc::as_ptr(p) as usize == *k)
            });
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
