//! Storage: one contract, two engines (DESIGN.md principles 1, 5, 6).
//!
//! The engine, dispatch, the service, the console and the CLI see this module only: a
//! [`Store`] (reads, lifecycle) and, inside a write, a [`Tx`] (typed operations on the
//! write's transaction). Neither hands out a connection, a driver type or SQL text.
//! Behind them is a [`Backend`] and its [`WriteTx`]:
//! - `sqlite`: one SQLite file, the embedded default (a journal with a write-back of
//!   rows, dispatcher claims without the writer; see its module);
//! - `postgres`: a PostgreSQL database, selected by a `postgres://` URL.
//!
//! # Contract (every backend)
//! - Writes run one at a time, in the order they were queued, in groups: a group is one
//!   transaction, and each write runs inside a savepoint of its own, so a write whose
//!   closure returns `Err` (or whose statement fails) rolls back alone.
//! - A write's future resolves `Ok` only after its group committed durably (under the
//!   configured `--sync`): its events are durable, and so is everything a restart
//!   rebuilds from them. A commit whose outcome is unknown is never reported `Ok`.
//! - Its [`Effects`] (timer changes, quota releases, the event sequence) reach the
//!   [`CommitHook`] after the commit is durable, in commit order, before the caller is
//!   answered; the effects of a write that does not commit are handed back as abandoned.
//! - A group is all or nothing: if the database ends the transaction by itself (disk
//!   full, I/O error, lost connection) every write of the group fails.
//! - Inside a write ([`Tx`]), reads see every change made before them.
//! - [`Store`]'s reads for clients see every write answered before they started and
//!   return only what is durable; [`Store::due_items`] is a hint for the engine (it may
//!   see a commit not yet durable; every decision taken from it is re-checked in a
//!   write).
//! - Events become visible to [`Store::event_sequence`] watchers only once durable;
//!   their sequence numbers grow in commit order per account (on PostgreSQL with
//!   several nodes, per partition: see `postgres::scope`; [`Store::newest_event`] is
//!   the newest an account's cursor can be at).
//! - If the backend cannot go on (its writer died), [`Store::fatal`] says why and every
//!   later write fails; while it cannot write for now, [`Store::degraded`] says why.
//!
//! Optional capabilities have safe defaults: a backend may refuse every dispatcher
//! claim ([`Backend::claim`]: dispatch then leases through a write), and only SQLite can
//! hold durability back for tests or write its rows back on demand.

pub mod codec;
pub mod migrate;
pub mod postgres;
pub mod sqlite;
pub mod tickets;
mod types;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use crate::domain::machine::Change;
use crate::domain::{
    self, BusinessHours, DeferredTicket, EventType, Item, ItemId, ListQuery, Millis, NewItem,
    Order, Timing,
};

#[cfg(test)]
pub(crate) use sqlite::test_support;
pub use sqlite::{backup, trace, MAX_GROUP};
pub use types::{
    Claim, ControlRow, Decoded, DueRead, EventsAfter, ItemMeta, LiveKey, RecoveryScan, Rows,
};

/// What makes every commit of a node conditional on its partition leases (several
/// nodes on PostgreSQL; see `store::postgres::lease`): the node and the partitions it
/// was granted, each at its epoch. A commit after another node took one of them is
/// refused ([`StoreError::Fenced`]) and nothing of it is kept.
#[derive(Clone, Debug)]
pub struct Fence {
    pub node: String,
    /// (partition, epoch) pairs.
    pub held: Vec<(u32, i64)>,
    /// The longest a transaction of the writer may sit idle holding the lease rows: a
    /// node stopped or cut off mid-group must not keep a takeover waiting (below the
    /// lease).
    pub idle_limit: std::time::Duration,
}

