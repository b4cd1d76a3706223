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

use super::meta::ItemMeta;

/// What dispatch's hint reads must take from memory: the meta of every item whose
/// committed change is not written back to its row yet.
pub(super) type Hints = Arc<std::sync::Mutex<HashMap<ItemId, ItemMeta>>>;

/// Dirty items that start a sweep at the beginning of the next group.
pub(super) const SWEEP_AT: usize = 32_768;

/// Items one sweep of the write path writes back, the longest-dirty first (a sweep
/// holds the writer: 1024 rows is a few ms; 8192 measured a worse lateness p99).
pub(super) const SWEEP_CHUNK: usize = 1024;

/// A writer with nothing to do sweeps what is dirty once this much time has passed
/// since the last sweep (so dirty items do not linger, and a restart replays little).
pub(super) const SWEEP_IDLE: Duration = Duration::from_millis(1000);

struct Dirty {
    item: Item,
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
    /// How many items are dirty, for readers deciding whether to ask for a sweep.
    published: Arc<AtomicUsize>,
    hints: Hints,
    last_sweep: Instant,
}

/// Where a write started in the open group's logs (to undo that write alone).
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    undo: usize,
    swept: usize,
}

impl Overlay {
    pub(super) fn new(published: Arc<AtomicUsize>, hints: Hints) -> Self {
        Overlay {
            dirty: HashMap::new(),
            undo: Vec::new(),
            swept: Vec::new(),
            published,
            hints,
            last_sweep: Instant::now(),
        }
    }

    /// The dirty version of the item, if any.
    pub(super) fn get(&self, id: ItemId) -> Option<&Item> {
        self.dirty.get(&id).map(|d| &d.item)
    }

    /// Every dirty item (unordered).
    pub(super) fn items(&self) -> impl Iterator<Item = &Item> {
        self.dirty.values().map(|d| &d.item)
    }

    pub(super) fn len(&self) -> usize {
        self.dirty.len()
    }

    /// The item changed, by the event `seq`.
    pub(super) fn put(&mut self, item: Item, seq: u64) {
        let id = item.id;
        let first_seq = self.dirty.get(&id).map_or(seq, |d| d.first_seq);
        let before = self.dirty.insert(
            id,
            Dirty {
                item,
                seq,
                first_seq,
            },
        );
        self.undo.push((id, before));
    }

    /// Up to `limit` dirty items, those dirty the longest, in id order, for a sweep,
    /// and the watermark the rows reach once they are written: `None` when no item
    /// is left dirty (every event), else the event before the first change still only
    /// in memory. They become clean when the group that writes them commits.
    pub(super) fn take_for_sweep(&mut self, limit: usize) -> (Vec<Item>, Option<u64>) {
        let mut keys: Vec<(u64, ItemId)> = self
            .dirty
            .iter()
            .map(|(&id, d)| (d.first_seq, id))
            .collect();
        let mark = if keys.len() > limit {
            keys.select_nth_unstable(limit);
            let rest_min = keys[limit..].iter().map(|k| k.0).min().unwrap_or(1);
            keys.truncate(limit);
            Some(rest_min - 1)
        } else {
            None
        };
        let mut ids: Vec<ItemId> = keys.into_iter().map(|(_, id)| id).collect();
        ids.sort_unstable();
        let items = ids
            .iter()
            .map(|id| {
                let d = &self.dirty[id];
                self.swept.push((*id, d.seq));
                d.item.clone()
            })
            .collect();
        (items, mark)
    }

    /// Where the open group's logs stand (before a write).
    pub(super) fn mark(&self) -> Mark {
        Mark {
            undo: self.undo.len(),
            swept: self.swept.len(),
        }
    }

    /// Undoes the changes made since `mark` (a write rolled back alone).
    pub(super) fn rollback_to(&mut self, mark: Mark) {
        while self.undo.len() > mark.undo {
            let (id, before) = self.undo.pop().expect("len > mark");
            match before {
                Some(d) => {
                    self.dirty.insert(id, d);
                }
                None => {
                    self.dirty.remove(&id);
                }
            }
        }
        self.swept.truncate(mark.swept);
    }

    /// The open group committed: its changes stay, what its sweeps wrote is clean.
    pub(super) fn committed(&mut self) {
        let mut hints = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        for (id, _) in self.undo.drain(..) {
            if let Some(d) = self.dirty.get(&id) {
                hints.insert(id, ItemMeta::of(&d.item));
            }
        }
        let mut swept_any = false;
        for (id, seq) in std::mem::take(&mut self.swept) {
            swept_any = true;
            if self.dirty.get(&id).is_some_and(|d| d.seq == seq) {
                self.dirty.remove(&id);
                hints.remove(&id);
            }
        }
        drop(hints);
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
        self.rollback_to(Mark { undo: 0, swept: 0 });
        self.publish();
    }

    /// Whether the writer should sweep (a chunk) now: many dirty items, or an idle
    /// writer with some, a while after the last sweep that left none.
    pub(super) fn wants_sweep(&self, idle: bool) -> bool {
        self.dirty.len() >= SWEEP_AT
            || (idle && !self.dirty.is_empty() && self.last_sweep.elapsed() >= SWEEP_IDLE)
    }

    fn publish(&self) {
        self.published.store(self.dirty.len(), Ordering::SeqCst);
    }
}
