//! Shared helpers of the integration tests: a real server on an ephemeral port with a
//! temporary SQLite file and a manual clock, and real tonic clients.
#![allow(dead_code)]

pub mod cli;
pub mod connector;
pub mod pg;
pub mod proxy;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost_types::Timestamp;
use sendlater::clock::ManualClock;
use sendlater::config::ServerConfig;
use sendlater::pb;
use sendlater::pb::dispatch_client::DispatchClient;
use sendlater::pb::scheduler_client::SchedulerClient;
use sendlater::server::{self, RunningServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

/// A server under test with its clock, its database folder and a client.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
    pub client: SchedulerClient<Channel>,
    pub config: ServerConfig,
}

/// The manual clock starts at a fixed, realistic instant: 2026-11-25T12:00:00Z.
pub const T0: i64 = 1_795_608_000_000;

impl TestServer {
    /// A fresh server with default limits.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A fresh server whose config `tweak` may change (limits, dispatch tuning), on the
    /// store the suite runs on: a temporary SQLite file, or a fresh PostgreSQL database
    /// when `SENDLATER_TEST_STORE=postgres` (see `pg`).
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let on_pg = pg::store_is_postgres();
        Self::start_on(on_pg, tweak).await
    }

    /// As [`TestServer::start_with`], always on SQLite: for tests of the SQLite engine
    /// itself (they read or damage its file).
    pub async fn start_sqlite_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        Self::start_on(false, tweak).await
    }

    async fn start_on(on_pg: bool, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let db = if on_pg {
            PathBuf::from(pg::fresh_database().await)
        } else {
            dir.path().join("test.db")
        };
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), db);
        config.clock = Arc::new(clock.clone());
        // Stopping does not wait for answers of jobs still out at test connectors
        // (tests of the graceful drain set it back).
        config.dispatch.drain_grace_ms = 0;
        tweak(&mut config);
        let target = sendlater::store::DbTarget::parse(&config.db_path.to_string_lossy());
        if let (sendlater::store::DbTarget::Postgres(url), None) = (&target, &config.ownership) {
            config.ownership = Some(pg::own_everything(url, &config.cluster).await);
        }
        let server = server::start(config.clone()).await.expect("server starts");
        let client = connect(&server.url()).await;
        TestServer {
            server: Some(server),
            clock,
            dir,
            client,
            config,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.db_path.clone()
    }

    pub fn url(&self) -> String {
        self.server.as_ref().expect("running").url()
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    /// Stops the server gracefully and starts a new one on the same file and clock.
    pub async fn restart(&mut self) {
        self.stop().await;
        let server = server::start(self.config.clone())
            .await
            .expect("server restarts");
        self.client = connect(&server.url()).await;
        self.server = Some(server);
    }

    /// Stops the server gracefully.
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
    }

    /// Moves the manual clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Waits (bounded) until `pred` holds, re-checking when the engine may have moved.
    /// For effects of the clock that happen on the engine's tasks.
    pub async fn eventually<F: FnMut() -> bool>(&self, what: &str, mut pred: F) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !pred() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A Scheduler client on `url`.
pub async fn connect(url: &str) -> SchedulerClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    SchedulerClient::new(ch)
}

