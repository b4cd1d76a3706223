//! Row <-> domain mapping for `items` and `events`, and the SQL the writer and the
//! readers share. Every function takes a plain `&Connection` (the writer passes its open
//! transaction), uses cached statements, and never commits.

use prost::Message;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::domain::{
    Activity, AuthorKind, BusinessHours, Channel, Content, EventType, Item, ItemId, Kind, Millis,
    NewItem, OnActivity, State, Timing,
};

use super::StoreError;
use crate::store::codec::{at_rest, event_snapshot};
pub use crate::store::codec::{with_lease, ItemSnapshot};
use crate::store::{ControlRow, Decoded, LiveKey};

/// Columns of `items`, in the order [`item_from_row`] reads them; the lease's expiry
/// comes from `leases` (see [`LEASE_EXPIRES`]).
pub const ITEM_COLUMNS: &str = "id, account_id, ticket_id, kind, channel, author_id, content, \
    send_at, created_at, updated_at, state, on_activity, note_at, conv_author_kind, \
    conv_message_id, conv_occurred_at, attempts, last_error, next_attempt_at, \
    (SELECT expires_at FROM leases WHERE item = items.id), sent_at, provider_message_id, \
    request_id, timing";

/// How many columns [`ITEM_COLUMNS`] has (the next one is the first after the item).
pub const ITEM_COLUMN_COUNT: usize = 24;

/// The column of [`ITEM_COLUMNS`] that reads the item's lease, if any.
pub const LEASE_EXPIRES: &str = "(SELECT expires_at FROM leases WHERE item = items.id)";

/// Ends the item's lease; `true` when it had one.
pub fn delete_lease(conn: &Connection, id: ItemId) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM leases WHERE item = ?1")?
        .execute(params![id])?
        == 1)
}

fn bad(col: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Integer,
        format!("invalid stored {what}").into(),
    )
}

fn enum_col<T>(row: &Row, i: usize, what: &str, f: fn(i64) -> Option<T>) -> rusqlite::Result<T> {
    f(row.get(i)?).ok_or_else(|| bad(i, what))
}

/// Reads an item from a row selected with [`ITEM_COLUMNS`].
pub fn item_from_row(row: &Row) -> rusqlite::Result<Item> {
    item_from_row_at(row, 0)
}

/// Reads an item whose [`ITEM_COLUMNS`] start at column `o`.
pub fn item_from_row_at(row: &Row, o: usize) -> rusqlite::Result<Item> {
    debug_assert_eq!(
        ITEM_COLUMNS.split(", ").count(),
        ITEM_COLUMN_COUNT,
        "ITEM_COLUMN_COUNT is the length of ITEM_COLUMNS"
    );
    let content: Vec<u8> = row.get(o + 6)?;
    let converted_by = match row.get::<_, Option<i64>>(o + 13)? {
        Some(k) => Some(Activity {
            author_kind: AuthorKind::from_i64(k).ok_or_else(|| bad(o + 13, "author kind"))?,
            message_id: row.get::<_, Option<String>>(o + 14)?.unwrap_or_default(),
            occurred_at: row.get::<_, Option<i64>>(o + 15)?.unwrap_or_default(),
        }),
        None => None,
    };
    let lease_expires_at: Option<Millis> = row.get(o + 19)?;
    let (state, attempts) = with_lease(
        enum_col(row, o + 10, "state", State::from_i64)?,
        row.get(o + 16)?,
        lease_expires_at,
    );
    Ok(Item {
        id: row.get(o)?,
        account_id: row.get(o + 1)?,
        ticket_id: row.get(o + 2)?,
        kind: enum_col(row, o + 3, "kind", Kind::from_i64)?,
        channel: enum_col(row, o + 4, "channel", Channel::from_i64)?,
        author_id: row.get(o + 5)?,
        content: Content::from_bytes(&content).ok_or_else(|| bad(o + 6, "content"))?,
        send_at: row.get(o + 7)?,
        created_at: row.get(o + 8)?,
        updated_at: row.get(o + 9)?,
        state,
        on_activity: enum_col(row, o + 11, "on_activity", OnActivity::from_i64)?,
        note_at: row.get(o + 12)?,
        converted_by,
        attempts,
        last_error: row.get(o + 17)?,
        next_attempt_at: row.get(o + 18)?,
        lease_expires_at,
        sent_at: row.get(o + 20)?,
        provider_message_id: row.get(o + 21)?,
        request_id: row.get(o + 22)?,
        timing: match row.get::<_, Option<Vec<u8>>>(o + 23)? {
            Some(b) => Timing::from_bytes(&b).ok_or_else(|| bad(o + 23, "timing"))?,
            None => Timing::default(),
        },
    })
}

