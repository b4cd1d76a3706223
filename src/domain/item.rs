//! The scheduled item and its parts.
//!
//! Content types derive `prost::Message`: that is their compact storage encoding in the
//! `items.content` column, not the wire format (the service converts to and from the
//! generated gRPC types field by field).

/// SQLite row id of an item; never reused (AUTOINCREMENT).
pub type ItemId = i64;

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

macro_rules! int_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:expr => $s:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v = $n),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The integer stored in SQLite (also the proto enum number).
            pub fn as_i64(self) -> i64 { self as i64 }

            /// The value for a stored integer, if it is one.
            pub fn from_i64(n: i64) -> Option<Self> {
                match n { $($n => Some($name::$v),)+ _ => None }
            }

            /// The short upper-case name used in messages and logs.
            pub fn name(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

int_enum!(
    /// A reply in an existing ticket, or the first message of a ticket created later.
    Kind { Reply = 1 => "REPLY", NewTicket = 2 => "NEW_TICKET" }
);
int_enum!(
    /// Where the item goes out.
    Channel { Email = 1 => "EMAIL", Chat = 2 => "CHAT" }
);
int_enum!(
    /// Lifecycle of an item; see `machine` for the allowed transitions.
    State {
        Pending = 1 => "PENDING",
        /// Leased to a connector.
        Dispatching = 2 => "DISPATCHING",
        Sent = 3 => "SENT",
        Failed = 4 => "FAILED",
        Cancelled = 5 => "CANCELLED",
        ConvertedToNote = 6 => "CONVERTED_TO_NOTE",
    }
);
int_enum!(
    /// What happens to a pending reply when the ticket gets new activity first.
    OnActivity { ConvertToNote = 1 => "CONVERT_TO_NOTE", Keep = 2 => "KEEP", Cancel = 3 => "CANCEL" }
);
int_enum!(
    /// Who wrote a message in the ticket.
    AuthorKind { Client = 1 => "CLIENT", Staff = 2 => "STAFF" }
);
int_enum!(
    /// What an event in the outbox describes.
    EventType {
        Scheduled = 1 => "SCHEDULED",
        Updated = 2 => "UPDATED",
        Dispatching = 3 => "DISPATCHING",
        Retrying = 4 => "RETRYING",
        Sent = 5 => "SENT",
        Failed = 6 => "FAILED",
        Cancelled = 7 => "CANCELLED",
        ConvertedToNote = 8 => "CONVERTED_TO_NOTE",
    }
);

int_enum!(
    /// Whether a send time may fall outside the account's business hours.
    DeliveryWindow { Any = 1 => "ANY", BusinessHours = 2 => "BUSINESS_HOURS" }
);
int_enum!(
    /// What happens to an item that would start later than send_at + max_lateness.
    OnLate { Send = 1 => "SEND", ConvertToNote = 2 => "CONVERT_TO_NOTE", Fail = 3 => "FAIL" }
);

impl State {
    /// PENDING or DISPATCHING: not yet sent, shown in the deferred-sending view.
    pub fn is_live(self) -> bool {
        matches!(self, State::Pending | State::Dispatching)
    }
}

/// A reference to a file stored elsewhere; never the bytes.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Attachment {
    #[prost(string, tag = "1")]
    pub filename: String,
    #[prost(string, tag = "2")]
    pub content_type: String,
    #[prost(string, tag = "3")]
    pub url: String,
    #[prost(uint64, tag = "4")]
    pub size_bytes: u64,
}

/// An email to send.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct EmailContent {
    /// Empty: the connector's default sender.
    #[prost(string, tag = "1")]
    pub from: String,
    #[prost(string, repeated, tag = "2")]
    pub to: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub cc: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub bcc: Vec<String>,
    #[prost(string, tag = "5")]
    pub subject: String,
    #[prost(string, tag = "6")]
    pub text_body: String,
    #[prost(string, tag = "7")]
    pub html_body: String,
    #[prost(string, tag = "8")]
    pub in_reply_to: String,
    #[prost(message, repeated, tag = "9")]
    pub attachments: Vec<Attachment>,
}

