//! Dispatch over real gRPC: due items reach a connector stream, answers change state.
mod common;

use std::time::Duration;

use common::*;
use sendlater::pb;

#[tokio::test]
async fn a_due_item_reaches_the_connector_and_an_ack_marks_it_sent() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let item = t
        .client
        .schedule_message(email_reply("acme", "T1", T0 + 60_000))
        .await
        .unwrap()
        .into_inner();
    t.advance(Duration::from_secs(60));
    let job = c.next_job().await;
    assert_eq!(job.attempt, 1);
    let got = job.item.clone().unwrap();
    assert_eq!(got.item_id, item.item_id);
    assert_eq!(got.state, pb::State::Dispatching as i32);
    c.ack(&job, "<smtp-1@example.com>").await;
    let sent = wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    assert_eq!(sent.provider_message_id, "<smtp-1@example.com>");
    assert_eq!(ms(&sent.sent_at), T0 + 60_000);
    assert_eq!(sent.attempts, 1);
    t.stop().await;
}

#[tokio::test]
async fn send_now_dispatches_at_once_without_moving_the_clock() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 4).await;
    let item = t.schedule(chat_reply("acme", "T1", T0 + 86_400_000)).await;
    let now = t
        .client
        .send_now(item_ref("acme", &item.item_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ms(&now.send_at), T0);
    let job = c.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    t.stop().await;
}

#[tokio::test]
async fn a_transient_nack_retries_after_the_backoff_with_the_next_attempt() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let item = t.schedule(email_reply("acme", "T1", T0)).await;
    let job = c.next_job().await;
    assert_eq!(job.attempt, 1);
    c.nack(&job, "451 try later", false).await;
    // (Until its lease commits, a read may still show the item PENDING with no attempt:
    // the job leaves before the lease is durable. Wait for the nack itself.)
    let pending = wait_item(&t, &item.item_id, "the nack recorded", |i| {
        i.state == pb::State::Pending as i32 && i.attempts == 1
    })
    .await;
    assert_eq!(pending.last_error, "451 try later");
    let retry_at = ms(&pending.next_attempt_at);
    // Base 1 s with equal jitter: between 0.5 s and 1 s after the nack.
    assert!(
        (T0 + 500..=T0 + 1000).contains(&retry_at),
        "retry at {retry_at}"
    );
    // Not before the backoff: 1 ms short of it, the server is idle and has not leased
    // the item again...
    t.advance(Duration::from_millis((retry_at - T0 - 1) as u64));
    t.settle().await;
    let waiting = t.get_acme(&item.item_id).await;
    assert_eq!(waiting.state, pb::State::Pending as i32, "{waiting:?}");
    assert_eq!(waiting.attempts, 1, "{waiting:?}");
    // ...and at once after it.
    t.advance(Duration::from_millis(1));
    let again = c.next_job().await;
    assert_eq!(again.attempt, 2);
    assert_eq!(job_item(&again), item.item_id);
    c.ack(&again, "m-2").await;
    let sent = wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    assert_eq!(sent.attempts, 2);
    t.stop().await;
}

#[tokio::test]
async fn a_permanent_nack_fails_the_item_at_once() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let item = t.schedule(email_reply("acme", "T1", T0)).await;
    let job = c.next_job().await;
    c.nack(&job, "550 no such user", true).await;
    let failed = wait_state(&t.client, "acme", &item.item_id, pb::State::Failed).await;
    assert_eq!(failed.last_error, "550 no such user");
    assert_eq!(failed.attempts, 1);
    t.stop().await;
}

#[tokio::test]
async fn transient_failures_stop_after_max_attempts() {
    let mut t = TestServer::start_with(|c| {
        c.dispatch.max_attempts = 3;
        c.dispatch.retry_base_ms = 0;
    })
    .await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let item = t.schedule(email_reply("acme", "T1", T0)).await;
    for attempt in 1..=3 {
        let job = c.next_job().await;
        assert_eq!(job.attempt, attempt);
        c.nack(&job, "timeout", false).await;
    }
    let failed = wait_state(&t.client, "acme", &item.item_id, pb::State::Failed).await;
    assert_eq!(failed.attempts, 3);
    t.stop().await;
}

