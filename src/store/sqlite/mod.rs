//! Storage: one SQLite file, the source of truth (DESIGN.md principles 1, 5, 6).
//!
//! Writes go through one dedicated writer thread that owns the only read-write
//! connection and does group commit: it takes every queued write (up to
//! [`MAX_GROUP`]) into one transaction, each inside its own SAVEPOINT so one failing
//! write rolls back alone, commits once, and only then answers the callers. So an RPC
//! that answered OK has committed, and a thousand concurrent RPCs cost one fsync.
//! Reads use a small pool of read-only connections on blocking threads, never the
//! writer. WAL mode; `synchronous=FULL` unless configured otherwise.
//!
//! The write path is a journal (`overlay`, STORAGE.md): a new item is inserted with its
//! row; every later change appends its event (whose snapshot carries the item's
//! mutable fields) and keeps the changed item in the writer's memory until a sweep
//! writes the rows back in id order, with the watermark up to which the rows reflect
//! the events. Start-up replays the events past the watermark.
//!
//! # Contract
//! - A write's future resolves `Ok` only after its group committed and the fsync that
//!   covers it returned (under `synchronous=FULL`): its events are durable, and so is
//!   everything a restart rebuilds from them.
//! - Its [`Effects`] (timer changes, quota releases, the event sequence) reach the
//!   [`CommitHook`] after that fsync, in commit order, before the caller is answered;
//!   the effects of a write that does not commit are handed back as abandoned.
//! - A group is all or nothing: if SQLite rolls the transaction back by itself
//!   (disk full, I/O error) every write of the group fails; none commits on its own.
//!   Changes a write made to the in-memory journal state are undone with it.
//! - Inside a write ([`Tx`]), reads see every change made before them, in memory or on
//!   rows.
//! - [`Store::read`] sees every write answered before it started (rows are swept
//!   first when changes wait in memory) and returns only data that is durable;
//!   [`Store::read_hint`] and [`Store::due_items`] may see a commit whose fsync is
//!   still running, and rows behind the journal (for the engine's own hints only).
//! - Events become visible to [`Store::event_sequence`] watchers only once durable.
//! - If the writer or the sync thread dies, [`Store::fatal`] says why and every later
//!   write fails: the process should stop and be restarted.

pub mod backup;
mod checkpoint;
mod claims;
mod current;
pub(crate) mod dump;
mod meta;
mod overlay;
mod queries;
mod reader;
mod recovery;
mod rows;
mod schema;
pub mod trace;
mod writer;

pub(crate) use super::tickets;

/// The SQLite statements, for the PostgreSQL engine's tests that compare both engines'
/// answers to the same operations.
#[cfg(test)]
pub(crate) mod parity {
    pub(crate) use super::meta::*;
    pub(crate) use super::queries::*;
    pub(crate) use super::recovery::*;
    pub(crate) use super::rows::*;
    pub(crate) use super::schema::migrate;
}
pub(crate) use super::{
    Claim, CommitHook, Completion, DueRead, DurabilityHold, Effects, Job, StoreError, Tx, WheelOp,
    WriteTx,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Synchronous;
use crate::domain::machine::{Change, Timer};
use crate::domain::{self, Item, ItemId, Millis, NewItem, State, Timing};

pub use writer::MAX_GROUP;

impl From<rusqlite::Error> for domain::Error {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::from(e).into()
    }
}

/// What a write closure gets: the write's `now`, and typed operations on the group's
/// open transaction (inside this write's savepoint).
///
/// # Contract
/// - Reads ([`Tx::load`], [`Tx::load_checked`], ...) see every change made before them in
///   this group, including this write's own.
/// - [`Tx::insert`] and [`Tx::save`] are the only ways an item is written. `save` writes
///   the item and its event (the [`Change`] a `domain::machine::step` returned) and
///   records the change's timer and quota effects; those take effect only once the
///   group is durable (in commit order, through the [`CommitHook`]), and are handed
///   back as abandoned if this write or its group does not commit.
/// - Nothing here commits: the writer commits the group.
pub struct SqliteTx<'a> {
    /// The connection, inside the group's transaction and this write's savepoint.
    conn: &'a Connection,
    /// The time of this write (one clock read per write).
    pub(crate) now: Millis,
    fx: &'a mut Effects,
    /// Items changed but not yet written back to their rows (see `overlay`).
    overlay: &'a mut overlay::Overlay,
    /// Which tickets may have live items (lets the activity rule skip its query).
    tickets: &'a tickets::LiveTickets,
    /// The writer's progress (a write's own write-back reports its failure there).
    progress: &'a writer::Progress,
}

