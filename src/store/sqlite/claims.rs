//! Claims: leases the dispatcher takes without waiting for the writer.
//!
//! The writer is one thread; a lease written through it waits behind whatever the
//! writer is doing (a COMMIT writing a group's WAL frames, a sweep, a checkpoint's
//! lock), which is what kept the on-time lateness p99 far above 5 ms. A lease need not
//! be durable before its job leaves (at-least-once covers a crash in between); it only
//! must be *decided* against the item as it is now, and every later change must see
//! it. So the dispatcher leases a due item itself, from the row it read, and the writer
//! applies that lease before anything else touches the item:
//!
//! - The dispatcher reads the [`Claims::epoch`] (how many groups have ended), then the
//!   item rows, runs the state machine's `Lease` on the item it read, and
//!   [`Claims::claim`]s the result. A claim is refused when the writer has read or
//!   changed the item in the open group or in any group that ended since that epoch (a
//!   row read then may be stale), or when the item is claimed already; a refused item
//!   is leased through the writer as before.
//! - The writer *touches* every item before it reads it for a write ([`Claims::touch`]):
//!   under the same lock it takes the item's claim, if any (and applies it first: the
//!   item is DISPATCHING for the write that follows), and marks the item touched, so
//!   no claim made after that read is accepted. Waiting claims are applied at the start
//!   of every write, and when the dispatcher pokes the writer after claiming.
//! - A claim that a rolled-back write or group applied is given back, to be applied
//!   again. Claims live in memory only: after a crash the item is PENDING again with its
//!   attempt count one low, and is sent again (at-least-once).
//!
//! # Contract
//! - An accepted claim's item was, when claimed, exactly the item the writer would
//!   load: no write has read or changed it since the epoch the caller read at.
//! - Every write that reads the item after the claim sees it DISPATCHING with the
//!   claim's lease (its event is appended by the write that applies it).
//! - Readers through `Store::read` see the claim once the group that applied it has
//!   committed (a read asks for a sweep while claims wait, and the sweep's write applies
//!   them first); a read racing with that group may still see the item PENDING, as it
//!   may any change not yet committed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::domain::ItemId;
use crate::store::Claim;

/// Groups whose touched items are remembered: a claim read at an older epoch is
/// refused (its reader was slower than this many commits).
const RECENT: usize = 64;

/// Touched items remembered at most, over those groups (bounds the memory a run of
/// very large groups could hold; fewer groups are remembered then).
const RECENT_IDS: usize = 1 << 20;

#[derive(Default)]
struct Inner {
    /// Groups ended (committed or rolled back) so far.
    epoch: u64,
    /// Items the writer touched in the open group.
    touched: HashSet<ItemId>,
    /// The touched items of the last [`RECENT`] groups that ended (fewer past
    /// [`RECENT_IDS`] items), oldest first, each with the epoch its end made.
    recent: VecDeque<(u64, HashSet<ItemId>)>,
    /// How many items `recent` holds.
    recent_ids: usize,
    /// Claims not yet applied by the writer.
    waiting: HashMap<ItemId, Claim>,
}

/// The claims and what the writer touched; shared by the dispatcher and the writer.
#[derive(Default)]
pub struct Claims {
    inner: Mutex<Inner>,
    /// How many claims wait (read without the lock).
    waiting: AtomicUsize,
    /// How many leases whose jobs have left the open group applied and has not
    /// committed yet (claims, and leases taken through a dispatch write): a read that
    /// must see them waits for that group.
    uncommitted: AtomicUsize,
}

impl Claims {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch to read at: take it *before* reading the rows a claim is made from.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// How many claims wait for the writer.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// How many leases whose jobs have left are applied in the open group, not yet
    /// committed.
    pub fn uncommitted(&self) -> usize {
        self.uncommitted.load(Ordering::SeqCst)
    }

    /// `n` more leases are applied in the open group without having waited here
    /// (leases taken through a dispatch write).
    pub(super) fn add_uncommitted(&self, n: usize) {
        self.uncommitted.fetch_add(n, Ordering::SeqCst);
    }

