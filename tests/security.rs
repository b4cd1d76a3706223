//! Auth and TLS over real gRPC (API.md "Auth"): tokens, roles, accounts, isolation.
mod common;

use std::time::Duration;

use common::*;
use sendlater::config::{Accounts, Role, TlsConfig, TokenConfig};
use sendlater::pb;
use sendlater::pb::dispatch_client::DispatchClient;
use sendlater::pb::scheduler_client::SchedulerClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// The configured token behind a short name: tokens are at least 16 characters.
fn secret(t: &str) -> String {
    format!("{t}-0123456789abcdef")
}

fn token(t: &str, role: Role, accounts: &[&str]) -> TokenConfig {
    TokenConfig {
        token: secret(t),
        role,
        accounts: if accounts == ["*"] {
            Accounts::All
        } else {
            Accounts::Only(accounts.iter().map(|s| s.to_string()).collect())
        },
    }
}

async fn secured() -> TestServer {
    TestServer::start_with(|c| {
        c.tokens = vec![
            token("acme-backend", Role::Backend, &["acme"]),
            token("other-backend", Role::Backend, &["other"]),
            token("acme-connector", Role::Connector, &["acme"]),
            token("admin", Role::Admin, &["*"]),
        ]
    })
    .await
}

fn with<T>(msg: T, tok: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = tok {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", secret(t)).parse().unwrap(),
        );
    }
    r
}

/// Calls every Scheduler RPC on `account` with `tok`; returns each RPC's status code.
async fn every_rpc(
    c: &mut SchedulerClient<Channel>,
    tok: Option<&str>,
    account: &str,
    item: &str,
) -> Vec<(&'static str, Code)> {
    fn code<T>(r: Result<T, tonic::Status>) -> Code {
        match r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    }
    let sched = email_reply(account, "T9", T0 + 3_600_000);
    let r = item_ref(account, item);
    vec![
        (
            "ScheduleMessage",
            code(c.schedule_message(with(sched.clone(), tok)).await),
        ),
        (
            "ScheduleTicket",
            code(c.schedule_ticket(with(sched.clone(), tok)).await),
        ),
        (
            "ScheduleBatch",
            code(
                c.schedule_batch(with(
                    pb::ScheduleBatchRequest {
                        entries: vec![batch_entry(sched.clone())],
                    },
                    tok,
                ))
                .await,
            ),
        ),
        ("GetItem", code(c.get_item(with(r.clone(), tok)).await)),
        ("SendNow", code(c.send_now(with(r.clone(), tok)).await)),
        (
            "Reschedule",
            code(
                c.reschedule(with(
                    pb::RescheduleRequest {
                        account_id: account.into(),
                        item_id: item.into(),
                        send_at: Some(ts(T0 + 7_200_000)),
                        ..Default::default()
                    },
                    tok,
                ))
                .await,
            ),
        ),
        ("Cancel", code(c.cancel(with(r.clone(), tok)).await)),
        (
            "RecordTicketActivity",
            code(
                c.record_ticket_activity(with(
                    pb::RecordTicketActivityRequest {
                        account_id: account.into(),
                        ticket_id: "T9".into(),
                        author_kind: pb::AuthorKind::Client as i32,
                        message_id: "m".into(),
                        occurred_at: Some(ts(T0)),
                    },
                    tok,
                ))
                .await,
            ),
        ),
        (
            "ListScheduled",
            code(
                c.list_scheduled(with(
                    pb::ListScheduledRequest {
                        account_id: account.into(),
                        ..Default::default()
                    },
                    tok,
                ))
                .await,
            ),
        ),
        (
            "ListDeferredTickets",
            code(
                c.list_deferred_tickets(with(
                    pb::ListDeferredTicketsRequest {
                        account_id: account.into(),
                        ..Default::default()
                    },
                    tok,
                ))
                .await,
            ),
        ),
        (
            "GetTicketTimeline",
            code(
                c.get_ticket_timeline(with(
                    pb::GetTicketTimelineRequest {
                        account_id: account.into(),
                        ticket_id: "T9".into(),
                        audience: 0,
                        ..Default::default()
                    },
                    tok,
                ))
                .await,
            ),
        ),
        (
            "WatchEvents",
            code(
                c.watch_events(with(
                    pb::WatchEventsRequest {
                        account_id: account.into(),
                        after_sequence: 0,
                    },
                    tok,
                ))
                .await,
            ),
        ),
        (
            "SetBusinessHours",
            code(
                c.set_business_hours(with(
                    pb::BusinessHours {
                        account_id: account.into(),
                        time_zone: "Europe/Moscow".into(),
                        days: vec![pb::BusinessDay {
                            weekday: 1,
                            open: "09:00".into(),
                            close: "18:00".into(),
                        }],
                        holidays: vec![],
                    },
                    tok,
                ))
                .await,
            ),
        ),
        (
            "GetBusinessHours",
            code(
                c.get_business_hours(with(
                    pb::GetBusinessHoursRequest {
                        account_id: account.into(),
                    },
                    tok,
                ))
                .await,
            ),
        ),
        (
            "PauseDispatch",
            code(
                c.pause_dispatch(with(
                    pb::DispatchControlRequest {
                        account_id: account.into(),
                        channel: pb::Channel::Chat as i32,
                    },
                    tok,
                ))
                .await,
            ),
        ),
        (
            "ResumeDispatch",
            code(
                c.resume_dispatch(with(
                    pb::DispatchControlRequest {
                        account_id: account.into(),
                        channel: pb::Channel::Chat as i32,
                    },
                    tok,
                ))
                .await,
            ),
        ),
        (
            "SetRateLimit",
            code(
                c.set_rate_limit(with(
                    pb::SetRateLimitRequest {
                        account_id: account.into(),
                        channel: pb::Channel::Chat as i32,
                        per_minute: 100,
                    },
                    tok,
                ))
                .await,
            ),
        ),
        (
            "GetDispatchControls",
            code(
                c.get_dispatch_controls(with(
                    pb::GetDispatchControlsRequest {
                        account_id: account.into(),
                    },
                    tok,
                ))
                .await,
            ),
        ),
    ]
}

