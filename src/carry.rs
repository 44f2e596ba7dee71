//! State that survives a config reload: process-wide registries of shared objects keyed by
//! their definition (rate-limit counters, JWKS key sets, verified-token caches, upstream pools
//! with their health). Only the config compiler looks here, never a request phase.
//!
//! Entries are held weakly. During a reload the old snapshot is still published while the new
//! one compiles, so an unchanged definition finds its live object and shares it; a changed
//! definition gets a fresh one, and an object no snapshot uses any more is dropped with the
//! last snapshot that held it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

pub struct Registry<T>(OnceLock<Mutex<HashMap<String, Weak<T>>>>);

impl<T> Registry<T> {
    pub const fn new() -> Registry<T> {
        Registry(OnceLock::new())
    }

    /// The live object for `definition`, or a new one from `make`. The second value is true
    /// when an existing object was reused.
    pub fn shared(&self, definition: String, make: impl FnOnce() -> T) -> (Arc<T>, bool) {
        let mut map = self
            .0
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = map.get(&definition).and_then(Weak::upgrade) {
            return (existing, true);
        }
        let fresh = Arc::new(make());
        map.insert(definition, Arc::downgrade(&fresh));
        (fresh, false)
    }
}

impl<T> Registry<T> {
    /// Every object some snapshot still holds, with its definition.
    pub fn live(&self) -> Vec<(String, Arc<T>)> {
        let map = self
            .0
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter_map(|(k, w)| w.upgrade().map(|t| (k.clone(), t)))
            .collect()
    }
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_while_alive_and_only_for_the_same_definition() {
        static R: Registry<u32> = Registry::new();
        let (a, reused) = R.shared("a".into(), || 1);
        assert!(!reused);
        let (a2, reused) = R.shared("a".into(), || 2);
        assert!(reused && Arc::ptr_eq(&a, &a2));
        let (b, reused) = R.shared("b".into(), || 3);
        assert!(!reused && *b == 3);
        drop((a, a2));
        // Nobody holds "a" any more: a new definition object is made.
        let (a3, reused) = R.shared("a".into(), || 4);
        assert!(!reused && *a3 == 4);
    }
}
