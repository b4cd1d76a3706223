//! SQLite's side of `store::migrate`: reading a whole file in one snapshot
//! ([`SqliteSource`]) and writing a copy into an empty file in one transaction
//! ([`SqliteTarget`]). Rows move with their stored bytes (`store::codec`).
//!
//! # Contract
//! - [`SqliteSource`] holds one transaction from open to close, and every read sees
//!   the rows current: a read snapshot when the rows reflect every event (as a clean
//!   stop leaves them), which writers do not wait for; else a write transaction in
//!   which the journal (events past the sweep watermark) is replayed into the rows.
//!   Either is rolled back at the end, so the file is left as it was (but for bringing
//!   an older schema to this build's, as `serve` does). A server writing the file
//!   meanwhile waits for a replaying copy (or is refused after its busy timeout):
//!   stop it before migrating.
//! - [`SqliteTarget::open`] refuses a file holding anything before it writes to it;
//!   then creates the schema, and writes everything in one transaction that commits
//!   (durably: `synchronous=FULL`) or rolls back whole. A lease goes to `leases`; the
//!   last event sequence to `sqlite_sequence` (so ids and sequences go on from the
//!   source's), and the sweep watermark to it (the rows reflect every event).

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::rows::{event_bounds, ITEM_COLUMNS};
use super::{schema, StoreError};
use crate::config::Synchronous;
use crate::store::codec::StoredItem;
use crate::store::migrate::{
    ControlRecord, Counts, EventRecord, HoursRecord, ItemRecord, MigrateError, Source, Target,
};

/// The tables a sendlater file keeps its data in: one row in any makes it non-empty.
const DATA_TABLES: &[(&str, &str)] = &[
    ("items", "items"),
    ("events", "events"),
    ("business_hours", "accounts with business hours"),
    ("dispatch_controls", "dispatch controls"),
    ("leases", "leases"),
];

/// What the file at `conn` holds, `None` when nothing: "3 items, 12 events".
fn holdings(conn: &Connection) -> Result<Option<String>, StoreError> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut held = Vec::new();
    for (table, what) in DATA_TABLES {
        if tables.iter().any(|t| t == table) {
            let n: i64 =
                conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
            if n > 0 {
                held.push(format!("{n} {what}"));
            }
        }
    }
    if tables.iter().any(|t| t == "sqlite_sequence") {
        let seq: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        // Events pruned, every one: the sequence says something was written.
        if let Some(seq) = seq.filter(|&s| s > 0 && held.is_empty()) {
            held.push(format!("events were written up to sequence {seq}"));
        }
    }
    Ok((!held.is_empty()).then(|| held.join(", ")))
}

/// The counts `store::migrate` compares, read on `conn`.
fn counts(conn: &Connection) -> Result<Counts, StoreError> {
    let mut c = Counts::default();
    let mut st = conn.prepare(
        "SELECT state, EXISTS (SELECT 1 FROM leases WHERE item = items.id), COUNT(*) \
         FROM items GROUP BY 1, 2",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, bool>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for r in rows {
        let (state, leased, n) = r?;
        c.add_items(state, leased, n as u64);
    }
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    c.events = count("SELECT COUNT(*) FROM events")? as u64;
    c.business_hours = count("SELECT COUNT(*) FROM business_hours")? as u64;
    c.rewindows =
        count("SELECT COUNT(*) FROM business_hours WHERE rewindow_at IS NOT NULL")? as u64;
    c.controls = count("SELECT COUNT(*) FROM dispatch_controls")? as u64;
    c.max_item_id = count("SELECT COALESCE(MAX(id), 0) FROM items")?;
    c.last_seq = event_bounds(conn)?.1;
    Ok(c)
}

/// Whether events past the sweep watermark wait to be replayed into the rows.
fn lags(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM events WHERE seq > (SELECT swept_seq FROM sweep_mark))",
        [],
        |r| r.get(0),
    )?)
}

/// A file read in one snapshot, with its journal replayed (and rolled back at close).
pub struct SqliteSource {
    conn: Connection,
}