/// The item by id read as far as its row can be decoded, every column that cannot be
/// read as its default (no content, an email reply, ...): for failing an unreadable
/// item through the state machine. `None` when there is no such row, or its state or
/// account cannot be read (nothing can be decided for it).
pub fn get_item_lenient(conn: &Connection, id: ItemId) -> Result<Option<Item>, StoreError> {
    let mut st = conn.prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1"))?;
    Ok(st
        .query_row(params![id], |r| Ok(item_from_row_lenient(r)))
        .optional()?
        .flatten())
}

fn item_from_row_lenient(row: &Row) -> Option<Item> {
    let lease_expires_at: Option<Millis> = row.get(19).ok().flatten();
    let (state, attempts) = with_lease(
        State::from_i64(row.get(10).ok()?)?,
        row.get(16).unwrap_or(0),
        lease_expires_at,
    );
    let channel = row
        .get(4)
        .ok()
        .and_then(Channel::from_i64)
        .unwrap_or(Channel::Email);
    Some(Item {
        id: row.get(0).ok()?,
        account_id: row.get(1).ok()?,
        ticket_id: row.get(2).unwrap_or_default(),
        kind: row
            .get(3)
            .ok()
            .and_then(Kind::from_i64)
            .unwrap_or(Kind::Reply),
        channel,
        author_id: row.get(5).unwrap_or_default(),
        content: row
            .get::<_, Vec<u8>>(6)
            .ok()
            .and_then(|b| Content::from_bytes(&b))
            .unwrap_or_else(|| match channel {
                Channel::Email => Content::Email(Default::default()),
                Channel::Chat => Content::Chat(Default::default()),
            }),
        send_at: row.get(7).unwrap_or_default(),
        created_at: row.get(8).unwrap_or_default(),
        updated_at: row.get(9).unwrap_or_default(),
        state,
        on_activity: row
            .get(11)
            .ok()
            .and_then(OnActivity::from_i64)
            .unwrap_or(OnActivity::Keep),
        note_at: row.get(12).ok().flatten(),
        converted_by: None,
        attempts,
        last_error: row.get(17).ok().flatten(),
        next_attempt_at: row.get(18).ok().flatten(),
        lease_expires_at,
        sent_at: row.get(20).ok().flatten(),
        provider_message_id: row.get(21).ok().flatten(),
        request_id: row.get(22).ok().flatten(),
        timing: row
            .get::<_, Option<Vec<u8>>>(23)
            .ok()
            .flatten()
            .and_then(|b| Timing::from_bytes(&b))
            .unwrap_or_default(),
    })
}

/// Inserts a new PENDING item, due at `send_at` (the request's time after its delivery
/// window) with `timing`; returns its id. The idempotency fingerprint is the request's.
pub fn insert_item(
    conn: &Connection,
    n: &NewItem,
    send_at: Millis,
    timing: &Timing,
    now: Millis,
) -> Result<ItemId, StoreError> {
    let mut st = conn.prepare_cached(
        "INSERT INTO items (account_id, ticket_id, kind, channel, author_id, content, send_at, \
         next_send_at, created_at, updated_at, state, on_activity, request_id, request_fp, \
         timing) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    st.execute(params![
        n.account_id,
        n.ticket_id,
        n.kind.as_i64(),
        n.channel.as_i64(),
        n.author_id,
        n.content.to_bytes(),
        send_at,
        now,
        State::Pending.as_i64(),
        n.on_activity.as_i64(),
        n.request_id,
        n.request_id.as_ref().map(|_| n.fingerprint() as i64),
        timing.to_bytes(),
    ])?;
    Ok(conn.last_insert_rowid())
}