#[tokio::test]
async fn an_expired_lease_redelivers_elsewhere_and_a_late_ack_still_marks_sent() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let item = t.schedule(email_reply("acme", "T1", T0)).await;
    let first = c.next_job().await;
    assert_eq!(ms(&first.lease_expires_at), T0 + 30_000);
    // A second job keeps `c` connected after the first lease expires.
    let other = t.schedule(email_reply("acme", "T2", T0 + 10_000)).await;
    t.advance(Duration::from_secs(10));
    let second_job = c.next_job().await;
    assert_eq!(job_item(&second_job), other.item_id);
    let mut d = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    t.advance(Duration::from_secs(20));
    // The expired attempt goes to another connector: `c` gets no more jobs.
    let second = d.next_job().await;
    assert_eq!(second.attempt, 2);
    assert_eq!(job_item(&second), item.item_id);
    // The first delivery did go out after all: its ack counts.
    c.ack(&first, "late").await;
    let sent = wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    assert_eq!(sent.provider_message_id, "late");
    assert_eq!(sent.attempts, 2);
    // The second ack is accepted and changes nothing; fenced by a later ack on the
    // same stream.
    let fence = t.schedule(email_reply("acme", "T3", T0 + 30_000)).await;
    let fence_job = d.next_job().await;
    assert_eq!(job_item(&fence_job), fence.item_id);
    d.ack(&second, "dup").await;
    d.ack(&fence_job, "fence").await;
    wait_state(&t.client, "acme", &fence.item_id, pb::State::Sent).await;
    let again = t
        .client
        .get_item(item_ref("acme", &item.item_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.provider_message_id, "late");
    assert_eq!(again.sent_at, sent.sent_at);
    c.ack(&second_job, "ok").await;
    wait_state(&t.client, "acme", &other.item_id, pb::State::Sent).await;
    t.stop().await;
}

#[tokio::test]
async fn a_dropped_stream_redelivers_to_another_connector_at_once() {
    let mut t = TestServer::start().await;
    let mut a = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 4).await;
    let item = t.schedule(chat_reply("acme", "T1", T0)).await;
    let job = a.next_job().await;
    assert_eq!(job.attempt, 1);
    let mut b = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 4).await;
    drop(a);
    let again = b.next_job().await;
    assert_eq!(job_item(&again), item.item_id);
    assert_eq!(again.attempt, 2);
    b.ack(&again, "ok").await;
    wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    t.stop().await;
}

#[tokio::test]
async fn a_connector_never_holds_more_than_max_in_flight() {
    let mut t = TestServer::start().await;
    let mut a = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 2).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            t.schedule(chat_reply("acme", &format!("T{i}"), T0))
                .await
                .item_id,
        );
    }
    let a1 = a.next_job().await;
    let a2 = a.next_job().await;
    // A second connector takes the rest: if `a` had been given more than 2, `b` would
    // not get 3.
    let mut b = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 3).await;
    let mut got = vec![job_item(&a1), job_item(&a2)];
    for _ in 0..3 {
        got.push(job_item(&b.next_job().await));
    }
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    // Both connectors are full: a new due item waits, once the server is idle.
    let more = t.schedule(chat_reply("acme", "T9", T0)).await;
    t.settle().await;
    let waiting = t.get_acme(&more.item_id).await;
    assert_eq!(waiting.state, pb::State::Pending as i32, "{waiting:?}");
    assert_eq!(waiting.attempts, 0, "{waiting:?}");
    // Acking frees credit on `a`, the only connector with any: the item goes there,
    // and it is the next thing on `a`'s stream (nothing else was sent to it).
    a.ack(&a1, "x").await;
    let j = a.next_job().await;
    assert_eq!(job_item(&j), more.item_id);
    assert_eq!(j.attempt, 1);
    t.stop().await;
}

