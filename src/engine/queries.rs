//! The Scheduler's reads, on the store's read-only connections.
//!
//! Pagination is keyset-based: a page token names the sort key of the last row
//! returned, so pages stay stable while items are added or removed around them (no
//! skipped or repeated rows, unlike OFFSET). Tokens are opaque to callers and carry
//! the order they were made for.

use rusqlite::types::Value;
use rusqlite::Connection;

use super::Engine;
use crate::domain::{self, Channel, Error, EventType, Item, ItemId, Kind, Millis, State};
use crate::store::rows::{event_bounds, get_item, item_from_row, ItemSnapshot, ITEM_COLUMNS};

/// Sort order of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// Who looks at a timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Audience {
    #[default]
    Staff,
    Client,
}

/// ListScheduled filters.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub account_id: String,
    pub state: Option<State>,
    pub ticket_id: Option<String>,
    pub channel: Option<Channel>,
    pub author_id: Option<String>,
    pub kind: Option<Kind>,
    /// Inclusive lower bound on the next send time.
    pub send_at_from: Option<Millis>,
    /// Exclusive upper bound on the next send time.
    pub send_at_to: Option<Millis>,
    pub order: Order,
    /// 0 = default.
    pub page_size: u32,
    pub page_token: String,
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// A ticket in the "Deferred sending" view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredTicket {
    pub ticket_id: String,
    pub next_send_at: Millis,
    pub pending_count: u32,
}

/// An event of the outbox with the item as it was right after the change.
#[derive(Debug, Clone)]
pub struct Event {
    pub sequence: u64,
    pub kind: EventType,
    pub at: Millis,
    pub item: Item,
}

fn order_tag(o: Order) -> char {
    match o {
        Order::Asc => 'a',
        Order::Desc => 'd',
    }
}

fn bad_token() -> Error {
    Error::invalid("page_token", "is not a token returned by this listing")
}

/// `v1.<order>.<millis>.<hex of key>`.
fn make_token(order: Order, at: Millis, key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1.{}.{at}.{hex}", order_tag(order))
}

fn parse_token(token: &str, order: Order) -> domain::Result<(Millis, Vec<u8>)> {
    let mut parts = token.splitn(4, '.');
    let (Some("v1"), Some(o), Some(at), Some(hex)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_token());
    };
    if o.len() != 1 || !o.starts_with(order_tag(order)) {
        return Err(Error::invalid(
            "page_token",
            "was made for the other sort order",
        ));
    }
    let at: Millis = at.parse().map_err(|_| bad_token())?;
    if hex.len() % 2 != 0 || hex.len() > 1024 {
        return Err(bad_token());
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad_token())?;
    Ok((at, key))
}

impl Engine {
    fn page_size(&self, requested: u32) -> usize {
        let l = &self.inner.limits;
        match requested {
            0 => l.default_page_size,
            n => n.min(l.max_page_size),
        }
        .max(1) as usize
    }

    /// GetItem.
    ///
    /// # Errors
    /// `NotFound`, also for an item of another account.
    pub async fn get(&self, account: String, id: ItemId) -> domain::Result<Item> {
        self.inner
            .store
            .read(move |conn| {
                get_item(conn, &account, id)?.ok_or_else(|| {
                    Error::NotFound(format!("item {} not found", domain::format_item_id(id)))
                })
            })
            .await
    }

    /// ListScheduled.
    ///
    /// # Errors
    /// A malformed page token.
    pub async fn list(&self, q: ListQuery) -> domain::Result<Page<Item>> {
        domain::validate_id("account_id", &q.account_id)?;
        let limit = self.page_size(q.page_size);
        let after = if q.page_token.is_empty() {
            None
        } else {
            let (at, key) = parse_token(&q.page_token, q.order)?;
            let id = std::str::from_utf8(&key)
                .ok()
                .and_then(|s| s.parse::<ItemId>().ok())
                .ok_or_else(bad_token)?;
            Some((at, id))
        };
        self.inner
            .store
            .read(move |conn| list_items(conn, &q, after, limit))
            .await
    }

