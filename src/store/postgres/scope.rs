//! What one PostgreSQL store writes and loads: the partitions its server owns
//! ([`Scope`]), and how it numbers items and events without a global sequence
//! ([`Alloc`]), so several owners can write one database at once
//! (`design/multi-node.md`, "Schema and identities").
//!
//! # Numbering
//! - **Item id** = `partition << 48 | n`, `n` going on from the largest id already in
//!   the partition's range `[p << 48, (p + 1) << 48)` (one indexed probe per owned
//!   partition at open). Ids written before partitions existed (below 2^48) stay: they
//!   fall in partition 0's range, whose owner goes on after them.
//! - **Event sequence** = `epoch << 40 | partition << 28 | counter`, the epoch the
//!   partition's lease was granted at, the counter from 1, going on from the largest
//!   sequence already in that epoch's range of the partition (a store reopened under
//!   the same grants), or from what pruning removed of it. A higher epoch's sequences
//!   are above every lower one's, so an account's events keep increasing when its
//!   partition moves; sequences written before (below 2^40) are below them all. A
//!   counter that would reach 2^28 is an error, never a wrap.
//!
//! # Loading, writing and pruning
//! A store loads (start-up scan, live ids, controls, business-hours walks under way)
//! only its own partitions' rows, and dispatch controls of every account (`*`). A write
//! for an account of a partition it does not hold (an item, its events, controls,
//! business hours) is refused, UNAVAILABLE "... partition P is owned by another node
//! (moved); try again", and leaves nothing behind (the write rolls back). Pruning too
//! takes only its own partitions' expired events, each partition in sequence order, and
//! records how far it went per partition (`events_pruned_through.P`): the events of a
//! partition nobody holds wait for its next owner. An account's cursor is out of range
//! exactly when something after it was pruned from its partition.
//!
//! # Without a fence
//! A store opened without a fence (tools, tests) owns every partition, each at the
//! epoch its lease row has now (0 where none was ever granted). Such a store must be the
//! database's only writer, as before. While the database has no partition count yet (no
//! node ever started on it: `store_meta.partitions` unset) the store numbers as before
//! partitions: the largest id and sequence plus one, and its rows carry no partition
//! (`NULL`); they are given theirs when the count is fixed (`schema::assign_partitions`).

use std::collections::HashMap;

use crate::domain::{self, ItemId};
use crate::store::StoreError;

/// Bits of an item id below its partition.
pub const ID_SHIFT: u32 = 48;
/// Bits of an event sequence below its epoch.
pub const EPOCH_SHIFT: u32 = 40;
/// Bits of an event sequence below its partition.
pub const PARTITION_SHIFT: u32 = 28;
/// Counters of one partition and epoch stay below this.
pub const COUNTER_LIMIT: u64 = 1 << PARTITION_SHIFT;

/// The first item id of partition `p`'s range (ids go on after it).
pub fn id_base(p: u32) -> i64 {
    i64::from(p) << ID_SHIFT
}

/// The range `[lo, hi)` of the sequences of partition `p` at `epoch`.
pub fn seq_range(p: u32, epoch: i64) -> (u64, u64) {
    let e = (epoch.max(0) as u64) << EPOCH_SHIFT;
    let lo = e | (u64::from(p) << PARTITION_SHIFT);
    (lo, lo + COUNTER_LIMIT)
}

/// Which accounts this store may write and loads.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The database's partition count; `None` while it is not fixed (every account is
    /// this store's, rows carry no partition).
    pub partitions: Option<u32>,
    /// The owned partitions with their epochs, by partition (empty when `partitions`
    /// is `None`).
    pub held: Vec<(u32, i64)>,
    /// `owned[p]`: whether partition `p` is held.
    owned: Vec<bool>,
}

impl Scope {
    /// Before partitions: every account, no partition.
    pub fn unpartitioned() -> Scope {
        Scope {
            partitions: None,
            held: Vec::new(),
            owned: Vec::new(),
        }
    }

