//! Human-readable output: aligned tables, an item's detail view, event lines.
//!
//! Every function returns the text instead of printing it, so tests check it exactly.
//! Times are shown in RFC 3339 in the user's `--tz` (UTC, with `Z`, by default). Enum
//! values are shown by their short names (`PENDING`, `EMAIL`), as in `--json`.

use chrono_tz::Tz;

use super::{timestamp, timing};
use crate::pb;

/// Longest summary (subject or text) in a table cell, in characters.
pub const SUMMARY_WIDTH: usize = 40;

/// The short name of an enum value: its proto name without the type prefix
/// (`STATE_PENDING` -> `PENDING`); the number for a value this build does not know.
pub fn short_name<E>(value: i32, prefix: &str) -> String
where
    E: TryFrom<i32> + ProtoName,
{
    match E::try_from(value) {
        Ok(e) => {
            let full = e.proto_name();
            full.strip_prefix(prefix).unwrap_or(full).to_owned()
        }
        Err(_) => value.to_string(),
    }
}

/// Generated enums' `as_str_name`, behind a trait so [`short_name`] is generic.
pub trait ProtoName {
    fn proto_name(&self) -> &'static str;
}

macro_rules! proto_name {
    ($($t:ty),*) => {$(
        impl ProtoName for $t {
            fn proto_name(&self) -> &'static str {
                self.as_str_name()
            }
        }
    )*};
}
proto_name!(
    pb::Kind,
    pb::Channel,
    pb::State,
    pb::OnActivity,
    pb::AuthorKind,
    pb::EventType,
    pb::DeliveryWindow,
    pb::OnLate
);

pub fn kind(v: i32) -> String {
    short_name::<pb::Kind>(v, "KIND_")
}
pub fn channel(v: i32) -> String {
    short_name::<pb::Channel>(v, "CHANNEL_")
}
pub fn state(v: i32) -> String {
    short_name::<pb::State>(v, "STATE_")
}
pub fn on_activity(v: i32) -> String {
    short_name::<pb::OnActivity>(v, "ON_ACTIVITY_")
}
pub fn author_kind(v: i32) -> String {
    short_name::<pb::AuthorKind>(v, "AUTHOR_KIND_")
}
pub fn event_type(v: i32) -> String {
    short_name::<pb::EventType>(v, "EVENT_TYPE_")
}
/// `BUSINESS_HOURS`, `ANY`, ...
pub fn delivery_window(v: i32) -> String {
    short_name::<pb::DeliveryWindow>(v, "DELIVERY_WINDOW_")
}
/// `SEND`, `CONVERT_TO_NOTE`, `FAIL`, ...
pub fn on_late(v: i32) -> String {
    short_name::<pb::OnLate>(v, "ON_LATE_")
}

/// Columns separated by two spaces, each as wide as its widest cell (in characters);
/// the last column is not padded, so no line ends in spaces. Ends with a newline.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// `s` on one line (whitespace runs become one space), at most `max` characters, the
/// last being `…` when something was cut.
pub fn truncate(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// What a table shows of the content: the email subject (or its text when there is no
/// subject), the chat text.
pub fn summary(item: &pb::ScheduledItem) -> String {
    let text = match &item.content {
        Some(pb::scheduled_item::Content::Email(e)) if !e.subject.is_empty() => &e.subject,
        Some(pb::scheduled_item::Content::Email(e)) if !e.text_body.is_empty() => &e.text_body,
        Some(pb::scheduled_item::Content::Email(e)) => &e.html_body,
        Some(pb::scheduled_item::Content::Chat(c)) => &c.text,
        None => return String::new(),
    };
    truncate(text, SUMMARY_WIDTH)
}

/// When the item goes (or went) out, for listings: a pending item waiting for a retry
/// shows its next attempt (API.md: "its next send time in listings is
/// next_attempt_at"), a sent one its sent_at, a note its note_at, others their send_at.
pub fn when(item: &pb::ScheduledItem) -> Option<&prost_types::Timestamp> {
    let state = pb::State::try_from(item.state).ok();
    match state {
        Some(pb::State::Sent) => item.sent_at.as_ref().or(item.send_at.as_ref()),
        Some(pb::State::ConvertedToNote) => item.note_at.as_ref().or(item.send_at.as_ref()),
        Some(pb::State::Pending) => item.next_attempt_at.as_ref().or(item.send_at.as_ref()),
        _ => item.send_at.as_ref(),
    }
}

/// Items as a table: id, ticket, kind, channel, state, time, summary. When some item was
/// scheduled at a local time (`send_at_local`), a LOCAL column after AT shows that time in
/// the item's zone (`-` for the others).
pub fn items_table(items: &[pb::ScheduledItem], tz: Tz) -> String {
    let with_local = items.iter().any(|item| item.send_at_local.is_some());
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            let mut row = vec![
                item.item_id.clone(),
                item.ticket_id.clone(),
                kind(item.kind),
                channel(item.channel),
                state(item.state),
                timestamp::display(when(item), tz),
            ];
            if with_local {
                row.push(timing::in_item_zone(when(item), item).unwrap_or_else(|| "-".into()));
            }
            row.push(summary(item));
            row
        })
        .collect();
    let mut headers = vec!["ITEM", "TICKET", "KIND", "CHANNEL", "STATE", "AT"];
    if with_local {
        headers.push("LOCAL");
    }
    headers.push("SUMMARY");
    table(&headers, &rows)
}

