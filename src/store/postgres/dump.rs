//! PostgreSQL's side of `store::migrate`: reading a whole database in one snapshot
//! ([`PgSource`]) and writing a copy into an empty one with binary `COPY`, in one
//! transaction ([`PgTarget`]). Rows move with their stored bytes (`store::codec`).
//!
//! # Contract
//! - [`PgSource`] reads in one `REPEATABLE READ READ ONLY` transaction: every page
//!   sees the same snapshot, and nothing is written (but for creating the schema of
//!   a database written by an older build, as `serve` does).
//! - [`PgTarget::open`] refuses a database holding anything before it writes to it;
//!   then creates the schema ([`super::schema::migrate`]), and writes every table with
//!   one binary `COPY` each inside one transaction, committed with
//!   `synchronous_commit` on, or rolled back whole. A lease is the row's
//!   `lease_expires_at`; the last event sequence ever written, when no copied event
//!   carries it (the source's last events were pruned), goes to `store_meta`
//!   (`events_pruned_through`), as pruning leaves it.

use std::path::PathBuf;
use std::pin::Pin;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::rows::LAST_SEQ;
use super::schema::{self, SCHEMA_VERSION};
use crate::store::codec::StoredItem;
use crate::store::migrate::{
    ControlRecord, Counts, EventRecord, HoursRecord, ItemRecord, MigrateError, Source, Target,
};
use crate::store::{redact_url, StoreError};

/// The tables a sendlater database keeps its data in: one row in any makes it
/// non-empty.
const DATA_TABLES: &[(&str, &str)] = &[
    ("items", "items"),
    ("events", "events"),
    ("business_hours", "accounts with business hours"),
    ("dispatch_controls", "dispatch controls"),
];

/// Connects to `url` on the current runtime (its connection task is spawned there).
async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, conn) =
        tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| StoreError::Connect {
                url: redact_url(url),
                reason: e.to_string(),
            })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

