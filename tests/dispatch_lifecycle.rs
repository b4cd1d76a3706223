//! The life of an item between scheduling and its outcome, end to end over real gRPC:
//! reschedule, cancel, send-now and ticket activity while it waits (also between
//! retries), which sends fire the ticket-activity rule and which do not, the events
//! every step leaves on WatchEvents, and a Hello the server must refuse.
//!
//! Nothing here synchronises with a sleep: "it did not happen" is checked after
//! `settle()` (the server idle) or behind a fence (a later answer on the same ordered
//! stream, waited for until its effect shows).
mod common;

use std::time::Duration;

use common::*;
use sendlater::clock::Clock;
use sendlater::pb;
use sendlater::pb::dispatch_client::DispatchClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const SEC: i64 = 1000;
const HOUR: i64 = 3_600_000;

async fn reschedule_to(t: &TestServer, id: &str, send_at: i64) -> pb::ScheduledItem {
    t.client
        .clone()
        .reschedule(pb::RescheduleRequest {
            account_id: "acme".into(),
            item_id: id.into(),
            send_at: Some(ts(send_at)),
            content: None,
            on_activity: 0,
            ..Default::default()
        })
        .await
        .expect("reschedule")
        .into_inner()
}

/// Settles the server and asserts the item is in `state` (it was not handed to a
/// connector: that would read DISPATCHING).
async fn assert_state_after_settle(t: &TestServer, id: &str, state: pb::State, why: &str) {
    t.settle().await;
    let it = t.get_acme(id).await;
    assert_eq!(it.state, state as i32, "{why}: {it:?}");
}

/// Schedules an email reply in `ticket` due at T0 + 1 s, lets it go out, and answers
/// the job with a transient Nack: the item is PENDING again, waiting for a retry whose
/// time lies in the future (the clock then reads T0 + 1 s).
async fn item_waiting_for_retry(
    t: &TestServer,
    c: &mut TestConnector,
    ticket: &str,
) -> pb::ScheduledItem {
    let item = t.schedule(email_reply("acme", ticket, T0 + SEC)).await;
    t.advance(Duration::from_secs(1));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    assert_eq!(job.attempt, 1);
    c.nack(&job, "451 try later", false).await;
    let waiting = wait_item(t, &item.item_id, "PENDING after a transient nack", |i| {
        i.state == pb::State::Pending as i32 && i.attempts == 1
    })
    .await;
    assert_eq!(waiting.last_error, "451 try later");
    let retry_at = ms(&waiting.next_attempt_at);
    assert!(
        retry_at > T0 + SEC,
        "the retry is due in the future: {waiting:?}"
    );
    waiting
}

#[tokio::test]
async fn a_reply_rescheduled_to_later_goes_out_at_the_new_time_and_not_the_old() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 60 * SEC)).await;
    let moved = reschedule_to(&t, &item.item_id, T0 + 120 * SEC).await;
    assert_eq!(ms(&moved.send_at), T0 + 120 * SEC);
    assert_eq!(moved.state, pb::State::Pending as i32);
    // The old time passes: nothing goes out.
    t.advance(Duration::from_secs(60));
    assert_state_after_settle(
        &t,
        &item.item_id,
        pb::State::Pending,
        "not due at its old time",
    )
    .await;
    // Just before the new time: still nothing.
    t.advance(Duration::from_millis(59_999));
    assert_state_after_settle(
        &t,
        &item.item_id,
        pb::State::Pending,
        "not due before its new time",
    )
    .await;
    // At the new time it goes out, and it is the first job this connector gets.
    t.advance(Duration::from_millis(1));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    assert_eq!(job.attempt, 1);
    assert_eq!(ms(&job.item.as_ref().unwrap().send_at), T0 + 120 * SEC);
    c.ack(&job, "m-1").await;
    let sent = wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    assert_eq!(ms(&sent.sent_at), T0 + 120 * SEC);
    assert_eq!(sent.attempts, 1);
    t.stop().await;
}