#[tokio::test]
async fn one_accounts_burst_does_not_starve_another_account() {
    let mut t = TestServer::start().await;
    let mut entries = Vec::new();
    for i in 0..50 {
        let r = chat_reply("big", &format!("B{i}"), T0 + 1000);
        entries.push(batch_entry(r));
    }
    t.client
        .schedule_batch(pb::ScheduleBatchRequest { entries })
        .await
        .unwrap();
    let small: Vec<String> = vec![
        t.schedule(chat_reply("small", "S1", T0 + 1000))
            .await
            .item_id,
        t.schedule(chat_reply("small", "S2", T0 + 1000))
            .await
            .item_id,
    ];
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 1).await;
    t.advance(Duration::from_secs(1));
    let mut order = Vec::new();
    for _ in 0..6 {
        let job = c.next_job().await;
        let item = job.item.as_ref().unwrap();
        order.push((item.account_id.clone(), item.item_id.clone()));
        c.ack(&job, "ok").await;
    }
    // Both small items, each once, among the first 5 jobs (round-robin: at most every
    // other job is the big account's).
    let small_jobs: Vec<(usize, &String)> = order
        .iter()
        .enumerate()
        .filter(|(_, (a, _))| a == "small")
        .map(|(i, (_, id))| (i, id))
        .collect();
    let mut got: Vec<&String> = small_jobs.iter().map(|(_, id)| *id).collect();
    got.sort();
    let mut want: Vec<&String> = small.iter().collect();
    want.sort();
    assert_eq!(
        got, want,
        "both small items among the first 6 jobs: {order:?}"
    );
    assert!(small_jobs[1].0 <= 4, "{order:?}");
    t.stop().await;
}

#[tokio::test]
async fn due_items_wait_for_a_connector_and_go_out_oldest_first() {
    let mut t = TestServer::start().await;
    let later = t.schedule(email_reply("acme", "T1", T0 + 2000)).await;
    let older = t.schedule(email_reply("acme", "T2", T0 + 1000)).await;
    t.advance(Duration::from_secs(5));
    // Due, but nobody to send them: still PENDING once the server is idle.
    t.settle().await;
    for id in [&older.item_id, &later.item_id] {
        let it = t.get_acme(id).await;
        assert_eq!(it.state, pb::State::Pending as i32, "{it:?}");
        assert_eq!(it.attempts, 0, "{it:?}");
    }
    // A chat connector does not take email.
    let _chat = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 10).await;
    t.settle().await;
    for id in [&older.item_id, &later.item_id] {
        let it = t.get_acme(id).await;
        assert_eq!(it.state, pb::State::Pending as i32, "{it:?}");
        assert_eq!(it.attempts, 0, "not leased to the chat connector: {it:?}");
    }
    let mut email = TestConnector::connect(&t.url(), &[pb::Channel::Email], 1).await;
    let j1 = email.next_job().await;
    assert_eq!(job_item(&j1), older.item_id);
    email.ack(&j1, "1").await;
    let j2 = email.next_job().await;
    assert_eq!(job_item(&j2), later.item_id);
    email.ack(&j2, "2").await;
    // Each went out once, to the email connector.
    for id in [&older.item_id, &later.item_id] {
        let sent = wait_state(&t.client, "acme", id, pb::State::Sent).await;
        assert_eq!(sent.attempts, 1, "{sent:?}");
    }
    t.stop().await;
}

#[tokio::test]
async fn a_restart_redelivers_jobs_that_were_leased() {
    let mut t = TestServer::start().await;
    let item = t.schedule(email_reply("acme", "T1", T0)).await;
    {
        let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
        let job = c.next_job().await;
        assert_eq!(job.attempt, 1);
        wait_state(&t.client, "acme", &item.item_id, pb::State::Dispatching).await;
    }
    t.restart().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let job = c.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    assert_eq!(job.attempt, 2);
    c.ack(&job, "after-restart").await;
    wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    t.stop().await;
}