/// The item with this id, if it belongs to the account.
pub fn get_item(conn: &Connection, account: &str, id: ItemId) -> Result<Option<Item>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1 AND account_id = ?2"
    ))?;
    Ok(st
        .query_row(params![id, account], item_from_row)
        .optional()?)
}

/// The item with this id, whatever its account (dispatch path).
#[cfg(test)]
pub fn get_item_any(conn: &Connection, id: ItemId) -> Result<Option<Item>, StoreError> {
    let mut st = conn.prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1"))?;
    Ok(st.query_row(params![id], item_from_row).optional()?)
}

/// The item by id, telling a row that cannot be decoded (a bad stored value) apart
/// from a storage error: `Some(Err(why))`.
pub fn get_item_checked(
    conn: &Connection,
    id: ItemId,
) -> Result<Option<Result<Item, String>>, StoreError> {
    let mut st = conn.prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1"))?;
    Ok(st
        .query_row(params![id], |r| {
            Ok(item_from_row(r).map_err(|e| e.to_string()))
        })
        .optional()?)
}

/// Fails a live item whose row cannot be decoded, without decoding it: FAILED with
/// `last_error`, lease gone. Returns its account when it was live.
pub fn fail_unreadable(
    conn: &Connection,
    id: ItemId,
    why: &str,
    now: Millis,
) -> Result<Option<String>, StoreError> {
    delete_lease(conn, id)?;
    Ok(conn
        .prepare_cached(
            "UPDATE items SET state = ?1, last_error = ?2, next_attempt_at = NULL, \
             next_send_at = send_at, updated_at = ?3 WHERE id = ?4 AND state IN (1, 2) \
             RETURNING account_id",
        )?
        .query_row(params![State::Failed.as_i64(), why, now, id], |r| r.get(0))
        .optional()?)
}

/// Deletes the oldest events up to the first one at or after `?1` (the cutoff time),
/// at most `?2` of them: a walk of the sequence (the primary key) from its start,
/// never a scan of the table by time (`at` has no index).
/// Events past the sweep watermark are kept whatever their age: start-up replays them.
pub const PRUNE_EVENTS: &str = "DELETE FROM events WHERE seq < ( \
    SELECT COALESCE(MIN(CASE WHEN at >= ?1 THEN seq END), MAX(seq) + 1) \
    FROM (SELECT seq, at FROM events ORDER BY seq LIMIT ?2)) \
    AND seq <= (SELECT swept_seq FROM sweep_mark)";

/// Runs [`PRUNE_EVENTS`]; returns how many events were deleted.
pub fn prune_events(conn: &Connection, cutoff: Millis, batch: u32) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(PRUNE_EVENTS)?
        .execute(params![cutoff, batch])?)
}

/// Ids of every live (PENDING or DISPATCHING) item.
pub fn live_item_ids(conn: &Connection) -> Result<Vec<ItemId>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT id FROM items INDEXED BY items_live WHERE state IN (1, 2) ORDER BY id",
    )?;
    let ids = st
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<ItemId>, _>>()?;
    Ok(ids)
}

/// The oldest retained event sequence, and the last one ever written (0 when none):
/// events after `last` do not exist yet; those before `oldest` were pruned.
pub fn event_bounds(conn: &Connection) -> Result<(u64, u64), StoreError> {
    let last: i64 = conn.query_row(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        [],
        |r| r.get(0),
    )?;
    let oldest: Option<i64> = conn.query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))?;
    Ok((oldest.unwrap_or(last + 1) as u64, last as u64))
}

