//! RecordTicketActivity: which PENDING replies of the ticket get their on_activity
//! policy, what a converted note looks like, and which reports are no-ops.
mod common;
mod scheduler_helpers;

use std::time::Duration;

use common::*;
use scheduler_helpers::*;
use sendlater::pb;
use tonic::Code;

const SEC: i64 = 1000;

/// Advances the clock by `secs` seconds.
fn tick(t: &TestServer, secs: u64) {
    t.advance(Duration::from_secs(secs));
}

#[tokio::test]
async fn client_activity_converts_earlier_pending_replies_into_notes_at_their_creation_time() {
    let mut t = TestServer::start().await;
    let a = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 10);
    let b = schedule(&mut t, chat_reply("acme", "T1", T0 + 2 * HOUR)).await;
    tick(&t, 50);
    let affected = record_activity(
        &mut t,
        activity_req(
            "acme",
            "T1",
            pb::AuthorKind::Client,
            "msg-42",
            T0 + 30 * SEC,
        ),
    )
    .await;
    assert_eq!(ids(&affected), vec![a.item_id.clone(), b.item_id.clone()]);
    for (before, after) in [(&a, &affected[0]), (&b, &affected[1])] {
        assert_eq!(after.state, pb::State::ConvertedToNote as i32);
        assert_eq!(after.note_at, before.created_at, "note_at == created_at");
        assert_eq!(
            after.converted_by,
            Some(pb::Activity {
                author_kind: pb::AuthorKind::Client as i32,
                message_id: "msg-42".into(),
                occurred_at: Some(ts(T0 + 30 * SEC)),
            })
        );
        assert_eq!(after.content, before.content);
        assert_eq!(after.send_at, before.send_at);
        assert_eq!(&get(&mut t, "acme", &after.item_id).await, after);
    }
    t.stop().await;
}

#[tokio::test]
async fn staff_activity_converts_earlier_pending_replies_too() {
    let mut t = TestServer::start().await;
    let a = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 60);
    let affected = record_activity(
        &mut t,
        activity_req(
            "acme",
            "T1",
            pb::AuthorKind::Staff,
            "staff-1",
            T0 + 60 * SEC,
        ),
    )
    .await;
    assert_eq!(ids(&affected), vec![a.item_id.clone()]);
    let got = get(&mut t, "acme", &a.item_id).await;
    assert_eq!(got.state, pb::State::ConvertedToNote as i32);
    assert_eq!(
        got.converted_by.expect("converted_by").author_kind,
        pb::AuthorKind::Staff as i32
    );
    t.stop().await;
}

#[tokio::test]
async fn replies_created_at_or_after_the_activity_are_untouched() {
    let mut t = TestServer::start().await;
    let before = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 30);
    let same_instant = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 30);
    let after = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let affected = record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "m", T0 + 30 * SEC),
    )
    .await;
    assert_eq!(ids(&affected), vec![before.item_id]);
    assert_eq!(
        get(&mut t, "acme", &same_instant.item_id).await,
        same_instant
    );
    assert_eq!(get(&mut t, "acme", &after.item_id).await, after);
    t.stop().await;
}

#[tokio::test]
async fn keep_replies_stay_pending_and_cancel_replies_are_cancelled() {
    let mut t = TestServer::start().await;
    let keep = schedule(
        &mut t,
        with_policy(email_reply("acme", "T1", T0 + HOUR), pb::OnActivity::Keep),
    )
    .await;
    let cancel = schedule(
        &mut t,
        with_policy(email_reply("acme", "T1", T0 + HOUR), pb::OnActivity::Cancel),
    )
    .await;
    let convert = schedule(
        &mut t,
        with_policy(
            email_reply("acme", "T1", T0 + HOUR),
            pb::OnActivity::ConvertToNote,
        ),
    )
    .await;
    tick(&t, 5);
    let affected = record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "m", T0 + 5 * SEC),
    )
    .await;
    assert_eq!(
        id_set(&affected),
        [cancel.item_id.clone(), convert.item_id.clone()]
            .into_iter()
            .collect()
    );
    assert_eq!(get(&mut t, "acme", &keep.item_id).await, keep);
    let c = get(&mut t, "acme", &cancel.item_id).await;
    assert_eq!(c.state, pb::State::Cancelled as i32);
    assert_eq!(c.note_at, None, "a cancelled reply is not a note");
    let n = get(&mut t, "acme", &convert.item_id).await;
    assert_eq!(n.state, pb::State::ConvertedToNote as i32);
    assert_eq!(pending_ids(&mut t, "acme").await, vec![keep.item_id]);
    t.stop().await;
}

#[tokio::test]
async fn new_ticket_items_and_other_tickets_are_untouched() {
    let mut t = TestServer::start().await;
    let new_ticket = schedule_ticket(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let other = schedule(&mut t, email_reply("acme", "T2", T0 + HOUR)).await;
    let target = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 5);
    let affected = record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "m", T0 + 5 * SEC),
    )
    .await;
    assert_eq!(ids(&affected), vec![target.item_id]);
    assert_eq!(get(&mut t, "acme", &new_ticket.item_id).await, new_ticket);
    assert_eq!(get(&mut t, "acme", &other.item_id).await, other);
    t.stop().await;
}

