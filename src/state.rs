//! Process-wide gateway state shared by the proxy, the admin endpoint and background services:
//! the current [`Snapshot`] behind an `ArcSwap` (requests pin one in `new_ctx`) and readiness.

use crate::config::Snapshot;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct GatewayState {
    pub snapshot: ArcSwap<Snapshot>,
    /// Set by the health service once the first round of checks has run.
    pub ready: AtomicBool,
    generation: AtomicU64,
    /// The audit trail, when `audit:` is configured (per process, like the listeners).
    pub audit: Option<crate::audit::Audit>,
}

impl GatewayState {
    pub fn new(mut snapshot: Snapshot, audit: Option<crate::audit::Audit>) -> Arc<GatewayState> {
        snapshot.generation = 1;
        crate::metrics::set_config_generation(1);
        Arc::new(GatewayState {
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            audit,
        })
    }

    /// Atomically replace the snapshot. In-flight requests keep the one they pinned.
    pub fn publish(&self, mut snapshot: Snapshot) -> u64 {
        let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        snapshot.generation = g;
        self.snapshot.store(Arc::new(snapshot));
        crate::metrics::set_config_generation(g);
        g
    }
}
