//! The write path's journal layout: item rows are written back later, sorted and in
//! bulk; what a write waits for is the append of its event.
//!
//! A change to an existing item (lease, ack, nack, cancel, activity, edit, ...) appends
//! its event (the journal: `events`, whose snapshot carries every mutable field of the
//! item) and puts the changed item here, in memory, *dirty*. The writer's own reads
//! ([`super::Tx::load`] and friends) look here first. A *sweep* writes every dirty item
//! back to `items` (and `leases`) in id order inside a group transaction, with the
//! watermark `sweep_mark.swept_seq`: every event up to it is reflected in the rows.
//! Start-up replays the events past the watermark onto the rows before anything else
//! reads them, so a crash loses nothing the journal holds.
//!
//! Only the writer thread touches this. Changes made by a write are undone if its
//! savepoint or its group rolls back (an undo log), and a dirty item is clean again
//! only once the sweep that wrote it has committed.
//!
//! Readers of `items` other than the writer (listings, GetItem, timelines) ask for a
//! sweep first when anything is dirty (`Store::read`); the dispatcher's hints may read
//! stale rows (every decision is re-checked by the writer against this overlay).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::{Item, ItemId};

use super::claims::Claims;
use crate::store::Claim;
use crate::store::ItemMeta;

/// What dispatch's hint reads must take from memory: the meta of every item whose
/// committed change is not written back to its row yet.
pub(super) type Hints = Arc<std::sync::Mutex<HashMap<ItemId, Hint>>>;

/// A committed change not yet on the item's row: its meta (dispatch's hints) and the
/// item itself (what readers see instead of the row, see `Store::get_item`).
#[derive(Debug, Clone)]
pub(super) struct Hint {
    pub(super) meta: ItemMeta,
    pub(super) item: Arc<Item>,
}

/// Dirty items that start a sweep at the beginning of the next group.
pub(super) const SWEEP_AT: usize = 32_768;

/// Items one sweep of the write path writes back, the longest-dirty first (a sweep
/// holds the writer: 1024 rows is a few ms; 8192 measured a worse lateness p99).
pub(super) const SWEEP_CHUNK: usize = 1024;

/// Dirty items past which the writer sweeps in its spare time (while the disk flushes
/// earlier groups, or with nothing queued), [`SWEEP_STEP`] items at a time.
pub(super) const SWEEP_SOON: usize = 4_096;

/// Items one spare-time sweep step writes back (~1.5 ms: the longest a write that
/// arrives meanwhile waits for it).
pub(super) const SWEEP_STEP: usize = 128;

/// A writer with nothing to do sweeps what is dirty once this much time has passed
/// since the last sweep (so dirty items do not linger, and a restart replays little).
pub(super) const SWEEP_IDLE: Duration = Duration::from_millis(1000);

struct Dirty {
    /// Shared with the published hints once committed (no copy per commit).
    item: Arc<Item>,
    /// The sequence of the item's last event.
    seq: u64,
    /// The sequence of its first event since its row was last written.
    first_seq: u64,
}

/// Dirty item rows, with the undo log of the group being written.
pub(super) struct Overlay {
    dirty: HashMap<ItemId, Dirty>,
    /// (item, what it was before) for every change of the open group, in order.
    undo: Vec<(ItemId, Option<Dirty>)>,
    /// Items a sweep of the open group wrote, with the sequence they were written at:
    /// clean once the group commits (if not changed again since).
    swept: Vec<(ItemId, u64)>,
    /// The items of `swept` not changed since: a later sweep of the group skips them
    /// (one changed since is swept again, so the watermark never passes its change).
    taken: std::collections::HashSet<ItemId>,
    /// The dirty items by the sequence of their first change since their row was
    /// written: a sweep takes the front without looking at the rest.
    by_age: std::collections::BTreeSet<(u64, ItemId)>,
    /// How many items are dirty, for readers deciding whether to ask for a sweep.
    published: Arc<AtomicUsize>,
    hints: Hints,
    last_sweep: Instant,
    /// The dispatcher's leases waiting for the writer (see `claims`).
    pub(super) claims: Arc<Claims>,
    /// Claims the open group applied, in order: given back if what applied them rolls
    /// back.
    applied: Vec<Claim>,
    /// Items changed in the open group (a superset: a write rolled back alone leaves
    /// its items here until the group ends). A lease is not taken through a write on
    /// such an item: its job would carry a change that may not commit.
    changed: std::collections::HashSet<ItemId>,
}

/// Where a write started in the open group's logs (to undo that write alone).
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    undo: usize,
    swept: usize,
    applied: usize,
}

impl Overlay {
    pub(super) fn new(published: Arc<AtomicUsize>, hints: Hints, claims: Arc<Claims>) -> Self {
        Overlay {
            dirty: HashMap::new(),
            undo: Vec::new(),
            swept: Vec::new(),
            taken: Default::default(),
            by_age: std::collections::BTreeSet::new(),
            published,
            hints,
            last_sweep: Instant::now(),
            claims,
            applied: Vec::new(),
            changed: Default::default(),
        }
    }

