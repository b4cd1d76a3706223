//! GetItem, SendNow, Cancel and Reschedule over real gRPC, and the isolation of
//! accounts: another account's item does not exist for a caller.
mod common;
mod scheduler_helpers;

use std::time::Duration;

use common::*;
use scheduler_helpers::*;
use sendlater::pb;
use tonic::Code;

/// A reply of ticket T1 in `account` converted to a note by client activity.
async fn converted_reply(t: &mut TestServer, account: &str) -> pb::ScheduledItem {
    let item = schedule(t, email_reply(account, "T1", T0 + HOUR)).await;
    t.advance(Duration::from_secs(1));
    let occurred = ms(&item.created_at) + 1;
    let affected = record_activity(
        t,
        activity_req(
            account,
            "T1",
            pb::AuthorKind::Client,
            "client-msg",
            occurred,
        ),
    )
    .await;
    assert_eq!(ids(&affected), vec![item.item_id.clone()]);
    affected.into_iter().next().expect("one converted")
}

fn reschedule_req(account: &str, id: &str) -> pb::RescheduleRequest {
    pb::RescheduleRequest {
        account_id: account.into(),
        item_id: id.into(),
        ..Default::default()
    }
}

fn new_chat(text: &str) -> Option<pb::reschedule_request::Content> {
    Some(pb::reschedule_request::Content::Chat(pb::ChatContent {
        conversation_id: "conv-1".into(),
        text: text.into(),
        attachments: vec![],
    }))
}

// ---- GetItem and isolation -------------------------------------------------------

#[tokio::test]
async fn get_item_of_an_unknown_or_malformed_id_is_not_found() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let unknown = format!("{}999", item.item_id);
    for id in [unknown.as_str(), "garbage", "itm_", "itm_-1", "itm_0", "💥"] {
        let r = t.client.get_item(item_ref("acme", id)).await;
        assert_status(r, Code::NotFound, "");
    }
    t.stop().await;
}

#[tokio::test]
async fn get_item_of_another_accounts_item_is_not_found() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let r = t.client.get_item(item_ref("globex", &item.item_id)).await;
    assert_status(r, Code::NotFound, "");
    t.stop().await;
}

#[tokio::test]
async fn send_now_cancel_and_reschedule_of_another_accounts_item_are_not_found_and_change_nothing()
{
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, chat_reply("acme", "T1", T0 + HOUR)).await;
    t.advance(Duration::from_secs(10));
    let r = t.client.send_now(item_ref("globex", &item.item_id)).await;
    assert_status(r, Code::NotFound, "");
    let r = t.client.cancel(item_ref("globex", &item.item_id)).await;
    assert_status(r, Code::NotFound, "");
    let mut req = reschedule_req("globex", &item.item_id);
    req.send_at = Some(ts(T0 + 2 * HOUR));
    req.content = new_chat("hijacked");
    let r = t.client.reschedule(req).await;
    assert_status(r, Code::NotFound, "");
    assert_eq!(get(&mut t, "acme", &item.item_id).await, item);
    t.stop().await;
}

#[tokio::test]
async fn one_accounts_listings_tickets_timeline_and_activity_never_touch_anothers_items() {
    let mut t = TestServer::start().await;
    let mine = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    schedule_ticket(&mut t, chat_reply("acme", "NEW-1", T0 + HOUR)).await;
    t.advance(Duration::from_secs(60));

    assert!(list_all(&mut t, list_req("globex")).await.is_empty());
    let mut cancelled = list_req("globex");
    cancelled.state = pb::State::Cancelled as i32;
    assert!(list_all(&mut t, cancelled).await.is_empty());
    assert!(all_tickets(&mut t, "globex", pb::Order::SendAtAsc, 0)
        .await
        .is_empty());
    let staff = timeline(&mut t, "globex", "T1", pb::Audience::Staff)
        .await
        .expect("timeline");
    assert!(staff.is_empty(), "{staff:?}");
    // The hidden NEW_TICKET of acme says nothing about globex's NEW-1.
    let client = timeline(&mut t, "globex", "NEW-1", pb::Audience::Client)
        .await
        .expect("an unknown ticket is just empty");
    assert!(client.is_empty());

    // Activity on globex's T1 leaves acme's T1 alone.
    let affected = record_activity(
        &mut t,
        activity_req("globex", "T1", pb::AuthorKind::Client, "m", T0 + 30_000),
    )
    .await;
    assert!(affected.is_empty());
    assert_eq!(get(&mut t, "acme", &mine.item_id).await, mine);
    t.stop().await;
}

