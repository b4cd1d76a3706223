//! GetTicketTimeline for staff and client, before anything is sent (sent items need a
//! connector and are covered with Dispatch).
mod common;
mod scheduler_helpers;

use std::time::Duration;

use common::*;
use scheduler_helpers::*;
use sendlater::pb;
use tonic::Code;

#[tokio::test]
async fn staff_see_every_non_cancelled_item_in_time_order() {
    let mut t = TestServer::start().await;
    // Created at T0, due in 3 h; becomes a note at T0.
    let note = schedule(&mut t, email_reply("acme", "T1", T0 + 3 * HOUR)).await;
    t.advance(Duration::from_secs(60));
    let late = schedule(&mut t, email_reply("acme", "T1", T0 + 2 * HOUR)).await;
    let early = schedule(&mut t, chat_reply("acme", "T1", T0 + 90 * MINUTE)).await;
    let gone = schedule(&mut t, chat_reply("acme", "T1", T0 + HOUR)).await;
    cancel(&mut t, "acme", &gone.item_id).await;
    schedule(&mut t, chat_reply("acme", "T2", T0 + HOUR)).await;
    record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "m", T0 + 30_000),
    )
    .await;

    let staff = timeline(&mut t, "acme", "T1", pb::Audience::Staff)
        .await
        .expect("timeline");
    assert_eq!(
        ids(&staff),
        vec![
            note.item_id.clone(),
            early.item_id.clone(),
            late.item_id.clone()
        ],
        "note at its created_at, then pending ones at send_at"
    );
    assert_eq!(staff[0].state, pb::State::ConvertedToNote as i32);
    assert_eq!(staff[0].note_at, note.created_at);
    assert_eq!(staff[1].state, pb::State::Pending as i32);
    assert_eq!(staff[2].state, pb::State::Pending as i32);
    assert_eq!(staff[1], get(&mut t, "acme", &early.item_id).await);

    let unspecified = timeline(&mut t, "acme", "T1", pb::Audience::Unspecified)
        .await
        .expect("timeline");
    assert_eq!(unspecified, staff, "AUDIENCE_UNSPECIFIED means STAFF");
    t.stop().await;
}

#[tokio::test]
async fn the_client_sees_nothing_of_a_reply_only_ticket_with_nothing_sent() {
    let mut t = TestServer::start().await;
    schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let c = schedule(&mut t, chat_reply("acme", "T1", T0 + 2 * HOUR)).await;
    cancel(&mut t, "acme", &c.item_id).await;
    t.advance(Duration::from_secs(60));
    schedule(&mut t, email_reply("acme", "T1", T0 + 3 * HOUR)).await;
    record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Staff, "m", T0 + 30_000),
    )
    .await;
    let client = timeline(&mut t, "acme", "T1", pb::Audience::Client)
        .await
        .expect("a reply-only ticket exists for the client");
    assert!(client.is_empty(), "{client:?}");
    t.stop().await;
}

#[tokio::test]
async fn an_unsent_new_ticket_does_not_exist_for_the_client_but_does_for_staff() {
    let mut t = TestServer::start().await;
    let nt = schedule_ticket(&mut t, email_reply("acme", "NEW-1", T0 + HOUR)).await;
    let r = timeline(&mut t, "acme", "NEW-1", pb::Audience::Client).await;
    assert_status(r, Code::NotFound, "");
    let staff = timeline(&mut t, "acme", "NEW-1", pb::Audience::Staff)
        .await
        .expect("staff timeline");
    assert_eq!(staff, vec![nt]);
    t.stop().await;
}

#[tokio::test]
async fn a_cancelled_new_ticket_stays_not_found_for_the_client_and_leaves_the_staff_timeline() {
    let mut t = TestServer::start().await;
    let nt = schedule_ticket(&mut t, chat_reply("acme", "NEW-1", T0 + HOUR)).await;
    cancel(&mut t, "acme", &nt.item_id).await;
    let r = timeline(&mut t, "acme", "NEW-1", pb::Audience::Client).await;
    assert_status(r, Code::NotFound, "");
    let staff = timeline(&mut t, "acme", "NEW-1", pb::Audience::Staff)
        .await
        .expect("staff timeline");
    assert!(staff.is_empty(), "{staff:?}");
    t.stop().await;
}

#[tokio::test]
async fn a_timeline_without_account_or_ticket_is_invalid_argument() {
    let mut t = TestServer::start().await;
    let r = timeline(&mut t, "", "T1", pb::Audience::Staff).await;
    assert_status(r, Code::InvalidArgument, "account_id: ");
    let r = timeline(&mut t, "acme", "", pb::Audience::Staff).await;
    assert_status(r, Code::InvalidArgument, "ticket_id: ");
    t.stop().await;
}

async fn timeline_page(
    t: &mut TestServer,
    ticket: &str,
    page_size: u32,
    page_token: &str,
) -> Result<pb::GetTicketTimelineResponse, tonic::Status> {
    t.client
        .get_ticket_timeline(pb::GetTicketTimelineRequest {
            account_id: "acme".into(),
            ticket_id: ticket.into(),
            audience: pb::Audience::Staff as i32,
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Every page of a staff timeline, following next_page_token (bounded), and the sizes
/// of the pages.
async fn timeline_pages(
    t: &mut TestServer,
    ticket: &str,
    page_size: u32,
) -> (Vec<pb::ScheduledItem>, Vec<usize>) {
    let (mut items, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    for _ in 0..100 {
        let page = timeline_page(t, ticket, page_size, &token)
            .await
            .expect("a timeline page");
        sizes.push(page.items.len());
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return (items, sizes);
        }
        token = page.next_page_token;
    }
    panic!("the timeline did not end");
}

#[tokio::test]
async fn a_timeline_is_paginated_in_time_order_with_each_item_once() {
    let mut t = TestServer::start().await;
    for i in 0..5 {
        schedule(&mut t, chat_reply("acme", "T1", T0 + HOUR - i * MINUTE)).await;
    }
    let whole = timeline(&mut t, "acme", "T1", pb::Audience::Staff)
        .await
        .expect("timeline");
    assert_eq!(whole.len(), 5);
    let (paged, sizes) = timeline_pages(&mut t, "T1", 2).await;
    assert_eq!(sizes, vec![2, 2, 1]);
    assert_eq!(ids(&paged), ids(&whole), "the same items in the same order");
    t.stop().await;
}

#[tokio::test]
async fn a_timeline_page_of_large_items_stops_before_the_response_limit() {
    const KIB: usize = 1024;
    let mut t = TestServer::start_with(|c| c.limits.max_message_bytes = 1024 * KIB).await;
    let mut want = Vec::new();
    for i in 0..12 {
        let mut req = chat_reply("acme", "T1", T0 + HOUR + i * MINUTE);
        chat_of(&mut req).text = char::from(b'a' + i as u8).to_string().repeat(200 * KIB);
        want.push(schedule(&mut t, req).await);
    }
    let (paged, sizes) = timeline_pages(&mut t, "T1", 0).await;
    assert!(sizes.len() > 1, "more than one page: {sizes:?}");
    assert_eq!(ids(&paged), ids(&want));
    t.stop().await;
}

#[tokio::test]
async fn a_garbled_timeline_page_token_is_invalid_argument_naming_page_token() {
    let mut t = TestServer::start().await;
    schedule(&mut t, chat_reply("acme", "T1", T0 + HOUR)).await;
    for token in ["garbage", "v1.a.12.zz", "v1.d.12.31"] {
        let r = timeline_page(&mut t, "T1", 1, token).await;
        assert_status(r, Code::InvalidArgument, "page_token: ");
    }
    t.stop().await;
}