    /// The open group is applying this claim (its change is `put` next).
    pub(super) fn applying(&mut self, claim: Claim) {
        self.applied.push(claim);
    }

    /// Whether the open group changed the item (possibly by a write since rolled back).
    pub(super) fn changed_in_group(&self, id: ItemId) -> bool {
        self.changed.contains(&id)
    }

    /// The dirty version of the item, if any.
    pub(super) fn get(&self, id: ItemId) -> Option<&Item> {
        self.dirty.get(&id).map(|d| &*d.item)
    }

    /// Every dirty item (unordered).
    pub(super) fn items(&self) -> impl Iterator<Item = &Item> {
        self.dirty.values().map(|d| &*d.item)
    }

    pub(super) fn len(&self) -> usize {
        self.dirty.len()
    }

    /// The item changed, by the event `seq`.
    pub(super) fn put(&mut self, item: Item, seq: u64) {
        let id = item.id;
        let first_seq = match self.dirty.get(&id) {
            Some(d) => d.first_seq,
            None => {
                self.by_age.insert((seq, id));
                seq
            }
        };
        self.taken.remove(&id);
        self.changed.insert(id);
        let before = self.dirty.insert(
            id,
            Dirty {
                item: Arc::new(item),
                seq,
                first_seq,
            },
        );
        self.undo.push((id, before));
    }

    /// Up to `limit` dirty items (their ids: [`Overlay::get`] has them), those dirty the
    /// longest, in id order, for a sweep,
    /// and the watermark the rows reach once they are written: `None` when no item
    /// is left dirty (every event), else the event before the first change still only
    /// in memory. They become clean when the group that writes them commits.
    pub(super) fn take_for_sweep(&mut self, limit: usize) -> (Vec<ItemId>, Option<u64>) {
        // Items a sweep of this group wrote already, unchanged since, are skipped (they
        // stay in `by_age` until the group commits).
        let taken = &self.taken;
        let mut front = self.by_age.iter().filter(|(_, id)| !taken.contains(id));
        let mut ids: Vec<ItemId> = Vec::with_capacity(limit.min(self.dirty.len()));
        ids.extend(front.by_ref().take(limit).map(|&(_, id)| id));
        let mark = front.next().map(|&(first, _)| first - 1);
        ids.sort_unstable();
        for id in &ids {
            self.swept.push((*id, self.dirty[id].seq));
            self.taken.insert(*id);
        }
        (ids, mark)
    }

    /// Where the open group's logs stand (before a write).
    pub(super) fn mark(&self) -> Mark {
        Mark {
            undo: self.undo.len(),
            swept: self.swept.len(),
            applied: self.applied.len(),
        }
    }

    /// Undoes the changes made since `mark` (a write rolled back alone).
    pub(super) fn rollback_to(&mut self, mark: Mark) {
        while self.undo.len() > mark.undo {
            let (id, before) = self.undo.pop().expect("len > mark");
            match before {
                Some(d) => {
                    // Same first change: its place in `by_age` is unchanged.
                    self.dirty.insert(id, d);
                }
                None => {
                    if let Some(d) = self.dirty.remove(&id) {
                        self.by_age.remove(&(d.first_seq, id));
                    }
                }
            }
        }
        for (id, _) in self.swept.drain(mark.swept..) {
            self.taken.remove(&id);
        }
        if self.applied.len() > mark.applied {
            self.claims.give_back(self.applied.drain(mark.applied..));
        }
    }

    /// The open group committed: its changes stay, what its sweeps wrote is clean.
    pub(super) fn committed(&mut self) {
        // Each changed item once (most change more than once in a group).
        let mut changed: Vec<ItemId> = self.undo.drain(..).map(|(id, _)| id).collect();
        changed.sort_unstable();
        changed.dedup();
        let mut hints = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        for id in changed {
            if let Some(d) = self.dirty.get(&id) {
                hints.insert(
                    id,
                    Hint {
                        meta: ItemMeta::of(&d.item),
                        item: d.item.clone(),
                    },
                );
            }
        }
        let mut swept_any = false;
        self.taken.clear();
        for (id, seq) in std::mem::take(&mut self.swept) {
            swept_any = true;
            if self.dirty.get(&id).is_some_and(|d| d.seq == seq) {
                if let Some(d) = self.dirty.remove(&id) {
                    self.by_age.remove(&(d.first_seq, id));
                }
                hints.remove(&id);
            }
        }
        drop(hints);
        self.claims.committed(self.applied.len());
        self.applied.clear();
        self.changed.clear();
        // After the rows and the hints: a claim read before this may be stale.
        self.claims.group_ended();
        if swept_any {
            if self.dirty.is_empty() {
                // A sweep cycle ended: the idle timer starts again.
                self.last_sweep = Instant::now();
            }
            if self.dirty.capacity() > 4 * SWEEP_AT.max(self.dirty.len()) {
                self.dirty.shrink_to(SWEEP_AT);
            }
        }
        self.publish();
    }

    /// The open group did not commit: every change it made is undone.
    pub(super) fn abandoned(&mut self) {
        self.rollback_to(Mark {
            undo: 0,
            swept: 0,
            applied: 0,
        });
        self.changed.clear();
        self.claims.group_ended();
        self.publish();
    }