// ---- SendNow -------------------------------------------------------------------------

#[tokio::test]
async fn send_now_makes_a_pending_item_due_at_the_moment_of_the_call() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T1", T0 + 5 * HOUR)).await;
    t.advance(Duration::from_secs(600));
    let now = T0 + 600_000;
    let sent = t
        .client
        .send_now(item_ref("acme", &item.item_id))
        .await
        .expect("send now")
        .into_inner();
    assert_eq!(sent.state, pb::State::Pending as i32);
    assert_eq!(ms(&sent.send_at), now);
    assert_eq!(sent.item_id, item.item_id);
    assert_eq!(sent.content, item.content);
    assert_eq!(sent.created_at, item.created_at);
    let got = get(&mut t, "acme", &item.item_id).await;
    assert_eq!(ms(&got.send_at), now);
    t.stop().await;
}

#[tokio::test]
async fn send_now_moves_the_item_to_the_front_of_the_listing() {
    let mut t = TestServer::start().await;
    let a = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let b = schedule(&mut t, email_reply("acme", "T2", T0 + 2 * HOUR)).await;
    let c = schedule(&mut t, email_reply("acme", "T3", T0 + 3 * HOUR)).await;
    t.client
        .send_now(item_ref("acme", &c.item_id))
        .await
        .expect("send now");
    assert_eq!(
        pending_ids(&mut t, "acme").await,
        vec![c.item_id.clone(), a.item_id, b.item_id]
    );
    let d = all_tickets(&mut t, "acme", pb::Order::SendAtAsc, 0).await;
    assert_eq!(d[0], ("T3".to_string(), T0, 1));
    t.stop().await;
}

#[tokio::test]
async fn send_now_of_a_cancelled_or_converted_item_is_failed_precondition() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T9", T0 + HOUR)).await;
    let cancelled = cancel(&mut t, "acme", &item.item_id).await;
    let r = t.client.send_now(item_ref("acme", &item.item_id)).await;
    assert_status(r, Code::FailedPrecondition, "");
    assert_eq!(get(&mut t, "acme", &item.item_id).await, cancelled);

    let note = converted_reply(&mut t, "acme").await;
    let r = t.client.send_now(item_ref("acme", &note.item_id)).await;
    assert_status(r, Code::FailedPrecondition, "");
    assert_eq!(get(&mut t, "acme", &note.item_id).await, note);
    t.stop().await;
}

// ---- Cancel --------------------------------------------------------------------------

#[tokio::test]
async fn cancel_turns_a_pending_item_into_cancelled() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let c = cancel(&mut t, "acme", &item.item_id).await;
    assert_eq!(c.state, pb::State::Cancelled as i32);
    assert_eq!(c.item_id, item.item_id);
    assert_eq!(c.content, item.content);
    assert_eq!(c.send_at, item.send_at);
    assert_eq!(get(&mut t, "acme", &item.item_id).await, c);
    t.stop().await;
}

#[tokio::test]
async fn cancelling_twice_is_ok_and_changes_nothing_more() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let first = cancel(&mut t, "acme", &item.item_id).await;
    t.advance(Duration::from_secs(30));
    let second = cancel(&mut t, "acme", &item.item_id).await;
    assert_eq!(second.state, pb::State::Cancelled as i32);
    assert_eq!(second, first);
    t.stop().await;
}

