//! Invalidation generations: a fixed table of counters, one per hash slot of the key space, that
//! every invalidation this process learns of bumps (local writes, remote invalidations), plus one
//! epoch counter that every L1 clear bumps (Redis data loss, a broken or lagging stream).
//!
//! Why: two questions must be answered without touching the tiers, on every request.
//! - *Is a result built earlier still current?* A caller snapshots the generation of each key
//!   before it reads the key's value ([`Snapshot`]); while every snapshotted slot and the epoch are
//!   unchanged, no invalidation of those keys has happened since, so a response built from them
//!   is still the answer (the whole-response cache's check: O(keys) atomic loads, no locks, no
//!   awaits).
//! - *May this caller share that load?* A single-flight follower may only join a load that began
//!   after the newest invalidation of every key it asks for: flights are keyed by the keys *and*
//!   their generations, so a reader that starts after a write's invalidation never joins a load
//!   that read the database before it.
//!
//! Ordering: an invalidation first makes the tiers refuse the old value (L1 tombstone or mark),
//! then bumps the generation (release); a reader loads the generation (acquire) before it reads
//! the value. So a reader that got an old value also got the old generation, and its result
//! fails the later check. Distinct keys may share a slot: that costs a spurious miss, never a
//! stale answer.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// 2^18 slots (2 MiB): a key shares its slot with a given other key with probability 4e-6.
const SLOTS: usize = 1 << 18;

/// A fixed-seed hash (slots are only compared within one process; a fixed seed keeps them
/// reproducible in tests), and a fast one: every key of every batch is hashed once.
const SLOT_HASH: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x9e37_79b9);

pub(crate) struct Generations {
    slots: Box<[AtomicU64]>,
    epoch: AtomicU64,
}

/// The generation a key had when a caller was about to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Snapshot {
    pub slot: u32,
    pub generation: u64,
}

impl Generations {
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn slot(key: &str) -> u32 {
        let mut h = SLOT_HASH.build_hasher();
        h.write(key.as_bytes());
        (h.finish() as usize & (SLOTS - 1)) as u32
    }

    /// The key's current generation; call before reading its value.
    pub fn snapshot(&self, key: &str) -> Snapshot {
        let slot = Self::slot(key);
        Snapshot {
            slot,
            generation: self.slots[slot as usize].load(Ordering::Acquire),
        }
    }

    /// Call after the tiers refuse the key's old value.
    pub fn bump(&self, key: &str) {
        self.slots[Self::slot(key) as usize].fetch_add(1, Ordering::AcqRel);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Call after L1 was cleared: every earlier snapshot is stale.
    pub fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether no snapshotted key was invalidated and no clear happened since `epoch`.
    pub fn unchanged(&self, epoch: u64, snapshots: &[Snapshot]) -> bool {
        self.epoch() == epoch
            && snapshots
                .iter()
                .all(|s| self.slots[s.slot as usize].load(Ordering::Acquire) == s.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_or_a_clear_ends_a_snapshot_and_other_keys_are_untouched() {
        let g = Generations::new();
        let a = g.snapshot("a");
        let b = g.snapshot("b");
        let epoch = g.epoch();
        assert!(g.unchanged(epoch, &[a, b]));
        g.bump("a");
        assert!(!g.unchanged(epoch, &[a]));
        assert_eq!(
            g.unchanged(epoch, &[b]),
            Generations::slot("a") != Generations::slot("b")
        );
        let b = g.snapshot("b");
        g.bump_epoch();
        assert!(!g.unchanged(epoch, &[b]));
        assert!(g.unchanged(g.epoch(), &[b]));
    }

    #[test]
    fn slots_are_stable_and_spread() {
        assert_eq!(
            Generations::slot("v1:user:1"),
            Generations::slot("v1:user:1")
        );
        let distinct: std::collections::HashSet<u32> = (0..1000)
            .map(|i| Generations::slot(&format!("v1:user:{i}:profile")))
            .collect();
        assert!(distinct.len() > 990, "{} distinct slots", distinct.len());
    }
}
