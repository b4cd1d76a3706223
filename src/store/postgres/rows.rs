//! The PostgreSQL store's statements, with the meaning of their SQLite counterparts
//! (`store::sqlite::rows`, `queries`, `recovery`, `meta`): same
//! arguments but the ids, which sendlater allocates and passes in, and same results.
//! Each function runs on a [`Conn`]: a connection, or a transaction open on it (a
//! statement sent on the connection runs inside whatever transaction is open there),
//! with the connection's prepared statements ([`Statements`]); none commits.
//!
//! # Contract
//! - Rows are written with the encodings of `store::codec`, the bytes SQLite stores.
//! - A leased (DISPATCHING) item is stored PENDING with the attempts that ended and
//!   `lease_expires_at` set, and reads back DISPATCHING (see `schema`).
//! - A row that cannot be decoded fails a read with [`StoreError::Corrupt`], except
//!   where the SQLite function tells it apart (`get_item_checked`, `pending_replies`,
//!   `live_items_after`, `due_items`), which do the same here.
//! - Reads that must be consistent with each other run in one statement (one
//!   snapshot): `events_after` reads its events and the oldest retained sequence
//!   together.
//! - No sweep: an item's row is current once its write commits, so every event may be
//!   pruned once old; the last sequence ever pruned is kept in `store_meta`
//!   ([`max_ids`], [`event_bounds`]; per partition once rows carry partitions:
//!   `events_pruned_through.P`, [`partition_heads`], [`newest_of_partition`]).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use futures_util::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement};

use crate::domain::{
    BusinessHours, Channel, DeferredTicket, Event, EventType, Item, ItemId, Kind, ListQuery,
    Millis, NewItem, Order, State, Timing,
};
use crate::store::codec::{event_snapshot, with_lease, ItemSnapshot, StoredItem};
use crate::store::tickets::LiveTickets;
use crate::store::{
    ControlRow, Decoded, EventsAfter, ItemMeta, LiveKey, RecoveryScan, Rows, StoreError,
};

/// The prepared statements of one connection, by SQL text. A statement belongs to the
/// connection it was prepared on: one `Statements` per connection, a new one after a
/// reconnect.
#[derive(Default)]
pub struct Statements(Mutex<HashMap<String, Statement>>);