#[tokio::test]
async fn sending_a_reply_converts_the_tickets_older_pending_replies_only() {
    let mut t = TestServer::start().await;
    let older = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let mut keep = email_reply("acme", "T1", T0 + 3_600_000);
    keep.on_activity = pb::OnActivity::Keep as i32;
    let kept = t.schedule(keep).await;
    t.advance(Duration::from_secs(1));
    let sent = t.schedule(email_reply("acme", "T1", T0 + 10_000)).await;
    t.advance(Duration::from_secs(1));
    let newer = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let other_ticket = t.schedule(email_reply("acme", "T2", T0 + 3_600_000)).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    t.advance(Duration::from_secs(10));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), sent.item_id);
    c.ack(&job, "m").await;
    wait_state(&t.client, "acme", &sent.item_id, pb::State::Sent).await;
    let note = t
        .client
        .get_item(item_ref("acme", &older.item_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(note.state, pb::State::ConvertedToNote as i32);
    assert_eq!(ms(&note.note_at), T0);
    let by = note.converted_by.unwrap();
    assert_eq!(by.message_id, sent.item_id);
    assert_eq!(by.author_kind, pb::AuthorKind::Staff as i32);
    assert_eq!(ms(&by.occurred_at), T0 + 1000);
    for (id, what) in [
        (&kept.item_id, "KEEP policy"),
        (&newer.item_id, "written after"),
        (&other_ticket.item_id, "other ticket"),
    ] {
        let it = t
            .client
            .get_item(item_ref("acme", id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(it.state, pb::State::Pending as i32, "{what}");
    }
    t.stop().await;
}

#[tokio::test]
async fn the_client_timeline_shows_sent_items_without_internal_fields() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let mut req = email_reply("acme", "T1", T0);
    if let Some(pb::schedule_request::Content::Email(e)) = &mut req.content {
        e.bcc = vec!["audit@example.com".into()];
    }
    req.request_id = "r-1".into();
    let item = t.schedule(req).await;
    let pending = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let job = c.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    c.ack(&job, "<m1@example.com>").await;
    wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    let client_view = t
        .client
        .get_ticket_timeline(pb::GetTicketTimelineRequest {
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            audience: pb::Audience::Client as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(client_view.items.len(), 1, "only the sent item");
    assert!(
        client_view
            .items
            .iter()
            .all(|i| i.item_id != pending.item_id),
        "the pending reply is not in the client's view"
    );
    let staff_view = t
        .client
        .get_ticket_timeline(pb::GetTicketTimelineRequest {
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            audience: pb::Audience::Staff as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        staff_view
            .items
            .iter()
            .any(|i| i.item_id == pending.item_id),
        "the staff view shows the pending reply: {staff_view:?}"
    );
    let seen = &client_view.items[0];
    assert_eq!(seen.item_id, item.item_id);
    assert_eq!(seen.author_id, "");
    assert_eq!(seen.request_id, "");
    assert_eq!(seen.attempts, 0);
    match &seen.content {
        Some(pb::scheduled_item::Content::Email(e)) => assert!(e.bcc.is_empty(), "bcc hidden"),
        other => panic!("{other:?}"),
    }
    t.stop().await;
}

#[tokio::test]
async fn a_new_ticket_exists_for_the_client_once_sent() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 4).await;
    let ticket = t
        .client
        .schedule_ticket(chat_reply("acme", "NEW-1", T0 + 5_000))
        .await
        .unwrap()
        .into_inner();
    let req = pb::GetTicketTimelineRequest {
        account_id: "acme".into(),
        ticket_id: "NEW-1".into(),
        audience: pb::Audience::Client as i32,
        ..Default::default()
    };
    let hidden = t.client.get_ticket_timeline(req.clone()).await;
    assert_eq!(hidden.unwrap_err().code(), tonic::Code::NotFound);
    t.advance(Duration::from_secs(5));
    let job = c.next_job().await;
    c.ack(&job, "chat-1").await;
    wait_state(&t.client, "acme", &ticket.item_id, pb::State::Sent).await;
    let shown = t
        .client
        .get_ticket_timeline(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.items.len(), 1);
    assert_eq!(shown.items[0].kind, pb::Kind::NewTicket as i32);
    t.stop().await;
}

#[tokio::test]
async fn reporting_our_own_sent_message_back_converts_nothing() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let sent = t.schedule(email_reply("acme", "T1", T0)).await;
    let job = c.next_job().await;
    c.ack(&job, "<provider-77@example.com>").await;
    wait_state(&t.client, "acme", &sent.item_id, pb::State::Sent).await;
    t.advance(Duration::from_secs(1));
    // A reply written after the send, then the backend reports our message (by its
    // provider id) as new activity: a no-op.
    let later = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    t.advance(Duration::from_secs(1));
    let r = t
        .client
        .record_ticket_activity(pb::RecordTicketActivityRequest {
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            author_kind: pb::AuthorKind::Staff as i32,
            message_id: "<provider-77@example.com>".into(),
            occurred_at: Some(ts(T0 + 2000)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.affected.is_empty());
    let still = t
        .client
        .get_item(item_ref("acme", &later.item_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.state, pb::State::Pending as i32);
    t.stop().await;
}

#[tokio::test]
async fn deferred_tickets_count_items_being_dispatched() {
    let mut t = TestServer::start().await;
    t.schedule(email_reply("acme", "T1", T0)).await;
    t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let job = c.next_job().await;
    wait_state(&t.client, "acme", &job_item(&job), pb::State::Dispatching).await;
    let tickets = t
        .client
        .list_deferred_tickets(pb::ListDeferredTicketsRequest {
            account_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tickets;
    assert_eq!(tickets.len(), 1);
    assert_eq!(
        tickets[0].pending_count, 2,
        "PENDING and DISPATCHING both count"
    );
    assert_eq!(ms(&tickets[0].next_send_at), T0);
    t.stop().await;
}

// The SQLite engine's dispatcher claims (jobs leave without the writer): SQLite only.
#[tokio::test]
async fn listings_and_cancel_tell_a_leased_item_from_a_pending_one() {
    let mut t = TestServer::start().await;
    let due = t.schedule(email_reply("acme", "T1", T0)).await;
    let later = t.schedule(email_reply("acme", "T2", T0 + 3_600_000)).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let job = c.next_job().await;
    assert_eq!(job_item(&job), due.item_id);
    wait_state(&t.client, "acme", &due.item_id, pb::State::Dispatching).await;
    let list = |state: pb::State| {
        let mut client = t.client.clone();
        async move {
            client
                .list_scheduled(pb::ListScheduledRequest {
                    account_id: "acme".into(),
                    state: state as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|i| (i.item_id, i.state, i.attempts))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(pb::State::Pending).await,
        vec![(later.item_id.clone(), pb::State::Pending as i32, 0)]
    );
    assert_eq!(
        list(pb::State::Dispatching).await,
        vec![(due.item_id.clone(), pb::State::Dispatching as i32, 1)]
    );
    let err = t
        .client
        .clone()
        .cancel(item_ref("acme", &due.item_id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    c.ack(&job, "").await;
    let sent = wait_state(&t.client, "acme", &due.item_id, pb::State::Sent).await;
    assert_eq!(sent.attempts, 1, "the attempt that ended is counted once");
    assert!(list(pb::State::Dispatching).await.is_empty());
    t.stop().await;
}

/// A lease need not be durable before its job leaves: the job goes out as soon as the
/// lease is written (in the open group transaction), and a cancel that comes after it
/// already finds the item DISPATCHING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_leaves_before_its_lease_is_durable_and_a_cancel_after_it_sees_it_dispatching() {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 1_000)).await;
    t.settle().await;
    let hold = t.running().engine().store().hold_durability();
    t.advance(Duration::from_secs(1));
    // No fsync happens while held, yet the job arrives.
    let job = c.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    let mut client = t.client.clone();
    let id = item.item_id.clone();
    let cancel = tokio::spawn(async move { client.cancel(item_ref("acme", &id)).await });
    drop(hold);
    let r = cancel.await.unwrap();
    assert_status(r, tonic::Code::FailedPrecondition, "");
    c.ack(&job, "ok").await;
    let sent = wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    assert_eq!(sent.attempts, 1);
    t.stop().await;
}

/// A due item's job leaves while the store's writer is busy: the lease is decided from
/// the item's row and recorded by the writer afterwards, before any later write reads
/// the item (so a cancel then finds it DISPATCHING).
// The SQLite engine's dispatcher claims (jobs leave without the writer): SQLite only.
#[tokio::test]
async fn a_due_item_goes_out_while_the_writer_is_busy_and_its_lease_is_recorded_after() {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    // A first job: the dispatcher knows the connector.
    t.schedule(email_reply("acme", "T0", T0)).await;
    let first = c.next_job().await;
    c.ack(&first, "<smtp-0@example.com>").await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 60_000)).await;
    t.settle().await;
    let held = hold_writer(&t).await;
    t.advance(Duration::from_secs(60));
    let job = c
        .job_within(Duration::from_secs(10))
        .await
        .expect("the job left while the writer was busy");
    assert_eq!((job_item(&job), job.attempt), (item.item_id.clone(), 1));
    held.release().await;
    let now = t.get_acme(&item.item_id).await;
    assert_eq!(
        (now.state, now.attempts),
        (pb::State::Dispatching as i32, 1)
    );
    assert_status(
        t.client.cancel(item_ref("acme", &item.item_id)).await,
        tonic::Code::FailedPrecondition,
        "",
    );
    c.ack(&job, "<smtp-1@example.com>").await;
    wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    t.stop().await;
}

/// A fast connector cannot run ahead of the store: while the writer cannot record
/// answers, no new job goes out once 4096 answers wait (jobs leave without the writer,
/// and credit comes back with each answer). Once the writer records them, the rest go.
// The SQLite engine's dispatcher claims (jobs leave without the writer): SQLite only.
#[tokio::test]
async fn jobs_stop_while_answers_wait_for_the_writer_and_go_on_after() {
    const ITEMS: usize = 6000;
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 1000).await;
    // A first job: the dispatcher knows the connector.
    t.schedule(chat_reply("acme", "first", T0)).await;
    let first = c.next_job().await;
    c.ack(&first, "ok").await;
    for b in 0..ITEMS / 1000 {
        let entries = (0..1000)
            .map(|i| batch_entry(chat_reply("acme", &format!("T{b}-{i}"), T0 + 1000)))
            .collect();
        t.client
            .schedule_batch(pb::ScheduleBatchRequest { entries })
            .await
            .unwrap();
    }
    t.settle().await;
    let held = hold_writer(&t).await;
    let dispatched = || t.running().engine().metrics().dispatches.get();
    let before = dispatched();
    t.advance(Duration::from_secs(1));
    // Take and answer jobs until the dispatcher says it holds new jobs back for the
    // writer and every job it handed out has arrived (the writer is held, so nothing
    // can lift the hold): then no further job can come.
    let mut seen = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c.job_within(Duration::from_millis(5)).await {
            Some(job) => {
                seen.insert(job_item(&job));
                c.ack(&job, "ok").await;
            }
            None => {
                let stopped = t
                    .running()
                    .dispatch_stats()
                    .held_by_answers
                    .load(std::sync::atomic::Ordering::SeqCst);
                if stopped && dispatched() - before == seen.len() as u64 {
                    break;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs never stopped: {} went out while the writer was held",
            seen.len()
        );
    }
    // At the last plan fewer than 4096 answers waited, and at most 1000 jobs (the
    // connector's credit) were out.
    assert!(
        (4096..4096 + 1000).contains(&seen.len()),
        "{} jobs went out while the writer was held",
        seen.len()
    );
    held.release().await;
    while seen.len() < ITEMS {
        let job = c.next_job().await;
        seen.insert(job_item(&job));
        c.ack(&job, "ok").await;
    }
    t.settle().await;
    t.stop().await;
}