/// The business hours of an account, if set.
pub fn get_business_hours(
    conn: &Connection,
    account: &str,
) -> Result<Option<BusinessHours>, StoreError> {
    let spec: Option<String> = conn
        .prepare_cached("SELECT spec FROM business_hours WHERE account_id = ?1")?
        .query_row(params![account], |r| r.get(0))
        .optional()?;
    match spec {
        None => Ok(None),
        Some(s) => BusinessHours::decode(&s).map(Some).map_err(|e| {
            StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                e.to_string().into(),
            ))
        }),
    }
}

/// Sets (replaces) the business hours of an account.
pub fn put_business_hours(
    conn: &Connection,
    account: &str,
    hours: &BusinessHours,
    now: Millis,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO business_hours (account_id, spec, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (account_id) DO UPDATE SET spec = excluded.spec, \
         updated_at = excluded.updated_at",
    )?
    .execute(params![account, hours.encode(), now])?;
    Ok(())
}

/// Where the account's re-resolution of business-hours items stands: `Some(after)`
/// while one is under way (the key `(next_send_at, id)` of the last item it walked;
/// `(Millis::MIN, 0)` before the first), `None` when none is.
pub fn rewindow_cursor(
    conn: &Connection,
    account: &str,
) -> Result<Option<(Millis, ItemId)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT rewindow_at, rewindow_id FROM business_hours \
             WHERE account_id = ?1 AND rewindow_at IS NOT NULL",
        )?
        .query_row(params![account], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Sets (or, with `None`, ends) the account's re-resolution cursor.
pub fn set_rewindow_cursor(
    conn: &Connection,
    account: &str,
    cursor: Option<(Millis, ItemId)>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE business_hours SET rewindow_at = ?2, rewindow_id = ?3 WHERE account_id = ?1",
    )?
    .execute(params![account, cursor.map(|c| c.0), cursor.map(|c| c.1)])?;
    Ok(())
}

/// Accounts whose re-resolution of business-hours items is under way.
pub fn rewindows_under_way(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT account_id FROM business_hours WHERE rewindow_at IS NOT NULL ORDER BY account_id",
    )?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Up to `limit` of the account's live items by their rows, after the key `after` in
/// `(next_send_at, id)` order (the `items_live` index), each with its row's key; a row
/// that cannot be decoded is `None` (with its key, so a walk goes past it).
pub fn live_items_after(
    conn: &Connection,
    account: &str,
    after: LiveKey,
    limit: usize,
) -> Result<Vec<(LiveKey, Option<Item>)>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT next_send_at, id, {ITEM_COLUMNS} FROM items INDEXED BY items_live \
         WHERE account_id = ?1 AND state IN (1, 2) AND (next_send_at, id) > (?2, ?3) \
         ORDER BY next_send_at, id LIMIT ?4"
    ))?;
    let rows = st.query_map(params![account, after.0, after.1, limit as i64], |r| {
        Ok(((r.get(0)?, r.get(1)?), item_from_row_at(r, 2).ok()))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every stored control (read at start-up; a handful of rows).
pub fn all_controls(conn: &Connection) -> Result<Vec<ControlRow>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT account_id, channel, paused, per_minute FROM dispatch_controls \
         WHERE paused != 0 OR per_minute != 0",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (account_id, channel, paused, per_minute) = r?;
        let channel = Channel::from_i64(channel).ok_or_else(|| bad(1, "channel"))?;
        out.push(ControlRow {
            account_id,
            channel,
            paused: paused != 0,
            per_minute: u32::try_from(per_minute).unwrap_or(u32::MAX),
        });
    }
    Ok(out)
}