/// Storage failures; everything else the store reports is a `domain::Error`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A stored row that cannot be decoded (PostgreSQL; SQLite reports it as
    /// [`StoreError::Sqlite`]).
    #[error("a stored row cannot be read: {0}")]
    Corrupt(String),
    #[error(
        "the database was written by a newer sendlater (schema version {found}, this build \
         supports up to {supported}); upgrade sendlater or use another --db"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("{path}: not a usable sendlater database: {reason}")]
    Unusable { path: PathBuf, reason: String },
    /// The database cannot be reached or refused the connection (the URL is shown
    /// without its password).
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The database cannot be written now (connection lost, server restarting): the
    /// write did not commit, or its outcome is unknown and it is not reported OK.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("the store is shut down")]
    Closed,
    /// The database was created with another partition count than configured.
    #[error(
        "the database has {found} partitions, fixed when it was created; this node is \
         configured with [cluster] partitions = {configured}"
    )]
    PartitionsMismatch { found: u32, configured: u32 },
    /// Another node took this node's partitions: the write was refused by the fence and
    /// nothing of it committed.
    #[error("fenced: another node owns the partitions now ({0})")]
    Fenced(String),
}

impl From<StoreError> for domain::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => domain::Error::Unavailable("the service is shutting down".into()),
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "storage unavailable");
                domain::Error::Unavailable(
                    "the database is unavailable; try again (request_id makes it safe)".into(),
                )
            }
            StoreError::Fenced(why) => {
                tracing::warn!(error = %why, "write fenced");
                domain::Error::Unavailable(
                    "this node no longer owns the account's partition; try again \
                     (request_id makes it safe)"
                        .into(),
                )
            }
            StoreError::Postgres(e) if postgres::transient::is_transient(&e) => {
                // The connection is lost or cannot be made (the server is restarting,
                // the network is cut), the session was ended, or another node wrote:
                // callers retry.
                tracing::warn!(error = %pg_message(&e), "database unavailable");
                domain::Error::Unavailable(
                    "the database is unavailable; try again (request_id makes it safe)".into(),
                )
            }
            other => {
                tracing::error!(error = %other, "storage error");
                domain::Error::Internal("internal storage error".into())
            }
        }
    }
}

/// A PostgreSQL error with the server's own message (tokio-postgres shows only "db
/// error" and keeps the message in its source).
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// A change to the timing wheel, applied after the write that caused it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WheelOp {
    /// The item is due at this time (insert or replace its timer).
    Set(ItemId, Millis),
    /// The item no longer needs a timer.
    Remove(ItemId),
}

/// What a write changes outside the database: timers and the pending-quota counts.
/// They follow from the write only once it is durable, in commit order (or are undone
/// when it does not commit): nothing in memory may run ahead of the database.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Timer changes, applied after the commit is durable.
    pub timers: Vec<WheelOp>,
    /// Accounts whose quota slot this write took: counted at once (so concurrent writes
    /// cannot overshoot the quota), given back if the write does not commit.
    pub reserved: Vec<String>,
    /// Accounts whose quota slot this write freed: counted once it is durable.
    pub released: Vec<String>,
    /// The last event sequence the write produced.
    pub max_seq: u64,
    /// The ticket slots ([`tickets::LiveTickets`]) of items that left the live set:
    /// discounted once the write is durable.
    pub left_tickets: Vec<u32>,
    /// Items failed because their rows cannot be decoded, and leases that ended
    /// unanswered: counted in the metrics once the write is durable (a write that
    /// rolls back, and runs again, counts once).
    pub unreadable: u64,
    pub abandoned: u64,
}

impl Effects {
    /// Adds `other`'s effects to these.
    pub fn append(&mut self, other: Effects) {
        self.timers.extend(other.timers);
        self.reserved.extend(other.reserved);
        self.released.extend(other.released);
        self.left_tickets.extend(other.left_tickets);
        self.max_seq = self.max_seq.max(other.max_seq);
        self.unreadable += other.unreadable;
        self.abandoned += other.abandoned;
    }

