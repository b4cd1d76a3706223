//! The id -> slab index map.
//!
//! A `hashbrown::HashTable<u32>` stores only slab indices (4 bytes plus one
//! control byte per bucket); the id a bucket stands for is read from the slab
//! entry it points to. At hashbrown's load factors (7/16 to 7/8 after growth)
//! that is 5.7 to 11.4 bytes per timer, where a `HashMap<u64, u32>` (16-byte
//! buckets) would cost 19 to 39.
//!
//! Ids are SQLite row ids, mostly dense and increasing, and not chosen by an
//! adversary, so they are hashed with a cheap multiply-xorshift mix (the
//! 64-bit finaliser of MurmurHash3) rather than SipHash.

use hashbrown::hash_table::{Entry as TableEntry, HashTable};

use super::slab::Slab;

/// Mixes every bit of `id` into both ends of the hash: hashbrown takes the
/// bucket from the low bits and the control byte from the top seven.
#[inline]
pub(crate) fn hash_id(id: u64) -> u64 {
    let mut x = id;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Maps each pending id to the slab index of its entry.
///
/// Invariant: for every stored index `i`, `slab.get(i).id` hashes to the
/// bucket's hash, and no two stored indices carry the same id.
#[derive(Debug, Default)]
pub(crate) struct IdIndex {
    table: HashTable<u32>,
}

/// The outcome of [`IdIndex::find_or_insert_with`].
pub(crate) enum Lookup {
    /// The id was present at this slab index.
    Found(u32),
    /// The id was absent; the index returned by the closure was stored.
    Inserted(u32),
}

impl IdIndex {
    pub(crate) fn with_capacity(n: usize) -> IdIndex {
        IdIndex {
            table: HashTable::with_capacity(n),
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The slab index of `id`, if present.
    #[inline]
    pub(crate) fn get(&self, slab: &Slab, id: u64) -> Option<u32> {
        self.table
            .find(hash_id(id), |&i| slab.get(i).id == id)
            .copied()
    }

    /// Looks `id` up; if absent, allocates with `alloc` and stores the result.
    #[inline]
    pub(crate) fn find_or_insert_with(
        &mut self,
        slab: &mut Slab,
        id: u64,
        alloc: impl FnOnce(&mut Slab) -> u32,
    ) -> Lookup {
        let entry = self.table.entry(
            hash_id(id),
            |&i| slab.get(i).id == id,
            |&i| hash_id(slab.get(i).id),
        );
        match entry {
            TableEntry::Occupied(o) => Lookup::Found(*o.get()),
            TableEntry::Vacant(v) => {
                let idx = alloc(slab);
                v.insert(idx);
                Lookup::Inserted(idx)
            }
        }
    }

    /// Removes `id`, returning its slab index.
    #[inline]
    pub(crate) fn remove(&mut self, slab: &Slab, id: u64) -> Option<u32> {
        match self
            .table
            .find_entry(hash_id(id), |&i| slab.get(i).id == id)
        {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    /// Removes the bucket holding slab index `idx` for `id`. Compares indices,
    /// not ids, so the probe never touches the slab.
    #[inline]
    pub(crate) fn remove_index(&mut self, id: u64, idx: u32) {
        let found = self.table.find_entry(hash_id(id), |&i| i == idx);
        debug_assert!(found.is_ok(), "id={id} idx={idx} missing from the index");
        if let Ok(o) = found {
            o.remove();
        }
    }

    /// Bytes held by the table's buckets and control bytes.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.table.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_ids_spread_over_buckets_and_control_bytes() {
        // 4096 consecutive ids over 256 buckets (low bits) and 128 control
        // values (top 7 bits): no bucket or tag may be badly overloaded.
        let mut low = [0u32; 256];
        let mut top = [0u32; 128];
        for id in 1..=4096u64 {
            let h = hash_id(id);
            low[(h & 255) as usize] += 1;
            top[(h >> 57) as usize] += 1;
        }
        assert!(low.iter().all(|&c| c < 40), "low bits: {low:?}");
        assert!(top.iter().all(|&c| c < 64), "top bits: {top:?}");
    }

    #[test]
    fn ids_are_found_inserted_and_removed() {
        let mut slab = Slab::default();
        let mut index = IdIndex::default();
        for id in [7u64, 0, u64::MAX] {
            match index.find_or_insert_with(&mut slab, id, |s| s.alloc(id, 1)) {
                Lookup::Inserted(_) => {}
                Lookup::Found(i) => panic!("id {id} unexpectedly present at {i}"),
            }
        }
        assert_eq!(index.len(), 3);
        let at = index.get(&slab, u64::MAX);
        assert!(matches!(
            index.find_or_insert_with(&mut slab, u64::MAX, |_| unreachable!()),
            Lookup::Found(i) if Some(i) == at
        ));
        assert_eq!(index.remove(&slab, 0), Some(1));
        assert_eq!(index.remove(&slab, 0), None);
        index.remove_index(7, 0);
        assert_eq!(index.get(&slab, 7), None);
        assert_eq!(index.len(), 1);
    }
}