/// Sets the pause flag (`Some`) and/or the rate limit (`Some`) of one account and
/// channel, keeping the other part.
pub fn put_control(
    conn: &Connection,
    account: &str,
    channel: Channel,
    paused: Option<bool>,
    per_minute: Option<u32>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO dispatch_controls (account_id, channel, paused, per_minute) \
         VALUES (?1, ?2, COALESCE(?3, 0), COALESCE(?4, 0)) \
         ON CONFLICT (account_id, channel) DO UPDATE SET \
         paused = COALESCE(?3, paused), per_minute = COALESCE(?4, per_minute)",
    )?
    .execute(params![account, channel.as_i64(), paused, per_minute])?;
    Ok(())
}

/// The item holding this idempotency key, with the fingerprint of its request.
pub fn find_by_request(
    conn: &Connection,
    account: &str,
    request_id: &str,
) -> Result<Option<(Item, u64)>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS}, request_fp FROM items WHERE account_id = ?1 AND request_id = ?2"
    ))?;
    Ok(st
        .query_row(params![account, request_id], |r| {
            Ok((
                item_from_row(r)?,
                r.get::<_, i64>(ITEM_COLUMN_COUNT)? as u64,
            ))
        })
        .optional()?)
}

/// Writes every mutable field of `item` back (content, times, state, delivery fields).
/// A DISPATCHING item is stored as what it is at rest, PENDING with the attempts that
/// ended: its lease is a row of `leases`.
pub fn update_item(conn: &Connection, item: &Item) -> Result<(), StoreError> {
    let (state, attempts) = at_rest(item);
    let mut st = conn.prepare_cached(
        "UPDATE items SET content = ?2, send_at = ?3, next_send_at = ?4, updated_at = ?5, \
         state = ?6, on_activity = ?7, note_at = ?8, conv_author_kind = ?9, \
         conv_message_id = ?10, conv_occurred_at = ?11, attempts = ?12, last_error = ?13, \
         next_attempt_at = ?14, sent_at = ?15, provider_message_id = ?16, timing = ?17 \
         WHERE id = ?1",
    )?;
    let conv = item.converted_by.as_ref();
    st.execute(params![
        item.id,
        item.content.to_bytes(),
        item.send_at,
        item.next_send_at(),
        item.updated_at,
        state.as_i64(),
        item.on_activity.as_i64(),
        item.note_at,
        conv.map(|a| a.author_kind.as_i64()),
        conv.map(|a| a.message_id.as_str()),
        conv.map(|a| a.occurred_at),
        attempts,
        item.last_error,
        item.next_attempt_at,
        item.sent_at,
        item.provider_message_id,
        item.timing.to_bytes(),
    ])?;
    Ok(())
}

/// Whether `message_id` (one of our item ids, or a provider message id) is an item of
/// the ticket.
pub fn is_own_message(
    conn: &Connection,
    account: &str,
    ticket: &str,
    message_id: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM items INDEXED BY items_by_ticket \
             WHERE account_id = ?1 AND ticket_id = ?2 \
             AND (id = ?3 OR provider_message_id = ?4))",
        )?
        .query_row(
            params![
                account,
                ticket,
                crate::domain::parse_item_id(message_id).unwrap_or(-1),
                message_id
            ],
            |r| r.get(0),
        )?)
}

/// The ticket's replies whose row is PENDING, created before `before`, oldest first
/// (one with a lease reads as DISPATCHING).
pub fn pending_replies(
    conn: &Connection,
    account: &str,
    ticket: &str,
    before: Millis,
) -> Result<Vec<Decoded>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS} FROM items INDEXED BY items_by_ticket \
         WHERE account_id = ?1 AND ticket_id = ?2 AND created_at < ?3 \
         AND state = ?4 AND kind = ?5 ORDER BY created_at, id"
    ))?;
    let rows = st.query_map(
        params![
            account,
            ticket,
            before,
            State::Pending.as_i64(),
            Kind::Reply.as_i64()
        ],
        // A row that cannot be decoded is told apart (by its id), to fail alone.
        |r| Ok(item_from_row(r).map_err(|e| (r.get::<_, ItemId>(0), e.to_string()))),
    )?;
    // A PENDING row with a lease reads as DISPATCHING; the caller keeps the items
    // that are PENDING now (`Tx::pending_replies`).
    let mut out = Vec::new();
    for r in rows {
        out.push(match r? {
            Ok(item) => Ok(item),
            Err((id, why)) => Err((id?, why)),
        });
    }
    Ok(out)
}

