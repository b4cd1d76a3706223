//! The chat connector end to end: a real sendlater server, the connector library
//! running against it, and a real HTTP webhook on 127.0.0.1 that records what it gets.
mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::connector::{ConnectorTask, Webhook};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use sendlater::connector::signature;
use sendlater::connector::{run_chat, ChatConfig, RunnerConfig};
use sendlater::pb;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_test_secret";

/// One request the webhook received.
#[derive(Debug, Clone)]
struct Hit {
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing: {:?}", self.headers))
            .to_str()
            .expect("ascii header")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A webhook on 127.0.0.1:0: answers from a script of statuses (then 200 with an `id`)
/// and reports each request on a channel.
async fn webhook(script: &[u16]) -> Webhook<Hit> {
    webhook_gated(script, None).await
}

/// Like `webhook`, but with a gate: every answer waits, after its request was
/// reported, until the test adds a permit to `gate` (one per answer).
async fn webhook_gated(script: &[u16], gate: Option<Arc<tokio::sync::Semaphore>>) -> Webhook<Hit> {
    let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
    Webhook::start(
        move |req: Request<Incoming>, tx: mpsc::UnboundedSender<Hit>| {
            let script = Arc::clone(&script);
            let gate = gate.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.expect("body").to_bytes();
                let _ = tx.send(Hit {
                    headers: parts.headers,
                    body,
                });
                if let Some(gate) = &gate {
                    gate.acquire().await.expect("gate open").forget();
                }
                let code = script.lock().unwrap().pop_front().unwrap_or(200);
                let answer = if code == 200 {
                    r#"{"id":"chat-msg-1"}"#.to_owned()
                } else {
                    format!("scripted failure {code}")
                };
                Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .body(Full::new(Bytes::from(answer)))
                    .unwrap()
            }
        },
    )
    .await
}

/// The chat connector running as a task, stopped by `stop`.
fn start_connector(server: &str, webhook: &str) -> ConnectorTask {
    let mut runner = RunnerConfig::new(server);
    runner.connector_id = "chat-test".into();
    runner.max_in_flight = 4;
    let mut chat = ChatConfig::new(webhook);
    chat.secret = Some(SECRET.into());
    chat.timeout = Duration::from_secs(5);
    ConnectorTask::spawn(|shutdown| run_chat(runner, chat, shutdown))
}

