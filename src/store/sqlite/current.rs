//! The Scheduler's reads through the journal: rows merged with the committed changes
//! not yet written back to them (the published hints, `overlay::Hint`), so a read never
//! needs a sweep. A write-back that cannot be made (a full disk) no longer fails reads,
//! and a WatchEvents wake during a drain no longer forces a full sweep.
//!
//! Every read takes its snapshot of the journal *before* it reads the rows: an item
//! written back (and dropped from the journal) in between is then found in the journal
//! already, never read from a row older than it. Reads return only once what they saw
//! is durable (`Progress::durable_barrier`), as [`Store::read`] does.
//!
//! # Contract
//! - Each read sees every write answered before it started, and the dispatcher's claims
//!   accepted before it (a read applies waiting claims first, with an empty write).
//! - Results are those of the same query over rows that had been written back:
//!   filters, order and keyset paging included.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::queries;
use super::Store;
use crate::domain::{self, DeferredTicket, Item, ItemId, ListQuery, Millis, Order, State};
use crate::store::{EventsAfter, Rows};

/// Whether `item` is one `q` lists (the SQL filters of `queries::list_items`).
pub(super) fn matches(q: &ListQuery, item: &Item) -> bool {
    let next = item.next_send_at();
    item.account_id == q.account_id
        && item.state == q.state.unwrap_or(State::Pending)
        && q.ticket_id.as_ref().is_none_or(|t| *t == item.ticket_id)
        && q.channel.is_none_or(|c| c == item.channel)
        && q.author_id.as_ref().is_none_or(|a| *a == item.author_id)
        && q.kind.is_none_or(|k| k == item.kind)
        && q.send_at_from.is_none_or(|f| next >= f)
        && q.send_at_to.is_none_or(|t| next < t)
}

/// Whether key `a` comes before key `b` in `order`.
fn before<K: Ord>(order: Order, a: &K, b: &K) -> bool {
    match order {
        Order::Asc => a < b,
        Order::Desc => a > b,
    }
}

/// Where a page stands: its order, the key it starts after, how many entries it holds.
pub(super) struct Window<'a, K> {
    pub(super) order: Order,
    pub(super) after: Option<&'a K>,
    pub(super) limit: usize,
}

/// Merges a keyset page read from rows with the journal's items.
///
/// `rows` was read with a limit of at least `limit` + the journal's size, so dropping
/// the journal's items from it leaves enough; `journal` holds the current version of
/// every item changed since its row was written. The rows of journal items are
/// dropped (`stale`), the journal items that `keep` selects are placed by their `key`,
/// and the page is cut at the window's limit.
pub(super) fn merge_page<T, K: Ord + Clone>(
    rows: Rows<T>,
    journal: Vec<T>,
    stale: impl Fn(&T) -> bool,
    key: impl Fn(&T) -> K,
    keep: impl Fn(&T) -> bool,
    w: Window<'_, K>,
) -> Rows<T> {
    let Window {
        order,
        after,
        limit,
    } = w;
    // Past the last row read, the rows are unknown: journal entries beyond it wait for
    // the next page (which reads from that key on).
    let bound = if rows.more {
        rows.rows.last().map(&key)
    } else {
        None
    };
    let mut all: Vec<T> = rows.rows.into_iter().filter(|r| !stale(r)).collect();
    all.extend(journal.into_iter().filter(|j| {
        let k = key(j);
        keep(j)
            && after.is_none_or(|a| before(order, a, &k))
            && bound.as_ref().is_none_or(|b| !before(order, b, &k))
    }));
    all.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        match order {
            Order::Asc => ka.cmp(&kb),
            Order::Desc => kb.cmp(&ka),
        }
    });
    let more = all.len() > limit || bound.is_some();
    all.truncate(limit);
    Rows { rows: all, more }
}

impl Store {
    /// The journal's items (committed, not yet on their rows) that `keep` selects.
    fn journal(&self, keep: impl Fn(&Item) -> bool) -> Vec<Arc<Item>> {
        let hints = self
            .progress
            .hints
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        hints
            .values()
            .filter(|h| keep(&h.item))
            .map(|h| h.item.clone())
            .collect()
    }

    /// Before a read: leases whose jobs are out already are committed, so the read
    /// sees them: the dispatcher's waiting claims (any write applies them first; this
    /// one does nothing else), and leases an open group applied (the write is answered
    /// after that group's commit).
    async fn apply_claims(&self) -> domain::Result<()> {
        let claims = &self.progress.claims;
        if claims.waiting() > 0 || claims.uncommitted() > 0 {
            self.writer.write(|_| Ok(())).await?;
        }
        Ok(())
    }