    /// Whether nothing outside the database follows from the write.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
            && self.reserved.is_empty()
            && self.released.is_empty()
            && self.left_tickets.is_empty()
    }

    /// Records the effects of `change` to `item` (as [`Tx::save`] does).
    pub fn record(&mut self, item: &Item, change: &Change, seq: u64) {
        use crate::domain::machine::Timer;
        self.max_seq = self.max_seq.max(seq);
        self.timers.push(match change.timer {
            Timer::Set(at) => WheelOp::Set(item.id, at),
            Timer::Remove => WheelOp::Remove(item.id),
        });
        if change.left_live {
            self.released.push(item.account_id.clone());
            self.left_tickets.push(tickets::LiveTickets::slot(
                &item.account_id,
                &item.ticket_id,
            ));
        }
    }
}

/// Receives the effects of writes. Contract: `durable` is called in commit order,
/// after the commit that covers the write is durable and before its caller is
/// answered; `abandoned` is called for writes that will never commit (rolled back
/// alone, or with their whole group), before their callers see the error.
pub trait CommitHook: Send + Sync + 'static {
    /// The writes are durable.
    fn durable(&self, fx: &Effects);
    /// The writes did not commit.
    fn abandoned(&self, fx: &Effects);
}

/// Sends the outcome to the caller once the group's commit is known.
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write: runs in the transaction, says whether it succeeded, returns its completion.
pub type Job = Box<dyn FnOnce(&mut Tx<'_>) -> (bool, Completion) + Send>;

/// The write `f` as a [`Job`] for a backend's queue, and what resolves with its
/// outcome: `f`'s result once its group committed, else the commit's error (`Closed`
/// when the job is dropped unrun).
pub(crate) fn job<T, F>(f: F) -> (Job, impl std::future::Future<Output = domain::Result<T>>)
where
    T: Send + 'static,
    F: FnOnce(&mut Tx<'_>) -> domain::Result<T> + Send + 'static,
{
    let (reply, rx) = oneshot::channel::<domain::Result<T>>();
    let job: Job = Box::new(move |tx: &mut Tx<'_>| {
        let r = f(tx);
        let ok = r.is_ok();
        let done: Completion = Box::new(move |commit| {
            let _ = reply.send(match commit {
                Ok(()) => r,
                Err(e) => Err(e.into()),
            });
        });
        (ok, done)
    });
    let outcome = async move {
        rx.await
            .map_err(|_| domain::Error::from(StoreError::Closed))?
    };
    (job, outcome)
}

/// The typed operations of one write, inside its group's transaction and its own
/// savepoint. Implemented by each backend; callers use them through [`Tx`].
///
/// # Contract
/// - Reads see every change made before them in this group, this write's own included.
/// - `insert`, `save`, `save_new` and `fail_unreadable` are the only ways an item is
///   written; each records its timer and quota effects, which take effect only once
///   the group is durable (through the [`CommitHook`]) and are handed back as
///   abandoned if the write or its group does not commit.
/// - Nothing here commits: the backend's writer commits the group.
pub trait WriteTx {
    /// The server's counters and histograms.
    fn metrics(&self) -> &crate::metrics::Metrics;
    /// Counts an item this write failed as unreadable (in the metrics once durable).
    fn count_unreadable(&mut self);
    /// Counts a lease this write ended unanswered (in the metrics once durable).
    fn count_abandoned(&mut self);
    /// The item with this id, if it belongs to `account`.
    fn load(&mut self, account: &str, id: ItemId) -> domain::Result<Option<Item>>;
    /// The item with this id, whatever its account; `Some(Err(why))` when its stored
    /// row cannot be decoded (so the caller can fail that item alone).
    fn load_checked(&mut self, id: ItemId) -> domain::Result<Option<Result<Item, String>>>;
    /// The item holding the idempotency key `request_id` in `account`, with the
    /// fingerprint of the request that created it.
    fn find_by_request(
        &mut self,
        account: &str,
        request_id: &str,
    ) -> domain::Result<Option<(Item, u64)>>;
    /// Whether `message_id` (an item id of ours or a provider message id) is one of the
    /// ticket's items.
    fn is_own_message(&self, account: &str, ticket: &str, message_id: &str)
        -> domain::Result<bool>;
    /// The ticket's PENDING replies created before `before`, oldest first; a row that
    /// cannot be decoded is `Err((id, why))`. `own`: how many of the ticket's live items
    /// the caller holds itself (a backend may use it to skip the read).
    fn pending_replies(
        &mut self,
        account: &str,
        ticket: &str,
        before: Millis,
        own: usize,
    ) -> domain::Result<Vec<Decoded>>;
    /// Stores the account's business hours.
    fn put_business_hours(&mut self, account: &str, hours: &BusinessHours) -> domain::Result<()>;
    /// The account's business hours, if set.
    fn business_hours(&self, account: &str) -> domain::Result<Option<BusinessHours>>;
    /// A chunk of the account's re-resolution after a change of its business hours:
    /// up to `limit` of its live items after `after` in `(next_send_at, id)` order, of
    /// those the ones PENDING with a BUSINESS_HOURS window, not out at a connector nor
    /// waiting for a retry; and the key to go on from (`None`: done). `seen` is kept by
    /// the caller across chunks (a backend may use it to take items once per walk).
    fn rewindow_chunk(
        &mut self,
        account: &str,
        after: LiveKey,
        limit: usize,
        seen: &mut std::collections::HashSet<ItemId>,
    ) -> domain::Result<(Vec<Item>, Option<LiveKey>)>;
    /// Where the account's re-resolution stands; `None` when none is under way.
    fn rewindow_cursor(&self, account: &str) -> domain::Result<Option<(Millis, ItemId)>>;
    /// Records where the account's re-resolution stands (`None`: done).
    fn set_rewindow_cursor(
        &mut self,
        account: &str,
        cursor: Option<(Millis, ItemId)>,
    ) -> domain::Result<()>;
    /// Sets the pause flag and/or rate limit of one account and channel.
    fn put_control(
        &mut self,
        account: &str,
        channel: domain::Channel,
        paused: Option<bool>,
        per_minute: Option<u32>,
    ) -> domain::Result<()>;
    /// Every stored dispatch control.
    fn all_controls(&self) -> domain::Result<Vec<ControlRow>>;
    /// Deletes up to `batch` of the oldest events before `cutoff` (retention); returns
    /// how many.
    fn prune_events(&mut self, cutoff: Millis, batch: u32) -> domain::Result<usize>;
    /// Stores a new PENDING item (from `domain::machine::schedule`); returns its id.
    /// The caller counted the item's quota slot already: it is given back if this
    /// write does not commit.
    fn insert(&mut self, new: &NewItem, send_at: Millis, timing: &Timing)
        -> domain::Result<ItemId>;
    /// Records `item` after `change` (from `domain::machine`): the item and its event;
    /// the timer and the quota slot follow once durable. Returns the event's sequence.
    fn save(&mut self, item: &Item, change: Change) -> domain::Result<u64>;
    /// Records the event of a new item (after `insert`) and its timer.
    fn save_new(&mut self, item: &Item, change: Change) -> domain::Result<u64>;
    /// After commit, the item's timer fires at `at` again.
    fn rearm(&mut self, id: ItemId, at: Millis);
    /// Fails a live item whose row cannot be decoded, through the state machine
    /// (`Command::Unreadable`); returns whether it failed.
    fn fail_unreadable(&mut self, id: ItemId, why: &str) -> domain::Result<bool>;
    /// Marks leases this write recorded (with `save`) as out: their jobs leave as soon
    /// as this write has run, before the group commits.
    fn leases_out(&mut self, leases: Vec<(Item, Change)>);
    /// Whether a write earlier in the open group (not yet committed) changed the item.
    fn changed_in_group(&self, id: ItemId) -> bool;
    /// Runs `f` in a savepoint of its own inside this write: its `Err` rolls back what
    /// `f` wrote (and the effects it recorded) and is returned as the inner result; the
    /// outer error is a storage failure that ended the whole transaction.
    fn isolated_dyn(
        &mut self,
        f: &mut dyn FnMut(&mut Tx<'_>) -> domain::Result<()>,
    ) -> domain::Result<domain::Result<()>>;
    /// Reads the items of `ids` ahead, in one go, for this write's later
    /// [`WriteTx::load`] / [`WriteTx::load_checked`] of them (a backend whose reads cost
    /// a round trip each answers those from what it read). A hint: a no-op by default.
    fn prefetch(&mut self, _ids: &[ItemId]) -> domain::Result<()> {
        Ok(())
    }
    /// Writes every changed item back to its row now (SQLite's journal); a no-op for
    /// a backend that writes rows in place.
    fn sweep(&mut self) -> domain::Result<()> {
        Ok(())
    }
    /// For fault-injection tests only: the SQLite connection, if this is SQLite.
    #[doc(hidden)]
    fn sqlite_connection(&self) -> Option<&rusqlite::Connection> {
        None
    }
}

/// What a write closure gets: the write's `now`, and the typed operations of
/// [`WriteTx`] on the group's open transaction (inside this write's savepoint).
pub struct Tx<'a> {
    /// The time of this write (one clock read per write).
    pub now: Millis,
    ops: &'a mut dyn WriteTx,
}

impl<'a> Tx<'a> {
    /// A write's view of a backend's transaction.
    pub fn new(now: Millis, ops: &'a mut dyn WriteTx) -> Self {
        Tx { now, ops }
    }

    /// As [`WriteTx::isolated_dyn`], returning `f`'s value.
    ///
    /// # Errors
    /// The transaction cannot go on.
    pub fn isolated<T>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> domain::Result<T>,
    ) -> domain::Result<domain::Result<T>> {
        let mut f = Some(f);
        let mut out = None;
        let r = self.ops.isolated_dyn(&mut |tx| {
            let f = f
                .take()
                .ok_or_else(|| domain::Error::Internal("an isolated step ran twice".into()))?;
            out = Some(f(tx)?);
            Ok(())
        })?;
        Ok(r.and_then(|()| {
            out.ok_or_else(|| domain::Error::Internal("an isolated step did not run".into()))
        }))
    }

    /// For fault-injection tests only: the raw SQLite connection (PRAGMAs such as
    /// `max_page_count`). Panics on another backend.
    #[doc(hidden)]
    pub fn raw_connection(&self) -> &rusqlite::Connection {
        self.ops
            .sqlite_connection()
            .expect("raw_connection is for tests on the SQLite store")
    }

    /// Marks leases this write recorded as out (see [`WriteTx::leases_out`]).
    pub fn leases_out(&mut self, leases: impl IntoIterator<Item = (Item, Change)>) {
        self.ops.leases_out(leases.into_iter().collect());
    }
}