    /// The partitions `held` (each at its epoch) of a database of `partitions`.
    ///
    /// # Errors
    /// A held partition that the database does not have.
    pub fn new(partitions: u32, mut held: Vec<(u32, i64)>) -> Result<Scope, StoreError> {
        held.sort_unstable();
        held.dedup_by_key(|h| h.0);
        let mut owned = vec![false; partitions as usize];
        for &(p, _) in &held {
            let slot = owned.get_mut(p as usize).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "partition {p} is held, but the database has {partitions} partitions"
                ))
            })?;
            *slot = true;
        }
        Ok(Scope {
            partitions: Some(partitions),
            held,
            owned,
        })
    }

    /// The partition of `account` (`None` before partitions).
    pub fn partition(&self, account: &str) -> Option<u32> {
        self.partitions
            .map(|n| crate::cluster::partition_of(account, n))
    }

    /// Whether this store owns `account`'s partition.
    pub fn owns(&self, account: &str) -> bool {
        match self.partition(account) {
            None => true,
            Some(p) => self.owned.get(p as usize).copied().unwrap_or(false),
        }
    }

    /// Whether a dispatch control of `account` is in force here: its own partitions',
    /// and those for every account (`*`, written by the owner of `*`'s partition).
    pub fn sees_control(&self, account: &str) -> bool {
        account == crate::engine::EVERY_ACCOUNT || self.owns(account)
    }

    /// The partition a write for `account` goes to (`None` before partitions).
    ///
    /// # Errors
    /// UNAVAILABLE when another node owns it: the write must go there.
    pub fn writable(&self, account: &str) -> domain::Result<Option<u32>> {
        let p = self.partition(account);
        match p {
            Some(p) if !self.owned.get(p as usize).copied().unwrap_or(false) => {
                Err(domain::Error::Unavailable(format!(
                    "account {account:?}: partition {p} is owned by another node (moved); try again"
                )))
            }
            _ => Ok(p),
        }
    }

    /// The owned partitions for a filter (`None`: every row, before partitions).
    pub fn filter(&self) -> Option<Vec<i32>> {
        self.partitions
            .map(|_| self.held.iter().map(|&(p, _)| p as i32).collect())
    }
}

/// Where numbering stands: the next id and sequence of each owned partition (or of the
/// whole database, before partitions).
#[derive(Debug, Default)]
pub struct Alloc {
    /// Before partitions: the next id and sequence.
    unpartitioned: (ItemId, u64),
    /// By partition: the next id, and the next sequence with the end of its range.
    ids: HashMap<u32, ItemId>,
    seqs: HashMap<u32, (u64, u64)>,
}

impl Alloc {
    /// Before partitions: going on from the largest id and the last sequence.
    pub fn unpartitioned(max_id: ItemId, last_seq: u64) -> Alloc {
        Alloc {
            unpartitioned: (max_id + 1, last_seq + 1),
            ..Alloc::default()
        }
    }

    /// By partition: for each held `(p, epoch)`, the largest id found in `p`'s range
    /// and the largest sequence written in its epoch's range or pruned, if any (one
    /// below the range is of an earlier epoch, and ignored).
    pub fn partitioned(found: &[(u32, i64, Option<ItemId>, Option<u64>)]) -> Alloc {
        let mut a = Alloc::default();
        for &(p, epoch, max_id, max_seq) in found {
            let id = max_id.unwrap_or(0).max(id_base(p)) + 1;
            let (lo, hi) = seq_range(p, epoch);
            // Anything at or above the range's start was used (a pruned mark past its
            // end uses it up: those sequences may have been handed out).
            let seq = max_seq.filter(|s| *s >= lo).unwrap_or(lo) + 1;
            a.ids.insert(p, id);
            a.seqs.insert(p, (seq, hi));
        }
        a
    }

    /// The next item id of partition `p` (`None`: before partitions).
    ///
    /// # Errors
    /// The partition's range is used up, or `p` is not held.
    pub fn next_id(&mut self, p: Option<u32>) -> Result<ItemId, StoreError> {
        let Some(p) = p else {
            let id = self.unpartitioned.0;
            self.unpartitioned.0 += 1;
            return Ok(id);
        };
        let next = self
            .ids
            .get_mut(&p)
            .ok_or_else(|| StoreError::Unavailable(format!("partition {p} is not held")))?;
        let id = *next;
        if id >= id_base(p + 1) {
            return Err(StoreError::Unavailable(format!(
                "partition {p} has used every item id of its range"
            )));
        }
        *next += 1;
        Ok(id)
    }

