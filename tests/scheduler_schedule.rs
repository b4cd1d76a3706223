//! ScheduleMessage, ScheduleTicket and ScheduleBatch over real gRPC: the items they
//! create, request_id idempotency, and the batch's all-or-nothing commit.
mod common;
mod scheduler_helpers;

use std::time::Duration;

use common::*;
use scheduler_helpers::*;
use sendlater::pb;
use tonic::Code;

fn full_email() -> pb::EmailContent {
    pb::EmailContent {
        from: "Support <support@acme.example>".into(),
        to: vec!["client@example.com".into(), "boss@example.com".into()],
        cc: vec!["cc@example.com".into()],
        bcc: vec!["audit@acme.example".into()],
        subject: "Re: invoice 42".into(),
        text_body: "Please find the invoice attached.".into(),
        html_body: "<p>Please find the invoice attached.</p>".into(),
        in_reply_to: "<msg-1@example.com>".into(),
        attachments: vec![pb::Attachment {
            filename: "invoice.pdf".into(),
            content_type: "application/pdf".into(),
            url: "https://files.acme.example/invoice.pdf".into(),
            size_bytes: 12_345,
        }],
    }
}

#[tokio::test]
async fn schedule_message_creates_a_pending_reply_with_every_requested_field() {
    let mut t = TestServer::start().await;
    t.advance(Duration::from_secs(5));
    let req = pb::ScheduleRequest {
        account_id: "acme".into(),
        ticket_id: "T-100".into(),
        channel: pb::Channel::Email as i32,
        author_id: "agent-7".into(),
        content: Some(pb::schedule_request::Content::Email(full_email())),
        send_at: Some(ts(T0 + 2 * HOUR)),
        on_activity: pb::OnActivity::Keep as i32,
        request_id: "req-1".into(),
        ..Default::default()
    };
    let item = schedule(&mut t, req).await;
    assert!(!item.item_id.is_empty());
    assert_eq!(item.account_id, "acme");
    assert_eq!(item.ticket_id, "T-100");
    assert_eq!(item.kind, pb::Kind::Reply as i32);
    assert_eq!(item.channel, pb::Channel::Email as i32);
    assert_eq!(item.author_id, "agent-7");
    assert_eq!(
        item.content,
        Some(pb::scheduled_item::Content::Email(full_email()))
    );
    assert_eq!(ms(&item.send_at), T0 + 2 * HOUR);
    assert_eq!(
        ms(&item.created_at),
        T0 + 5_000,
        "created_at is the clock's now"
    );
    assert_eq!(item.state, pb::State::Pending as i32);
    assert_eq!(item.on_activity, pb::OnActivity::Keep as i32);
    assert_eq!(item.request_id, "req-1");
    assert_eq!(item.attempts, 0);
    assert_eq!(item.last_error, "");
    assert_eq!(item.note_at, None);
    assert_eq!(item.converted_by, None);
    assert_eq!(item.sent_at, None);
    assert_eq!(item.next_attempt_at, None);
    assert_eq!(item.provider_message_id, "");
    assert_eq!(get(&mut t, "acme", &item.item_id).await, item);
    t.stop().await;
}

#[tokio::test]
async fn schedule_ticket_creates_a_pending_new_ticket_with_the_default_policy() {
    let mut t = TestServer::start().await;
    let item = schedule_ticket(&mut t, chat_reply("acme", "NEW-1", T0 + HOUR)).await;
    assert_eq!(item.kind, pb::Kind::NewTicket as i32);
    assert_eq!(item.channel, pb::Channel::Chat as i32);
    assert_eq!(item.state, pb::State::Pending as i32);
    assert_eq!(item.ticket_id, "NEW-1");
    assert_eq!(chat_text(&item), "Hi! Answer inside.");
    assert_eq!(
        item.on_activity,
        pb::OnActivity::ConvertToNote as i32,
        "ON_ACTIVITY_UNSPECIFIED means CONVERT_TO_NOTE"
    );
    assert_eq!(ms(&item.send_at), T0 + HOUR);
    assert_eq!(ms(&item.created_at), T0);
    let listed = list_all(&mut t, list_req("acme")).await;
    assert_eq!(listed, vec![item]);
    t.stop().await;
}

#[tokio::test]
async fn every_scheduled_item_gets_a_distinct_id() {
    let mut t = TestServer::start().await;
    let a = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let b = schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let c = schedule_ticket(&mut t, email_reply("other", "T1", T0 + HOUR)).await;
    assert_ne!(a.item_id, b.item_id);
    assert_ne!(a.item_id, c.item_id);
    assert_ne!(b.item_id, c.item_id);
    t.stop().await;
}

