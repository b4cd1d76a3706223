//! The storage encoding both stores share, with no SQL: so a PostgreSQL row holds the
//! same bytes as a SQLite one, and `migrate` between the two copies them as they are.
//!
//! - Content and timing: [`Content::to_bytes`] / [`Content::from_bytes`] and
//!   [`Timing::to_bytes`] / [`Timing::from_bytes`] (the domain's own encodings; the
//!   default timing is stored as NULL).
//! - Enums: `as_i64` / `from_i64` of each domain enum (the proto numbers).
//! - An event's snapshot: [`ItemSnapshot`], encoded with prost ([`event_snapshot`]).
//! - The lease: an item out at a connector (DISPATCHING) is stored as what it is at
//!   rest, PENDING with the attempts that ended ([`at_rest`]), plus its lease expiry;
//!   reading it back turns it into DISPATCHING again ([`with_lease`]).
//! - A row's columns as read ([`StoredItem`]) and their decoding into an [`Item`],
//!   strict ([`StoredItem::decode`]) or lenient ([`StoredItem::decode_lenient`]).

use prost::Message;

use crate::domain::{
    Activity, AuthorKind, Channel, Content, EventType, Item, ItemId, Kind, Millis, OnActivity,
    State, Timing,
};

/// A stored state with the item's lease: a PENDING row with a lease is DISPATCHING, on
/// attempt `attempts + 1` (the row counts the attempts that ended).
pub fn with_lease(state: State, attempts: u32, lease: Option<Millis>) -> (State, u32) {
    match (state, lease) {
        (State::Pending, Some(_)) => (State::Dispatching, attempts + 1),
        _ => (state, attempts),
    }
}

/// The state and attempts an item is stored with: a DISPATCHING item is PENDING at
/// rest, with the attempts that ended (its lease is stored beside it).
pub fn at_rest(item: &Item) -> (State, u32) {
    match item.state {
        State::Dispatching => (State::Pending, item.attempts.saturating_sub(1)),
        s => (s, item.attempts),
    }
}

/// The encoded snapshot an event of `kind` stores for `item`: every mutable field,
/// and the content too on UPDATED (the one event that may change it).
pub fn event_snapshot(kind: EventType, item: &Item) -> Vec<u8> {
    let mut snapshot = ItemSnapshot::of(item);
    if kind == EventType::Updated {
        snapshot.content = Some(item.content.to_bytes());
    }
    snapshot.encode_to_vec()
}

/// The part of an item an event carries: everything but the content (which is read
/// from `items` when the event is streamed, so an event costs one small row).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ItemSnapshot {
    #[prost(int64, tag = "1")]
    pub send_at: i64,
    #[prost(int64, tag = "2")]
    pub updated_at: i64,
    #[prost(int64, tag = "3")]
    pub state: i64,
    #[prost(int64, tag = "4")]
    pub on_activity: i64,
    #[prost(int64, optional, tag = "5")]
    pub note_at: Option<i64>,
    #[prost(uint32, tag = "6")]
    pub attempts: u32,
    #[prost(string, optional, tag = "7")]
    pub last_error: Option<String>,
    #[prost(int64, optional, tag = "8")]
    pub next_attempt_at: Option<i64>,
    #[prost(int64, optional, tag = "9")]
    pub lease_expires_at: Option<i64>,
    #[prost(int64, optional, tag = "10")]
    pub sent_at: Option<i64>,
    #[prost(string, optional, tag = "11")]
    pub provider_message_id: Option<String>,
    #[prost(int64, optional, tag = "12")]
    pub conv_author_kind: Option<i64>,
    #[prost(string, optional, tag = "13")]
    pub conv_message_id: Option<String>,
    #[prost(int64, optional, tag = "14")]
    pub conv_occurred_at: Option<i64>,
    /// The encoded timing (empty: the default); absent in events older than schema v6.
    #[prost(bytes = "vec", optional, tag = "15")]
    pub timing: Option<Vec<u8>>,
    /// The encoded content, in events that may have changed it (UPDATED).
    #[prost(bytes = "vec", optional, tag = "16")]
    pub content: Option<Vec<u8>>,
}