/// A channel on `url` (for other clients: Dispatch, Health, Reflection).
pub async fn channel(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// The services the server on `url` lists through gRPC reflection (sent without a
/// token).
pub async fn reflection_services(url: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let mut refl = ServerReflectionClient::new(channel(url).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection stream")
        .into_inner()
        .message()
        .await
        .expect("reflection answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer: {resp:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

pub fn ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn ms(t: &Option<Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// A valid email reply request, due `in_ms` after T0 (the clock's start).
pub fn email_reply(account: &str, ticket: &str, send_at: i64) -> pb::ScheduleRequest {
    pb::ScheduleRequest {
        account_id: account.into(),
        ticket_id: ticket.into(),
        channel: pb::Channel::Email as i32,
        author_id: "agent-1".into(),
        content: Some(pb::schedule_request::Content::Email(pb::EmailContent {
            to: vec!["client@example.com".into()],
            subject: "Re: your question".into(),
            text_body: "Hello, here is the answer.".into(),
            ..Default::default()
        })),
        send_at: Some(ts(send_at)),
        on_activity: 0,
        request_id: String::new(),
        ..Default::default()
    }
}

/// A valid chat reply request.
pub fn chat_reply(account: &str, ticket: &str, send_at: i64) -> pb::ScheduleRequest {
    pb::ScheduleRequest {
        account_id: account.into(),
        ticket_id: ticket.into(),
        channel: pb::Channel::Chat as i32,
        author_id: "agent-1".into(),
        content: Some(pb::schedule_request::Content::Chat(pb::ChatContent {
            conversation_id: "conv-1".into(),
            text: "Hi! Answer inside.".into(),
            ..Default::default()
        })),
        send_at: Some(ts(send_at)),
        on_activity: 0,
        request_id: String::new(),
        ..Default::default()
    }
}

/// `ItemRef` for an item.
pub fn item_ref(account: &str, item_id: &str) -> pb::ItemRef {
    pb::ItemRef {
        account_id: account.into(),
        item_id: item_id.into(),
    }
}

/// Asserts a status code and that the message starts with `field_prefix`.
pub fn assert_status<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    field_prefix: &str,
) {
    match r {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "message: {}", s.message());
            assert!(
                s.message().starts_with(field_prefix),
                "message {:?} should start with {field_prefix:?}",
                s.message()
            );
        }
    }
}

/// A connector speaking the Dispatch protocol by hand.
pub struct TestConnector {
    pub tx: mpsc::Sender<pb::ConnectorMessage>,
    pub jobs: Streaming<pb::DeliveryJob>,
}

impl TestConnector {
    pub async fn connect(url: &str, channels: &[pb::Channel], max_in_flight: u32) -> TestConnector {
        let mut client = DispatchClient::new(channel(url).await);
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::ConnectorMessage {
            msg: Some(pb::connector_message::Msg::Hello(pb::Hello {
                connector_id: "test".into(),
                channels: channels.iter().map(|&c| c as i32).collect(),
                max_in_flight,
            })),
        })
        .await
        .unwrap();
        let jobs = client
            .connect(ReceiverStream::new(rx))
            .await
            .expect("connect")
            .into_inner();
        TestConnector { tx, jobs }
    }

    pub async fn next_job(&mut self) -> pb::DeliveryJob {
        tokio::time::timeout(Duration::from_secs(10), self.jobs.message())
            .await
            .expect("a job within 10 s")
            .expect("stream ok")
            .expect("stream open")
    }

    pub async fn ack(&self, job: &pb::DeliveryJob, provider_id: &str) {
        self.tx
            .send(pb::ConnectorMessage {
                msg: Some(pb::connector_message::Msg::Ack(pb::Ack {
                    job_id: job.job_id.clone(),
                    provider_message_id: provider_id.into(),
                })),
            })
            .await
            .unwrap();
    }
}

impl TestConnector {
    pub async fn nack(&self, job: &pb::DeliveryJob, error: &str, permanent: bool) {
        self.tx
            .send(pb::ConnectorMessage {
                msg: Some(pb::connector_message::Msg::Nack(pb::Nack {
                    job_id: job.job_id.clone(),
                    error: error.into(),
                    permanent,
                })),
            })
            .await
            .unwrap();
    }

    /// The next job if one arrives within `wait` (for asserting that none comes).
    pub async fn job_within(&mut self, wait: Duration) -> Option<pb::DeliveryJob> {
        tokio::time::timeout(wait, self.jobs.message())
            .await
            .ok()
            .and_then(|r| r.ok().flatten())
    }
}

/// Waits (bounded, 10 s) until the item reaches `state`; returns it.
pub async fn wait_state(
    client: &SchedulerClient<Channel>,
    account: &str,
    item_id: &str,
    state: pb::State,
) -> pb::ScheduledItem {
    let mut client = client.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let it = client
            .get_item(item_ref(account, item_id))
            .await
            .expect("get_item")
            .into_inner();
        if it.state == state as i32 {
            return it;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "item {item_id} never reached {state:?}; last: {it:?}"
        );
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// The item id a job carries.
pub fn job_item(job: &pb::DeliveryJob) -> String {
    job.item.as_ref().expect("job has an item").item_id.clone()
}

/// A schedule request as a batch entry (kind REPLY).
pub fn batch_entry(r: pb::ScheduleRequest) -> pb::BatchEntry {
    pb::BatchEntry {
        kind: pb::Kind::Reply as i32,
        account_id: r.account_id,
        ticket_id: r.ticket_id,
        channel: r.channel,
        author_id: r.author_id,
        content: r.content.map(|c| match c {
            pb::schedule_request::Content::Email(e) => pb::batch_entry::Content::Email(e),
            pb::schedule_request::Content::Chat(c) => pb::batch_entry::Content::Chat(c),
        }),
        send_at: r.send_at,
        on_activity: r.on_activity,
        request_id: r.request_id,
        send_at_local: r.send_at_local,
        delivery_window: r.delivery_window,
        max_lateness: r.max_lateness,
        on_late: r.on_late,
    }
}

/// Polls GetItem (bounded) until `pred` holds; returns the item.
pub async fn wait_item(
    t: &TestServer,
    id: &str,
    what: &str,
    pred: impl Fn(&pb::ScheduledItem) -> bool,
) -> pb::ScheduledItem {
    let mut client = t.client.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let item = client
            .get_item(item_ref("acme", id))
            .await
            .expect("get item")
            .into_inner();
        if pred(&item) {
            return item;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {item:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl TestServer {
    /// ScheduleMessage that must succeed.
    pub async fn schedule(&self, req: pb::ScheduleRequest) -> pb::ScheduledItem {
        self.client
            .clone()
            .schedule_message(req)
            .await
            .expect("schedule")
            .into_inner()
    }

    /// GetItem of an `acme` item that must succeed.
    pub async fn get_acme(&self, id: &str) -> pb::ScheduledItem {
        self.client
            .clone()
            .get_item(item_ref("acme", id))
            .await
            .expect("get item")
            .into_inner()
    }

    /// No retry follows a permanent failure: with the clock well past any backoff and
    /// the server idle, the `acme` item is still FAILED after one attempt (a second
    /// delivery would need a second lease, which counts an attempt).
    pub async fn assert_not_retried(&self, id: &str) {
        self.advance(Duration::from_secs(60));
        self.settle().await;
        let still = self.get_acme(id).await;
        assert_eq!(still.state, pb::State::Failed as i32, "{still:?}");
        assert_eq!(still.attempts, 1, "{still:?}");
    }

    /// The first page of acme's PENDING items (ListScheduled with its defaults).
    pub async fn pending_acme(&self) -> pb::ListScheduledResponse {
        self.client
            .clone()
            .list_scheduled(pb::ListScheduledRequest {
                account_id: "acme".into(),
                ..Default::default()
            })
            .await
            .expect("ListScheduled")
            .into_inner()
    }

    /// Waits until the server is idle: every queued write committed and durable, the
    /// wheel advanced to the clock, dispatch done with everything it can do now (see
    /// `RunningServer::settle`). Messages still on the network are not covered: wait
    /// for their effect (an event, a state) or fence them with a later message.
    /// Panics when the server cannot settle (a write failed, the writer or the
    /// dispatcher is gone): "nothing happened after settle" must not pass on a dead
    /// server.
    pub async fn settle(&self) {
        // Bounded: a server that never settles (a timer reported due that nothing fires)
        // fails the test with a message instead of hanging the suite.
        match tokio::time::timeout(Duration::from_secs(30), self.running().settle()).await {
            Err(_) => panic!("settle: the server did not settle within 30 s"),
            Ok(Err(e)) => panic!("settle: the server cannot settle: {e}"),
            Ok(Ok(())) => {}
        }
    }
}

/// The store's writer thread, held inside a write (see [`hold_writer`]).
pub struct HeldWriter {
    release: std::sync::mpsc::Sender<()>,
    held: tokio::task::JoinHandle<sendlater::domain::Result<()>>,
}

impl HeldWriter {
    /// Lets the writer go on; returns once the holding write is done.
    pub async fn release(self) {
        self.release.send(()).unwrap();
        self.held.await.unwrap().unwrap();
    }
}

/// Holds the server's store writer inside a write (nothing else is written, nothing
/// commits) until [`HeldWriter::release`]; returns once it is held.
pub async fn hold_writer(t: &TestServer) -> HeldWriter {
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let store = t.running().engine().store().clone();
    let held = tokio::spawn(async move {
        store
            .write(move |_| {
                let _ = entered_tx.send(());
                let _ = released.recv();
                Ok(())
            })
            .await
    });
    entered.await.unwrap();
    HeldWriter { release, held }
}

/// The delivery invariants every fault test ends with (after the server settled):
/// every item answered OK is present; no live item is stranded (each has a timer, waits
/// in dispatch's line, or is out at a connector); no cancelled or converted item
/// carries a send; the file passes `PRAGMA integrity_check`.
pub async fn assert_invariants(t: &TestServer, account: &str, acknowledged: &[String]) {
    t.settle().await;
    let mut client = t.client.clone();
    for id in acknowledged {
        client
            .get_item(item_ref(account, id))
            .await
            .unwrap_or_else(|s| panic!("item {id} answered OK is gone: {s}"));
    }
    let stranded = t.running().stranded_items().await.expect("read live items");
    assert!(
        stranded.is_empty(),
        "live items nothing will send: {stranded:?}"
    );
    const SENT_BUT_NOT: &str = "SELECT COUNT(*) FROM items WHERE state IN (5, 6) \
         AND (sent_at IS NOT NULL OR provider_message_id IS NOT NULL)";
    let db_path = t.db_path().to_string_lossy().into_owned();
    if db_path.starts_with("postgres") {
        let (client, conn) = tokio_postgres::connect(&db_path, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        let sent_but_not: i64 = client.query_one(SENT_BUT_NOT, &[]).await.unwrap().get(0);
        assert_eq!(sent_but_not, 0, "a cancelled or converted item was sent");
        return;
    }
    let db = rusqlite::Connection::open(t.db_path()).expect("open db");
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let sent_but_not: i64 = db.query_row(SENT_BUT_NOT, [], |r| r.get(0)).unwrap();
    assert_eq!(sent_but_not, 0, "a cancelled or converted item was sent");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// One HTTP/1.1 response: the status, the head (status line and headers) and the body.
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl std::fmt::Display for HttpResponse {
    /// The whole response as received: head, blank line, body.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\r\n\r\n{}", self.head, self.body)
    }
}

impl HttpResponse {
    /// The value of the header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 exchange over a new connection (`Connection: close`). `cookie`: a
/// whole `name=value` pair, or a console session id. `form`: an urlencoded body. Reads
/// the head, then a body of Content-Length bytes (chromedriver answers "Connection:
/// close" but keeps the connection open), or up to the close.
pub async fn http_exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> std::io::Result<HttpResponse> {
    http_exchange_with(addr, method, path, &[], cookie, form).await
}

/// As [`http_exchange`], with extra request headers; a `Host` among them replaces the
/// default one (`addr`).
pub async fn http_exchange_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    cookie: Option<&str>,
    form: Option<&str>,
) -> std::io::Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let host = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map_or_else(|| addr.to_string(), |(_, v)| (*v).to_owned());
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
    {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    match cookie {
        Some(c) if c.contains('=') => req.push_str(&format!("Cookie: {c}\r\n")),
        Some(c) => req.push_str(&format!("Cookie: sendlater_session={c}\r\n")),
        None => {}
    }
    let body = form.unwrap_or("");
    if form.is_some() {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the end of the head"));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut body = raw.split_off(head_end + 4);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {head:?}")))?;
    let mut r = HttpResponse {
        status,
        head,
        body: String::new(),
    };
    match r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::Error::other("closed before the end of the body"));
                }
                body.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut body).await?;
        }
    }
    r.body = String::from_utf8_lossy(&body).into_owned();
    Ok(r)
}

/// GETs `/metrics` from `addr` (the server's metrics port) and returns the response.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> String {
    let r = http_exchange(addr, "GET", "/metrics", None, None)
        .await
        .expect("metrics port");
    assert_eq!(r.status, 200, "{r}");
    r.to_string()
}

/// The value of one series (`name{labels}`) in a Prometheus exposition.
pub fn metric_value(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{series} missing in:\n{body}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Opens the test server's database file directly (as a second writer would), for
/// fault injection (triggers, corrupt rows) and checks of what is on disk.
pub fn raw(t: &TestServer) -> rusqlite::Connection {
    assert!(
        !t.db_path().to_string_lossy().starts_with("postgres"),
        "raw() opens the SQLite file: start this test with TestServer::start_sqlite_with"
    );
    let c = rusqlite::Connection::open(t.db_path()).expect("open db");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// The row id of an item id (`itm_42` -> 42).
pub fn numeric_id(item_id: &str) -> i64 {
    item_id.trim_start_matches("itm_").parse().expect("itm_N")
}