impl Statements {
    /// The statement for `sql`, prepared on `client` the first time.
    ///
    /// # Errors
    /// PostgreSQL errors (bad SQL, a lost connection).
    pub async fn get(&self, client: &Client, sql: &str) -> Result<Statement, StoreError> {
        if let Some(st) = self.lock().get(sql) {
            return Ok(st.clone());
        }
        let st = client.prepare(sql).await?;
        self.lock().insert(sql.to_owned(), st.clone());
        Ok(st)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Statement>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection, or a transaction open on it, with the connection's [`Statements`].
pub trait Conn: Sync {
    /// The connection statements are sent on.
    fn client(&self) -> &Client;
    /// Its prepared statements.
    fn statements(&self) -> &Statements;
}

/// A connection that owns its statement cache.
pub struct Pg {
    pub client: Client,
    pub statements: Statements,
}

impl Pg {
    /// `client` with an empty statement cache.
    pub fn new(client: Client) -> Self {
        Pg {
            client,
            statements: Statements::default(),
        }
    }
}

impl Conn for Pg {
    fn client(&self) -> &Client {
        &self.client
    }
    fn statements(&self) -> &Statements {
        &self.statements
    }
}

/// A client or a transaction (`tokio_postgres::Transaction`) with the statements of
/// its connection.
impl<C: GenericClient + Sync> Conn for (&C, &Statements) {
    fn client(&self) -> &Client {
        self.0.client()
    }
    fn statements(&self) -> &Statements {
        self.1
    }
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

async fn query(c: &impl Conn, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, StoreError> {
    let st = c.statements().get(c.client(), sql).await?;
    Ok(c.client().query(&st, params).await?)
}

async fn query_opt(
    c: &impl Conn,
    sql: &str,
    params: &Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let st = c.statements().get(c.client(), sql).await?;
    Ok(c.client().query_opt(&st, params).await?)
}

async fn query_one(c: &impl Conn, sql: &str, params: &Params<'_>) -> Result<Row, StoreError> {
    let st = c.statements().get(c.client(), sql).await?;
    Ok(c.client().query_one(&st, params).await?)
}

const PUT_BUSINESS_HOURS: &str = "INSERT INTO business_hours (account_id, spec, updated_at) \
    VALUES ($1, $2, $3) ON CONFLICT (account_id) DO UPDATE SET spec = excluded.spec, \
    updated_at = excluded.updated_at";
const SET_REWINDOW_CURSOR: &str =
    "UPDATE business_hours SET rewindow_at = $2, rewindow_id = $3 WHERE account_id = $1";
const PUT_CONTROL: &str =
    "INSERT INTO dispatch_controls (account_id, channel, paused, per_minute) \
    VALUES ($1, $2, COALESCE($3::boolean, false), COALESCE($4::bigint, 0)) \
    ON CONFLICT (account_id, channel) DO UPDATE SET \
    paused = COALESCE($3::boolean, dispatch_controls.paused), \
    per_minute = COALESCE($4::bigint, dispatch_controls.per_minute)";

/// Prepares every statement the writer queues unsent (inserts, updates, events,
/// settings) on a new connection, before its first group.
///
/// A queued statement that still has to be prepared sends its Parse when first polled
/// but its Bind/Execute only once the answer is back: a savepoint boundary queued after
/// it (sent at once) would overtake it, and the statement would run in the next write's
/// savepoint (and roll back with it). Prepared here, each is sent in queue order. The
/// writer must call this on every connection it makes (at start and after a reconnect);
/// a statement added to the writer's queued path (`tx.rs`) must be listed here.
///
/// # Errors
/// PostgreSQL errors.
pub async fn prepare_writes(c: &impl Conn) -> Result<(), StoreError> {
    for sql in [
        INSERT_ITEM,
        INSERT_ITEMS,
        UPDATE_ITEM,
        UPDATE_ITEMS,
        INSERT_EVENT,
        INSERT_EVENTS,
        PUT_BUSINESS_HOURS,
        SET_REWINDOW_CURSOR,
        PUT_CONTROL,
    ] {
        c.statements().get(c.client(), sql).await?;
    }
    Ok(())
}

async fn execute(c: &impl Conn, sql: &str, params: &Params<'_>) -> Result<u64, StoreError> {
    let st = c.statements().get(c.client(), sql).await?;
    Ok(c.client().execute(&st, params).await?)
}

/// The stored integer of an enum (`SMALLINT` columns).
fn small(n: i64) -> i16 {
    n as i16
}

/// Columns of `items`, in the order [`stored_at`] reads them.
const ITEM_COLUMN_NAMES: [&str; 24] = [
    "id",
    "account_id",
    "ticket_id",
    "kind",
    "channel",
    "author_id",
    "content",
    "send_at",
    "created_at",
    "updated_at",
    "state",
    "on_activity",
    "note_at",
    "conv_author_kind",
    "conv_message_id",
    "conv_occurred_at",
    "attempts",
    "last_error",
    "next_attempt_at",
    "lease_expires_at",
    "sent_at",
    "provider_message_id",
    "request_id",
    "timing",
];

/// How many columns an item takes in a row (the next one is the first after it).
const ITEM_COLUMN_COUNT: usize = ITEM_COLUMN_NAMES.len();

/// The item columns, each with `prefix` (`"i."` in a join).
fn item_columns(prefix: &str) -> String {
    ITEM_COLUMN_NAMES
        .iter()
        .map(|c| format!("{prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The item columns of `items` alone.
static ITEM_COLUMNS: LazyLock<String> = LazyLock::new(|| item_columns(""));

/// SQL that needs the item columns, built once.
macro_rules! sql {
    ($name:ident, $($fmt:tt)+) => {
        static $name: LazyLock<String> = LazyLock::new(|| format!($($fmt)+, cols = &*ITEM_COLUMNS));
    };
}

/// The stored columns of the item whose columns start at `o`.
fn stored_at(row: &Row, o: usize) -> Result<StoredItem, tokio_postgres::Error> {
    Ok(StoredItem {
        id: row.try_get(o)?,
        account_id: row.try_get(o + 1)?,
        ticket_id: row.try_get(o + 2)?,
        kind: row.try_get::<_, i16>(o + 3)?.into(),
        channel: row.try_get::<_, i16>(o + 4)?.into(),
        author_id: row.try_get(o + 5)?,
        content: row.try_get(o + 6)?,
        send_at: row.try_get(o + 7)?,
        created_at: row.try_get(o + 8)?,
        updated_at: row.try_get(o + 9)?,
        state: row.try_get::<_, i16>(o + 10)?.into(),
        on_activity: row.try_get::<_, i16>(o + 11)?.into(),
        note_at: row.try_get(o + 12)?,
        conv_author_kind: row.try_get::<_, Option<i16>>(o + 13)?.map(i64::from),
        conv_message_id: row.try_get(o + 14)?,
        conv_occurred_at: row.try_get(o + 15)?,
        attempts: row.try_get::<_, i32>(o + 16)?.into(),
        last_error: row.try_get(o + 17)?,
        next_attempt_at: row.try_get(o + 18)?,
        lease_expires_at: row.try_get(o + 19)?,
        sent_at: row.try_get(o + 20)?,
        provider_message_id: row.try_get(o + 21)?,
        request_id: row.try_get(o + 22)?,
        timing: row.try_get(o + 23)?,
    })
}

/// The item whose columns start at `o`; a row that cannot be decoded is an error.
fn item_at(row: &Row, o: usize) -> Result<Item, StoreError> {
    let s = stored_at(row, o)?;
    let id = s.id;
    s.decode()
        .map_err(|why| StoreError::Corrupt(format!("item {id}: {why}")))
}

/// The item of a row selected with [`ITEM_COLUMNS`]: `Err(why)` when it cannot be
/// decoded.
fn checked(row: &Row) -> Result<Result<Item, String>, StoreError> {
    Ok(stored_at(row, 0)?.decode())
}

/// A new item's row, for [`insert_items`].
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
    /// Allocated by sendlater.
    pub id: ItemId,
    pub new: &'a NewItem,
    /// The request's time after its delivery window.
    pub send_at: Millis,
    pub timing: &'a Timing,
    /// Its creation (and update) time.
    pub now: Millis,
    /// Its account's partition (`None` before partitions).
    pub partition: Option<i32>,
}

/// An event's row, for [`insert_events`].
#[derive(Debug, Clone, Copy)]
pub struct EventRow<'a> {
    /// Allocated by sendlater.
    pub seq: u64,
    pub kind: EventType,
    /// The item right after the change.
    pub item: &'a Item,
    pub at: Millis,
    /// Its account's partition (`None` before partitions).
    pub partition: Option<i32>,
}

const INSERT_ITEM: &str = "INSERT INTO items (id, account_id, ticket_id, kind, channel, \
    author_id, content, send_at, next_send_at, created_at, updated_at, state, on_activity, \
    request_id, request_fp, timing, partition) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $9, 1, $10, $11, $12, $13, $14)";

/// Inserts a new PENDING item with id `id`, due at `send_at` (the request's time after
/// its delivery window) with `timing`, in `partition` (`None` before partitions, see
/// `scope`). The idempotency fingerprint is the request's.
///
/// # Errors
/// PostgreSQL errors (a taken id or idempotency key included).
pub async fn insert_item(
    c: &impl Conn,
    id: ItemId,
    n: &NewItem,
    send_at: Millis,
    timing: &Timing,
    now: Millis,
    partition: Option<i32>,
) -> Result<(), StoreError> {
    execute(
        c,
        INSERT_ITEM,
        &[
            &id,
            &n.account_id,
            &n.ticket_id,
            &small(n.kind.as_i64()),
            &small(n.channel.as_i64()),
            &n.author_id,
            &n.content.to_bytes(),
            &send_at,
            &now,
            &small(n.on_activity.as_i64()),
            &n.request_id,
            &n.request_id.as_ref().map(|_| n.fingerprint() as i64),
            &timing.to_bytes(),
            &partition,
        ],
    )
    .await?;
    Ok(())
}

const INSERT_ITEMS: &str = "INSERT INTO items (id, account_id, ticket_id, kind, channel, \
    author_id, content, send_at, next_send_at, created_at, updated_at, state, on_activity, \
    request_id, request_fp, timing, partition) \
    SELECT id, account_id, ticket_id, kind, channel, author_id, content, send_at, send_at, \
    at, at, 1, on_activity, request_id, request_fp, timing, partition \
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::smallint[], $5::smallint[], \
    $6::text[], $7::bytea[], $8::bigint[], $9::bigint[], $10::smallint[], $11::text[], \
    $12::bigint[], $13::bytea[], $14::int[]) AS r(id, account_id, ticket_id, kind, channel, \
    author_id, content, send_at, at, on_activity, request_id, request_fp, timing, partition)";

/// Inserts many new items in one statement (one round trip), each as [`insert_item`]
/// would.
///
/// # Errors
/// PostgreSQL errors: then none of them is inserted.
pub async fn insert_items(c: &impl Conn, rows: &[NewRow<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&NewRow<'_>) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let ids = col(&|r| r.id);
    let send_at = col(&|r| r.send_at);
    let now = col(&|r| r.now);
    let small_col =
        |f: &dyn Fn(&NewItem) -> i64| rows.iter().map(|r| small(f(r.new))).collect::<Vec<i16>>();
    let kinds = small_col(&|n| n.kind.as_i64());
    let channels = small_col(&|n| n.channel.as_i64());
    let policies = small_col(&|n| n.on_activity.as_i64());
    let accounts: Vec<&str> = rows.iter().map(|r| r.new.account_id.as_str()).collect();
    let tickets: Vec<&str> = rows.iter().map(|r| r.new.ticket_id.as_str()).collect();
    let authors: Vec<&str> = rows.iter().map(|r| r.new.author_id.as_str()).collect();
    let contents: Vec<Vec<u8>> = rows.iter().map(|r| r.new.content.to_bytes()).collect();
    let requests: Vec<Option<&str>> = rows.iter().map(|r| r.new.request_id.as_deref()).collect();
    let fps: Vec<Option<i64>> = rows
        .iter()
        .map(|r| {
            r.new
                .request_id
                .as_ref()
                .map(|_| r.new.fingerprint() as i64)
        })
        .collect();
    let timings: Vec<Option<Vec<u8>>> = rows.iter().map(|r| r.timing.to_bytes()).collect();
    let partitions: Vec<Option<i32>> = rows.iter().map(|r| r.partition).collect();
    execute(
        c,
        INSERT_ITEMS,
        &[
            &ids,
            &accounts,
            &tickets,
            &kinds,
            &channels,
            &authors,
            &contents,
            &send_at,
            &now,
            &policies,
            &requests,
            &fps,
            &timings,
            &partitions,
        ],
    )
    .await?;
    Ok(())
}

const UPDATE_ITEM: &str = "UPDATE items SET content = $2, send_at = $3, next_send_at = $4, \
    updated_at = $5, state = $6, on_activity = $7, note_at = $8, conv_author_kind = $9, \
    conv_message_id = $10, conv_occurred_at = $11, attempts = $12, last_error = $13, \
    next_attempt_at = $14, lease_expires_at = $15, sent_at = $16, provider_message_id = $17, \
    timing = $18 WHERE id = $1";

/// Writes every mutable field of `item` back, as SQLite's sweep does for a changed
/// item: content, times, state, delivery fields, and the lease (a DISPATCHING item is
/// stored PENDING with its lease expiry, anything else with none).
///
/// # Errors
/// PostgreSQL errors.
pub async fn update_item(c: &impl Conn, item: &Item) -> Result<(), StoreError> {
    let s = StoredItem::of(item);
    execute(
        c,
        UPDATE_ITEM,
        &[
            &s.id,
            &s.content,
            &s.send_at,
            &item.next_send_at(),
            &s.updated_at,
            &small(s.state),
            &small(s.on_activity),
            &s.note_at,
            &s.conv_author_kind.map(small),
            &s.conv_message_id,
            &s.conv_occurred_at,
            &(s.attempts as i32),
            &s.last_error,
            &s.next_attempt_at,
            &s.lease_expires_at,
            &s.sent_at,
            &s.provider_message_id,
            &s.timing,
        ],
    )
    .await?;
    Ok(())
}

const UPDATE_ITEMS: &str = "UPDATE items AS i SET content = v.content, send_at = v.send_at, \
    next_send_at = v.next_send_at, updated_at = v.updated_at, state = v.state, \
    on_activity = v.on_activity, note_at = v.note_at, conv_author_kind = v.conv_author_kind, \
    conv_message_id = v.conv_message_id, conv_occurred_at = v.conv_occurred_at, \
    attempts = v.attempts, last_error = v.last_error, next_attempt_at = v.next_attempt_at, \
    lease_expires_at = v.lease_expires_at, sent_at = v.sent_at, \
    provider_message_id = v.provider_message_id, timing = v.timing \
    FROM unnest($1::bigint[], $2::bytea[], $3::bigint[], $4::bigint[], $5::bigint[], \
    $6::smallint[], $7::smallint[], $8::bigint[], $9::smallint[], $10::text[], $11::bigint[], \
    $12::int[], $13::text[], $14::bigint[], $15::bigint[], $16::bigint[], $17::text[], \
    $18::bytea[]) AS v(id, content, send_at, next_send_at, updated_at, state, on_activity, \
    note_at, conv_author_kind, conv_message_id, conv_occurred_at, attempts, last_error, \
    next_attempt_at, lease_expires_at, sent_at, provider_message_id, timing) \
    WHERE i.id = v.id";

/// Writes many items back in one statement (one round trip), each as [`update_item`]
/// would. `items` must not hold an id twice (one row version per item and statement).
///
/// # Errors
/// PostgreSQL errors: then none of them is written.
pub async fn update_items(c: &impl Conn, items: &[Item]) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let s: Vec<StoredItem> = items.iter().map(StoredItem::of).collect();
    let ids: Vec<i64> = s.iter().map(|s| s.id).collect();
    let content: Vec<&[u8]> = s.iter().map(|s| s.content.as_slice()).collect();
    let send_at: Vec<i64> = s.iter().map(|s| s.send_at).collect();
    let next_send_at: Vec<i64> = items.iter().map(|i| i.next_send_at()).collect();
    let updated_at: Vec<i64> = s.iter().map(|s| s.updated_at).collect();
    let state: Vec<i16> = s.iter().map(|s| small(s.state)).collect();
    let on_activity: Vec<i16> = s.iter().map(|s| small(s.on_activity)).collect();
    let note_at: Vec<Option<i64>> = s.iter().map(|s| s.note_at).collect();
    let conv_kind: Vec<Option<i16>> = s.iter().map(|s| s.conv_author_kind.map(small)).collect();
    let conv_id: Vec<Option<&str>> = s.iter().map(|s| s.conv_message_id.as_deref()).collect();
    let conv_at: Vec<Option<i64>> = s.iter().map(|s| s.conv_occurred_at).collect();
    let attempts: Vec<i32> = s.iter().map(|s| s.attempts as i32).collect();
    let last_error: Vec<Option<&str>> = s.iter().map(|s| s.last_error.as_deref()).collect();
    let next_attempt: Vec<Option<i64>> = s.iter().map(|s| s.next_attempt_at).collect();
    let lease: Vec<Option<i64>> = s.iter().map(|s| s.lease_expires_at).collect();
    let sent_at: Vec<Option<i64>> = s.iter().map(|s| s.sent_at).collect();
    let provider: Vec<Option<&str>> = s.iter().map(|s| s.provider_message_id.as_deref()).collect();
    let timing: Vec<Option<&[u8]>> = s.iter().map(|s| s.timing.as_deref()).collect();
    execute(
        c,
        UPDATE_ITEMS,
        &[
            &ids,
            &content,
            &send_at,
            &next_send_at,
            &updated_at,
            &state,
            &on_activity,
            &note_at,
            &conv_kind,
            &conv_id,
            &conv_at,
            &attempts,
            &last_error,
            &next_attempt,
            &lease,
            &sent_at,
            &provider,
            &timing,
        ],
    )
    .await?;
    Ok(())
}

sql!(
    GET_ITEM,
    "SELECT {cols} FROM items WHERE id = $1 AND account_id = $2"
);
sql!(GET_ITEM_ANY, "SELECT {cols} FROM items WHERE id = $1");

/// The item with this id, if it belongs to the account.
///
/// # Errors
/// PostgreSQL errors, a row that cannot be decoded included.
pub async fn get_item(
    c: &impl Conn,
    account: &str,
    id: ItemId,
) -> Result<Option<Item>, StoreError> {
    query_opt(c, &GET_ITEM, &[&id, &account])
        .await?
        .map(|r| item_at(&r, 0))
        .transpose()
}

/// The item with this id, whatever its account (dispatch path).
///
/// # Errors
/// PostgreSQL errors, a row that cannot be decoded included.
pub async fn get_item_any(c: &impl Conn, id: ItemId) -> Result<Option<Item>, StoreError> {
    query_opt(c, &GET_ITEM_ANY, &[&id])
        .await?
        .map(|r| item_at(&r, 0))
        .transpose()
}

/// The item by id, telling a row that cannot be decoded (a bad stored value) apart
/// from a storage error: `Some(Err(why))`.
///
/// # Errors
/// PostgreSQL errors.
pub async fn get_item_checked(
    c: &impl Conn,
    id: ItemId,
) -> Result<Option<Result<Item, String>>, StoreError> {
    query_opt(c, &GET_ITEM_ANY, &[&id])
        .await?
        .map(|r| checked(&r))
        .transpose()
}

/// The item by id read as far as its row can be decoded, every column that cannot be
/// read as its default: for failing an unreadable item through the state machine.
/// `None` when there is no such row or its state cannot be read.
///
/// # Errors
/// PostgreSQL errors.
pub async fn get_item_lenient(c: &impl Conn, id: ItemId) -> Result<Option<Item>, StoreError> {
    Ok(match query_opt(c, &GET_ITEM_ANY, &[&id]).await? {
        Some(r) => stored_at(&r, 0)?.decode_lenient(),
        None => None,
    })
}

/// Fails a live item whose row cannot be decoded, without decoding it: FAILED with
/// `last_error`, lease gone. Returns its account when it was live.
///
/// # Errors
/// PostgreSQL errors.
pub async fn fail_unreadable(
    c: &impl Conn,
    id: ItemId,
    why: &str,
    now: Millis,
) -> Result<Option<String>, StoreError> {
    Ok(query_opt(
        c,
        "UPDATE items SET state = $1, last_error = $2, next_attempt_at = NULL, \
         lease_expires_at = NULL, next_send_at = send_at, updated_at = $3 \
         WHERE id = $4 AND state IN (1, 2) RETURNING account_id",
        &[&small(State::Failed.as_i64()), &why, &now, &id],
    )
    .await?
    .map(|r| r.get(0)))
}

sql!(
    FIND_BY_REQUEST,
    "SELECT {cols}, request_fp FROM items WHERE account_id = $1 AND request_id = $2"
);

/// The item holding this idempotency key, with the fingerprint of its request.
///
/// # Errors
/// PostgreSQL errors, a row that cannot be decoded included.
pub async fn find_by_request(
    c: &impl Conn,
    account: &str,
    request_id: &str,
) -> Result<Option<(Item, u64)>, StoreError> {
    match query_opt(c, &FIND_BY_REQUEST, &[&account, &request_id]).await? {
        Some(r) => {
            let fp: Option<i64> = r.try_get(ITEM_COLUMN_COUNT)?;
            Ok(Some((item_at(&r, 0)?, fp.unwrap_or_default() as u64)))
        }
        None => Ok(None),
    }
}

/// Whether `message_id` (one of our item ids, or a provider message id) is an item of
/// the ticket.
///
/// # Errors
/// PostgreSQL errors.
pub async fn is_own_message(
    c: &impl Conn,
    account: &str,
    ticket: &str,
    message_id: &str,
) -> Result<bool, StoreError> {
    let id = crate::domain::parse_item_id(message_id).unwrap_or(-1);
    Ok(query_one(
        c,
        "SELECT EXISTS (SELECT 1 FROM items WHERE account_id = $1 AND ticket_id = $2 \
         AND (id = $3 OR provider_message_id = $4))",
        &[&account, &ticket, &id, &message_id],
    )
    .await?
    .get(0))
}

sql!(
    PENDING_REPLIES,
    // The ticket's rows first (items_by_ticket: a handful), then the filter. Left to
    // itself the planner took items_live, the partial index of live items, and walked
    // every live item of the account for each ticket (seconds at 100k live items).
    "SELECT {cols} FROM (SELECT * FROM items WHERE account_id = $1 AND ticket_id = $2 \
     OFFSET 0) AS items WHERE created_at < $3 AND state = 1 AND kind = $4 \
     ORDER BY created_at, id"
);

/// The ticket's replies whose row is PENDING, created before `before`, oldest first
/// (one with a lease reads as DISPATCHING; the caller keeps those PENDING now); a row
/// that cannot be decoded is `Err((id, why))`, to fail alone.
///
/// # Errors
/// PostgreSQL errors.
pub async fn pending_replies(
    c: &impl Conn,
    account: &str,
    ticket: &str,
    before: Millis,
) -> Result<Vec<Decoded>, StoreError> {
    let rows = query(
        c,
        &PENDING_REPLIES,
        &[&account, &ticket, &before, &small(Kind::Reply.as_i64())],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let s = stored_at(r, 0)?;
        let id = s.id;
        out.push(s.decode().map_err(|why| (id, why)));
    }
    Ok(out)
}

sql!(
    PENDING_REPLIES_OF_TICKETS,
    // Each ticket's rows by items_by_ticket, then the filter (see PENDING_REPLIES).
    "SELECT {cols} FROM (SELECT DISTINCT account_id AS a, ticket_id AS t FROM items \
     WHERE id = ANY($1)) AS k CROSS JOIN LATERAL (SELECT * FROM items \
     WHERE account_id = k.a AND ticket_id = k.t OFFSET 0) AS items \
     WHERE state = 1 AND kind = $2 ORDER BY created_at, id"
);

/// The replies whose row is PENDING in the tickets of the items `ids`, oldest first, each
/// with its account and ticket (as [`pending_replies`] reads them, for every created
/// time): what a write answering for those items reads ahead.
///
/// # Errors
/// PostgreSQL errors.
pub async fn pending_replies_of_tickets(
    c: &impl Conn,
    ids: &[ItemId],
) -> Result<Vec<(String, String, Decoded)>, StoreError> {
    let rows = query(
        c,
        &PENDING_REPLIES_OF_TICKETS,
        &[&ids, &small(Kind::Reply.as_i64())],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let s = stored_at(r, 0)?;
        let (id, account, ticket) = (s.id, s.account_id.clone(), s.ticket_id.clone());
        out.push((account, ticket, s.decode().map_err(|why| (id, why))));
    }
    Ok(out)
}

const INSERT_EVENT: &str = "INSERT INTO events (seq, item_id, at, type, account_id, snapshot, \
    partition) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Appends the event `seq` for `item`. The snapshot carries every mutable field of the
/// item (the content too for an UPDATED event), as SQLite's.
///
/// # Errors
/// PostgreSQL errors (a taken sequence number included).
pub async fn insert_event(
    c: &impl Conn,
    seq: u64,
    kind: EventType,
    item: &Item,
    now: Millis,
    partition: Option<i32>,
) -> Result<(), StoreError> {
    execute(
        c,
        INSERT_EVENT,
        &[
            &(seq as i64),
            &item.id,
            &now,
            &small(kind.as_i64()),
            &item.account_id,
            &event_snapshot(kind, item),
            &partition,
        ],
    )
    .await?;
    Ok(())
}

const INSERT_EVENTS: &str = "INSERT INTO events (seq, item_id, at, type, account_id, snapshot, \
    partition) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], \
    $4::smallint[], $5::text[], $6::bytea[], $7::int[])";

/// Appends many events in one statement (one round trip), each as [`insert_event`]
/// would.
///
/// # Errors
/// PostgreSQL errors: then none of them is appended.
pub async fn insert_events(c: &impl Conn, rows: &[EventRow<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq as i64).collect();
    let items: Vec<i64> = rows.iter().map(|r| r.item.id).collect();
    let ats: Vec<i64> = rows.iter().map(|r| r.at).collect();
    let kinds: Vec<i16> = rows.iter().map(|r| small(r.kind.as_i64())).collect();
    let accounts: Vec<&str> = rows.iter().map(|r| r.item.account_id.as_str()).collect();
    let snapshots: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| event_snapshot(r.kind, r.item))
        .collect();
    let partitions: Vec<Option<i32>> = rows.iter().map(|r| r.partition).collect();
    execute(
        c,
        INSERT_EVENTS,
        &[
            &seqs,
            &items,
            &ats,
            &kinds,
            &accounts,
            &snapshots,
            &partitions,
        ],
    )
    .await?;
    Ok(())
}

/// The last event sequence ever written, pruned or not (0 when none).
pub(crate) const LAST_SEQ: &str = "GREATEST(COALESCE((SELECT MAX(seq) FROM events), 0), \
    COALESCE((SELECT value::bigint FROM store_meta WHERE key = 'events_pruned_through'), 0))";

/// Deletes the oldest events up to the first one at or after `cutoff`, at most `batch`
/// of them: a walk of the sequence (the primary key) from its start, never a scan by
/// time (`at` has no index). The last sequence deleted is kept in `store_meta`, so the
/// sequence never goes back even when every event is pruned. Unlike SQLite's, every
/// event may go: rows are current once written (there is no sweep watermark).
///
/// # Errors
/// PostgreSQL errors.
pub async fn prune_events(c: &impl Conn, cutoff: Millis, batch: u32) -> Result<usize, StoreError> {
    let n: i64 = query_one(
        c,
        "WITH head AS (SELECT seq, at FROM events ORDER BY seq LIMIT $2), \
         bound AS (SELECT COALESCE(MIN(CASE WHEN at >= $1 THEN seq END), MAX(seq) + 1) AS b \
                   FROM head), \
         gone AS (DELETE FROM events WHERE seq < (SELECT b FROM bound) RETURNING seq), \
         mark AS (INSERT INTO store_meta (key, value) \
                  SELECT 'events_pruned_through', MAX(seq)::text FROM gone HAVING COUNT(*) > 0 \
                  ON CONFLICT (key) DO UPDATE SET value = \
                  GREATEST(store_meta.value::bigint, excluded.value::bigint)::text \
                  RETURNING 1) \
         SELECT COUNT(*) FROM gone",
        &[&cutoff, &i64::from(batch)],
    )
    .await?
    .get(0);
    Ok(n as usize)
}

/// The oldest retained event sequence, and the last one ever written (0 when none):
/// events after `last` do not exist yet; those before `oldest` were pruned.
///
/// # Errors
/// PostgreSQL errors.
pub async fn event_bounds(c: &impl Conn) -> Result<(u64, u64), StoreError> {
    let r = query_one(
        c,
        &format!("SELECT (SELECT MIN(seq) FROM events), {LAST_SEQ}"),
        &[],
    )
    .await?;
    let last: i64 = r.get(1);
    let oldest: Option<i64> = r.get(0);
    Ok((oldest.unwrap_or(last + 1) as u64, last as u64))
}

/// Where start-up allocation goes on from: the largest item id and the last event
/// sequence ever written (0 when none; pruned events count).
///
/// # Errors
/// PostgreSQL errors.
pub async fn max_ids(c: &impl Conn) -> Result<(ItemId, u64), StoreError> {
    let r = query_one(
        c,
        &format!("SELECT COALESCE((SELECT MAX(id) FROM items), 0), {LAST_SEQ}"),
        &[],
    )
    .await?;
    Ok((r.get(0), r.get::<_, i64>(1) as u64))
}

/// Ids of every live (PENDING or DISPATCHING) item, in id order; of the partitions
/// `owned` only, when given.
///
/// # Errors
/// PostgreSQL errors.
pub async fn live_item_ids(
    c: &impl Conn,
    owned: Option<&[i32]>,
) -> Result<Vec<ItemId>, StoreError> {
    let rows = match owned {
        None => query(c, "SELECT id FROM items WHERE state = 1 ORDER BY id", &[]).await?,
        Some(parts) => {
            query(
                c,
                "SELECT id FROM items WHERE state = 1 AND partition = ANY($1) ORDER BY id",
                &[&parts],
            )
            .await?
        }
    };
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Where numbering goes on from in each held `(partition, epoch)` (see `scope`): the
/// largest item id in the partition's range, and the largest sequence in the epoch's
/// range of the partition, or pruned (of the partition, or before partitions: the
/// caller ignores one below the range); one statement, an indexed probe each.
///
/// # Errors
/// PostgreSQL errors.
pub async fn partition_heads(
    c: &impl Conn,
    held: &[(u32, i64)],
) -> Result<Vec<(u32, i64, Option<ItemId>, Option<u64>)>, StoreError> {
    let parts: Vec<i32> = held.iter().map(|&(p, _)| p as i32).collect();
    let epochs: Vec<i64> = held.iter().map(|&(_, e)| e).collect();
    let (mut lo, mut hi) = (Vec::new(), Vec::new());
    for &(p, e) in held {
        let (l, h) = super::scope::seq_range(p, e);
        lo.push(l as i64);
        hi.push(h as i64);
    }
    let rows = query(
        c,
        "SELECT h.p, h.e, \
           (SELECT MAX(id) FROM items WHERE id >= (h.p::bigint << 48) \
              AND id < ((h.p::bigint + 1) << 48)), \
           GREATEST((SELECT MAX(seq) FROM events WHERE seq >= h.lo AND seq < h.hi), \
             (SELECT value::bigint FROM store_meta \
              WHERE key = 'events_pruned_through.' || h.p::text), \
             (SELECT value::bigint FROM store_meta WHERE key = 'events_pruned_through')) \
         FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[]) AS h(p, e, lo, hi)",
        &[&parts, &epochs, &lo, &hi],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0) as u32,
                r.get(1),
                r.get(2),
                r.get::<_, Option<i64>>(3).map(|s| s as u64),
            )
        })
        .collect())
}

/// The epoch of each partition's lease row (a store without a fence writes at these).
///
/// # Errors
/// PostgreSQL errors.
pub async fn lease_epochs(c: &impl Conn) -> Result<Vec<(u32, i64)>, StoreError> {
    Ok(query(
        c,
        "SELECT partition, epoch FROM partition_leases ORDER BY partition",
        &[],
    )
    .await?
    .iter()
    .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
    .collect())
}

/// Everything pruned of partition `$N` up to this sequence (SQL, the partition's
/// parameter spliced in): its own mark, or the mark pruning left before partitions.
fn pruned_through(param: &str) -> String {
    format!(
        "GREATEST(COALESCE((SELECT value::bigint FROM store_meta \
           WHERE key = 'events_pruned_through.' || {param}::int::text), 0), \
         COALESCE((SELECT value::bigint FROM store_meta \
           WHERE key = 'events_pruned_through'), 0))"
    )
}

/// The largest event sequence partition `p` has, written or pruned (0 when none).
///
/// # Errors
/// PostgreSQL errors.
pub async fn newest_of_partition(c: &impl Conn, p: u32) -> Result<u64, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM events WHERE partition = $1), 0), {})",
            pruned_through("$1")
        )
    });
    let r = query_one(c, &SQL, &[&(p as i32)]).await?;
    Ok(r.get::<_, i64>(0) as u64)
}