#[tokio::test]
async fn repeating_a_request_id_with_the_same_content_returns_the_same_item() {
    let mut t = TestServer::start().await;
    let req = with_request_id(email_reply("acme", "T1", T0 + HOUR), "rid-1");
    let first = schedule(&mut t, req.clone()).await;
    t.advance(Duration::from_secs(30));
    let again = schedule(&mut t, req).await;
    assert_eq!(again.item_id, first.item_id);
    assert_eq!(again, first, "the existing item is returned unchanged");
    assert_eq!(pending_ids(&mut t, "acme").await, vec![first.item_id]);
    t.stop().await;
}

#[tokio::test]
async fn repeating_a_request_id_with_another_send_at_is_already_exists() {
    let mut t = TestServer::start().await;
    let first = schedule(
        &mut t,
        with_request_id(email_reply("acme", "T1", T0 + HOUR), "rid-1"),
    )
    .await;
    let r = t
        .client
        .schedule_message(with_request_id(
            email_reply("acme", "T1", T0 + HOUR + 1),
            "rid-1",
        ))
        .await;
    assert_status(r, Code::AlreadyExists, "");
    let mut other_body = with_request_id(email_reply("acme", "T1", T0 + HOUR), "rid-1");
    email_of(&mut other_body).text_body = "A different answer.".into();
    let r = t.client.schedule_message(other_body).await;
    assert_status(r, Code::AlreadyExists, "");
    assert_eq!(pending_ids(&mut t, "acme").await, vec![first.item_id]);
    t.stop().await;
}

#[tokio::test]
async fn the_same_request_id_in_another_account_is_independent() {
    let mut t = TestServer::start().await;
    let a = schedule(
        &mut t,
        with_request_id(email_reply("acme", "T1", T0 + HOUR), "rid-1"),
    )
    .await;
    // Other content on purpose: it would be ALREADY_EXISTS in the same account.
    let b = schedule(
        &mut t,
        with_request_id(email_reply("globex", "T9", T0 + 2 * HOUR), "rid-1"),
    )
    .await;
    assert_ne!(a.item_id, b.item_id);
    assert_eq!(b.account_id, "globex");
    assert_eq!(ms(&b.send_at), T0 + 2 * HOUR);
    assert_eq!(pending_ids(&mut t, "acme").await, vec![a.item_id]);
    assert_eq!(pending_ids(&mut t, "globex").await, vec![b.item_id]);
    t.stop().await;
}

#[tokio::test]
async fn schedule_message_schedule_ticket_and_batch_entries_share_one_request_id_namespace() {
    let mut t = TestServer::start().await;
    let msg = with_request_id(email_reply("acme", "T1", T0 + HOUR), "shared");
    let first = schedule(&mut t, msg.clone()).await;

    // ScheduleTicket with that key and other content: the key is taken.
    let r = t
        .client
        .schedule_ticket(with_request_id(
            chat_reply("acme", "NEW-1", T0 + HOUR),
            "shared",
        ))
        .await;
    assert_status(r, Code::AlreadyExists, "");

    // A batch entry repeating the ScheduleMessage request is that same item.
    let items = batch(&mut t, vec![reply_entry(msg)]).await;
    assert_eq!(ids(&items), vec![first.item_id.clone()]);

    // A key first used by a batch entry is taken for ScheduleTicket too.
    let tk = with_request_id(chat_reply("acme", "NEW-2", T0 + HOUR), "from-batch");
    let created = batch(&mut t, vec![entry(tk.clone(), pb::Kind::NewTicket)]).await;
    let again = schedule_ticket(&mut t, tk).await;
    assert_eq!(again.item_id, created[0].item_id);
    let r = t
        .client
        .schedule_message(with_request_id(
            email_reply("acme", "T1", T0 + HOUR),
            "from-batch",
        ))
        .await;
    assert_status(r, Code::AlreadyExists, "");

    let mut want = vec![first.item_id, created[0].item_id.clone()];
    want.sort();
    let mut got = pending_ids(&mut t, "acme").await;
    got.sort();
    assert_eq!(got, want);
    t.stop().await;
}