/// A chat message to send.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ChatContent {
    #[prost(string, tag = "1")]
    pub conversation_id: String,
    #[prost(string, tag = "2")]
    pub text: String,
    #[prost(message, repeated, tag = "3")]
    pub attachments: Vec<Attachment>,
}

/// The message itself; its variant is the item's channel.
#[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
pub enum Content {
    #[prost(message, tag = "1")]
    Email(EmailContent),
    #[prost(message, tag = "2")]
    Chat(ChatContent),
}

impl Content {
    /// The channel this content goes out on.
    pub fn channel(&self) -> Channel {
        match self {
            Content::Email(_) => Channel::Email,
            Content::Chat(_) => Channel::Chat,
        }
    }

    /// The storage encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        use prost::Message;
        StoredContent {
            content: Some(self.clone()),
        }
        .encode_to_vec()
    }

    /// Decodes the storage encoding.
    pub fn from_bytes(bytes: &[u8]) -> Option<Content> {
        use prost::Message;
        StoredContent::decode(bytes).ok()?.content
    }
}

/// Storage envelope of `Content` (prost needs a message around a oneof).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredContent {
    #[prost(oneof = "Content", tags = "1, 2")]
    content: Option<Content>,
}

/// When an item goes out, as asked: the local time it was given in, the delivery
/// window, and the lateness policy (API.md "When it goes out"). The default is "a UTC
/// instant, any time, sent however late".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Timing {
    /// The wall-clock time and zone the caller gave instead of an instant.
    pub send_at_local: Option<crate::domain::LocalTime>,
    /// The instant asked for, before the business-hours move (set when the window is
    /// BUSINESS_HOURS; re-resolved from when the hours change).
    pub requested_send_at: Option<Millis>,
    pub window: Option<DeliveryWindow>,
    /// Absent: no limit.
    pub max_lateness: Option<Millis>,
    pub on_late: Option<OnLate>,
    /// How late the item was when its lateness policy applied.
    pub late_by: Option<Millis>,
}

impl Timing {
    /// The delivery window (ANY unless BUSINESS_HOURS was asked for).
    pub fn window(&self) -> DeliveryWindow {
        self.window.unwrap_or(DeliveryWindow::Any)
    }

    /// The lateness policy (SEND unless another was asked for).
    pub fn on_late(&self) -> OnLate {
        self.on_late.unwrap_or(OnLate::Send)
    }

    /// How late an item due at `send_at` starting at `now` is, if that is past its
    /// max_lateness.
    pub fn too_late(&self, send_at: Millis, now: Millis) -> Option<Millis> {
        let late = now - send_at;
        self.max_lateness
            .filter(|&max| max > 0 && late > max)
            .map(|_| late)
    }

    /// The storage encoding; `None` for the default (nothing stored).
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        use prost::Message;
        if *self == Timing::default() {
            return None;
        }
        let (local, zone) = match &self.send_at_local {
            Some(l) => (l.local_time_string(), l.zone_name().to_owned()),
            None => (String::new(), String::new()),
        };
        Some(
            StoredTiming {
                local_time: local,
                time_zone: zone,
                requested_send_at: self.requested_send_at,
                window: self.window.map(|w| w.as_i64() as i32),
                max_lateness: self.max_lateness,
                on_late: self.on_late.map(|o| o.as_i64() as i32),
                late_by: self.late_by,
            }
            .encode_to_vec(),
        )
    }

    /// Decodes the storage encoding.
    pub fn from_bytes(bytes: &[u8]) -> Option<Timing> {
        use prost::Message;
        let s = StoredTiming::decode(bytes).ok()?;
        let send_at_local = if s.time_zone.is_empty() {
            None
        } else {
            Some(crate::domain::LocalTime::parse(&s.local_time, &s.time_zone, "timing").ok()?)
        };
        Some(Timing {
            send_at_local,
            requested_send_at: s.requested_send_at,
            window: match s.window {
                Some(w) => Some(DeliveryWindow::from_i64(w.into())?),
                None => None,
            },
            max_lateness: s.max_lateness,
            on_late: match s.on_late {
                Some(o) => Some(OnLate::from_i64(o.into())?),
                None => None,
            },
            late_by: s.late_by,
        })
    }
}