/// Prunes the events of the partitions `owned` as [`prune_events`] does the whole
/// table: in each, the oldest up to the first one at or after `cutoff`, in sequence
/// order (a partition's events only), at most `batch` in all; the last sequence pruned
/// of each is kept in `store_meta` (`events_pruned_through.P`). Other partitions' events
/// are left to their owners.
///
/// # Errors
/// PostgreSQL errors.
pub async fn prune_owned_events(
    c: &impl Conn,
    cutoff: Millis,
    batch: u32,
    owned: &[i32],
) -> Result<usize, StoreError> {
    // The partitions whose oldest event is expired: one probe each.
    let due: Vec<i32> = query(
        c,
        "SELECT p FROM unnest($1::int[]) AS p \
         WHERE (SELECT at FROM events WHERE partition = p ORDER BY seq LIMIT 1) < $2",
        &[&owned, &cutoff],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let mut left = i64::from(batch);
    let mut total = 0usize;
    for p in due {
        if left <= 0 {
            break;
        }
        let n: i64 = query_one(
            c,
            "WITH head AS (SELECT seq, at FROM events WHERE partition = $3 ORDER BY seq LIMIT $2), \
             bound AS (SELECT COALESCE(MIN(CASE WHEN at >= $1 THEN seq END), MAX(seq) + 1) AS b \
                       FROM head), \
             gone AS (DELETE FROM events WHERE partition = $3 AND seq < (SELECT b FROM bound) \
                      RETURNING seq), \
             mark AS (INSERT INTO store_meta (key, value) \
                      SELECT 'events_pruned_through.' || $3::int::text, MAX(seq)::text FROM gone \
                      HAVING COUNT(*) > 0 \
                      ON CONFLICT (key) DO UPDATE SET value = \
                      GREATEST(store_meta.value::bigint, excluded.value::bigint)::text \
                      RETURNING 1) \
             SELECT COUNT(*) FROM gone",
            &[&cutoff, &left, &p],
        )
        .await?
        .get(0);
        left -= n;
        total += n as usize;
    }
    Ok(total)
}

/// The business hours of an account, if set.
///
/// # Errors
/// PostgreSQL errors, a stored spec that cannot be decoded included.
pub async fn get_business_hours(
    c: &impl Conn,
    account: &str,
) -> Result<Option<BusinessHours>, StoreError> {
    let Some(r) = query_opt(
        c,
        "SELECT spec FROM business_hours WHERE account_id = $1",
        &[&account],
    )
    .await?
    else {
        return Ok(None);
    };
    let spec: String = r.get(0);
    BusinessHours::decode(&spec)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("business hours of {account}: {e}")))
}