impl SqliteSource {
    /// Opens the sendlater file at `path` (which must exist), brings its schema to
    /// this build's, and starts the snapshot.
    ///
    /// # Errors
    /// The file is missing, not a sendlater database, newer than this build, or
    /// locked by a writer past the busy timeout.
    pub fn open(path: &Path) -> Result<SqliteSource, StoreError> {
        let unusable = |reason: String| StoreError::Unusable {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(unusable("no such file".into()));
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| unusable(e.to_string()))?;
        conn.busy_handler(Some(super::wait_briefly))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| unusable(e.to_string()))?;
        if version == 0 {
            return Err(unusable(
                "it holds no sendlater schema (an empty or foreign file)".into(),
            ));
        }
        schema::migrate(&mut conn)?;
        // Rows that reflect every event (a clean stop leaves them so): a read
        // snapshot, which no writer waits for.
        conn.execute_batch("BEGIN DEFERRED")?;
        if !lags(&conn)? {
            return Ok(SqliteSource { conn });
        }
        // The journal must be replayed: a write transaction, rolled back at close
        // (IMMEDIATE: a deferred one could fail to upgrade).
        conn.execute_batch("ROLLBACK; BEGIN IMMEDIATE")?;
        let replayed = super::rows::replay(&conn)?;
        tracing::info!(
            events = replayed,
            "replayed the journal for the copy (rolled back afterwards)"
        );
        Ok(SqliteSource { conn })
    }
}

#[async_trait::async_trait]
impl Source for SqliteSource {
    async fn counts(&mut self) -> Result<Counts, StoreError> {
        counts(&self.conn)
    }