impl WriteTx for SqliteTx<'_> {
    /// The server's counters and histograms.
    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.progress.metrics
    }

    /// Counts an item this write failed as unreadable (in the metrics once durable).
    fn count_unreadable(&mut self) {
        self.fx.unreadable += 1;
    }

    /// Counts a lease this write ended unanswered (in the metrics once durable).
    fn count_abandoned(&mut self) {
        self.fx.abandoned += 1;
    }

    fn sqlite_connection(&self) -> Option<&Connection> {
        Some(self.conn)
    }

    /// The item with this id, if it belongs to `account`.
    ///
    /// # Errors
    /// Storage errors (a row that cannot be decoded included).
    fn load(&mut self, account: &str, id: ItemId) -> domain::Result<Option<Item>> {
        self.touch(id)?;
        if let Some(item) = self.overlay.get(id) {
            return Ok((item.account_id == account).then(|| item.clone()));
        }
        Ok(rows::get_item(self.conn, account, id)?)
    }

    /// The item with this id, whatever its account; `Some(Err(why))` when its stored
    /// row cannot be decoded (so the caller can fail that item alone).
    ///
    /// # Errors
    /// Storage errors.
    fn load_checked(&mut self, id: ItemId) -> domain::Result<Option<Result<Item, String>>> {
        self.touch(id)?;
        if let Some(item) = self.overlay.get(id) {
            return Ok(Some(Ok(item.clone())));
        }
        Ok(rows::get_item_checked(self.conn, id)?)
    }

    /// The item holding the idempotency key `request_id` in `account`, with the
    /// fingerprint of the request that created it.
    ///
    /// # Errors
    /// Storage errors.
    fn find_by_request(
        &mut self,
        account: &str,
        request_id: &str,
    ) -> domain::Result<Option<(Item, u64)>> {
        // The key is written with the row; the item's state may be newer here.
        let Some((item, fp)) = rows::find_by_request(self.conn, account, request_id)? else {
            return Ok(None);
        };
        self.touch(item.id)?;
        Ok(Some((
            self.overlay.get(item.id).cloned().unwrap_or(item),
            fp,
        )))
    }

    /// Whether `message_id` (an item id of ours or a provider message id) is one of the
    /// ticket's items.
    ///
    /// # Errors
    /// Storage errors.
    fn is_own_message(
        &self,
        account: &str,
        ticket: &str,
        message_id: &str,
    ) -> domain::Result<bool> {
        // A provider id is set by an ack, which may not be written back yet.
        Ok(
            rows::is_own_message(self.conn, account, ticket, message_id)?
                || self.overlay.items().any(|i| {
                    i.account_id == account
                        && i.ticket_id == ticket
                        && i.provider_message_id.as_deref() == Some(message_id)
                }),
        )
    }

    /// The ticket's PENDING replies created before `before`, oldest first: the items a
    /// message in the ticket at `before` may convert or cancel; a row that cannot be
    /// decoded is `Err((id, why))` (the caller fails it alone). `own`: how many of the
    /// ticket's live items the caller holds itself (1 for an item being sent, which is
    /// still counted live): when the ticket has no other live item (known from memory,
    /// [`tickets::LiveTickets`]), nothing is read.
    ///
    /// # Errors
    /// Storage errors.
    fn pending_replies(
        &mut self,
        account: &str,
        ticket: &str,
        before: Millis,
        own: usize,
    ) -> domain::Result<Vec<super::Decoded>> {
        if self.tickets.nothing_else_live(account, ticket, own) {
            return Ok(Vec::new());
        }
        // Every item has its row (inserts are not deferred) and a row never reads as
        // finished while the item is live, so the rows find every candidate; the
        // overlay says what each is now (a dirty item is decoded already, whatever its
        // row holds).
        let mut out = rows::pending_replies(self.conn, account, ticket, before)?;
        for r in &mut out {
            let id = match r {
                Ok(item) => item.id,
                Err((id, _)) => *id,
            };
            self.touch(id)?;
            if let Some(now) = self.overlay.get(id) {
                *r = Ok(now.clone());
            }
        }
        out.retain(|r| r.as_ref().map_or(true, |i| i.state == State::Pending));
        Ok(out)
    }

    /// Stores the account's business hours.
    ///
    /// # Errors
    /// Storage errors.
    fn put_business_hours(
        &mut self,
        account: &str,
        hours: &domain::BusinessHours,
    ) -> domain::Result<()> {
        Ok(rows::put_business_hours(
            self.conn, account, hours, self.now,
        )?)
    }

    /// A chunk of the account's re-resolution after a change of its business hours:
    /// up to `limit` of its live items after the key `after` (by their rows, in
    /// `(next_send_at, id)` order), and every item of the account changed since its row
    /// was written that `seen` does not hold yet; of those, the ones PENDING now with a
    /// BUSINESS_HOURS window, not out at a connector nor waiting for a retry, as they
    /// are now; and the key to go on from (`None` when the walk is done).
    ///
    /// A changed item's row key is stale, and a write-back between two chunks may move
    /// its row behind the walk: so changed items are taken from memory, once per walk
    /// (`seen`, kept by the caller across chunks; after a restart it starts empty and
    /// an item may be taken twice, which changes nothing). An item met again changes
    /// nothing either; an unreadable row is passed over.
    ///
    /// # Errors
    /// Storage errors.
    fn rewindow_chunk(
        &mut self,
        account: &str,
        after: super::LiveKey,
        limit: usize,
        seen: &mut std::collections::HashSet<ItemId>,
    ) -> domain::Result<(Vec<Item>, Option<super::LiveKey>)> {
        let found = rows::live_items_after(self.conn, account, after, limit)?;
        let next = if found.len() < limit {
            None
        } else {
            found.last().map(|(k, _)| *k)
        };
        let mut ids: Vec<ItemId> = found
            .into_iter()
            .filter_map(|(_, item)| item.map(|i| i.id))
            .collect();
        let changed: Vec<ItemId> = self
            .overlay
            .items()
            .filter(|i| i.account_id == account && i.state.is_live() && !seen.contains(&i.id))
            .map(|i| i.id)
            .collect();
        seen.extend(changed.iter().copied());
        ids.extend(changed);
        ids.sort_unstable();
        ids.dedup();
        let mut kept = Vec::new();
        for id in ids {
            let Some(Ok(item)) = self.load_checked(id)? else {
                continue;
            };
            if item.state == State::Pending
                && item.next_attempt_at.is_none()
                && item.timing.window() == domain::DeliveryWindow::BusinessHours
            {
                kept.push(item);
            }
        }
        Ok((kept, next))
    }

    /// Where the account's re-resolution stands (see [`Tx::rewindow_chunk`]); `None`
    /// when none is under way.
    ///
    /// # Errors
    /// Storage errors.
    fn rewindow_cursor(&self, account: &str) -> domain::Result<Option<(Millis, ItemId)>> {
        Ok(rows::rewindow_cursor(self.conn, account)?)
    }

    /// Records where the account's re-resolution stands (`None`: done).
    ///
    /// # Errors
    /// Storage errors.
    fn set_rewindow_cursor(
        &mut self,
        account: &str,
        cursor: Option<(Millis, ItemId)>,
    ) -> domain::Result<()> {
        Ok(rows::set_rewindow_cursor(self.conn, account, cursor)?)
    }

    /// Sets the pause flag and/or rate limit of one account and channel; returns every
    /// stored control.
    ///
    /// # Errors
    /// Storage errors.
    fn put_control(
        &mut self,
        account: &str,
        channel: domain::Channel,
        paused: Option<bool>,
        per_minute: Option<u32>,
    ) -> domain::Result<()> {
        Ok(rows::put_control(
            self.conn, account, channel, paused, per_minute,
        )?)
    }

    /// Every stored dispatch control.
    ///
    /// # Errors
    /// Storage errors.
    fn all_controls(&self) -> domain::Result<Vec<super::ControlRow>> {
        Ok(rows::all_controls(self.conn)?)
    }

    /// Deletes up to `batch` of the oldest events before `cutoff` (retention); returns
    /// how many. Events the rows do not reflect yet are kept, so the changed items are
    /// written back first.
    ///
    /// # Errors
    /// Storage errors.
    fn prune_events(&mut self, cutoff: Millis, batch: u32) -> domain::Result<usize> {
        self.sweep()?;
        Ok(rows::prune_events(self.conn, cutoff, batch)?)
    }

    /// Writes every changed item back to its row now, in this write (for a query over
    /// rows that needs them current).
    ///
    /// # Errors
    /// Storage errors.
    fn sweep(&mut self) -> domain::Result<()> {
        // With nothing changed, this only moves the watermark up to the last event.
        let (ids, mark) = self.overlay.take_for_sweep(usize::MAX);
        let overlay = &*self.overlay;
        let swept = rows::sweep(
            self.conn,
            ids.iter().filter_map(|&id| overlay.get(id)),
            mark,
        );
        match swept {
            Ok(()) => {
                if self.progress.sweep_failing() {
                    self.progress.set_sweep_failing(None);
                }
                Ok(())
            }
            Err(e) => {
                self.progress
                    .sweep_failures
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.progress
                    .set_sweep_failing(Some(format!("writing rows back failed: {e}")));
                Err(domain::Error::Unavailable(
                    "the store cannot write its rows now (the disk refuses them); \
                     try again later"
                        .into(),
                ))
            }
        }
    }

    /// The account's business hours, if set.
    ///
    /// # Errors
    /// Storage errors.
    fn business_hours(&self, account: &str) -> domain::Result<Option<domain::BusinessHours>> {
        Ok(rows::get_business_hours(self.conn, account)?)
    }

    /// Stores a new PENDING item (from `domain::machine::schedule`, whose `change` it
    /// records like [`Tx::save`]); returns its id, which the item gets.
    ///
    /// The caller counted the item's quota slot already: it is given back if this
    /// write does not commit.
    ///
    /// # Errors
    /// Storage errors.
    fn insert(
        &mut self,
        new: &NewItem,
        send_at: Millis,
        timing: &Timing,
    ) -> domain::Result<ItemId> {
        self.fx.reserved.push(new.account_id.clone());
        let id = rows::insert_item(self.conn, new, send_at, timing, self.now)?;
        // Counted at once; a rollback leaves the count high, which is safe.
        self.tickets
            .add(tickets::LiveTickets::slot(&new.account_id, &new.ticket_id));
        Ok(id)
    }

    /// Records `item` after `change` (from `domain::machine`): appends the event (the
    /// journal) and keeps the item dirty in memory until a sweep writes its row back;
    /// the timer and the quota slot follow once the write is durable. Returns the
    /// event's sequence number.
    ///
    /// # Errors
    /// Storage errors; the write's savepoint then rolls back with everything it did.
    fn save(&mut self, item: &Item, change: Change) -> domain::Result<u64> {
        let seq = rows::insert_event(self.conn, change.event, item, self.now)?;
        self.overlay.put(item.clone(), seq);
        self.fx.record(item, &change, seq);
        Ok(seq)
    }

    /// Records the event of a new item (after [`Tx::insert`]) and its timer.
    ///
    /// # Errors
    /// Storage errors.
    fn save_new(&mut self, item: &Item, change: Change) -> domain::Result<u64> {
        let seq = rows::insert_event(self.conn, change.event, item, self.now)?;
        self.fx.max_seq = self.fx.max_seq.max(seq);
        if let Timer::Set(at) = change.timer {
            self.fx.timers.push(WheelOp::Set(item.id, at));
        }
        Ok(seq)
    }

    /// After commit, the item's timer fires at `at` again (nothing about the item
    /// changed: a timer that fired for a send time moved since).
    fn rearm(&mut self, id: ItemId, at: Millis) {
        self.fx.timers.push(WheelOp::Set(id, at));
    }

    /// Fails a live item whose row cannot be decoded, through the state machine
    /// (`Command::Unreadable`): FAILED with `why` as its last error and a FAILED event,
    /// lease and timer gone, quota slot freed. The item is read as far as its row can
    /// be; only its state columns are written (the overlay's write-back would rewrite
    /// the columns that cannot be decoded with defaults: they are kept as found).
    /// Returns whether it failed (`false`: not live, or nothing of it can be read).
    ///
    /// # Errors
    /// Storage errors.
    fn fail_unreadable(&mut self, id: ItemId, why: &str) -> domain::Result<bool> {
        self.touch(id)?;
        if self.overlay.get(id).is_some() {
            // Decoded in memory: not unreadable (its change is written back later).
            return Ok(false);
        }
        let Some(mut item) = rows::get_item_lenient(self.conn, id)? else {
            return Ok(false);
        };
        let cmd = domain::machine::Command::Unreadable {
            why: why.to_owned(),
        };
        let domain::machine::Step::Changed(change) =
            domain::machine::step(&mut item, cmd, self.now)?
        else {
            return Ok(false);
        };
        if rows::fail_unreadable(self.conn, id, why, self.now)?.is_none() {
            return Ok(false);
        }
        let seq = rows::insert_event(self.conn, change.event, &item, self.now)?;
        // Command::Unreadable's change removes the timer and frees the slot.
        self.fx.record(&item, &change, seq);
        Ok(true)
    }

    /// Marks leases this write recorded (with [`Tx::save`]) as out: their jobs leave as
    /// soon as this write has run, before the group commits. Should this write or its
    /// group not commit after this, a lease is not lost with it (its job is out): it is
    /// given back as a claim and the next write applies it again, before any later
    /// write reads the item. Called once every lease of the write is recorded, so a
    /// write that fails before its jobs leave rolls its leases back like any change.
    fn leases_out(&mut self, leases: Vec<(Item, Change)>) {
        for (item, change) in leases {
            self.overlay.claims.add_uncommitted(1);
            self.overlay.applying(Claim { item, change });
        }
    }

    /// Whether a write earlier in the open group (not yet committed) changed the item:
    /// a job taken from it now could carry a change that never commits.
    fn changed_in_group(&self, id: ItemId) -> bool {
        self.overlay.changed_in_group(id)
    }

    fn isolated_dyn(
        &mut self,
        f: &mut dyn FnMut(&mut Tx<'_>) -> domain::Result<()>,
    ) -> domain::Result<domain::Result<()>> {
        self.conn.prepare_cached("SAVEPOINT o")?.execute([])?;
        let mark = self.fx.clone();
        let overlay_mark = self.overlay.mark();
        let now = self.now;
        match f(&mut Tx::new(now, self)) {
            Ok(()) => {
                self.conn.prepare_cached("RELEASE o")?.execute([])?;
                Ok(Ok(()))
            }
            Err(e) => {
                if self.conn.is_autocommit() {
                    return Err(e);
                }
                self.conn.execute_batch("ROLLBACK TO o; RELEASE o")?;
                debug_assert_eq!(
                    self.fx.reserved.len(),
                    mark.reserved.len(),
                    "an isolated step may not reserve quota"
                );
                *self.fx = mark;
                self.overlay.rollback_to(overlay_mark);
                Ok(Err(e))
            }
        }
    }
}