/// Sets (replaces) the business hours of an account.
///
/// # Errors
/// PostgreSQL errors.
pub async fn put_business_hours(
    c: &impl Conn,
    account: &str,
    hours: &BusinessHours,
    now: Millis,
) -> Result<(), StoreError> {
    execute(c, PUT_BUSINESS_HOURS, &[&account, &hours.encode(), &now]).await?;
    Ok(())
}

/// Where the account's re-resolution of business-hours items stands: `Some(after)`
/// while one is under way, `None` when none is.
///
/// # Errors
/// PostgreSQL errors.
pub async fn rewindow_cursor(
    c: &impl Conn,
    account: &str,
) -> Result<Option<(Millis, ItemId)>, StoreError> {
    match query_opt(
        c,
        "SELECT rewindow_at, rewindow_id FROM business_hours \
         WHERE account_id = $1 AND rewindow_at IS NOT NULL",
        &[&account],
    )
    .await?
    {
        Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?))),
        None => Ok(None),
    }
}

/// Sets (or, with `None`, ends) the account's re-resolution cursor.
///
/// # Errors
/// PostgreSQL errors.
pub async fn set_rewindow_cursor(
    c: &impl Conn,
    account: &str,
    cursor: Option<(Millis, ItemId)>,
) -> Result<(), StoreError> {
    execute(
        c,
        SET_REWINDOW_CURSOR,
        &[&account, &cursor.map(|c| c.0), &cursor.map(|c| c.1)],
    )
    .await?;
    Ok(())
}

