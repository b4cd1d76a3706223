//! What the Scheduler's reads ask for and return: the ListScheduled filters and sort
//! order, a ticket of the "Deferred sending" view, and an outbox event. Plain data,
//! shared by the engine (which pages and checks) and the store (which reads them).

use super::{Channel, EventType, Item, Kind, Millis, State};

/// Sort order of listings (by next send time, then by key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// ListScheduled filters.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub account_id: String,
    /// `None`: PENDING.
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

/// A ticket in the "Deferred sending" view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredTicket {
    pub ticket_id: String,
    /// The earliest next send time of its PENDING or DISPATCHING items.
    pub next_send_at: Millis,
    /// How many of its items are PENDING or DISPATCHING.
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