/// The tables of the connection's schema.
async fn tables(client: &Client) -> Result<Vec<String>, StoreError> {
    Ok(client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// What the database holds, `None` when nothing: "3 items, 12 events".
async fn holdings(client: &Client) -> Result<Option<String>, StoreError> {
    let tables = tables(client).await?;
    let mut held = Vec::new();
    for (table, what) in DATA_TABLES {
        if tables.iter().any(|t| t == table) {
            let n: i64 = client
                .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
                .await?
                .get(0);
            if n > 0 {
                held.push(format!("{n} {what}"));
            }
        }
    }
    // Events pruned, every one: the sequence says something was written.
    if held.is_empty() && tables.iter().any(|t| t == "store_meta") {
        let pruned = client
            .query_opt(
                "SELECT value FROM store_meta WHERE key = 'events_pruned_through'",
                &[],
            )
            .await?;
        if let Some(row) = pruned {
            let v: String = row.get(0);
            held.push(format!("events were written up to sequence {v}"));
        }
    }
    Ok((!held.is_empty()).then(|| held.join(", ")))
}

/// The counts `store::migrate` compares.
async fn counts(client: &Client) -> Result<Counts, StoreError> {
    let mut c = Counts::default();
    for r in client
        .query(
            "SELECT state::int8, lease_expires_at IS NOT NULL, COUNT(*) FROM items GROUP BY 1, 2",
            &[],
        )
        .await?
    {
        c.add_items(r.get(0), r.get(1), r.get::<_, i64>(2) as u64);
    }
    let r = client
        .query_one(
            &format!(
                "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM business_hours), \
                 (SELECT COUNT(*) FROM business_hours WHERE rewindow_at IS NOT NULL), \
                 (SELECT COUNT(*) FROM dispatch_controls), \
                 COALESCE((SELECT MAX(id) FROM items), 0), {LAST_SEQ}"
            ),
            &[],
        )
        .await?;
    c.events = r.get::<_, i64>(0) as u64;
    c.business_hours = r.get::<_, i64>(1) as u64;
    c.rewindows = r.get::<_, i64>(2) as u64;
    c.controls = r.get::<_, i64>(3) as u64;
    c.max_item_id = r.get(4);
    c.last_seq = r.get::<_, i64>(5) as u64;
    Ok(c)
}

/// A database read in one snapshot.
pub struct PgSource {
    client: Client,
}

impl PgSource {
    /// Connects to the sendlater database at `url` and starts the snapshot.
    ///
    /// # Errors
    /// It cannot be reached, holds no sendlater schema, or a newer one.
    pub async fn open(url: &str) -> Result<PgSource, StoreError> {
        let mut client = connect(url).await?;
        if !tables(&client).await?.iter().any(|t| t == "schema_version") {
            return Err(StoreError::Unusable {
                path: PathBuf::from(redact_url(url)),
                reason: "it holds no sendlater schema (an empty or foreign database)".into(),
            });
        }
        let version: i64 = client
            .query_one("SELECT version FROM schema_version WHERE id = 1", &[])
            .await?
            .get(0);
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        schema::migrate(&mut client).await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        Ok(PgSource { client })
    }
}

/// The columns of `items` a copy moves, in the order both sides use.
const ITEM_COLUMNS: &str = "id, send_at, next_send_at, created_at, updated_at, attempts, state, \
    kind, channel, on_activity, lease_expires_at, next_attempt_at, sent_at, note_at, \
    conv_occurred_at, request_fp, conv_author_kind, account_id, ticket_id, author_id, content, \
    timing, request_id, provider_message_id, conv_message_id, last_error";

/// Their types, for `COPY`.
const ITEM_TYPES: &[Type] = &[
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT4,
    Type::INT2,
    Type::INT2,
    Type::INT2,
    Type::INT2,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT2,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
];

const EVENT_COLUMNS: &str = "seq, item_id, at, type, account_id, snapshot";
const EVENT_TYPES: &[Type] = &[
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT2,
    Type::TEXT,
    Type::BYTEA,
];

const HOURS_COLUMNS: &str = "account_id, spec, updated_at, rewindow_at, rewindow_id";
const HOURS_TYPES: &[Type] = &[Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::INT8];

const CONTROL_COLUMNS: &str = "account_id, channel, paused, per_minute";
const CONTROL_TYPES: &[Type] = &[Type::TEXT, Type::INT2, Type::BOOL, Type::INT8];

#[async_trait::async_trait]
impl Source for PgSource {
    async fn counts(&mut self) -> Result<Counts, StoreError> {
        counts(&self.client).await
    }

    async fn items(&mut self, after: i64, limit: usize) -> Result<Vec<ItemRecord>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT id, send_at, next_send_at, created_at, updated_at, attempts::int8, \
                 state::int8, kind::int8, channel::int8, on_activity::int8, lease_expires_at, \
                 next_attempt_at, sent_at, note_at, conv_occurred_at, request_fp, \
                 conv_author_kind::int8, account_id, ticket_id, author_id, content, timing, \
                 request_id, provider_message_id, conv_message_id, last_error \
                 FROM items WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ItemRecord {
                stored: StoredItem {
                    id: r.get(0),
                    send_at: r.get(1),
                    created_at: r.get(3),
                    updated_at: r.get(4),
                    attempts: r.get(5),
                    state: r.get(6),
                    kind: r.get(7),
                    channel: r.get(8),
                    on_activity: r.get(9),
                    lease_expires_at: r.get(10),
                    next_attempt_at: r.get(11),
                    sent_at: r.get(12),
                    note_at: r.get(13),
                    conv_occurred_at: r.get(14),
                    conv_author_kind: r.get(16),
                    account_id: r.get(17),
                    ticket_id: r.get(18),
                    author_id: r.get(19),
                    content: r.get(20),
                    timing: r.get(21),
                    request_id: r.get(22),
                    provider_message_id: r.get(23),
                    conv_message_id: r.get(24),
                    last_error: r.get(25),
                },
                next_send_at: r.get(2),
                request_fp: r.get(15),
            })
            .collect())
    }

    async fn events(&mut self, after: i64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT seq, item_id, at, type::int8, account_id, snapshot FROM events \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| EventRecord {
                seq: r.get(0),
                item_id: r.get(1),
                at: r.get(2),
                kind: r.get(3),
                account_id: r.get(4),
                snapshot: r.get(5),
            })
            .collect())
    }

    async fn business_hours(&mut self) -> Result<Vec<HoursRecord>, StoreError> {
        let rows = self
            .client
            .query(
                &format!("SELECT {HOURS_COLUMNS} FROM business_hours ORDER BY account_id"),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let at: Option<i64> = r.get(3);
                let id: Option<i64> = r.get(4);
                HoursRecord {
                    account_id: r.get(0),
                    spec: r.get(1),
                    updated_at: r.get(2),
                    rewindow: at.map(|at| (at, id.unwrap_or(0))),
                }
            })
            .collect())
    }

    async fn controls(&mut self) -> Result<Vec<ControlRecord>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT account_id, channel::int8, paused, per_minute FROM dispatch_controls \
                 ORDER BY account_id, channel",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ControlRecord {
                account_id: r.get(0),
                channel: r.get(1),
                paused: r.get(2),
                per_minute: r.get(3),
            })
            .collect())
    }

    async fn close(self: Box<Self>) -> Result<(), StoreError> {
        self.client.batch_execute("ROLLBACK").await?;
        Ok(())
    }
}

