//! The Scheduler's reads, on the store's read-only connections.
//!
//! Pagination is keyset-based: a page token names the sort key of the last row
//! returned, so pages stay stable while items are added or removed around them (no
//! skipped or repeated rows, unlike OFFSET). Tokens are opaque to callers and carry
//! the order they were made for.

use super::Engine;
use crate::domain::{self, Error, Item, ItemId, Millis};
use crate::store::Rows;

pub use crate::domain::{DeferredTicket, Event, ListQuery, Order};

/// Who looks at a timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Audience {
    #[default]
    Staff,
    Client,
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// Keeps the rows that fit in `budget` bytes (at least one), marking `more` when some
/// were left out: a page of large items stops before the response limit.
fn cut_to_budget(rows: &mut Rows<Item>, budget: usize) {
    let mut used = 0usize;
    let fits = rows
        .rows
        .iter()
        .position(|item| {
            used = used.saturating_add(item.approx_wire_bytes());
            used > budget
        })
        .map_or(rows.rows.len(), |at| at.max(1));
    if fits < rows.rows.len() {
        rows.rows.truncate(fits);
        rows.more = true;
    }
}

impl<T> Page<T> {
    /// The page of `rows`; its token names the key of the last row when more follow.
    fn of(rows: Rows<T>, order: Order, key: impl Fn(&T) -> (Millis, Vec<u8>)) -> Self {
        let next_page_token = match rows.rows.last() {
            Some(last) if rows.more => {
                let (at, k) = key(last);
                make_page_token(order, at, &k)
            }
            _ => String::new(),
        };
        Page {
            items: rows.rows,
            next_page_token,
        }
    }
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
pub fn make_page_token(order: Order, at: Millis, key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1.{}.{at}.{hex}", order_tag(order))
}

/// The sort key a page token names, for a listing in `order`. Any string may come in
/// (a caller's garbage included): anything that is not a token of
/// [`make_page_token`] is `InvalidArgument` naming `page_token`, never a panic.
///
/// # Errors
/// `InvalidArgument` naming `page_token`.
pub fn parse_page_token(token: &str, order: Order) -> domain::Result<(Millis, Vec<u8>)> {
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
    // Byte pairs, not str slices: a multi-byte character is simply not a hex digit.
    let digit = |b: u8| char::from(b).to_digit(16);
    let key = hex
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(high), Some(low)) => u8::try_from(high * 16 + low).ok(),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad_token)?;
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
            .get_item(account, id)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("item {} not found", domain::format_item_id(id)))
            })
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
            let (at, key) = parse_page_token(&q.page_token, q.order)?;
            let id = std::str::from_utf8(&key)
                .ok()
                .and_then(|s| s.parse::<ItemId>().ok())
                .ok_or_else(bad_token)?;
            Some((at, id))
        };
        let order = q.order;
        let mut rows = self.inner.store.list_items(q, after, limit).await?;
        cut_to_budget(&mut rows, self.inner.limits.response_budget());
        Ok(Page::of(rows, order, |item: &Item| {
            (item.next_send_at(), item.id.to_string().into_bytes())
        }))
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
            let (at, key) = parse_page_token(&page_token, order)?;
            Some((at, String::from_utf8(key).map_err(|_| bad_token())?))
        };
        let rows = self
            .inner
            .store
            .deferred_tickets(account, order, after, limit)
            .await?;
        Ok(Page::of(rows, order, |t: &DeferredTicket| {
            (t.next_send_at, t.ticket_id.clone().into_bytes())
        }))
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
        let items = self.inner.store.ticket_items(account, ticket).await?;
        domain::timeline(items, audience == Audience::Client)
    }

    /// One page of GetTicketTimeline: the timeline's items after the page token's
    /// (timeline time, id), at most `page_size` (0: the largest page) and never more than
    /// the response budget.
    ///
    /// # Errors
    /// As [`Engine::timeline`]; a malformed page token.
    pub async fn timeline_page(
        &self,
        account: String,
        ticket: String,
        audience: Audience,
        page_size: u32,
        page_token: String,
    ) -> domain::Result<Page<Item>> {
        let after = if page_token.is_empty() {
            None
        } else {
            let (at, key) = parse_page_token(&page_token, Order::Asc)?;
            let id = std::str::from_utf8(&key)
                .ok()
                .and_then(|s| s.parse::<ItemId>().ok())
                .ok_or_else(bad_token)?;
            Some((at, id))
        };
        let l = &self.inner.limits;
        let limit = match page_size {
            0 => l.max_page_size,
            n => n.min(l.max_page_size),
        }
        .max(1) as usize;
        let budget = l.response_budget();
        let items = self.timeline(account, ticket, audience).await?;
        let mut rows: Vec<Item> = items
            .into_iter()
            .filter(|i| after.is_none_or(|a| (i.timeline_at(), i.id) > a))
            .collect();
        let more = rows.len() > limit;
        rows.truncate(limit);
        let mut rows = Rows { rows, more };
        cut_to_budget(&mut rows, budget);
        Ok(Page::of(rows, Order::Asc, |i: &Item| {
            (i.timeline_at(), i.id.to_string().into_bytes())
        }))
    }

    /// What changed in `account` after `after`: (sequence, type, item, ticket), at most
    /// `limit`, oldest first; cheap (no item rows are read or written back), for live
    /// views that re-read what they show.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn event_heads(
        &self,
        account: String,
        after: u64,
        limit: usize,
    ) -> domain::Result<Vec<(u64, domain::EventType, ItemId, String)>> {
        self.inner.store.event_heads(account, after, limit).await
    }

    /// Events after `after` (of one account, or all), at most `limit`, oldest first,
    /// each with its item as it was right after the change.
    ///
    /// # Errors
    /// `OutOfRange` when events after `after` were pruned (resuming would skip them);
    /// storage errors.
    pub async fn events_after(
        &self,
        account: Option<String>,
        after: u64,
        limit: usize,
    ) -> domain::Result<Vec<Event>> {
        let read = self.inner.store.events_after(account, after, limit).await?;
        // Resuming after a sequence whose successors were pruned would skip events.
        let oldest = read.oldest;
        if after > 0 && after + 1 < oldest {
            return Err(Error::OutOfRange(format!(
                "after_sequence: events after {after} were pruned; the oldest retained sequence \
                 is {oldest}: resync (e.g. with ListScheduled) and resume from there"
            )));
        }
        Ok(read.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_names_the_key_it_was_made_from() {
        for key in [&b""[..], b"itm_42", &[0, 0x7f, 0x80, 0xff]] {
            let token = make_page_token(Order::Desc, -5, key);
            assert_eq!(
                parse_page_token(&token, Order::Desc).unwrap(),
                (-5, key.to_vec())
            );
        }
    }

    #[test]
    fn a_garbled_page_token_is_invalid_argument_naming_page_token() {
        for token in [
            "v1.a.1.€a",
            "v1.a.1.aéb",
            "v1.a.1.+1",
            "v1.a.1.-1",
            "v1.a.1.0x",
            "v1.é.1.00",
            "v1.a.1",
        ] {
            let e = parse_page_token(token, Order::Asc).expect_err(token);
            assert!(e.to_string().starts_with("page_token: "), "{token}: {e}");
        }
    }
}