/// Storage envelope of `Timing`.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredTiming {
    #[prost(string, tag = "1")]
    local_time: String,
    #[prost(string, tag = "2")]
    time_zone: String,
    #[prost(int64, optional, tag = "3")]
    requested_send_at: Option<i64>,
    #[prost(int32, optional, tag = "4")]
    window: Option<i32>,
    #[prost(int64, optional, tag = "5")]
    max_lateness: Option<i64>,
    #[prost(int32, optional, tag = "6")]
    on_late: Option<i32>,
    #[prost(int64, optional, tag = "7")]
    late_by: Option<i64>,
}

/// A message reported in a ticket (by the backend, or a send of ours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub author_kind: AuthorKind,
    pub message_id: String,
    pub occurred_at: Millis,
}

/// A request to schedule something, validated by `validate_new`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NewItem {
    pub account_id: String,
    pub ticket_id: String,
    pub kind: Kind,
    pub channel: Channel,
    pub author_id: String,
    pub content: Content,
    pub send_at: Millis,
    pub on_activity: OnActivity,
    /// The caller's idempotency key; unique per account when present.
    pub request_id: Option<String>,
    /// Local time, delivery window, lateness policy (`send_at` is the instant asked
    /// for; the business-hours move happens when it is stored).
    pub timing: Timing,
}

impl NewItem {
    /// A stable fingerprint of every request field, send_at included: a repeated
    /// request_id with the same fingerprint is the same request (FNV-1a, 64 bit, over a
    /// length-prefixed canonical encoding; stable across builds and versions).
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        h.str(&self.account_id);
        h.str(&self.ticket_id);
        h.u64(self.kind.as_i64() as u64);
        h.u64(self.channel.as_i64() as u64);
        h.str(&self.author_id);
        h.bytes(&self.content.to_bytes());
        h.u64(self.send_at as u64);
        h.u64(self.on_activity.as_i64() as u64);
        h.str(self.request_id.as_deref().unwrap_or(""));
        // Only when set, so fingerprints stored before these fields existed still match.
        if let Some(t) = self.timing.to_bytes() {
            h.bytes(&t);
        }
        h.finish()
    }
}