    /// The next event sequence of partition `p` (`None`: before partitions).
    ///
    /// # Errors
    /// The counter of the partition's epoch reached 2^28 (taking the partition again,
    /// at a new epoch, starts a new range), or `p` is not held.
    pub fn next_seq(&mut self, p: Option<u32>) -> Result<u64, StoreError> {
        let Some(p) = p else {
            let s = self.unpartitioned.1;
            self.unpartitioned.1 += 1;
            return Ok(s);
        };
        let (next, end) = self
            .seqs
            .get_mut(&p)
            .ok_or_else(|| StoreError::Unavailable(format!("partition {p} is not held")))?;
        let s = *next;
        if s >= *end {
            tracing::error!(
                partition = p,
                "the event counter of the partition's epoch is used up"
            );
            return Err(StoreError::Unavailable(format!(
                "partition {p} has used every event sequence of its epoch ({COUNTER_LIMIT}); \
                 it must be taken again at a new epoch"
            )));
        }
        *next += 1;
        Ok(s)
    }

    /// The largest sequence handed out or found at open (0 when none): where the
    /// "something committed" signal starts.
    pub fn last_seq(&self) -> u64 {
        if self.seqs.is_empty() {
            return self.unpartitioned.1.saturating_sub(1);
        }
        self.seqs
            .values()
            .map(|&(next, _)| next - 1)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_sequences_name_their_partition_and_epoch_and_go_on_from_what_was_found() {
        let mut a = Alloc::partitioned(&[
            (0, 1, Some(41), None),
            (3, 2, None, Some((2 << 40 | 3 << 28) + 7)),
            // A sequence of another epoch's range does not count.
            (5, 2, None, Some(1 << 40 | 5 << 28 | 9)),
        ]);
        assert_eq!(a.next_id(Some(0)).unwrap(), 42);
        assert_eq!(a.next_id(Some(3)).unwrap(), 3 << 48 | 1);
        assert_eq!(a.next_id(Some(3)).unwrap() >> 48, 3);
        assert_eq!(a.next_seq(Some(0)).unwrap(), 1 << 40 | 1);
        assert_eq!(a.next_seq(Some(3)).unwrap(), 2 << 40 | 3 << 28 | 8);
        assert_eq!(a.next_seq(Some(5)).unwrap(), 2 << 40 | 5 << 28 | 1);
        assert!(a.next_id(Some(4)).is_err(), "partition 4 is not held");
        assert_eq!(a.last_seq(), 2 << 40 | 5 << 28 | 1);
    }

    #[test]
    fn a_used_up_event_counter_is_an_error_not_a_wrap() {
        let (lo, hi) = seq_range(2, 1);
        let mut a = Alloc::partitioned(&[(2, 1, None, Some(hi - 2))]);
        assert_eq!(a.next_seq(Some(2)).unwrap(), hi - 1);
        let e = a.next_seq(Some(2)).unwrap_err();
        assert!(e.to_string().contains("every event sequence"), "{e}");
        assert!(a.next_seq(Some(2)).is_err(), "still used up");
        assert!(lo < hi);
    }

    #[test]
    fn a_write_for_a_partition_not_held_is_unavailable_naming_it() {
        let s = Scope::new(8, vec![(1, 1)]).unwrap();
        let other = (0..100)
            .map(|i| format!("acct-{i}"))
            .find(|a| crate::cluster::partition_of(a, 8) != 1)
            .unwrap();
        let p = crate::cluster::partition_of(&other, 8);
        match s.writable(&other) {
            Err(domain::Error::Unavailable(m)) => {
                assert!(
                    m.contains(&format!("partition {p} is owned by another node (moved)")),
                    "{m}"
                )
            }
            other => panic!("expected UNAVAILABLE, got {other:?}"),
        }
        assert!(!s.owns(&other));
        assert!(Scope::new(8, vec![(8, 1)]).is_err(), "no partition 8 of 8");
        assert!(Scope::unpartitioned().owns(&other));
    }
}