/// Appends an event for `item`; returns its sequence number. The snapshot carries
/// every mutable field of the item (the content too for an UPDATED event), so the
/// events past the sweep watermark rebuild the rows ([`replay`]).
pub fn insert_event(
    conn: &Connection,
    kind: EventType,
    item: &Item,
    now: Millis,
) -> Result<u64, StoreError> {
    let mut st = conn.prepare_cached(
        "INSERT INTO events (account_id, item_id, type, at, snapshot) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    st.execute(params![
        item.account_id,
        item.id,
        kind.as_i64(),
        now,
        event_snapshot(kind, item)
    ])?;
    Ok(conn.last_insert_rowid() as u64)
}

/// Writes items back (a sweep of the overlay, in id order): each row and its lease,
/// then the watermark, the last event sequence the rows reflect.
pub fn sweep<'a>(
    conn: &Connection,
    items: impl IntoIterator<Item = &'a Item>,
    mark: Option<u64>,
) -> Result<(), StoreError> {
    for item in items {
        write_back(conn, item)?;
    }
    // `mark`: the rows reflect the events up to it; none: every event.
    conn.prepare_cached(
        "UPDATE sweep_mark SET swept_seq = COALESCE(?1, (SELECT COALESCE(MAX(seq), 0) FROM events))",
    )?
    .execute(params![mark.map(|m| m as i64)])?;
    Ok(())
}

/// Writes one item's row and its lease as they are now.
fn write_back(conn: &Connection, item: &Item) -> Result<(), StoreError> {
    update_item(conn, item)?;
    match (item.state, item.lease_expires_at) {
        (State::Dispatching, Some(at)) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO leases (item, expires_at) VALUES (?1, ?2)",
            )?
            .execute(params![item.id, at])?;
        }
        _ => {
            delete_lease(conn, item.id)?;
        }
    }
    Ok(())
}