    /// GetItem: the item, if it belongs to `account`.
    ///
    /// # Errors
    /// Storage errors, a row that cannot be decoded included.
    pub async fn get_item(&self, account: String, id: ItemId) -> domain::Result<Option<Item>> {
        self.apply_claims().await?;
        let journal = self.journal(|i| i.id == id);
        let found = match journal.into_iter().next() {
            Some(i) => Some((*i).clone()).filter(|i| i.account_id == account),
            None => {
                self.readers
                    .read(move |c| Ok(queries::get_item(c, &account, id)?))
                    .await?
            }
        };
        self.progress.durable_barrier().await?;
        Ok(found)
    }

    /// GetTicketTimeline's items: every item of the ticket, in no particular order.
    ///
    /// # Errors
    /// Storage errors, a row that cannot be decoded included.
    pub async fn ticket_items(&self, account: String, ticket: String) -> domain::Result<Vec<Item>> {
        self.apply_claims().await?;
        let journal: HashMap<ItemId, Arc<Item>> = self
            .journal(|i| i.account_id == account && i.ticket_id == ticket)
            .into_iter()
            .map(|i| (i.id, i))
            .collect();
        // Every item has its row (inserts are not deferred): the rows find them all.
        let mut items = self
            .readers
            .read(move |c| Ok(queries::ticket_items(c, &account, &ticket)?))
            .await?;
        for item in &mut items {
            if let Some(now) = journal.get(&item.id) {
                *item = (**now).clone();
            }
        }
        self.progress.durable_barrier().await?;
        Ok(items)
    }

    /// ListScheduled (see `queries::list_items`).
    ///
    /// # Errors
    /// Storage errors, a row that cannot be decoded included.
    pub async fn list_items(
        &self,
        q: ListQuery,
        after: Option<(Millis, ItemId)>,
        limit: usize,
    ) -> domain::Result<Rows<Item>> {
        self.apply_claims().await?;
        let account = q.account_id.clone();
        let journal = self.journal(|i| i.account_id == account);
        let ids: HashSet<ItemId> = journal.iter().map(|i| i.id).collect();
        let extra = journal.len();
        let query = q.clone();
        let rows = self
            .readers
            .read(move |c| Ok(queries::list_items(c, &query, after, limit + extra)?))
            .await?;
        let key = |i: &Item| (i.next_send_at(), i.id);
        let page = merge_page(
            rows,
            journal.into_iter().map(|i| (*i).clone()).collect(),
            |i| ids.contains(&i.id),
            key,
            |i| matches(&q, i),
            Window {
                order: q.order,
                after: after.as_ref(),
                limit,
            },
        );
        self.progress.durable_barrier().await?;
        Ok(page)
    }

    /// ListDeferredTickets (see `queries::deferred_tickets`): each ticket's aggregate
    /// over its live items, those in the journal counted as they are now.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn deferred_tickets(
        &self,
        account: String,
        order: Order,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> domain::Result<Rows<DeferredTicket>> {
        self.apply_claims().await?;
        let journal = self.journal(|i| i.account_id == account);
        let dirty_ids: Vec<ItemId> = journal.iter().map(|i| i.id).collect();
        let mut tickets: Vec<String> = journal.iter().map(|i| i.ticket_id.clone()).collect();
        tickets.sort_unstable();
        tickets.dedup();
        let extra = tickets.len();
        let (acc, t2, after2) = (account.clone(), tickets.clone(), after.clone());
        let (rows, partial) = self
            .readers
            .read(move |c| {
                let after = after2.as_ref().map(|(at, t)| (*at, t.as_str()));
                let rows = queries::deferred_tickets(c, &acc, order, after, limit + extra)?;
                // The tickets the journal touches, from their other items' rows.
                let partial = queries::ticket_aggregates_without(c, &acc, &t2, &dirty_ids)?;
                Ok((rows, partial))
            })
            .await?;
        // Those tickets as they are now: their rows' part plus their journal items.
        let mut now: HashMap<String, DeferredTicket> = partial
            .into_iter()
            .map(|t| (t.ticket_id.clone(), t))
            .collect();
        for item in journal.iter().filter(|i| i.state.is_live()) {
            let t = now
                .entry(item.ticket_id.clone())
                .or_insert_with(|| DeferredTicket {
                    ticket_id: item.ticket_id.clone(),
                    next_send_at: item.next_send_at(),
                    pending_count: 0,
                });
            t.next_send_at = t.next_send_at.min(item.next_send_at());
            t.pending_count += 1;
        }
        let touched: HashSet<String> = tickets.into_iter().collect();
        let key = |t: &DeferredTicket| (t.next_send_at, t.ticket_id.clone());
        let page = merge_page(
            rows,
            now.into_values().collect(),
            |t| touched.contains(&t.ticket_id),
            key,
            |_| true,
            Window {
                order,
                after: after.as_ref(),
                limit,
            },
        );
        self.progress.durable_barrier().await?;
        Ok(page)
    }