/// Accounts whose re-resolution of business-hours items is under way.
///
/// # Errors
/// PostgreSQL errors.
pub async fn rewindows_under_way(c: &impl Conn) -> Result<Vec<String>, StoreError> {
    Ok(query(
        c,
        "SELECT account_id FROM business_hours WHERE rewindow_at IS NOT NULL \
         ORDER BY account_id",
        &[],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

sql!(
    LIVE_ITEMS_AFTER,
    "SELECT next_send_at, id, {cols} FROM items WHERE account_id = $1 AND state = 1 \
     AND (next_send_at, id) > ($2, $3) ORDER BY next_send_at, id LIMIT $4"
);

/// Up to `limit` of the account's live items by their rows, after the key `after` in
/// `(next_send_at, id)` order, each with its row's key; a row that cannot be decoded
/// is `None` (with its key, so a walk goes past it).
///
/// # Errors
/// PostgreSQL errors.
pub async fn live_items_after(
    c: &impl Conn,
    account: &str,
    after: LiveKey,
    limit: usize,
) -> Result<Vec<(LiveKey, Option<Item>)>, StoreError> {
    let rows = query(
        c,
        &LIVE_ITEMS_AFTER,
        &[&account, &after.0, &after.1, &(limit as i64)],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(((r.get(0), r.get(1)), stored_at(r, 2)?.decode().ok()));
    }
    Ok(out)
}

/// Every stored control in force (read at start-up; a handful of rows).
///
/// # Errors
/// PostgreSQL errors, a stored channel that cannot be decoded included.
pub async fn all_controls(c: &impl Conn) -> Result<Vec<ControlRow>, StoreError> {
    let rows = query(
        c,
        "SELECT account_id, channel, paused, per_minute FROM dispatch_controls \
         WHERE paused OR per_minute <> 0",
        &[],
    )
    .await?;
    control_rows(&rows)
}

/// The dispatch controls in force for every account (`*`): one lookup on the primary
/// key's first column, for nodes that follow changes `*`'s owner writes.
///
/// # Errors
/// PostgreSQL errors; a stored channel that is not one.
pub async fn every_account_controls(c: &impl Conn) -> Result<Vec<ControlRow>, StoreError> {
    let rows = query(
        c,
        "SELECT account_id, channel, paused, per_minute FROM dispatch_controls \
         WHERE account_id = $1 AND (paused OR per_minute <> 0)",
        &[&crate::engine::EVERY_ACCOUNT],
    )
    .await?;
    control_rows(&rows)
}

fn control_rows(rows: &[Row]) -> Result<Vec<ControlRow>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let channel: i16 = r.get(1);
        let per_minute: i64 = r.get(3);
        out.push(ControlRow {
            account_id: r.get(0),
            channel: Channel::from_i64(channel.into())
                .ok_or_else(|| StoreError::Corrupt(format!("invalid stored channel {channel}")))?,
            paused: r.get(2),
            per_minute: u32::try_from(per_minute).unwrap_or(u32::MAX),
        });
    }
    Ok(out)
}

/// Sets the pause flag (`Some`) and/or the rate limit (`Some`) of one account and
/// channel, keeping the other part.
///
/// # Errors
/// PostgreSQL errors.
pub async fn put_control(
    c: &impl Conn,
    account: &str,
    channel: Channel,
    paused: Option<bool>,
    per_minute: Option<u32>,
) -> Result<(), StoreError> {
    execute(
        c,
        PUT_CONTROL,
        &[
            &account,
            &small(channel.as_i64()),
            &paused,
            &per_minute.map(i64::from),
        ],
    )
    .await?;
    Ok(())
}

/// `(comparison, direction)` of a keyset in `order`.
fn keyset(order: Order) -> (&'static str, &'static str) {
    match order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    }
}