async fn acme_item(t: &TestServer) -> String {
    t.client
        .clone()
        .schedule_message(with(
            email_reply("acme", "T1", T0 + 3_600_000),
            Some("acme-backend"),
        ))
        .await
        .expect("schedule with a good token")
        .into_inner()
        .item_id
}

#[tokio::test]
async fn every_scheduler_rpc_without_a_token_is_unauthenticated() {
    let mut t = secured().await;
    let item = acme_item(&t).await;
    for (rpc, code) in every_rpc(&mut t.client.clone(), None, "acme", &item).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc}");
    }
    for (rpc, code) in every_rpc(&mut t.client.clone(), Some("not-a-token"), "acme", &item).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc}");
    }
    t.stop().await;
}

#[tokio::test]
async fn every_scheduler_rpc_on_another_account_is_permission_denied_before_any_lookup() {
    let mut t = secured().await;
    let item = acme_item(&t).await;
    // `other-backend` asks about acme's real item: denied, not NOT_FOUND, not OK.
    for (rpc, code) in every_rpc(&mut t.client.clone(), Some("other-backend"), "acme", &item).await
    {
        assert_eq!(code, Code::PermissionDenied, "{rpc}");
    }
    // A connector token may not use the Scheduler at all.
    for (rpc, code) in every_rpc(&mut t.client.clone(), Some("acme-connector"), "acme", &item).await
    {
        assert_eq!(code, Code::PermissionDenied, "{rpc}");
    }
    // The item is untouched.
    let got = t
        .client
        .get_item(with(item_ref("acme", &item), Some("acme-backend")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, pb::State::Pending as i32);
    assert_eq!(ms(&got.send_at), T0 + 3_600_000);
    t.stop().await;
}

#[tokio::test]
async fn every_scheduler_rpc_works_with_the_right_token_and_with_admin() {
    let mut t = secured().await;
    for tok in ["acme-backend", "admin"] {
        let item = acme_item(&t).await;
        for (rpc, code) in every_rpc(&mut t.client.clone(), Some(tok), "acme", &item).await {
            assert!(code == Code::Ok, "{rpc} with {tok}: {code:?}");
        }
    }
    t.stop().await;
}

#[tokio::test]
async fn a_batch_naming_any_foreign_account_is_denied_whole() {
    let mut t = secured().await;
    let entries = vec![
        batch_entry(email_reply("acme", "T1", T0 + 60_000)),
        batch_entry(email_reply("other", "T1", T0 + 60_000)),
    ];
    let r = t
        .client
        .schedule_batch(with(
            pb::ScheduleBatchRequest { entries },
            Some("acme-backend"),
        ))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    let list = t
        .client
        .list_scheduled(with(
            pb::ListScheduledRequest {
                account_id: "acme".into(),
                ..Default::default()
            },
            Some("admin"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(list.items.is_empty());
    t.stop().await;
}

async fn connector(
    url: &str,
    tok: Option<&str>,
) -> Result<tonic::Streaming<pb::DeliveryJob>, tonic::Status> {
    let mut client = DispatchClient::new(channel(url).await);
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::ConnectorMessage {
        msg: Some(pb::connector_message::Msg::Hello(pb::Hello {
            connector_id: "c".into(),
            channels: vec![pb::Channel::Email as i32],
            max_in_flight: 10,
        })),
    })
    .await
    .unwrap();
    std::mem::forget(tx); // keep the stream open for the test's lifetime
    client
        .connect(with(ReceiverStream::new(rx), tok))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn dispatch_needs_a_connector_token_and_gets_only_its_accounts_jobs() {
    let mut t = secured().await;
    assert_eq!(
        connector(&t.url(), None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        connector(&t.url(), Some("acme-backend"))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let mut jobs = connector(&t.url(), Some("acme-connector"))
        .await
        .expect("connector token");
    let mut c = t.client.clone();
    c.schedule_message(with(email_reply("other", "T1", T0), Some("other-backend")))
        .await
        .unwrap();
    let mine = c
        .schedule_message(with(email_reply("acme", "T1", T0), Some("acme-backend")))
        .await
        .unwrap()
        .into_inner();
    let job = tokio::time::timeout(Duration::from_secs(10), jobs.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(job.item.unwrap().item_id, mine.item_id);
    // Fence: once the server is idle, every job it would hand out has left; a later
    // acme item's job comes after them on this ordered stream.
    t.settle().await;
    let fence = c
        .schedule_message(with(email_reply("acme", "T2", T0), Some("acme-backend")))
        .await
        .unwrap()
        .into_inner();
    let next = tokio::time::timeout(Duration::from_secs(10), jobs.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        next.item.unwrap().item_id,
        fence.item_id,
        "the other account's job must not reach this connector"
    );
    // The other account's item was due all along: a connector for every account gets it.
    let mut all = connector(&t.url(), Some("admin"))
        .await
        .expect("admin token");
    let theirs = tokio::time::timeout(Duration::from_secs(10), all.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(theirs.item.unwrap().account_id, "other");
    t.stop().await;
}

#[tokio::test]
async fn health_needs_no_token() {
    let mut t = secured().await;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel(&t.url()).await);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without a token");
    assert_eq!(
        r.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    t.stop().await;
}

#[tokio::test]
async fn tls_serves_the_api_to_a_client_that_trusts_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let tls = TlsConfig {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    let mut config = sendlater::config::ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("tls.db"),
    );
    config.tls = Some(tls);
    let server = sendlater::server::start(config)
        .await
        .expect("TLS server starts");
    let addr = server.local_addr();
    let ch = tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS handshake");
    let mut client = SchedulerClient::new(ch);
    let future = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let item = client
        .schedule_message(email_reply("acme", "T1", future))
        .await
        .expect("schedule over TLS")
        .into_inner();
    assert_eq!(item.state, pb::State::Pending as i32);
    // Plaintext on the TLS port fails.
    let plain =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", addr.port()))
            .unwrap()
            .connect()
            .await;
    if let Ok(ch) = plain {
        let r = SchedulerClient::new(ch)
            .get_item(item_ref("acme", &item.item_id))
            .await;
        assert!(r.is_err(), "plaintext must not be served on the TLS port");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn reflection_needs_no_token_on_a_server_with_tokens() {
    let mut t = secured().await;
    let names = reflection_services(&t.url()).await;
    for service in ["sendlater.v1.Scheduler", "sendlater.v1.Dispatch"] {
        assert!(names.iter().any(|n| n == service), "{service}: {names:?}");
    }
    // The services it names still need a token.
    let r = t
        .client
        .get_dispatch_controls(pb::GetDispatchControlsRequest {
            account_id: "acme".into(),
        })
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    t.stop().await;
}

#[tokio::test]
async fn pausing_every_account_needs_a_token_for_every_account() {
    let mut t = secured().await;
    let every = |tok| {
        with(
            pb::DispatchControlRequest {
                account_id: "*".into(),
                channel: pb::Channel::Email as i32,
            },
            Some(tok),
        )
    };
    let mut c = t.client.clone();
    let r = c.pause_dispatch(every("acme-backend")).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    // Nothing was paused: acme's email still goes out.
    let controls = c
        .get_dispatch_controls(with(
            pb::GetDispatchControlsRequest {
                account_id: "acme".into(),
            },
            Some("acme-backend"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(controls.paused_channels.is_empty(), "{controls:?}");
    // The same request with a token for every account is fine, and so is resuming.
    c.pause_dispatch(every("admin"))
        .await
        .expect("admin pauses every account");
    let r = c.resume_dispatch(every("acme-backend")).await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    c.resume_dispatch(every("admin"))
        .await
        .expect("admin resumes every account");
    t.stop().await;
}
