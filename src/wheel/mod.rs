//! The timing wheel: an index of which item ids fall due when.
//!
//! This is a hierarchical timing wheel after Varghese & Lauck, "Hashed and
//! Hierarchical Timing Wheels" (SOSP 1987), shaped like tokio-util's
//! `time/wheel`. It is a pure, synchronous data structure: it never reads a
//! clock. Time is a `u64` count of milliseconds handed in by the caller (one
//! tick = 1 ms), and [`TimingWheel::advance`] moves it forward.
//!
//! # Levels
//!
//! Each level has 64 slots; a slot of level `n` spans `64^n` ms, so a level
//! spans `64^(n+1)` ms. A deadline lives at the level of the highest base-64
//! digit in which it differs from the current time, in the slot given by its
//! digit at that level. Eleven levels cover every `u64` deadline:
//!
//! | Level | Slot width   | Level range  |
//! |-------|--------------|--------------|
//! | 0     | 1 ms         | 64 ms        |
//! | 1     | 64 ms        | ~4.1 s       |
//! | 2     | ~4.1 s       | ~4.4 min     |
//! | 3     | ~4.4 min     | ~4.7 h       |
//! | 4     | ~4.7 h       | ~12.4 days   |
//! | 5     | ~12.4 days   | ~2.2 years   |
//! | 6     | ~2.2 years   | ~139 years   |
//! | 7..=10| ~139 years.. | 2^64 ms      |
//!
//! Levels 6 to 10 are the overflow for far deadlines. Rather than a heap or
//! `BTreeMap` beside the wheel, they are more coarse levels: a far timer sits in
//! a slot spanning years and is cascaded (re-sorted into finer levels) as time
//! comes closer, so insert and cancel stay O(1) for any deadline, up to and
//! including `u64::MAX`.
//!
//! # Costs
//!
//! - `insert`, `cancel`, `reschedule`: O(1) (one hash probe, a few link writes).
//! - `advance`: proportional to the entries that expire plus the entries
//!   cascaded down a level; at most one step per *non-empty* slot, since the
//!   `occupied` bitmap of each level skips empty ones. Idle time costs nothing,
//!   and an `advance` that reaches no occupied slot is one comparison.
//!   Cascading is a walk over linked entries scattered in memory, so each slot
//!   keeps four independent lists (striped by slab index) walked in turn, in
//!   chunks of 256 entries, to keep several cache misses in flight.
//! - `next_deadline`: O(1) unless the earliest pending entry was removed from a
//!   coarse slot since the last call, in which case that one slot is walked to
//!   find its new minimum (the same slot the next `advance` must cascade).
//!
//! # Memory
//!
//! A pending timer costs a 24-byte slab entry plus, in the id index, a `u32`
//! bucket and a control byte at a load factor between 7/16 and 7/8: 5.7 to
//! 11.4 bytes, so 30 to 36 bytes per timer in all (the benchmark measures RSS
//! per timer at 1M and 10M). The levels are a fixed ~17 KB. No allocation
//! happens per timer once the slab and index have grown; `advance` keeps two
//! small scratch buffers.
//!
//! # Order of expiry
//!
//! `advance` yields every entry whose deadline is `<= now` exactly once, in
//! ascending `(deadline, id)` order: entries with equal deadlines come out in
//! ascending id order (SQLite row ids, so the oldest row first).

mod index;
mod level;
mod slab;

#[cfg(test)]
mod model;

use std::fmt;

use index::{IdIndex, Lookup};
use level::{level_for, slot_for, slot_start, Level, List, LEVELS};
use slab::{Slab, NIL};

