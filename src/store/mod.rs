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
//! # Contract
//! - A write's future resolves `Ok` only after its group committed and the fsync that
//!   covers it returned (under `synchronous=FULL`).
//! - Its [`Effects`] (timer changes, quota releases, the event sequence) reach the
//!   [`CommitHook`] after that fsync, in commit order, before the caller is answered;
//!   the effects of a write that does not commit are handed back as abandoned.
//! - A group is all or nothing: if SQLite rolls the transaction back by itself
//!   (disk full, I/O error) every write of the group fails; none commits on its own.
//! - [`Store::read`] returns only data that is durable; [`Store::read_hint`] may see a
//!   commit whose fsync is still running (for the engine's own hints only).
//! - Events become visible to [`Store::event_sequence`] watchers only once durable.
//! - If the writer or the sync thread dies, [`Store::fatal`] says why and every later
//!   write fails: the process should stop and be restarted.

pub mod backup;
mod checkpoint;
pub mod meta;
pub mod queries;
mod reader;
pub mod recovery;
pub mod rows;
pub mod schema;
pub mod trace;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Synchronous;
use crate::domain::{self, EventType, Item, ItemId, Millis};

pub use writer::MAX_GROUP;

/// Storage failures; everything else the store reports is a `domain::Error`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the database was written by a newer sendlater (schema version {found}, this build \
         supports up to {supported}); upgrade sendlater or use another --db file"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("{path}: not a usable sendlater database: {reason}")]
    Unusable { path: PathBuf, reason: String },
    #[error("the store is shut down")]
    Closed,
}

impl From<StoreError> for domain::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => domain::Error::Unavailable("the service is shutting down".into()),
            other => {
                tracing::error!(error = %other, "storage error");
                domain::Error::Internal("internal storage error".into())
            }
        }
    }
}

impl From<rusqlite::Error> for domain::Error {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::from(e).into()
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

/// What a write changes outside SQLite: timers and the pending-quota counts. They
/// follow from the write only once it is durable, in commit order (or are undone when
/// it does not commit): nothing in memory may run ahead of the file.
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
}

impl Effects {
    fn append(&mut self, other: Effects) {
        self.timers.extend(other.timers);
        self.reserved.extend(other.reserved);
        self.released.extend(other.released);
        self.max_seq = self.max_seq.max(other.max_seq);
    }

    fn is_empty(&self) -> bool {
        self.timers.is_empty() && self.reserved.is_empty() && self.released.is_empty()
    }
}

/// Receives the effects of writes. Contract: `durable` is called on the sync thread,
/// in commit order, after the fsync that covers the write and before its caller is
/// answered; `abandoned` is called for writes that will never commit (rolled back
/// alone, or with their whole group), before their callers see the error.
pub trait CommitHook: Send + Sync + 'static {
    /// The writes are durable.
    fn durable(&self, fx: &Effects);
    /// The writes did not commit.
    fn abandoned(&self, fx: &Effects);
}

/// What a write closure gets: the open transaction, the write's `now`, and ways to
/// record timer changes, quota changes and events that take effect only if the write
/// commits.
pub struct Tx<'a> {
    /// The connection, inside the group's transaction and this write's savepoint.
    pub conn: &'a Connection,
    /// The time of this write (one clock read per write).
    pub now: Millis,
    fx: &'a mut Effects,
}

impl Tx<'_> {
    /// After commit, the item's timer fires at `at`.
    pub fn set_timer(&mut self, id: ItemId, at: Millis) {
        self.fx.timers.push(WheelOp::Set(id, at));
    }

    /// After commit, the item has no timer.
    pub fn remove_timer(&mut self, id: ItemId) {
        self.fx.timers.push(WheelOp::Remove(id));
    }

    /// Records a quota slot the caller already counted for `account`; it is given back
    /// if this write does not commit.
    pub fn reserved(&mut self, account: &str) {
        self.fx.reserved.push(account.to_owned());
    }

    /// Frees a quota slot of `account` once this write is durable.
    pub fn release(&mut self, account: &str) {
        self.fx.released.push(account.to_owned());
    }

    /// Records an event for `item` in the same transaction.
    ///
    /// # Errors
    /// A SQLite error.
    pub fn event(&mut self, kind: EventType, item: &Item) -> domain::Result<u64> {
        let seq = rows::insert_event(self.conn, kind, item, self.now)?;
        self.fx.max_seq = self.fx.max_seq.max(seq);
        Ok(seq)
    }
}

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
pub struct DurabilityHold(Arc<writer::Progress>);

impl Drop for DurabilityHold {
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
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // 64 MiB: RSS after loading 1M items over gRPC was 355 B/item with 256 MiB (the
    // cache fills up), over the 150 B budget; with schema v4's smaller index set the
    // larger cache no longer measured faster (BENCHMARKS.md, second round).
    conn.pragma_update(None, "cache_size", -65_536)?;
    // Savepoint sub-journals (one per write in a group) in memory, not in a temp file:
    // they were ~27% of the writer's CPU in a dispatch profile.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
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
        let last_seq: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        let (events_tx, events) = watch::channel(last_seq as u64);
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = checkpoint::Checkpointer::start(path, sync)?;
        // FULL: the writer's COMMIT only writes the WAL; the sync stage fsyncs it before
        // anyone is answered (see writer.rs), so the next group runs during the flush.
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
        DurabilityHold(self.progress.clone())
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
