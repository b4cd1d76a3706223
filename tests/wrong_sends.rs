//! Faults that would send what must not go out (issue 19, items 1-5): the activity rule
//! after a late answer, leases a failed dispatch write took back while the job was out,
//! and a row that cannot be decoded. Each test failed before its fix.
//!
//! Nothing here synchronises with a sleep: "it did not happen" is checked after
//! `settle()` (the server idle) or behind a fence.
mod common;

use std::time::Duration;

use common::*;
use sendlater::clock::Clock;
use sendlater::pb;

const SEC: i64 = 1000;
const HOUR: i64 = 3_600_000;

#[tokio::test]
async fn a_late_ack_after_the_last_attempt_failed_still_converts_the_tickets_older_replies() {
    // One attempt only: A's expired lease makes it FAILED, then the connector's late Ack
    // makes it SENT. The send is activity in the ticket like any other: B, written
    // before A, must become a note and never go out.
    let mut t = TestServer::start_with(|c| c.dispatch.max_attempts = 1).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let b = t.schedule(email_reply("acme", "T1", T0 + HOUR)).await;
    t.advance(Duration::from_secs(1));
    let a = t.schedule(email_reply("acme", "T1", T0 + 10 * SEC)).await;
    t.advance(Duration::from_secs(9));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), a.item_id);
    // A second job, in another ticket, keeps `c` connected past A's lease.
    let keep = t.schedule(email_reply("acme", "T2", T0 + 20 * SEC)).await;
    t.advance(Duration::from_secs(10));
    let keep_job = c.next_job().await;
    assert_eq!(job_item(&keep_job), keep.item_id);
    // A's lease (30 s from T0 + 10 s) expires: its only attempt is spent.
    t.advance(Duration::from_secs(20));
    let failed = wait_state(&t.client, "acme", &a.item_id, pb::State::Failed).await;
    assert_eq!(failed.attempts, 1);
    // Durable, so A has left the ticket's live count.
    t.settle().await;
    // The late answer: A did go out.
    c.ack(&job, "<a@example.com>").await;
    let sent = wait_state(&t.client, "acme", &a.item_id, pb::State::Sent).await;
    assert_eq!(sent.provider_message_id, "<a@example.com>");
    let note = t.get_acme(&b.item_id).await;
    assert_eq!(
        note.state,
        pb::State::ConvertedToNote as i32,
        "B was written before A went out: {note:?}"
    );
    assert_eq!(
        note.converted_by.as_ref().map(|a| a.message_id.as_str()),
        Some(a.item_id.as_str())
    );
    // Past B's send time nothing changes it: a note never goes out.
    t.advance(Duration::from_millis((T0 + HOUR - t.clock.now_ms()) as u64));
    t.settle().await;
    assert_eq!(t.get_acme(&b.item_id).await, note);
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn a_lease_whose_group_fails_after_its_job_left_stays_taken() {
    // X's lease runs in a dispatch write (X changed since its row was written, so the
    // dispatcher cannot claim it from the row), its job leaves, and then the group's
    // COMMIT fails (an injected deferred foreign-key violation, armed until the test
    // disarms it). The job is out at the connector: X must stay DISPATCHING (a Cancel
    // is FAILED_PRECONDITION) and must not be handed out a second time.
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let x = t.schedule(email_reply("acme", "T1", T0 + HOUR)).await;
    let mut client = t.client.clone();
    client
        .reschedule(pb::RescheduleRequest {
            account_id: "acme".into(),
            item_id: x.item_id.clone(),
            send_at: Some(ts(T0 + SEC)),
            ..Default::default()
        })
        .await
        .unwrap();
    let db = raw(&t);
    db.execute_batch(&format!(
        "CREATE TABLE poison (x INTEGER REFERENCES items(id) DEFERRABLE INITIALLY DEFERRED);
         CREATE TABLE arm (on_ INTEGER); INSERT INTO arm VALUES (1);
         CREATE TRIGGER fail_x AFTER INSERT ON events
           WHEN NEW.item_id = {} AND NEW.type = {} AND EXISTS (SELECT 1 FROM arm)
           BEGIN INSERT INTO poison VALUES (-1); END;",
        numeric_id(&x.item_id),
        sendlater::domain::EventType::Dispatching.as_i64()
    ))
    .unwrap();
    t.advance(Duration::from_secs(1));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), x.item_id);
    assert_eq!(job.attempt, 1);
    // The group that leased X fails at its COMMIT (the delete waits for its lock).
    db.execute_batch("DELETE FROM arm").unwrap();
    t.settle().await;
    // Fenced by a later item: the next job is it, not X again.
    let fence = t
        .schedule(email_reply("acme", "T2", t.clock.now_ms()))
        .await;
    let next = c.next_job().await;
    assert_eq!(
        job_item(&next),
        fence.item_id,
        "X was handed out a second time while its first job was out: {next:?}"
    );
    let cancel = client.cancel(item_ref("acme", &x.item_id)).await;
    assert_status(cancel, tonic::Code::FailedPrecondition, "");
    c.ack(&job, "<x@example.com>").await;
    let sent = wait_state(&t.client, "acme", &x.item_id, pb::State::Sent).await;
    assert_eq!(sent.attempts, 1);
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn an_unreadable_reply_in_the_ticket_fails_alone_and_the_ack_is_recorded() {
    // U, an older pending reply of the ticket, cannot be decoded. A's Ack runs the
    // activity rule over the ticket's pending replies: U must fail alone (FAILED, with
    // the reason and an event), and A's answer must count (on main the Ack's write
    // failed on U, the answer was dropped and A was delivered again).
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let u = t.schedule(email_reply("acme", "T1", T0 + HOUR)).await;
    t.advance(Duration::from_secs(1));
    let a = t.schedule(email_reply("acme", "T1", T0 + 10 * SEC)).await;
    t.settle().await;
    raw(&t)
        .execute(
            "UPDATE items SET content = x'ff00ff' WHERE id = ?1",
            [numeric_id(&u.item_id)],
        )
        .unwrap();
    t.advance(Duration::from_secs(9));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), a.item_id);
    c.ack(&job, "<a@example.com>").await;
    let sent = wait_state(&t.client, "acme", &a.item_id, pb::State::Sent).await;
    assert_eq!(sent.attempts, 1, "A's answer was dropped: {sent:?}");
    t.settle().await;
    let db = raw(&t);
    let (state, err): (i64, Option<String>) = db
        .query_row(
            "SELECT state, last_error FROM items WHERE id = ?1",
            [numeric_id(&u.item_id)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(state, pb::State::Failed as i64);
    assert!(
        err.as_deref().unwrap_or("").contains("cannot be read"),
        "{err:?}"
    );
    let failed_events: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM events WHERE item_id = ?1 AND type = ?2",
            [
                numeric_id(&u.item_id),
                sendlater::domain::EventType::Failed.as_i64(),
            ],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(failed_events, 1, "U's failure has its event");
    // No second delivery of A: a later item is the next job.
    let fence = t
        .schedule(email_reply("acme", "T2", t.clock.now_ms()))
        .await;
    assert_eq!(job_item(&c.next_job().await), fence.item_id);
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn an_answer_that_cannot_be_recorded_is_kept_and_recorded_later() {
    // Recording A's SENT event fails while an injected trigger is armed: the write
    // that carries the Ack fails, and so does the Ack alone. The answer must be kept
    // and recorded by a later write once that can succeed (on main it was dropped: A
    // stayed DISPATCHING until its lease expired and went out again).
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let a = t.schedule(email_reply("acme", "T1", T0 + SEC)).await;
    let db = raw(&t);
    db.execute_batch(&format!(
        "CREATE TABLE arm (on_ INTEGER); INSERT INTO arm VALUES (1);
         CREATE TRIGGER refuse_a BEFORE INSERT ON events
           WHEN NEW.item_id = {} AND NEW.type = {} AND EXISTS (SELECT 1 FROM arm)
           BEGIN SELECT RAISE(ABORT, 'injected: cannot record'); END;",
        numeric_id(&a.item_id),
        sendlater::domain::EventType::Sent.as_i64()
    ))
    .unwrap();
    t.advance(Duration::from_secs(1));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), a.item_id);
    c.ack(&job, "<a@example.com>").await;
    // The answer's write (and its isolated retry) fail while armed.
    let fence = t
        .schedule(email_reply("acme", "T2", t.clock.now_ms()))
        .await;
    let fence_job = c.next_job().await;
    assert_eq!(job_item(&fence_job), fence.item_id);
    t.settle().await;
    assert_eq!(
        t.get_acme(&a.item_id).await.state,
        pb::State::Dispatching as i32,
        "not recorded while the trigger refuses it"
    );
    db.execute_batch("DELETE FROM arm").unwrap();
    // The next write records the kept answer with its own.
    c.ack(&fence_job, "<fence@example.com>").await;
    wait_state(&t.client, "acme", &fence.item_id, pb::State::Sent).await;
    let sent = wait_state(&t.client, "acme", &a.item_id, pb::State::Sent).await;
    assert_eq!(sent.attempts, 1);
    assert_eq!(sent.provider_message_id, "<a@example.com>");
    t.stop().await;
}