    async fn items(&mut self, after: i64, limit: usize) -> Result<Vec<ItemRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS}, next_send_at, request_fp FROM items \
             WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = st.query_map(params![after, limit as i64], |r| {
            Ok(ItemRecord {
                stored: StoredItem {
                    id: r.get(0)?,
                    account_id: r.get(1)?,
                    ticket_id: r.get(2)?,
                    kind: r.get(3)?,
                    channel: r.get(4)?,
                    author_id: r.get(5)?,
                    content: r.get(6)?,
                    send_at: r.get(7)?,
                    created_at: r.get(8)?,
                    updated_at: r.get(9)?,
                    state: r.get(10)?,
                    on_activity: r.get(11)?,
                    note_at: r.get(12)?,
                    conv_author_kind: r.get(13)?,
                    conv_message_id: r.get(14)?,
                    conv_occurred_at: r.get(15)?,
                    attempts: r.get(16)?,
                    last_error: r.get(17)?,
                    next_attempt_at: r.get(18)?,
                    lease_expires_at: r.get(19)?,
                    sent_at: r.get(20)?,
                    provider_message_id: r.get(21)?,
                    request_id: r.get(22)?,
                    timing: r.get(23)?,
                },
                next_send_at: r.get(24)?,
                request_fp: r.get(25)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    async fn events(&mut self, after: i64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, account_id, item_id, type, at, snapshot FROM events \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = st.query_map(params![after, limit as i64], |r| {
            Ok(EventRecord {
                seq: r.get(0)?,
                account_id: r.get(1)?,
                item_id: r.get(2)?,
                kind: r.get(3)?,
                at: r.get(4)?,
                snapshot: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    async fn business_hours(&mut self) -> Result<Vec<HoursRecord>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT account_id, spec, updated_at, rewindow_at, rewindow_id FROM business_hours \
             ORDER BY account_id",
        )?;
        let rows = st.query_map([], |r| {
            let at: Option<i64> = r.get(3)?;
            let id: Option<i64> = r.get(4)?;
            Ok(HoursRecord {
                account_id: r.get(0)?,
                spec: r.get(1)?,
                updated_at: r.get(2)?,
                rewindow: at.map(|at| (at, id.unwrap_or(0))),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    async fn controls(&mut self) -> Result<Vec<ControlRecord>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT account_id, channel, paused, per_minute FROM dispatch_controls \
             ORDER BY account_id, channel",
        )?;
        let rows = st.query_map([], |r| {
            Ok(ControlRecord {
                account_id: r.get(0)?,
                channel: r.get(1)?,
                paused: r.get::<_, i64>(2)? != 0,
                per_minute: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    async fn close(self: Box<Self>) -> Result<(), StoreError> {
        self.conn.execute_batch("ROLLBACK")?;
        Ok(())
    }
}

/// An empty file being filled in one transaction.
pub struct SqliteTarget {
    conn: Connection,
}

impl SqliteTarget {
    /// Checks that the file at `path` is empty or missing (before writing anything
    /// to it), creates the schema and opens the copy's transaction. `shown` names
    /// the target in errors.
    ///
    /// # Errors
    /// [`MigrateError::NotEmpty`] for a file holding data; [`MigrateError::Target`]
    /// when it cannot be opened or given the schema.
    pub fn open(path: &Path, shown: &str) -> Result<SqliteTarget, MigrateError> {
        let unusable = |e: StoreError| MigrateError::Target {
            db: shown.to_owned(),
            reason: crate::store::migrate::reason(e),
        };
        let not_empty = |what: String| MigrateError::NotEmpty {
            db: shown.to_owned(),
            what,
        };
        if path.exists() {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| unusable(e.into()))?;
            if let Some(what) = holdings(&conn).map_err(unusable)? {
                return Err(not_empty(what));
            }
        }
        let mut conn = super::open_rw(path, Synchronous::Full).map_err(unusable)?;
        schema::migrate(&mut conn).map_err(unusable)?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| unusable(e.into()))?;
        // Another process may have written between the check and the lock.
        match holdings(&conn) {
            Ok(None) => Ok(SqliteTarget { conn }),
            Ok(Some(what)) => Err(not_empty(what)),
            Err(e) => Err(unusable(e)),
        }
    }
}

fn copy_err(e: rusqlite::Error) -> MigrateError {
    MigrateError::Copy(e.into())
}

#[async_trait::async_trait]
impl Target for SqliteTarget {
    async fn write_items(&mut self, rows: &[ItemRecord]) -> Result<(), MigrateError> {
        let mut item = self
            .conn
            .prepare_cached(
                "INSERT INTO items (id, account_id, ticket_id, kind, channel, author_id, \
                 content, send_at, created_at, updated_at, state, on_activity, note_at, \
                 conv_author_kind, conv_message_id, conv_occurred_at, attempts, last_error, \
                 next_attempt_at, sent_at, provider_message_id, request_id, timing, \
                 next_send_at, request_fp) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
                 ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
            )
            .map_err(copy_err)?;
        let mut lease = self
            .conn
            .prepare_cached("INSERT INTO leases (item, expires_at) VALUES (?1, ?2)")
            .map_err(copy_err)?;
        for r in rows {
            let s = &r.stored;
            item.execute(params![
                s.id,
                s.account_id,
                s.ticket_id,
                s.kind,
                s.channel,
                s.author_id,
                s.content,
                s.send_at,
                s.created_at,
                s.updated_at,
                s.state,
                s.on_activity,
                s.note_at,
                s.conv_author_kind,
                s.conv_message_id,
                s.conv_occurred_at,
                s.attempts,
                s.last_error,
                s.next_attempt_at,
                s.sent_at,
                s.provider_message_id,
                s.request_id,
                s.timing,
                r.next_send_at,
                r.request_fp,
            ])
            .map_err(copy_err)?;
            if let Some(at) = s.lease_expires_at {
                lease.execute(params![s.id, at]).map_err(copy_err)?;
            }
        }
        Ok(())
    }

    async fn write_events(&mut self, rows: &[EventRecord]) -> Result<(), MigrateError> {
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT INTO events (seq, account_id, item_id, type, at, snapshot) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(copy_err)?;
        for e in rows {
            st.execute(params![
                e.seq,
                e.account_id,
                e.item_id,
                e.kind,
                e.at,
                e.snapshot
            ])
            .map_err(copy_err)?;
        }
        Ok(())
    }

    async fn write_business_hours(&mut self, rows: &[HoursRecord]) -> Result<(), MigrateError> {
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT INTO business_hours (account_id, spec, updated_at, rewindow_at, \
                 rewindow_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(copy_err)?;
        for h in rows {
            st.execute(params![
                h.account_id,
                h.spec,
                h.updated_at,
                h.rewindow.map(|c| c.0),
                h.rewindow.map(|c| c.1)
            ])
            .map_err(copy_err)?;
        }
        Ok(())
    }

    async fn write_controls(&mut self, rows: &[ControlRecord]) -> Result<(), MigrateError> {
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT INTO dispatch_controls (account_id, channel, paused, per_minute) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(copy_err)?;
        for c in rows {
            st.execute(params![
                c.account_id,
                c.channel,
                i64::from(c.paused),
                c.per_minute
            ])
            .map_err(copy_err)?;
        }
        Ok(())
    }

    async fn write_sequence(
        &mut self,
        last_seq: u64,
        _copied: Option<(i64, i64)>,
    ) -> Result<(), MigrateError> {
        let last = i64::try_from(last_seq)
            .map_err(|_| MigrateError::Value(format!("event sequence {last_seq} is too large")))?;
        // AUTOINCREMENT keeps the largest sequence ever used here: the inserts above set
        // it to the largest copied; the source's may be larger (its last events pruned).
        let updated = self
            .conn
            .execute(
                "UPDATE sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = 'events'",
                params![last],
            )
            .map_err(copy_err)?;
        if updated == 0 && last > 0 {
            self.conn
                .execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?1)",
                    params![last],
                )
                .map_err(copy_err)?;
        }
        // The rows reflect every event: nothing to replay at start-up.
        self.conn
            .execute("UPDATE sweep_mark SET swept_seq = ?1", params![last])
            .map_err(copy_err)?;
        Ok(())
    }

    async fn counts(&mut self) -> Result<Counts, StoreError> {
        counts(&self.conn)
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        // Fold the copy into the main file (it sat in the WAL until the commit).
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    async fn rollback(self: Box<Self>) {
        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "rolling the copy back failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migrate::Source;

    /// A file with one item and its event, the rows current; `lagging`: the row
    /// still PENDING while its journalled CANCELLED event waits past the watermark.
    fn file(lagging: bool) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut c = Connection::open(&path).unwrap();
        c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        schema::migrate(&mut c).unwrap();
        let content = crate::domain::Content::Email(Default::default()).to_bytes();
        c.execute(
            "INSERT INTO items (id, account_id, ticket_id, kind, channel, author_id, content, \
             send_at, next_send_at, created_at, updated_at, state, on_activity, attempts) \
             VALUES (1, 'a', 't', 1, 1, 'u', ?1, 10, 10, 1, 1, 1, 1, 0)",
            params![content],
        )
        .unwrap();
        let mut item = super::super::rows::get_item_checked(&c, 1)
            .unwrap()
            .unwrap()
            .unwrap();
        item.state = crate::domain::State::Cancelled;
        super::super::rows::insert_event(&c, crate::domain::EventType::Cancelled, &item, 2)
            .unwrap();
        if !lagging {
            c.execute("UPDATE items SET state = 5", []).unwrap();
            c.execute("UPDATE sweep_mark SET swept_seq = 1", [])
                .unwrap();
        }
        drop(c);
        (dir, path)
    }

    /// Another process writing the file, without waiting for a lock.
    fn write_elsewhere(path: &Path) -> rusqlite::Result<usize> {
        let c = Connection::open(path)?;
        c.busy_timeout(std::time::Duration::ZERO)?;
        c.execute(
            "INSERT INTO dispatch_controls (account_id, channel, paused) VALUES ('b', 1, 1)",
            [],
        )
    }

    #[tokio::test]
    async fn a_clean_file_is_read_in_a_snapshot_that_writers_do_not_wait_for() {
        let (_dir, path) = file(false);
        let mut src = SqliteSource::open(&path).unwrap();
        assert_eq!(
            write_elsewhere(&path).unwrap(),
            1,
            "the writer went on at once"
        );
        assert_eq!(
            src.controls().await.unwrap(),
            vec![],
            "the snapshot predates it"
        );
        assert_eq!(src.items(0, 10).await.unwrap()[0].stored.state, 5);
        Box::new(src).close().await.unwrap();
    }

    #[tokio::test]
    async fn a_lagging_file_is_replayed_in_a_transaction_rolled_back_at_close() {
        let (_dir, path) = file(true);
        let mut src = SqliteSource::open(&path).unwrap();
        assert!(
            write_elsewhere(&path).is_err(),
            "the replay holds the write lock"
        );
        assert_eq!(
            src.items(0, 10).await.unwrap()[0].stored.state,
            5,
            "replayed"
        );
        Box::new(src).close().await.unwrap();
        let c = Connection::open(&path).unwrap();
        let (state, mark): (i64, i64) = c
            .query_row(
                "SELECT state, (SELECT swept_seq FROM sweep_mark) FROM items",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((state, mark), (1, 0), "the file is left as it was");
    }
}