#[tokio::test]
async fn a_reply_rescheduled_to_earlier_goes_out_at_the_earlier_time() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 10).await;
    let item = t.schedule(chat_reply("acme", "T1", T0 + HOUR)).await;
    let moved = reschedule_to(&t, &item.item_id, T0 + 10 * SEC).await;
    assert_eq!(ms(&moved.send_at), T0 + 10 * SEC);
    t.advance(Duration::from_millis(9_999));
    assert_state_after_settle(
        &t,
        &item.item_id,
        pb::State::Pending,
        "not due before its new time",
    )
    .await;
    // At the new, earlier time (an hour before the old one) it goes out.
    t.advance(Duration::from_millis(1));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    assert_eq!(job.attempt, 1);
    c.ack(&job, "chat-1").await;
    let sent = wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    assert_eq!(ms(&sent.sent_at), T0 + 10 * SEC);
    // The old time passing later changes nothing: no second delivery (fenced by a
    // later item being the next job).
    let fence = t.schedule(chat_reply("acme", "T2", T0 + HOUR + SEC)).await;
    t.advance(Duration::from_millis((HOUR + SEC - 10 * SEC) as u64));
    let next = c.next_job().await;
    assert_eq!(job_item(&next), fence.item_id, "no second delivery");
    c.ack(&next, "chat-2").await;
    wait_state(&t.client, "acme", &fence.item_id, pb::State::Sent).await;
    t.stop().await;
}

#[tokio::test]
async fn a_due_reply_waiting_for_a_connector_and_rescheduled_to_later_waits_for_the_new_time() {
    let mut t = TestServer::start().await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 10 * SEC)).await;
    // Due with no connector: it waits, persisted, in line for one.
    t.advance(Duration::from_secs(10));
    assert_state_after_settle(&t, &item.item_id, pb::State::Pending, "no connector yet").await;
    let moved = reschedule_to(&t, &item.item_id, T0 + 60 * SEC).await;
    assert_eq!(ms(&moved.send_at), T0 + 60 * SEC);
    // A connector arrives before the new time: the item is not handed to it.
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    assert_state_after_settle(
        &t,
        &item.item_id,
        pb::State::Pending,
        "rescheduled to later while waiting for a connector: not due yet",
    )
    .await;
    t.advance(Duration::from_secs(50));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    assert_eq!(job.attempt, 1);
    c.ack(&job, "m-1").await;
    let sent = wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    assert_eq!(ms(&sent.sent_at), T0 + 60 * SEC);
    t.stop().await;
}

#[tokio::test]
async fn a_due_reply_waiting_for_a_connector_and_cancelled_never_goes_out() {
    let mut t = TestServer::start().await;
    let cancelled = t.schedule(chat_reply("acme", "T1", T0 + 10 * SEC)).await;
    t.advance(Duration::from_secs(10));
    assert_state_after_settle(
        &t,
        &cancelled.item_id,
        pb::State::Pending,
        "no connector yet",
    )
    .await;
    t.client
        .clone()
        .cancel(item_ref("acme", &cancelled.item_id))
        .await
        .expect("cancel a due item no connector has taken");
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 10).await;
    assert_state_after_settle(
        &t,
        &cancelled.item_id,
        pb::State::Cancelled,
        "not handed to the connector that arrived",
    )
    .await;
    // The first job the connector gets is a later item.
    let fence = t.schedule(chat_reply("acme", "T2", T0 + 10 * SEC)).await;
    let job = c.next_job().await;
    assert_eq!(
        job_item(&job),
        fence.item_id,
        "the cancelled item must not go out"
    );
    c.ack(&job, "fence").await;
    wait_state(&t.client, "acme", &fence.item_id, pb::State::Sent).await;
    assert_eq!(t.get_acme(&cancelled.item_id).await.attempts, 0);
    t.stop().await;
}

#[tokio::test]
async fn a_cancelled_reply_never_goes_out() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let cancelled = t.schedule(email_reply("acme", "T1", T0 + 10 * SEC)).await;
    let later = t.schedule(email_reply("acme", "T2", T0 + 20 * SEC)).await;
    let c_item = t
        .client
        .clone()
        .cancel(item_ref("acme", &cancelled.item_id))
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(c_item.state, pb::State::Cancelled as i32);
    // Past its due time: still cancelled, never leased.
    t.advance(Duration::from_secs(10));
    assert_state_after_settle(
        &t,
        &cancelled.item_id,
        pb::State::Cancelled,
        "a cancelled item stays cancelled past its due time",
    )
    .await;
    // The first job this connector ever receives is the later item.
    t.advance(Duration::from_secs(10));
    let job = c.next_job().await;
    assert_eq!(
        job_item(&job),
        later.item_id,
        "the cancelled item must not be delivered"
    );
    c.ack(&job, "m-2").await;
    wait_state(&t.client, "acme", &later.item_id, pb::State::Sent).await;
    let after = t.get_acme(&cancelled.item_id).await;
    assert_eq!(after.state, pb::State::Cancelled as i32, "{after:?}");
    assert_eq!(after.attempts, 0);
    assert_eq!(after.sent_at, None);
    t.stop().await;
}

