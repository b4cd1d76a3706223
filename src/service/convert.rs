//! proto <-> domain conversion. Incoming messages become validated-shape domain values
//! here (`TryFrom`), with `InvalidArgument` errors that name the field; outgoing domain
//! values become proto messages (`From`).

use prost_types::Timestamp;

use crate::domain::{
    self, resolve_local, Activity, Attachment, AuthorKind, BusinessHours, Channel, ChatContent,
    Content, DeliveryWindow, EmailContent, Error, EventType, Item, Kind, LocalTime, Millis,
    NewItem, OnActivity, OnLate, State, Timing,
};
use crate::engine::{AccountControls, Audience, DeferredTicket, Event, Order};
use crate::pb;

/// Milliseconds to a protobuf timestamp.
pub fn ts(ms: Millis) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp to milliseconds (sub-millisecond parts are truncated).
///
/// # Errors
/// `InvalidArgument` on `field` for out-of-range nanos or seconds.
pub fn ms(field: &str, t: &Timestamp) -> domain::Result<Millis> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(field, "nanos must be in 0..1e9"));
    }
    // Year 1 .. 9999, as google.protobuf.Timestamp specifies.
    if !(-62_135_596_800..=253_402_300_799).contains(&t.seconds) {
        return Err(Error::invalid(field, "is out of the timestamp range"));
    }
    Ok(t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

fn required_ms(field: &str, t: Option<&Timestamp>) -> domain::Result<Millis> {
    ms(
        field,
        t.ok_or_else(|| Error::invalid(field, "is required"))?,
    )
}

fn enum_value<T>(field: &str, v: i32, from: fn(i64) -> Option<T>) -> domain::Result<Option<T>> {
    if v == 0 {
        return Ok(None);
    }
    from(i64::from(v))
        .map(Some)
        .ok_or_else(|| Error::invalid(field, format!("unknown value {v}")))
}

/// Parses the optional `channel` enum (0 = unspecified).
pub fn channel(field: &str, v: i32) -> domain::Result<Option<Channel>> {
    enum_value(field, v, Channel::from_i64)
}

/// Parses the optional `state` enum.
pub fn state(field: &str, v: i32) -> domain::Result<Option<State>> {
    enum_value(field, v, State::from_i64)
}

/// Parses the optional `kind` enum.
pub fn kind(field: &str, v: i32) -> domain::Result<Option<Kind>> {
    enum_value(field, v, Kind::from_i64)
}

/// Parses the optional `on_activity` enum.
pub fn on_activity(field: &str, v: i32) -> domain::Result<Option<OnActivity>> {
    enum_value(field, v, OnActivity::from_i64)
}

/// Parses `order`.
pub fn order(v: i32) -> domain::Result<Order> {
    match pb::Order::try_from(v) {
        Ok(pb::Order::SendAtAsc) => Ok(Order::Asc),
        Ok(pb::Order::SendAtDesc) => Ok(Order::Desc),
        Err(_) => Err(Error::invalid("order", format!("unknown value {v}"))),
    }
}

/// Parses `audience` (unspecified = staff).
pub fn audience(v: i32) -> domain::Result<Audience> {
    match pb::Audience::try_from(v) {
        Ok(pb::Audience::Unspecified | pb::Audience::Staff) => Ok(Audience::Staff),
        Ok(pb::Audience::Client) => Ok(Audience::Client),
        Err(_) => Err(Error::invalid("audience", format!("unknown value {v}"))),
    }
}

fn attachment(a: pb::Attachment) -> Attachment {
    Attachment {
        filename: a.filename,
        content_type: a.content_type,
        url: a.url,
        size_bytes: a.size_bytes,
    }
}

fn attachment_pb(a: Attachment) -> pb::Attachment {
    pb::Attachment {
        filename: a.filename,
        content_type: a.content_type,
        url: a.url,
        size_bytes: a.size_bytes,
    }
}

/// Email content from the wire.
pub fn email(e: pb::EmailContent) -> Content {
    Content::Email(EmailContent {
        from: e.from,
        to: e.to,
        cc: e.cc,
        bcc: e.bcc,
        subject: e.subject,
        text_body: e.text_body,
        html_body: e.html_body,
        in_reply_to: e.in_reply_to,
        attachments: e.attachments.into_iter().map(attachment).collect(),
    })
}

/// Chat content from the wire.
pub fn chat(c: pb::ChatContent) -> Content {
    Content::Chat(ChatContent {
        conversation_id: c.conversation_id,
        text: c.text,
        attachments: c.attachments.into_iter().map(attachment).collect(),
    })
}

/// The flat fields of a schedule request, shared by ScheduleMessage/Ticket and batch
/// entries.
pub struct ScheduleFields {
    pub account_id: String,
    pub ticket_id: String,
    pub channel: i32,
    pub author_id: String,
    pub content: Option<Content>,
    pub send_at: Option<Timestamp>,
    pub on_activity: i32,
    pub request_id: String,
    pub send_at_local: Option<pb::LocalTime>,
    pub delivery_window: i32,
    pub max_lateness: Option<prost_types::Duration>,
    pub on_late: i32,
}

/// The send time of a request: exactly one of `send_at` / `send_at_local`, the latter
/// resolved in its zone (DST gap: forward by the gap; overlap: the earlier instant).
///
/// # Errors
/// `InvalidArgument` naming `send_at` (neither or both given) or the local time's part.
pub fn send_time(
    send_at: Option<&Timestamp>,
    local: Option<&pb::LocalTime>,
) -> domain::Result<(Millis, Option<LocalTime>)> {
    match (send_at, local) {
        (Some(t), None) => Ok((ms("send_at", t)?, None)),
        (None, Some(l)) => {
            let lt = LocalTime::parse(&l.local_time, &l.time_zone, "send_at_local")?;
            Ok((resolve_local(lt.local, lt.zone), Some(lt)))
        }
        (None, None) => Err(Error::invalid(
            "send_at",
            "is required (or send_at_local: a local time and an IANA time zone)",
        )),
        (Some(_), Some(_)) => Err(Error::invalid(
            "send_at",
            "give either send_at or send_at_local, not both",
        )),
    }
}

/// A duration from the wire, in milliseconds (`None` when absent or zero).
///
/// # Errors
/// `InvalidArgument` on `field` when negative or malformed.
pub fn duration_ms(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> domain::Result<Option<Millis>> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "must be a non-negative duration"));
    }
    let ms = d
        .seconds
        .checked_mul(1000)
        .and_then(|s| s.checked_add(i64::from(d.nanos) / 1_000_000))
        .ok_or_else(|| Error::invalid(field, "is too long"))?;
    Ok((ms > 0).then_some(ms))
}

