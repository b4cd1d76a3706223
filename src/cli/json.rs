//! `--json` output: responses as JSON values, built by hand from the protobuf structs.
//!
//! The shape follows the proto field names (snake_case). Timestamps are RFC 3339 in UTC
//! (`"2026-11-26T06:00:00Z"`), `null` when unset; enum values are their short names
//! (`"PENDING"`, `"EMAIL"`), or the number for a value this build does not know.
//! Strings and lists are always present, empty when unset, so scripts need no guards.

use serde_json::{json, Map, Value};

use super::{output, timestamp, timing};
use crate::pb;

fn time(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .and_then(timestamp::rfc3339_utc)
        .map_or(Value::Null, Value::String)
}

/// A duration in the proto3 JSON form (`"1800s"`), `null` when unset.
fn duration(d: &Option<prost_types::Duration>) -> Value {
    d.as_ref()
        .map_or(Value::Null, |d| Value::String(timing::json(d)))
}

/// An enum short name as JSON: a string, or the number when unknown.
pub(super) fn enum_value(short: String) -> Value {
    match short.parse::<i64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::String(short),
    }
}

fn attachments(list: &[pb::Attachment]) -> Value {
    Value::Array(
        list.iter()
            .map(|a| {
                json!({
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "url": a.url,
                    "size_bytes": a.size_bytes,
                })
            })
            .collect(),
    )
}

/// A `ScheduledItem`, with `email` or `chat` holding the content.
pub fn item(item: &pb::ScheduledItem) -> Value {
    let mut v = json!({
        "item_id": item.item_id,
        "account_id": item.account_id,
        "ticket_id": item.ticket_id,
        "kind": enum_value(output::kind(item.kind)),
        "channel": enum_value(output::channel(item.channel)),
        "author_id": item.author_id,
        "send_at": time(&item.send_at),
        "created_at": time(&item.created_at),
        "updated_at": time(&item.updated_at),
        "state": enum_value(output::state(item.state)),
        "note_at": time(&item.note_at),
        "converted_by": item.converted_by.as_ref().map_or(Value::Null, |a| json!({
            "author_kind": enum_value(output::author_kind(a.author_kind)),
            "message_id": a.message_id,
            "occurred_at": time(&a.occurred_at),
        })),
        "on_activity": enum_value(output::on_activity(item.on_activity)),
        "attempts": item.attempts,
        "last_error": item.last_error,
        "next_attempt_at": time(&item.next_attempt_at),
        "sent_at": time(&item.sent_at),
        "provider_message_id": item.provider_message_id,
        "request_id": item.request_id,
        "send_at_local": item.send_at_local.as_ref().map_or(Value::Null, |l| json!({
            "local_time": l.local_time,
            "time_zone": l.time_zone,
        })),
        "requested_send_at": time(&item.requested_send_at),
        "delivery_window": enum_value(output::delivery_window(item.delivery_window)),
        "max_lateness": duration(&item.max_lateness),
        "on_late": enum_value(output::on_late(item.on_late)),
        "late_by": duration(&item.late_by),
    });
    if let (Value::Object(map), Some(content)) = (&mut v, &item.content) {
        match content {
            pb::scheduled_item::Content::Email(e) => {
                map.insert(
                    "email".to_owned(),
                    json!({
                        "from": e.from,
                        "to": e.to,
                        "cc": e.cc,
                        "bcc": e.bcc,
                        "subject": e.subject,
                        "text_body": e.text_body,
                        "html_body": e.html_body,
                        "in_reply_to": e.in_reply_to,
                        "attachments": attachments(&e.attachments),
                    }),
                );
            }
            pb::scheduled_item::Content::Chat(c) => {
                map.insert(
                    "chat".to_owned(),
                    json!({
                        "conversation_id": c.conversation_id,
                        "text": c.text,
                        "attachments": attachments(&c.attachments),
                    }),
                );
            }
        }
    }
    v
}

/// `{"items": [...], "next_page_token": "..."}`.
pub fn items(items: &[pb::ScheduledItem], next_page_token: Option<&str>) -> Value {
    let mut map = Map::new();
    map.insert(
        "items".to_owned(),
        Value::Array(items.iter().map(item).collect()),
    );
    if let Some(token) = next_page_token {
        map.insert("next_page_token".to_owned(), Value::from(token));
    }
    Value::Object(map)
}

/// `{"affected": [...]}` of RecordTicketActivity.
pub fn affected(items: &[pb::ScheduledItem]) -> Value {
    json!({ "affected": items.iter().map(item).collect::<Vec<_>>() })
}

/// `{"tickets": [{ticket_id, next_send_at, pending_count}], "next_page_token": "..."}`.
pub fn tickets(response: &pb::ListDeferredTicketsResponse) -> Value {
    let tickets: Vec<Value> = response
        .tickets
        .iter()
        .map(|t| {
            json!({
                "ticket_id": t.ticket_id,
                "next_send_at": time(&t.next_send_at),
                "pending_count": t.pending_count,
            })
        })
        .collect();
    json!({ "tickets": tickets, "next_page_token": response.next_page_token })
}