/// The first `limit` of `rows` (read with `LIMIT limit + 1`), and whether more follow.
fn page<T>(mut rows: Vec<T>, limit: usize) -> Rows<T> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    Rows { rows, more }
}

/// Positional parameters of a statement built piece by piece.
#[derive(Default)]
struct Args(Vec<Box<dyn ToSql + Sync + Send>>);

impl Args {
    /// Adds a parameter; returns its placeholder.
    fn push(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(v));
        format!("${}", self.0.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
    }
}

/// ListScheduled: the account's items matching `q`'s filters (PENDING when `q.state` is
/// `None`), by next send time then id in `q.order`, at most `limit` after the key
/// `after` (`(next_send_at, id)` of the last item seen). `q.page_size` and
/// `q.page_token` are not read.
///
/// Live items are read from `items_live` (DISPATCHING ones are those with a lease),
/// finished ones from `items_done`.
///
/// # Errors
/// PostgreSQL errors, a row that cannot be decoded included.
pub async fn list_items(
    c: &impl Conn,
    q: &ListQuery,
    after: Option<(Millis, ItemId)>,
    limit: usize,
) -> Result<Rows<Item>, StoreError> {
    let mut args = Args::default();
    let account = args.push(q.account_id.clone());
    let filter = match q.state.unwrap_or(State::Pending) {
        State::Pending => "state = 1 AND lease_expires_at IS NULL".to_owned(),
        State::Dispatching => "state = 1 AND lease_expires_at IS NOT NULL".to_owned(),
        other => format!(
            "state <> 1 AND state = {}",
            args.push(small(other.as_i64()))
        ),
    };
    let mut sql = format!(
        "SELECT {} FROM items WHERE account_id = {account} AND {filter}",
        &*ITEM_COLUMNS
    );
    if let Some(t) = &q.ticket_id {
        sql.push_str(&format!(" AND ticket_id = {}", args.push(t.clone())));
    }
    if let Some(ch) = q.channel {
        sql.push_str(&format!(" AND channel = {}", args.push(small(ch.as_i64()))));
    }
    if let Some(a) = &q.author_id {
        sql.push_str(&format!(" AND author_id = {}", args.push(a.clone())));
    }
    if let Some(k) = q.kind {
        sql.push_str(&format!(" AND kind = {}", args.push(small(k.as_i64()))));
    }
    if let Some(f) = q.send_at_from {
        sql.push_str(&format!(" AND next_send_at >= {}", args.push(f)));
    }
    if let Some(t) = q.send_at_to {
        sql.push_str(&format!(" AND next_send_at < {}", args.push(t)));
    }
    let (cmp, dir) = keyset(q.order);
    if let Some((at, id)) = after {
        let (at, id) = (args.push(at), args.push(id));
        sql.push_str(&format!(" AND (next_send_at, id) {cmp} ({at}, {id})"));
    }
    let lim = args.push(limit as i64 + 1);
    sql.push_str(&format!(
        " ORDER BY next_send_at {dir}, id {dir} LIMIT {lim}"
    ));
    let rows = query(c, &sql, &args.refs()).await?;
    let items = rows
        .iter()
        .map(|r| item_at(r, 0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page(items, limit))
}

/// ListDeferredTickets: the account's tickets with PENDING or DISPATCHING items, by
/// their earliest next send time then ticket id in `order`, at most `limit` after the
/// key `after` (`(next_send_at, ticket_id)` of the last ticket seen).
///
/// # Errors
/// PostgreSQL errors.
pub async fn deferred_tickets(
    c: &impl Conn,
    account: &str,
    order: Order,
    after: Option<(Millis, &str)>,
    limit: usize,
) -> Result<Rows<DeferredTicket>, StoreError> {
    let (cmp, dir) = keyset(order);
    let lim = limit as i64 + 1;
    let base = "SELECT ticket_id, MIN(next_send_at) AS next_at, COUNT(*) FROM items \
                WHERE account_id = $1 AND state = 1 GROUP BY ticket_id";
    let rows = match after {
        Some((at, t)) => {
            let sql = format!(
                "{base} HAVING (MIN(next_send_at), ticket_id) {cmp} ($3, $4) \
                 ORDER BY next_at {dir}, ticket_id {dir} LIMIT $2"
            );
            query(c, &sql, &[&account, &lim, &at, &t]).await?
        }
        None => {
            let sql = format!("{base} ORDER BY next_at {dir}, ticket_id {dir} LIMIT $2");
            query(c, &sql, &[&account, &lim]).await?
        }
    };
    let tickets = rows
        .iter()
        .map(|r| DeferredTicket {
            ticket_id: r.get(0),
            next_send_at: r.get(1),
            pending_count: r.get::<_, i64>(2) as u32,
        })
        .collect();
    Ok(page(tickets, limit))
}

sql!(
    TICKET_ITEMS,
    "SELECT {cols} FROM items WHERE account_id = $1 AND ticket_id = $2 \
     ORDER BY created_at, id"
);

/// GetTicketTimeline: every item of the ticket, in creation order (as the contract's
/// `Backend::ticket_items` says; a ticket has few items, sorted after the index).
///
/// # Errors
/// PostgreSQL errors, a row that cannot be decoded included.
pub async fn ticket_items(
    c: &impl Conn,
    account: &str,
    ticket: &str,
) -> Result<Vec<Item>, StoreError> {
    query(c, &TICKET_ITEMS, &[&account, &ticket])
        .await?
        .iter()
        .map(|r| item_at(r, 0))
        .collect()
}

/// What changed, without the items: (sequence, type, item id, ticket id) of one
/// account's events after `after`, at most `limit`, oldest first.
///
/// # Errors
/// PostgreSQL errors.
pub async fn event_heads(
    c: &impl Conn,
    account: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, EventType, ItemId, String)>, StoreError> {
    Ok(query(
        c,
        "SELECT e.seq, e.type, e.item_id, i.ticket_id FROM events e \
         JOIN items i ON i.id = e.item_id \
         WHERE e.account_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
        &[&account, &(after as i64), &(limit as i64)],
    )
    .await?
    .iter()
    .map(|r| {
        (
            r.get::<_, i64>(0) as u64,
            EventType::from_i64(r.get::<_, i16>(1).into()).unwrap_or(EventType::Updated),
            r.get(2),
            r.get(3),
        )
    })
    .collect())
}

/// The events statement of [`events_after`]: one row per event after `$1` (of the
/// account `$3`, when given), at most `$2`, each with the oldest retained sequence;
/// one row of NULLs but that when there is none. One statement, one snapshot: pruning
/// between the two reads cannot hide a gap.
fn events_after_sql(one_account: bool) -> String {
    events_after_with(
        &format!("COALESCE((SELECT MIN(seq) FROM events), {LAST_SEQ} + 1)"),
        one_account,
    )
}

/// [`events_after_sql`] with `oldest` computed by the SQL expression `oldest`.
fn events_after_with(oldest: &str, one_account: bool) -> String {
    format!(
        "SELECT b.oldest, x.* FROM \
         (SELECT {oldest} AS oldest) b \
         LEFT JOIN LATERAL (SELECT e.seq, e.type, e.at, e.snapshot, {} FROM events e \
         JOIN items i ON i.id = e.item_id WHERE e.seq > $1 {} ORDER BY e.seq LIMIT $2) x \
         ON true ORDER BY x.seq",
        item_columns("i."),
        if one_account {
            "AND e.account_id = $3"
        } else {
            ""
        }
    )
}

static EVENTS_AFTER_ALL: LazyLock<String> = LazyLock::new(|| events_after_sql(false));
static EVENTS_AFTER_ONE: LazyLock<String> = LazyLock::new(|| events_after_sql(true));
/// One account's events once rows carry partitions (`$4`: its partition). The oldest
/// is one after what was pruned of the partition: its sequences leave gaps (at each
/// new epoch), so "the smallest retained" would report a gap where nothing was pruned.
static EVENTS_AFTER_PART: LazyLock<String> =
    LazyLock::new(|| events_after_with(&format!("{} + 1", pruned_through("$4")), true));

/// Outbox events with a sequence after `after` (of one account, or of all), at most
/// `limit`, oldest first, each with its item as it was right after the change; with
/// the oldest retained sequence read in the same snapshot (of the account's
/// `partition` once rows carry partitions: one after what was pruned of it).
///
/// # Errors
/// PostgreSQL errors, an item row that cannot be decoded included.
pub async fn events_after(
    c: &impl Conn,
    account: Option<&str>,
    after: u64,
    limit: usize,
    partition: Option<u32>,
) -> Result<EventsAfter, StoreError> {
    use prost::Message;
    let (after, limit) = (after as i64, limit as i64);
    let rows = match (account, partition) {
        (Some(a), Some(p)) => {
            query(c, &EVENTS_AFTER_PART, &[&after, &limit, &a, &(p as i32)]).await?
        }
        (Some(a), None) => query(c, &EVENTS_AFTER_ONE, &[&after, &limit, &a]).await?,
        (None, _) => query(c, &EVENTS_AFTER_ALL, &[&after, &limit]).await?,
    };
    let mut oldest = 1;
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        oldest = r.get::<_, i64>(0) as u64;
        let Some(seq) = r.get::<_, Option<i64>>(1) else {
            continue;
        };
        let kind: i16 = r.get(2);
        let snapshot: &[u8] = r.get(4);
        // The item columns follow the 5 columns before them.
        let mut item = item_at(r, 5)?;
        if let Ok(s) = ItemSnapshot::decode(snapshot) {
            s.apply_to(&mut item);
        }
        events.push(Event {
            sequence: seq as u64,
            kind: EventType::from_i64(kind.into()).unwrap_or(EventType::Updated),
            at: r.get(3),
            item,
        });
    }
    Ok(EventsAfter { events, oldest })
}