/// A hierarchical timing wheel of `(id, deadline)` pairs with 1 ms resolution.
///
/// Invariants (checked by the tests after every operation):
/// - every pending id is in the index exactly once and linked into exactly
///   one list;
/// - an entry with `deadline <= now` is in the overdue list, any other entry
///   is in slot `slot_for(deadline, l)` of level `l = level_for(now, deadline)`;
/// - hence every entry of level `l` shares `now`'s digits above `l` and has a
///   larger digit at `l`, so the lowest occupied slot of the lowest non-empty
///   level holds the earliest deadlines in the wheel;
/// - `wake_at` is at or before the start of that slot.
pub struct TimingWheel {
    /// The current time in ms: the last `now` given to `advance` (or `new`).
    now: u64,
    /// `levels[l]` holds entries with `now < deadline` differing from `now`
    /// first in digit `l`.
    levels: Box<[Level; LEVELS]>,
    /// Entries inserted with `deadline <= now`; they fire on the next advance.
    overdue: List,
    /// `overdue.min` may be below the true minimum (its entry was removed).
    overdue_stale: bool,
    /// A lower bound on the start of the earliest occupied slot (`u64::MAX`
    /// when the levels are empty): `advance` to a time before it has nothing
    /// to fire or cascade, so idle ticks cost a comparison.
    wake_at: u64,
    slab: Slab,
    index: IdIndex,
    /// Scratch space for the slab indices of the chunk of a slot being
    /// expired (at most `CHUNK + STRIPES`); kept so `advance` does not
    /// allocate once it has grown.
    batch: Vec<u32>,
    /// Scratch space for `(id, slab index)` of entries fired by the current
    /// `advance` (at most `FIRED_BATCH + CHUNK + STRIPES`): they leave the
    /// index in one tight loop, where the hash-table misses of different
    /// entries overlap, and only then are their slab entries freed.
    fired: Vec<(u64, u32)>,
}

/// Entries taken off a slot's lists per pass when it is expired: small enough
/// that they stay in L1/L2 cache between being unlinked and being relinked.
const CHUNK: usize = 256;

/// Fired entries collected before they are removed from the index together.
const FIRED_BATCH: usize = 4096;

/// Where an entry is linked, derived from its deadline and the wheel's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Overdue,
    Wheel { level: usize, slot: usize },
}

impl TimingWheel {
    /// An empty wheel whose current time is `now_ms`.
    pub fn new(now_ms: u64) -> TimingWheel {
        TimingWheel::with_capacity(now_ms, 0)
    }

    /// An empty wheel with room for `n` timers before it allocates again.
    pub fn with_capacity(now_ms: u64, n: usize) -> TimingWheel {
        TimingWheel {
            now: now_ms,
            levels: Box::new(std::array::from_fn(|_| Level::new())),
            overdue: List::EMPTY,
            overdue_stale: false,
            wake_at: u64::MAX,
            slab: Slab::with_capacity(n),
            index: IdIndex::with_capacity(n),
            batch: Vec::new(),
            fired: Vec::new(),
        }
    }

    /// The wheel's current time: the latest `now` passed to [`advance`]
    /// (never decreasing).
    ///
    /// [`advance`]: TimingWheel::advance
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is pending.
    pub fn contains(&self, id: u64) -> bool {
        self.index.get(&self.slab, id).is_some()
    }

    /// The deadline of `id`, if pending.
    pub fn deadline(&self, id: u64) -> Option<u64> {
        self.index
            .get(&self.slab, id)
            .map(|idx| self.slab.get(idx).deadline)
    }

    /// Schedules `id` to fire at `deadline` (ms), replacing (and returning)
    /// its previous deadline if it was already pending.
    ///
    /// A deadline at or before [`now`](TimingWheel::now) fires on the next
    /// call to `advance`.
    ///
    /// # Panics
    ///
    /// If `u32::MAX - 1` timers are pending at once.
    pub fn insert(&mut self, id: u64, deadline: u64) -> Option<u64> {
        let found = self
            .index
            .find_or_insert_with(&mut self.slab, id, |slab| slab.alloc(id, deadline));
        match found {
            Lookup::Inserted(idx) => {
                self.link(idx);
                None
            }
            Lookup::Found(idx) => Some(self.move_entry(idx, deadline)),
        }
    }