#[tokio::test]
async fn a_valid_batch_returns_its_items_in_entry_order() {
    let mut t = TestServer::start().await;
    let entries = vec![
        reply_entry(email_reply("acme", "T3", T0 + 3 * HOUR)),
        entry(chat_reply("acme", "NEW-1", T0 + HOUR), pb::Kind::NewTicket),
        reply_entry(chat_reply("acme", "T1", T0 + 5 * HOUR)),
        entry(
            email_reply("acme", "T2", T0 + 2 * HOUR),
            pb::Kind::Unspecified,
        ),
    ];
    let items = batch(&mut t, entries).await;
    let tickets: Vec<&str> = items.iter().map(|i| i.ticket_id.as_str()).collect();
    assert_eq!(tickets, vec!["T3", "NEW-1", "T1", "T2"]);
    let kinds: Vec<i32> = items.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        vec![
            pb::Kind::Reply as i32,
            pb::Kind::NewTicket as i32,
            pb::Kind::Reply as i32,
            pb::Kind::Reply as i32, // KIND_UNSPECIFIED means REPLY
        ]
    );
    let sends: Vec<i64> = items.iter().map(|i| ms(&i.send_at)).collect();
    assert_eq!(
        sends,
        vec![T0 + 3 * HOUR, T0 + HOUR, T0 + 5 * HOUR, T0 + 2 * HOUR]
    );
    assert!(items.iter().all(|i| i.state == pb::State::Pending as i32));
    for i in &items {
        assert_eq!(&get(&mut t, "acme", &i.item_id).await, i);
    }
    assert_eq!(
        id_set(&list_all(&mut t, list_req("acme")).await),
        id_set(&items)
    );
    t.stop().await;
}

#[tokio::test]
async fn a_batch_with_one_invalid_entry_names_it_and_commits_nothing() {
    let mut t = TestServer::start().await;
    let mut bad = email_reply("acme", "T3", T0 + HOUR);
    email_of(&mut bad).to.clear();
    let entries = vec![
        reply_entry(email_reply("acme", "T1", T0 + HOUR)),
        reply_entry(chat_reply("acme", "T2", T0 + HOUR)),
        reply_entry(bad),
        reply_entry(email_reply("acme", "T4", T0 + HOUR)),
    ];
    let r = t
        .client
        .schedule_batch(pb::ScheduleBatchRequest { entries })
        .await;
    assert_status(r, Code::InvalidArgument, "entries[2].email.to: ");
    assert!(pending_ids(&mut t, "acme").await.is_empty());
    let d = tickets(&mut t, "acme", pb::Order::SendAtAsc, 0, "").await;
    assert!(d.tickets.is_empty(), "{d:?}");
    t.stop().await;
}

#[tokio::test]
async fn a_batch_whose_entry_reuses_a_request_id_commits_none_of_its_entries() {
    let mut t = TestServer::start().await;
    let taken = schedule(
        &mut t,
        with_request_id(email_reply("acme", "T0", T0 + HOUR), "taken"),
    )
    .await;
    let entries = vec![
        reply_entry(email_reply("acme", "T1", T0 + HOUR)),
        reply_entry(with_request_id(
            email_reply("acme", "T2", T0 + HOUR),
            "fresh",
        )),
        reply_entry(with_request_id(
            email_reply("acme", "T3", T0 + 2 * HOUR),
            "taken",
        )),
    ];
    let r = t
        .client
        .schedule_batch(pb::ScheduleBatchRequest { entries })
        .await;
    assert_status(r, Code::AlreadyExists, "");
    assert_eq!(pending_ids(&mut t, "acme").await, vec![taken.item_id]);
    // "fresh" was rolled back with the rest: it is free for other content.
    let fresh = schedule(
        &mut t,
        with_request_id(email_reply("acme", "T9", T0 + 3 * HOUR), "fresh"),
    )
    .await;
    assert_eq!(fresh.ticket_id, "T9");
    t.stop().await;
}

