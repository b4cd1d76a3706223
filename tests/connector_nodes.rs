//! One connector, several servers (the nodes of a cluster): real sendlater servers with
//! separate stores, the chat connector (library and binary) streaming from all of them,
//! and a real HTTP webhook on 127.0.0.1 that records what it gets and how many requests
//! it holds at once.
mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::connector::{ConnectorTask, Webhook};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use sendlater::cli::args::{Args, Command as Cli, ConnectorCommand};
use sendlater::clock::ManualClock;
use sendlater::cluster::node;
use sendlater::config::ServerConfig;
use sendlater::connector::{run_chat, ChatConfig, RunnerConfig};
use sendlater::pb;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One request the webhook received: the item's ticket and the attempt.
#[derive(Debug, Clone)]
struct Hit {
    ticket: String,
    attempt: u64,
}

/// A webhook on 127.0.0.1:0 that answers 200 with `{"id":"msg-<ticket>"}` and reports
/// each request on a channel. Gated, every answer waits (after its request was
/// reported) for a permit the test adds.
async fn webhook(gate: Option<Arc<Semaphore>>) -> Webhook<Hit> {
    Webhook::start(
        move |req: Request<Incoming>, tx: mpsc::UnboundedSender<Hit>| {
            let gate = gate.clone();
            async move {
                let body = req.into_body().collect().await.expect("body").to_bytes();
                let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
                let ticket = json["ticket_id"].as_str().expect("ticket_id").to_owned();
                let attempt = json["attempt"].as_u64().expect("attempt");
                let _ = tx.send(Hit {
                    ticket: ticket.clone(),
                    attempt,
                });
                if let Some(gate) = &gate {
                    gate.acquire().await.expect("gate open").forget();
                }
                let answer = format!(r#"{{"id":"msg-{ticket}"}}"#);
                Response::new(Full::new(Bytes::from(answer)))
            }
        },
    )
    .await
}

/// The chat connector (library) on several servers, as a task.
fn start_connector(servers: &[String], webhook: &str, max_in_flight: u32) -> ConnectorTask {
    let mut runner = RunnerConfig::new(String::new());
    runner.servers = servers.to_vec();
    runner.connector_id = "nodes-test".into();
    runner.max_in_flight = max_in_flight;
    // A stopped server's link retries often, so its return is seen quickly.
    runner.reconnect_max = Duration::from_millis(200);
    let mut chat = ChatConfig::new(webhook);
    chat.timeout = Duration::from_secs(10);
    ConnectorTask::spawn(|shutdown| run_chat(runner, chat, shutdown))
}

/// A chat reply in `ticket`, due a minute after T0.
async fn schedule(t: &TestServer, ticket: &str) -> pb::ScheduledItem {
    let mut req = chat_reply("acme", ticket, T0 + 60_000);
    req.request_id = format!("req-{ticket}");
    t.schedule(req).await
}

/// Waits until the item is SENT with the provider id the webhook gave its ticket.
async fn assert_sent(t: &TestServer, item: &pb::ScheduledItem) {
    let sent = wait_item(t, &item.item_id, "SENT", |i| {
        i.state == pb::State::Sent as i32
    })
    .await;
    assert_eq!(sent.ticket_id, item.ticket_id);
    assert_eq!(
        sent.provider_message_id,
        format!("msg-{}", item.ticket_id),
        "the ack of this item reached its own server"
    );
    assert_eq!(sent.attempts, 1, "{sent:?}");
}

/// How many of acme's items are DISPATCHING (leased to a connector) on `t`.
async fn dispatching(t: &TestServer) -> usize {
    let page = t
        .client
        .clone()
        .list_scheduled(pb::ListScheduledRequest {
            account_id: "acme".into(),
            state: pb::State::Dispatching as i32,
            ..Default::default()
        })
        .await
        .expect("ListScheduled")
        .into_inner();
    page.items.len()
}

#[tokio::test]
async fn a_connector_given_two_servers_delivers_the_due_items_of_both_and_acks_each_to_its_own() {
    let mut a = TestServer::start().await;
    let mut b = TestServer::start().await;
    let mut hook = webhook(None).await;
    let connector = start_connector(&[a.url(), b.url()], &hook.url(), 4);
    // Separate stores number their items alike: the ticket tells the servers apart.
    let on_a = [schedule(&a, "A1").await, schedule(&a, "A2").await];
    let on_b = [schedule(&b, "B1").await, schedule(&b, "B2").await];
    assert_eq!(on_a[0].item_id, on_b[0].item_id, "same ids on both stores");

    a.advance(Duration::from_secs(60));
    b.advance(Duration::from_secs(60));
    let mut tickets: Vec<String> = Vec::new();
    for _ in 0..4 {
        tickets.push(hook.next_hit().await.ticket);
    }
    tickets.sort();
    assert_eq!(tickets, ["A1", "A2", "B1", "B2"]);
    // An ack sent to the wrong server would be ignored there (not its job): each item
    // is SENT on its own server with the id its own request got.
    for item in &on_a {
        assert_sent(&a, item).await;
    }
    for item in &on_b {
        assert_sent(&b, item).await;
    }

    connector.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_sends_in_progress_never_exceed_max_in_flight_across_all_servers() {
    const N: usize = 2;
    const PER_SERVER: usize = 3;
    let mut a = TestServer::start().await;
    let mut b = TestServer::start().await;
    let gate = Arc::new(Semaphore::new(0));
    let mut hook = webhook(Some(Arc::clone(&gate))).await;
    let connector = start_connector(&[a.url(), b.url()], &hook.url(), N as u32);
    let mut items = Vec::new();
    for i in 0..PER_SERVER {
        items.push((0, schedule(&a, &format!("A{i}")).await));
        items.push((1, schedule(&b, &format!("B{i}")).await));
    }

    a.advance(Duration::from_secs(60));
    b.advance(Duration::from_secs(60));
    // Each stream declared N: both servers lease N jobs each, twice what may run.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dispatching(&a).await < N || dispatching(&b).await < N {
        assert!(
            std::time::Instant::now() < deadline,
            "both servers never leased {N} jobs each"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Release one request at a time, and only while the webhook holds N of them (or
    // every remaining one): an extra concurrent send would have room to show.
    let total = 2 * PER_SERVER;
    let (mut arrived, mut released) = (Vec::new(), 0);
    while released < total {
        while arrived.len() - released < N.min(total - released) {
            arrived.push(hook.next_hit().await.ticket);
        }
        gate.add_permits(1);
        released += 1;
    }
    arrived.sort();
    assert_eq!(arrived, ["A0", "A1", "A2", "B0", "B1", "B2"]);
    for (server, item) in &items {
        assert_sent(if *server == 0 { &a } else { &b }, item).await;
    }
    assert_eq!(
        hook.max_held.load(Ordering::SeqCst),
        N,
        "at most max_in_flight requests at once across both servers (and the pool was full)"
    );

    connector.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_stopped_server_does_not_hold_up_the_others_and_is_served_again_once_back() {
    let port = pg::free_port();
    let mut a =
        TestServer::start_with(|c| c.listen = format!("127.0.0.1:{port}").parse().unwrap()).await;
    let mut b = TestServer::start().await;
    let mut hook = webhook(None).await;
    let connector = start_connector(&[a.url(), b.url()], &hook.url(), 4);
    let on_a = schedule(&a, "A1").await;
    let on_b = schedule(&b, "B1").await;

    // A goes away (its item not yet due); B's item falls due and goes out meanwhile.
    a.stop().await;
    b.advance(Duration::from_secs(60));
    assert_eq!(hook.next_hit().await.ticket, "B1");
    assert_sent(&b, &on_b).await;

    // A comes back on the same port and store; its item goes out too.
    a.restart().await;
    a.advance(Duration::from_secs(60));
    assert_eq!(hook.next_hit().await.ticket, "A1");
    assert_sent(&a, &on_a).await;
    // And B is still served after A's return (B's clock is at T0 + 60 s: due now).
    let later = schedule(&b, "B2").await;
    assert_eq!(hook.next_hit().await.ticket, "B2");
    assert_sent(&b, &later).await;

    connector.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_job_still_waiting_for_a_free_slot_when_its_stream_drops_is_not_sent() {
    let port = pg::free_port();
    let mut a = TestServer::start().await;
    let mut b =
        TestServer::start_with(|c| c.listen = format!("127.0.0.1:{port}").parse().unwrap()).await;
    let gate = Arc::new(Semaphore::new(0));
    let mut hook = webhook(Some(Arc::clone(&gate))).await;
    // One slot: A's send holds it, B's job waits behind it.
    let connector = start_connector(&[a.url(), b.url()], &hook.url(), 1);
    let on_a = schedule(&a, "A1").await;
    let on_b = schedule(&b, "B1").await;
    a.advance(Duration::from_secs(60));
    assert_eq!(hook.next_hit().await.ticket, "A1");
    b.advance(Duration::from_secs(60));
    wait_item(&b, &on_b.item_id, "B1 leased to the connector", |i| {
        i.state == pb::State::Dispatching as i32 && i.attempts == 1
    })
    .await;

    // B's stream drops while its job waits; B comes back (same port and store) and
    // leases the item again, to the connector's new stream: the old session is over.
    b.restart().await;
    wait_item(&b, &on_b.item_id, "B1 leased again", |i| {
        i.state == pb::State::Dispatching as i32 && i.attempts == 2
    })
    .await;
    // The slot frees: the first job in line was B's first attempt, had it stayed.
    gate.add_permits(1);
    assert_sent(&a, &on_a).await;
    let next = hook.next_hit().await;
    assert_eq!(
        (next.ticket.as_str(), next.attempt),
        ("B1", 2),
        "the job of the dropped stream was not sent"
    );
    gate.add_permits(1);
    let sent = wait_item(&b, &on_b.item_id, "SENT", |i| {
        i.state == pb::State::Sent as i32
    })
    .await;
    assert_eq!(sent.provider_message_id, "msg-B1");

    connector.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_server_that_refuses_the_connector_stops_it_on_every_server() {
    use sendlater::config::{Accounts, Role, TokenConfig};
    use sendlater::connector::ConnectorError;
    let token = |t: &str| TokenConfig {
        token: t.into(),
        role: Role::Connector,
        accounts: Accounts::All,
    };
    let mut a = TestServer::start_with(|c| c.tokens = vec![token("connector-secret")]).await;
    let mut b =
        TestServer::start_with(|c| c.tokens = vec![token("another-connector-secret")]).await;
    let hook = webhook(None).await;
    let mut runner = RunnerConfig::new(a.url());
    runner.servers.push(b.url());
    runner.token = Some("connector-secret".into());
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        run_chat(
            runner,
            ChatConfig::new(hook.url()),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("a refusal by one server stops the connector, its stream to the other too");
    match ended {
        Err(ConnectorError::Refused(s)) => assert_eq!(s.code(), tonic::Code::Unauthenticated),
        other => panic!("expected a refusal, got {other:?}"),
    }
    a.stop().await;
    b.stop().await;
}

/// A node of a cluster on one PostgreSQL (`cluster::node`), run in this process.
struct Node {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<node::Ended, sendlater::server::ServerError>>,
}

impl Node {
    fn start(db: &str, id: &str) -> Node {
        let addr: SocketAddr = format!("127.0.0.1:{}", pg::free_port()).parse().unwrap();
        let mut config = ServerConfig::new(addr, db);
        config.clock = Arc::new(ManualClock::new(T0));
        config.dispatch.drain_grace_ms = 0;
        config.cluster.node_id = id.into();
        config.cluster.advertise = addr.to_string();
        config.cluster.lease_secs = 20;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let db = db.to_owned();
        let task = tokio::spawn(async move {
            node::run(config, &db, async {
                let _ = stopped.await;
            })
            .await
        });
        Node {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A Scheduler client, once the node answers.
    async fn client(&self) -> pb::scheduler_client::SchedulerClient<tonic::transport::Channel> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let endpoint = tonic::transport::Endpoint::from_shared(self.url()).unwrap();
            if let Ok(ch) = endpoint.connect().await {
                return pb::scheduler_client::SchedulerClient::new(ch);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never answered",
                self.url()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Schedules a chat reply due now (T0 on every node's clock) through this node,
    /// retrying while it answers UNAVAILABLE (between owners); the request id makes
    /// that safe.
    async fn schedule_due(&self, ticket: &str) -> pb::ScheduledItem {
        let mut client = self.client().await;
        let mut req = chat_reply("acme", ticket, T0);
        req.request_id = format!("req-{ticket}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match client.schedule_message(req.clone()).await {
                Ok(r) => return r.into_inner(),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    assert!(std::time::Instant::now() < deadline, "{s:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(s) => panic!("schedule {ticket}: {s:?}"),
            }
        }
    }

    /// Waits (bounded) until the item is SENT with its ticket's provider id.
    async fn assert_sent(&self, item: &pb::ScheduledItem) {
        let mut client = self.client().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = client
                .get_item(item_ref("acme", &item.item_id))
                .await
                .expect("get item")
                .into_inner();
            if got.state == pb::State::Sent as i32 {
                assert_eq!(got.provider_message_id, format!("msg-{}", item.ticket_id));
                return;
            }
            assert!(std::time::Instant::now() < deadline, "never SENT: {got:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(mut self) -> node::Ended {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the node ends within 30 s")
            .expect("the node task ran")
            .expect("the node ran")
    }
}

/// Waits until `node` holds partition 0's lease (every partition, in this build).
async fn owner_is(db: &tokio_postgres::Client, node: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = db
            .query_opt(
                "SELECT owner FROM partition_leases WHERE partition = 0 AND expires_at > now()",
                &[],
            )
            .await
            .unwrap_or(None);
        if row.is_some_and(|r| r.get::<_, Option<String>>(0).as_deref() == Some(node)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{node} never owned the partitions"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_connector_on_every_node_gets_the_jobs_of_whichever_node_owns_the_partitions() {
    let url = pg::fresh_database().await;
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let n1 = Node::start(&url, "n1");
    owner_is(&db, "n1").await;
    let n2 = Node::start(&url, "n2");
    n2.client().await;
    let mut hook = webhook(None).await;
    let connector = start_connector(&[n1.url(), n2.url()], &hook.url(), 4);

    // Scheduled through n2: run by whichever node owns the account's partition (n2
    // forwards to n1 if n1 does), sent from that node's stream.
    let first = n2.schedule_due("A1").await;
    assert_eq!(hook.next_hit().await.ticket, "A1");
    n1.assert_sent(&first).await;

    // n1 stops (planned): n2 takes over, and the connector's stream to n2 gets its jobs.
    assert_eq!(n1.stop().await, node::Ended::Stopped);
    owner_is(&db, "n2").await;
    let second = n2.schedule_due("B1").await;
    assert_eq!(hook.next_hit().await.ticket, "B1");
    n2.assert_sent(&second).await;
    n2.assert_sent(&first).await;

    connector.stop().await;
    assert_eq!(n2.stop().await, node::Ended::Stopped);
}

/// The connector's servers as `sendlater connector chat ARGS` parses them.
fn parsed_servers(args: &[&str]) -> Vec<String> {
    let argv = [
        "sendlater",
        "connector",
        "chat",
        "--webhook",
        "http://h/hook",
    ]
    .iter()
    .chain(args);
    let parsed = Args::try_parse_from(argv).expect("the flags parse");
    let Cli::Connector(ConnectorCommand::Chat(chat)) = parsed.command else {
        panic!("not the chat connector: {:?}", parsed.command);
    };
    sendlater::cli::connector::runner(&chat.common).distinct_servers()
}

#[test]
fn server_may_be_repeated_or_a_comma_separated_list_and_repeats_count_once() {
    assert_eq!(
        parsed_servers(&[
            "--server",
            "http://a:1",
            "--server",
            "http://b:1,http://a:1/",
            "--server=http://c:1, http://b:1"
        ]),
        ["http://a:1", "http://b:1", "http://c:1"]
    );
    assert_eq!(parsed_servers(&[]), ["http://127.0.0.1:50051"]);
}

/// `sendlater connector chat --webhook WEBHOOK` with `args` and `env`.
fn connector_command(webhook: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sendlater"));
    c.args(["connector", "chat", "--webhook", webhook])
        .args(args)
        .env_remove("SENDLATER_SERVER")
        .env_remove("SENDLATER_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

#[test]
fn a_bad_server_among_several_is_named_with_the_flag_and_exits_64() {
    // Flags, environment, the bad URL the message must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        (
            &["--server", "http://127.0.0.1:1", "--server", "ftp://x:1"],
            &[],
            "ftp://x:1",
        ),
        (&["--server", "http://127.0.0.1:1,nope"], &[], "nope"),
        (
            &[],
            &[("SENDLATER_SERVER", "http://127.0.0.1:1,127.0.0.1:2")],
            "127.0.0.1:2",
        ),
    ];
    for (args, env, bad) in cases {
        let out = connector_command("http://127.0.0.1:9/hook", args, env)
            .output()
            .expect("run sendlater connector");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("--server") && stderr.contains(&format!("{bad:?}")),
            "{args:?} {env:?}: the flag and {bad:?} named: {stderr}"
        );
    }
}

#[tokio::test]
async fn the_connector_command_streams_from_every_server_given_repeated_and_listed() {
    let mut a = TestServer::start().await;
    let mut b = TestServer::start().await;
    let mut hook = webhook(None).await;
    let both = format!("{},{}", b.url(), a.url());
    let mut child = connector_command(&hook.url(), &["--server", &a.url(), "--server", &both], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sendlater connector");
    let on_a = schedule(&a, "A1").await;
    let on_b = schedule(&b, "B1").await;
    a.advance(Duration::from_secs(60));
    b.advance(Duration::from_secs(60));
    let mut tickets = [hook.next_hit().await.ticket, hook.next_hit().await.ticket];
    tickets.sort();
    assert_eq!(tickets, ["A1", "B1"]);
    assert_sent(&a, &on_a).await;
    assert_sent(&b, &on_b).await;
    let _ = child.kill();
    let _ = child.wait();
    a.stop().await;
    b.stop().await;
}