impl ItemSnapshot {
    /// The snapshot of `item`.
    pub fn of(item: &Item) -> Self {
        let conv = item.converted_by.as_ref();
        Self {
            send_at: item.send_at,
            updated_at: item.updated_at,
            state: item.state.as_i64(),
            on_activity: item.on_activity.as_i64(),
            note_at: item.note_at,
            attempts: item.attempts,
            last_error: item.last_error.clone(),
            next_attempt_at: item.next_attempt_at,
            lease_expires_at: item.lease_expires_at,
            sent_at: item.sent_at,
            provider_message_id: item.provider_message_id.clone(),
            conv_author_kind: conv.map(|a| a.author_kind.as_i64()),
            conv_message_id: conv.map(|a| a.message_id.clone()),
            conv_occurred_at: conv.map(|a| a.occurred_at),
            timing: Some(item.timing.to_bytes().unwrap_or_default()),
            content: None,
        }
    }

    /// Overlays this snapshot on `item` (whose immutable fields and content are current).
    pub fn apply_to(&self, item: &mut Item) {
        item.send_at = self.send_at;
        item.updated_at = self.updated_at;
        if let Some(s) = State::from_i64(self.state) {
            item.state = s;
        }
        if let Some(p) = OnActivity::from_i64(self.on_activity) {
            item.on_activity = p;
        }
        item.note_at = self.note_at;
        item.attempts = self.attempts;
        item.last_error = self.last_error.clone();
        item.next_attempt_at = self.next_attempt_at;
        item.lease_expires_at = self.lease_expires_at;
        item.sent_at = self.sent_at;
        item.provider_message_id = self.provider_message_id.clone();
        item.converted_by = match (
            self.conv_author_kind.and_then(AuthorKind::from_i64),
            self.conv_occurred_at,
        ) {
            (Some(k), Some(at)) => Some(Activity {
                author_kind: k,
                message_id: self.conv_message_id.clone().unwrap_or_default(),
                occurred_at: at,
            }),
            _ => None,
        };
        if let Some(t) = self.timing.as_deref().and_then(Timing::from_bytes) {
            item.timing = t;
        }
        if let Some(c) = self.content.as_deref().and_then(Content::from_bytes) {
            item.content = c;
        }
    }
}

/// The columns of an item's row as stored (enums as their integers, content and
/// timing encoded, the lease expiry beside the at-rest state), before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    pub id: ItemId,
    pub account_id: String,
    pub ticket_id: String,
    pub kind: i64,
    pub channel: i64,
    pub author_id: String,
    pub content: Vec<u8>,
    pub send_at: Millis,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub state: i64,
    pub on_activity: i64,
    pub note_at: Option<Millis>,
    pub conv_author_kind: Option<i64>,
    pub conv_message_id: Option<String>,
    pub conv_occurred_at: Option<Millis>,
    /// The attempts that ended (one more is under way while the item holds a lease).
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<Millis>,
    pub lease_expires_at: Option<Millis>,
    pub sent_at: Option<Millis>,
    pub provider_message_id: Option<String>,
    pub request_id: Option<String>,
    /// NULL: the default timing.
    pub timing: Option<Vec<u8>>,
}

fn invalid(what: &str) -> String {
    format!("invalid stored {what}")
}

