//! `sendlater migrate`: copies a whole store into an empty one, SQLite to PostgreSQL and
//! back (SQLite to SQLite and PostgreSQL to PostgreSQL work too).
//!
//! The copy moves the stored bytes as they are: both engines hold the same encodings
//! (`store::codec`), so content, timing and event snapshots are copied, never decoded
//! and encoded again, and enums keep their integers. What is copied:
//! - every item, with its state, content, timing and delivery fields, and its lease if
//!   it is out at a connector (SQLite keeps it in `leases`, PostgreSQL beside the row);
//! - the events still retained, with their sequence numbers;
//! - the accounts' business hours, with a re-resolution's cursor when one is under way;
//! - the dispatch controls (pauses, rate limits);
//! - the last event sequence ever written, so a resumed WatchEvents never sees a
//!   sequence used twice even when the oldest (or every) event was pruned; item ids
//!   go on from the largest copied.
//!
//! # Contract
//! - The source is read in one snapshot (one transaction) and is not changed. An
//!   SQLite source's journal (events not yet written back to its rows) is replayed
//!   inside that transaction, which is then rolled back; a file written by an older
//!   sendlater is first brought to this build's schema, as `serve` would.
//! - The target must be empty (no item, event, business hours, control, lease, nor a
//!   past event sequence): a non-empty one is refused before anything is written to
//!   it ([`MigrateError::NotEmpty`]). Its schema is created with its engine's
//!   migrations; then everything is written in one transaction (PostgreSQL: binary
//!   `COPY`; SQLite: prepared inserts), which commits only after the counts read
//!   back inside it equal the source's ([`Counts`]): a copy that fails, or whose
//!   counts differ, leaves the target empty.
//! - Progress goes to the caller every `progress_every` rows and at least every
//!   second, and once at the end ([`Progress`]).
//!
//! The engines' readers and writers live in `sqlite::dump` and `postgres::dump`;
//! this module drives them and holds no SQL.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::codec::StoredItem;
use super::{postgres, sqlite, DbTarget, StoreError};
use crate::domain::{ItemId, Millis, State};

/// Rows read from the source per page (at most).
pub const PAGE: usize = 2_000;

/// An item's row as stored: every column, the lease beside the at-rest state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord {
    /// The columns the engines share with [`StoredItem`].
    pub stored: StoredItem,
    /// `next_attempt_at` between attempts, else `send_at` (listings sort on it).
    pub next_send_at: Millis,
    /// The fingerprint of the request that holds the idempotency key, if any.
    pub request_fp: Option<i64>,
}

/// An outbox event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub seq: i64,
    pub account_id: String,
    pub item_id: ItemId,
    /// The event type's integer.
    pub kind: i64,
    pub at: Millis,
    /// The encoded snapshot (`codec::ItemSnapshot`).
    pub snapshot: Vec<u8>,
}

/// An account's business hours as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoursRecord {
    pub account_id: String,
    /// The encoded hours (`BusinessHours::encode`).
    pub spec: String,
    pub updated_at: Millis,
    /// Where a re-resolution of the account's items stands, if one is under way.
    pub rewindow: Option<(Millis, ItemId)>,
}

/// A dispatch control as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRecord {
    pub account_id: String,
    /// The channel's integer.
    pub channel: i64,
    pub paused: bool,
    /// 0: no limit.
    pub per_minute: i64,
}

/// What the end of a copy compares: equal on both sides, or the copy is rolled back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Items by state name (DISPATCHING: out at a connector); an integer no state
    /// has is counted as `state N`.
    pub items: BTreeMap<String, u64>,
    /// Events retained.
    pub events: u64,
    /// Accounts with business hours (and, of those, with a re-resolution under way).
    pub business_hours: u64,
    pub rewindows: u64,
    /// Stored dispatch controls.
    pub controls: u64,
    /// The last event sequence ever written (0: none), pruned or not.
    pub last_seq: u64,
    /// The largest item id (0: none).
    pub max_item_id: ItemId,
}