#[tokio::test]
async fn send_now_on_an_item_waiting_for_a_retry_sends_it_at_once_as_attempt_two() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let waiting = item_waiting_for_retry(&t, &mut c, "T1").await;
    let now = t
        .client
        .clone()
        .send_now(item_ref("acme", &waiting.item_id))
        .await
        .expect("send now on a PENDING item waiting for its retry")
        .into_inner();
    assert_eq!(now.state, pb::State::Pending as i32);
    assert_eq!(
        ms(&now.send_at),
        T0 + SEC,
        "send_at is the moment of the call"
    );
    // The clock does not move: the backoff has not run out, only SendNow makes it due.
    let job = c.next_job().await;
    assert_eq!(job_item(&job), waiting.item_id);
    assert_eq!(job.attempt, 2);
    c.ack(&job, "m-2").await;
    let sent = wait_state(&t.client, "acme", &waiting.item_id, pb::State::Sent).await;
    assert_eq!(sent.attempts, 2);
    assert_eq!(ms(&sent.sent_at), T0 + SEC);
    t.stop().await;
}

/// With the clock a minute past `retry_at` (the clock stands at T0 + 1 s), the item
/// waiting for that retry stays in `state` once the server is idle, and the next job on
/// `c` is a fresh item (a fence), not the retry.
async fn past_the_retry_nothing_goes_out(
    t: &TestServer,
    c: &mut TestConnector,
    id: &str,
    retry_at: i64,
    state: pb::State,
) {
    t.advance(Duration::from_millis(
        (retry_at - (T0 + SEC)) as u64 + 60_000,
    ));
    assert_state_after_settle(t, id, state, "not retried").await;
    let fence = t
        .schedule(email_reply("acme", "T2", t.clock.now_ms()))
        .await;
    let job = c.next_job().await;
    assert_eq!(job_item(&job), fence.item_id, "{id} is not retried");
    c.ack(&job, "fence").await;
    wait_state(&t.client, "acme", &fence.item_id, pb::State::Sent).await;
}

#[tokio::test]
async fn cancel_on_an_item_waiting_for_a_retry_means_it_never_goes_out_again() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let waiting = item_waiting_for_retry(&t, &mut c, "T1").await;
    let retry_at = ms(&waiting.next_attempt_at);
    let cancelled = t
        .client
        .clone()
        .cancel(item_ref("acme", &waiting.item_id))
        .await
        .expect("cancel a PENDING item waiting for its retry")
        .into_inner();
    assert_eq!(cancelled.state, pb::State::Cancelled as i32);
    // Well past the retry time: still cancelled, not leased again.
    past_the_retry_nothing_goes_out(&t, &mut c, &waiting.item_id, retry_at, pb::State::Cancelled)
        .await;
    let after = t.get_acme(&waiting.item_id).await;
    assert_eq!(after.state, pb::State::Cancelled as i32);
    assert_eq!(after.attempts, 1);
    t.stop().await;
}

#[tokio::test]
async fn client_activity_converts_an_item_waiting_for_a_retry_into_a_note() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let waiting = item_waiting_for_retry(&t, &mut c, "T1").await;
    let retry_at = ms(&waiting.next_attempt_at);
    let affected = t
        .client
        .clone()
        .record_ticket_activity(pb::RecordTicketActivityRequest {
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            author_kind: pb::AuthorKind::Client as i32,
            message_id: "client-msg-1".into(),
            occurred_at: Some(ts(T0 + SEC)),
        })
        .await
        .expect("record activity")
        .into_inner()
        .affected;
    assert_eq!(affected.len(), 1, "{affected:?}");
    let note = &affected[0];
    assert_eq!(note.item_id, waiting.item_id);
    assert_eq!(note.state, pb::State::ConvertedToNote as i32);
    assert_eq!(note.note_at, waiting.created_at, "note_at == created_at");
    assert_eq!(ms(&note.note_at), T0);
    assert_eq!(
        note.converted_by,
        Some(pb::Activity {
            author_kind: pb::AuthorKind::Client as i32,
            message_id: "client-msg-1".into(),
            occurred_at: Some(ts(T0 + SEC)),
        })
    );
    // The retry time passes: the note is not sent.
    past_the_retry_nothing_goes_out(
        &t,
        &mut c,
        &waiting.item_id,
        retry_at,
        pb::State::ConvertedToNote,
    )
    .await;
    assert_eq!(&t.get_acme(&waiting.item_id).await, note);
    t.stop().await;
}