#[tokio::test]
async fn a_cancelled_item_leaves_the_default_listing_the_deferred_tickets_and_the_staff_timeline() {
    let mut t = TestServer::start().await;
    let keep = schedule(&mut t, email_reply("acme", "T1", T0 + 2 * HOUR)).await;
    let gone = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let alone = schedule(&mut t, chat_reply("acme", "T2", T0 + HOUR)).await;
    cancel(&mut t, "acme", &gone.item_id).await;
    cancel(&mut t, "acme", &alone.item_id).await;

    assert_eq!(
        pending_ids(&mut t, "acme").await,
        vec![keep.item_id.clone()]
    );
    assert_eq!(
        all_tickets(&mut t, "acme", pb::Order::SendAtAsc, 0).await,
        vec![("T1".to_string(), T0 + 2 * HOUR, 1)]
    );
    let staff = timeline(&mut t, "acme", "T1", pb::Audience::Staff)
        .await
        .expect("timeline");
    assert_eq!(ids(&staff), vec![keep.item_id.clone()]);
    let staff2 = timeline(&mut t, "acme", "T2", pb::Audience::Staff)
        .await
        .expect("timeline");
    assert!(staff2.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn a_cancelled_item_stays_readable_and_listed_under_cancelled_for_audit() {
    let mut t = TestServer::start().await;
    let a = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let b = schedule(&mut t, chat_reply("acme", "T2", T0 + 2 * HOUR)).await;
    schedule(&mut t, chat_reply("acme", "T3", T0 + 3 * HOUR)).await;
    let ca = cancel(&mut t, "acme", &a.item_id).await;
    let cb = cancel(&mut t, "acme", &b.item_id).await;
    assert_eq!(get(&mut t, "acme", &a.item_id).await, ca);
    let mut req = list_req("acme");
    req.state = pb::State::Cancelled as i32;
    assert_eq!(list_all(&mut t, req).await, vec![ca, cb]);
    t.stop().await;
}

#[tokio::test]
async fn cancelling_a_reply_converted_to_a_note_is_failed_precondition() {
    let mut t = TestServer::start().await;
    let note = converted_reply(&mut t, "acme").await;
    let r = t.client.cancel(item_ref("acme", &note.item_id)).await;
    assert_status(r, Code::FailedPrecondition, "");
    assert_eq!(get(&mut t, "acme", &note.item_id).await, note);
    t.stop().await;
}

// ---- Reschedule ----------------------------------------------------------------------

#[tokio::test]
async fn reschedule_with_only_a_new_send_at_keeps_content_and_policy() {
    let mut t = TestServer::start().await;
    let item = schedule(
        &mut t,
        with_policy(chat_reply("acme", "T1", T0 + HOUR), pb::OnActivity::Keep),
    )
    .await;
    t.advance(Duration::from_secs(60));
    let mut req = reschedule_req("acme", &item.item_id);
    req.send_at = Some(ts(T0 + 3 * HOUR));
    let r = t
        .client
        .reschedule(req)
        .await
        .expect("reschedule")
        .into_inner();
    assert_eq!(ms(&r.send_at), T0 + 3 * HOUR);
    assert_eq!(r.state, pb::State::Pending as i32);
    assert_eq!(r.content, item.content);
    assert_eq!(r.on_activity, pb::OnActivity::Keep as i32);
    assert_eq!(r.created_at, item.created_at, "created_at never moves");
    assert_eq!(get(&mut t, "acme", &item.item_id).await, r);
    t.stop().await;
}

#[tokio::test]
async fn reschedule_with_only_new_content_keeps_send_at() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, chat_reply("acme", "T1", T0 + HOUR)).await;
    let mut req = reschedule_req("acme", &item.item_id);
    req.content = new_chat("Edited answer.");
    let r = t
        .client
        .reschedule(req)
        .await
        .expect("reschedule")
        .into_inner();
    assert_eq!(chat_text(&r), "Edited answer.");
    assert_eq!(r.send_at, item.send_at);
    assert_eq!(
        chat_text(&get(&mut t, "acme", &item.item_id).await),
        "Edited answer."
    );
    t.stop().await;
}

#[tokio::test]
async fn reschedule_can_change_send_at_content_and_policy_together() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let mut req = reschedule_req("acme", &item.item_id);
    req.send_at = Some(ts(T0 + 4 * HOUR));
    let new_email = pb::EmailContent {
        to: vec!["someone.else@example.com".into()],
        subject: "Re: updated".into(),
        text_body: "Updated body.".into(),
        ..Default::default()
    };
    req.content = Some(pb::reschedule_request::Content::Email(new_email.clone()));
    req.on_activity = pb::OnActivity::Cancel as i32;
    let r = t
        .client
        .reschedule(req)
        .await
        .expect("reschedule")
        .into_inner();
    assert_eq!(ms(&r.send_at), T0 + 4 * HOUR);
    assert_eq!(
        r.content,
        Some(pb::scheduled_item::Content::Email(new_email))
    );
    assert_eq!(r.on_activity, pb::OnActivity::Cancel as i32);
    assert_eq!(get(&mut t, "acme", &item.item_id).await, r);
    t.stop().await;
}