/// Replays the events past the sweep watermark onto the rows (start-up, before
/// anything reads them); returns how many events it applied.
///
/// An event whose snapshot cannot be decoded leaves the item as the events before it
/// made it, and an item still live then ends FAILED (with the reason in last_error and
/// a FAILED event of its own): its real state after that event is unknown (it may
/// have been cancelled), so it is never sent on a guess.
pub fn replay(conn: &Connection) -> Result<usize, StoreError> {
    let mark: i64 = conn.query_row("SELECT swept_seq FROM sweep_mark", [], |r| r.get(0))?;
    let events: Vec<(i64, ItemId, Millis, Vec<u8>)> = conn
        .prepare("SELECT seq, item_id, at, snapshot FROM events WHERE seq > ?1 ORDER BY seq")?
        .query_map(params![mark], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut latest: std::collections::BTreeMap<ItemId, Item> = std::collections::BTreeMap::new();
    // Items with an event that cannot be decoded: the first such event and its time.
    let mut lost: std::collections::BTreeMap<ItemId, (i64, Millis)> = Default::default();
    for (seq, id, at, snap) in &events {
        if !latest.contains_key(id) {
            match get_item_checked(conn, *id)? {
                Some(Ok(i)) => {
                    latest.insert(*id, i);
                }
                Some(Err(why)) => {
                    tracing::error!(item = id, seq, reason = %why, "cannot replay an event onto an unreadable row");
                    continue;
                }
                None => continue,
            }
        }
        let Some(item) = latest.get_mut(id) else {
            continue;
        };
        match ItemSnapshot::decode(snap.as_slice()) {
            Ok(s) => s.apply_to(item),
            Err(e) => {
                tracing::error!(item = id, seq, error = ?e, "a journalled event cannot be decoded");
                lost.entry(*id).or_insert((*seq, *at));
            }
        }
    }
    for (id, (seq, at)) in lost {
        let Some(item) = latest.get_mut(&id) else {
            continue;
        };
        if item.state.is_live() {
            item.state = State::Failed;
            item.last_error = Some(format!(
                "journal event {seq} of this item cannot be decoded; its state after it is unknown"
            ));
            item.lease_expires_at = None;
            item.next_attempt_at = None;
            item.updated_at = item.updated_at.max(at);
            insert_event(conn, EventType::Failed, item, item.updated_at)?;
        }
    }
    let items: Vec<Item> = latest.into_values().collect();
    sweep(conn, &items, None)?;
    Ok(events.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EmailContent;

    fn new_item(account: &str) -> NewItem {
        NewItem {
            account_id: account.into(),
            ticket_id: "T1".into(),
            kind: Kind::Reply,
            channel: Channel::Email,
            author_id: "u".into(),
            content: Content::Email(EmailContent {
                subject: "first".into(),
                ..Default::default()
            }),
            send_at: 10_000,
            on_activity: OnActivity::ConvertToNote,
            request_id: None,
            timing: Timing::default(),
        }
    }

    /// The journal rebuilds the rows: changes that were only appended as events (the
    /// process died before a sweep wrote them back) are on the rows after a replay, in
    /// event order, leases included; the watermark then covers them.
    #[test]
    fn a_replay_puts_the_journalled_changes_on_the_rows() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        let n = new_item("acme");
        let a = insert_item(&c, &n, 10_000, &Timing::default(), 1).unwrap();
        let b = insert_item(&c, &n, 20_000, &Timing::default(), 1).unwrap();
        let d = insert_item(&c, &n, 30_000, &Timing::default(), 1).unwrap();
        let get = |id| get_item_any(&c, id).unwrap().unwrap();
        // Written back: a's lease (a sweep), so the watermark is past it.
        let mut ia = get(a);
        ia.state = State::Dispatching;
        ia.attempts = 1;
        ia.lease_expires_at = Some(40_000);
        insert_event(&c, EventType::Dispatching, &ia, 10_000).unwrap();
        sweep(&c, std::slice::from_ref(&ia), None).unwrap();
        // Journalled only: a is sent, b is edited (new content, a local time) and
        // leased, d is cancelled.
        let mut sent = ia.clone();
        sent.state = State::Sent;
        sent.lease_expires_at = None;
        sent.sent_at = Some(11_000);
        sent.provider_message_id = Some("p-1".into());
        insert_event(&c, EventType::Sent, &sent, 11_000).unwrap();
        let mut ib = get(b);
        ib.content = Content::Email(EmailContent {
            subject: "edited".into(),
            ..Default::default()
        });
        ib.timing.max_lateness = Some(5_000);
        ib.send_at = 25_000;
        insert_event(&c, EventType::Updated, &ib, 12_000).unwrap();
        ib.state = State::Dispatching;
        ib.attempts = 1;
        ib.lease_expires_at = Some(55_000);
        insert_event(&c, EventType::Dispatching, &ib, 25_000).unwrap();
        let mut id_ = get(d);
        id_.state = State::Cancelled;
        insert_event(&c, EventType::Cancelled, &id_, 13_000).unwrap();
        // The rows do not know yet.
        assert_eq!(get(a).state, State::Dispatching);
        assert_eq!(get(b).state, State::Pending);
        assert_eq!(get(d).state, State::Pending);

        assert_eq!(replay(&c).unwrap(), 4);
        let ra = get(a);
        assert_eq!(
            (ra.state, ra.sent_at, ra.lease_expires_at),
            (State::Sent, Some(11_000), None)
        );
        assert_eq!(ra.provider_message_id.as_deref(), Some("p-1"));
        assert_eq!(
            get(b),
            ib,
            "content, timing, send time and lease all replayed"
        );
        assert_eq!(get(d).state, State::Cancelled);
        // Nothing left past the watermark.
        assert_eq!(replay(&c).unwrap(), 0);
    }

    /// An event whose snapshot cannot be decoded must not make the replay forget the
    /// item's earlier changes (they were dropped with it, and the row kept its older
    /// content and state), nor leave the item live on a state the journal cannot
    /// vouch for: it ends FAILED with the reason and an event of its own.
    #[test]
    fn a_replay_keeps_the_changes_before_an_unreadable_snapshot_and_fails_the_item() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        let n = new_item("acme");
        let x = insert_item(&c, &n, 10_000, &Timing::default(), 1).unwrap();
        let mut ix = get_item_any(&c, x).unwrap().unwrap();
        ix.content = Content::Email(EmailContent {
            subject: "edited".into(),
            ..Default::default()
        });
        ix.send_at = 25_000;
        insert_event(&c, EventType::Updated, &ix, 12_000).unwrap();
        let bad = insert_event(&c, EventType::Cancelled, &ix, 13_000).unwrap();
        c.execute(
            "UPDATE events SET snapshot = x'ffffffff' WHERE seq = ?1",
            [bad as i64],
        )
        .unwrap();
        assert_eq!(replay(&c).unwrap(), 2);
        let rx = get_item_any(&c, x).unwrap().unwrap();
        assert_eq!(
            rx.content, ix.content,
            "the edit before the bad event is kept"
        );
        assert_eq!(rx.send_at, 25_000);
        assert_eq!(
            rx.state,
            State::Failed,
            "never sent on a state the journal lost"
        );
        assert!(
            rx.last_error
                .as_deref()
                .unwrap_or("")
                .contains(&format!("event {bad}")),
            "{:?}",
            rx.last_error
        );
        let (ty, seq): (i64, i64) = c
            .query_row(
                "SELECT type, seq FROM events WHERE item_id = ?1 ORDER BY seq DESC LIMIT 1",
                [x],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(ty, EventType::Failed.as_i64());
        assert!(seq > bad as i64);
        // Nothing left past the watermark: the failure is on the row.
        assert_eq!(replay(&c).unwrap(), 0);
    }

    /// Pruning walks the sequence from its start and stops at the first recent event:
    /// with a large table of recent events it does a bounded amount of work, where a
    /// search by time (`at` has no index) scans every row inside the writer.
    #[test]
    fn pruning_reads_a_bounded_prefix_of_the_events_not_the_whole_table() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) \
             INSERT INTO events (account_id, item_id, type, at, snapshot) \
             SELECT 'a', i, 1, CASE WHEN i <= 150 THEN 10 ELSE 1000 END, x'' FROM n;
             UPDATE sweep_mark SET swept_seq = 200000",
        )
        .unwrap();
        let mut st = c.prepare(PRUNE_EVENTS).unwrap();
        // 150 old events, batches of 100: a full batch, the rest, then nothing left
        // (the case where a search by time reads the whole table).
        for want in [100, 50, 0] {
            st.reset_status(rusqlite::StatementStatus::VmStep);
            assert_eq!(st.execute(params![500, 100]).unwrap(), want);
            let steps = st.get_status(rusqlite::StatementStatus::VmStep);
            assert!(
                steps < 20_000,
                "pruning took {steps} VM steps for a 100-event batch"
            );
        }
        let oldest: i64 = c
            .query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(oldest, 151);
        // Events the rows do not reflect yet are kept however old: start-up replays them.
        c.execute_batch(
            "UPDATE events SET at = 10 WHERE seq <= 300; UPDATE sweep_mark SET swept_seq = 200",
        )
        .unwrap();
        assert_eq!(st.execute(params![500, 1000]).unwrap(), 50);
        let oldest: i64 = c
            .query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(oldest, 201);
    }
}
