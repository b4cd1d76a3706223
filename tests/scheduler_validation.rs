//! Bad input to the schedule RPCs: the gRPC code, the field named at the start of the
//! message (API.md "Errors and limits"), nothing stored; and the per-account quota.
mod common;
mod scheduler_helpers;

use common::*;
use scheduler_helpers::*;
use sendlater::pb;
use tonic::Code;

const KIB: usize = 1024;
const FIVE_YEARS_MS: i64 = 1826 * 86_400_000;

/// ScheduleMessage must fail with `code` and a message starting with `field`, and
/// nothing may be stored.
async fn refused(t: &mut TestServer, req: pb::ScheduleRequest, code: Code, field: &str) {
    let account = req.account_id.clone();
    let r = t.client.schedule_message(req).await;
    assert_status(r, code, field);
    if !account.is_empty() {
        assert!(pending_ids(t, &account).await.is_empty(), "nothing stored");
    }
}

#[tokio::test]
async fn a_missing_account_id_is_invalid_argument_naming_account_id() {
    let mut t = TestServer::start().await;
    refused(
        &mut t,
        email_reply("", "T1", T0 + HOUR),
        Code::InvalidArgument,
        "account_id: ",
    )
    .await;
    t.stop().await;
}

#[tokio::test]
async fn a_missing_ticket_id_is_invalid_argument_naming_ticket_id() {
    let mut t = TestServer::start().await;
    refused(
        &mut t,
        email_reply("acme", "", T0 + HOUR),
        Code::InvalidArgument,
        "ticket_id: ",
    )
    .await;
    let r = t
        .client
        .schedule_ticket(chat_reply("acme", "", T0 + HOUR))
        .await;
    assert_status(r, Code::InvalidArgument, "ticket_id: ");
    t.stop().await;
}

#[tokio::test]
async fn an_email_without_recipient_is_invalid_argument_naming_email_to() {
    let mut t = TestServer::start().await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).to.clear();
    email_of(&mut req).cc = vec!["cc@example.com".into()];
    refused(&mut t, req, Code::InvalidArgument, "email.to: ").await;
    t.stop().await;
}

#[tokio::test]
async fn a_malformed_to_address_is_invalid_argument_naming_its_index() {
    let mut t = TestServer::start().await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).to = vec!["not-an-address".into()];
    refused(&mut t, req, Code::InvalidArgument, "email.to[0]: ").await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).to = vec!["ok@example.com".into(), "two@@example.com".into()];
    refused(&mut t, req, Code::InvalidArgument, "email.to[1]: ").await;
    t.stop().await;
}

#[tokio::test]
async fn malformed_cc_and_bcc_addresses_are_invalid_argument_naming_them() {
    let mut t = TestServer::start().await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).cc = vec!["ok@example.com".into(), "bad address".into()];
    refused(&mut t, req, Code::InvalidArgument, "email.cc[1]: ").await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).bcc = vec!["@example.com".into()];
    refused(&mut t, req, Code::InvalidArgument, "email.bcc[0]: ").await;
    t.stop().await;
}

#[tokio::test]
async fn an_email_with_both_bodies_empty_is_invalid_argument_naming_text_body() {
    let mut t = TestServer::start().await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).text_body.clear();
    email_of(&mut req).html_body.clear();
    refused(&mut t, req, Code::InvalidArgument, "email.text_body: ").await;
    t.stop().await;
}

#[tokio::test]
async fn an_email_with_only_an_html_body_and_no_from_is_accepted() {
    let mut t = TestServer::start().await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).text_body.clear();
    email_of(&mut req).html_body = "<p>Hello</p>".into();
    email_of(&mut req).from.clear();
    let item = schedule(&mut t, req).await;
    assert_eq!(item.state, pb::State::Pending as i32);
    t.stop().await;
}

#[tokio::test]
async fn a_chat_with_empty_text_is_invalid_argument_naming_chat_text() {
    let mut t = TestServer::start().await;
    let mut req = chat_reply("acme", "T1", T0 + HOUR);
    chat_of(&mut req).text.clear();
    refused(&mut t, req, Code::InvalidArgument, "chat.text: ").await;
    t.stop().await;
}

#[tokio::test]
async fn a_missing_send_at_is_invalid_argument_naming_send_at() {
    let mut t = TestServer::start().await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    req.send_at = None;
    refused(&mut t, req, Code::InvalidArgument, "send_at: ").await;
    t.stop().await;
}

#[tokio::test]
async fn send_at_more_than_one_second_in_the_past_is_invalid_argument() {
    let mut t = TestServer::start().await;
    refused(
        &mut t,
        email_reply("acme", "T1", T0 - 1001),
        Code::InvalidArgument,
        "send_at: ",
    )
    .await;
    refused(
        &mut t,
        email_reply("acme", "T1", T0 - HOUR),
        Code::InvalidArgument,
        "send_at: ",
    )
    .await;
    t.stop().await;
}