/// A duration for the wire.
pub fn duration(ms: Millis) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

impl ScheduleFields {
    /// The domain request (shape checks here; value checks in `domain::validate_new`).
    ///
    /// # Errors
    /// `InvalidArgument` naming the field.
    pub fn into_new_item(self, kind: Kind) -> domain::Result<NewItem> {
        let content = self
            .content
            .ok_or_else(|| Error::invalid("email", "one of email or chat content is required"))?;
        let channel = channel("channel", self.channel)?.unwrap_or(content.channel());
        let (send_at, send_at_local) =
            send_time(self.send_at.as_ref(), self.send_at_local.as_ref())?;
        let window = enum_value(
            "delivery_window",
            self.delivery_window,
            DeliveryWindow::from_i64,
        )?
        .filter(|&w| w != DeliveryWindow::Any);
        let on_late =
            enum_value("on_late", self.on_late, OnLate::from_i64)?.filter(|&o| o != OnLate::Send);
        if kind == Kind::NewTicket && on_late == Some(OnLate::ConvertToNote) {
            return Err(Error::invalid(
                "on_late",
                "a NEW_TICKET cannot become a note; use ON_LATE_SEND or ON_LATE_FAIL",
            ));
        }
        let timing = Timing {
            send_at_local,
            requested_send_at: None,
            window,
            max_lateness: duration_ms("max_lateness", self.max_lateness.as_ref())?,
            on_late,
            late_by: None,
        };
        Ok(NewItem {
            account_id: self.account_id,
            ticket_id: self.ticket_id,
            kind,
            channel,
            author_id: self.author_id,
            content,
            send_at,
            on_activity: on_activity("on_activity", self.on_activity)?
                .unwrap_or(OnActivity::ConvertToNote),
            request_id: (!self.request_id.is_empty()).then_some(self.request_id),
            timing,
        })
    }
}

impl From<pb::ScheduleRequest> for ScheduleFields {
    fn from(r: pb::ScheduleRequest) -> Self {
        ScheduleFields {
            account_id: r.account_id,
            ticket_id: r.ticket_id,
            channel: r.channel,
            author_id: r.author_id,
            content: r.content.map(|c| match c {
                pb::schedule_request::Content::Email(e) => email(e),
                pb::schedule_request::Content::Chat(c) => chat(c),
            }),
            send_at: r.send_at,
            on_activity: r.on_activity,
            request_id: r.request_id,
            send_at_local: r.send_at_local,
            delivery_window: r.delivery_window,
            max_lateness: r.max_lateness,
            on_late: r.on_late,
        }
    }
}

