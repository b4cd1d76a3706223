//! Helpers shared by the Scheduler integration tests (on top of `tests/common`): short
//! ways to schedule, list and report activity over the real client, so each test reads
//! as the rule it checks.
#![allow(dead_code)]

use std::collections::HashSet;

use sendlater::pb;

use crate::common::{ms, ts, TestServer};

pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;

/// ScheduleMessage that must succeed.
pub async fn schedule(t: &mut TestServer, req: pb::ScheduleRequest) -> pb::ScheduledItem {
    t.client
        .schedule_message(req)
        .await
        .expect("ScheduleMessage")
        .into_inner()
}

/// ScheduleTicket that must succeed.
pub async fn schedule_ticket(t: &mut TestServer, req: pb::ScheduleRequest) -> pb::ScheduledItem {
    t.client
        .schedule_ticket(req)
        .await
        .expect("ScheduleTicket")
        .into_inner()
}

/// A schedule request as a batch entry of `kind`.
pub fn entry(req: pb::ScheduleRequest, kind: pb::Kind) -> pb::BatchEntry {
    pb::BatchEntry {
        kind: kind as i32,
        account_id: req.account_id,
        ticket_id: req.ticket_id,
        channel: req.channel,
        author_id: req.author_id,
        content: req.content.map(|c| match c {
            pb::schedule_request::Content::Email(e) => pb::batch_entry::Content::Email(e),
            pb::schedule_request::Content::Chat(c) => pb::batch_entry::Content::Chat(c),
        }),
        send_at: req.send_at,
        on_activity: req.on_activity,
        request_id: req.request_id,
        send_at_local: req.send_at_local,
        delivery_window: req.delivery_window,
        max_lateness: req.max_lateness,
        on_late: req.on_late,
    }
}

/// A REPLY batch entry.
pub fn reply_entry(req: pb::ScheduleRequest) -> pb::BatchEntry {
    entry(req, pb::Kind::Reply)
}

/// ScheduleBatch that must succeed.
pub async fn batch(t: &mut TestServer, entries: Vec<pb::BatchEntry>) -> Vec<pb::ScheduledItem> {
    t.client
        .schedule_batch(pb::ScheduleBatchRequest { entries })
        .await
        .expect("ScheduleBatch")
        .into_inner()
        .items
}

/// `n` email replies in ticket `ticket`, due at `first`, `first + step`, ...
pub async fn many_replies(
    t: &mut TestServer,
    account: &str,
    ticket: &str,
    n: usize,
    first: i64,
    step: i64,
) -> Vec<pb::ScheduledItem> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let chunk = (n - i).min(1000);
        let entries = (i..i + chunk)
            .map(|k| reply_entry(email_at(account, ticket, first + step * k as i64)))
            .collect();
        out.extend(batch(t, entries).await);
        i += chunk;
    }
    out
}

fn email_at(account: &str, ticket: &str, at: i64) -> pb::ScheduleRequest {
    crate::common::email_reply(account, ticket, at)
}

/// GetItem that must succeed.
pub async fn get(t: &mut TestServer, account: &str, id: &str) -> pb::ScheduledItem {
    t.client
        .get_item(crate::common::item_ref(account, id))
        .await
        .expect("GetItem")
        .into_inner()
}

/// Cancel that must succeed.
pub async fn cancel(t: &mut TestServer, account: &str, id: &str) -> pb::ScheduledItem {
    t.client
        .cancel(crate::common::item_ref(account, id))
        .await
        .expect("Cancel")
        .into_inner()
}

/// A ListScheduled request for `account` with every other field at its default.
pub fn list_req(account: &str) -> pb::ListScheduledRequest {
    pb::ListScheduledRequest {
        account_id: account.into(),
        ..Default::default()
    }
}

/// One ListScheduled page that must succeed.
pub async fn list(t: &mut TestServer, req: pb::ListScheduledRequest) -> pb::ListScheduledResponse {
    t.client
        .list_scheduled(req)
        .await
        .expect("ListScheduled")
        .into_inner()
}

/// Every page of a listing, following next_page_token (bounded).
pub async fn list_all(t: &mut TestServer, req: pb::ListScheduledRequest) -> Vec<pb::ScheduledItem> {
    let mut out = Vec::new();
    let mut req = req;
    for _ in 0..10_000 {
        let page = list(t, req.clone()).await;
        out.extend(page.items);
        if page.next_page_token.is_empty() {
            return out;
        }
        req.page_token = page.next_page_token;
    }
    panic!("listing did not end");
}

