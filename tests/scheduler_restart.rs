//! A restart on the same SQLite file brings every item back unchanged: states,
//! listings, idempotency keys, quotas, page tokens; ids are never reused.
mod common;
mod scheduler_helpers;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use scheduler_helpers::*;
use sendlater::pb;
use tonic::Code;

/// Every view of account `acme` that a restart must not change.
async fn snapshot(t: &mut TestServer, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(format!("{:?}", get(t, "acme", id).await));
    }
    for state in [
        pb::State::Pending,
        pb::State::Cancelled,
        pb::State::ConvertedToNote,
    ] {
        let mut q = list_req("acme");
        q.state = state as i32;
        out.push(format!("{:?}", list_all(t, q).await));
    }
    let mut q = list_req("acme");
    q.order = pb::Order::SendAtDesc as i32;
    out.push(format!("{:?}", list_all(t, q).await));
    out.push(format!(
        "{:?}",
        all_tickets(t, "acme", pb::Order::SendAtAsc, 0).await
    ));
    for ticket in ["T1", "T2", "NEW-1"] {
        out.push(format!(
            "{:?}",
            timeline(t, "acme", ticket, pb::Audience::Staff).await.ok()
        ));
        out.push(format!(
            "{:?}",
            timeline(t, "acme", ticket, pb::Audience::Client)
                .await
                .map_err(|s| s.code())
        ));
    }
    out
}

#[tokio::test]
async fn every_item_comes_back_identical_after_a_restart() {
    let mut t = TestServer::start().await;
    let mut all = Vec::new();
    let mut full = email_reply("acme", "T1", T0 + HOUR);
    {
        let e = email_of(&mut full);
        e.cc = vec!["cc@example.com".into()];
        e.bcc = vec!["bcc@example.com".into()];
        e.html_body = "<b>hi</b>".into();
        e.in_reply_to = "<x@y>".into();
        e.attachments = vec![pb::Attachment {
            filename: "a.txt".into(),
            content_type: "text/plain".into(),
            url: "https://f/a.txt".into(),
            size_bytes: 3,
        }];
    }
    let full = with_policy(with_request_id(full, "rid-full"), pb::OnActivity::Keep);
    all.push(schedule(&mut t, full).await);
    let to_convert = schedule(&mut t, chat_reply("acme", "T1", T0 + 2 * HOUR)).await;
    all.push(to_convert.clone());
    let to_cancel = schedule(&mut t, email_reply("acme", "T2", T0 + 3 * HOUR)).await;
    all.push(to_cancel.clone());
    all.push(schedule_ticket(&mut t, chat_reply("acme", "NEW-1", T0 + 4 * HOUR)).await);
    t.advance(Duration::from_secs(60));
    let moved = schedule(&mut t, email_reply("acme", "T2", T0 + 5 * HOUR)).await;
    all.push(moved.clone());
    all.extend(many_replies(&mut t, "acme", "T2", 5, T0 + 6 * HOUR, MINUTE).await);

    cancel(&mut t, "acme", &to_cancel.item_id).await;
    record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "m", T0 + 30_000),
    )
    .await;
    t.client
        .reschedule(pb::RescheduleRequest {
            account_id: "acme".into(),
            item_id: moved.item_id.clone(),
            send_at: Some(ts(T0 + 7 * HOUR)),
            ..Default::default()
        })
        .await
        .expect("reschedule");

    let ids = ids(&all);
    let before = snapshot(&mut t, &ids).await;
    // The states the test meant to cover are really there.
    assert_eq!(
        get(&mut t, "acme", &to_convert.item_id).await.state,
        pb::State::ConvertedToNote as i32
    );
    assert_eq!(
        get(&mut t, "acme", &to_cancel.item_id).await.state,
        pb::State::Cancelled as i32
    );

    t.restart().await;
    let after = snapshot(&mut t, &ids).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a, b);
    }
    assert_eq!(after.len(), before.len());
    t.stop().await;
}

#[tokio::test]
async fn ids_issued_after_a_restart_are_new_even_after_cancelling_the_latest() {
    let mut t = TestServer::start().await;
    let mut seen: HashSet<String> = HashSet::new();
    let items = many_replies(&mut t, "acme", "T1", 3, T0 + HOUR, MINUTE).await;
    seen.extend(ids(&items));
    cancel(&mut t, "acme", &items[2].item_id).await;
    t.restart().await;
    let more = many_replies(&mut t, "acme", "T1", 3, T0 + HOUR, MINUTE).await;
    for i in &more {
        assert!(seen.insert(i.item_id.clone()), "{} reused", i.item_id);
    }
    let other = schedule(&mut t, email_reply("globex", "T1", T0 + HOUR)).await;
    assert!(
        seen.insert(other.item_id.clone()),
        "{} reused",
        other.item_id
    );
    t.restart().await;
    let last = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    assert!(seen.insert(last.item_id.clone()), "{} reused", last.item_id);
    t.stop().await;
}

#[tokio::test]
async fn request_ids_are_remembered_across_a_restart() {
    let mut t = TestServer::start().await;
    let req = with_request_id(email_reply("acme", "T1", T0 + HOUR), "rid-1");
    let first = schedule(&mut t, req.clone()).await;
    t.restart().await;
    let again = schedule(&mut t, req).await;
    assert_eq!(again, first);
    let r = t
        .client
        .schedule_message(with_request_id(
            email_reply("acme", "T1", T0 + 2 * HOUR),
            "rid-1",
        ))
        .await;
    assert_status(r, Code::AlreadyExists, "");
    t.stop().await;
}

#[tokio::test]
async fn the_pending_quota_is_counted_from_the_file_after_a_restart() {
    let mut t = TestServer::start_with(|cfg| cfg.limits.max_pending_per_account = 3).await;
    let items = many_replies(&mut t, "acme", "T1", 3, T0 + HOUR, MINUTE).await;
    // Accounts on both sides of "acme" in key order, counted in the same recovery pass.
    many_replies(&mut t, "aaa", "T1", 2, T0 + HOUR, MINUTE).await;
    many_replies(&mut t, "zed", "T1", 1, T0 + HOUR, MINUTE).await;
    t.restart().await;
    assert_quota_full(&t, "acme").await;
    schedule(&mut t, email_reply("aaa", "T1", T0 + HOUR)).await;
    assert_quota_full(&t, "aaa").await;
    schedule(&mut t, email_reply("zed", "T1", T0 + HOUR)).await;
    schedule(&mut t, email_reply("zed", "T1", T0 + HOUR)).await;
    cancel(&mut t, "acme", &items[0].item_id).await;
    t.restart().await;
    schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    assert_quota_full(&t, "acme").await;
    t.stop().await;
}

/// One more reply for `account` is refused: its pending quota is used up.
async fn assert_quota_full(t: &TestServer, account: &str) {
    let r = t
        .client
        .clone()
        .schedule_message(email_reply(account, "T1", T0 + HOUR))
        .await;
    assert_status(r, Code::ResourceExhausted, "");
}

#[tokio::test]
async fn a_page_token_from_before_a_restart_continues_the_walk() {
    let mut t = TestServer::start().await;
    let items = many_replies(&mut t, "acme", "T1", 7, T0 + HOUR, MINUTE).await;
    let mut q = list_req("acme");
    q.page_size = 3;
    let first = list(&mut t, q.clone()).await;
    t.restart().await;
    q.page_token = first.next_page_token;
    let rest = list_all(&mut t, q).await;
    let mut walked = ids(&first.items);
    walked.extend(ids(&rest));
    assert_eq!(walked, ids(&items));
    t.stop().await;
}