/// A batch entry: its kind and fields.
///
/// # Errors
/// `InvalidArgument` on `kind`.
pub fn batch_entry(e: pb::BatchEntry) -> domain::Result<(Kind, ScheduleFields)> {
    let k = kind("kind", e.kind)?.unwrap_or(Kind::Reply);
    Ok((
        k,
        ScheduleFields {
            account_id: e.account_id,
            ticket_id: e.ticket_id,
            channel: e.channel,
            author_id: e.author_id,
            content: e.content.map(|c| match c {
                pb::batch_entry::Content::Email(e) => email(e),
                pb::batch_entry::Content::Chat(c) => chat(c),
            }),
            send_at: e.send_at,
            on_activity: e.on_activity,
            request_id: e.request_id,
            send_at_local: e.send_at_local,
            delivery_window: e.delivery_window,
            max_lateness: e.max_lateness,
            on_late: e.on_late,
        },
    ))
}

/// The channels a control request names: one, or every channel for UNSPECIFIED.
///
/// # Errors
/// `InvalidArgument` on `field` for an unknown value.
pub fn channels(field: &str, v: i32) -> domain::Result<Vec<Channel>> {
    Ok(match channel(field, v)? {
        Some(c) => vec![c],
        None => Channel::ALL.to_vec(),
    })
}

/// Business hours from the wire, validated (fields named as in the request).
///
/// # Errors
/// `InvalidArgument` naming `time_zone`, `days[i].weekday|open|close` or `holidays[i]`.
pub fn business_hours(r: &pb::BusinessHours) -> domain::Result<BusinessHours> {
    let days: Vec<(i32, &str, &str)> = r
        .days
        .iter()
        .map(|d| (d.weekday, d.open.as_str(), d.close.as_str()))
        .collect();
    let holidays: Vec<&str> = r.holidays.iter().map(String::as_str).collect();
    BusinessHours::parse(&r.time_zone, &days, &holidays)
}

/// Business hours for the wire (canonical: merged intervals, sorted).
pub fn business_hours_pb(account_id: String, h: &BusinessHours) -> pb::BusinessHours {
    let spec = h.to_spec();
    pb::BusinessHours {
        account_id,
        time_zone: spec.time_zone,
        days: spec
            .days
            .into_iter()
            .map(|d| pb::BusinessDay {
                weekday: d.weekday,
                open: d.open,
                close: d.close,
            })
            .collect(),
        holidays: spec.holidays,
    }
}

/// Dispatch controls for the wire.
pub fn controls_pb(c: AccountControls) -> pb::DispatchControls {
    pb::DispatchControls {
        account_id: c.account_id,
        paused_channels: c.paused.iter().map(|ch| ch.as_i64() as i32).collect(),
        rate_limits: c
            .rate_limits
            .into_iter()
            .map(|(ch, n)| pb::RateLimit {
                channel: ch.as_i64() as i32,
                per_minute: i64::from(n),
            })
            .collect(),
    }
}

/// A reported ticket activity.
///
/// # Errors
/// `InvalidArgument` naming the field.
pub fn activity(r: &pb::RecordTicketActivityRequest) -> domain::Result<Activity> {
    let author_kind = enum_value("author_kind", r.author_kind, AuthorKind::from_i64)?
        .ok_or_else(|| Error::invalid("author_kind", "is required (CLIENT or STAFF)"))?;
    Ok(Activity {
        author_kind,
        message_id: r.message_id.clone(),
        occurred_at: required_ms("occurred_at", r.occurred_at.as_ref())?,
    })
}

/// Optional timestamp from the wire.
///
/// # Errors
/// `InvalidArgument` on `field`.
pub fn optional_ms(field: &str, t: Option<&Timestamp>) -> domain::Result<Option<Millis>> {
    t.map(|t| ms(field, t)).transpose()
}

