//! The types the store's contract speaks (see `store`): what reads return and what
//! dispatch hands back. No driver type, no SQL.

use crate::domain::machine::Change;
use crate::domain::{Channel, Event, Item, ItemId, Millis, State, Timing};

/// Rows of a keyset-paged listing, in its order.
#[derive(Debug, Clone)]
pub struct Rows<T> {
    /// At most the `limit` asked for.
    pub rows: Vec<T>,
    /// Whether rows follow the last one (the caller makes a page token from it).
    pub more: bool,
}

/// Outbox events after a sequence number, and the oldest sequence still retained, both
/// read from one snapshot (pruning between the two reads cannot hide a gap).
#[derive(Debug, Clone)]
pub struct EventsAfter {
    /// Oldest first.
    pub events: Vec<Event>,
    /// The oldest retained sequence: events before it were pruned (the last sequence
    /// ever written + 1 when none is retained).
    pub oldest: u64,
}

/// What start-up recovery reads from the file.
#[derive(Debug, Clone, Default)]
pub struct RecoveryScan {
    /// Every live (PENDING or DISPATCHING) item: its id and next send time, in
    /// `items_live` order (by account).
    pub timers: Vec<(ItemId, Millis)>,
    /// The number of live items of each account that has any, each account once.
    pub live_counts: Vec<(String, u64)>,
    /// Items that were leased (DISPATCHING) when the previous process stopped.
    pub leased: usize,
    /// Every stored dispatch control (pause, rate limit) in force.
    pub controls: Vec<ControlRow>,
}

/// What dispatch needs to know about an item whose timer fired.
#[derive(Debug, Clone)]
pub struct ItemMeta {
    pub id: ItemId,
    pub account: String,
    /// The channel, the state (DISPATCHING when the item holds a lease) and the
    /// timing; `Err` says why the stored row cannot be decoded.
    pub decoded: Result<(Channel, State, Timing), String>,
    /// When its lease ends, if it holds one.
    pub lease_expires_at: Option<Millis>,
    /// Attempts, counting the one under way when it holds a lease (as stored when the
    /// row cannot be decoded).
    pub attempts: u32,
    /// Its send time (a lateness window counts from it).
    pub send_at: Millis,
}

impl ItemMeta {
    /// The meta of an item as it is in memory.
    pub fn of(item: &crate::domain::Item) -> Self {
        ItemMeta {
            id: item.id,
            account: item.account_id.clone(),
            decoded: Ok((item.channel, item.state, item.timing.clone())),
            lease_expires_at: item.lease_expires_at,
            attempts: item.attempts,
            send_at: item.send_at,
        }
    }
}

/// Pause and rate limit of one account and channel (account `*`: every account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRow {
    pub account_id: String,
    pub channel: Channel,
    pub paused: bool,
    /// 0: no limit.
    pub per_minute: u32,
}

/// An item read from its row, or the id of a row that cannot be decoded and why.
pub type Decoded = Result<Item, (ItemId, String)>;

/// Where a walk of an account's live items stands: `(next_send_at, id)` of the last
/// item it read.
pub type LiveKey = (Millis, ItemId);

/// A lease taken by the dispatcher: the item as `machine::step(Lease)` left it, and the
/// change to record.
#[derive(Debug, Clone)]
pub struct Claim {
    pub item: Item,
    pub change: Change,
}

/// What [`super::Store::due_items`] read.
#[derive(Debug)]
pub struct DueRead {
    /// The claims epoch the read started at.
    pub epoch: u64,
    /// Items known from memory (changed, not yet on their rows), and those whose rows
    /// cannot be read as items.
    pub metas: Vec<ItemMeta>,
    /// Items read whole from their rows.
    pub items: Vec<Item>,
}