/// The deferred-sending view as a table.
pub fn tickets_table(tickets: &[pb::DeferredTicket], tz: Tz) -> String {
    let rows: Vec<Vec<String>> = tickets
        .iter()
        .map(|t| {
            vec![
                t.ticket_id.clone(),
                timestamp::display(t.next_send_at.as_ref(), tz),
                t.pending_count.to_string(),
            ]
        })
        .collect();
    table(&["TICKET", "NEXT SEND AT", "PENDING"], &rows)
}

/// `sendlater cluster`: a table of the nodes (id, address, last seen, how many
/// partitions and which, as ranges), a blank line, a table of the partitions (owner,
/// epoch, when the lease ends: `never` when it does not, `-` for no owner).
pub fn cluster_text(status: &pb::ClusterStatus, tz: Tz) -> String {
    let nodes: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.clone(),
                n.address.clone(),
                timestamp::display(n.last_seen.as_ref(), tz),
                n.partitions.len().to_string(),
                crate::cluster::partition_ranges(&n.partitions),
            ]
        })
        .collect();
    let partitions: Vec<Vec<String>> = status
        .partitions
        .iter()
        .map(|p| {
            let owner = if p.owner.is_empty() { "-" } else { &p.owner };
            vec![
                p.partition.to_string(),
                owner.to_owned(),
                p.epoch.to_string(),
                match &p.expires_at {
                    None => "never".to_owned(),
                    Some(t) => timestamp::display(Some(t), tz),
                },
            ]
        })
        .collect();
    format!(
        "{}\n{}",
        table(
            &["NODE", "ADDRESS", "LAST SEEN", "OWNS", "PARTITIONS"],
            &nodes
        ),
        table(&["PARTITION", "OWNER", "EPOCH", "EXPIRES AT"], &partitions)
    )
}

/// Every field of one item that is set, one `label: value` per line. Multi-line text
/// continues indented under its label.
pub fn item_detail(item: &pb::ScheduledItem, tz: Tz) -> String {
    let time = |t: &Option<prost_types::Timestamp>| timestamp::display(t.as_ref(), tz);
    let mut fields: Vec<(&str, String)> = vec![
        ("item", item.item_id.clone()),
        ("account", item.account_id.clone()),
        ("ticket", item.ticket_id.clone()),
        ("kind", kind(item.kind)),
        ("channel", channel(item.channel)),
        ("state", state(item.state)),
        ("author", item.author_id.clone()),
        ("send at", timing::beside(&item.send_at, item, tz)),
    ];
    fields.extend(timing::fields(item, tz));
    fields.push(("created at", time(&item.created_at)));
    fields.push(("on activity", on_activity(item.on_activity)));
    match &item.content {
        Some(pb::scheduled_item::Content::Email(e)) => {
            fields.push(("from", e.from.clone()));
            fields.push(("to", e.to.join(", ")));
            fields.push(("cc", e.cc.join(", ")));
            fields.push(("bcc", e.bcc.join(", ")));
            fields.push(("subject", e.subject.clone()));
            fields.push(("in reply to", e.in_reply_to.clone()));
            fields.push(("text", e.text_body.clone()));
            fields.push(("html", e.html_body.clone()));
            fields.push(("attachments", attachments(&e.attachments)));
        }
        Some(pb::scheduled_item::Content::Chat(c)) => {
            fields.push(("conversation", c.conversation_id.clone()));
            fields.push(("text", c.text.clone()));
            fields.push(("attachments", attachments(&c.attachments)));
        }
        None => {}
    }
    if item.attempts > 0 {
        fields.push(("attempts", item.attempts.to_string()));
    }
    fields.push(("last error", item.last_error.clone()));
    if item.next_attempt_at.is_some() {
        fields.push(("next attempt", time(&item.next_attempt_at)));
    }
    if item.sent_at.is_some() {
        fields.push(("sent at", time(&item.sent_at)));
    }
    fields.push(("provider id", item.provider_message_id.clone()));
    if item.note_at.is_some() {
        fields.push(("note at", time(&item.note_at)));
    }
    if let Some(a) = &item.converted_by {
        fields.push((
            "converted by",
            format!(
                "{} message {} at {}",
                author_kind(a.author_kind),
                a.message_id,
                time(&a.occurred_at)
            ),
        ));
    }
    fields.push(("request id", item.request_id.clone()));
    if item.updated_at.is_some() {
        fields.push(("updated at", time(&item.updated_at)));
    }

    fields.retain(|(_, value)| !value.is_empty());
    // "label:" and at least one space.
    let width = fields.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (label, value) in &fields {
        let mut lines = value.lines();
        let first = lines.next().unwrap_or("");
        out.push_str(&format!("{:<width$}{first}\n", format!("{label}:")));
        for line in lines {
            out.push_str(&format!("{:width$}{line}\n", ""));
        }
    }
    out
}