/// Reads what the engine rebuilds at start-up, streamed in one statement: every live
/// item's id and next send time (of the partitions `owned` only, when given) (each counted into `tickets`, which the caller then
/// marks ready), the live count of each account, the number of leased items, and the
/// dispatch controls.
///
/// # Errors
/// PostgreSQL errors.
pub async fn recovery_scan(
    c: &impl Conn,
    tickets: &LiveTickets,
    owned: Option<&[i32]>,
) -> Result<RecoveryScan, StoreError> {
    const COLUMNS: &str =
        "SELECT account_id, id, next_send_at, ticket_id, lease_expires_at IS NOT NULL FROM items";
    let sql = match owned {
        None => format!("{COLUMNS} WHERE state = 1"),
        Some(_) => format!("{COLUMNS} WHERE state = 1 AND partition = ANY($1)"),
    };
    let st = c.statements().get(c.client(), &sql).await?;
    let params: Vec<&(dyn ToSql + Sync)> = match &owned {
        None => Vec::new(),
        Some(parts) => vec![parts as &(dyn ToSql + Sync)],
    };
    let rows = c.client().query_raw(&st, params).await?;
    let mut rows = std::pin::pin!(rows);
    let mut timers: Vec<(ItemId, Millis)> = Vec::new();
    let mut live_counts: Vec<(String, u64)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut leased = 0;
    while let Some(r) = rows.try_next().await? {
        let account: &str = r.get(0);
        match live_counts.last_mut() {
            Some((a, n)) if a == account => *n += 1,
            _ => match index.get(account) {
                Some(&i) => live_counts[i].1 += 1,
                None => {
                    index.insert(account.to_owned(), live_counts.len());
                    live_counts.push((account.to_owned(), 1));
                }
            },
        }
        timers.push((r.get(1), r.get(2)));
        tickets.add(LiveTickets::slot(account, r.get(3)));
        if r.get::<_, bool>(4) {
            leased += 1;
        }
    }
    Ok(RecoveryScan {
        timers,
        live_counts,
        leased,
        controls: all_controls(c).await?,
    })
}

