//! The SQL of the Scheduler's client reads: ListScheduled, ListDeferredTickets,
//! GetTicketTimeline, GetItem and the outbox events. Each function runs on a read-only
//! connection and maps rows to domain types; paging (page tokens, page sizes) and what
//! the caller is told stay in the engine.
//!
//! Listings are keyset-paged: a function takes the sort key of the last row the caller
//! saw (`after`) and returns at most `limit` rows after it in the listing's order, and
//! whether more follow ([`Rows::more`]).
//!
//! # Contract
//! These run inside [`Store::read`](super::Store::read), which answers only once what
//! was read is durable: a client never sees a commit that a power loss could take back.
//! [`Store::read_hint`](super::Store::read_hint) may see a commit whose fsync is still
//! running, and is for the engine's own hints only, never for these reads. Each
//! function reads one consistent snapshot; none writes.

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, Row};

use super::rows::{event_bounds, item_from_row, item_from_row_at, ItemSnapshot, ITEM_COLUMNS};
use super::StoreError;
use crate::domain::{
    DeferredTicket, Event, EventType, Item, ItemId, ListQuery, Millis, Order, State,
};
use crate::store::{EventsAfter, Rows};

pub use super::rows::get_item;

impl<T> Rows<T> {
    /// Keeps the first `limit` of `rows` (read with `LIMIT limit + 1`).
    fn of(mut rows: Vec<T>, limit: usize) -> Self {
        let more = rows.len() > limit;
        rows.truncate(limit);
        Rows { rows, more }
    }
}

/// `(comparison, direction)` of a keyset in `order`.
fn keyset(order: Order) -> (&'static str, &'static str) {
    match order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    }
}