/// An empty database being filled in one transaction, a table at a time.
pub struct PgTarget {
    client: Client,
    /// The table whose `COPY` is open, and its writer.
    copy: Option<(&'static str, Pin<Box<BinaryCopyInWriter>>)>,
}

/// `v` as a `SMALLINT` column value of item (or event) `id`.
fn small(v: i64, what: &str, id: i64) -> Result<i16, MigrateError> {
    i16::try_from(v).map_err(|_| {
        MigrateError::Value(format!(
            "{what} {v} of row {id} does not fit PostgreSQL's smallint"
        ))
    })
}

fn copy_err(e: tokio_postgres::Error) -> MigrateError {
    MigrateError::Copy(e.into())
}

impl PgTarget {
    /// Checks that the database at `url` holds nothing (before writing anything to
    /// it), creates the schema and opens the copy's transaction. `shown` names the
    /// target in errors (without a password).
    ///
    /// # Errors
    /// [`MigrateError::NotEmpty`] for a database holding data;
    /// [`MigrateError::Target`] when it cannot be reached or given the schema.
    pub async fn open(url: &str, shown: &str) -> Result<PgTarget, MigrateError> {
        let unusable = |e: StoreError| MigrateError::Target {
            db: shown.to_owned(),
            reason: crate::store::migrate::reason(e),
        };
        let not_empty = |what: String| MigrateError::NotEmpty {
            db: shown.to_owned(),
            what,
        };
        let mut client = connect(url).await.map_err(unusable)?;
        if let Some(what) = holdings(&client).await.map_err(unusable)? {
            return Err(not_empty(what));
        }
        schema::migrate(&mut client).await.map_err(unusable)?;
        // The copy's commit is durable whatever the server's default.
        client
            .batch_execute("SET synchronous_commit = on; BEGIN")
            .await
            .map_err(|e| unusable(e.into()))?;
        // Another process may have written between the check and the transaction.
        match holdings(&client).await {
            Ok(None) => Ok(PgTarget { client, copy: None }),
            Ok(Some(what)) => Err(not_empty(what)),
            Err(e) => Err(unusable(e)),
        }
    }

    /// The writer of `table`'s `COPY`, opening it (and finishing another) when needed.
    async fn copy_into(
        &mut self,
        table: &'static str,
        columns: &str,
        types: &[Type],
    ) -> Result<Pin<&mut BinaryCopyInWriter>, MigrateError> {
        if self.copy.as_ref().is_some_and(|(t, _)| *t != table) {
            self.finish_copy().await?;
        }
        if self.copy.is_none() {
            let sink = self
                .client
                .copy_in(&format!(
                    "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
                ))
                .await
                .map_err(copy_err)?;
            self.copy = Some((table, Box::pin(BinaryCopyInWriter::new(sink, types))));
        }
        match self.copy.as_mut() {
            Some((_, w)) => Ok(w.as_mut()),
            None => Err(MigrateError::Value("no COPY is open".into())),
        }
    }