    /// Whether the writer should sweep (a chunk) now: many dirty items, or an idle
    /// writer with some, a while after the last sweep that left none.
    pub(super) fn wants_sweep(&self, idle: bool) -> bool {
        self.dirty.len() >= SWEEP_AT
            || (idle && !self.dirty.is_empty() && self.last_sweep.elapsed() >= SWEEP_IDLE)
    }

    /// How many items the sweep at a commit writes back (see [`Overlay::wants_sweep`]):
    /// [`SWEEP_CHUNK`], and more when the writes outran the sweeps, so that the dirty
    /// items never stay much above [`SWEEP_AT`] (they are held in memory: a drain of
    /// 100k jobs left 107k dirty at its end when this was a fixed 1024 a commit).
    pub(super) fn sweep_size(&self) -> usize {
        SWEEP_CHUNK + self.dirty.len().saturating_sub(SWEEP_AT)
    }

    /// Whether enough is dirty for the writer to sweep in its spare time.
    pub(super) fn wants_sweep_soon(&self) -> bool {
        self.dirty.len() >= SWEEP_SOON
    }

    fn publish(&self) {
        self.published.store(self.dirty.len(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::pending_chat as item;

    fn overlay() -> Overlay {
        Overlay::new(Default::default(), Default::default(), Default::default())
    }

    /// A sweep takes the items dirty the longest, in id order, and the watermark stops
    /// before the first change it leaves in memory; they are clean once it commits.
    #[test]
    fn a_sweep_takes_the_longest_dirty_first_and_marks_what_is_left() {
        let mut o = overlay();
        o.put(item(9), 10);
        o.put(item(3), 11);
        o.put(item(5), 12);
        o.put(item(9), 13); // still dirty since 10
        o.committed();
        let (items, mark) = o.take_for_sweep(2);
        assert_eq!(items, vec![3, 9]);
        assert_eq!(
            mark,
            Some(11),
            "item 5's first change (12) is not on its row"
        );
        // A second sweep in the same group does not write them again.
        let (again, mark2) = o.take_for_sweep(10);
        assert_eq!(again, vec![5]);
        assert_eq!(mark2, None);
        o.committed();
        assert_eq!(o.len(), 0);
        assert!(o.by_age.is_empty());
    }

    /// An item swept earlier in the open group and changed again since is swept again
    /// (with its latest state) or holds the watermark back: a watermark past its new
    /// change would let a restart skip that change (its row has the older state).
    #[test]
    fn an_item_changed_after_its_sweep_in_the_same_group_is_swept_again() {
        let mut o = overlay();
        o.put(item(1), 1);
        o.put(item(2), 2);
        o.committed();
        let (items, mark) = o.take_for_sweep(1);
        assert_eq!(items, vec![1]);
        assert_eq!(mark, Some(1));
        let mut changed = item(1);
        changed.attempts = 7;
        o.put(changed, 3);
        let (items, mark) = o.take_for_sweep(10);
        assert_eq!(o.get(1).map(|i| i.attempts), Some(7));
        assert!(
            items.contains(&1) || mark.is_some_and(|m| m < 3),
            "the watermark ({mark:?}) passes item 1's change at 3, which no sweep wrote"
        );
        o.committed();
        assert_eq!(o.len(), 0, "item 1's latest state is on its row");
    }

    /// Writes that outrun the sweeps are caught up with at the next commit's sweep:
    /// what stays dirty (in memory) is bounded.
    #[test]
    fn a_commit_past_the_threshold_sweeps_back_below_it() {
        let mut o = overlay();
        let n = SWEEP_AT + 5_000;
        for id in 1..=n as ItemId {
            o.put(item(id), id as u64);
        }
        o.committed();
        assert!(o.wants_sweep(false));
        let (items, _) = o.take_for_sweep(o.sweep_size());
        assert_eq!(items.len(), 5_000 + SWEEP_CHUNK);
        o.committed();
        assert_eq!(o.len(), SWEEP_AT - SWEEP_CHUNK);
        assert!(!o.wants_sweep(false));
    }

    /// A write rolled back alone takes its changes (and their place in line) with it;
    /// a sweep of a group that does not commit leaves the items dirty.
    #[test]
    fn undone_writes_and_uncommitted_sweeps_leave_the_overlay_as_it_was() {
        let mut o = overlay();
        o.put(item(1), 5);
        o.committed();
        let mark = o.mark();
        o.put(item(2), 6);
        o.put(item(1), 7);
        o.rollback_to(mark);
        assert_eq!(o.len(), 1);
        assert_eq!(o.by_age.iter().copied().collect::<Vec<_>>(), vec![(5, 1)]);
        let (items, _) = o.take_for_sweep(10);
        assert_eq!(items.len(), 1);
        o.abandoned();
        assert_eq!(o.len(), 1, "the sweep did not commit: still dirty");
        let (items, mark) = o.take_for_sweep(10);
        assert_eq!((items.len(), mark), (1, None));
    }
}