/// Schedules, in ticket T1, an older reply B (created at T0, due in an hour) and then a
/// newer reply A (created at T0 + 1 s, due at T0 + 10 s); returns (B, A) with the clock
/// at T0 + 10 s, A handed to `c` as attempt 1 (the job is returned).
async fn older_pending_and_newer_due(
    t: &TestServer,
    c: &mut TestConnector,
) -> (pb::ScheduledItem, pb::ScheduledItem, pb::DeliveryJob) {
    let b = t.schedule(email_reply("acme", "T1", T0 + HOUR)).await;
    t.advance(Duration::from_secs(1));
    let a = t.schedule(email_reply("acme", "T1", T0 + 10 * SEC)).await;
    assert!(ms(&b.created_at) < ms(&a.created_at));
    t.advance(Duration::from_secs(9));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), a.item_id);
    (b, a, job)
}

#[tokio::test]
async fn a_failed_send_converts_none_of_the_tickets_older_pending_replies() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let (b, a, job) = older_pending_and_newer_due(&t, &mut c).await;
    // A transient failure converts nothing...
    c.nack(&job, "451 mailbox busy", false).await;
    let retrying = wait_item(&t, &a.item_id, "A waiting for its retry", |i| {
        i.state == pb::State::Pending as i32 && i.attempts == 1
    })
    .await;
    assert_state_after_settle(
        &t,
        &b.item_id,
        pb::State::Pending,
        "a transient nack is no activity",
    )
    .await;
    // ...nor does the permanent one.
    t.advance(Duration::from_millis(
        (ms(&retrying.next_attempt_at) - t.clock.now_ms()) as u64,
    ));
    let again = c.next_job().await;
    assert_eq!(job_item(&again), a.item_id);
    assert_eq!(again.attempt, 2);
    c.nack(&again, "550 no such user", true).await;
    let failed = wait_state(&t.client, "acme", &a.item_id, pb::State::Failed).await;
    assert_eq!(failed.last_error, "550 no such user");
    assert_state_after_settle(
        &t,
        &b.item_id,
        pb::State::Pending,
        "a failed send converts nothing",
    )
    .await;
    let still = t.get_acme(&b.item_id).await;
    assert_eq!(still.converted_by, None);
    assert_eq!(still.note_at, None);
    // And B still goes out when due.
    t.advance(Duration::from_millis((T0 + HOUR - t.clock.now_ms()) as u64));
    let b_job = c.next_job().await;
    assert_eq!(job_item(&b_job), b.item_id);
    c.ack(&b_job, "<b@example.com>").await;
    wait_state(&t.client, "acme", &b.item_id, pb::State::Sent).await;
    t.stop().await;
}

#[tokio::test]
async fn an_acknowledged_send_converts_the_tickets_older_pending_replies() {
    // The contrast to the test above: the same setup, but the connector acks A.
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let (b, a, job) = older_pending_and_newer_due(&t, &mut c).await;
    c.ack(&job, "<a@example.com>").await;
    wait_state(&t.client, "acme", &a.item_id, pb::State::Sent).await;
    let note = t.get_acme(&b.item_id).await;
    assert_eq!(note.state, pb::State::ConvertedToNote as i32, "{note:?}");
    assert_eq!(note.note_at, b.created_at);
    assert_eq!(
        note.converted_by,
        Some(pb::Activity {
            author_kind: pb::AuthorKind::Staff as i32,
            message_id: a.item_id.clone(),
            occurred_at: a.created_at,
        })
    );
    t.stop().await;
}

