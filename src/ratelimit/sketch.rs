//! The count-min sketch under the local rate-limit counters (`local.rs`), called from
//! `request_filter` through `LocalCounters`: lock-free atomic cells, `rows` hashes per key.
//!
//! Same semantics as pingora-limits' `Estimator` (which it replaces): `incr` adds to every
//! row and returns the smallest row value, `decr` subtracts from every row, `get` reads the
//! smallest. The difference is the hash. `Estimator` seeds its hashers randomly in each
//! process and hides them, so its cells mean nothing to another process. Here the seeds are
//! stored, and the hash is our own, fixed function of seed and key bytes (not a library's,
//! whose output may change between versions). So a binary upgrade can hand the cells to the
//! new process (`local::export`/`import`) and no bucket refills.
//!
//! The row index comes from double hashing (`h1 + i·h2`, Kirsch–Mitzenmacher): one pass over
//! the key for any number of rows. The false-positive figures in `local.rs` are measured
//! on this sketch.

use std::sync::atomic::{AtomicIsize, Ordering};

/// Identifies the hash below in hand-over files; change it whenever the hash changes.
pub const HASH_ID: u32 = 2;

pub struct Sketch {
    /// `rows` × `columns` cells, row-major.
    cells: Box<[AtomicIsize]>,
    rows: usize,
    mask: usize,
    seeds: [u64; 2],
}

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;

#[inline]
fn mum(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// A keyed 64-bit hash of `key` (wyhash-style multiply-mix over 8-byte words).
#[inline]
fn hash(seed: u64, key: &[u8]) -> u64 {
    let mut h = seed ^ mum(key.len() as u64 ^ P0, P1);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mum(h ^ u64::from_le_bytes(w), P1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = mum(h ^ u64::from_le_bytes(w), P2);
    }
    mum(h ^ P0, h ^ P2)
}

impl Sketch {
    /// `columns` must be a power of two.
    pub fn new(rows: usize, columns: usize) -> Sketch {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        Self::with_seeds(rows, columns, [rng.gen(), rng.gen()])
    }

    pub fn with_seeds(rows: usize, columns: usize, seeds: [u64; 2]) -> Sketch {
        let columns = columns.max(1).next_power_of_two();
        Sketch {
            cells: (0..rows * columns).map(|_| AtomicIsize::new(0)).collect(),
            rows,
            mask: columns - 1,
            seeds,
        }
    }

    pub fn seeds(&self) -> [u64; 2] {
        self.seeds
    }

    pub fn columns(&self) -> usize {
        self.mask + 1
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    #[inline]
    fn cells_of(&self, key: &[u8]) -> impl Iterator<Item = &AtomicIsize> {
        // One pass over the key; the step is a second mix of it under the other seed. Odd, so
        // the rows' columns never coincide for a given key.
        let h1 = hash(self.seeds[0], key);
        let h2 = mum(h1 ^ self.seeds[1], P1 ^ self.seeds[1]) | 1;
        let columns = self.mask + 1;
        (0..self.rows).map(move |i| {
            let col = (h1.wrapping_add((i as u64).wrapping_mul(h2)) as usize) & self.mask;
            &self.cells[i * columns + col]
        })
    }

    /// Add `value` for `key`; returns the new estimate.
    pub fn incr(&self, key: &[u8], value: isize) -> isize {
        self.cells_of(key).fold(isize::MAX, |min, c| {
            min.min(c.fetch_add(value, Ordering::Relaxed).wrapping_add(value))
        })
    }

    pub fn decr(&self, key: &[u8], value: isize) {
        for c in self.cells_of(key) {
            c.fetch_sub(value, Ordering::Relaxed);
        }
    }

    pub fn get(&self, key: &[u8]) -> isize {
        self.cells_of(key)
            .fold(isize::MAX, |min, c| min.min(c.load(Ordering::Relaxed)))
    }

    pub fn reset(&self) {
        for c in self.cells.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Every cell, row-major (for the hand-over file).
    pub fn cells(&self) -> impl Iterator<Item = isize> + '_ {
        self.cells.iter().map(|c| c.load(Ordering::Relaxed))
    }

    /// Add `deltas` to every cell (row-major, exactly `rows × columns`).
    pub fn add(&self, deltas: &[i64]) -> bool {
        if deltas.len() != self.cells.len() {
            return false;
        }
        for (c, d) in self.cells.iter().zip(deltas) {
            if *d != 0 {
                c.fetch_add(*d as isize, Ordering::Relaxed);
            }
        }
        true
    }

    /// Overwrite every cell from `values` (row-major, exactly `rows × columns`).
    pub fn load(&self, values: &[i64]) -> bool {
        if values.len() != self.cells.len() {
            return false;
        }
        for (c, v) in self.cells.iter().zip(values) {
            c.store(*v as isize, Ordering::Relaxed);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_a_count_min_sketch() {
        let s = Sketch::new(4, 1024);
        assert_eq!(s.incr(b"a", 1), 1);
        assert_eq!(s.incr(b"b", 1), 1);
        assert_eq!(s.incr(b"a", 2), 3);
        assert_eq!(s.get(b"a"), 3);
        s.decr(b"a", 1);
        assert_eq!(s.get(b"a"), 2);
        assert_eq!(s.get(b"never"), 0);
        s.reset();
        assert_eq!(s.get(b"a"), 0);
    }

    #[test]
    fn the_same_seeds_give_the_same_cells_in_another_sketch() {
        let a = Sketch::new(4, 4096);
        for i in 0..500u32 {
            a.incr(format!("key-{i}").as_bytes(), i as isize % 7 + 1);
        }
        let b = Sketch::with_seeds(4, 4096, a.seeds());
        let cells: Vec<i64> = a.cells().map(|c| c as i64).collect();
        assert!(b.load(&cells));
        for i in 0..500u32 {
            let k = format!("key-{i}");
            assert_eq!(a.get(k.as_bytes()), b.get(k.as_bytes()));
            assert!(b.get(k.as_bytes()) > i as isize % 7);
        }
        // Other seeds: the same cells mean other keys.
        let c = Sketch::with_seeds(4, 4096, [1, 2]);
        assert!(c.load(&cells));
        let differ = (0..500u32)
            .filter(|i| {
                c.get(format!("key-{i}").as_bytes()) != a.get(format!("key-{i}").as_bytes())
            })
            .count();
        assert!(differ > 400, "{differ}");
        assert!(!b.load(&cells[1..]));
    }

    #[test]
    fn hash_is_a_fixed_function() {
        // Pinned values: a change here breaks hand-over files; bump HASH_ID with it.
        assert_eq!(hash(0, b""), hash(0, b""));
        assert_ne!(hash(0, b"a"), hash(1, b"a"));
        assert_ne!(hash(7, b"abcdefgh"), hash(7, b"abcdefgh\0"));
        assert_eq!(hash(42, b"client_ip:203.0.113.7"), 0x8006_dfa1_19ca_534d);
    }
}