fn attachments(list: &[pb::Attachment]) -> String {
    list.iter()
        .map(|a| {
            format!(
                "{} ({}, {} bytes) {}",
                a.filename, a.content_type, a.size_bytes, a.url
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One `watch` event on one line: sequence, time, type, then the item.
pub fn event_line(event: &pb::ItemEvent, tz: Tz) -> String {
    let at = timestamp::display(event.at.as_ref(), tz);
    let kind_of_event = event_type(event.r#type);
    match &event.item {
        Some(item) => format!(
            "{seq}  {at}  {kind_of_event:<17}  {id}  ticket={ticket}  state={state}  at={when}  {summary}",
            seq = event.sequence,
            id = item.item_id,
            ticket = item.ticket_id,
            state = state(item.state),
            when = timestamp::display(when(item), tz),
            summary = summary(item),
        )
        .trim_end()
        .to_owned(),
        None => format!("{}  {at}  {kind_of_event}", event.sequence),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    /// 2026-11-26T06:00:00Z.
    const T0: i64 = 1_795_672_800;

    fn email_item() -> pb::ScheduledItem {
        pb::ScheduledItem {
            item_id: "it-1".into(),
            account_id: "acme".into(),
            ticket_id: "T-100".into(),
            kind: pb::Kind::Reply as i32,
            channel: pb::Channel::Email as i32,
            author_id: "alice".into(),
            content: Some(pb::scheduled_item::Content::Email(pb::EmailContent {
                to: vec!["a@x.test".into(), "b@x.test".into()],
                subject: "Your refund has been approved and is on its way to you".into(),
                text_body: "Hello,\nit is done.".into(),
                ..Default::default()
            })),
            send_at: ts(T0),
            state: pb::State::Pending as i32,
            ..Default::default()
        }
    }

    fn chat_item() -> pb::ScheduledItem {
        pb::ScheduledItem {
            item_id: "it-22".into(),
            ticket_id: "T-7".into(),
            kind: pb::Kind::NewTicket as i32,
            channel: pb::Channel::Chat as i32,
            content: Some(pb::scheduled_item::Content::Chat(pb::ChatContent {
                conversation_id: "c".into(),
                text: "Привет!\n\nКак дела?".into(),
                attachments: vec![],
            })),
            send_at: ts(T0 - 3600),
            sent_at: ts(T0),
            state: pb::State::Sent as i32,
            ..Default::default()
        }
    }

    #[test]
    fn items_table_aligns_columns_and_truncates_summaries() {
        let got = items_table(&[email_item(), chat_item()], chrono_tz::UTC);
        let want = "\
ITEM   TICKET  KIND        CHANNEL  STATE    AT                    SUMMARY
it-1   T-100   REPLY       EMAIL    PENDING  2026-11-26T06:00:00Z  Your refund has been approved and is on…
it-22  T-7     NEW_TICKET  CHAT     SENT     2026-11-26T06:00:00Z  Привет! Как дела?
";
        assert_eq!(got, want);
    }

    #[test]
    fn items_scheduled_at_a_local_time_show_it_in_a_local_column() {
        let mut moscow = email_item();
        moscow.send_at_local = Some(pb::LocalTime {
            local_time: "2026-11-26T09:00:00".into(),
            time_zone: "Europe/Moscow".into(),
        });
        let got = items_table(&[moscow.clone(), chat_item()], chrono_tz::UTC);
        let want = "\
ITEM   TICKET  KIND        CHANNEL  STATE    AT                    LOCAL                           SUMMARY
it-1   T-100   REPLY       EMAIL    PENDING  2026-11-26T06:00:00Z  2026-11-26 09:00 Europe/Moscow  Your refund has been approved and is on…
it-22  T-7     NEW_TICKET  CHAT     SENT     2026-11-26T06:00:00Z  -                               Привет! Как дела?
";
        assert_eq!(got, want);
        let detail = item_detail(&moscow, chrono_tz::UTC);
        assert!(
            detail.contains(
                "\nsend at:         2026-11-26T06:00:00Z (2026-11-26 09:00 Europe/Moscow)\n\
                 send at local:   2026-11-26 09:00 Europe/Moscow\n"
            ),
            "{detail}"
        );
    }

    #[test]
    fn table_times_are_shown_in_the_display_zone() {
        let got = items_table(&[email_item()], chrono_tz::Europe::Moscow);
        assert!(got.contains("2026-11-26T09:00:00+03:00"), "{got}");
    }

    #[test]
    fn a_pending_item_waiting_for_a_retry_shows_its_next_attempt() {
        let mut item = email_item();
        item.next_attempt_at = ts(T0 + 60);
        assert_eq!(when(&item), ts(T0 + 60).as_ref());
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly10!", 10), "exactly10!");
        assert_eq!(truncate("ééééééééééé", 5), "éééé…");
        assert_eq!(truncate("a\n\tb   c", 10), "a b c");
    }

    #[test]
    fn tickets_table_shows_next_send_time_and_count() {
        let got = tickets_table(
            &[pb::DeferredTicket {
                ticket_id: "T-1".into(),
                next_send_at: ts(T0),
                pending_count: 3,
            }],
            chrono_tz::UTC,
        );
        assert_eq!(
            got,
            "TICKET  NEXT SEND AT          PENDING\nT-1     2026-11-26T06:00:00Z  3\n"
        );
    }

    #[test]
    fn the_cluster_shows_nodes_with_partition_ranges_then_every_partition() {
        let mut owned: Vec<u32> = (0..=20).collect();
        owned.push(45);
        let status = pb::ClusterStatus {
            nodes: vec![pb::NodeStatus {
                node_id: "node-a".into(),
                address: "10.0.0.5:50051".into(),
                last_seen: ts(T0),
                partitions: owned,
            }],
            partitions: vec![
                pb::PartitionStatus {
                    partition: 0,
                    owner: "node-a".into(),
                    epoch: 3,
                    expires_at: ts(T0 + 10),
                },
                pb::PartitionStatus {
                    partition: 1,
                    owner: "node-a".into(),
                    epoch: 1,
                    expires_at: None,
                },
                pb::PartitionStatus {
                    partition: 21,
                    owner: String::new(),
                    epoch: 0,
                    expires_at: None,
                },
            ],
        };
        assert_eq!(
            cluster_text(&status, chrono_tz::UTC),
            "NODE    ADDRESS         LAST SEEN             OWNS  PARTITIONS\n\
             node-a  10.0.0.5:50051  2026-11-26T06:00:00Z  22    0-20,45\n\
             \n\
             PARTITION  OWNER   EPOCH  EXPIRES AT\n\
             0          node-a  3      2026-11-26T06:00:10Z\n\
             1          node-a  1      never\n\
             21         -       0      never\n"
        );
    }

    #[test]
    fn item_detail_lists_the_set_fields_and_indents_multiline_text() {
        let got = item_detail(&email_item(), chrono_tz::UTC);
        assert!(got.starts_with("item:            it-1\n"), "{got}");
        assert!(
            got.contains("\nto:              a@x.test, b@x.test\n"),
            "{got}"
        );
        assert!(
            got.contains("\ntext:            Hello,\n                 it is done.\n"),
            "{got}"
        );
        assert!(got.contains("\non activity:     UNSPECIFIED\n"), "{got}");
        assert!(got.contains("\ndelivery window: ANY\n"), "{got}");
        assert!(!got.contains("cc:"), "empty fields are left out: {got}");
        assert!(!got.contains("sent at"), "{got}");
    }

    #[test]
    fn enum_values_show_short_names_and_unknown_ones_their_number() {
        assert_eq!(
            state(pb::State::ConvertedToNote as i32),
            "CONVERTED_TO_NOTE"
        );
        assert_eq!(channel(pb::Channel::Email as i32), "EMAIL");
        assert_eq!(kind(pb::Kind::NewTicket as i32), "NEW_TICKET");
        assert_eq!(event_type(pb::EventType::Retrying as i32), "RETRYING");
        assert_eq!(state(99), "99");
    }

    #[test]
    fn an_event_is_one_line() {
        let event = pb::ItemEvent {
            sequence: 7,
            r#type: pb::EventType::Sent as i32,
            item: Some(chat_item()),
            at: ts(T0),
        };
        assert_eq!(
            event_line(&event, chrono_tz::UTC),
            "7  2026-11-26T06:00:00Z  SENT               it-22  ticket=T-7  state=SENT  \
             at=2026-11-26T06:00:00Z  Привет! Как дела?"
        );
    }
}