    /// Ends the open `COPY`, if any.
    async fn finish_copy(&mut self) -> Result<(), MigrateError> {
        if let Some((table, mut w)) = self.copy.take() {
            let n = w.as_mut().finish().await.map_err(copy_err)?;
            tracing::debug!(table, rows = n, "copied");
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Target for PgTarget {
    async fn write_items(&mut self, rows: &[ItemRecord]) -> Result<(), MigrateError> {
        let mut w = self.copy_into("items", ITEM_COLUMNS, ITEM_TYPES).await?;
        for r in rows {
            let s = &r.stored;
            let attempts = i32::try_from(s.attempts).map_err(|_| {
                MigrateError::Value(format!(
                    "attempts {} of item {} do not fit",
                    s.attempts, s.id
                ))
            })?;
            let state = small(s.state, "state", s.id)?;
            let kind = small(s.kind, "kind", s.id)?;
            let channel = small(s.channel, "channel", s.id)?;
            let on_activity = small(s.on_activity, "on_activity", s.id)?;
            let conv_author_kind = s
                .conv_author_kind
                .map(|k| small(k, "conv_author_kind", s.id))
                .transpose()?;
            let values: [&(dyn ToSql + Sync); 26] = [
                &s.id,
                &s.send_at,
                &r.next_send_at,
                &s.created_at,
                &s.updated_at,
                &attempts,
                &state,
                &kind,
                &channel,
                &on_activity,
                &s.lease_expires_at,
                &s.next_attempt_at,
                &s.sent_at,
                &s.note_at,
                &s.conv_occurred_at,
                &r.request_fp,
                &conv_author_kind,
                &s.account_id,
                &s.ticket_id,
                &s.author_id,
                &s.content,
                &s.timing,
                &s.request_id,
                &s.provider_message_id,
                &s.conv_message_id,
                &s.last_error,
            ];
            w.as_mut().write(&values).await.map_err(copy_err)?;
        }
        Ok(())
    }

    async fn write_events(&mut self, rows: &[EventRecord]) -> Result<(), MigrateError> {
        let mut w = self.copy_into("events", EVENT_COLUMNS, EVENT_TYPES).await?;
        for e in rows {
            let kind = small(e.kind, "event type", e.seq)?;
            w.as_mut()
                .write(&[&e.seq, &e.item_id, &e.at, &kind, &e.account_id, &e.snapshot])
                .await
                .map_err(copy_err)?;
        }
        Ok(())
    }

    async fn write_business_hours(&mut self, rows: &[HoursRecord]) -> Result<(), MigrateError> {
        let mut w = self
            .copy_into("business_hours", HOURS_COLUMNS, HOURS_TYPES)
            .await?;
        for h in rows {
            let (at, id) = (h.rewindow.map(|c| c.0), h.rewindow.map(|c| c.1));
            w.as_mut()
                .write(&[&h.account_id, &h.spec, &h.updated_at, &at, &id])
                .await
                .map_err(copy_err)?;
        }
        Ok(())
    }

    async fn write_controls(&mut self, rows: &[ControlRecord]) -> Result<(), MigrateError> {
        let mut w = self
            .copy_into("dispatch_controls", CONTROL_COLUMNS, CONTROL_TYPES)
            .await?;
        for c in rows {
            let channel = small(c.channel, "channel", 0)?;
            w.as_mut()
                .write(&[&c.account_id, &channel, &c.paused, &c.per_minute])
                .await
                .map_err(copy_err)?;
        }
        Ok(())
    }

    async fn write_sequence(
        &mut self,
        last_seq: u64,
        copied: Option<(i64, i64)>,
    ) -> Result<(), MigrateError> {
        self.finish_copy().await?;
        let last = i64::try_from(last_seq)
            .map_err(|_| MigrateError::Value(format!("event sequence {last_seq} is too large")))?;
        // As pruning leaves it: the events before the oldest copied are gone, and so
        // are any after the newest (the source's last sequence comes from them).
        let pruned_through = match copied {
            Some((_, newest)) if last > newest => last,
            Some((oldest, _)) => oldest - 1,
            None => last,
        };
        if pruned_through > 0 {
            self.client
                .execute(
                    "INSERT INTO store_meta (key, value) VALUES ('events_pruned_through', $1)",
                    &[&pruned_through.to_string()],
                )
                .await
                .map_err(copy_err)?;
        }
        Ok(())
    }

    async fn counts(&mut self) -> Result<Counts, StoreError> {
        if let Err(e) = self.finish_copy().await {
            return Err(match e {
                MigrateError::Copy(e) => e,
                other => StoreError::Corrupt(other.to_string()),
            });
        }
        counts(&self.client).await
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }

    async fn rollback(mut self: Box<Self>) {
        // Dropping an unfinished COPY aborts it.
        self.copy = None;
        if let Err(e) = self.client.batch_execute("ROLLBACK").await {
            tracing::warn!(error = %e, "rolling the copy back failed");
        }
    }
}