    /// The open group committed `n` applied leases.
    pub(super) fn committed(&self, n: usize) {
        let _ = self
            .uncommitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Claims the leases of items read at `read_at`; returns, in the order given, the
    /// accepted ones and the refused ones (to be leased through the writer).
    pub fn claim(&self, read_at: u64, claims: Vec<Claim>) -> (Vec<Claim>, Vec<Claim>) {
        let mut g = self.lock();
        let oldest_known = g.recent.front().map_or(g.epoch, |(e, _)| e - 1);
        let (mut ok, mut refused) = (Vec::new(), Vec::new());
        for c in claims {
            let id = c.item.id;
            let stale = read_at < oldest_known
                || g.touched.contains(&id)
                || g.waiting.contains_key(&id)
                || g.recent
                    .iter()
                    .rev()
                    .take_while(|(ended, _)| *ended > read_at)
                    .any(|(_, t)| t.contains(&id));
            if stale {
                refused.push(c);
            } else {
                g.waiting.insert(id, c.clone());
                ok.push(c);
            }
        }
        self.waiting.store(g.waiting.len(), Ordering::SeqCst);
        (ok, refused)
    }

    /// The writer is about to read the item for a write: its waiting claim (to apply
    /// first), if any; the item counts as touched from now on.
    pub(super) fn touch(&self, id: ItemId) -> Option<Claim> {
        let mut g = self.lock();
        g.touched.insert(id);
        let c = g.waiting.remove(&id);
        if c.is_some() {
            // Counted uncommitted before it stops counting as waiting (the writer is
            // about to apply it): a reader never sees neither.
            self.uncommitted.fetch_add(1, Ordering::SeqCst);
            self.waiting.store(g.waiting.len(), Ordering::SeqCst);
        }
        c
    }

    /// Every waiting claim, in id order (to apply now); their items count as touched.
    pub(super) fn take_all(&self) -> Vec<Claim> {
        let mut g = self.lock();
        let mut all: Vec<Claim> = std::mem::take(&mut g.waiting).into_values().collect();
        for c in &all {
            g.touched.insert(c.item.id);
        }
        self.uncommitted.fetch_add(all.len(), Ordering::SeqCst);
        self.waiting.store(0, Ordering::SeqCst);
        drop(g);
        all.sort_unstable_by_key(|c| c.item.id);
        all
    }

    /// Claims a write applied that then rolled back: they wait again.
    pub(super) fn give_back(&self, claims: impl IntoIterator<Item = Claim>) {
        let mut g = self.lock();
        let mut n = 0;
        for c in claims {
            g.waiting.insert(c.item.id, c);
            n += 1;
        }
        self.waiting.store(g.waiting.len(), Ordering::SeqCst);
        // Waiting again (counted above first): no longer applied in the open group.
        drop(g);
        self.committed(n);
    }

    /// The open group ended (committed, or rolled back): its touched items are
    /// remembered for claims read before its end.
    pub(super) fn group_ended(&self) {
        let mut g = self.lock();
        g.epoch += 1;
        let touched = std::mem::take(&mut g.touched);
        let epoch = g.epoch;
        g.recent_ids += touched.len();
        g.recent.push_back((epoch, touched));
        while g.recent.len() > RECENT || (g.recent_ids > RECENT_IDS && g.recent.len() > 1) {
            if let Some((_, old)) = g.recent.pop_front() {
                g.recent_ids -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::machine::Change;
    use crate::domain::machine::Timer;
    use crate::domain::{EventType, State};
    use crate::store::test_support::pending_chat;

    fn claim(id: ItemId) -> Claim {
        let item = pending_chat(id);
        Claim {
            item,
            change: Change {
                from: State::Pending,
                event: EventType::Dispatching,
                timer: Timer::Set(2),
                left_live: false,
            },
        }
    }

    fn ids(cs: &[Claim]) -> Vec<ItemId> {
        cs.iter().map(|c| c.item.id).collect()
    }

    /// A claim is refused for an item the writer touched in the open group or in a
    /// group that ended after the claim's read, and for one claimed already.
    #[test]
    fn a_claim_is_refused_when_the_writer_saw_the_item_since_the_read() {
        let c = Claims::default();
        let read = c.epoch();
        assert!(c.touch(1).is_none());
        c.group_ended();
        assert!(c.touch(2).is_none());
        let (ok, refused) = c.claim(read, vec![claim(1), claim(2), claim(3)]);
        assert_eq!(ids(&ok), vec![3]);
        assert_eq!(ids(&refused), vec![1, 2]);
        // Read after item 1's group ended: its row is current.
        let later = c.epoch();
        let (ok, refused) = c.claim(later, vec![claim(1), claim(3)]);
        assert_eq!(ids(&ok), vec![1]);
        assert_eq!(ids(&refused), vec![3], "claimed already");
    }

    /// The writer takes a claim when it touches the item (once), or all at once; a
    /// claim given back waits again.
    #[test]
    fn the_writer_takes_each_claim_once_and_gets_back_what_rolled_back() {
        let c = Claims::default();
        let (ok, _) = c.claim(c.epoch(), vec![claim(5), claim(4), claim(6)]);
        assert_eq!(ok.len(), 3);
        assert_eq!(c.waiting(), 3);
        assert_eq!(c.touch(5).map(|c| c.item.id), Some(5));
        assert!(c.touch(5).is_none());
        assert_eq!(ids(&c.take_all()), vec![4, 6]);
        assert_eq!(c.waiting(), 0);
        c.give_back(vec![claim(4)]);
        assert_eq!(c.waiting(), 1);
        assert_eq!(ids(&c.take_all()), vec![4]);
    }

    /// Groups with very many touched items are forgotten sooner: a read from before
    /// them is refused (memory stays bounded).
    #[test]
    fn the_touched_items_remembered_are_bounded() {
        let c = Claims::default();
        let before = c.epoch();
        for id in 0..RECENT_IDS as ItemId {
            c.touch(id);
        }
        c.group_ended();
        let read = c.epoch();
        c.touch(RECENT_IDS as ItemId);
        c.group_ended();
        assert_eq!(c.lock().recent.len(), 1, "the large group is forgotten");
        assert_eq!(c.lock().recent_ids, 1);
        let (ok, _) = c.claim(before, vec![claim(RECENT_IDS as ItemId + 1)]);
        assert!(ok.is_empty(), "a read older than the groups remembered");
        let (ok, _) = c.claim(read, vec![claim(RECENT_IDS as ItemId + 1)]);
        assert_eq!(ok.len(), 1);
    }

    /// A read older than the groups remembered is refused whatever the item.
    #[test]
    fn a_read_older_than_the_remembered_groups_is_refused() {
        let c = Claims::default();
        let read = c.epoch();
        for _ in 0..=RECENT {
            c.group_ended();
        }
        let (ok, refused) = c.claim(read, vec![claim(9)]);
        assert!(ok.is_empty());
        assert_eq!(ids(&refused), vec![9]);
        let (ok, _) = c.claim(c.epoch(), vec![claim(9)]);
        assert_eq!(ids(&ok), vec![9]);
    }
}

/// The protocol against a real store: the dispatcher's read, the writer's writes.
#[cfg(test)]
mod store_tests {
    use super::Claim;
    use crate::domain::machine::{self, Command, Step};
    use crate::domain::{Error, Item, ItemId, State};
    use crate::store::sqlite::Store;
    use crate::store::test_support::{new_chat, store_with_item, stored};

    /// What the dispatcher does: the item read whole at an epoch, and its lease.
    async fn read_and_lease(store: &Store, id: ItemId) -> (u64, Claim) {
        let read = store.due_items(vec![id]).await.unwrap();
        let mut item = read.items.into_iter().next().expect("read whole");
        let now = 10;
        let Ok(Step::Changed(change)) = machine::step(
            &mut item,
            Command::Lease {
                due: now,
                expires: 1_000_000,
            },
            now,
        ) else {
            panic!("leased")
        };
        (read.epoch, Claim { item, change })
    }

    async fn cancel(store: &Store, id: ItemId) -> Result<Item, Error> {
        store
            .write(move |tx| {
                let mut item = tx.load("a", id)?.expect("exists");
                match machine::step(&mut item, Command::Cancel, tx.now)? {
                    Step::Changed(change) => {
                        tx.save(&item, change)?;
                    }
                    Step::Unchanged { .. } => {}
                }
                Ok(item)
            })
            .await
    }

    /// A cancel that ran after the dispatcher's read (answered, or still in the open
    /// group) wins: the claim made from the stale read is refused, nothing goes out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_read_before_a_cancel_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_item(&dir).await;
        let (epoch, claim) = read_and_lease(&store, id).await;
        assert_eq!(cancel(&store, id).await.unwrap().state, State::Cancelled);
        let (ok, refused) = store.claim(epoch, vec![claim]);
        assert!(ok.is_empty(), "a cancelled item was leased");
        assert_eq!(refused.len(), 1);
        assert_eq!(stored(&store, id).await.state, State::Cancelled);

        // The same inside one group: the cancel's write claims nothing itself, but it
        // read the item before the claim.
        let dir2 = tempfile::tempdir().unwrap();
        let (store2, id2) = store_with_item(&dir2).await;
        let (epoch, claim) = read_and_lease(&store2, id2).await;
        let s = store2.clone();
        let accepted = store2
            .write(move |tx| {
                let mut item = tx.load("a", id2)?.expect("exists");
                let (ok, _) = s.claim(epoch, vec![claim]);
                if let Step::Changed(change) = machine::step(&mut item, Command::Cancel, tx.now)? {
                    tx.save(&item, change)?;
                }
                Ok(ok.len())
            })
            .await
            .unwrap();
        assert_eq!(accepted, 0, "a claim made after the writer read the item");
        assert_eq!(stored(&store2, id2).await.state, State::Cancelled);
    }

    /// An accepted claim is what every later write and read sees: the item is
    /// DISPATCHING (a cancel is refused), on attempt 1. A second claim from a read of
    /// the same time (a stale timer) is refused, before and after the writer applied
    /// the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_write_and_read_after_a_claim_sees_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_item(&dir).await;
        let (epoch, claim) = read_and_lease(&store, id).await;
        let (ok, _) = store.claim(epoch, vec![claim.clone()]);
        assert_eq!(ok.len(), 1);
        assert!(store.claim(epoch, vec![claim.clone()]).0.is_empty());
        let e = cancel(&store, id).await.unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
        let now = stored(&store, id).await;
        assert_eq!((now.state, now.attempts), (State::Dispatching, 1));
        assert_eq!(now.lease_expires_at, Some(1_000_000));
        assert!(store.claim(epoch, vec![claim]).0.is_empty());
    }

    /// When recording one of several waiting claims fails, none is lost: those before
    /// it are rolled back and those after it were not run, and all wait again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_that_cannot_be_recorded_loses_none_of_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (store, first) = store_with_item(&dir).await;
        let mut ids = vec![first];
        for _ in 0..2 {
            let new = new_chat();
            ids.push(
                store
                    .write(move |tx| tx.insert(&new, 1, &Default::default()))
                    .await
                    .unwrap(),
            );
        }
        let middle = ids[1];
        // The middle one's event cannot be appended (claims are applied in id order).
        crate::store::test_support::refuse_events_of(&store, middle).await;
        let mut claims = Vec::new();
        let mut epoch = 0;
        for &id in &ids {
            let (e, c) = read_and_lease(&store, id).await;
            epoch = e;
            claims.push(c);
        }
        let read = store.due_items(ids.clone()).await.unwrap().epoch;
        assert_eq!(read, epoch, "no group ended between the reads");
        assert_eq!(store.claim(epoch, claims).0.len(), 3);
        // This write applies the claims first; the middle one fails.
        crate::store::test_support::allow_events(&store).await;
        for &id in &ids {
            let now = stored(&store, id).await;
            assert_eq!(
                (now.state, now.attempts),
                (State::Dispatching, 1),
                "item {id} lost its lease"
            );
        }
    }

    /// A claim applied by a write that then failed is applied again by the next write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_applied_by_a_write_that_rolled_back_waits_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_item(&dir).await;
        let (epoch, claim) = read_and_lease(&store, id).await;
        let s = store.clone();
        let r = store
            .write(move |tx| {
                // Claimed while this write runs: its read of the item applies it.
                assert_eq!(s.claim(epoch, vec![claim]).0.len(), 1);
                let item = tx.load("a", id)?.expect("exists");
                assert_eq!(item.state, State::Dispatching);
                Err::<(), _>(Error::Internal("this write fails".into()))
            })
            .await;
        assert!(r.is_err());
        let now = stored(&store, id).await;
        assert_eq!((now.state, now.attempts), (State::Dispatching, 1));
    }
}