impl SqliteTx<'_> {
    /// Marks the item read by this write (no dispatcher claim made from an older read
    /// is accepted) and applies its waiting claim first, if any (see `claims`).
    pub(crate) fn touch(&mut self, id: ItemId) -> domain::Result<()> {
        if let Some(c) = self.overlay.claims.touch(id) {
            self.apply_claim(c)?;
        }
        Ok(())
    }

    /// Records a lease the dispatcher took (its job is out already): the item's
    /// DISPATCHING event, as [`Tx::save`].
    pub(crate) fn apply_claim(&mut self, c: Claim) -> domain::Result<()> {
        let saved = self.save(&c.item, c.change);
        // Logged also when the save failed: its rollback gives the claim back.
        self.overlay.applying(c);
        saved.map(drop)
    }
}

/// Due items [`Store::due_items`] reads on the calling thread (more go to the
/// blocking pool).
const READ_HERE: usize = 64;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    writer: writer::WriterHandle,
    readers: Arc<reader::ReadPool>,
    events: watch::Receiver<u64>,
    progress: Arc<writer::Progress>,
}

/// Releases the sync stage when dropped (see [`Store::hold_durability`]).
#[doc(hidden)]
struct SqliteHold(Arc<writer::Progress>);

impl Drop for SqliteHold {
    fn drop(&mut self) {
        self.0.set_hold(false);
    }
}