impl Counts {
    /// Adds `n` items whose stored state is `state`, `leased` when they hold a lease.
    pub fn add_items(&mut self, state: i64, leased: bool, n: u64) {
        let name = match State::from_i64(state) {
            Some(State::Pending) if leased => State::Dispatching.name().to_owned(),
            Some(s) => s.name().to_owned(),
            None => format!("state {state}"),
        };
        *self.items.entry(name).or_default() += n;
    }

    /// Every item.
    pub fn item_total(&self) -> u64 {
        self.items.values().sum()
    }

    /// The rows a copy writes.
    pub fn rows(&self) -> u64 {
        self.item_total() + self.events + self.business_hours + self.controls
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let states: Vec<String> = self.items.iter().map(|(s, n)| format!("{s} {n}")).collect();
        write!(f, "items {}", self.item_total())?;
        if !states.is_empty() {
            write!(f, " ({})", states.join(", "))?;
        }
        write!(
            f,
            ", events {}, business hours {} ({} re-resolving), dispatch controls {}, \
             last event sequence {}, largest item id {}",
            self.events,
            self.business_hours,
            self.rewindows,
            self.controls,
            self.last_seq,
            self.max_item_id
        )
    }
}

/// Why a migration failed. Nothing was committed to the target (but see
/// [`MigrateError::Commit`]).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// `--from` cannot be opened or read as a sendlater store.
    #[error("--from {db}: {reason}")]
    Source { db: String, reason: String },
    /// `--to` cannot be opened or given the schema.
    #[error("--to {db}: {reason}")]
    Target { db: String, reason: String },
    /// The target holds data already: refused, nothing written.
    #[error(
        "--to {db}: the target is not empty ({what}); migrate copies into an empty store only \
         (nothing was written)"
    )]
    NotEmpty { db: String, what: String },
    /// `--from` and `--to` name the same store.
    #[error("--from and --to are the same store ({0})")]
    Same(String),
    /// A value the target cannot hold (out of its column's range): rolled back.
    #[error("{0}; the copy was rolled back (the target is left empty)")]
    Value(String),
    /// The copy failed: the target was left empty.
    #[error("the copy failed and was rolled back (the target is left empty): {0}")]
    Copy(#[from] StoreError),
    /// The commit failed: if the connection was lost during it, its outcome is
    /// unknown.
    #[error(
        "committing the copy failed ({0}); if the connection was lost meanwhile the copy may \
         have committed: look at the target before running migrate again"
    )]
    Commit(StoreError),
    /// The counts read back differ from the source's: rolled back.
    #[error(
        "the counts differ, the copy was rolled back (the target is left empty): source has \
         {ours}; the copy had {theirs}"
    )]
    Counts {
        ours: Box<Counts>,
        theirs: Box<Counts>,
    },
}

impl MigrateError {
    /// Whether the arguments are to blame (a store that cannot be used, a target
    /// that is not empty), rather than the copy.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            MigrateError::Source { .. }
                | MigrateError::Target { .. }
                | MigrateError::NotEmpty { .. }
                | MigrateError::Same(_)
        )
    }
}