impl NewItem {
    /// The PENDING item this request becomes once stored with row id `id` at `now`.
    pub fn into_pending(self, id: ItemId, now: Millis) -> Item {
        Item {
            id,
            account_id: self.account_id,
            ticket_id: self.ticket_id,
            kind: self.kind,
            channel: self.channel,
            author_id: self.author_id,
            content: self.content,
            send_at: self.send_at,
            created_at: now,
            updated_at: now,
            state: State::Pending,
            note_at: None,
            converted_by: None,
            on_activity: self.on_activity,
            attempts: 0,
            last_error: None,
            next_attempt_at: None,
            lease_expires_at: None,
            sent_at: None,
            provider_message_id: None,
            request_id: self.request_id,
            timing: self.timing,
        }
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn u64(&mut self, v: u64) {
        for x in v.to_le_bytes() {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A scheduled item as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: ItemId,
    pub account_id: String,
    pub ticket_id: String,
    pub kind: Kind,
    pub channel: Channel,
    pub author_id: String,
    pub content: Content,
    /// When it is due (SendNow moves it to the moment of the call).
    pub send_at: Millis,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub state: State,
    /// Set when converted: equal to created_at.
    pub note_at: Option<Millis>,
    pub converted_by: Option<Activity>,
    pub on_activity: OnActivity,
    /// Delivery attempts so far (every lease counts).
    pub attempts: u32,
    pub last_error: Option<String>,
    /// When the next retry is due, between attempts.
    pub next_attempt_at: Option<Millis>,
    /// The lease deadline while DISPATCHING.
    pub lease_expires_at: Option<Millis>,
    pub sent_at: Option<Millis>,
    pub provider_message_id: Option<String>,
    pub request_id: Option<String>,
    /// Local time, delivery window and lateness policy.
    pub timing: Timing,
}

impl Item {
    /// An upper bound of the item's size in a gRPC response: every string it holds plus
    /// a fixed allowance for the numbers, timestamps and field tags.
    pub fn approx_wire_bytes(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        const FIXED: usize = 1024;
        FIXED
            + super::content_bytes(&self.content)
            + self.account_id.len()
            + self.ticket_id.len()
            + self.author_id.len()
            + opt(&self.last_error)
            + opt(&self.provider_message_id)
            + opt(&self.request_id)
            + self.converted_by.as_ref().map_or(0, |a| a.message_id.len())
    }

    /// The opaque id clients see.
    pub fn public_id(&self) -> String {
        format_item_id(self.id)
    }

    /// The next time this item goes out: the retry time between attempts, else send_at.
    /// Listings sort and filter on it.
    pub fn next_send_at(&self) -> Millis {
        self.next_attempt_at.unwrap_or(self.send_at)
    }

    /// Where the item sits on the staff timeline: sent_at when sent, note_at for a note,
    /// otherwise the next send time.
    pub fn timeline_at(&self) -> Millis {
        match self.state {
            State::Sent => self.sent_at.unwrap_or(self.send_at),
            State::ConvertedToNote => self.note_at.unwrap_or(self.created_at),
            _ => self.next_send_at(),
        }
    }
}

const ITEM_ID_PREFIX: &str = "itm_";

/// The opaque string form of an item id (`itm_42`).
pub fn format_item_id(id: ItemId) -> String {
    format!("{ITEM_ID_PREFIX}{id}")
}

/// Parses `itm_42`; anything else is `None` (the caller answers NOT_FOUND: an id we
/// never issued does not exist).
pub fn parse_item_id(s: &str) -> Option<ItemId> {
    let digits = s.strip_prefix(ITEM_ID_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n: &i64| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_round_trip_and_reject_foreign_forms() {
        assert_eq!(parse_item_id(&format_item_id(42)), Some(42));
        for bad in [
            "", "itm_", "42", "itm_-1", "itm_0", "itm_4x", "itm_+4", "ITM_4",
        ] {
            assert_eq!(parse_item_id(bad), None, "{bad:?} must not parse");
        }
        assert_eq!(parse_item_id("itm_99999999999999999999"), None);
    }

    #[test]
    fn content_storage_encoding_round_trips() {
        let c = Content::Email(EmailContent {
            to: vec!["a@example.com".into()],
            subject: "Hi".into(),
            text_body: "body".into(),
            attachments: vec![Attachment {
                filename: "a.pdf".into(),
                url: "https://x/a.pdf".into(),
                size_bytes: 10,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(Content::from_bytes(&c.to_bytes()), Some(c));
        let chat = Content::Chat(ChatContent {
            text: "hello".into(),
            ..Default::default()
        });
        assert_eq!(Content::from_bytes(&chat.to_bytes()), Some(chat));
    }

    #[test]
    fn fingerprint_changes_with_any_field_and_is_stable_otherwise() {
        let a = NewItem {
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            kind: Kind::Reply,
            channel: Channel::Chat,
            author_id: "u1".into(),
            content: Content::Chat(ChatContent {
                text: "hi".into(),
                ..Default::default()
            }),
            send_at: 1000,
            on_activity: OnActivity::ConvertToNote,
            request_id: Some("r1".into()),
            timing: Timing::default(),
        };
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        let mut b = a.clone();
        b.send_at += 1;
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.on_activity = OnActivity::Keep;
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