/// Opens the database file read-write, applying pragmas; shared by writer and tools.
fn open_rw(path: &Path, sync: Synchronous) -> Result<Connection, StoreError> {
    let unusable = |e: rusqlite::Error| StoreError::Unusable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unusable)?;
    trace::install(&conn);
    // The first statement that reads the file tells a non-database apart.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(unusable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unusable {
            path: path.to_path_buf(),
            reason: format!("could not switch to WAL (journal_mode is {mode})"),
        });
    }
    let sync = match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_handler(Some(wait_briefly))?;
    // 64 MiB: RSS after loading 1M items over gRPC was 355 B/item with 256 MiB (the
    // cache fills up), over the 150 B budget; with schema v4's smaller index set the
    // larger cache no longer measured faster (BENCHMARKS.md, second round).
    conn.pragma_update(None, "cache_size", -65_536)?;
    // Savepoint sub-journals (one per write in a group) in memory, not in a temp file:
    // they were ~27% of the writer's CPU in a dispatch profile.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// The busy handler of every connection: waits for a lock in short steps (100 us, then
/// 1 ms), up to about 10 s. SQLite's own `busy_timeout` sleeps up to 100 ms per step:
/// the writer found the lock free a few ms after a checkpoint took it, but slept on
/// for another 25-100 ms (measured: stalls of 18-180 ms, the on-time lateness p99).
pub(crate) fn wait_briefly(attempt: i32) -> bool {
    match attempt {
        0..1_000 => std::thread::sleep(std::time::Duration::from_micros(100)),
        1_000..10_900 => std::thread::sleep(std::time::Duration::from_millis(1)),
        _ => return false,
    }
    true
}

