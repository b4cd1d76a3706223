//! One write's typed operations on PostgreSQL ([`WriteTx`]), inside the group's
//! transaction and the write's savepoint.
//!
//! Writes are pipelined: a statement whose result the write does not need (an insert,
//! an update, an event) is queued unsent and sent with the next read, the next
//! savepoint boundary or the commit, all in one round trip (tokio-postgres sends the
//! requests of futures in the order they are first polled; `join_all` polls in order).
//! A read first sends what is queued, so it sees every change made before it.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::runtime::Runtime;

use super::rows::{self, Pg};
use super::scope::{Alloc, Scope};
use crate::domain::machine::{Change, Timer};
use crate::domain::{self, BusinessHours, Item, ItemId, Millis, NewItem, State, Timing};
use crate::store::tickets::LiveTickets;
use crate::store::{ControlRow, Decoded, Effects, LiveKey, StoreError, Tx, WheelOp, WriteTx};

/// How long the writer waits for the database's answers before it takes the
/// connection for lost: a server, or a network, that stops answering without closing
/// the connection must not hold every write for ever.
pub(super) const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// A queued statement: sent when first polled.
pub(super) type Pending = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// A new item's row waiting to be inserted with others in one statement.
struct NewOwned {
    id: ItemId,
    partition: Option<i32>,
    new: NewItem,
    send_at: Millis,
    timing: Timing,
    now: Millis,
}

/// An event's row waiting to be inserted with others in one statement.
struct EventOwned {
    seq: u64,
    partition: Option<i32>,
    kind: domain::EventType,
    item: Item,
    at: Millis,
}

