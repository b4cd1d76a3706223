//! One level of the hierarchical wheel: 64 slots and the bitmaps that let the
//! wheel skip empty time.
//!
//! A level is responsible for the slot arithmetic (which level and slot a
//! deadline belongs to, relative to the wheel's current time) and for the
//! per-slot bookkeeping: the heads of each slot's lists (four stripes, see
//! [`STRIPES`]), an `occupied` bitmap so that finding the next non-empty slot
//! is one `trailing_zeros`, and a per-slot minimum deadline so that
//! `next_deadline` is exact without walking a list.
//!
//! The list links themselves live in the slab (`slab.rs`); a level only holds
//! heads. Nothing here knows about ids.

use super::slab::NIL;

/// Bits of a deadline consumed by one level.
pub(crate) const SLOT_BITS: u32 = 6;

/// Slots per level: `2^SLOT_BITS` = 64, one bit each in a `u64` bitmap.
pub(crate) const SLOTS: usize = 1 << SLOT_BITS;

/// Mask selecting a slot number out of a shifted deadline.
const SLOT_MASK: u64 = (SLOTS as u64) - 1;

/// Levels needed so that the top level covers every `u64` deadline:
/// `ceil(64 / SLOT_BITS)` = 11. Level 10 uses only 16 of its 64 slots
/// (bits 60..=63).
pub(crate) const LEVELS: usize = u64::BITS.div_ceil(SLOT_BITS) as usize;

/// The level at which `deadline` is stored when the wheel's time is `now`.
///
/// It is the level holding the highest bit in which `deadline` and `now`
/// differ, so a deadline shares every higher digit with `now` and its own digit
/// at that level is strictly greater than `now`'s.
///
/// Requires `deadline > now` (deadlines at or before `now` are kept in the
/// wheel's overdue list, never in a level).
#[inline]
pub(crate) fn level_for(now: u64, deadline: u64) -> usize {
    debug_assert!(
        deadline > now,
        "level_for needs a future deadline: now={now} deadline={deadline}"
    );
    // `| SLOT_MASK` makes the significant bit at least 5, i.e. level 0 for
    // deadlines that differ from `now` only in the lowest six bits.
    let masked = (now ^ deadline) | SLOT_MASK;
    let significant = (u64::BITS - 1 - masked.leading_zeros()) as usize;
    significant / SLOT_BITS as usize
}