impl StoredItem {
    /// The item this row holds; `Err` says which column cannot be decoded.
    pub fn decode(self) -> Result<Item, String> {
        let attempts = u32::try_from(self.attempts).map_err(|_| invalid("attempts"))?;
        let converted_by = match self.conv_author_kind {
            Some(k) => Some(Activity {
                author_kind: AuthorKind::from_i64(k).ok_or_else(|| invalid("author kind"))?,
                message_id: self.conv_message_id.unwrap_or_default(),
                occurred_at: self.conv_occurred_at.unwrap_or_default(),
            }),
            None => None,
        };
        let (state, attempts) = with_lease(
            State::from_i64(self.state).ok_or_else(|| invalid("state"))?,
            attempts,
            self.lease_expires_at,
        );
        Ok(Item {
            id: self.id,
            account_id: self.account_id,
            ticket_id: self.ticket_id,
            kind: Kind::from_i64(self.kind).ok_or_else(|| invalid("kind"))?,
            channel: Channel::from_i64(self.channel).ok_or_else(|| invalid("channel"))?,
            author_id: self.author_id,
            content: Content::from_bytes(&self.content).ok_or_else(|| invalid("content"))?,
            send_at: self.send_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            state,
            on_activity: OnActivity::from_i64(self.on_activity)
                .ok_or_else(|| invalid("on_activity"))?,
            note_at: self.note_at,
            converted_by,
            attempts,
            last_error: self.last_error,
            next_attempt_at: self.next_attempt_at,
            lease_expires_at: self.lease_expires_at,
            sent_at: self.sent_at,
            provider_message_id: self.provider_message_id,
            request_id: self.request_id,
            timing: match self.timing {
                Some(b) => Timing::from_bytes(&b).ok_or_else(|| invalid("timing"))?,
                None => Timing::default(),
            },
        })
    }

    /// The item read as far as the row can be decoded, every column that cannot be
    /// read as its default (no content, an email reply, ...): for failing an
    /// unreadable item through the state machine. `None` when its state cannot be
    /// read (nothing can be decided for it).
    pub fn decode_lenient(self) -> Option<Item> {
        let (state, attempts) = with_lease(
            State::from_i64(self.state)?,
            u32::try_from(self.attempts).unwrap_or(0),
            self.lease_expires_at,
        );
        let channel = Channel::from_i64(self.channel).unwrap_or(Channel::Email);
        Some(Item {
            id: self.id,
            account_id: self.account_id,
            ticket_id: self.ticket_id,
            kind: Kind::from_i64(self.kind).unwrap_or(Kind::Reply),
            channel,
            author_id: self.author_id,
            content: Content::from_bytes(&self.content).unwrap_or_else(|| match channel {
                Channel::Email => Content::Email(Default::default()),
                Channel::Chat => Content::Chat(Default::default()),
            }),
            send_at: self.send_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            state,
            on_activity: OnActivity::from_i64(self.on_activity).unwrap_or(OnActivity::Keep),
            note_at: self.note_at,
            converted_by: None,
            attempts,
            last_error: self.last_error,
            next_attempt_at: self.next_attempt_at,
            lease_expires_at: self.lease_expires_at,
            sent_at: self.sent_at,
            provider_message_id: self.provider_message_id,
            request_id: self.request_id,
            timing: self
                .timing
                .as_deref()
                .and_then(Timing::from_bytes)
                .unwrap_or_default(),
        })
    }

    /// The row that stores `item` (DISPATCHING at rest: see [`at_rest`]).
    pub fn of(item: &Item) -> Self {
        let (state, attempts) = at_rest(item);
        let conv = item.converted_by.as_ref();
        StoredItem {
            id: item.id,
            account_id: item.account_id.clone(),
            ticket_id: item.ticket_id.clone(),
            kind: item.kind.as_i64(),
            channel: item.channel.as_i64(),
            author_id: item.author_id.clone(),
            content: item.content.to_bytes(),
            send_at: item.send_at,
            created_at: item.created_at,
            updated_at: item.updated_at,
            state: state.as_i64(),
            on_activity: item.on_activity.as_i64(),
            note_at: item.note_at,
            conv_author_kind: conv.map(|a| a.author_kind.as_i64()),
            conv_message_id: conv.map(|a| a.message_id.clone()),
            conv_occurred_at: conv.map(|a| a.occurred_at),
            attempts: attempts.into(),
            last_error: item.last_error.clone(),
            next_attempt_at: item.next_attempt_at,
            lease_expires_at: match item.state {
                State::Dispatching => item.lease_expires_at,
                _ => None,
            },
            sent_at: item.sent_at,
            provider_message_id: item.provider_message_id.clone(),
            request_id: item.request_id.clone(),
            timing: item.timing.to_bytes(),
        }
    }
}