impl From<Item> for pb::ScheduledItem {
    fn from(i: Item) -> Self {
        let item_id = i.public_id();
        let content = Some(match i.content {
            Content::Email(e) => pb::scheduled_item::Content::Email(pb::EmailContent {
                from: e.from,
                to: e.to,
                cc: e.cc,
                bcc: e.bcc,
                subject: e.subject,
                text_body: e.text_body,
                html_body: e.html_body,
                in_reply_to: e.in_reply_to,
                attachments: e.attachments.into_iter().map(attachment_pb).collect(),
            }),
            Content::Chat(c) => pb::scheduled_item::Content::Chat(pb::ChatContent {
                conversation_id: c.conversation_id,
                text: c.text,
                attachments: c.attachments.into_iter().map(attachment_pb).collect(),
            }),
        });
        pb::ScheduledItem {
            item_id,
            account_id: i.account_id,
            ticket_id: i.ticket_id,
            kind: i.kind.as_i64() as i32,
            channel: i.channel.as_i64() as i32,
            author_id: i.author_id,
            content,
            send_at: Some(ts(i.send_at)),
            created_at: Some(ts(i.created_at)),
            updated_at: Some(ts(i.updated_at)),
            state: i.state.as_i64() as i32,
            note_at: i.note_at.map(ts),
            converted_by: i.converted_by.map(|a| pb::Activity {
                author_kind: a.author_kind.as_i64() as i32,
                message_id: a.message_id,
                occurred_at: Some(ts(a.occurred_at)),
            }),
            on_activity: i.on_activity.as_i64() as i32,
            attempts: i.attempts,
            last_error: i.last_error.unwrap_or_default(),
            next_attempt_at: i.next_attempt_at.map(ts),
            sent_at: i.sent_at.map(ts),
            provider_message_id: i.provider_message_id.unwrap_or_default(),
            request_id: i.request_id.unwrap_or_default(),
            send_at_local: i.timing.send_at_local.map(|l| pb::LocalTime {
                local_time: l.local_time_string(),
                time_zone: l.zone_name().to_owned(),
            }),
            requested_send_at: i.timing.requested_send_at.map(ts),
            delivery_window: i.timing.window().as_i64() as i32,
            max_lateness: i.timing.max_lateness.map(duration),
            on_late: i.timing.on_late().as_i64() as i32,
            late_by: i.timing.late_by.map(duration),
        }
    }
}

impl From<DeferredTicket> for pb::DeferredTicket {
    fn from(t: DeferredTicket) -> Self {
        pb::DeferredTicket {
            ticket_id: t.ticket_id,
            next_send_at: Some(ts(t.next_send_at)),
            pending_count: t.pending_count,
        }
    }
}

impl From<Event> for pb::ItemEvent {
    fn from(e: Event) -> Self {
        pb::ItemEvent {
            sequence: e.sequence,
            r#type: event_type(e.kind) as i32,
            item: Some(e.item.into()),
            at: Some(ts(e.at)),
        }
    }
}

fn event_type(k: EventType) -> pb::EventType {
    match k {
        EventType::Scheduled => pb::EventType::Scheduled,
        EventType::Updated => pb::EventType::Updated,
        EventType::Dispatching => pb::EventType::Dispatching,
        EventType::Retrying => pb::EventType::Retrying,
        EventType::Sent => pb::EventType::Sent,
        EventType::Failed => pb::EventType::Failed,
        EventType::Cancelled => pb::EventType::Cancelled,
        EventType::ConvertedToNote => pb::EventType::ConvertedToNote,
    }
}