sql!(DUE_ITEMS, "SELECT {cols} FROM items WHERE id = ANY($1)");

/// The items of `ids` that have a row, whole, and the [`ItemMeta`] of those whose row
/// cannot be read as an item (it says why); in no particular order.
///
/// # Errors
/// PostgreSQL errors.
pub async fn due_items(
    c: &impl Conn,
    ids: &[ItemId],
) -> Result<(Vec<Item>, Vec<ItemMeta>), StoreError> {
    let rows = query(c, &DUE_ITEMS, &[&ids]).await?;
    let mut items = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for r in &rows {
        let s = stored_at(r, 0)?;
        let id = s.id;
        match s.decode() {
            Ok(item) => items.push(item),
            Err(_) => unreadable.push(id),
        }
    }
    let metas = if unreadable.is_empty() {
        Vec::new()
    } else {
        item_meta(c, &unreadable).await?
    };
    Ok((items, metas))
}

/// The [`ItemMeta`] of each of `ids` that has a row, in no particular order.
///
/// # Errors
/// PostgreSQL errors (a row that cannot be decoded is not one: see
/// [`ItemMeta::decoded`]).
pub async fn item_meta(c: &impl Conn, ids: &[ItemId]) -> Result<Vec<ItemMeta>, StoreError> {
    let rows = query(
        c,
        "SELECT id, account_id, channel, state, lease_expires_at, attempts, send_at, timing \
         FROM items WHERE id = ANY($1)",
        &[&ids],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let channel: i64 = r.get::<_, i16>(2).into();
        let state: i64 = r.get::<_, i16>(3).into();
        let lease_expires_at: Option<Millis> = r.get(4);
        let attempts = u32::try_from(r.get::<_, i32>(5)).unwrap_or(0);
        let timing = match r.get::<_, Option<&[u8]>>(7) {
            None => Some(Timing::default()),
            Some(b) => Timing::from_bytes(b),
        };
        let (decoded, attempts) = match (Channel::from_i64(channel), State::from_i64(state), timing)
        {
            (Some(ch), Some(s), Some(t)) => {
                let (s, a) = with_lease(s, attempts, lease_expires_at);
                (Ok((ch, s, t)), a)
            }
            _ => (
                Err(format!(
                    "stored item cannot be read (channel {channel}, state {state}, timing)"
                )),
                attempts,
            ),
        };
        out.push(ItemMeta {
            id: r.get(0),
            account: r.get(1),
            decoded,
            lease_expires_at,
            attempts,
            send_at: r.get(6),
        });
    }
    Ok(out)
}
