//! Process-wide gateway state shared by the proxy, the admin endpoint and background services:
//! the current [`Snapshot`] behind an `ArcSwap` (requests pin one in `new_ctx`), readiness and
//! the reload status.

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
    /// Outcome of the last reload and what is being served (admin `/config`). Written only by
    /// the reload service.
    pub config_status: ArcSwap<crate::reload::ConfigStatus>,
}

impl GatewayState {
    pub fn new(
        mut snapshot: Snapshot,
        audit: Option<crate::audit::Audit>,
        status: crate::reload::ConfigStatus,
    ) -> Arc<GatewayState> {
        snapshot.generation = 1;
        crate::metrics::set_config_generation(1);
        crate::metrics::config_reload(true, status.loaded_at, false);
        Arc::new(GatewayState {
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            audit,
            config_status: ArcSwap::from_pointee(status),
        })
    }

    /// Change the reload/upgrade status (admin `/config`). Two background services write it;
    /// `rcu` keeps either from undoing the other.
    pub fn update_status(&self, f: impl Fn(&mut crate::reload::ConfigStatus)) {
        self.config_status.rcu(|cur| {
            let mut next = (**cur).clone();
            f(&mut next);
            next
        });
    }

    /// Record the outcome of a SIGUSR2 binary upgrade start.
    pub fn set_upgrade(&self, successor: Option<u32>, error: Option<String>) {
        self.update_status(|s| {
            s.successor = successor;
            if let Some(e) = &error {
                s.upgrade_failures += 1;
                s.upgrade_last_error = Some(e.clone());
            }
        });
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