#[tokio::test]
async fn send_at_exactly_one_second_in_the_past_is_accepted() {
    let mut t = TestServer::start().await;
    let item = schedule(&mut t, email_reply("acme", "T1", T0 - 1000)).await;
    assert_eq!(ms(&item.send_at), T0 - 1000);
    assert_eq!(item.state, pb::State::Pending as i32);
    t.stop().await;
}

#[tokio::test]
async fn send_at_beyond_the_five_year_horizon_is_invalid_argument() {
    let mut t = TestServer::start().await;
    refused(
        &mut t,
        email_reply("acme", "T1", T0 + FIVE_YEARS_MS + 1),
        Code::InvalidArgument,
        "send_at: ",
    )
    .await;
    let at_horizon = schedule(&mut t, email_reply("acme", "T1", T0 + FIVE_YEARS_MS)).await;
    assert_eq!(ms(&at_horizon.send_at), T0 + FIVE_YEARS_MS);
    t.stop().await;
}

#[tokio::test]
async fn a_body_over_256_kib_is_invalid_argument_not_resource_exhausted() {
    let mut t = TestServer::start().await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).text_body = "x".repeat(256 * KIB + 1);
    refused(&mut t, req, Code::InvalidArgument, "email.text_body: ").await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).html_body = "y".repeat(256 * KIB + 1);
    refused(&mut t, req, Code::InvalidArgument, "email.html_body: ").await;
    let mut req = chat_reply("acme", "T1", T0 + HOUR);
    chat_of(&mut req).text = "z".repeat(256 * KIB + 1);
    refused(&mut t, req, Code::InvalidArgument, "chat.text: ").await;
    t.stop().await;
}

#[tokio::test]
async fn a_body_of_exactly_256_kib_is_accepted() {
    let mut t = TestServer::start().await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).text_body = "x".repeat(256 * KIB);
    email_of(&mut req).html_body = "y".repeat(256 * KIB);
    let item = schedule(&mut t, req).await;
    let got = get(&mut t, "acme", &item.item_id).await;
    match got.content {
        Some(pb::scheduled_item::Content::Email(e)) => {
            assert_eq!(e.text_body.len(), 256 * KIB);
            assert_eq!(e.html_body.len(), 256 * KIB);
        }
        other => panic!("not an email: {other:?}"),
    }
    t.stop().await;
}

#[tokio::test]
async fn a_one_mib_body_is_still_invalid_argument_naming_the_field() {
    let mut t = TestServer::start().await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).html_body = "h".repeat(1024 * KIB);
    refused(&mut t, req, Code::InvalidArgument, "email.html_body: ").await;
    let mut req = chat_reply("acme", "T1", T0 + HOUR);
    chat_of(&mut req).text = "c".repeat(1024 * KIB + 17);
    refused(&mut t, req, Code::InvalidArgument, "chat.text: ").await;
    t.stop().await;
}

#[tokio::test]
async fn more_than_100_recipients_in_to_cc_and_bcc_together_is_invalid_argument() {
    let mut t = TestServer::start().await;
    let addrs = |p: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{p}{i}@example.com")).collect()
    };
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).to = addrs("to", 50);
    email_of(&mut req).cc = addrs("cc", 30);
    email_of(&mut req).bcc = addrs("bcc", 21);
    refused(&mut t, req.clone(), Code::InvalidArgument, "email.").await;
    email_of(&mut req).bcc.pop();
    let ok = schedule(&mut t, req).await;
    assert_eq!(
        ok.state,
        pb::State::Pending as i32,
        "exactly 100 is accepted"
    );
    t.stop().await;
}

#[tokio::test]
async fn the_recipient_limit_follows_the_configuration() {
    let mut t = TestServer::start_with(|cfg| cfg.limits.max_recipients = 3).await;
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).to = vec!["a@example.com".into(), "b@example.com".into()];
    email_of(&mut req).cc = vec!["c@example.com".into()];
    email_of(&mut req).bcc = vec!["d@example.com".into()];
    refused(&mut t, req.clone(), Code::InvalidArgument, "email.").await;
    email_of(&mut req).bcc.clear();
    schedule(&mut t, req).await;
    t.stop().await;
}