/// The default (PENDING) listing of an account, all pages.
pub async fn pending_ids(t: &mut TestServer, account: &str) -> Vec<String> {
    ids(&list_all(t, list_req(account)).await)
}

/// The item ids, in order.
pub fn ids(items: &[pb::ScheduledItem]) -> Vec<String> {
    items.iter().map(|i| i.item_id.clone()).collect()
}

/// The item ids as a set.
pub fn id_set(items: &[pb::ScheduledItem]) -> HashSet<String> {
    items.iter().map(|i| i.item_id.clone()).collect()
}

/// ListDeferredTickets, one page.
pub async fn tickets(
    t: &mut TestServer,
    account: &str,
    order: pb::Order,
    page_size: u32,
    page_token: &str,
) -> pb::ListDeferredTicketsResponse {
    t.client
        .list_deferred_tickets(pb::ListDeferredTicketsRequest {
            account_id: account.into(),
            order: order as i32,
            page_size,
            page_token: page_token.into(),
        })
        .await
        .expect("ListDeferredTickets")
        .into_inner()
}

/// Every deferred ticket of an account in `order`, as (ticket_id, next_send_at ms,
/// pending_count), following pages of `page_size`.
pub async fn all_tickets(
    t: &mut TestServer,
    account: &str,
    order: pb::Order,
    page_size: u32,
) -> Vec<(String, i64, u32)> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        let page = tickets(t, account, order, page_size, &token).await;
        out.extend(
            page.tickets
                .into_iter()
                .map(|d| (d.ticket_id, ms(&d.next_send_at), d.pending_count)),
        );
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
    panic!("deferred tickets listing did not end");
}

/// GetTicketTimeline.
pub async fn timeline(
    t: &mut TestServer,
    account: &str,
    ticket: &str,
    audience: pb::Audience,
) -> Result<Vec<pb::ScheduledItem>, tonic::Status> {
    t.client
        .get_ticket_timeline(pb::GetTicketTimelineRequest {
            account_id: account.into(),
            ticket_id: ticket.into(),
            audience: audience as i32,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().items)
}

/// A RecordTicketActivity request.
pub fn activity_req(
    account: &str,
    ticket: &str,
    author: pb::AuthorKind,
    message_id: &str,
    occurred_at: i64,
) -> pb::RecordTicketActivityRequest {
    pb::RecordTicketActivityRequest {
        account_id: account.into(),
        ticket_id: ticket.into(),
        author_kind: author as i32,
        message_id: message_id.into(),
        occurred_at: Some(ts(occurred_at)),
    }
}

/// RecordTicketActivity that must succeed; returns the affected items.
pub async fn record_activity(
    t: &mut TestServer,
    req: pb::RecordTicketActivityRequest,
) -> Vec<pb::ScheduledItem> {
    t.client
        .record_ticket_activity(req)
        .await
        .expect("RecordTicketActivity")
        .into_inner()
        .affected
}

/// The email content of a request, to change it in place.
pub fn email_of(req: &mut pb::ScheduleRequest) -> &mut pb::EmailContent {
    match req.content.as_mut() {
        Some(pb::schedule_request::Content::Email(e)) => e,
        other => panic!("not an email request: {other:?}"),
    }
}

/// The chat content of a request, to change it in place.
pub fn chat_of(req: &mut pb::ScheduleRequest) -> &mut pb::ChatContent {
    match req.content.as_mut() {
        Some(pb::schedule_request::Content::Chat(c)) => c,
        other => panic!("not a chat request: {other:?}"),
    }
}

/// The chat text of an item.
pub fn chat_text(item: &pb::ScheduledItem) -> &str {
    match item.content.as_ref() {
        Some(pb::scheduled_item::Content::Chat(c)) => &c.text,
        other => panic!("not a chat item: {other:?}"),
    }
}

/// A request with `on_activity` set.
pub fn with_policy(mut req: pb::ScheduleRequest, p: pb::OnActivity) -> pb::ScheduleRequest {
    req.on_activity = p as i32;
    req
}

/// A request with `request_id` set.
pub fn with_request_id(mut req: pb::ScheduleRequest, rid: &str) -> pb::ScheduleRequest {
    req.request_id = rid.into();
    req
}