    /// Removes `id`, returning its deadline, or `None` if it was not pending.
    pub fn cancel(&mut self, id: u64) -> Option<u64> {
        let idx = self.index.remove(&self.slab, id)?;
        let deadline = self.slab.get(idx).deadline;
        self.unlink(idx);
        self.slab.free(idx);
        Some(deadline)
    }

    /// Moves pending `id` to `deadline`, returning its previous deadline.
    /// Does nothing and returns `None` if `id` is not pending (use
    /// [`insert`](TimingWheel::insert) to add it).
    pub fn reschedule(&mut self, id: u64, deadline: u64) -> Option<u64> {
        let idx = self.index.get(&self.slab, id)?;
        Some(self.move_entry(idx, deadline))
    }

    /// Moves time forward to `now` and appends to `out` every pending entry
    /// whose deadline is `<= now`, as `(id, deadline)`, in ascending
    /// `(deadline, id)` order. Each entry is yielded once and removed.
    ///
    /// If `now` is earlier than [`now()`](TimingWheel::now) (the clock went
    /// backwards) this is a no-op: nothing fires and time does not move.
    /// `out` is only appended to; the caller may reuse it across calls.
    pub fn advance(&mut self, now: u64, out: &mut Vec<(u64, u64)>) {
        if now < self.now {
            return;
        }
        if self.overdue.head != NIL {
            self.fire_overdue(out);
        }
        if now < self.wake_at {
            self.now = now;
            return;
        }
        self.wake_at = u64::MAX;
        while let Some((level, slot)) = self.first_slot() {
            let start = slot_start(self.now, level, slot);
            debug_assert!(
                start > self.now,
                "slot {slot} of level {level} starts at {start}, not after now={}",
                self.now
            );
            if start > now {
                self.wake_at = start;
                break;
            }
            // Every entry of the slot has a deadline in [start, start +
            // 64^level), and nothing pending is earlier: move time to the slot
            // and fire or cascade its entries.
            self.now = start;
            self.expire_slot(level, slot, out);
        }
        self.release_fired();
        self.now = now;
    }

    /// The earliest pending deadline, exactly, or `None` when empty. It may be
    /// at or before [`now`](TimingWheel::now) if an overdue entry was
    /// inserted since the last advance.
    ///
    /// Takes `&mut self` to refresh a cached slot minimum after the earliest
    /// entry was cancelled or moved.
    pub fn next_deadline(&mut self) -> Option<u64> {
        if self.overdue.head != NIL {
            if self.overdue_stale {
                self.overdue.min = self.list_min(self.overdue.head);
                self.overdue_stale = false;
            }
            return Some(self.overdue.min);
        }
        let (level, slot) = self.first_slot()?;
        if let Some(min) = self.levels[level].exact_min(slot) {
            return Some(min);
        }
        let heads = self.levels[level].heads(slot);
        let min = heads
            .iter()
            .filter(|&&head| head != NIL)
            .map(|&head| self.list_min(head))
            .min()
            .unwrap_or(u64::MAX);
        self.levels[level].set_min(slot, min);
        Some(min)
    }

    /// Bytes currently allocated by the slab and the id index (capacity, not
    /// just what is in use).
    pub fn allocated_bytes(&self) -> usize {
        self.slab.allocated_bytes()
            + self.index.allocated_bytes()
            + std::mem::size_of::<[Level; LEVELS]>()
            + self.batch.capacity() * std::mem::size_of::<u32>()
            + self.fired.capacity() * std::mem::size_of::<(u64, u32)>()
    }

    /// Where an entry with `deadline` belongs at the current time.
    #[inline]
    fn place(&self, deadline: u64) -> Place {
        if deadline <= self.now {
            Place::Overdue
        } else {
            let level = level_for(self.now, deadline);
            Place::Wheel {
                level,
                slot: slot_for(deadline, level),
            }
        }
    }