/// The WAL file of the connection's main database, as SQLite itself names it: the
/// real file's name with `-wal` (SQLite resolves a symlinked path, so `<link>-wal` would
/// be the wrong file, or none).
fn wal_path(conn: &Connection, given: &Path) -> PathBuf {
    let db = conn
        .path()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| given.to_path_buf());
    let mut wal = db.into_os_string();
    wal.push("-wal");
    PathBuf::from(wal)
}

impl Store {
    /// Opens (creating and migrating when needed) the database at `path` and starts the
    /// writer thread. `hook` receives committed timer changes.
    ///
    /// # Errors
    /// The file is not a database, has a newer schema, or cannot be opened.
    pub fn open(
        path: &Path,
        sync: Synchronous,
        clock: Arc<dyn Clock>,
        hook: Arc<dyn CommitHook>,
    ) -> Result<Store, StoreError> {
        let mut conn = open_rw(path, sync)?;
        schema::migrate(&mut conn).map_err(|e| match e {
            StoreError::Sqlite(e) => StoreError::Unusable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
            other => other,
        })?;
        // Changes the previous process journalled but had not written back yet.
        let started = std::time::Instant::now();
        let tx = conn.transaction()?;
        let replayed = rows::replay(&tx)?;
        tx.commit()?;
        if replayed > 0 {
            tracing::info!(
                events = replayed,
                ms = started.elapsed().as_millis() as u64,
                "replayed the journal past the sweep watermark"
            );
        }
        let last_seq: i64 =
            // The last sequence ever written, also when retention pruned every event.
            conn.query_row(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
                [],
                |r| r.get(0),
            )?;
        let (events_tx, events) = watch::channel(last_seq as u64);
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = checkpoint::Checkpointer::start(path, sync)?;
        // FULL: the writer's COMMIT only writes the WAL; the sync stage fsyncs it before
        // anyone is answered (see writer/durable.rs), so the next group runs during the flush.
        let durability = match sync {
            Synchronous::Full => {
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                writer::Durability::SyncWal(wal_path(&conn, path))
            }
            Synchronous::Normal => writer::Durability::Sqlite,
        };
        let progress = writer::Progress::new();
        let writer = writer::spawn(
            conn,
            hook,
            events_tx,
            clock,
            checkpointer,
            durability,
            progress.clone(),
        )?;
        let readers = Arc::new(reader::ReadPool::new(path.to_path_buf(), 4));
        Ok(Store {
            writer,
            readers,
            events,
            progress,
        })
    }