/// `{"nodes": [{node_id, address, last_seen, partitions}], "partitions": [{partition,
/// owner, epoch, expires_at}]}` of GetClusterStatus (`expires_at` null: never).
pub fn cluster(status: &pb::ClusterStatus) -> Value {
    let nodes: Vec<Value> = status
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "address": n.address,
                "last_seen": time(&n.last_seen),
                "partitions": n.partitions,
            })
        })
        .collect();
    let partitions: Vec<Value> = status
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "owner": p.owner,
                "epoch": p.epoch,
                "expires_at": time(&p.expires_at),
            })
        })
        .collect();
    json!({ "nodes": nodes, "partitions": partitions })
}

/// `{"sequence", "type", "at", "item"}` of WatchEvents.
pub fn event(event: &pb::ItemEvent) -> Value {
    json!({
        "sequence": event.sequence,
        "type": enum_value(output::event_type(event.r#type)),
        "at": time(&event.at),
        "item": event.item.as_ref().map_or(Value::Null, item),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_has_short_enum_names_utc_times_and_its_content() {
        let it = pb::ScheduledItem {
            item_id: "it-1".into(),
            kind: pb::Kind::NewTicket as i32,
            channel: pb::Channel::Chat as i32,
            state: pb::State::ConvertedToNote as i32,
            on_activity: pb::OnActivity::Keep as i32,
            send_at: Some(prost_types::Timestamp {
                seconds: 1_795_672_800,
                nanos: 500_000_000,
            }),
            converted_by: Some(pb::Activity {
                author_kind: pb::AuthorKind::Client as i32,
                message_id: "m-1".into(),
                occurred_at: None,
            }),
            content: Some(pb::scheduled_item::Content::Chat(pb::ChatContent {
                conversation_id: "c-1".into(),
                text: "hi".into(),
                attachments: vec![],
            })),
            ..Default::default()
        };
        let v = item(&it);
        assert_eq!(v["kind"], "NEW_TICKET");
        assert_eq!(v["channel"], "CHAT");
        assert_eq!(v["state"], "CONVERTED_TO_NOTE");
        assert_eq!(v["on_activity"], "KEEP");
        assert_eq!(v["send_at"], "2026-11-26T06:00:00.500Z");
        assert_eq!(v["sent_at"], Value::Null);
        assert_eq!(v["converted_by"]["author_kind"], "CLIENT");
        assert_eq!(v["chat"]["conversation_id"], "c-1");
        assert_eq!(v["chat"]["text"], "hi");
        assert!(v.get("email").is_none());
        assert_eq!(v["send_at_local"], Value::Null);
        assert_eq!(v["max_lateness"], Value::Null);
        assert_eq!(v["delivery_window"], "UNSPECIFIED");
    }

    #[test]
    fn an_item_carries_its_local_time_window_and_lateness_policy() {
        let it = pb::ScheduledItem {
            send_at_local: Some(pb::LocalTime {
                local_time: "2026-11-26T09:00:00".into(),
                time_zone: "Europe/Moscow".into(),
            }),
            requested_send_at: Some(prost_types::Timestamp {
                seconds: 1_795_672_800,
                nanos: 0,
            }),
            delivery_window: pb::DeliveryWindow::BusinessHours as i32,
            max_lateness: Some(prost_types::Duration {
                seconds: 1_800,
                nanos: 0,
            }),
            on_late: pb::OnLate::Fail as i32,
            late_by: Some(prost_types::Duration {
                seconds: 2,
                nanos: 500_000_000,
            }),
            ..Default::default()
        };
        let v = item(&it);
        assert_eq!(v["send_at_local"]["local_time"], "2026-11-26T09:00:00");
        assert_eq!(v["send_at_local"]["time_zone"], "Europe/Moscow");
        assert_eq!(v["requested_send_at"], "2026-11-26T06:00:00Z");
        assert_eq!(v["delivery_window"], "BUSINESS_HOURS");
        assert_eq!(v["max_lateness"], "1800s");
        assert_eq!(v["on_late"], "FAIL");
        assert_eq!(v["late_by"], "2.5s");
    }

    #[test]
    fn an_unknown_enum_value_is_its_number() {
        let it = pb::ScheduledItem {
            state: 42,
            ..Default::default()
        };
        assert_eq!(item(&it)["state"], 42);
    }

    #[test]
    fn an_event_carries_its_type_and_item() {
        let ev = pb::ItemEvent {
            sequence: 3,
            r#type: pb::EventType::Cancelled as i32,
            item: Some(pb::ScheduledItem::default()),
            at: None,
        };
        let v = event(&ev);
        assert_eq!(v["sequence"], 3);
        assert_eq!(v["type"], "CANCELLED");
        assert_eq!(v["at"], Value::Null);
        assert!(v["item"].is_object());
    }
}