async fn schedule_chat(t: &TestServer) -> pb::ScheduledItem {
    let mut req = chat_reply("acme", "T1", T0 + 60_000);
    if let Some(pb::schedule_request::Content::Chat(c)) = &mut req.content {
        c.attachments.push(pb::Attachment {
            filename: "invoice.pdf".into(),
            content_type: "application/pdf".into(),
            url: "https://files.example.com/invoice.pdf".into(),
            size_bytes: 2048,
        });
    }
    t.client
        .clone()
        .schedule_message(req)
        .await
        .expect("scheduled")
        .into_inner()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_due_chat_item_is_posted_signed_to_the_webhook_and_becomes_sent() {
    let mut t = TestServer::start().await;
    let mut hook = webhook(&[]).await;
    let connector = start_connector(&t.url(), &hook.url());
    let item = schedule_chat(&t).await;

    t.advance(Duration::from_secs(60));
    let hit = hook.next_hit().await;

    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(hit.header("idempotency-key"), item.item_id);
    let sig = hit.header("x-sendlater-signature");
    signature::verify(SECRET.as_bytes(), sig, &hit.body, unix_now(), 300)
        .unwrap_or_else(|e| panic!("signature {sig:?} does not verify: {e}"));
    assert_eq!(
        signature::verify(b"wrong secret", sig, &hit.body, unix_now(), 300),
        Err(signature::SignatureError::Mismatch)
    );
    let body = hit.json();
    assert_eq!(body["item_id"], item.item_id.as_str());
    assert_eq!(body["account_id"], "acme");
    assert_eq!(body["ticket_id"], "T1");
    assert_eq!(body["conversation_id"], "conv-1");
    assert_eq!(body["text"], "Hi! Answer inside.");
    assert_eq!(body["attempt"], 1);
    let due = chrono::DateTime::from_timestamp_millis(T0 + 60_000).expect("valid instant");
    assert_eq!(
        body["send_at"],
        due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    assert_eq!(
        body["attachments"],
        serde_json::json!([{"filename": "invoice.pdf", "content_type": "application/pdf",
                            "url": "https://files.example.com/invoice.pdf", "size_bytes": 2048}])
    );

    let sent = wait_item(&t, &item.item_id, "SENT", |i| {
        i.state == pb::State::Sent as i32
    })
    .await;
    assert_eq!(sent.provider_message_id, "chat-msg-1");
    assert_eq!(sent.attempts, 1);

    connector.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn a_webhook_503_is_retried_with_the_same_idempotency_key_and_then_sent() {
    let mut t = TestServer::start_with(|c| c.dispatch.retry_base_ms = 20).await;
    let mut hook = webhook(&[503]).await;
    let connector = start_connector(&t.url(), &hook.url());
    let item = schedule_chat(&t).await;

    t.advance(Duration::from_secs(60));
    let first = hook.next_hit().await;
    assert_eq!(first.json()["attempt"], 1);
    let retrying = wait_item(&t, &item.item_id, "PENDING again after the 503", |i| {
        i.state == pb::State::Pending as i32 && i.attempts == 1
    })
    .await;
    assert!(
        retrying.last_error.contains("503"),
        "last_error: {:?}",
        retrying.last_error
    );

    // The retry is due after the (20 ms based) backoff on the server's clock.
    t.advance(Duration::from_secs(1));
    let second = hook.next_hit().await;
    assert_eq!(second.json()["attempt"], 2);
    assert_eq!(
        second.header("idempotency-key"),
        first.header("idempotency-key")
    );
    assert_eq!(second.header("idempotency-key"), item.item_id);

    let sent = wait_item(&t, &item.item_id, "SENT", |i| {
        i.state == pb::State::Sent as i32
    })
    .await;
    assert_eq!(sent.attempts, 2);
    assert_eq!(sent.provider_message_id, "chat-msg-1");

    connector.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn a_webhook_400_fails_the_item_at_once_with_the_status_in_last_error() {
    let mut t = TestServer::start_with(|c| c.dispatch.retry_base_ms = 20).await;
    let mut hook = webhook(&[400]).await;
    let connector = start_connector(&t.url(), &hook.url());
    let item = schedule_chat(&t).await;

    t.advance(Duration::from_secs(60));
    hook.next_hit().await;
    let failed = wait_item(&t, &item.item_id, "FAILED", |i| {
        i.state == pb::State::Failed as i32
    })
    .await;
    assert!(
        failed.last_error.contains("400"),
        "last_error: {:?}",
        failed.last_error
    );
    assert_eq!(failed.attempts, 1);

    t.assert_not_retried(&item.item_id).await;
    assert!(hook.hits.try_recv().is_err(), "no second request");

    connector.stop().await;
    t.stop().await;
}

/// An address on a port that was just free: nothing listens there.
async fn unused_addr() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn an_unreachable_webhook_is_a_transient_failure() {
    let mut t = TestServer::start().await;
    let addr = unused_addr().await;
    let connector = start_connector(&t.url(), &format!("http://{addr}/hook"));
    let item = schedule_chat(&t).await;

    t.advance(Duration::from_secs(60));
    let retrying = wait_item(
        &t,
        &item.item_id,
        "PENDING after a refused connection",
        |i| i.state == pb::State::Pending as i32 && i.attempts == 1,
    )
    .await;
    assert!(
        retrying.last_error.starts_with("webhook:"),
        "last_error: {:?}",
        retrying.last_error
    );

    connector.stop().await;
    t.stop().await;
}

/// A port that was just free.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_connector_waits_for_the_server_and_reconnects_after_a_restart() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut hook = webhook(&[]).await;
    // No server yet: a stand-in on the port accepts the connector's connections and
    // closes them at once. Seeing it come back proves it retries (with backoff).
    let stand_in = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let connector = start_connector(&url, &hook.url());
    for attempt in 1..=2 {
        let (conn, _) = tokio::time::timeout(Duration::from_secs(10), stand_in.accept())
            .await
            .unwrap_or_else(|_| panic!("connection attempt {attempt} within 10 s"))
            .unwrap();
        drop(conn);
    }
    drop(stand_in);
    let mut t =
        TestServer::start_with(|c| c.listen = format!("127.0.0.1:{port}").parse().unwrap()).await;
    let first = schedule_chat(&t).await;
    t.advance(Duration::from_secs(60));
    assert_eq!(
        hook.next_hit().await.json()["item_id"],
        first.item_id.as_str()
    );
    wait_item(&t, &first.item_id, "SENT", |i| {
        i.state == pb::State::Sent as i32
    })
    .await;

    // Same port, same database and clock: the stream drops and comes back.
    t.restart().await;
    let mut req = chat_reply("acme", "T2", T0 + 120_000);
    req.request_id = "second".into();
    let second = t.client.schedule_message(req).await.unwrap().into_inner();
    t.advance(Duration::from_secs(60));
    assert_eq!(
        hook.next_hit().await.json()["item_id"],
        second.item_id.as_str()
    );
    wait_item(&t, &second.item_id, "SENT", |i| {
        i.state == pb::State::Sent as i32
    })
    .await;

    connector.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn stopping_the_connector_lets_a_running_send_finish_and_acknowledges_it() {
    let mut t = TestServer::start().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut hook = webhook_gated(&[], Some(gate.clone())).await;
    let connector = start_connector(&t.url(), &hook.url());
    let item = schedule_chat(&t).await;

    t.advance(Duration::from_secs(60));
    hook.next_hit().await;
    // The webhook holds its answer until the gate opens: ask the connector to stop
    // first, then let the webhook answer; the stop waits for the send and its ack.
    connector.shutdown.cancel();
    assert_eq!(
        t.get_acme(&item.item_id).await.state,
        pb::State::Dispatching as i32,
        "the send is still running when the stop is asked for"
    );
    gate.add_permits(1);
    connector.stop().await;
    let sent = wait_item(&t, &item.item_id, "SENT", |i| {
        i.state == pb::State::Sent as i32
    })
    .await;
    assert_eq!(sent.provider_message_id, "chat-msg-1");
    t.stop().await;
}

#[tokio::test]
async fn the_token_is_sent_as_a_bearer_and_a_wrong_one_stops_the_connector() {
    use sendlater::config::{Accounts, Role, TokenConfig};
    use sendlater::connector::ConnectorError;

    let mut t = TestServer::start_with(|c| {
        c.tokens = vec![
            TokenConfig {
                token: "connector-secret".into(),
                role: Role::Connector,
                accounts: Accounts::All,
            },
            TokenConfig {
                token: "backend-secret-0001".into(),
                role: Role::Backend,
                accounts: Accounts::All,
            },
        ]
    })
    .await;
    let mut hook = webhook(&[]).await;
    let runner = |token: &str| {
        let mut r = RunnerConfig::new(t.url());
        r.token = Some(token.into());
        r
    };

    let wrong = tokio::time::timeout(
        Duration::from_secs(10),
        run_chat(
            runner("wrong"),
            ChatConfig::new(hook.url()),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("a refused connector stops at once");
    match wrong {
        Err(ConnectorError::Refused(s)) => assert_eq!(s.code(), tonic::Code::Unauthenticated),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let shutdown = CancellationToken::new();
    let right = tokio::spawn(run_chat(
        runner("connector-secret"),
        ChatConfig::new(hook.url()),
        shutdown.clone(),
    ));
    // The right token is accepted: the connector gets a job and delivers it.
    let mut req = tonic::Request::new(chat_reply("acme", "T1", T0 + 60_000));
    req.metadata_mut().insert(
        "authorization",
        "Bearer backend-secret-0001".parse().unwrap(),
    );
    let item = t
        .client
        .schedule_message(req)
        .await
        .expect("scheduled")
        .into_inner();
    t.advance(Duration::from_secs(60));
    assert_eq!(
        hook.next_hit().await.json()["item_id"],
        item.item_id.as_str()
    );
    assert!(
        !right.is_finished(),
        "the right token keeps the connector running"
    );
    shutdown.cancel();
    right.await.unwrap().expect("a clean stop");
    t.stop().await;
}

#[tokio::test]
async fn the_v2_signature_covers_the_idempotency_key_and_a_changed_key_breaks_it() {
    let mut t = TestServer::start().await;
    let mut hook = webhook(&[]).await;
    let connector = start_connector(&t.url(), &hook.url());
    let item = schedule_chat(&t).await;

    t.advance(Duration::from_secs(60));
    let hit = hook.next_hit().await;
    let key = hit.header("idempotency-key").to_owned();
    assert_eq!(key, item.item_id);
    let sig = hit.header("x-sendlater-signature");
    // The receiver checks v2 with the key it was given: it verifies.
    signature::verify_v2(SECRET.as_bytes(), sig, &key, &hit.body, unix_now(), 300)
        .unwrap_or_else(|e| panic!("v2 of {sig:?} does not verify: {e}"));
    // The same request replayed under another Idempotency-Key does not.
    assert_eq!(
        signature::verify_v2(
            SECRET.as_bytes(),
            sig,
            "itm_999999",
            &hit.body,
            unix_now(),
            300
        ),
        Err(signature::SignatureError::Mismatch)
    );
    // v1 is still there for receivers written against it.
    signature::verify(SECRET.as_bytes(), sig, &hit.body, unix_now(), 300)
        .unwrap_or_else(|e| panic!("v1 of {sig:?} does not verify: {e}"));

    wait_item(&t, &item.item_id, "SENT", |i| {
        i.state == pb::State::Sent as i32
    })
    .await;
    connector.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn a_failed_webhook_request_never_shows_the_url_path_in_last_error() {
    let mut t = TestServer::start().await;
    // The request fails to connect.
    let addr = unused_addr().await;
    let connector = start_connector(
        &t.url(),
        &format!("http://{addr}/services/T0001/XyZsEcReTpAtH"),
    );
    let item = schedule_chat(&t).await;
    t.advance(Duration::from_secs(60));
    let retrying = wait_item(&t, &item.item_id, "PENDING after a failed request", |i| {
        i.state == pb::State::Pending as i32 && i.attempts == 1
    })
    .await;
    assert!(
        retrying.last_error.starts_with("webhook:"),
        "{:?}",
        retrying.last_error
    );
    assert!(
        !retrying.last_error.contains("XyZsEcReTpAtH"),
        "the path leaked: {:?}",
        retrying.last_error
    );
    connector.stop().await;
    t.stop().await;
}