    /// Links the unlinked entry `idx` into the list its deadline belongs to.
    #[inline]
    fn link(&mut self, idx: u32) {
        let deadline = self.slab.get(idx).deadline;
        match self.place(deadline) {
            Place::Overdue => {
                if self.overdue.head == NIL || deadline < self.overdue.min {
                    self.overdue.min = deadline;
                }
                self.slab.push_front(&mut self.overdue.head, idx);
            }
            Place::Wheel { level, slot } => {
                let lvl = &mut self.levels[level];
                self.slab.push_front(lvl.head_mut(slot, idx), idx);
                lvl.note_linked(slot, deadline);
                // The slot's start stays put until time reaches it.
                self.wake_at = self.wake_at.min(slot_start(self.now, level, slot));
            }
        }
    }

    /// Unlinks entry `idx` from the list it is in (derived from its deadline).
    #[inline]
    fn unlink(&mut self, idx: u32) {
        let deadline = self.slab.get(idx).deadline;
        match self.place(deadline) {
            Place::Overdue => {
                self.slab.unlink(&mut self.overdue.head, idx);
                if self.overdue.head == NIL {
                    self.overdue_stale = false;
                } else if deadline == self.overdue.min {
                    self.overdue_stale = true;
                }
            }
            Place::Wheel { level, slot } => {
                let lvl = &mut self.levels[level];
                self.slab.unlink(lvl.head_mut(slot, idx), idx);
                lvl.note_unlinked(slot, deadline);
            }
        }
    }

    /// Relinks entry `idx` under a new deadline; returns the old one.
    fn move_entry(&mut self, idx: u32, deadline: u64) -> u64 {
        let old = self.slab.get(idx).deadline;
        if old != deadline {
            self.unlink(idx);
            self.slab.get_mut(idx).deadline = deadline;
            self.link(idx);
        }
        old
    }

    /// The lowest occupied slot of the lowest non-empty level: where the
    /// earliest wheel deadlines are.
    #[inline]
    fn first_slot(&self) -> Option<(usize, usize)> {
        self.levels
            .iter()
            .enumerate()
            .find_map(|(level, lvl)| lvl.first_occupied().map(|slot| (level, slot)))
    }

    /// Fires (appends to `out`, collects in `fired`) or cascades to a lower
    /// level every entry of `slot` of `level`, which starts at `self.now`.
    fn expire_slot(&mut self, level: usize, slot: usize, out: &mut Vec<(u64, u64)>) {
        let start = self.now;
        let first_fired = out.len();
        let mut heads = self.levels[level].take(slot);
        let mut batch = std::mem::take(&mut self.batch);
        loop {
            // A chunk at a time, so the entries are still in cache when they
            // are fired or relinked.
            batch.clear();
            self.slab.drain_lists(&mut heads, &mut batch, CHUNK);
            if batch.is_empty() {
                break;
            }
            for &idx in &batch {
                let entry = self.slab.get(idx);
                let (id, deadline) = (entry.id, entry.deadline);
                if deadline == start {
                    out.push((id, deadline));
                    self.fired.push((id, idx));
                } else {
                    debug_assert!(
                        deadline > start && level > 0,
                        "entry id={id} deadline={deadline} in slot starting {start}, level {level}"
                    );
                    self.link(idx);
                }
            }
            if self.fired.len() >= FIRED_BATCH {
                self.release_fired();
            }
        }
        self.batch = batch;
        // Everything fired here shares the deadline `start`: order by id.
        if out.len() - first_fired > 1 {
            out[first_fired..].sort_unstable_by_key(|&(id, _)| id);
        }
    }

    /// Removes the entries collected in `fired` from the index and frees
    /// their slab entries.
    fn release_fired(&mut self) {
        for &(id, idx) in &self.fired {
            self.index.remove_index(id, idx);
            self.slab.free(idx);
        }
        self.fired.clear();
    }

    /// Appends the overdue list in `(deadline, id)` order and empties it.
    fn fire_overdue(&mut self, out: &mut Vec<(u64, u64)>) {
        let batch = out.len();
        let mut cur = std::mem::replace(&mut self.overdue, List::EMPTY).head;
        self.overdue_stale = false;
        while cur != NIL {
            let entry = self.slab.get_mut(cur);
            let next = entry.next;
            entry.next = NIL;
            entry.prev = NIL;
            out.push((entry.id, entry.deadline));
            self.index.remove_index(entry.id, cur);
            self.slab.free(cur);
            cur = next;
        }
        if out.len() - batch > 1 {
            out[batch..].sort_unstable_by_key(|&(id, deadline)| (deadline, id));
        }
    }