#[tokio::test]
async fn schedule_ticket_and_batch_entries_are_validated_like_schedule_message() {
    let mut t = TestServer::start().await;
    let mut req = email_reply("acme", "NEW-1", T0 + HOUR);
    email_of(&mut req).to = vec!["nope".into()];
    let r = t.client.schedule_ticket(req.clone()).await;
    assert_status(r, Code::InvalidArgument, "email.to[0]: ");
    let r = t
        .client
        .schedule_batch(pb::ScheduleBatchRequest {
            entries: vec![
                reply_entry(email_reply("acme", "T1", T0 + HOUR)),
                entry(req, pb::Kind::NewTicket),
            ],
        })
        .await;
    assert_status(r, Code::InvalidArgument, "entries[1].email.to[0]: ");
    let r = t
        .client
        .schedule_batch(pb::ScheduleBatchRequest {
            entries: vec![reply_entry(email_reply("acme", "T1", T0 - 5000))],
        })
        .await;
    assert_status(r, Code::InvalidArgument, "entries[0].send_at: ");
    assert!(pending_ids(&mut t, "acme").await.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn over_the_pending_quota_is_resource_exhausted_until_an_item_is_cancelled() {
    let mut t = TestServer::start_with(|cfg| cfg.limits.max_pending_per_account = 3).await;
    let mut items = Vec::new();
    for i in 0..3 {
        items.push(schedule(&mut t, email_reply("acme", "T1", T0 + HOUR + i)).await);
    }
    let r = t
        .client
        .schedule_message(email_reply("acme", "T1", T0 + 2 * HOUR))
        .await;
    assert_status(r, Code::ResourceExhausted, "");
    let r = t
        .client
        .schedule_ticket(chat_reply("acme", "NEW", T0 + 2 * HOUR))
        .await;
    assert_status(r, Code::ResourceExhausted, "");
    assert_eq!(pending_ids(&mut t, "acme").await.len(), 3);

    // Another account has its own quota.
    schedule(&mut t, email_reply("globex", "T1", T0 + HOUR)).await;

    cancel(&mut t, "acme", &items[1].item_id).await;
    let again = schedule(&mut t, email_reply("acme", "T1", T0 + 2 * HOUR)).await;
    assert_eq!(again.state, pb::State::Pending as i32);
    let r = t
        .client
        .schedule_message(email_reply("acme", "T1", T0 + 3 * HOUR))
        .await;
    assert_status(r, Code::ResourceExhausted, "");
    t.stop().await;
}

#[tokio::test]
async fn a_repeated_request_id_at_the_quota_returns_the_existing_item() {
    let mut t = TestServer::start_with(|cfg| cfg.limits.max_pending_per_account = 1).await;
    let req = with_request_id(email_reply("acme", "T1", T0 + HOUR), "rid");
    let first = schedule(&mut t, req.clone()).await;
    let again = schedule(&mut t, req).await;
    assert_eq!(again.item_id, first.item_id);
    t.stop().await;
}

#[tokio::test]
async fn a_batch_that_would_exceed_the_quota_commits_nothing_and_leaves_the_quota_intact() {
    let mut t = TestServer::start_with(|cfg| cfg.limits.max_pending_per_account = 3).await;
    schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    let entries = (0..3)
        .map(|i| reply_entry(email_reply("acme", "T2", T0 + HOUR + i)))
        .collect();
    let r = t
        .client
        .schedule_batch(pb::ScheduleBatchRequest { entries })
        .await;
    assert_status(r, Code::ResourceExhausted, "");
    assert_eq!(pending_ids(&mut t, "acme").await.len(), 1);
    // The two rolled-back entries do not count: two more fit.
    let entries = (0..2)
        .map(|i| reply_entry(email_reply("acme", "T3", T0 + HOUR + i)))
        .collect();
    assert_eq!(batch(&mut t, entries).await.len(), 2);
    t.stop().await;
}

#[tokio::test]
async fn converting_a_reply_to_a_note_frees_its_quota_slot() {
    let mut t = TestServer::start_with(|cfg| cfg.limits.max_pending_per_account = 2).await;
    schedule(&mut t, email_reply("acme", "T1", T0 + HOUR)).await;
    schedule(&mut t, email_reply("acme", "T2", T0 + HOUR)).await;
    let r = t
        .client
        .schedule_message(email_reply("acme", "T3", T0 + HOUR))
        .await;
    assert_status(r, Code::ResourceExhausted, "");
    t.advance(std::time::Duration::from_secs(1));
    let affected = record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "m-1", T0 + 500),
    )
    .await;
    assert_eq!(affected.len(), 1);
    schedule(&mut t, email_reply("acme", "T3", T0 + HOUR)).await;
    t.stop().await;
}

fn attachment(url: String) -> pb::Attachment {
    pb::Attachment {
        filename: "a.pdf".into(),
        content_type: "application/pdf".into(),
        url,
        size_bytes: 1,
    }
}