#[tokio::test]
async fn sending_a_new_ticket_converts_the_tickets_replies_written_before_it_only() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 10).await;
    // Ticket N1: a reply written first, then the NEW_TICKET, then a follow-up reply.
    let before = t.schedule(chat_reply("acme", "N1", T0 + HOUR)).await;
    let mut keep = chat_reply("acme", "N1", T0 + HOUR);
    keep.on_activity = pb::OnActivity::Keep as i32;
    let kept = t.schedule(keep).await;
    t.advance(Duration::from_secs(1));
    let ticket = t
        .client
        .clone()
        .schedule_ticket(chat_reply("acme", "N1", T0 + 10 * SEC))
        .await
        .expect("schedule ticket")
        .into_inner();
    assert_eq!(ticket.kind, pb::Kind::NewTicket as i32);
    t.advance(Duration::from_secs(1));
    let after = t.schedule(chat_reply("acme", "N1", T0 + HOUR)).await;
    let elsewhere = t.schedule(chat_reply("acme", "N2", T0 + HOUR)).await;
    t.advance(Duration::from_secs(8));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), ticket.item_id);
    c.ack(&job, "chat-new-1").await;
    wait_state(&t.client, "acme", &ticket.item_id, pb::State::Sent).await;
    let note = t.get_acme(&before.item_id).await;
    assert_eq!(note.state, pb::State::ConvertedToNote as i32, "{note:?}");
    assert_eq!(note.note_at, before.created_at);
    assert_eq!(
        note.converted_by,
        Some(pb::Activity {
            author_kind: pb::AuthorKind::Staff as i32,
            message_id: ticket.item_id.clone(),
            occurred_at: ticket.created_at,
        })
    );
    for (id, why) in [
        (&kept.item_id, "KEEP policy"),
        (&after.item_id, "written after the new ticket was scheduled"),
        (&elsewhere.item_id, "another ticket"),
    ] {
        let it = t.get_acme(id).await;
        assert_eq!(it.state, pb::State::Pending as i32, "{why}: {it:?}");
    }
    t.stop().await;
}

async fn next_event(s: &mut Streaming<pb::ItemEvent>) -> pb::ItemEvent {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an event within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

/// Reads the next event and checks its type, item and the item's state.
async fn expect_event(
    s: &mut Streaming<pb::ItemEvent>,
    last_seq: &mut u64,
    ty: pb::EventType,
    id: &str,
    state: pb::State,
) -> pb::ScheduledItem {
    let ev = next_event(s).await;
    assert!(
        ev.sequence > *last_seq,
        "sequence {} after {last_seq}",
        ev.sequence
    );
    *last_seq = ev.sequence;
    let item = ev.item.expect("event has an item");
    assert_eq!(
        (ev.r#type, item.item_id.as_str(), item.state),
        (ty as i32, id, state as i32),
        "event {} ({:?}): {item:?}",
        ev.sequence,
        pb::EventType::try_from(ev.r#type)
    );
    item
}

#[tokio::test]
async fn watch_events_shows_updated_sent_converted_and_failed_with_the_item_in_that_state() {
    use pb::EventType as E;
    use pb::State as S;
    let mut t = TestServer::start().await;
    let mut s = t
        .client
        .clone()
        .watch_events(pb::WatchEventsRequest {
            account_id: "acme".into(),
            after_sequence: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seq = 0;
    // N: an older reply in T1, to be converted when S goes out.
    let n = t.schedule(email_reply("acme", "T1", T0 + HOUR)).await;
    expect_event(&mut s, &mut seq, E::Scheduled, &n.item_id, S::Pending).await;
    t.advance(Duration::from_secs(1));
    let sent = t.schedule(email_reply("acme", "T1", T0 + 10 * SEC)).await;
    expect_event(&mut s, &mut seq, E::Scheduled, &sent.item_id, S::Pending).await;
    // F: in T2, rescheduled, then failing.
    let f = t.schedule(email_reply("acme", "T2", T0 + 20 * SEC)).await;
    expect_event(&mut s, &mut seq, E::Scheduled, &f.item_id, S::Pending).await;
    reschedule_to(&t, &f.item_id, T0 + 30 * SEC).await;
    let updated = expect_event(&mut s, &mut seq, E::Updated, &f.item_id, S::Pending).await;
    assert_eq!(ms(&updated.send_at), T0 + 30 * SEC, "{updated:?}");

    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 1).await;
    t.advance(Duration::from_secs(9));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), sent.item_id);
    expect_event(
        &mut s,
        &mut seq,
        E::Dispatching,
        &sent.item_id,
        S::Dispatching,
    )
    .await;
    c.ack(&job, "<sent@example.com>").await;
    let sent_ev = expect_event(&mut s, &mut seq, E::Sent, &sent.item_id, S::Sent).await;
    assert_eq!(sent_ev.provider_message_id, "<sent@example.com>");
    assert_eq!(ms(&sent_ev.sent_at), T0 + 10 * SEC);
    let note_ev = expect_event(
        &mut s,
        &mut seq,
        E::ConvertedToNote,
        &n.item_id,
        S::ConvertedToNote,
    )
    .await;
    assert_eq!(note_ev.note_at, n.created_at);
    assert_eq!(
        note_ev.converted_by.as_ref().map(|a| a.message_id.as_str()),
        Some(sent.item_id.as_str())
    );

    t.advance(Duration::from_secs(20));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), f.item_id);
    expect_event(&mut s, &mut seq, E::Dispatching, &f.item_id, S::Dispatching).await;
    c.nack(&job, "550 rejected", true).await;
    let failed = expect_event(&mut s, &mut seq, E::Failed, &f.item_id, S::Failed).await;
    assert_eq!(failed.last_error, "550 rejected");
    assert_eq!(failed.attempts, 1);

    // Nothing else was recorded for the account after FAILED (no RETRYING, no second
    // DISPATCHING): the next event is the SCHEDULED of a new item.
    let last = t.schedule(email_reply("acme", "T3", T0 + HOUR)).await;
    expect_event(&mut s, &mut seq, E::Scheduled, &last.item_id, S::Pending).await;
    t.stop().await;
}