    /// The smallest deadline in the list starting at `head` (non-empty).
    fn list_min(&self, mut cur: u32) -> u64 {
        debug_assert!(cur != NIL, "list_min of an empty list");
        let mut min = u64::MAX;
        while cur != NIL {
            let entry = self.slab.get(cur);
            min = min.min(entry.deadline);
            cur = entry.next;
        }
        min
    }

    /// Checks every invariant listed on the type; for tests.
    #[cfg(test)]
    fn check_invariants(&self) {
        use level::{stripe, STRIPES};
        // Walks one list; returns (entries, smallest deadline).
        let walk = |head: u32, place: Place, stripe_of: Option<usize>| {
            let (mut cur, mut prev, mut count, mut min) = (head, NIL, 0usize, u64::MAX);
            while cur != NIL {
                let e = self.slab.get(cur);
                assert_eq!(e.prev, prev, "broken back link at {cur}");
                assert_eq!(self.place(e.deadline), place, "entry {e:?} misplaced");
                assert_eq!(self.index.get(&self.slab, e.id), Some(cur), "{e:?}");
                if let Some(s) = stripe_of {
                    assert_eq!(stripe(cur), s, "entry {cur} in the wrong stripe");
                }
                count += 1;
                min = min.min(e.deadline);
                prev = cur;
                cur = e.next;
            }
            (count, min)
        };
        let (mut seen, min) = walk(self.overdue.head, Place::Overdue, None);
        if self.overdue.head != NIL {
            if self.overdue_stale {
                assert!(self.overdue.min <= min, "overdue bound above its minimum");
            } else {
                assert_eq!(self.overdue.min, min, "overdue minimum");
            }
        }
        for (level, lvl) in self.levels.iter().enumerate() {
            for slot in 0..level::SLOTS {
                let heads = lvl.heads(slot);
                let mut slot_min = u64::MAX;
                for (s, &head) in heads.iter().enumerate() {
                    let (count, min) = walk(head, Place::Wheel { level, slot }, Some(s));
                    seen += count;
                    slot_min = slot_min.min(min);
                }
                let occupied = heads != [NIL; STRIPES];
                assert!(
                    !occupied || lvl.first_occupied().is_some_and(|f| f <= slot),
                    "level {level} slot {slot} occupied but not in the bitmap"
                );
                if occupied {
                    if let Some(exact) = lvl.exact_min(slot) {
                        assert_eq!(exact, slot_min, "minimum of level {level} slot {slot}");
                    }
                }
            }
        }
        assert_eq!(seen, self.len(), "entries linked vs indexed");
        if let Some((level, slot)) = self.first_slot() {
            let start = slot_start(self.now, level, slot);
            assert!(
                self.wake_at <= start,
                "wake_at {} after {start}",
                self.wake_at
            );
        }
    }
}