/// Reads a store in one snapshot. Implemented by each engine (`*::dump`).
#[async_trait::async_trait]
pub trait Source: Send {
    /// What the snapshot holds.
    async fn counts(&mut self) -> Result<Counts, StoreError>;
    /// Up to `limit` items after id `after`, in id order.
    async fn items(&mut self, after: ItemId, limit: usize) -> Result<Vec<ItemRecord>, StoreError>;
    /// Up to `limit` events after sequence `after`, in sequence order.
    async fn events(&mut self, after: i64, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
    /// Every account's business hours.
    async fn business_hours(&mut self) -> Result<Vec<HoursRecord>, StoreError>;
    /// Every dispatch control.
    async fn controls(&mut self) -> Result<Vec<ControlRecord>, StoreError>;
    /// Ends the snapshot, leaving the store as it was.
    async fn close(self: Box<Self>) -> Result<(), StoreError>;
}

/// Writes into an empty store, in one open transaction. Implemented by each engine.
#[async_trait::async_trait]
pub trait Target: Send {
    /// Writes items (calls for one table follow each other: an engine may stream
    /// them into one `COPY`).
    async fn write_items(&mut self, rows: &[ItemRecord]) -> Result<(), MigrateError>;
    async fn write_events(&mut self, rows: &[EventRecord]) -> Result<(), MigrateError>;
    async fn write_business_hours(&mut self, rows: &[HoursRecord]) -> Result<(), MigrateError>;
    async fn write_controls(&mut self, rows: &[ControlRecord]) -> Result<(), MigrateError>;
    /// Records the last event sequence ever written (`last_seq`), given the oldest
    /// and newest events copied (`None`: none was); after the tables.
    async fn write_sequence(
        &mut self,
        last_seq: u64,
        copied: Option<(i64, i64)>,
    ) -> Result<(), MigrateError>;
    /// What the open transaction holds now.
    async fn counts(&mut self) -> Result<Counts, StoreError>;
    /// Commits the copy.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
    /// Rolls the copy back (the target is left with its empty schema).
    async fn rollback(self: Box<Self>);
}

/// Where a copy stands, for a progress line.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The table being copied.
    pub table: &'static str,
    /// Rows copied so far, of `total`.
    pub copied: u64,
    pub total: u64,
    /// Since the copy started.
    pub elapsed: Duration,
}

impl Progress {
    /// Rows per second so far (0 before any time has passed).
    pub fn rate(&self) -> u64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.copied as f64 / secs) as u64
        } else {
            0
        }
    }

    /// `copied 1200/5000 rows (24%), 3400 rows/s, items`
    pub fn line(&self) -> String {
        let pct = (self.copied * 100).checked_div(self.total).unwrap_or(100);
        format!(
            "copied {}/{} rows ({pct}%), {} rows/s, {}",
            self.copied,
            self.total,
            self.rate(),
            self.table
        )
    }
}

/// Decides when a progress line is due: every `every_rows` rows, or when `every`
/// has passed since the last one.
#[derive(Debug)]
pub struct Throttle {
    every_rows: u64,
    every: Duration,
    last_rows: u64,
    last_at: Duration,
}

impl Throttle {
    pub fn new(every_rows: u64, every: Duration) -> Self {
        Throttle {
            every_rows: every_rows.max(1),
            every,
            last_rows: 0,
            last_at: Duration::ZERO,
        }
    }

    /// Whether a line is due with `rows` copied at `elapsed`; if so, counts from here.
    pub fn due(&mut self, rows: u64, elapsed: Duration) -> bool {
        let due = rows / self.every_rows > self.last_rows / self.every_rows
            || elapsed.saturating_sub(self.last_at) >= self.every;
        if due {
            self.last_rows = rows;
            self.last_at = elapsed;
        }
        due
    }
}

/// How to copy.
#[derive(Debug, Clone)]
pub struct Options {
    /// A progress line every this many rows (and at least every second).
    pub progress_every: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            progress_every: 100_000,
        }
    }
}

/// What a finished copy reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The counts, equal on both sides.
    pub counts: Counts,
    pub elapsed: Duration,
}