/// The writer's state that outlives one write: the connection, the id counters, the
/// statements not sent yet, what the open group changed.
///
/// Statements are tagged with the write (`job`) that queued them. New items' rows and
/// events are gathered and inserted together, one statement each, when what is queued
/// is sealed (at a read, at a savepoint boundary, at the commit): never across a
/// boundary, so a write's rows stay inside its own savepoint.
pub(super) struct Group {
    pub pg: Arc<Pg>,
    /// The next item id and event sequence of each owned partition (sendlater
    /// allocates them: no sequence on the hot path; see `scope`).
    pub alloc: Alloc,
    /// The partitions this store writes (a write for another's account is refused).
    pub scope: Arc<Scope>,
    pub pending: RefCell<Vec<(u64, Pending)>>,
    new_items: RefCell<Vec<NewOwned>>,
    new_events: RefCell<Vec<EventOwned>>,
    /// Items changed since the last seal: written back together, the last version of
    /// each (its position in `changed_rows` by id).
    changed_rows: RefCell<(Vec<Item>, std::collections::HashMap<ItemId, usize>)>,
    /// The write running now (tags what it queues).
    pub job: Cell<u64>,
    /// A statement of an earlier write of the group failed after that write ended: the
    /// transaction is aborted and the whole group fails (none of it commits).
    pub doomed: RefCell<Option<String>>,
    /// Items changed by writes of the open group.
    pub changed: HashSet<ItemId>,
    /// Why the connection cannot be used (lost mid-group); every later operation of
    /// the group fails.
    pub broken: RefCell<Option<String>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub tickets: Arc<LiveTickets>,
    /// Leases whose jobs left before their group committed (counted when marked out,
    /// discounted once committed): client reads wait for them (see `PgStore`).
    pub uncommitted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Group {
    /// A group's state on `pg`, handing out ids and sequences from these.
    pub fn new(
        pg: Pg,
        alloc: Alloc,
        scope: Arc<Scope>,
        metrics: Arc<crate::metrics::Metrics>,
        tickets: Arc<LiveTickets>,
        uncommitted: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Group {
        Group {
            pg: Arc::new(pg),
            alloc,
            scope,
            pending: Default::default(),
            new_items: Default::default(),
            new_events: Default::default(),
            changed_rows: Default::default(),
            job: Cell::new(0),
            doomed: Default::default(),
            changed: Default::default(),
            broken: Default::default(),
            metrics,
            tickets,
            uncommitted,
        }
    }

    /// Turns the gathered rows into queued statements (in order, before anything
    /// queued after this).
    pub fn seal(&self) {
        let job = self.job.get();
        let items = std::mem::take(&mut *self.new_items.borrow_mut());
        if !items.is_empty() {
            let pg = self.pg.clone();
            self.pending.borrow_mut().push((
                job,
                Box::pin(async move {
                    let rows: Vec<rows::NewRow<'_>> = items
                        .iter()
                        .map(|r| rows::NewRow {
                            id: r.id,
                            new: &r.new,
                            send_at: r.send_at,
                            timing: &r.timing,
                            now: r.now,
                            partition: r.partition,
                        })
                        .collect();
                    if rows.len() == 1 {
                        let r = rows[0];
                        rows::insert_item(
                            &*pg,
                            r.id,
                            r.new,
                            r.send_at,
                            r.timing,
                            r.now,
                            r.partition,
                        )
                        .await
                    } else {
                        rows::insert_items(&*pg, &rows).await
                    }
                }),
            ));
        }
        let (changed, _) = std::mem::take(&mut *self.changed_rows.borrow_mut());
        if !changed.is_empty() {
            let pg = self.pg.clone();
            self.pending.borrow_mut().push((
                job,
                Box::pin(async move {
                    if changed.len() == 1 {
                        rows::update_item(&*pg, &changed[0]).await
                    } else {
                        rows::update_items(&*pg, &changed).await
                    }
                }),
            ));
        }
        let events = std::mem::take(&mut *self.new_events.borrow_mut());
        if !events.is_empty() {
            let pg = self.pg.clone();
            self.pending.borrow_mut().push((
                job,
                Box::pin(async move {
                    let rows: Vec<rows::EventRow<'_>> = events
                        .iter()
                        .map(|e| rows::EventRow {
                            seq: e.seq,
                            kind: e.kind,
                            item: &e.item,
                            at: e.at,
                            partition: e.partition,
                        })
                        .collect();
                    if rows.len() == 1 {
                        let e = rows[0];
                        rows::insert_event(&*pg, e.seq, e.kind, e.item, e.at, e.partition).await
                    } else {
                        rows::insert_events(&*pg, &rows).await
                    }
                }),
            ));
        }
    }

    /// Sends every queued statement and waits for them; the first error, if any. A
    /// failure of an earlier write's statement dooms the group.
    pub fn flush(&self, rt: &Runtime) -> Result<(), StoreError> {
        self.seal();
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        if pending.is_empty() {
            return Ok(());
        }
        let (jobs, futs): (Vec<u64>, Vec<Pending>) = pending.into_iter().unzip();
        let results = self.within(rt, async { Ok(futures_util::future::join_all(futs).await) })?;
        let mut first = Ok(());
        for (job, r) in jobs.into_iter().zip(results) {
            if let Err(e) = r {
                self.note(&e);
                if job != self.job.get() {
                    self.doomed.borrow_mut().get_or_insert_with(|| {
                        format!("a statement of an earlier write failed: {e}")
                    });
                }
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Runs `f` on `rt` for at most [`ANSWER_WITHIN`]; past it, the connection is
    /// taken for lost (`broken`) and the answer is UNAVAILABLE.
    pub fn within<T>(
        &self,
        rt: &Runtime,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match rt.block_on(async { tokio::time::timeout(ANSWER_WITHIN, f).await }) {
            Ok(r) => r,
            Err(_) => {
                let why = format!(
                    "the database did not answer within {} s",
                    ANSWER_WITHIN.as_secs()
                );
                tracing::warn!("{why}; taking the connection for lost");
                self.broken.borrow_mut().get_or_insert_with(|| why.clone());
                Err(StoreError::Unavailable(why))
            }
        }
    }

    /// Drops what the running write queued and has not sent (it is rolling back).
    pub fn drop_unsent_of_current(&self) {
        let job = self.job.get();
        self.new_items.borrow_mut().clear();
        self.new_events.borrow_mut().clear();
        *self.changed_rows.borrow_mut() = Default::default();
        self.pending.borrow_mut().retain(|(j, _)| *j != job);
    }

    /// Drops everything queued and not sent (the group is failing).
    pub fn drop_all_unsent(&self) {
        self.new_items.borrow_mut().clear();
        self.new_events.borrow_mut().clear();
        *self.changed_rows.borrow_mut() = Default::default();
        self.pending.borrow_mut().clear();
    }

    /// Marks the connection broken when `e` says it is lost.
    pub fn note(&self, e: &StoreError) {
        if let StoreError::Postgres(pe) = e {
            if pe.is_closed() || pe.code().is_none() {
                self.broken
                    .borrow_mut()
                    .get_or_insert_with(|| pe.to_string());
            }
        }
    }

    /// Queues a statement (see the module's doc).
    pub fn queue(&self, f: impl Future<Output = Result<(), StoreError>> + Send + 'static) {
        self.pending
            .borrow_mut()
            .push((self.job.get(), Box::pin(f)));
    }

    /// Queues a simple statement (no parameters), after sealing what was gathered.
    pub fn queue_simple(&self, sql: &'static str) {
        self.seal();
        let pg = self.pg.clone();
        self.queue(async move { Ok(pg.client.batch_execute(sql).await?) });
    }

    /// Why the group cannot go on, if it cannot (connection lost, or doomed).
    pub fn broken(&self) -> Option<String> {
        self.broken
            .borrow()
            .clone()
            .or_else(|| self.doomed.borrow().clone())
    }
}

/// One write.
pub(super) struct PgTx<'a> {
    pub now: Millis,
    pub g: &'a mut Group,
    pub rt: &'a Runtime,
    pub fx: &'a mut Effects,
    /// Leases this write marked out (their jobs leave before the group commits).
    pub leases: &'a mut Vec<(Item, Change)>,
    /// Items read ahead by `prefetch`, kept as this write changes them.
    pub cache: std::collections::HashMap<ItemId, Item>,
    /// The PENDING replies of the prefetched items' tickets, by (account, ticket): ids
    /// (their current version is in `cache`), or a row that cannot be decoded.
    pub tickets_read: std::collections::HashMap<(String, String), Vec<Decoded>>,
}

impl<'a> PgTx<'a> {
    /// One write on the group `g`, at `now`, recording into `fx` and `leases`.
    pub fn new(
        now: Millis,
        g: &'a mut Group,
        rt: &'a Runtime,
        fx: &'a mut Effects,
        leases: &'a mut Vec<(Item, Change)>,
    ) -> Self {
        PgTx {
            now,
            g,
            rt,
            fx,
            leases,
            cache: Default::default(),
            tickets_read: Default::default(),
        }
    }
}

impl PgTx<'_> {
    /// Sends what is queued, then runs the read `f` and waits for it.
    fn read<T>(
        &self,
        f: impl FnOnce(Arc<Pg>) -> Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>,
    ) -> domain::Result<T> {
        if let Some(why) = self.g.broken() {
            return Err(StoreError::Unavailable(why).into());
        }
        self.g.flush(self.rt)?;
        let r = self.g.within(self.rt, f(self.g.pg.clone()));
        if let Err(e) = &r {
            self.g.note(e);
        }
        Ok(r?)
    }

    /// The partition of a write for `account`; refused when another node owns it.
    fn writable(&self, account: &str) -> domain::Result<Option<u32>> {
        self.g.scope.writable(account)
    }

    /// Queues `item`'s event (its account's partition must be writable: checked by the
    /// caller, before it changed anything).
    fn queue_event(&mut self, kind: domain::EventType, item: &Item) -> domain::Result<u64> {
        let p = self.writable(&item.account_id)?;
        let seq = self.g.alloc.next_seq(p)?;
        self.g.new_events.borrow_mut().push(EventOwned {
            seq,
            partition: p.map(|p| p as i32),
            kind,
            item: item.clone(),
            at: self.now,
        });
        Ok(seq)
    }
}

impl WriteTx for PgTx<'_> {
    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.g.metrics
    }

    fn count_unreadable(&mut self) {
        self.fx.unreadable += 1;
    }

    fn count_abandoned(&mut self) {
        self.fx.abandoned += 1;
    }

    fn load(&mut self, account: &str, id: ItemId) -> domain::Result<Option<Item>> {
        if let Some(item) = self.cache.get(&id) {
            return Ok((item.account_id == account).then(|| item.clone()));
        }
        let account = account.to_owned();
        self.read(move |pg| Box::pin(async move { rows::get_item(&*pg, &account, id).await }))
    }

    fn prefetch(&mut self, ids: &[ItemId]) -> domain::Result<()> {
        let ids: Vec<ItemId> = ids
            .iter()
            .copied()
            .filter(|id| !self.cache.contains_key(id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        // Items whose rows cannot be decoded are left out: their loads read them again.
        // The pending replies of their tickets come in the same round trip (an answer
        // for an item may convert them: the activity rule).
        let ((items, _), replies) = self.read(move |pg| {
            Box::pin(async move {
                let (a, b) = futures_util::future::join(
                    rows::due_items(&*pg, &ids),
                    rows::pending_replies_of_tickets(&*pg, &ids),
                )
                .await;
                Ok((a?, b?))
            })
        })?;
        for item in &items {
            self.tickets_read
                .entry((item.account_id.clone(), item.ticket_id.clone()))
                .or_default();
        }
        self.cache.extend(items.into_iter().map(|i| (i.id, i)));
        for (account, ticket, r) in replies {
            if let Ok(item) = &r {
                self.cache.entry(item.id).or_insert_with(|| item.clone());
            }
            self.tickets_read
                .entry((account, ticket))
                .or_default()
                .push(r);
        }
        Ok(())
    }

    fn load_checked(&mut self, id: ItemId) -> domain::Result<Option<Result<Item, String>>> {
        if let Some(item) = self.cache.get(&id) {
            return Ok(Some(Ok(item.clone())));
        }
        self.read(move |pg| Box::pin(async move { rows::get_item_checked(&*pg, id).await }))
    }

    fn find_by_request(
        &mut self,
        account: &str,
        request_id: &str,
    ) -> domain::Result<Option<(Item, u64)>> {
        let (account, request_id) = (account.to_owned(), request_id.to_owned());
        self.read(move |pg| {
            Box::pin(async move { rows::find_by_request(&*pg, &account, &request_id).await })
        })
    }

    fn is_own_message(
        &self,
        account: &str,
        ticket: &str,
        message_id: &str,
    ) -> domain::Result<bool> {
        let (account, ticket, message_id) =
            (account.to_owned(), ticket.to_owned(), message_id.to_owned());
        self.read(move |pg| {
            Box::pin(
                async move { rows::is_own_message(&*pg, &account, &ticket, &message_id).await },
            )
        })
    }

    fn pending_replies(
        &mut self,
        account: &str,
        ticket: &str,
        before: Millis,
        own: usize,
    ) -> domain::Result<Vec<Decoded>> {
        if self.g.tickets.nothing_else_live(account, ticket, own) {
            return Ok(Vec::new());
        }
        if let Some(read) = self
            .tickets_read
            .get(&(account.to_owned(), ticket.to_owned()))
        {
            // Read ahead (every PENDING reply of the ticket then); as they are now.
            let mut out: Vec<Decoded> = Vec::new();
            for r in read {
                match r {
                    Ok(at_read) => {
                        let now = self.cache.get(&at_read.id).unwrap_or(at_read);
                        if now.state == State::Pending && now.created_at < before {
                            out.push(Ok(now.clone()));
                        }
                    }
                    Err(e) => out.push(Err(e.clone())),
                }
            }
            return Ok(out);
        }
        let (account, ticket) = (account.to_owned(), ticket.to_owned());
        let mut out = self.read(move |pg| {
            Box::pin(async move { rows::pending_replies(&*pg, &account, &ticket, before).await })
        })?;
        // A row with a lease reads DISPATCHING: out at a connector, not a candidate.
        out.retain(|r| r.as_ref().map_or(true, |i| i.state == State::Pending));
        Ok(out)
    }

    fn put_business_hours(&mut self, account: &str, hours: &BusinessHours) -> domain::Result<()> {
        self.writable(account)?;
        let (pg, account, hours, now) = (
            self.g.pg.clone(),
            account.to_owned(),
            hours.clone(),
            self.now,
        );
        self.g
            .queue(async move { rows::put_business_hours(&*pg, &account, &hours, now).await });
        Ok(())
    }

    fn business_hours(&self, account: &str) -> domain::Result<Option<BusinessHours>> {
        let account = account.to_owned();
        self.read(move |pg| Box::pin(async move { rows::get_business_hours(&*pg, &account).await }))
    }

    fn rewindow_chunk(
        &mut self,
        account: &str,
        after: LiveKey,
        limit: usize,
        _seen: &mut HashSet<ItemId>,
    ) -> domain::Result<(Vec<Item>, Option<LiveKey>)> {
        // Rows are current here (no journal): the walk alone finds every live item.
        let acc = account.to_owned();
        let found = self.read(move |pg| {
            Box::pin(async move { rows::live_items_after(&*pg, &acc, after, limit).await })
        })?;
        let next = if found.len() < limit {
            None
        } else {
            found.last().map(|(k, _)| *k)
        };
        let kept = found
            .into_iter()
            .filter_map(|(_, item)| item)
            .filter(|item| {
                item.state == State::Pending
                    && item.next_attempt_at.is_none()
                    && item.timing.window() == domain::DeliveryWindow::BusinessHours
            })
            .collect();
        Ok((kept, next))
    }

    fn rewindow_cursor(&self, account: &str) -> domain::Result<Option<(Millis, ItemId)>> {
        let account = account.to_owned();
        self.read(move |pg| Box::pin(async move { rows::rewindow_cursor(&*pg, &account).await }))
    }

    fn set_rewindow_cursor(
        &mut self,
        account: &str,
        cursor: Option<(Millis, ItemId)>,
    ) -> domain::Result<()> {
        self.writable(account)?;
        let (pg, account) = (self.g.pg.clone(), account.to_owned());
        self.g
            .queue(async move { rows::set_rewindow_cursor(&*pg, &account, cursor).await });
        Ok(())
    }

    fn put_control(
        &mut self,
        account: &str,
        channel: domain::Channel,
        paused: Option<bool>,
        per_minute: Option<u32>,
    ) -> domain::Result<()> {
        self.writable(account)?;
        let (pg, account) = (self.g.pg.clone(), account.to_owned());
        self.g.queue(async move {
            rows::put_control(&*pg, &account, channel, paused, per_minute).await
        });
        Ok(())
    }

    fn all_controls(&self) -> domain::Result<Vec<ControlRow>> {
        // A handful of rows: those of other partitions are left out here.
        let mut rows = self.read(|pg| Box::pin(async move { rows::all_controls(&*pg).await }))?;
        rows.retain(|r| self.g.scope.sees_control(&r.account_id));
        Ok(rows)
    }

    fn prune_events(&mut self, cutoff: Millis, batch: u32) -> domain::Result<usize> {
        // Once rows carry partitions, each owner prunes its own partitions' events.
        match self.g.scope.filter() {
            None => self.read(move |pg| {
                Box::pin(async move { rows::prune_events(&*pg, cutoff, batch).await })
            }),
            Some(owned) => self.read(move |pg| {
                Box::pin(async move { rows::prune_owned_events(&*pg, cutoff, batch, &owned).await })
            }),
        }
    }

    fn insert(
        &mut self,
        new: &NewItem,
        send_at: Millis,
        timing: &Timing,
    ) -> domain::Result<ItemId> {
        self.fx.reserved.push(new.account_id.clone());
        // Refused before anything is queued: the reserved slot goes back with the
        // write's rollback.
        let p = self.writable(&new.account_id)?;
        let id = self.g.alloc.next_id(p)?;
        let partition = p.map(|p| p as i32);
        let (pg, new2, timing, now) = (self.g.pg.clone(), new.clone(), timing.clone(), self.now);
        self.g.queue(async move {
            rows::insert_item(&*pg, id, &new2, send_at, &timing, now, partition).await
        });
        // Counted at once; a rollback leaves the count high, which is safe.
        self.g
            .tickets
            .add(LiveTickets::slot(&new.account_id, &new.ticket_id));
        Ok(id)
    }

    fn save(&mut self, item: &Item, change: Change) -> domain::Result<u64> {
        self.writable(&item.account_id)?;
        // An item inserted by this write is gathered: its row goes first (seal writes
        // new rows before changed ones).
        {
            let mut rows = self.g.changed_rows.borrow_mut();
            let (list, at) = &mut *rows;
            match at.get(&item.id) {
                Some(&i) => list[i] = item.clone(),
                None => {
                    at.insert(item.id, list.len());
                    list.push(item.clone());
                }
            }
        }
        let seq = self.queue_event(change.event, item)?;
        self.g.changed.insert(item.id);
        if let Some(cached) = self.cache.get_mut(&item.id) {
            *cached = item.clone();
        }
        self.fx.record(item, &change, seq);
        Ok(seq)
    }

    fn save_new(&mut self, item: &Item, change: Change) -> domain::Result<u64> {
        let seq = self.queue_event(change.event, item)?;
        self.fx.max_seq = self.fx.max_seq.max(seq);
        if let Timer::Set(at) = change.timer {
            self.fx.timers.push(WheelOp::Set(item.id, at));
        }
        Ok(seq)
    }

    fn rearm(&mut self, id: ItemId, at: Millis) {
        self.fx.timers.push(WheelOp::Set(id, at));
    }

    fn fail_unreadable(&mut self, id: ItemId, why: &str) -> domain::Result<bool> {
        self.cache.remove(&id);
        let Some(mut item) =
            self.read(move |pg| Box::pin(async move { rows::get_item_lenient(&*pg, id).await }))?
        else {
            return Ok(false);
        };
        self.writable(&item.account_id)?;
        let cmd = domain::machine::Command::Unreadable {
            why: why.to_owned(),
        };
        let domain::machine::Step::Changed(change) =
            domain::machine::step(&mut item, cmd, self.now)?
        else {
            return Ok(false);
        };
        let (why2, now) = (why.to_owned(), self.now);
        let done = self.read(move |pg| {
            Box::pin(async move { rows::fail_unreadable(&*pg, id, &why2, now).await })
        })?;
        if done.is_none() {
            return Ok(false);
        }
        let seq = self.queue_event(change.event, &item)?;
        self.g.changed.insert(id);
        // Command::Unreadable's change removes the timer and frees the slot.
        self.fx.record(&item, &change, seq);
        Ok(true)
    }

    fn leases_out(&mut self, leases: Vec<(Item, Change)>) {
        // Counted before their jobs leave: a read from now on waits for their commit.
        self.g
            .uncommitted
            .fetch_add(leases.len(), std::sync::atomic::Ordering::SeqCst);
        self.leases.extend(leases);
    }

    fn changed_in_group(&self, id: ItemId) -> bool {
        self.g.changed.contains(&id)
    }

    fn isolated_dyn(
        &mut self,
        f: &mut dyn FnMut(&mut Tx<'_>) -> domain::Result<()>,
    ) -> domain::Result<domain::Result<()>> {
        self.read(|pg| Box::pin(async move { Ok(pg.client.batch_execute("SAVEPOINT o").await?) }))?;
        let fx_mark = self.fx.clone();
        let leases_mark = self.leases.len();
        let changed_mark = self.g.changed.clone();
        let now = self.now;
        let r = f(&mut Tx::new(now, self));
        let r = match r {
            Ok(()) => self.g.flush(self.rt).map_err(domain::Error::from),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {
                self.read(|pg| {
                    Box::pin(async move { Ok(pg.client.batch_execute("RELEASE o").await?) })
                })?;
                Ok(Ok(()))
            }
            Err(e) => {
                // Unsent statements of `f` are dropped unsent; the rest roll back.
                self.g.drop_unsent_of_current();
                if self.g.broken().is_some() {
                    return Err(e);
                }
                self.read(|pg| {
                    Box::pin(async move {
                        Ok(pg.client.batch_execute("ROLLBACK TO o; RELEASE o").await?)
                    })
                })?;
                debug_assert_eq!(
                    self.fx.reserved.len(),
                    fx_mark.reserved.len(),
                    "an isolated step may not reserve quota"
                );
                *self.fx = fx_mark;
                self.leases.truncate(leases_mark);
                // What `f` changed is rolled back: read those items again.
                self.cache.clear();
                self.g.changed = changed_mark;
                Ok(Err(e))
            }
        }
    }
}