    /// ListDeferredTickets: tickets with PENDING or DISPATCHING items, by next send time.
    ///
    /// # Errors
    /// A malformed page token.
    pub async fn deferred_tickets(
        &self,
        account: String,
        order: Order,
        page_size: u32,
        page_token: String,
    ) -> domain::Result<Page<DeferredTicket>> {
        domain::validate_id("account_id", &account)?;
        let limit = self.page_size(page_size);
        let after = if page_token.is_empty() {
            None
        } else {
            let (at, key) = parse_token(&page_token, order)?;
            Some((at, String::from_utf8(key).map_err(|_| bad_token())?))
        };
        self.inner
            .store
            .read(move |conn| {
                let (cmp, dir) = match order {
                    Order::Asc => (">", "ASC"),
                    Order::Desc => ("<", "DESC"),
                };
                let having = if after.is_some() {
                    format!("HAVING (next_at, ticket_id) {cmp} (?2, ?3)")
                } else {
                    String::new()
                };
                let sql = format!(
                    "SELECT ticket_id, MIN(next_send_at) AS next_at, COUNT(*) \
                     FROM items INDEXED BY items_deferred \
                     WHERE account_id = ?1 AND state IN (1, 2) GROUP BY ticket_id {having} \
                     ORDER BY next_at {dir}, ticket_id {dir} LIMIT {}",
                    limit + 1
                );
                let mut st = conn.prepare_cached(&sql)?;
                let map = |r: &rusqlite::Row| {
                    Ok(DeferredTicket {
                        ticket_id: r.get(0)?,
                        next_send_at: r.get(1)?,
                        pending_count: r.get::<_, i64>(2)? as u32,
                    })
                };
                let mut tickets: Vec<DeferredTicket> = match &after {
                    Some((at, t)) => st
                        .query_map(rusqlite::params![account, at, t], map)?
                        .collect::<Result<_, _>>()?,
                    None => st
                        .query_map(rusqlite::params![account], map)?
                        .collect::<Result<_, _>>()?,
                };
                let next_page_token = if tickets.len() > limit {
                    tickets.truncate(limit);
                    let last = &tickets[limit - 1];
                    make_token(order, last.next_send_at, last.ticket_id.as_bytes())
                } else {
                    String::new()
                };
                Ok(Page {
                    items: tickets,
                    next_page_token,
                })
            })
            .await
    }

    /// GetTicketTimeline.
    ///
    /// # Errors
    /// `NotFound` for the client when the ticket is an unsent scheduled NEW_TICKET.
    pub async fn timeline(
        &self,
        account: String,
        ticket: String,
        audience: Audience,
    ) -> domain::Result<Vec<Item>> {
        domain::validate_id("account_id", &account)?;
        domain::validate_id("ticket_id", &ticket)?;
        let items: Vec<Item> = self
            .inner
            .store
            .read(move |conn| {
                let mut st = conn.prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM items INDEXED BY items_by_ticket \
                     WHERE account_id = ?1 AND ticket_id = ?2"
                ))?;
                let rows = st.query_map(rusqlite::params![account, ticket], item_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        domain::timeline(items, audience == Audience::Client)
    }

    /// Events after `after` (of one account, or all), at most `limit`, oldest first,
    /// each with its item as it was right after the change.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn events_after(
        &self,
        account: Option<String>,
        after: u64,
        limit: usize,
    ) -> domain::Result<Vec<Event>> {
        self.inner
            .store
            .read(move |conn| read_events(conn, account.as_deref(), after, limit))
            .await
    }
}

fn list_items(
    conn: &Connection,
    q: &ListQuery,
    after: Option<(Millis, ItemId)>,
    limit: usize,
) -> domain::Result<Page<Item>> {
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
    let (cmp, dir) = match q.order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    };
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
    let mut items: Vec<Item> = st
        .query_map(rusqlite::params_from_iter(args), item_from_row)?
        .collect::<Result<_, _>>()?;
    let next_page_token = if items.len() > limit {
        items.truncate(limit);
        let last = &items[limit - 1];
        make_token(q.order, last.next_send_at(), last.id.to_string().as_bytes())
    } else {
        String::new()
    };
    Ok(Page {
        items,
        next_page_token,
    })
}

fn read_events(
    conn: &Connection,
    account: Option<&str>,
    after: u64,
    limit: usize,
) -> domain::Result<Vec<Event>> {
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
    let map = |r: &rusqlite::Row| -> rusqlite::Result<Event> {
        let seq: i64 = r.get(0)?;
        let kind: i64 = r.get(1)?;
        let at: i64 = r.get(2)?;
        let snap: Vec<u8> = r.get(3)?;
        let mut item = item_from_offset(r)?;
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
    let rows = match account {
        Some(a) => st
            .query_map(rusqlite::params![after as i64, limit as i64, a], map)?
            .collect::<Result<Vec<_>, _>>()?,
        None => st
            .query_map(rusqlite::params![after as i64, limit as i64], map)?
            .collect::<Result<Vec<_>, _>>()?,
    };
    // Resuming after a sequence whose successors were pruned would skip events.
    let (oldest, _) = event_bounds(conn)?;
    drop(snapshot);
    if after > 0 && after + 1 < oldest {
        return Err(Error::OutOfRange(format!(
            "after_sequence: events after {after} were pruned; the oldest retained sequence \
             is {oldest}: resync (e.g. with ListScheduled) and resume from there"
        )));
    }
    Ok(rows)
}

/// Reads the item columns that follow the 4 event columns.
fn item_from_offset(r: &rusqlite::Row) -> rusqlite::Result<Item> {
    crate::store::rows::item_from_row_at(r, 4)
}