/// Copies the store at `from` into the empty store at `to` (see the module's
/// Contract), reporting progress to `progress`.
///
/// # Errors
/// See [`MigrateError`]; on every error the target holds no copied row.
pub async fn migrate(
    from: &DbTarget,
    to: &DbTarget,
    options: &Options,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Summary, MigrateError> {
    if same_store(from, to) {
        return Err(MigrateError::Same(to.display()));
    }
    let mut source = open_source(from).await?;
    let source_counts = match source.counts().await {
        Ok(c) => c,
        Err(e) => {
            let _ = source.close().await;
            return Err(MigrateError::Source {
                db: from.display(),
                reason: e.to_string(),
            });
        }
    };
    let mut target = match open_target(to).await {
        Ok(t) => t,
        Err(e) => {
            let _ = source.close().await;
            return Err(e);
        }
    };
    tracing::info!(from = %from.display(), to = %to.display(), counts = %source_counts, "migrating");
    let started = Instant::now();
    let copied = copy(
        &mut *source,
        &mut *target,
        &source_counts,
        options,
        started,
        progress,
    )
    .await;
    let checked = match copied {
        Ok(()) => match target.counts().await {
            Ok(c) if c == source_counts => Ok(()),
            Ok(c) => Err(MigrateError::Counts {
                ours: Box::new(source_counts.clone()),
                theirs: Box::new(c),
            }),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
    };
    let _ = source.close().await;
    if let Err(e) = checked {
        target.rollback().await;
        return Err(e);
    }
    target.commit().await.map_err(MigrateError::Commit)?;
    Ok(Summary {
        counts: source_counts,
        elapsed: started.elapsed(),
    })
}

/// Whether the two name one store (the same file or the same URL).
fn same_store(a: &DbTarget, b: &DbTarget) -> bool {
    match (a, b) {
        (DbTarget::Sqlite(a), DbTarget::Sqlite(b)) => {
            a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
        }
        (DbTarget::Postgres(a), DbTarget::Postgres(b)) => a == b,
        _ => false,
    }
}

async fn open_source(db: &DbTarget) -> Result<Box<dyn Source>, MigrateError> {
    let opened: Result<Box<dyn Source>, StoreError> = match db {
        DbTarget::Sqlite(path) => {
            sqlite::dump::SqliteSource::open(path).map(|s| Box::new(s) as Box<dyn Source>)
        }
        DbTarget::Postgres(url) => postgres::dump::PgSource::open(url)
            .await
            .map(|s| Box::new(s) as Box<dyn Source>),
    };
    opened.map_err(|e| MigrateError::Source {
        db: db.display(),
        reason: reason(e),
    })
}

async fn open_target(db: &DbTarget) -> Result<Box<dyn Target>, MigrateError> {
    let opened: Result<Box<dyn Target>, MigrateError> = match db {
        DbTarget::Sqlite(path) => sqlite::dump::SqliteTarget::open(path, &db.display())
            .map(|t| Box::new(t) as Box<dyn Target>),
        DbTarget::Postgres(url) => postgres::dump::PgTarget::open(url, &db.display())
            .await
            .map(|t| Box::new(t) as Box<dyn Target>),
    };
    opened
}

/// A storage error as the reason a store cannot be used (a connection error names
/// the URL already; the caller names the store).
pub(crate) fn reason(e: StoreError) -> String {
    match e {
        StoreError::Connect { reason, .. } => format!("cannot connect: {reason}"),
        StoreError::Unusable { reason, .. } => format!("not a usable sendlater database: {reason}"),
        other => other.to_string(),
    }
}

/// Copies every table, reporting progress.
async fn copy(
    source: &mut dyn Source,
    target: &mut dyn Target,
    counts: &Counts,
    options: &Options,
    started: Instant,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<(), MigrateError> {
    let total = counts.rows();
    // Pages no larger than the progress step, so a line comes every `progress_every`
    // rows when that is small.
    let page_size = usize::try_from(options.progress_every)
        .unwrap_or(PAGE)
        .clamp(1, PAGE);
    let mut throttle = Throttle::new(options.progress_every, Duration::from_secs(1));
    let mut copied = 0u64;
    let mut report = |table: &'static str, copied: u64, last: bool| {
        let elapsed = started.elapsed();
        if throttle.due(copied, elapsed) || last {
            progress(&Progress {
                table,
                copied,
                total,
                elapsed,
            });
        }
    };

    let mut after: ItemId = 0;
    loop {
        let page = source.items(after, page_size).await?;
        let Some(last) = page.last() else { break };
        after = last.stored.id;
        target.write_items(&page).await?;
        copied += page.len() as u64;
        report("items", copied, false);
    }

    let mut after: i64 = 0;
    let mut oldest = None;
    let mut newest = None;
    loop {
        let page = source.events(after, page_size).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        oldest = oldest.or(page.first().map(|e| e.seq));
        newest = Some(last.seq);
        target.write_events(&page).await?;
        copied += page.len() as u64;
        report("events", copied, false);
    }

    let hours = source.business_hours().await?;
    target.write_business_hours(&hours).await?;
    copied += hours.len() as u64;
    report("business hours", copied, false);

    let controls = source.controls().await?;
    target.write_controls(&controls).await?;
    copied += controls.len() as u64;

    target
        .write_sequence(counts.last_seq, oldest.zip(newest))
        .await?;
    report("dispatch controls", copied, true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_is_due_every_n_rows_or_after_the_interval() {
        let mut t = Throttle::new(1000, Duration::from_secs(1));
        let ms = Duration::from_millis;
        assert!(!t.due(400, ms(10)));
        assert!(!t.due(999, ms(20)));
        assert!(t.due(1000, ms(30)), "a thousand rows");
        assert!(!t.due(1500, ms(40)));
        assert!(t.due(1600, ms(1030)), "a second since the last line");
        assert!(!t.due(1900, ms(1100)));
        assert!(
            t.due(3100, ms(1200)),
            "past the next thousand (two at once: one line)"
        );
        assert!(!t.due(3200, ms(1300)));
    }

    #[test]
    fn a_progress_line_shows_rows_total_share_rate_and_table() {
        let p = Progress {
            table: "events",
            copied: 1200,
            total: 4800,
            elapsed: Duration::from_millis(500),
        };
        assert_eq!(p.line(), "copied 1200/4800 rows (25%), 2400 rows/s, events");
        let empty = Progress {
            table: "dispatch controls",
            copied: 0,
            total: 0,
            elapsed: Duration::ZERO,
        };
        assert_eq!(
            empty.line(),
            "copied 0/0 rows (100%), 0 rows/s, dispatch controls"
        );
    }

    #[test]
    fn items_count_by_state_with_a_leased_pending_row_as_dispatching() {
        let mut c = Counts::default();
        c.add_items(State::Pending.as_i64(), false, 3);
        c.add_items(State::Pending.as_i64(), true, 1);
        c.add_items(State::Sent.as_i64(), false, 2);
        c.add_items(42, false, 1);
        assert_eq!(c.item_total(), 7);
        assert_eq!(c.items["PENDING"], 3);
        assert_eq!(c.items["DISPATCHING"], 1);
        assert_eq!(c.items["SENT"], 2);
        assert_eq!(c.items["state 42"], 1);
        c.events = 9;
        assert_eq!(c.rows(), 16);
        assert!(c
            .to_string()
            .starts_with("items 7 (DISPATCHING 1, PENDING 3, SENT 2, state 42 1), events 9"));
    }

    #[test]
    fn the_same_file_or_url_is_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.db");
        std::fs::write(&f, b"").unwrap();
        let via_dot = dir.path().join(".").join("a.db");
        assert!(same_store(
            &DbTarget::Sqlite(f.clone()),
            &DbTarget::Sqlite(via_dot)
        ));
        assert!(!same_store(
            &DbTarget::Sqlite(f),
            &DbTarget::Sqlite(dir.path().join("b.db"))
        ));
        let u = "postgres://u@h:5432/db";
        assert!(same_store(&DbTarget::parse(u), &DbTarget::parse(u)));
        assert!(!same_store(
            &DbTarget::parse(u),
            &DbTarget::parse("postgres://u@h:5432/other")
        ));
    }
}