    /// Outbox events after `after` (see `queries::events_after`), each item's content as
    /// known now (the journal's, for an item changed since its row was written; the
    /// rest of the item is the event's own snapshot).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn events_after(
        &self,
        account: Option<String>,
        after: u64,
        limit: usize,
    ) -> domain::Result<EventsAfter> {
        self.apply_claims().await?;
        let journal: HashMap<ItemId, Arc<Item>> = self
            .journal(|i| account.as_ref().is_none_or(|a| *a == i.account_id))
            .into_iter()
            .map(|i| (i.id, i))
            .collect();
        let mut read = self
            .readers
            .read(move |c| Ok(queries::events_after(c, account.as_deref(), after, limit)?))
            .await?;
        for e in &mut read.events {
            // An UPDATED event carries its own content (its snapshot); the others show
            // the item's content as known now, as they did from a written-back row.
            if e.kind == domain::EventType::Updated {
                continue;
            }
            if let Some(now) = journal.get(&e.item.id) {
                e.item.content = now.content.clone();
            }
        }
        self.progress.durable_barrier().await?;
        Ok(read)
    }
}

/// The engine's other reads, typed: no caller outside the store hands it SQL.
impl Store {
    /// What start-up rebuilds its memory from (see `recovery::recovery_scan`): every
    /// live item's id and time, the live counts, the leased count and the controls;
    /// each live item is counted into the ticket filter, which the caller marks ready.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn recovery_scan(&self) -> domain::Result<crate::store::RecoveryScan> {
        let tickets = self.live_tickets();
        self.read(move |conn| Ok(super::recovery::recovery_scan(conn, &tickets)?))
            .await
    }

    /// Ids of every live (PENDING or DISPATCHING) item.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn live_item_ids(&self) -> domain::Result<Vec<ItemId>> {
        self.read(|conn| Ok(super::rows::live_item_ids(conn)?))
            .await
    }

    /// What changed in `account` after `after` (see `queries::event_heads`).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn event_heads(
        &self,
        account: String,
        after: u64,
        limit: usize,
    ) -> domain::Result<Vec<(u64, domain::EventType, ItemId, String)>> {
        self.read_journal(move |conn| Ok(queries::event_heads(conn, &account, after, limit)?))
            .await
    }

    /// The account's business hours, if set (written to their rows by the write that
    /// sets them: no write-back is needed to read them).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn business_hours(
        &self,
        account: String,
    ) -> domain::Result<Option<domain::BusinessHours>> {
        self.read_journal(move |conn| Ok(super::rows::get_business_hours(conn, &account)?))
            .await
    }

    /// The dispatch controls in force for every account (`*`).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn every_account_controls(&self) -> domain::Result<Vec<crate::store::ControlRow>> {
        self.read_journal(|conn| {
            let mut rows = super::rows::all_controls(conn)?;
            rows.retain(|r| r.account_id == crate::engine::EVERY_ACCOUNT);
            Ok(rows)
        })
        .await
    }

    /// Accounts whose re-resolution of business-hours items is under way.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn rewindows_under_way(&self) -> domain::Result<Vec<String>> {
        self.read_journal(|conn| Ok(super::rows::rewindows_under_way(conn)?))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(keys: &[i64], more: bool) -> Rows<i64> {
        Rows {
            rows: keys.to_vec(),
            more,
        }
    }

    #[test]
    fn a_page_merges_the_journal_by_key_and_drops_stale_rows() {
        // Rows 1..=5 (5 stale: its journal version moved to 7), journal 5->7 and 3->3.
        let page = merge_page(
            rows(&[1, 2, 3, 4, 5], false),
            vec![7, 3],
            |&r| r == 3 || r == 5,
            |&k| k,
            |_| true,
            Window {
                order: Order::Asc,
                after: None,
                limit: 10,
            },
        );
        assert_eq!(page.rows, vec![1, 2, 3, 4, 7]);
        assert!(!page.more);
    }

    #[test]
    fn journal_entries_past_a_full_pages_last_row_wait_for_the_next_page() {
        let page = merge_page(
            rows(&[1, 2, 3], true),
            vec![9, 2],
            |&r| r == 2,
            |&k| k,
            |_| true,
            Window {
                order: Order::Asc,
                after: None,
                limit: 10,
            },
        );
        assert_eq!(page.rows, vec![1, 2, 3], "9 is past the rows read");
        assert!(page.more);
    }

    #[test]
    fn the_limit_the_start_key_and_the_order_hold_for_journal_entries() {
        let page = merge_page(
            rows(&[8, 6, 4], false),
            vec![9, 5, 7, 1],
            |_| false,
            |&k| k,
            |&k| k != 7,
            Window {
                order: Order::Desc,
                after: Some(&9),
                limit: 3,
            },
        );
        // Descending after 9: 8, 6, 5 (7 filtered out, 9 not after itself).
        assert_eq!(page.rows, vec![8, 6, 5]);
        assert!(page.more);
    }

    /// an UPDATED event carries its own content (ItemSnapshot::apply_to); the
    /// journal's content must not replace it with a later edit's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_updated_event_shows_its_own_content_not_a_later_edits() {
        use crate::domain::machine::{self, Command, Step};
        use crate::domain::{ChatContent, Content, EventType};
        use crate::store::test_support::store_with_item;
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_item(&dir).await;
        for text in ["one", "two"] {
            store
                .write(move |tx| {
                    let mut item = tx.load("a", id)?.expect("exists");
                    let edit = Command::Edit {
                        send_at: None,
                        content: Some(Content::Chat(ChatContent {
                            text: text.into(),
                            ..Default::default()
                        })),
                        on_activity: None,
                    };
                    let Step::Changed(change) = machine::step(&mut item, edit, tx.now)? else {
                        panic!("edited")
                    };
                    tx.save(&item, change)?;
                    Ok(())
                })
                .await
                .unwrap();
        }
        let texts_now = |read: EventsAfter| -> Vec<String> {
            read.events
                .iter()
                .filter(|e| e.kind == EventType::Updated)
                .map(|e| match &e.item.content {
                    Content::Chat(c) => c.text.clone(),
                    _ => panic!("chat"),
                })
                .collect()
        };
        let before_sweep = texts_now(store.events_after(None, 0, 100).await.unwrap());
        store.write(|tx| tx.sweep()).await.unwrap();
        let after_sweep = texts_now(store.events_after(None, 0, 100).await.unwrap());
        assert_eq!(
            before_sweep, after_sweep,
            "the same events read before and after a write-back"
        );
        let read = store.events_after(None, 0, 100).await.unwrap();
        let texts: Vec<String> = read
            .events
            .iter()
            .filter(|e| e.kind == EventType::Updated)
            .map(|e| match &e.item.content {
                Content::Chat(c) => c.text.clone(),
                _ => panic!("chat"),
            })
            .collect();
        assert_eq!(texts, vec!["one".to_string(), "two".to_string()]);
    }

    /// a business-hours re-resolution walks the rows by their (possibly stale)
    /// key. An item whose journal moved it earlier than its row says (an edit, or an
    /// earlier re-resolution, not yet written back) is written back mid-walk to a key
    /// before the cursor, and no chunk ever meets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rewindow_walk_meets_an_item_written_back_behind_its_cursor() {
        use crate::domain::machine::{self, Command, Step};
        use crate::domain::{DeliveryWindow, Timing};
        use crate::store::test_support::{new_chat, store_with_item};
        let dir = tempfile::tempdir().unwrap();
        let (store, _other) = store_with_item(&dir).await;
        let bh = |at: i64| Timing {
            requested_send_at: Some(at),
            window: Some(DeliveryWindow::BusinessHours),
            ..Default::default()
        };
        let mut ids = Vec::new();
        for at in [2_000_i64, 10_000] {
            let mut new = new_chat();
            new.send_at = at;
            let timing = bh(at);
            ids.push(
                store
                    .write(move |tx| tx.insert(&new, at, &timing))
                    .await
                    .unwrap(),
            );
        }
        let (a, x) = (ids[0], ids[1]);
        // X moved earlier (journal only: its row still says 10_000).
        store
            .write(move |tx| {
                let mut item = tx.load("a", x)?.expect("x");
                let Step::Changed(change) =
                    machine::step(&mut item, Command::Rewindow { at: 1_500 }, tx.now)?
                else {
                    panic!("moved")
                };
                tx.save(&item, change)?;
                Ok(())
            })
            .await
            .unwrap();
        // The walk, a chunk of 2 a write (the plain item at 1 and A come first).
        let mut met = Vec::new();
        let mut cursor = Some((i64::MIN, 0));
        let mut chunks = 0;
        let mut seen = std::collections::HashSet::new();
        while let Some(after) = cursor {
            let (items, next, s) = store
                .write(move |tx| {
                    let mut seen = seen;
                    let (items, next) = tx.rewindow_chunk("a", after, 2, &mut seen)?;
                    Ok((items, next, seen))
                })
                .await
                .unwrap();
            seen = s;
            met.extend(items.iter().map(|i| i.id));
            cursor = next;
            chunks += 1;
            if chunks == 1 {
                // A write-back between two chunks (the writer's spare-time sweep).
                store.write(|tx| tx.sweep()).await.unwrap();
            }
        }
        assert!(met.contains(&a), "{met:?}");
        assert!(
            met.contains(&x),
            "item {x} was never met by the walk: {met:?}"
        );
    }
}
