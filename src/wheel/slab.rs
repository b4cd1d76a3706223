//! Storage for pending timers: a slab of fixed-size entries with a free list,
//! and the doubly linked slot lists threaded through it by `u32` index.
//!
//! A timer costs one 24-byte [`Entry`] and no heap allocation of its own: the
//! slab's `Vec` grows while the wheel warms up, after which freed entries are
//! reused through the free list. Slot membership is not stored in the entry;
//! the wheel derives it from the deadline and its current time.

/// The "no entry" link.
pub(crate) const NIL: u32 = u32::MAX;

/// One pending timer.
///
/// `next` and `prev` link the entry into exactly one list (a wheel slot or the
/// overdue list). While the entry is free, `next` links the free list and the
/// other fields are meaningless.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) deadline: u64,
    pub(crate) next: u32,
    pub(crate) prev: u32,
}

// The memory budget (40 bytes per timer including the id index) relies on it.
const _: () = assert!(std::mem::size_of::<Entry>() == 24);

/// A `Vec` of entries plus a free list.
///
/// Invariant: every index in `0..entries.len()` is either reachable from
/// `free` (through `next`) or is linked into exactly one wheel list; never
/// both.
#[derive(Debug)]
pub(crate) struct Slab {
    entries: Vec<Entry>,
    /// Head of the free list, `NIL` when every entry is in use.
    free: u32,
}

impl Default for Slab {
    fn default() -> Slab {
        Slab::with_capacity(0)
    }
}

impl Slab {
    pub(crate) fn with_capacity(n: usize) -> Slab {
        Slab {
            entries: Vec::with_capacity(n),
            free: NIL,
        }
    }

    /// Stores a new, unlinked entry and returns its index.
    ///
    /// # Panics
    ///
    /// If `u32::MAX - 1` entries are in use at once (about 100 GB of timers).
    #[inline]
    pub(crate) fn alloc(&mut self, id: u64, deadline: u64) -> u32 {
        let entry = Entry {
            id,
            deadline,
            next: NIL,
            prev: NIL,
        };
        if self.free != NIL {
            let idx = self.free;
            let slot = &mut self.entries[idx as usize];
            self.free = slot.next;
            *slot = entry;
            idx
        } else {
            let idx = u32::try_from(self.entries.len())
                .ok()
                .filter(|&i| i != NIL)
                .expect("a timing wheel holds fewer than u32::MAX timers");
            self.entries.push(entry);
            idx
        }
    }

    /// Returns an unlinked entry to the free list.
    #[inline]
    pub(crate) fn free(&mut self, idx: u32) {
        let e = &mut self.entries[idx as usize];
        debug_assert!(
            e.next == NIL && e.prev == NIL,
            "freeing a linked entry: idx={idx} entry={e:?}"
        );
        e.next = self.free;
        self.free = idx;
    }

    #[inline]
    pub(crate) fn get(&self, idx: u32) -> &Entry {
        &self.entries[idx as usize]
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, idx: u32) -> &mut Entry {
        &mut self.entries[idx as usize]
    }

    /// Links the unlinked entry `idx` at the front of the list starting at
    /// `head`.
    #[inline]
    pub(crate) fn push_front(&mut self, head: &mut u32, idx: u32) {
        let old = *head;
        {
            let e = &mut self.entries[idx as usize];
            debug_assert!(
                e.next == NIL && e.prev == NIL,
                "linking a linked entry: idx={idx} entry={e:?}"
            );
            e.next = old;
        }
        if old != NIL {
            self.entries[old as usize].prev = idx;
        }
        *head = idx;
    }

    /// Unlinks entry `idx` from the list starting at `head`, which must be the
    /// list that holds it.
    #[inline]
    pub(crate) fn unlink(&mut self, head: &mut u32, idx: u32) {
        let Entry { next, prev, .. } = self.entries[idx as usize];
        if prev == NIL {
            debug_assert!(
                *head == idx,
                "unlinking idx={idx} from a list headed by {head}"
            );
            *head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        let e = &mut self.entries[idx as usize];
        e.next = NIL;
        e.prev = NIL;
    }

    /// Unlinks entries from the lists starting at `heads`, appending their
    /// indices to `out` and advancing `heads`, until `out` holds at least
    /// `limit` indices or every list is empty. The lists are walked in turn,
    /// one step each, so the cache misses of independent lists overlap.
    pub(crate) fn drain_lists<const N: usize>(
        &mut self,
        heads: &mut [u32; N],
        out: &mut Vec<u32>,
        limit: usize,
    ) {
        while out.len() < limit {
            let mut live = false;
            for head in heads.iter_mut() {
                let idx = *head;
                if idx != NIL {
                    live = true;
                    let e = &mut self.entries[idx as usize];
                    *head = e.next;
                    e.next = NIL;
                    e.prev = NIL;
                    out.push(idx);
                }
            }
            if !live {
                return;
            }
        }
    }

    /// Bytes held by the slab's buffer (capacity, not just length).
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(slab: &Slab, mut head: u32) -> Vec<u32> {
        let mut out = Vec::new();
        while head != NIL {
            out.push(head);
            head = slab.get(head).next;
        }
        out
    }

    #[test]
    fn an_entry_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    #[test]
    fn freed_entries_are_reused_before_the_slab_grows() {
        let mut slab = Slab::default();
        let a = slab.alloc(1, 10);
        let b = slab.alloc(2, 20);
        assert_eq!((a, b), (0, 1));
        slab.free(a);
        let c = slab.alloc(3, 30);
        assert_eq!(c, a);
        assert_eq!(slab.get(c).id, 3);
        assert_eq!(slab.alloc(4, 40), 2);
    }

    #[test]
    fn lists_unlink_from_the_front_middle_and_back() {
        let mut slab = Slab::default();
        let mut head = NIL;
        let idx: Vec<u32> = (0..4).map(|i| slab.alloc(i, i)).collect();
        for &i in &idx {
            slab.push_front(&mut head, i);
        }
        assert_eq!(walk(&slab, head), vec![3, 2, 1, 0]);
        slab.unlink(&mut head, 2); // middle
        assert_eq!(walk(&slab, head), vec![3, 1, 0]);
        slab.unlink(&mut head, 3); // front
        assert_eq!(walk(&slab, head), vec![1, 0]);
        slab.unlink(&mut head, 0); // back
        assert_eq!(walk(&slab, head), vec![1]);
        assert_eq!(slab.get(1).prev, NIL);
        slab.unlink(&mut head, 1);
        assert_eq!(head, NIL);
    }

    #[test]
    fn draining_lists_interleaves_them_and_unlinks_every_entry() {
        let mut slab = Slab::default();
        let mut heads = [NIL; 2];
        for i in 0..5u32 {
            let idx = slab.alloc(u64::from(i), 0);
            slab.push_front(&mut heads[i as usize % 2], idx);
        }
        let mut out = Vec::new();
        slab.drain_lists(&mut heads, &mut out, 3);
        assert_eq!(out, vec![4, 3, 2, 1]);
        slab.drain_lists(&mut heads, &mut out, usize::MAX);
        assert_eq!(out, vec![4, 3, 2, 1, 0]);
        assert_eq!(heads, [NIL; 2]);
        assert!((0..5).all(|i| slab.get(i).next == NIL && slab.get(i).prev == NIL));
    }
}