#[tokio::test]
async fn a_batch_of_more_than_1000_entries_is_invalid_argument_on_entries() {
    let mut t = TestServer::start().await;
    let entries: Vec<_> = (0..1001)
        .map(|_| reply_entry(email_reply("acme", "T1", T0 + HOUR)))
        .collect();
    let r = t
        .client
        .schedule_batch(pb::ScheduleBatchRequest { entries })
        .await;
    assert_status(r, Code::InvalidArgument, "entries: ");
    assert!(pending_ids(&mut t, "acme").await.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn a_batch_of_exactly_1000_entries_is_accepted() {
    let mut t = TestServer::start().await;
    let items = many_replies(&mut t, "acme", "T1", 1000, T0 + HOUR, 1000).await;
    assert_eq!(items.len(), 1000);
    assert_eq!(id_set(&items).len(), 1000);
    t.stop().await;
}

#[tokio::test]
async fn batch_entries_of_different_accounts_each_land_in_their_account() {
    let mut t = TestServer::start().await;
    let entries = vec![
        reply_entry(email_reply("acme", "T1", T0 + HOUR)),
        reply_entry(email_reply("globex", "T1", T0 + HOUR)),
        reply_entry(chat_reply("acme", "T2", T0 + 2 * HOUR)),
    ];
    let items = batch(&mut t, entries).await;
    let accounts: Vec<&str> = items.iter().map(|i| i.account_id.as_str()).collect();
    assert_eq!(accounts, vec!["acme", "globex", "acme"]);
    assert_eq!(
        pending_ids(&mut t, "acme").await,
        vec![items[0].item_id.clone(), items[2].item_id.clone()]
    );
    assert_eq!(
        pending_ids(&mut t, "globex").await,
        vec![items[1].item_id.clone()]
    );
    let r = t
        .client
        .get_item(item_ref("globex", &items[0].item_id))
        .await;
    assert_status(r, Code::NotFound, "");
    t.stop().await;
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_after_send_at_has_passed_returns_the_existing_item() {
    let mut t = TestServer::start().await;
    // "Send in 1 s", and the client retries 10 s later (e.g. after a timeout).
    let req = with_request_id(email_reply("acme", "T1", T0 + 1000), "retry-1");
    let first = schedule(&mut t, req.clone()).await;
    t.advance(Duration::from_secs(10));
    let r = t.client.schedule_message(req).await;
    let again = r.expect("the retry returns the existing item").into_inner();
    assert_eq!(again.item_id, first.item_id);
    t.stop().await;
}

#[tokio::test]
async fn two_entries_of_one_batch_with_the_same_request_id_and_content_are_one_item() {
    let mut t = TestServer::start().await;
    let req = with_request_id(chat_reply("acme", "T1", T0 + HOUR), "dup");
    let items = batch(&mut t, vec![reply_entry(req.clone()), reply_entry(req)]).await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].item_id, items[1].item_id);
    assert_eq!(
        pending_ids(&mut t, "acme").await,
        vec![items[0].item_id.clone()]
    );
    t.stop().await;
}

#[tokio::test]
async fn two_entries_of_one_batch_with_the_same_request_id_and_other_content_fail_together() {
    let mut t = TestServer::start().await;
    let a = with_request_id(chat_reply("acme", "T1", T0 + HOUR), "dup");
    let b = with_request_id(chat_reply("acme", "T1", T0 + 2 * HOUR), "dup");
    let r = t
        .client
        .schedule_batch(pb::ScheduleBatchRequest {
            entries: vec![reply_entry(a), reply_entry(b)],
        })
        .await;
    assert_status(r, Code::AlreadyExists, "");
    assert!(pending_ids(&mut t, "acme").await.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn a_failing_batch_rolls_back_alone_while_concurrent_schedules_commit() {
    let mut t = TestServer::start().await;
    schedule(
        &mut t,
        with_request_id(email_reply("acme", "T0", T0 + HOUR), "taken"),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..40i64 {
        let mut client = t.client.clone();
        tasks.push(tokio::spawn(async move {
            if i % 4 == 0 {
                // A batch whose last entry fails in the store (not in validation).
                let entries = vec![
                    reply_entry(email_reply("acme", "BATCH", T0 + HOUR + i)),
                    reply_entry(email_reply("acme", "BATCH", T0 + HOUR + i)),
                    reply_entry(with_request_id(
                        email_reply("acme", "BATCH", T0 + 2 * HOUR),
                        "taken",
                    )),
                ];
                let r = client
                    .schedule_batch(pb::ScheduleBatchRequest { entries })
                    .await;
                assert_eq!(r.expect_err("batch must fail").code(), Code::AlreadyExists);
                None
            } else {
                let r = client
                    .schedule_message(email_reply("acme", "SINGLE", T0 + HOUR + i))
                    .await;
                Some(r.expect("single schedule").into_inner().item_id)
            }
        }));
    }
    let mut committed = vec![];
    for task in tasks {
        if let Some(id) = task.await.expect("task") {
            committed.push(id);
        }
    }
    assert_eq!(committed.len(), 30);
    let listed = list_all(&mut t, list_req("acme")).await;
    assert!(
        listed.iter().all(|i| i.ticket_id != "BATCH"),
        "a failed batch left rows"
    );
    let singles: std::collections::HashSet<String> = listed
        .iter()
        .filter(|i| i.ticket_id == "SINGLE")
        .map(|i| i.item_id.clone())
        .collect();
    assert_eq!(singles, committed.into_iter().collect());
    t.stop().await;
}

#[tokio::test]
async fn a_retry_of_the_original_request_after_a_reschedule_returns_the_rescheduled_item() {
    let mut t = TestServer::start().await;
    let req = with_request_id(chat_reply("acme", "T1", T0 + HOUR), "rid-r");
    let first = schedule(&mut t, req.clone()).await;
    let moved = t
        .client
        .reschedule(pb::RescheduleRequest {
            account_id: "acme".into(),
            item_id: first.item_id.clone(),
            send_at: Some(ts(T0 + 2 * HOUR)),
            ..Default::default()
        })
        .await
        .expect("reschedule")
        .into_inner();
    let again = schedule(&mut t, req).await;
    assert_eq!(again, moved, "the existing item, as it is now");
    assert_eq!(pending_ids(&mut t, "acme").await, vec![first.item_id]);
    t.stop().await;
}