#[tokio::test]
async fn more_than_20_attachments_is_invalid_argument_naming_the_attachments() {
    let mut t = TestServer::start().await;
    let many = || (0..21).map(|i| attachment(format!("https://f.example.com/{i}")));
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).attachments = many().collect();
    refused(&mut t, req, Code::InvalidArgument, "email.attachments: ").await;
    let mut req = chat_reply("acme", "T1", T0 + HOUR);
    chat_of(&mut req).attachments = many().collect();
    refused(&mut t, req, Code::InvalidArgument, "chat.attachments: ").await;
    // Twenty are fine.
    let mut req = chat_reply("acme", "T1", T0 + HOUR);
    chat_of(&mut req).attachments = many().take(20).collect();
    schedule(&mut t, req).await;
    t.stop().await;
}

#[tokio::test]
async fn an_attachment_url_over_2048_bytes_or_a_long_filename_is_invalid_argument_naming_it() {
    let mut t = TestServer::start().await;
    let url = |len: usize| format!("https://f.example.com/{}", "u".repeat(len - 22));
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).attachments = vec![attachment(url(100)), attachment(url(2049))];
    refused(
        &mut t,
        req,
        Code::InvalidArgument,
        "email.attachments[1].url: ",
    )
    .await;
    let mut req = chat_reply("acme", "T1", T0 + HOUR);
    let mut a = attachment(url(100));
    a.filename = "f".repeat(256);
    chat_of(&mut req).attachments = vec![a];
    refused(
        &mut t,
        req,
        Code::InvalidArgument,
        "chat.attachments[0].filename: ",
    )
    .await;
    let mut req = chat_reply("acme", "T1", T0 + HOUR);
    let mut a = attachment(url(100));
    a.content_type = "x".repeat(256);
    chat_of(&mut req).attachments = vec![a];
    refused(
        &mut t,
        req,
        Code::InvalidArgument,
        "chat.attachments[0].content_type: ",
    )
    .await;
    let mut req = chat_reply("acme", "T1", T0 + HOUR);
    chat_of(&mut req).attachments = vec![attachment(url(2048))];
    schedule(&mut t, req).await;
    t.stop().await;
}

#[tokio::test]
async fn the_whole_content_counts_toward_the_per_item_byte_limit() {
    let mut t = TestServer::start_with(|cfg| cfg.limits.max_item_bytes = 100 * KIB).await;
    // Each body is well under its own limit (256 KiB); together they are not.
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).text_body = "x".repeat(60 * KIB);
    email_of(&mut req).html_body = "y".repeat(60 * KIB);
    refused(&mut t, req, Code::InvalidArgument, "email: ").await;
    // Attachments, recipients and the subject count too.
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    email_of(&mut req).text_body = "x".repeat(70 * KIB);
    email_of(&mut req).subject = "s".repeat(900);
    email_of(&mut req).cc = (0..99)
        .map(|i| format!("{}{i}@example.com", "c".repeat(50)))
        .collect();
    email_of(&mut req).attachments = (0..20)
        .map(|i| attachment(format!("https://f.example.com/{i}/{}", "u".repeat(1500))))
        .collect();
    refused(&mut t, req, Code::InvalidArgument, "email: ").await;
    let mut req = chat_reply("acme", "T1", T0 + HOUR);
    chat_of(&mut req).text = "z".repeat(80 * KIB);
    chat_of(&mut req).attachments = (0..20)
        .map(|i| attachment(format!("https://f.example.com/{i}/{}", "u".repeat(1500))))
        .collect();
    refused(&mut t, req, Code::InvalidArgument, "chat: ").await;
    // Under the limit it goes through.
    let mut req = chat_reply("acme", "T1", T0 + HOUR);
    chat_of(&mut req).text = "z".repeat(90 * KIB);
    schedule(&mut t, req).await;
    t.stop().await;
}

#[tokio::test]
async fn a_batch_whose_response_would_not_fit_in_one_message_is_refused_and_stores_nothing() {
    // The smallest message limit (two maximal bodies, the whole-item limit, headroom):
    // a batch of 1000 entries of about 800 bytes each fits in the request, but its
    // response (each item echoed with its id, times and states) would not. On main the
    // items were committed and then the response could not be sent: the caller saw an
    // error while 1000 items were stored.
    let mut t = TestServer::start_with(|cfg| cfg.limits.max_message_bytes = 1).await;
    let entries: Vec<pb::BatchEntry> = (0..1000)
        .map(|i| {
            let mut r = chat_reply("acme", &format!("T{i}"), T0 + 3_600_000);
            if let Some(pb::schedule_request::Content::Chat(c)) = r.content.as_mut() {
                c.text = "x".repeat(790);
            }
            batch_entry(r)
        })
        .collect();
    let r = t
        .client
        .clone()
        .schedule_batch(pb::ScheduleBatchRequest { entries })
        .await
        .map(|r| r.into_inner().items.len());
    assert_status(r, tonic::Code::InvalidArgument, "entries:");
    let listed = t.pending_acme().await;
    assert!(
        listed.items.is_empty(),
        "{} items stored",
        listed.items.len()
    );
    t.stop().await;
}