/// The slot of `deadline` within `level`: its base-64 digit at that level.
#[inline]
pub(crate) fn slot_for(deadline: u64, level: usize) -> usize {
    debug_assert!(level < LEVELS, "level {level} out of range");
    ((deadline >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize
}

/// The first millisecond covered by `slot` of `level` in the rotation that
/// contains `now`: `now`'s digits above the level, `slot` at the level, zeros
/// below.
#[inline]
pub(crate) fn slot_start(now: u64, level: usize, slot: usize) -> u64 {
    debug_assert!(level < LEVELS && slot < SLOTS, "level={level} slot={slot}");
    let shift = level as u32 * SLOT_BITS;
    let above = shift + SLOT_BITS;
    // For the top level `above` is 66: nothing lies above it.
    let prefix = now.checked_shr(above).map_or(0, |p| p << above);
    prefix | ((slot as u64) << shift)
}

/// Lists per slot. An entry goes to stripe `slab index % STRIPES`, so a slot
/// is several independent chains: walking them in turn keeps several cache
/// misses in flight instead of one (a cascade is a pointer chase otherwise).
pub(crate) const STRIPES: usize = 4;

/// The stripe of slab entry `idx`.
#[inline]
pub(crate) fn stripe(idx: u32) -> usize {
    idx as usize % STRIPES
}

/// A plain list head with the minimum deadline in it (the overdue list).
#[derive(Clone, Copy, Debug)]
pub(crate) struct List {
    /// Slab index of the first entry, or `NIL` when empty.
    pub(crate) head: u32,
    /// The smallest deadline in the list. Exact unless the owner marks it
    /// stale, in which case it is a lower bound (an entry holding it was
    /// removed). Meaningless while the list is empty.
    pub(crate) min: u64,
}

impl List {
    pub(crate) const EMPTY: List = List {
        head: NIL,
        min: u64::MAX,
    };
}

/// The striped lists of one slot and their minimum deadline.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// `heads[s]` starts the list of entries with `stripe(idx) == s`.
    heads: [u32; STRIPES],
    /// Smallest deadline in the slot; a lower bound while the slot's `stale`
    /// bit is set. Meaningless while the slot is empty.
    min: u64,
}

impl Slot {
    const EMPTY: Slot = Slot {
        heads: [NIL; STRIPES],
        min: u64::MAX,
    };
}

/// One level of 64 slots.
///
/// Invariants:
/// - bit `s` of `occupied` is set iff some head of `slots[s]` is not `NIL`;
/// - bit `s` of `stale` is set only if bit `s` of `occupied` is;
/// - every entry in slot `s` of level `l` has `level_for(now, d) == l` and
///   `slot_for(d, l) == s`, where `now` is the wheel's current time, and sits
///   in stripe `stripe(idx)`.
#[derive(Debug)]
pub(crate) struct Level {
    /// One bit per non-empty slot.
    occupied: u64,
    /// One bit per slot whose `min` may be lower than its true minimum.
    stale: u64,
    slots: [Slot; SLOTS],
}

impl Level {
    pub(crate) fn new() -> Level {
        Level {
            occupied: 0,
            stale: 0,
            slots: [Slot::EMPTY; SLOTS],
        }
    }

    /// The lowest non-empty slot. Because every entry's digit at this level
    /// is above the current time's, the lowest set bit is also the earliest.
    #[inline]
    pub(crate) fn first_occupied(&self) -> Option<usize> {
        if self.occupied == 0 {
            None
        } else {
            Some(self.occupied.trailing_zeros() as usize)
        }
    }

    /// Head of the list in `slot` that entry `idx` belongs to.
    #[inline]
    pub(crate) fn head_mut(&mut self, slot: usize, idx: u32) -> &mut u32 {
        &mut self.slots[slot].heads[stripe(idx)]
    }

    /// Records that an entry with `deadline` was linked into `slot`.
    #[inline]
    pub(crate) fn note_linked(&mut self, slot: usize, deadline: u64) {
        let bit = 1u64 << slot;
        let s = &mut self.slots[slot];
        if self.occupied & bit == 0 {
            self.occupied |= bit;
            s.min = deadline;
        } else if deadline < s.min {
            s.min = deadline;
        }
    }

    /// Records that an entry with `deadline` was unlinked from `slot`.
    #[inline]
    pub(crate) fn note_unlinked(&mut self, slot: usize, deadline: u64) {
        let bit = 1u64 << slot;
        let s = &self.slots[slot];
        if s.heads == [NIL; STRIPES] {
            self.occupied &= !bit;
            self.stale &= !bit;
        } else if deadline == s.min {
            self.stale |= bit;
        }
    }

    /// Empties `slot` and returns its former heads.
    #[inline]
    pub(crate) fn take(&mut self, slot: usize) -> [u32; STRIPES] {
        let bit = 1u64 << slot;
        self.occupied &= !bit;
        self.stale &= !bit;
        std::mem::replace(&mut self.slots[slot], Slot::EMPTY).heads
    }

    /// The minimum deadline of `slot`, or `None` when the recorded minimum is
    /// stale and the caller must recompute it with [`Level::set_min`].
    #[inline]
    pub(crate) fn exact_min(&self, slot: usize) -> Option<u64> {
        if self.stale & (1u64 << slot) != 0 {
            None
        } else {
            Some(self.slots[slot].min)
        }
    }

    /// Stores a freshly recomputed minimum for `slot`.
    pub(crate) fn set_min(&mut self, slot: usize, min: u64) {
        self.slots[slot].min = min;
        self.stale &= !(1u64 << slot);
    }

    /// The heads of `slot`'s lists.
    pub(crate) fn heads(&self, slot: usize) -> [u32; STRIPES] {
        self.slots[slot].heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_cover_the_whole_u64_range() {
        assert_eq!(SLOTS, 64);
        assert_eq!(LEVELS, 11);
        assert!(SLOT_BITS as usize * LEVELS >= 64);
        assert!(SLOT_BITS as usize * (LEVELS - 1) < 64);
    }

    #[test]
    fn level_for_picks_the_level_of_the_highest_differing_bit() {
        // (now, deadline, level)
        let table: &[(u64, u64, usize)] = &[
            (0, 1, 0),
            (0, 63, 0),
            (0, 64, 1),
            (63, 64, 1),
            (64, 127, 0),
            (0, 4095, 1),
            (0, 4096, 2),
            (4095, 4096, 2),
            (0, (1 << 18) - 1, 2),
            (0, 1 << 18, 3),
            (0, 1 << 24, 4),
            (0, 1 << 30, 5),
            (0, (1 << 36) - 1, 5),
            (0, 1 << 36, 6),
            (0, 1 << 42, 7),
            (0, 1 << 60, 10),
            (0, u64::MAX, 10),
            (u64::MAX - 1, u64::MAX, 0),
            (u64::MAX - 64, u64::MAX, 1),
        ];
        for &(now, deadline, level) in table {
            assert_eq!(
                level_for(now, deadline),
                level,
                "now={now} deadline={deadline}"
            );
        }
    }

    #[test]
    fn slot_for_is_the_base_64_digit_of_the_level() {
        // (deadline, level, slot)
        let table: &[(u64, usize, usize)] = &[
            (0, 0, 0),
            (63, 0, 63),
            (64, 0, 0),
            (64, 1, 1),
            (4095, 1, 63),
            (4096, 1, 0),
            (4096, 2, 1),
            (u64::MAX, 0, 63),
            (u64::MAX, 9, 63),
            (u64::MAX, 10, 15),
        ];
        for &(deadline, level, slot) in table {
            assert_eq!(slot_for(deadline, level), slot, "deadline={deadline}");
        }
    }

    #[test]
    fn slot_start_keeps_the_digits_above_and_clears_those_below() {
        // (now, level, slot, start)
        let table: &[(u64, usize, usize, u64)] = &[
            (0, 0, 5, 5),
            (70, 0, 5, 69),
            (70, 1, 3, 192),
            (5000, 1, 2, 4096 + 128),
            (5000, 2, 3, 3 * 4096),
            (u64::MAX - 10, 0, 63, u64::MAX),
            (0, 10, 15, 15 << 60),
            (u64::MAX, 10, 15, 15 << 60),
        ];
        for &(now, level, slot, start) in table {
            assert_eq!(
                slot_start(now, level, slot),
                start,
                "now={now} level={level}"
            );
        }
    }

    #[test]
    fn a_level_tracks_occupancy_and_the_minimum_of_each_slot() {
        let mut level = Level::new();
        assert_eq!(level.first_occupied(), None);
        assert_eq!(level.first_occupied(), None);

        *level.head_mut(9, 1) = 1;
        level.note_linked(9, 600);
        *level.head_mut(4, 2) = 2;
        level.note_linked(4, 300);
        level.note_linked(4, 290);
        assert_eq!(level.first_occupied(), Some(4));
        assert_eq!(level.exact_min(4), Some(290));

        // Removing the minimum of a slot that stays occupied marks it stale.
        level.note_unlinked(4, 290);
        assert_eq!(level.exact_min(4), None);
        level.set_min(4, 300);
        assert_eq!(level.exact_min(4), Some(300));

        // Emptying a slot clears its bits.
        *level.head_mut(4, 2) = NIL;
        level.note_unlinked(4, 300);
        assert_eq!(level.first_occupied(), Some(9));
        assert_eq!(level.take(9), [NIL, 1, NIL, NIL]);
        assert_eq!(level.first_occupied(), None);
    }
}