    /// For tests: until the returned guard is dropped, committed groups are not made
    /// durable (no fsync, no answers, no effects): what a client or a connector can see
    /// between a commit and its fsync can then be checked deterministically.
    #[doc(hidden)]
    pub fn hold_durability(&self) -> DurabilityHold {
        self.progress.set_hold(true);
        DurabilityHold::new(Box::new(SqliteHold(self.progress.clone())))
    }

    /// The server's counters and histograms (each store has its own).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.progress.metrics
    }

    /// Which tickets may have live items: start-up recovery counts every live item
    /// into it (`recovery::recovery_scan`), then marks it ready.
    pub fn live_tickets(&self) -> Arc<tickets::LiveTickets> {
        self.progress.tickets.clone()
    }

    /// How many write-backs of rows (sweeps) failed and were rolled back so far (for
    /// tests and diagnostics).
    #[doc(hidden)]
    pub fn sweep_failures(&self) -> u64 {
        self.progress
            .sweep_failures
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Why the store cannot do all its work now (rows cannot be written back, so
    /// reads fail; or groups fail to commit), `None` while it can: the service is out
    /// of rotation (health NOT_SERVING) meanwhile, and back once the next write-back
    /// or commit succeeds.
    pub fn degraded(&self) -> watch::Receiver<Option<String>> {
        self.progress.degraded()
    }

    /// The reason the writer died (a panic or a lost thread), once it has; writes fail
    /// from then on and the process should stop so a supervisor restarts it.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.progress.fatal()
    }

    /// Runs `f` in the writer's next group transaction and waits for the commit.
    /// `f` runs inside its own savepoint: an `Err` rolls back its writes (and its
    /// timer changes and events) alone.
    ///
    /// # Errors
    /// `f`'s error, or `Unavailable`/`Internal` when the commit failed or the store
    /// is closed.
    pub async fn write<T, F>(&self, f: F) -> domain::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> domain::Result<T> + Send + 'static,
    {
        self.writer.write(f).await
    }

    /// As [`Store::write`], in two steps: resolves once the write is queued (writes
    /// run in the order they were queued), with what resolves as `write` does.
    ///
    /// # Errors
    /// `Unavailable` once the writer stopped.
    pub async fn enqueue<T, F>(
        &self,
        f: F,
    ) -> domain::Result<impl std::future::Future<Output = domain::Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> domain::Result<T> + Send + 'static,
    {
        self.writer.enqueue(f).await
    }

    /// Runs `f` on a read-only connection on a blocking thread, and returns once what
    /// it read is durable: a group that committed but is still waiting for its fsync
    /// is visible to SQLite readers, and a client must not see (or act on) what a power
    /// loss could take back. So the answer waits for the fsync in progress, if any.
    ///
    /// # Errors
    /// `f`'s error, or a storage error (`Unavailable` once the writer died).
    pub async fn read<T, F>(&self, f: F) -> domain::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> domain::Result<T> + Send + 'static,
    {
        // Rows must reflect every change answered so far: changed items still in the
        // writer's memory are written back first (one write; none when nothing waits).
        if self
            .progress
            .dirty
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
            || self.progress.claims.waiting() > 0
        {
            self.writer.write(|tx| tx.sweep()).await?;
        }
        self.read_journal(f).await
    }

    /// As [`Store::read`], without writing changed items back first: for reads of what
    /// a change appends (events) and of what never changes; still only what is durable.
    ///
    /// # Errors
    /// `f`'s error, or a storage error.
    pub async fn read_journal<T, F>(&self, f: F) -> domain::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> domain::Result<T> + Send + 'static,
    {
        let r = self.readers.read(f).await?;
        self.progress.durable_barrier().await?;
        Ok(r)
    }

    /// As [`Store::read`], without waiting for durability: for the engine's own hints
    /// (which due items to look at), never for what a client sees. Every decision taken
    /// from it is re-checked inside a write.
    ///
    /// # Errors
    /// `f`'s error, or a storage error.
    pub async fn read_hint<T, F>(&self, f: F) -> domain::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> domain::Result<T> + Send + 'static,
    {
        self.readers.read(f).await
    }

    /// What dispatch needs to know of the items whose timers fired (those of `ids` that
    /// exist, in no particular order): from memory for an item whose committed change
    /// is not on its row yet (meta only), else the whole row; with the claims epoch
    /// read before (see [`Store::claim`]). A hint, as [`Store::read_hint`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn due_items(&self, ids: Vec<ItemId>) -> domain::Result<DueRead> {
        // Before anything is read: a claim made from these rows is checked against
        // every write that touched them since.
        let epoch = self.progress.claims.epoch();
        let mut metas = Vec::new();
        let mut rest = Vec::with_capacity(ids.len());
        {
            let hints = self
                .progress
                .hints
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for id in ids {
                match hints.get(&id) {
                    Some(h) => metas.push(h.meta.clone()),
                    None => rest.push(id),
                }
            }
        }
        let mut items = Vec::new();
        if !rest.is_empty() {
            let here = rest.len() <= READ_HERE;
            let read = move |conn: &Connection| Ok(meta::due_items(conn, &rest)?);
            // A small read (the on-time case: a few due items a round) runs right here,
            // a few hundred us on the caller's worker: the hop to the blocking pool and
            // back cost more than that (BENCHMARKS.md, sixth round: lateness p50 2.1 vs
            // 2.6-2.8 ms, p99 12.5-14.7 vs 17.2-20.8 ms). A larger one goes to the pool.
            let (whole, unreadable) = if here {
                self.readers.read_here(read)?
            } else {
                self.readers.read(read).await?
            };
            items = whole;
            metas.extend(unreadable);
        }
        Ok(DueRead {
            epoch,
            metas,
            items,
        })
    }

    /// Leases the dispatcher took itself from rows read by [`Store::due_items`] at
    /// `read_at` (see `claims`): returns the accepted ones (their jobs may leave now;
    /// the writer records them before any later write reads the item) and the refused
    /// ones (lease them through a write).
    pub fn claim(&self, read_at: u64, claims: Vec<Claim>) -> (Vec<Claim>, Vec<Claim>) {
        let (ok, refused) = self.progress.claims.claim(read_at, claims);
        if !ok.is_empty() {
            self.writer.poke();
        }
        (ok, refused)
    }

    /// The sequence number of the last committed event; changes after each commit
    /// that wrote events.
    pub fn event_sequence(&self) -> watch::Receiver<u64> {
        self.events.clone()
    }

    /// Stops the writer after the writes already queued; waits for its thread.
    pub async fn close(&self) {
        self.writer.close().await;
    }
}