impl fmt::Debug for TimingWheel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimingWheel")
            .field("now", &self.now)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

    /// Advances and returns what fired, checking invariants.
    fn fire(wheel: &mut TimingWheel, now: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        wheel.advance(now, &mut out);
        wheel.check_invariants();
        out
    }

    #[test]
    fn a_new_wheel_is_empty_at_its_start_time() {
        let mut wheel = TimingWheel::new(1_000);
        assert_eq!(wheel.now(), 1_000);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
        assert_eq!(fire(&mut wheel, 5_000), vec![]);
        assert_eq!(wheel.now(), 5_000);
    }

    #[test]
    fn an_entry_fires_at_its_deadline_and_not_before() {
        let mut wheel = TimingWheel::new(0);
        assert_eq!(wheel.insert(7, 100), None);
        assert!(wheel.contains(7));
        assert_eq!(wheel.deadline(7), Some(100));
        assert_eq!(wheel.next_deadline(), Some(100));
        assert_eq!(fire(&mut wheel, 99), vec![]);
        assert_eq!(fire(&mut wheel, 100), vec![(7, 100)]);
        assert!(!wheel.contains(7));
        assert_eq!(fire(&mut wheel, 1_000), vec![]);
    }

    #[test]
    fn one_advance_yields_everything_due_in_deadline_then_id_order() {
        let mut wheel = TimingWheel::new(0);
        // Spread over several levels, inserted out of order, with ties.
        let timers = [
            (5, 70_000),
            (1, 3),
            (9, 64),
            (2, 64),
            (4, 5_000_000),
            (3, 63),
            (8, 70_000),
            (6, 4_096),
        ];
        for (id, d) in timers {
            wheel.insert(id, d);
        }
        wheel.check_invariants();
        let mut expected = timers.to_vec();
        expected.sort_by_key(|&(id, d)| (d, id));
        assert_eq!(fire(&mut wheel, 10_000_000), expected);
        assert!(wheel.is_empty());
    }

    #[test]
    fn entries_sharing_a_tick_fire_in_ascending_id_order() {
        let mut wheel = TimingWheel::new(0);
        for id in [30, 10, 20, 40] {
            wheel.insert(id, 500);
        }
        assert_eq!(
            fire(&mut wheel, 500),
            vec![(10, 500), (20, 500), (30, 500), (40, 500)]
        );
    }

    #[test]
    fn a_crowded_tick_larger_than_the_internal_batches_fires_whole_in_id_order() {
        let mut wheel = TimingWheel::new(0);
        let n = (FIRED_BATCH + 3 * CHUNK) as u64;
        // Ids inserted in a scrambled order, all due on one far tick (level 3
        // at insert time), plus neighbours on the ticks around it.
        for i in 0..n {
            wheel.insert((i * 7_919) % n, 300_000);
        }
        wheel.insert(n, 299_999);
        wheel.insert(n + 1, 300_001);
        wheel.check_invariants();
        let fired = fire(&mut wheel, 300_000);
        assert_eq!(fired.len() as u64, n + 1);
        assert_eq!(fired[0], (n, 299_999));
        assert!(fired[1..]
            .iter()
            .enumerate()
            .all(|(i, &(id, d))| id == i as u64 && d == 300_000));
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.next_deadline(), Some(300_001));
    }

    #[test]
    fn slot_and_level_boundaries_fire_on_the_right_tick() {
        // Deadlines on both sides of every boundary of the first levels.
        let mut boundaries = Vec::new();
        for level in 1..5u32 {
            let edge = 1u64 << (6 * level);
            boundaries.extend([edge - 1, edge, edge + 1]);
        }
        for &d in &boundaries {
            for start in [0, 1, d - 1] {
                let mut wheel = TimingWheel::new(start);
                wheel.insert(1, d);
                wheel.check_invariants();
                assert_eq!(wheel.next_deadline(), Some(d));
                assert_eq!(fire(&mut wheel, d - 1), vec![], "start={start} d={d}");
                assert_eq!(wheel.next_deadline(), Some(d));
                assert_eq!(fire(&mut wheel, d), vec![(1, d)], "start={start} d={d}");
            }
        }
    }

    #[test]
    fn cascading_keeps_entries_due_and_next_deadline_exact() {
        let mut wheel = TimingWheel::new(0);
        // All in one level-2 slot [4096, 8192) at insert time.
        for (id, d) in [(1, 8_000), (2, 4_097), (3, 5_000), (4, 4_096)] {
            wheel.insert(id, d);
        }
        assert_eq!(wheel.next_deadline(), Some(4_096));
        // Reaching the slot cascades it down; only 4096 fires.
        assert_eq!(fire(&mut wheel, 4_096), vec![(4, 4_096)]);
        assert_eq!(wheel.next_deadline(), Some(4_097));
        assert_eq!(fire(&mut wheel, 4_999), vec![(2, 4_097)]);
        assert_eq!(fire(&mut wheel, 8_000), vec![(3, 5_000), (1, 8_000)]);
    }

    #[test]
    fn cancel_removes_an_entry_and_returns_its_deadline() {
        let mut wheel = TimingWheel::new(0);
        wheel.insert(1, 10);
        wheel.insert(2, 100_000);
        assert_eq!(wheel.cancel(2), Some(100_000));
        assert_eq!(wheel.cancel(2), None);
        assert_eq!(wheel.cancel(3), None);
        wheel.check_invariants();
        assert_eq!(wheel.len(), 1);
        assert_eq!(fire(&mut wheel, u64::MAX), vec![(1, 10)]);
    }

    #[test]
    fn cancelling_the_earliest_entry_of_a_coarse_slot_keeps_next_deadline_exact() {
        let mut wheel = TimingWheel::new(0);
        for (id, d) in [(1, 300_000), (2, 290_000), (3, 299_000)] {
            wheel.insert(id, d);
        }
        assert_eq!(wheel.next_deadline(), Some(290_000));
        wheel.cancel(2);
        assert_eq!(wheel.next_deadline(), Some(299_000));
        wheel.reschedule(3, 310_000);
        assert_eq!(wheel.next_deadline(), Some(300_000));
        wheel.check_invariants();
    }

    #[test]
    fn cancel_during_a_cascade_window_removes_the_cascaded_entry() {
        let mut wheel = TimingWheel::new(0);
        wheel.insert(1, 4_096 + 10);
        wheel.insert(2, 4_096 + 20);
        wheel.insert(3, 4_096);
        // Reaching 4096 cascades the level-2 slot into level 0.
        assert_eq!(fire(&mut wheel, 4_096), vec![(3, 4_096)]);
        assert_eq!(wheel.cancel(1), Some(4_106));
        wheel.check_invariants();
        assert_eq!(fire(&mut wheel, 5_000), vec![(2, 4_116)]);
    }

    #[test]
    fn reschedule_moves_a_pending_entry_and_ignores_an_absent_one() {
        let mut wheel = TimingWheel::new(0);
        wheel.insert(1, 1_000);
        assert_eq!(wheel.reschedule(1, 50), Some(1_000));
        assert_eq!(wheel.reschedule(2, 50), None);
        assert!(!wheel.contains(2));
        assert_eq!(wheel.next_deadline(), Some(50));
        assert_eq!(fire(&mut wheel, 999), vec![(1, 50)]);
    }

    #[test]
    fn inserting_a_present_id_replaces_its_deadline() {
        let mut wheel = TimingWheel::new(0);
        assert_eq!(wheel.insert(1, 1_000), None);
        assert_eq!(wheel.insert(1, 2_000), Some(1_000));
        assert_eq!(wheel.len(), 1);
        assert_eq!(fire(&mut wheel, 1_999), vec![]);
        assert_eq!(fire(&mut wheel, 2_000), vec![(1, 2_000)]);
    }

    #[test]
    fn an_id_can_be_reinserted_after_it_fired() {
        let mut wheel = TimingWheel::new(0);
        wheel.insert(1, 10);
        assert_eq!(fire(&mut wheel, 10), vec![(1, 10)]);
        assert_eq!(wheel.insert(1, 20), None);
        assert_eq!(fire(&mut wheel, 20), vec![(1, 20)]);
    }

    #[test]
    fn a_deadline_in_the_past_fires_on_the_next_advance_in_order() {
        let mut wheel = TimingWheel::new(10_000);
        wheel.insert(1, 9_000);
        wheel.insert(2, 0);
        wheel.insert(3, 10_000);
        wheel.insert(4, 10_001);
        assert_eq!(wheel.next_deadline(), Some(0));
        wheel.cancel(2);
        assert_eq!(wheel.next_deadline(), Some(9_000));
        // Advancing to the same time still fires what is overdue.
        assert_eq!(fire(&mut wheel, 10_000), vec![(1, 9_000), (3, 10_000)]);
        assert_eq!(fire(&mut wheel, 10_001), vec![(4, 10_001)]);
    }

    #[test]
    fn advancing_backwards_is_a_no_op() {
        let mut wheel = TimingWheel::new(1_000);
        wheel.insert(1, 500);
        wheel.insert(2, 1_500);
        assert_eq!(fire(&mut wheel, 999), vec![]);
        assert_eq!(wheel.now(), 1_000);
        assert_eq!(wheel.len(), 2);
        assert_eq!(fire(&mut wheel, 1_500), vec![(1, 500), (2, 1_500)]);
    }

    #[test]
    fn far_deadlines_beyond_the_six_fine_levels_fire_exactly() {
        let mut wheel = TimingWheel::new(0);
        let far = [
            (1, 10 * YEAR_MS),
            (2, 1 << 36),
            (3, (1 << 36) - 1),
            (4, 500 * YEAR_MS),
            (5, 10 * YEAR_MS + 1),
        ];
        for (id, d) in far {
            wheel.insert(id, d);
        }
        assert_eq!(wheel.next_deadline(), Some((1 << 36) - 1));
        assert_eq!(fire(&mut wheel, (1 << 36) - 1), vec![(3, (1 << 36) - 1)]);
        assert_eq!(wheel.next_deadline(), Some(1 << 36));
        assert_eq!(fire(&mut wheel, 10 * YEAR_MS - 1), vec![(2, 1 << 36)]);
        assert_eq!(wheel.next_deadline(), Some(10 * YEAR_MS));
        assert_eq!(
            fire(&mut wheel, 10 * YEAR_MS + 1),
            vec![(1, 10 * YEAR_MS), (5, 10 * YEAR_MS + 1)]
        );
        assert_eq!(wheel.cancel(4), Some(500 * YEAR_MS));
        assert!(wheel.is_empty());
    }

    #[test]
    fn u64_extremes_neither_overflow_nor_panic() {
        let mut wheel = TimingWheel::new(0);
        wheel.insert(1, u64::MAX);
        wheel.insert(2, 0);
        wheel.insert(3, u64::MAX - 1);
        assert_eq!(wheel.next_deadline(), Some(0));
        assert_eq!(fire(&mut wheel, 0), vec![(2, 0)]);
        assert_eq!(wheel.next_deadline(), Some(u64::MAX - 1));
        assert_eq!(fire(&mut wheel, u64::MAX - 2), vec![]);
        assert_eq!(
            fire(&mut wheel, u64::MAX),
            vec![(3, u64::MAX - 1), (1, u64::MAX)]
        );
        // At the end of time everything is overdue.
        wheel.insert(4, u64::MAX);
        wheel.insert(5, 7);
        assert_eq!(fire(&mut wheel, u64::MAX), vec![(5, 7), (4, u64::MAX)]);
        let mut late = TimingWheel::new(u64::MAX - 1);
        late.insert(6, u64::MAX);
        assert_eq!(fire(&mut late, u64::MAX), vec![(6, u64::MAX)]);
    }

    #[test]
    fn ids_at_the_u64_extremes_are_distinct_timers() {
        let mut wheel = TimingWheel::new(0);
        wheel.insert(0, 5);
        wheel.insert(u64::MAX, 5);
        assert_eq!(fire(&mut wheel, 5), vec![(0, 5), (u64::MAX, 5)]);
    }

    #[test]
    fn slab_entries_are_reused_after_warm_up() {
        let mut wheel = TimingWheel::with_capacity(0, 1_000);
        let mut out = Vec::new();
        let before = (wheel.slab.allocated_bytes(), wheel.index.allocated_bytes());
        for round in 0..10u64 {
            for id in 0..1_000 {
                wheel.insert(round * 1_000 + id, round * 100 + id % 100 + 1);
            }
            wheel.advance((round + 1) * 100, &mut out);
        }
        assert_eq!(out.len(), 10_000);
        let after = (wheel.slab.allocated_bytes(), wheel.index.allocated_bytes());
        assert_eq!(after, before);
    }
}
