//! Token leases for Redis policies with `lease: N`, consulted by [`super::acquire`] in
//! `request_filter` before Redis is asked.
//!
//! Instead of one Redis round trip per request, a gateway takes up to N units of a key's
//! budget in one script call and spends them locally until they run out or the window they
//! were counted in ends. Units that are leased but never spent are already counted in Redis,
//! so leasing can only make a limit stricter, never looser: across G gateways the cluster
//! admits between `limit − G × (N − 1)` and `limit` per window. A refusal is remembered for up
//! to a second too, so a client hammering past its limit costs no round trips either.
//!
//! The table is a TinyUFO cache (lock-free reads, bounded size): a lease evicted early only
//! loses its unspent units, again on the strict side.

use super::WindowCounts;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Units of one key leased to this gateway.
#[derive(Debug)]
pub struct Lease {
    remaining: AtomicI64,
    valid_until: Instant,
    /// What Redis reported when the lease was granted (for the `RateLimit` header).
    counts: WindowCounts,
    /// A remembered refusal: no units, answer 429 until `valid_until`.
    pub refused: bool,
}

impl Lease {
    /// Put back a unit taken by [`LeaseTable::take`] (a later policy refused the request).
    pub fn give_back(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts as Redis saw them, minus the units this gateway still holds.
    pub fn counts(&self) -> WindowCounts {
        let held = self.remaining.load(Ordering::Acquire).max(0) as u64;
        WindowCounts {
            curr: self.counts.curr.saturating_sub(held),
            ..self.counts
        }
    }
}

pub struct LeaseTable {
    ufo: tinyufo::TinyUfo<u64, Arc<Lease>>,
    hasher: ahash::RandomState,
    pub size: u32,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable")
            .field("size", &self.size)
            .finish()
    }
}

/// What the table says about a key.
pub enum Local {
    /// One unit taken from a live lease.
    Taken(Arc<Lease>),
    /// A refusal remembered from Redis.
    Refused(WindowCounts),
    /// Nothing usable: ask Redis.
    Ask,
}

impl LeaseTable {
    pub fn new(size: u32, keys: usize) -> LeaseTable {
        let keys = keys.max(16);
        LeaseTable {
            ufo: tinyufo::TinyUfo::new(keys, keys),
            hasher: ahash::RandomState::new(),
            size,
        }
    }

    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn take(&self, h: u64) -> Local {
        let Some(lease) = self.ufo.get(&h) else {
            return Local::Ask;
        };
        if Instant::now() >= lease.valid_until {
            return Local::Ask;
        }
        if lease.refused {
            return Local::Refused(lease.counts);
        }
        if lease.remaining.fetch_sub(1, Ordering::AcqRel) > 0 {
            return Local::Taken(lease);
        }
        lease.give_back();
        Local::Ask
    }

    /// Record a grant of `granted` units, one of which the current request uses.
    pub fn store_grant(
        &self,
        h: u64,
        granted: u32,
        window_left: Duration,
        counts: WindowCounts,
    ) -> Arc<Lease> {
        // Requests that found the lease empty at the same time each fetched a grant: pool the
        // units into the live lease instead of dropping the older one's (they are paid for).
        if let Some(live) = self.ufo.get(&h) {
            if !live.refused && Instant::now() < live.valid_until {
                live.remaining
                    .fetch_add(i64::from(granted) - 1, Ordering::AcqRel);
                return live;
            }
        }
        let lease = Arc::new(Lease {
            remaining: AtomicI64::new(i64::from(granted) - 1),
            valid_until: Instant::now() + window_left,
            counts,
            refused: false,
        });
        self.ufo.put(h, lease.clone(), 1);
        lease
    }

    /// Remember a refusal for at most a second (and never past the window).
    pub fn store_refusal(&self, h: u64, window_left: Duration, counts: WindowCounts) {
        // A concurrent request may have pooled fresh units meanwhile: never drop those.
        if let Some(live) = self.ufo.get(&h) {
            if !live.refused
                && Instant::now() < live.valid_until
                && live.remaining.load(Ordering::Acquire) > 0
            {
                return;
            }
        }
        let lease = Arc::new(Lease {
            remaining: AtomicI64::new(0),
            valid_until: Instant::now() + window_left.min(Duration::from_secs(1)),
            counts,
            refused: true,
        });
        self.ufo.put(h, lease, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: WindowCounts = WindowCounts {
        prev: 0,
        curr: 10,
        frac: 0.0,
    };

    #[test]
    fn a_lease_is_spent_then_empty() {
        let t = LeaseTable::new(3, 100);
        let h = t.hash(b"k");
        assert!(matches!(t.take(h), Local::Ask));
        let l = t.store_grant(h, 3, Duration::from_secs(60), C);
        assert_eq!(l.counts().curr, 8, "two units still held here");
        assert!(matches!(t.take(h), Local::Taken(_)));
        assert!(matches!(t.take(h), Local::Taken(_)));
        assert!(matches!(t.take(h), Local::Ask), "spent");
        l.give_back();
        assert!(matches!(t.take(h), Local::Taken(_)));
        // A concurrent second grant is pooled, not lost.
        t.store_grant(h, 3, Duration::from_secs(60), C);
        t.store_grant(h, 3, Duration::from_secs(60), C);
        let n = (0..10)
            .filter(|_| matches!(t.take(h), Local::Taken(_)))
            .count();
        assert_eq!(n, 4);
    }

    #[test]
    fn leases_and_refusals_expire() {
        let t = LeaseTable::new(5, 100);
        let h = t.hash(b"k");
        t.store_grant(h, 5, Duration::from_millis(20), C);
        std::thread::sleep(Duration::from_millis(30));
        assert!(matches!(t.take(h), Local::Ask), "window over");
        t.store_refusal(h, Duration::from_millis(20), C);
        assert!(matches!(t.take(h), Local::Refused(_)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(matches!(t.take(h), Local::Ask));
    }
}