/// Maps domain errors to gRPC statuses (API.md "Errors and limits"), so a handler
/// answers a domain error with `?`; internal details were logged where they happened
/// and are not sent.
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        match e {
            e @ Error::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::OutOfRange(m) => Status::out_of_range(m),
            Error::Internal(m) => Status::internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_error_becomes_the_status_code_of_its_kind_with_its_message() {
        use tonic::Code;
        let cases = [
            (
                Error::invalid("email.to[1]", "bad"),
                Code::InvalidArgument,
                "email.to[1]: bad",
            ),
            (
                Error::NotFound("item 7 not found".into()),
                Code::NotFound,
                "item 7 not found",
            ),
            (
                Error::FailedPrecondition("sent".into()),
                Code::FailedPrecondition,
                "sent",
            ),
            (
                Error::AlreadyExists("dup".into()),
                Code::AlreadyExists,
                "dup",
            ),
            (
                Error::ResourceExhausted("full".into()),
                Code::ResourceExhausted,
                "full",
            ),
            (
                Error::OutOfRange("pruned".into()),
                Code::OutOfRange,
                "pruned",
            ),
            (
                Error::Unavailable("stopping".into()),
                Code::Unavailable,
                "stopping",
            ),
            (Error::Internal("storage".into()), Code::Internal, "storage"),
        ];
        for (error, code, message) in cases {
            let status = tonic::Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        for v in [0, 1, 999, 1000, -1, -1001, 1_800_000_000_123] {
            assert_eq!(ms("t", &ts(v)).unwrap(), v, "{v}");
        }
    }

    #[test]
    fn bad_timestamps_name_the_field() {
        let e = ms(
            "send_at",
            &Timestamp {
                seconds: 0,
                nanos: -1,
            },
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("send_at: "));
        let e = ms(
            "send_at",
            &Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("send_at: "));
    }

    #[test]
    fn missing_content_and_send_at_are_named() {
        let f = ScheduleFields::from(pb::ScheduleRequest::default());
        let e = f.into_new_item(Kind::Reply).unwrap_err();
        assert!(e.to_string().starts_with("email: "), "{e}");
        let f = ScheduleFields::from(pb::ScheduleRequest {
            content: Some(pb::schedule_request::Content::Chat(
                pb::ChatContent::default(),
            )),
            ..Default::default()
        });
        let e = f.into_new_item(Kind::Reply).unwrap_err();
        assert!(e.to_string().starts_with("send_at: "), "{e}");
    }
}

#[cfg(test)]
mod never_panics {
    //! Random, mostly invalid requests go through the proto -> domain conversion and
    //! validation without a panic; what passes validation round-trips to the wire.
    use super::*;
    use crate::config::Limits;
    use proptest::prelude::*;

    fn any_ts() -> impl Strategy<Value = Option<Timestamp>> {
        prop_oneof![
            Just(None),
            (any::<i64>(), any::<i32>())
                .prop_map(|(seconds, nanos)| Some(Timestamp { seconds, nanos })),
            (1_700_000_000i64..1_900_000_000, 0i32..1_000_000_000)
                .prop_map(|(seconds, nanos)| Some(Timestamp { seconds, nanos })),
        ]
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z@.<> ]{0,12}",
            any::<String>(),
            Just("a@example.com".to_owned()),
            (0usize..300_000).prop_map(|n| "x".repeat(n)),
        ]
    }

    fn any_email() -> impl Strategy<Value = pb::EmailContent> {
        (
            any_text(),
            prop::collection::vec(any_text(), 0..4),
            prop::collection::vec(any_text(), 0..3),
            prop::collection::vec(any_text(), 0..120),
            any_text(),
            any_text(),
            any_text(),
        )
            .prop_map(|(from, to, cc, bcc, subject, text_body, html_body)| {
                pb::EmailContent {
                    from,
                    to,
                    cc,
                    bcc,
                    subject,
                    text_body,
                    html_body,
                    ..Default::default()
                }
            })
    }

    fn any_request() -> impl Strategy<Value = pb::ScheduleRequest> {
        (
            any_text(),
            any_text(),
            any::<i32>(),
            any_text(),
            prop_oneof![
                Just(None),
                any_email().prop_map(|e| Some(pb::schedule_request::Content::Email(e))),
                (any_text(), any_text()).prop_map(|(c, t)| Some(
                    pb::schedule_request::Content::Chat(pb::ChatContent {
                        conversation_id: c,
                        text: t,
                        attachments: vec![]
                    })
                )),
            ],
            any_ts(),
            any::<i32>(),
            any_text(),
        )
            .prop_map(
                |(
                    account_id,
                    ticket_id,
                    channel,
                    author_id,
                    content,
                    send_at,
                    on_activity,
                    request_id,
                )| {
                    pb::ScheduleRequest {
                        account_id,
                        ticket_id,
                        channel,
                        author_id,
                        content,
                        send_at,
                        on_activity,
                        request_id,
                        ..Default::default()
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_schedule_requests_never_panic(req in any_request(), now in 0i64..4_000_000_000_000) {
            let limits = Limits::default();
            if let Ok(new) = ScheduleFields::from(req).into_new_item(Kind::Reply) {
                if crate::domain::validate_new(&new, now, &limits).is_ok() {
                    // A valid request has every required part.
                    prop_assert!(!new.account_id.is_empty() && !new.ticket_id.is_empty());
                    prop_assert!(new.send_at >= now - limits.max_past_ms);
                }
            }
        }

        #[test]
        fn random_activity_and_listing_fields_never_panic(
            kind in any::<i32>(), ts in any_ts(), order_v in any::<i32>(), aud in any::<i32>(), st in any::<i32>()
        ) {
            let _ = activity(&pb::RecordTicketActivityRequest {
                account_id: "a".into(),
                ticket_id: "t".into(),
                author_kind: kind,
                message_id: "m".into(),
                occurred_at: ts,
            });
            let _ = order(order_v);
            let _ = audience(aud);
            let _ = state("state", st);
            let _ = on_activity("on_activity", st);
        }
    }
}