/// ListScheduled: the account's items matching `q`'s filters (PENDING when `q.state` is
/// `None`), by next send time then id in `q.order`, at most `limit` after the key
/// `after` (`(next_send_at, id)` of the last item seen). `q.page_size` and
/// `q.page_token` are not read.
///
/// PENDING items are read from the partial index `items_live`, finished ones from
/// `items_done`; DISPATCHING ones from `leases` (only the jobs out at connectors).
///
/// # Errors
/// Storage errors, a row that cannot be decoded included.
pub fn list_items(
    conn: &Connection,
    q: &ListQuery,
    after: Option<(Millis, ItemId)>,
    limit: usize,
) -> Result<Rows<Item>, StoreError> {
    let state = q.state.unwrap_or(State::Pending);
    // PENDING items are listed from items_live, finished ones from items_done (the
    // literal WHERE terms let SQLite use those partial indexes). DISPATCHING is stored
    // as PENDING with a row in `leases`: those are listed from `leases`, which holds
    // only the jobs out at connectors (a sort of those, never a walk of every pending
    // item of the account; CROSS JOIN keeps SQLite from starting at items).
    let (from, filter, finished) = match state {
        State::Pending => (
            "items INDEXED BY items_live",
            "state IN (1, 2) AND NOT EXISTS (SELECT 1 FROM leases WHERE item = id)",
            None,
        ),
        State::Dispatching => (
            "leases CROSS JOIN items ON items.id = leases.item",
            "state = 1",
            None,
        ),
        other => (
            "items INDEXED BY items_done",
            "state NOT IN (1, 2) AND state = ?",
            Some(other),
        ),
    };
    let mut sql = format!(
        "SELECT {ITEM_COLUMNS}, next_send_at FROM {from} WHERE account_id = ? AND {filter}"
    );
    let mut args: Vec<Value> = vec![Value::Text(q.account_id.clone())];
    if let Some(state) = finished {
        args.push(Value::Integer(state.as_i64()));
    }
    if let Some(t) = &q.ticket_id {
        sql.push_str(" AND ticket_id = ?");
        args.push(Value::Text(t.clone()));
    }
    if let Some(c) = q.channel {
        sql.push_str(" AND channel = ?");
        args.push(Value::Integer(c.as_i64()));
    }
    if let Some(a) = &q.author_id {
        sql.push_str(" AND author_id = ?");
        args.push(Value::Text(a.clone()));
    }
    if let Some(k) = q.kind {
        sql.push_str(" AND kind = ?");
        args.push(Value::Integer(k.as_i64()));
    }
    if let Some(f) = q.send_at_from {
        sql.push_str(" AND next_send_at >= ?");
        args.push(Value::Integer(f));
    }
    if let Some(t) = q.send_at_to {
        sql.push_str(" AND next_send_at < ?");
        args.push(Value::Integer(t));
    }
    let (cmp, dir) = keyset(q.order);
    if let Some((at, id)) = after {
        sql.push_str(&format!(" AND (next_send_at, id) {cmp} (?, ?)"));
        args.push(Value::Integer(at));
        args.push(Value::Integer(id));
    }
    sql.push_str(&format!(
        " ORDER BY next_send_at {dir}, id {dir} LIMIT {}",
        limit + 1
    ));
    let mut st = conn.prepare_cached(&sql)?;
    let items: Vec<Item> = st
        .query_map(params_from_iter(args), item_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(Rows::of(items, limit))
}

/// ListDeferredTickets: the account's tickets with PENDING or DISPATCHING items, by
/// their earliest next send time then ticket id in `order`, at most `limit` after the
/// key `after` (`(next_send_at, ticket_id)` of the last ticket seen).
///
/// # Errors
/// Storage errors.
pub fn deferred_tickets(
    conn: &Connection,
    account: &str,
    order: Order,
    after: Option<(Millis, &str)>,
    limit: usize,
) -> Result<Rows<DeferredTicket>, StoreError> {
    let (cmp, dir) = keyset(order);
    let having = if after.is_some() {
        format!("HAVING (next_at, ticket_id) {cmp} (?2, ?3)")
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT ticket_id, MIN(next_send_at) AS next_at, COUNT(*) \
         FROM items INDEXED BY items_live \
         WHERE account_id = ?1 AND state IN (1, 2) GROUP BY ticket_id {having} \
         ORDER BY next_at {dir}, ticket_id {dir} LIMIT {}",
        limit + 1
    );
    let mut st = conn.prepare_cached(&sql)?;
    let map = |r: &Row| {
        Ok(DeferredTicket {
            ticket_id: r.get(0)?,
            next_send_at: r.get(1)?,
            pending_count: r.get::<_, i64>(2)? as u32,
        })
    };
    let tickets: Vec<DeferredTicket> = match after {
        Some((at, t)) => st
            .query_map(params![account, at, t], map)?
            .collect::<Result<_, _>>()?,
        None => st
            .query_map(params![account], map)?
            .collect::<Result<_, _>>()?,
    };
    Ok(Rows::of(tickets, limit))
}

/// For each of `tickets` of the account: the aggregate of [`deferred_tickets`] over
/// its live items other than `except` (the items whose rows are stale, counted by the
/// caller as they are now); tickets with none are left out.
///
/// # Errors
/// Storage errors.
pub fn ticket_aggregates_without(
    conn: &Connection,
    account: &str,
    tickets: &[String],
    except: &[ItemId],
) -> Result<Vec<DeferredTicket>, StoreError> {
    if tickets.is_empty() {
        return Ok(Vec::new());
    }
    let json = |v: serde_json::Value| v.to_string();
    let mut st = conn.prepare_cached(
        "SELECT ticket_id, MIN(next_send_at), COUNT(*) FROM items \
         WHERE account_id = ?1 AND ticket_id IN (SELECT value FROM json_each(?2)) \
         AND state IN (1, 2) AND id NOT IN (SELECT value FROM json_each(?3)) \
         GROUP BY ticket_id",
    )?;
    let rows = st.query_map(
        params![
            account,
            json(serde_json::json!(tickets)),
            json(serde_json::json!(except))
        ],
        |r| {
            Ok(DeferredTicket {
                ticket_id: r.get(0)?,
                next_send_at: r.get(1)?,
                pending_count: r.get::<_, i64>(2)? as u32,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// GetTicketTimeline: every item of the ticket, in no particular order (the domain's
/// `timeline` orders and filters them).
///
/// # Errors
/// Storage errors, a row that cannot be decoded included.
pub fn ticket_items(
    conn: &Connection,
    account: &str,
    ticket: &str,
) -> Result<Vec<Item>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS} FROM items INDEXED BY items_by_ticket \
         WHERE account_id = ?1 AND ticket_id = ?2"
    ))?;
    let rows = st.query_map(params![account, ticket], item_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// What changed, without the items: (sequence, type, item id, ticket id) of one
/// account's events after `after`, at most `limit`, oldest first. Reads only what a
/// change appends and what never changes (the ticket of an item), so it needs no
/// sweep of the rows (run it with [`super::Store::read_journal`]).
///
/// # Errors
/// Storage errors.
pub fn event_heads(
    conn: &Connection,
    account: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, EventType, ItemId, String)>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT e.seq, e.type, e.item_id, items.ticket_id FROM events e \
         JOIN items ON items.id = e.item_id \
         WHERE e.account_id = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3",
    )?;
    let rows = st.query_map(params![account, after as i64, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            EventType::from_i64(r.get(1)?).unwrap_or(EventType::Updated),
            r.get::<_, ItemId>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Outbox events with a sequence after `after` (of one account, or of all), at most
/// `limit`, oldest first, each with its item as it was right after the change; with
/// the oldest retained sequence read in the same snapshot, so the caller can tell that
/// events after `after` were pruned.
///
/// # Errors
/// Storage errors, an item row that cannot be decoded included.
pub fn events_after(
    conn: &Connection,
    account: Option<&str>,
    after: u64,
    limit: usize,
) -> Result<EventsAfter, StoreError> {
    use prost::Message;
    let sql = format!(
        "SELECT e.seq, e.type, e.at, e.snapshot, {} FROM events e \
         JOIN items ON items.id = e.item_id WHERE e.seq > ?1 {} ORDER BY e.seq LIMIT ?2",
        ITEM_COLUMNS
            .split(", ")
            .map(|c| {
                let c = c.trim();
                if c.starts_with('(') {
                    c.to_owned() // the lease subquery names items.id itself
                } else {
                    format!("items.{c}")
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        if account.is_some() {
            "AND e.account_id = ?3"
        } else {
            ""
        }
    );
    let mut st = conn.prepare_cached(&sql)?;
    let map = |r: &Row| -> rusqlite::Result<Event> {
        let seq: i64 = r.get(0)?;
        let kind: i64 = r.get(1)?;
        let at: i64 = r.get(2)?;
        let snap: Vec<u8> = r.get(3)?;
        // The item columns follow the 4 event columns.
        let mut item = item_from_row_at(r, 4)?;
        if let Ok(s) = ItemSnapshot::decode(snap.as_slice()) {
            s.apply_to(&mut item);
        }
        Ok(Event {
            sequence: seq as u64,
            kind: EventType::from_i64(kind).unwrap_or(EventType::Updated),
            at,
            item,
        })
    };
    // One snapshot for the events and the bounds: pruning between the two reads must
    // not hide a gap.
    let snapshot = conn.unchecked_transaction()?;
    let events = match account {
        Some(a) => st
            .query_map(params![after as i64, limit as i64, a], map)?
            .collect::<Result<Vec<_>, _>>()?,
        None => st
            .query_map(params![after as i64, limit as i64], map)?
            .collect::<Result<Vec<_>, _>>()?,
    };
    let (oldest, _) = event_bounds(conn)?;
    drop(snapshot);
    Ok(EventsAfter { events, oldest })
}