impl<'a> std::ops::Deref for Tx<'a> {
    type Target = dyn WriteTx + 'a;
    fn deref(&self) -> &Self::Target {
        &*self.ops
    }
}

impl<'a> std::ops::DerefMut for Tx<'a> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.ops
    }
}

/// Releases what [`Store::hold_durability`] held when dropped.
#[doc(hidden)]
pub struct DurabilityHold(#[allow(dead_code)] Box<dyn Send + Sync>);

impl DurabilityHold {
    /// Wraps a backend's guard.
    pub fn new(guard: Box<dyn Send + Sync>) -> Self {
        DurabilityHold(guard)
    }
}

/// A storage engine: reads, lifecycle and the queue of writes. See the module's
/// Contract.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The server's counters and histograms (each store has its own).
    fn metrics(&self) -> &Arc<crate::metrics::Metrics>;
    /// Which tickets may have live items (start-up recovery fills it).
    fn live_tickets(&self) -> Arc<tickets::LiveTickets>;
    /// Why the store cannot do all its work now; `None` while it can.
    fn degraded(&self) -> watch::Receiver<Option<String>>;
    /// Why the store cannot go on at all, once that happened.
    fn fatal(&self) -> watch::Receiver<Option<String>>;
    /// The sequence of the last durable event: it changes at every commit with events
    /// (a "something committed" signal for watchers) and never goes down.
    fn event_sequence(&self) -> watch::Receiver<u64>;
    /// The newest event sequence `account`'s events can be compared with: a cursor
    /// beyond it is beyond anything written for it. Default: [`Backend::event_sequence`]
    /// (one sequence for every account); PostgreSQL with partitions: the largest of the
    /// account's partition (sequences are monotone per partition, not across them).
    ///
    /// # Errors
    /// Storage errors.
    async fn newest_event(&self, _account: String) -> domain::Result<u64> {
        Ok(*self.event_sequence().borrow())
    }
    /// Queues a write; resolves once it is queued (writes run in queue order).
    async fn submit(&self, job: Job) -> Result<(), StoreError>;
    /// Stops the writer after the writes already queued.
    async fn close(&self);

    /// The item, if it belongs to `account`.
    async fn get_item(&self, account: String, id: ItemId) -> domain::Result<Option<Item>>;
    /// Every item of the ticket, in creation order.
    async fn ticket_items(&self, account: String, ticket: String) -> domain::Result<Vec<Item>>;
    /// A page of the account's items (ListScheduled).
    async fn list_items(
        &self,
        q: ListQuery,
        after: Option<(Millis, ItemId)>,
        limit: usize,
    ) -> domain::Result<Rows<Item>>;
    /// A page of the account's tickets with live items (ListDeferredTickets).
    async fn deferred_tickets(
        &self,
        account: String,
        order: Order,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> domain::Result<Rows<DeferredTicket>>;
    /// Outbox events after `after` (every account's when `account` is `None`).
    async fn events_after(
        &self,
        account: Option<String>,
        after: u64,
        limit: usize,
    ) -> domain::Result<EventsAfter>;
    /// What start-up rebuilds its memory from; counts live items into
    /// [`Backend::live_tickets`].
    async fn recovery_scan(&self) -> domain::Result<RecoveryScan>;
    /// Ids of every live item.
    async fn live_item_ids(&self) -> domain::Result<Vec<ItemId>>;
    /// What changed in `account` after `after`: `(seq, type, item, ticket)`.
    async fn event_heads(
        &self,
        account: String,
        after: u64,
        limit: usize,
    ) -> domain::Result<Vec<(u64, EventType, ItemId, String)>>;
    /// The account's business hours, if set.
    async fn business_hours(&self, account: String) -> domain::Result<Option<BusinessHours>>;
    /// The dispatch controls in force for every account (`*`), as stored now: what a
    /// node among several re-reads to follow the changes `*`'s owner writes.
    async fn every_account_controls(&self) -> domain::Result<Vec<ControlRow>>;
    /// Accounts whose re-resolution of business-hours items is under way.
    async fn rewindows_under_way(&self) -> domain::Result<Vec<String>>;
    /// What dispatch needs of the items whose timers fired (a hint).
    async fn due_items(&self, ids: Vec<ItemId>) -> domain::Result<DueRead>;

    /// Leases the dispatcher took itself from rows read by `due_items`: the accepted
    /// ones and the refused ones (lease those through a write). Default: refuse all.
    fn claim(&self, _read_at: u64, claims: Vec<Claim>) -> (Vec<Claim>, Vec<Claim>) {
        (Vec::new(), claims)
    }
    /// For tests: holds committed groups back from durability. `None`: not supported.
    fn hold_durability(&self) -> Option<DurabilityHold> {
        None
    }
    /// How many write-backs of rows failed so far (SQLite's journal; 0 elsewhere).
    fn sweep_failures(&self) -> u64 {
        0
    }
}

/// Where the data lives: `--db` parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbTarget {
    /// An SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl DbTarget {
    /// `postgres://...` / `postgresql://...` is PostgreSQL; anything else a file path.
    pub fn parse(db: &str) -> DbTarget {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            DbTarget::Postgres(db.to_owned())
        } else {
            DbTarget::Sqlite(PathBuf::from(db))
        }
    }

    /// For messages and logs: the path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            DbTarget::Sqlite(p) => p.display().to_string(),
            DbTarget::Postgres(url) => redact_url(url),
        }
    }
}