/// Opens a Dispatch stream with `hello` as its first message and returns what the
/// server answered: the stream, or the error (from `connect` itself or as the first
/// message of the stream). The request side stays open while the result is held.
async fn open_dispatch(
    t: &TestServer,
    hello: pb::Hello,
) -> (
    mpsc::Sender<pb::ConnectorMessage>,
    Result<Streaming<pb::DeliveryJob>, tonic::Status>,
) {
    let mut client = DispatchClient::new(channel(&t.url()).await);
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::ConnectorMessage {
        msg: Some(pb::connector_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client.connect(ReceiverStream::new(rx)),
    )
    .await
    .expect("the server answers a Hello within 10 s");
    (tx, r.map(|resp| resp.into_inner()))
}

/// The status a rejected Hello gets, whether `connect` fails or the stream's first
/// message is the error.
async fn hello_error(t: &TestServer, hello: pb::Hello) -> tonic::Status {
    let (_tx, r) = open_dispatch(t, hello).await;
    match r {
        Err(s) => s,
        Ok(mut jobs) => {
            match tokio::time::timeout(Duration::from_secs(10), jobs.message())
                .await
                .expect("the server ends a refused stream within 10 s")
            {
                Err(s) => s,
                Ok(m) => panic!("a bad Hello was accepted; first message: {m:?}"),
            }
        }
    }
}

fn hello(channels: &[pb::Channel], max_in_flight: u32) -> pb::Hello {
    pb::Hello {
        connector_id: "lifecycle-test".into(),
        channels: channels.iter().map(|&c| c as i32).collect(),
        max_in_flight,
    }
}

#[tokio::test]
async fn a_bad_hello_is_invalid_argument_and_the_connector_gets_no_jobs() {
    let mut t = TestServer::start().await;
    let item = t.schedule(email_reply("acme", "T1", T0)).await;
    for (h, field) in [
        (hello(&[pb::Channel::Email], 0), "hello.max_in_flight"),
        (hello(&[pb::Channel::Email], 10_001), "hello.max_in_flight"),
        (hello(&[], 10), "hello.channels"),
    ] {
        let what = format!("{h:?}");
        let s = hello_error(&t, h).await;
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{what}: {s:?}");
        assert!(
            s.message().starts_with(field),
            "{what}: message {:?} should name {field}",
            s.message()
        );
    }
    // None of them was registered: the due item was handed to nobody.
    assert_state_after_settle(
        &t,
        &item.item_id,
        pb::State::Pending,
        "no connector was accepted",
    )
    .await;
    // The bounds themselves are valid: 10000 is accepted and gets the job; 1 too.
    let (tx, r) = open_dispatch(&t, hello(&[pb::Channel::Email], 10_000)).await;
    let jobs = r.expect("max_in_flight 10000 is accepted");
    let mut wide = TestConnector { tx, jobs };
    let job = wide.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    assert_eq!(job.attempt, 1);
    wide.ack(&job, "m-1").await;
    wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    let (tx, r) = open_dispatch(&t, hello(&[pb::Channel::Chat], 1)).await;
    let jobs = r.expect("max_in_flight 1 is accepted");
    let mut narrow = TestConnector { tx, jobs };
    let chat = t.schedule(chat_reply("acme", "T2", T0)).await;
    let job = narrow.next_job().await;
    assert_eq!(job_item(&job), chat.item_id);
    narrow.ack(&job, "chat-1").await;
    wait_state(&t.client, "acme", &chat.item_id, pb::State::Sent).await;
    t.stop().await;
}