/// The SQLite engine behind the contract (see `store`).
#[async_trait::async_trait]
impl super::Backend for Store {
    fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        Store::metrics(self)
    }
    fn live_tickets(&self) -> Arc<tickets::LiveTickets> {
        Store::live_tickets(self)
    }
    fn degraded(&self) -> watch::Receiver<Option<String>> {
        Store::degraded(self)
    }
    fn fatal(&self) -> watch::Receiver<Option<String>> {
        Store::fatal(self)
    }
    fn event_sequence(&self) -> watch::Receiver<u64> {
        Store::event_sequence(self)
    }
    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.writer.submit(job).await
    }
    async fn close(&self) {
        Store::close(self).await;
    }
    async fn get_item(&self, account: String, id: ItemId) -> domain::Result<Option<Item>> {
        Store::get_item(self, account, id).await
    }
    async fn ticket_items(&self, account: String, ticket: String) -> domain::Result<Vec<Item>> {
        Store::ticket_items(self, account, ticket).await
    }
    async fn list_items(
        &self,
        q: domain::ListQuery,
        after: Option<(Millis, ItemId)>,
        limit: usize,
    ) -> domain::Result<super::Rows<Item>> {
        Store::list_items(self, q, after, limit).await
    }
    async fn deferred_tickets(
        &self,
        account: String,
        order: domain::Order,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> domain::Result<super::Rows<domain::DeferredTicket>> {
        Store::deferred_tickets(self, account, order, after, limit).await
    }
    async fn events_after(
        &self,
        account: Option<String>,
        after: u64,
        limit: usize,
    ) -> domain::Result<super::EventsAfter> {
        Store::events_after(self, account, after, limit).await
    }
    async fn recovery_scan(&self) -> domain::Result<super::RecoveryScan> {
        Store::recovery_scan(self).await
    }
    async fn live_item_ids(&self) -> domain::Result<Vec<ItemId>> {
        Store::live_item_ids(self).await
    }
    async fn event_heads(
        &self,
        account: String,
        after: u64,
        limit: usize,
    ) -> domain::Result<Vec<(u64, domain::EventType, ItemId, String)>> {
        Store::event_heads(self, account, after, limit).await
    }
    async fn business_hours(
        &self,
        account: String,
    ) -> domain::Result<Option<domain::BusinessHours>> {
        Store::business_hours(self, account).await
    }
    async fn every_account_controls(&self) -> domain::Result<Vec<super::ControlRow>> {
        Store::every_account_controls(self).await
    }
    async fn rewindows_under_way(&self) -> domain::Result<Vec<String>> {
        Store::rewindows_under_way(self).await
    }
    async fn due_items(&self, ids: Vec<ItemId>) -> domain::Result<DueRead> {
        Store::due_items(self, ids).await
    }
    fn claim(&self, read_at: u64, claims: Vec<Claim>) -> (Vec<Claim>, Vec<Claim>) {
        Store::claim(self, read_at, claims)
    }
    fn hold_durability(&self) -> Option<DurabilityHold> {
        Some(Store::hold_durability(self))
    }
    fn sweep_failures(&self) -> u64 {
        Store::sweep_failures(self)
    }
}