/// `url` with its password (if any) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable database URL>".into(),
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Opens the store at `db` (creating and migrating the schema when needed) and
    /// starts its writer. `hook` receives committed timer changes.
    ///
    /// # Errors
    /// The database cannot be reached or opened, is not a sendlater database, or has a
    /// newer schema.
    pub fn open_target(
        db: &DbTarget,
        sync: crate::config::Synchronous,
        clock: Arc<dyn crate::clock::Clock>,
        hook: Arc<dyn CommitHook>,
    ) -> Result<Store, StoreError> {
        Self::open_fenced(db, sync, clock, hook, None)
    }

    /// [`Store::open_target`], every commit conditional on `fence` when given (a node
    /// of several on PostgreSQL; SQLite has one node and no fence).
    ///
    /// # Errors
    /// As [`Store::open_target`].
    pub fn open_fenced(
        db: &DbTarget,
        sync: crate::config::Synchronous,
        clock: Arc<dyn crate::clock::Clock>,
        hook: Arc<dyn CommitHook>,
        fence: Option<Fence>,
    ) -> Result<Store, StoreError> {
        Self::open_node(db, sync, clock, hook, fence, None)
    }

    /// [`Store::open_fenced`], counting into `metrics` when given: a node's registry,
    /// carried over from one of its servers to the next (its counters do not restart
    /// when its partitions change). SQLite keeps its own.
    ///
    /// # Errors
    /// As [`Store::open_target`].
    pub fn open_node(
        db: &DbTarget,
        sync: crate::config::Synchronous,
        clock: Arc<dyn crate::clock::Clock>,
        hook: Arc<dyn CommitHook>,
        fence: Option<Fence>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Result<Store, StoreError> {
        let backend: Arc<dyn Backend> = match db {
            DbTarget::Sqlite(path) => Arc::new(sqlite::Store::open(path, sync, clock, hook)?),
            DbTarget::Postgres(url) => {
                postgres::PgStore::open_with(url, sync, clock, hook, fence, metrics)?
            }
        };
        Ok(Store { backend })
    }

    /// Opens the SQLite store at `path` (see [`Store::open_target`]).
    ///
    /// # Errors
    /// As [`Store::open_target`].
    pub fn open(
        path: &std::path::Path,
        sync: crate::config::Synchronous,
        clock: Arc<dyn crate::clock::Clock>,
        hook: Arc<dyn CommitHook>,
    ) -> Result<Store, StoreError> {
        Self::open_target(&DbTarget::Sqlite(path.to_path_buf()), sync, clock, hook)
    }

    /// A store over `backend`.
    pub fn from_backend(backend: Arc<dyn Backend>) -> Store {
        Store { backend }
    }

    /// For tests: until the returned guard is dropped, committed groups are not made
    /// durable. Panics on a backend that cannot (only SQLite can).
    #[doc(hidden)]
    pub fn hold_durability(&self) -> DurabilityHold {
        self.backend
            .hold_durability()
            .expect("hold_durability is for tests on the SQLite store")
    }

    /// The server's counters and histograms (each store has its own).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        self.backend.metrics()
    }

    /// Which tickets may have live items.
    pub fn live_tickets(&self) -> Arc<tickets::LiveTickets> {
        self.backend.live_tickets()
    }

    /// How many write-backs of rows failed so far (for tests and diagnostics).
    #[doc(hidden)]
    pub fn sweep_failures(&self) -> u64 {
        self.backend.sweep_failures()
    }

    /// Why the store cannot do all its work now, `None` while it can: the service is
    /// out of rotation (health NOT_SERVING) meanwhile.
    pub fn degraded(&self) -> watch::Receiver<Option<String>> {
        self.backend.degraded()
    }

    /// The reason the writer died, once it has; the process should stop.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.backend.fatal()
    }

    /// Runs `f` in the writer's next group transaction and waits for the commit. `f`
    /// runs inside its own savepoint: an `Err` rolls back its writes alone.
    ///
    /// # Errors
    /// `f`'s error, or `Unavailable`/`Internal` when the commit failed or the store
    /// is closed.
    pub async fn write<T, F>(&self, f: F) -> domain::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> domain::Result<T> + Send + 'static,
    {
        self.enqueue(f).await?.await
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
        let (job, outcome) = job(f);
        self.backend.submit(job).await?;
        Ok(outcome)
    }

    /// See [`Backend::get_item`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn get_item(&self, account: String, id: ItemId) -> domain::Result<Option<Item>> {
        self.backend.get_item(account, id).await
    }

    /// See [`Backend::ticket_items`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn ticket_items(&self, account: String, ticket: String) -> domain::Result<Vec<Item>> {
        self.backend.ticket_items(account, ticket).await
    }

    /// See [`Backend::list_items`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn list_items(
        &self,
        q: ListQuery,
        after: Option<(Millis, ItemId)>,
        limit: usize,
    ) -> domain::Result<Rows<Item>> {
        self.backend.list_items(q, after, limit).await
    }

    /// See [`Backend::deferred_tickets`].
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
        self.backend
            .deferred_tickets(account, order, after, limit)
            .await
    }

    /// See [`Backend::events_after`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn events_after(
        &self,
        account: Option<String>,
        after: u64,
        limit: usize,
    ) -> domain::Result<EventsAfter> {
        self.backend.events_after(account, after, limit).await
    }

    /// See [`Backend::recovery_scan`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn recovery_scan(&self) -> domain::Result<RecoveryScan> {
        self.backend.recovery_scan().await
    }

    /// See [`Backend::live_item_ids`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn live_item_ids(&self) -> domain::Result<Vec<ItemId>> {
        self.backend.live_item_ids().await
    }

    /// See [`Backend::event_heads`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn event_heads(
        &self,
        account: String,
        after: u64,
        limit: usize,
    ) -> domain::Result<Vec<(u64, EventType, ItemId, String)>> {
        self.backend.event_heads(account, after, limit).await
    }

    /// See [`Backend::business_hours`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn business_hours(&self, account: String) -> domain::Result<Option<BusinessHours>> {
        self.backend.business_hours(account).await
    }

    /// See [`Backend::every_account_controls`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn every_account_controls(&self) -> domain::Result<Vec<ControlRow>> {
        self.backend.every_account_controls().await
    }

    /// See [`Backend::rewindows_under_way`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn rewindows_under_way(&self) -> domain::Result<Vec<String>> {
        self.backend.rewindows_under_way().await
    }

    /// See [`Backend::due_items`].
    ///
    /// # Errors
    /// Storage errors.
    pub async fn due_items(&self, ids: Vec<ItemId>) -> domain::Result<DueRead> {
        self.backend.due_items(ids).await
    }

    /// See [`Backend::claim`].
    pub fn claim(&self, read_at: u64, claims: Vec<Claim>) -> (Vec<Claim>, Vec<Claim>) {
        self.backend.claim(read_at, claims)
    }

    /// The sequence number of the last committed event.
    pub fn event_sequence(&self) -> watch::Receiver<u64> {
        self.backend.event_sequence()
    }

    /// See [`Backend::newest_event`]: what a cursor of `account`'s events is clamped to.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn newest_event(&self, account: String) -> domain::Result<u64> {
        self.backend.newest_event(account).await
    }

    /// Stops the writer after the writes already queued; waits for its thread.
    pub async fn close(&self) {
        self.backend.close().await;
    }
}