#[tokio::test]
async fn reschedule_to_keep_protects_the_item_from_ticket_activity() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let mut req = reschedule_req("acme", &item.item_id);
    req.on_activity = pb::OnActivity::Keep as i32;
    t.client.reschedule(req).await.expect("reschedule");
    t.advance(Duration::from_secs(5));
    let affected = record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "m1", T0 + 1000),
    )
    .await;
    assert!(affected.is_empty());
    let got = get(&mut t, "acme", &item.item_id).await;
    assert_eq!(got.state, pb::State::Pending as i32);
    t.stop().await;
}

#[tokio::test]
async fn reschedule_with_content_of_the_other_channel_is_invalid_argument() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let mut req = reschedule_req("acme", &item.item_id);
    req.content = new_chat("a chat text for an email item");
    let r = t.client.reschedule(req).await;
    assert_status(r, Code::InvalidArgument, "");
    assert_eq!(get(&mut t, "acme", &item.item_id).await, item);
    t.stop().await;
}

#[tokio::test]
async fn reschedule_with_invalid_new_content_is_invalid_argument_naming_the_field() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, chat_reply("acme", "T1", T0 + HOUR)).await;
    let mut req = reschedule_req("acme", &item.item_id);
    req.content = new_chat("");
    let r = t.client.reschedule(req).await;
    assert_status(r, Code::InvalidArgument, "chat.text: ");
    let email_item = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let mut req = reschedule_req("acme", &email_item.item_id);
    req.content = Some(pb::reschedule_request::Content::Email(pb::EmailContent {
        to: vec![],
        text_body: "body".into(),
        ..Default::default()
    }));
    let r = t.client.reschedule(req).await;
    assert_status(r, Code::InvalidArgument, "email.to: ");
    assert_eq!(get(&mut t, "acme", &item.item_id).await, item);
    assert_eq!(get(&mut t, "acme", &email_item.item_id).await, email_item);
    t.stop().await;
}

#[tokio::test]
async fn reschedule_to_an_invalid_send_at_is_invalid_argument_naming_send_at() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    t.advance(Duration::from_secs(60));
    let now = T0 + 60_000;
    for bad in [now - 1001, now + 1826 * 86_400_000 + 1] {
        let mut req = reschedule_req("acme", &item.item_id);
        req.send_at = Some(ts(bad));
        let r = t.client.reschedule(req).await;
        assert_status(r, Code::InvalidArgument, "send_at: ");
    }
    assert_eq!(get(&mut t, "acme", &item.item_id).await, item);
    t.stop().await;
}

#[tokio::test]
async fn reschedule_of_a_cancelled_or_converted_item_is_failed_precondition() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T9", T0 + HOUR)).await;
    let cancelled = cancel(&mut t, "acme", &item.item_id).await;
    let mut req = reschedule_req("acme", &item.item_id);
    req.send_at = Some(ts(T0 + 2 * HOUR));
    let r = t.client.reschedule(req).await;
    assert_status(r, Code::FailedPrecondition, "");
    assert_eq!(get(&mut t, "acme", &item.item_id).await, cancelled);

    let note = converted_reply(&mut t, "acme").await;
    let mut req = reschedule_req("acme", &note.item_id);
    req.send_at = Some(ts(T0 + 2 * HOUR));
    let r = t.client.reschedule(req).await;
    assert_status(r, Code::FailedPrecondition, "");
    assert_eq!(get(&mut t, "acme", &note.item_id).await, note);
    t.stop().await;
}

#[tokio::test]
async fn the_listing_order_follows_the_new_send_at() {
    let mut t = TestServer::start().await;
    let a = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let b = schedule(&mut t, email_reply("acme", "T2", T0 + 2 * HOUR)).await;
    let c = schedule(&mut t, email_reply("acme", "T3", T0 + 3 * HOUR)).await;
    let mut req = reschedule_req("acme", &a.item_id);
    req.send_at = Some(ts(T0 + 4 * HOUR));
    t.client.reschedule(req).await.expect("reschedule");
    assert_eq!(
        pending_ids(&mut t, "acme").await,
        vec![b.item_id.clone(), c.item_id.clone(), a.item_id.clone()]
    );
    let mut desc = list_req("acme");
    desc.order = pb::Order::SendAtDesc as i32;
    assert_eq!(
        ids(&list_all(&mut t, desc).await),
        vec![a.item_id, c.item_id, b.item_id]
    );
    assert_eq!(
        all_tickets(&mut t, "acme", pb::Order::SendAtAsc, 0).await[2],
        ("T1".to_string(), T0 + 4 * HOUR, 1)
    );
    t.stop().await;
}