/// Items for the store's unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::domain::{ChatContent, Content, Item, ItemId, Kind, NewItem, OnActivity};

    /// A chat reply of account "a", ticket "t", due at 1.
    pub(crate) fn new_chat() -> NewItem {
        NewItem {
            account_id: "a".into(),
            ticket_id: "t".into(),
            kind: Kind::Reply,
            channel: crate::domain::Channel::Chat,
            author_id: "u".into(),
            content: Content::Chat(ChatContent::default()),
            send_at: 1,
            on_activity: OnActivity::Keep,
            request_id: None,
            timing: Default::default(),
        }
    }

    /// [`new_chat`], PENDING with this id.
    pub(crate) fn pending_chat(id: ItemId) -> Item {
        new_chat().into_pending(id, 1)
    }

    /// A commit hook that ignores everything.
    pub(crate) struct NoHook;
    impl super::CommitHook for NoHook {
        fn durable(&self, _: &super::Effects) {}
        fn abandoned(&self, _: &super::Effects) {}
    }

    /// A store on a new file in `dir` holding one [`new_chat`] item; returns its id.
    pub(crate) async fn store_with_item(dir: &tempfile::TempDir) -> (super::Store, ItemId) {
        let store = super::Store::open(
            &dir.path().join("t.db"),
            crate::config::Synchronous::Full,
            std::sync::Arc::new(crate::clock::SystemClock),
            std::sync::Arc::new(NoHook),
        )
        .expect("store opens");
        let new = new_chat();
        let id = store
            .write(move |tx| tx.insert(&new, 1, &Default::default()))
            .await
            .expect("inserted");
        (store, id)
    }

    /// Makes every later append of an event of item `id` fail (a temporary trigger on
    /// the writer's connection), until [`allow_events`].
    pub(crate) async fn refuse_events_of(store: &super::Store, id: ItemId) {
        store
            .write(move |tx| {
                tx.raw_connection().execute_batch(&format!(
                    "CREATE TEMP TRIGGER no_event BEFORE INSERT ON events \
                     WHEN NEW.item_id = {id} BEGIN SELECT RAISE(ABORT, 'injected'); END"
                ))?;
                Ok(())
            })
            .await
            .expect("trigger created");
    }

    /// Undoes [`refuse_events_of`].
    pub(crate) async fn allow_events(store: &super::Store) {
        store
            .write(|tx| {
                tx.raw_connection().execute_batch("DROP TRIGGER no_event")?;
                Ok(())
            })
            .await
            .expect("trigger dropped");
    }

    /// The item's row as stored (after a write-back).
    pub(crate) async fn stored(store: &super::Store, id: ItemId) -> Item {
        store
            .read(move |conn| Ok(super::rows::get_item_any(conn, id)?))
            .await
            .expect("read")
            .expect("row")
    }
}