#[tokio::test]
async fn the_response_lists_exactly_the_affected_items_and_a_repeat_affects_none() {
    let mut t = TestServer::start().await;
    let items = batch(
        &mut t,
        vec![
            reply_entry(email_reply("acme", "T1", T0 + HOUR)),
            reply_entry(with_policy(
                chat_reply("acme", "T1", T0 + HOUR),
                pb::OnActivity::Keep,
            )),
            reply_entry(with_policy(
                chat_reply("acme", "T1", T0 + HOUR),
                pb::OnActivity::Cancel,
            )),
            entry(email_reply("acme", "T1", T0 + HOUR), pb::Kind::NewTicket),
        ],
    )
    .await;
    let already_cancelled = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    cancel(&mut t, "acme", &already_cancelled.item_id).await;
    tick(&t, 1);
    let req = activity_req("acme", "T1", pb::AuthorKind::Client, "m1", T0 + SEC);
    let affected = record_activity(&mut t, req.clone()).await;
    assert_eq!(
        id_set(&affected),
        [items[0].item_id.clone(), items[2].item_id.clone()]
            .into_iter()
            .collect()
    );
    for a in &affected {
        assert_eq!(&get(&mut t, "acme", &a.item_id).await, a);
    }
    assert!(record_activity(&mut t, req).await.is_empty());
    let later = activity_req("acme", "T1", pb::AuthorKind::Staff, "m2", T0 + SEC);
    assert!(record_activity(&mut t, later).await.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn activity_whose_message_id_is_an_item_id_of_the_ticket_is_a_no_op() {
    let mut t = TestServer::start().await;
    let ours = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let other = schedule(&mut t, chat_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 5);
    let affected = record_activity(
        &mut t,
        activity_req(
            "acme",
            "T1",
            pb::AuthorKind::Staff,
            &ours.item_id,
            T0 + 5 * SEC,
        ),
    )
    .await;
    assert!(affected.is_empty(), "{affected:?}");
    assert_eq!(get(&mut t, "acme", &ours.item_id).await, ours);
    assert_eq!(get(&mut t, "acme", &other.item_id).await, other);
    t.stop().await;
}

#[tokio::test]
async fn activity_whose_message_id_is_an_item_of_another_ticket_applies_the_rule() {
    let mut t = TestServer::start().await;
    let elsewhere = schedule(&mut t, email_reply("acme", "T2", T0 + HOUR)).await;
    let target = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 5);
    let affected = record_activity(
        &mut t,
        activity_req(
            "acme",
            "T1",
            pb::AuthorKind::Client,
            &elsewhere.item_id,
            T0 + 5 * SEC,
        ),
    )
    .await;
    assert_eq!(ids(&affected), vec![target.item_id]);
    assert_eq!(get(&mut t, "acme", &elsewhere.item_id).await, elsewhere);
    t.stop().await;
}

#[tokio::test]
async fn a_converted_reply_leaves_the_pending_views_and_is_listed_as_a_note() {
    let mut t = TestServer::start().await;
    let a = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 5);
    let affected = record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "m", T0 + 5 * SEC),
    )
    .await;
    assert!(pending_ids(&mut t, "acme").await.is_empty());
    assert!(all_tickets(&mut t, "acme", pb::Order::SendAtAsc, 0)
        .await
        .is_empty());
    let mut notes = list_req("acme");
    notes.state = pb::State::ConvertedToNote as i32;
    assert_eq!(list_all(&mut t, notes).await, affected);
    let staff = timeline(&mut t, "acme", "T1", pb::Audience::Staff)
        .await
        .expect("timeline");
    assert_eq!(ids(&staff), vec![a.item_id]);
    t.stop().await;
}

#[tokio::test]
async fn a_missing_author_kind_is_invalid_argument_naming_it() {
    let mut t = TestServer::start().await;
    let a = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 5);
    let mut req = activity_req("acme", "T1", pb::AuthorKind::Client, "m", T0 + 5 * SEC);
    req.author_kind = pb::AuthorKind::Unspecified as i32;
    let r = t.client.record_ticket_activity(req).await;
    assert_status(r, Code::InvalidArgument, "author_kind: ");
    assert_eq!(get(&mut t, "acme", &a.item_id).await, a);
    t.stop().await;
}

#[tokio::test]
async fn a_missing_occurred_at_is_invalid_argument_naming_it() {
    let mut t = TestServer::start().await;
    let a = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 5);
    let mut req = activity_req("acme", "T1", pb::AuthorKind::Client, "m", T0 + 5 * SEC);
    req.occurred_at = None;
    let r = t.client.record_ticket_activity(req).await;
    assert_status(r, Code::InvalidArgument, "occurred_at: ");
    assert_eq!(get(&mut t, "acme", &a.item_id).await, a);
    t.stop().await;
}

#[tokio::test]
async fn a_missing_account_or_ticket_is_invalid_argument_naming_it() {
    let mut t = TestServer::start().await;
    let req = activity_req("", "T1", pb::AuthorKind::Client, "m", T0);
    let r = t.client.record_ticket_activity(req).await;
    assert_status(r, Code::InvalidArgument, "account_id: ");
    let req = activity_req("acme", "", pb::AuthorKind::Client, "m", T0);
    let r = t.client.record_ticket_activity(req).await;
    assert_status(r, Code::InvalidArgument, "ticket_id: ");
    t.stop().await;
}

/// The activity rule skips its query for tickets with nothing else live, known from a
/// count kept in memory; after a restart that count is rebuilt from the file, so a
/// reply scheduled before the restart is still converted by activity after it.
#[tokio::test]
async fn activity_after_a_restart_converts_a_reply_scheduled_before_it() {
    let mut t = TestServer::start().await;
    let a = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    tick(&t, 10);
    t.restart().await;
    let affected = record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "msg-1", T0 + 5 * SEC),
    )
    .await;
    assert_eq!(ids(&affected), vec![a.item_id.clone()]);
    assert_eq!(affected[0].state, pb::State::ConvertedToNote as i32);
    // A ticket that never had an item: nothing to convert, and no error.
    let none = record_activity(
        &mut t,
        activity_req("acme", "T9", pb::AuthorKind::Client, "msg-2", T0 + 6 * SEC),
    )
    .await;
    assert!(none.is_empty());
    t.stop().await;
}
