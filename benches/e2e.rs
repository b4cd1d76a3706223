//! End-to-end load generator: drives the real `sendlater` binary (a subprocess on a
//! temporary SQLite file, default durability: WAL + synchronous=FULL) over real gRPC on
//! 127.0.0.1, and a no-op tonic server (this binary re-executed) as the baseline.
//!
//! ```text
//! cargo bench --bench e2e -- [SCENARIO ...] [--quick] [--big]
//! ```
//! Scenarios: schedule-unary schedule-batch dispatch recover memory cancel (default: all).
//! `--quick` shortens every scenario (all of them in a few minutes); `--big` adds the
//! 10M-item runs of `recover` and `memory`. Each figure is printed as one
//! `RESULT <scenario> key=value ...` line, and a human summary closes the run.
//! The server binary is the one cargo builds for this bench (`CARGO_BIN_EXE_sendlater`,
//! i.e. `target/release/sendlater`).
//!
//! `E2E_DB=postgres://USER@HOST:PORT/DB` runs every scenario on PostgreSQL instead: each
//! server gets a fresh database created on that server (with `psql`), and the cancel
//! scenario also reports the database's bytes per pending item (`pg_bytes_per_item`,
//! the growth over the empty schema, and `pg_total_bytes_per_item`, the whole database
//! over the items, as pg-boss's harness reports it).
//!
//! `E2E_NODES=N` (default 1; more only with `E2E_DB`) runs schedule-unary, schedule-batch
//! and dispatch on N `serve` processes sharing the scenario's fresh database (node ids
//! `n1`..`nN`, distinct ports): `n1` starts first, the others join and get their fair
//! share of the partitions, and the load starts once every node answers
//! `Cluster/GetClusterStatus` with the partitions shared fairly. The callers' calls go
//! round-robin over the N addresses (each caller's next call to the next node; the same
//! connections per node as one node gets; a call for another node's account is forwarded
//! there), every connector keeps one stream to every node (each node hands out its own
//! partitions' jobs), server CPU and written bytes are summed over the nodes, and those
//! RESULT lines carry `nodes=N` (scripts/bench-nodes.sh compares 3 with 1).
//! `E2E_CALLS=one` sends the callers' calls to the first node only (the connectors still
//! stream from every node): most calls then take the forwarding hop.
//! `E2E_ITEMS=N` sets dispatch's item count (default 100k with `--quick`, else 1M).

use std::io::{BufRead, BufReader};
use std::net::TcpStream as StdTcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use sendlater::pb;
use sendlater::pb::dispatch_client::DispatchClient;
use sendlater::pb::scheduler_client::SchedulerClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const SENDLATER_BIN: &str = env!("CARGO_BIN_EXE_sendlater");

/// The server binary: `E2E_SERVER_BIN` when set (to measure another build, e.g. the
/// previous commit, with the same harness in the same run), else the one cargo built.
fn server_bin() -> String {
    std::env::var("E2E_SERVER_BIN").unwrap_or_else(|_| SENDLATER_BIN.to_owned())
}
/// Accounts the load is spread over (the default pending quota is 1M per account).
const ACCOUNTS: u64 = 64;
const UNARY_CLIENTS: usize = 64;

// ---------------------------------------------------------------------------------------
// Options, results

#[derive(Clone)]
struct Opts {
    quick: bool,
    big: bool,
    scenarios: Vec<String>,
}

const ALL: &[&str] = &[
    "schedule-unary",
    "schedule-batch",
    "dispatch",
    "recover",
    "memory",
    "cancel",
];

/// Every RESULT line printed, for the summary.
static RESULTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn result(scenario: &str, kv: &[(&str, String)]) {
    let mut line = format!("RESULT {scenario}");
    for (k, v) in kv {
        line.push_str(&format!(" {k}={v}"));
    }
    println!("{line}");
    RESULTS.lock().unwrap().push(line);
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}
fn f3(x: f64) -> String {
    format!("{x:.3}")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}
fn ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}
fn ts_us(t: &Option<Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

/// Percentile of a sorted slice.
fn pct<T: Copy>(sorted: &[T], p: f64) -> T {
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Deterministic randomness for the load: a seeded `SmallRng`, the same every run.
fn seeded(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

// ---------------------------------------------------------------------------------------
// Requests

/// A ~300-byte text body.
fn body() -> String {
    let s = "Hello, thanks for reaching out. We looked into the billing issue you reported \
             and the duplicate charge has been refunded; it should appear on your statement \
             within three to five business days. If anything else looks off, just reply to \
             this email and we will pick it up right away. Kind regards, the support team.";
    let mut b = s.to_owned();
    b.truncate(300);
    b
}

fn email_content(i: u64) -> pb::EmailContent {
    pb::EmailContent {
        to: vec![format!("client{}@example.com", i % 10_000)],
        subject: "Re: duplicate charge on my invoice".into(),
        text_body: body(),
        in_reply_to: "<msg-1@helpdesk.example>".into(),
        ..Default::default()
    }
}

fn schedule_req(i: u64, send_at: i64) -> pb::ScheduleRequest {
    pb::ScheduleRequest {
        account_id: format!("acct-{}", i % ACCOUNTS),
        ticket_id: format!("T{i}"),
        channel: pb::Channel::Email as i32,
        author_id: "agent-7".into(),
        content: Some(pb::schedule_request::Content::Email(email_content(i))),
        send_at: Some(ts(send_at)),
        on_activity: 0,
        request_id: String::new(),
        ..Default::default()
    }
}

/// With `E2E_NODES` set (scripts/bench-nodes.sh sets it for one node too, so both sides
/// of a ratio load alike), every entry of a batch gets the account of its first: a
/// batch commits all or nothing on one node, so one whose accounts are owned by several
/// nodes is refused.
fn one_account_per_batch(entries: &mut [pb::BatchEntry]) {
    if std::env::var_os("E2E_NODES").is_none() {
        return;
    }
    if let Some(account) = entries.first().map(|e| e.account_id.clone()) {
        for e in entries.iter_mut() {
            e.account_id.clone_from(&account);
        }
    }
}

fn batch_entry(i: u64, send_at: i64) -> pb::BatchEntry {
    pb::BatchEntry {
        kind: pb::Kind::Reply as i32,
        account_id: format!("acct-{}", i % ACCOUNTS),
        ticket_id: format!("T{i}"),
        channel: pb::Channel::Email as i32,
        author_id: "agent-7".into(),
        content: Some(pb::batch_entry::Content::Email(email_content(i))),
        send_at: Some(ts(send_at)),
        on_activity: 0,
        request_id: String::new(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Server processes

struct ServerProc {
    child: Child,
    url: String,
    spawned: Instant,
    /// When the "recovered" line arrived, and the line.
    recovered: Arc<Mutex<Option<(Instant, String)>>>,
    what: &'static str,
    /// What `--db` got (a file or a PostgreSQL URL; empty for the no-op server).
    db: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `E2E_NODES`: how many nodes share the database (1 without `E2E_DB`).
fn node_count() -> usize {
    let n = std::env::var("E2E_NODES")
        .ok()
        .map(|v| v.parse::<usize>().expect("E2E_NODES is a number of nodes"))
        .unwrap_or(1);
    assert!(n >= 1, "E2E_NODES must be at least 1");
    assert!(
        n == 1 || pg_base().is_some(),
        "E2E_NODES above 1 needs E2E_DB=postgres://... (several nodes share one PostgreSQL)"
    );
    n
}

/// The PostgreSQL server of `E2E_DB`, if set.
fn pg_base() -> Option<String> {
    std::env::var("E2E_DB")
        .ok()
        .filter(|u| u.starts_with("postgres"))
}

/// `psql` from `PGBIN` or Debian's PostgreSQL 15.
fn psql() -> String {
    std::env::var("PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()) + "/psql"
}

/// Runs one SQL statement on `url` with psql; its output, trimmed.
fn psql_one(url: &str, sql: &str) -> String {
    let out = Command::new(psql())
        .args([url, "-XAtc", sql])
        .output()
        .unwrap_or_else(|e| panic!("run psql: {e}"));
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What `--db` gets for the database `db` names: the file, or (with `E2E_DB`) a fresh
/// PostgreSQL database named after the file's stem.
fn db_arg(db: &Path) -> String {
    let Some(base) = pg_base() else {
        return db.display().to_string();
    };
    // The same file names the same database (a restart on it, as `recover` does).
    static MADE: Mutex<Vec<(std::path::PathBuf, String)>> = Mutex::new(Vec::new());
    if let Some((_, url)) = MADE.lock().unwrap().iter().find(|(p, _)| p == db) {
        return url.clone();
    }
    let stem = db.file_stem().and_then(|s| s.to_str()).unwrap_or("db");
    let name = format!(
        "e2e_{}_{}_{}",
        stem.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id(),
        now_ms()
    );
    psql_one(&base, &format!("CREATE DATABASE {name}"));
    let cut = base.rfind('/').expect("a database URL ends with /DBNAME");
    let url = format!("{}/{name}", &base[..cut]);
    MADE.lock().unwrap().push((db.to_path_buf(), url.clone()));
    url
}

/// The size of the server's PostgreSQL database (`None` on SQLite).
fn pg_db_size(db_url: &str) -> Option<f64> {
    db_url.starts_with("postgres").then(|| {
        psql_one(db_url, "SELECT pg_database_size(current_database())")
            .parse()
            .expect("a size")
    })
}

impl ServerProc {
    fn spawn_sendlater(db: &Path) -> ServerProc {
        Self::spawn_node(db, None)
    }

    /// A `serve` on `db` (the same path: the same database), with `--node-id` if given.
    fn spawn_node(db: &Path, node_id: Option<&str>) -> ServerProc {
        let db = db_arg(db);
        let port = free_port();
        let mut cmd = Command::new(server_bin());
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--console-listen",
            "off",
        ]);
        if let Some(id) = node_id {
            cmd.args(["--node-id", id]);
        }
        cmd.arg("--db").arg(&db).env(
            "RUST_LOG",
            std::env::var("E2E_SERVER_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut p = Self::spawn(cmd, port, "sendlater");
        p.db = db;
        p
    }

    fn spawn_noop() -> ServerProc {
        let port = free_port();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["__noop-server", &port.to_string()]);
        Self::spawn(cmd, port, "noop")
    }

    fn spawn(mut cmd: Command, port: u16, what: &'static str) -> ServerProc {
        let spawned = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let recovered = Arc::new(Mutex::new(None));
        let stderr = child.stderr.take().unwrap();
        let rec = recovered.clone();
        let echo = std::env::var_os("E2E_SERVER_STDERR").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("recovered") && line.contains("timers=") {
                    *rec.lock().unwrap() = Some((Instant::now(), line.clone()));
                }
                if line.contains("ERROR") || line.contains("WARN") || echo {
                    eprintln!("  [{what} stderr] {line}");
                }
            }
        });
        ServerProc {
            child,
            url: format!("http://127.0.0.1:{port}"),
            spawned,
            recovered,
            what,
            db: String::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the port accepts and the health check answers SERVING; returns the
    /// time since spawn of (port accepts, health answers).
    async fn wait_serving(&mut self, limit: Duration) -> (Duration, Duration) {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + limit;
        let accepted = loop {
            if StdTcpStream::connect(&addr).is_ok() {
                break self.spawned.elapsed();
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("{} exited during start-up: {st}", self.what);
            }
            assert!(Instant::now() < deadline, "{} never listened", self.what);
            std::thread::sleep(Duration::from_micros(500));
        };
        loop {
            if let Ok(ch) = Endpoint::from_shared(self.url.clone())
                .unwrap()
                .connect()
                .await
            {
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                if let Ok(r) = h
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    if r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                    {
                        return (accepted, self.spawned.elapsed());
                    }
                }
            }
            assert!(Instant::now() < deadline, "{} never served", self.what);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// (time since spawn, the line) of the "recovered ..." log line.
    fn recovered(&self) -> Option<(Duration, String)> {
        self.recovered
            .lock()
            .unwrap()
            .as_ref()
            .map(|(at, l)| (at.duration_since(self.spawned), l.clone()))
    }

    fn rss_bytes(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// CPU time (user + system) the process used so far, in seconds.
    /// Bytes the server process has passed to write(2)/pwrite(2) so far (WAL frames,
    /// checkpoint copies): divided by operations, the storage cost of one.
    fn written_bytes(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/io", self.pid())).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("wchar: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn cpu_secs(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let rest = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    /// SIGTERM, then wait (graceful shutdown commits); SIGKILL after 60 s.
    fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            if Instant::now() > deadline {
                eprintln!("  {} did not stop in 60 s; killing", self.what);
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A panicking bench must not leave a server running.
impl Drop for ServerProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The sendlater nodes of one scenario: one process, or (`E2E_NODES`) several on one
/// PostgreSQL database sharing the partitions.
struct Nodes {
    procs: Vec<ServerProc>,
}

impl Nodes {
    /// Starts `node_count()` nodes on `db` and waits until they serve: on SQLite, the
    /// health check; on PostgreSQL, until every node answers `GetClusterStatus` with
    /// the partitions shared fairly (no node above its share), so no call of the load
    /// meets a node changing its set.
    async fn start(db: &Path) -> Nodes {
        let n = node_count();
        if pg_base().is_none() {
            let mut s = ServerProc::spawn_sendlater(db);
            s.wait_serving(Duration::from_secs(60)).await;
            return Nodes { procs: vec![s] };
        }
        // n1 first, so it creates the schema; then the others.
        let mut procs = vec![ServerProc::spawn_node(db, Some("n1"))];
        procs[0].wait_serving(Duration::from_secs(60)).await;
        wait_shared(&procs[..1], 1).await;
        for k in 2..=n {
            let mut s = ServerProc::spawn_node(db, Some(&format!("n{k}")));
            s.wait_serving(Duration::from_secs(60)).await;
            procs.push(s);
        }
        let shares = wait_shared(&procs, n).await;
        if n > 1 {
            eprintln!("  {n} nodes on one database, partitions {shares}");
        }
        Nodes { procs }
    }

    fn count(&self) -> usize {
        self.procs.len()
    }

    /// Every node's address (the connectors stream from each).
    fn urls(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.url.clone()).collect()
    }

    /// The addresses the callers' calls go round-robin over: every node's, or only the
    /// first node's with `E2E_CALLS=one` (most calls then take the forwarding hop).
    fn call_urls(&self) -> Vec<String> {
        if calls_to() == "one" {
            vec![self.procs[0].url.clone()]
        } else {
            self.urls()
        }
    }

    /// CPU seconds of every node.
    fn cpu_secs(&self) -> f64 {
        self.procs.iter().map(ServerProc::cpu_secs).sum()
    }

    /// Bytes written by every node.
    fn written_bytes(&self) -> u64 {
        self.procs.iter().map(ServerProc::written_bytes).sum()
    }

    /// The RSS of every node.
    fn rss_bytes(&self) -> u64 {
        self.procs.iter().map(ServerProc::rss_bytes).sum()
    }

    /// Stops every node, the last started first.
    fn stop(mut self) {
        while let Some(s) = self.procs.pop() {
            s.stop();
        }
    }
}

/// `E2E_CALLS`: `all` nodes (default) or `one` (the first).
fn calls_to() -> &'static str {
    match std::env::var("E2E_CALLS").as_deref() {
        Err(_) | Ok("all") => "all",
        Ok("one") => "one",
        Ok(other) => panic!("E2E_CALLS is all or one, not {other:?}"),
    }
}

/// Polls `GetClusterStatus` on every node of `procs` until each answers, `nodes` nodes own
/// every partition between them, none above its fair share;
/// returns the shares (`n1=22 n2=21 ...`).
async fn wait_shared(procs: &[ServerProc], nodes: usize) -> String {
    use sendlater::pb::cluster_client::ClusterClient;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        let mut settled = 0;
        let mut shares = String::new();
        for p in procs {
            let answer = match Endpoint::from_shared(p.url.clone())
                .unwrap()
                .connect()
                .await
            {
                Ok(ch) => ClusterClient::new(ch)
                    .get_cluster_status(pb::GetClusterStatusRequest {})
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match answer {
                Ok(st) => {
                    let all = st.partitions.len();
                    let counts: Vec<usize> = st
                        .nodes
                        .iter()
                        .filter(|nd| !nd.partitions.is_empty())
                        .map(|nd| nd.partitions.len())
                        .collect();
                    let total: usize = counts.iter().sum();
                    // Every node at most its share, ceil(all / nodes) (64 over three:
                    // 22, 22, 20), and every partition owned.
                    let fair = counts.len() == nodes
                        && total == all
                        && all > 0
                        && counts.iter().all(|&c| c <= all.div_ceil(nodes));
                    if fair {
                        settled += 1;
                        shares = st
                            .nodes
                            .iter()
                            .map(|nd| format!("{}={}", nd.node_id, nd.partitions.len()))
                            .collect::<Vec<_>>()
                            .join(" ");
                    } else {
                        last = format!("{}: shares {counts:?} of {all}", p.url);
                    }
                }
                Err(e) => last = format!("{}: {e}", p.url),
            }
        }
        if settled == procs.len() {
            return shares;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never shared the partitions fairly: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `per_node` connections to each of `urls`, grouped by node: `[node][connection]`.
async fn node_channels(urls: &[String], per_node: usize) -> Vec<Vec<Channel>> {
    let mut v = Vec::new();
    for u in urls {
        v.push(channels(u, per_node).await);
    }
    v
}

/// One connection to each of `urls`.
async fn one_per_node(urls: &[String]) -> Vec<Channel> {
    let mut v = Vec::new();
    for u in urls {
        v.push(channel(u).await);
    }
    v
}

/// A caller's Scheduler clients, one per node (its connection `conn` to each), and the
/// round-robin over them: call k goes to node `(first + k) % nodes`.
struct RoundRobin {
    clients: Vec<SchedulerClient<Channel>>,
    next: usize,
}

impl RoundRobin {
    fn new(chans: &[Vec<Channel>], conn: usize, first: usize) -> RoundRobin {
        let clients = chans
            .iter()
            .map(|c| {
                SchedulerClient::new(c[conn % c.len()].clone())
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20)
            })
            .collect::<Vec<_>>();
        RoundRobin {
            next: first % clients.len(),
            clients,
        }
    }

    /// The client for the next call.
    fn next(&mut self) -> &mut SchedulerClient<Channel> {
        let i = self.next;
        self.next = (i + 1) % self.clients.len();
        &mut self.clients[i]
    }
}

async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect")
}

async fn channels(url: &str, n: usize) -> Vec<Channel> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(channel(url).await);
    }
    v
}

// ---------------------------------------------------------------------------------------
// The no-op baseline server (this binary, re-executed with `__noop-server PORT`)

struct Noop {
    item: pb::ScheduledItem,
}

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for Noop {
    async fn schedule_message(
        &self,
        _r: tonic::Request<pb::ScheduleRequest>,
    ) -> Result<tonic::Response<pb::ScheduledItem>, tonic::Status> {
        Ok(tonic::Response::new(self.item.clone()))
    }
    async fn schedule_ticket(
        &self,
        _r: tonic::Request<pb::ScheduleRequest>,
    ) -> Result<tonic::Response<pb::ScheduledItem>, tonic::Status> {
        Ok(tonic::Response::new(self.item.clone()))
    }
    async fn schedule_batch(
        &self,
        r: tonic::Request<pb::ScheduleBatchRequest>,
    ) -> Result<tonic::Response<pb::ScheduleBatchResponse>, tonic::Status> {
        let n = r.into_inner().entries.len();
        Ok(tonic::Response::new(pb::ScheduleBatchResponse {
            items: vec![self.item.clone(); n],
        }))
    }
    async fn get_item(
        &self,
        _r: tonic::Request<pb::ItemRef>,
    ) -> Result<tonic::Response<pb::ScheduledItem>, tonic::Status> {
        Ok(tonic::Response::new(self.item.clone()))
    }
    async fn send_now(
        &self,
        _r: tonic::Request<pb::ItemRef>,
    ) -> Result<tonic::Response<pb::ScheduledItem>, tonic::Status> {
        Ok(tonic::Response::new(self.item.clone()))
    }
    async fn cancel(
        &self,
        _r: tonic::Request<pb::ItemRef>,
    ) -> Result<tonic::Response<pb::ScheduledItem>, tonic::Status> {
        Ok(tonic::Response::new(self.item.clone()))
    }
    async fn reschedule(
        &self,
        _r: tonic::Request<pb::RescheduleRequest>,
    ) -> Result<tonic::Response<pb::ScheduledItem>, tonic::Status> {
        Ok(tonic::Response::new(self.item.clone()))
    }
    async fn record_ticket_activity(
        &self,
        _r: tonic::Request<pb::RecordTicketActivityRequest>,
    ) -> Result<tonic::Response<pb::RecordTicketActivityResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
    async fn list_scheduled(
        &self,
        _r: tonic::Request<pb::ListScheduledRequest>,
    ) -> Result<tonic::Response<pb::ListScheduledResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
    async fn list_deferred_tickets(
        &self,
        _r: tonic::Request<pb::ListDeferredTicketsRequest>,
    ) -> Result<tonic::Response<pb::ListDeferredTicketsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
    async fn get_ticket_timeline(
        &self,
        _r: tonic::Request<pb::GetTicketTimelineRequest>,
    ) -> Result<tonic::Response<pb::GetTicketTimelineResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
    type WatchEventsStream = tokio_stream::Empty<Result<pb::ItemEvent, tonic::Status>>;
    async fn watch_events(
        &self,
        _r: tonic::Request<pb::WatchEventsRequest>,
    ) -> Result<tonic::Response<Self::WatchEventsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
    async fn set_business_hours(
        &self,
        _r: tonic::Request<pb::BusinessHours>,
    ) -> Result<tonic::Response<pb::BusinessHours>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
    async fn get_business_hours(
        &self,
        _r: tonic::Request<pb::GetBusinessHoursRequest>,
    ) -> Result<tonic::Response<pb::BusinessHours>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
    async fn pause_dispatch(
        &self,
        _r: tonic::Request<pb::DispatchControlRequest>,
    ) -> Result<tonic::Response<pb::DispatchControls>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
    async fn resume_dispatch(
        &self,
        _r: tonic::Request<pb::DispatchControlRequest>,
    ) -> Result<tonic::Response<pb::DispatchControls>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
    async fn set_rate_limit(
        &self,
        _r: tonic::Request<pb::SetRateLimitRequest>,
    ) -> Result<tonic::Response<pb::DispatchControls>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
    async fn get_dispatch_controls(
        &self,
        _r: tonic::Request<pb::GetDispatchControlsRequest>,
    ) -> Result<tonic::Response<pb::DispatchControls>, tonic::Status> {
        Err(tonic::Status::unimplemented("noop"))
    }
}

/// What sendlater answers to a ScheduleMessage, as near as makes no difference in size.
fn fixed_item() -> pb::ScheduledItem {
    let r = schedule_req(1, now_ms() + 3_600_000);
    pb::ScheduledItem {
        item_id: "1234567".into(),
        account_id: r.account_id,
        ticket_id: r.ticket_id,
        kind: pb::Kind::Reply as i32,
        channel: r.channel,
        author_id: r.author_id,
        content: r.content.map(|c| match c {
            pb::schedule_request::Content::Email(e) => pb::scheduled_item::Content::Email(e),
            pb::schedule_request::Content::Chat(c) => pb::scheduled_item::Content::Chat(c),
        }),
        send_at: r.send_at,
        created_at: Some(ts(now_ms())),
        updated_at: Some(ts(now_ms())),
        state: pb::State::Pending as i32,
        on_activity: pb::OnActivity::ConvertToNote as i32,
        ..Default::default()
    }
}

fn run_noop_server(port: u16) {
    // The same runtime shape as the sendlater binary (#[tokio::main]: one worker per core).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<pb::scheduler_server::SchedulerServer<Noop>>()
            .await;
        let svc = pb::scheduler_server::SchedulerServer::new(Noop { item: fixed_item() })
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20);
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(svc)
            .serve(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// Load helpers

struct UnaryOutcome {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// `UNARY_CLIENTS` tasks over `conns` HTTP/2 connections to each of `urls`,
/// ScheduleMessage back to back, each task's calls round-robin over the nodes.
/// Requests started during the first `warmup` are not counted.
async fn unary_load(
    urls: &[String],
    conns: usize,
    warmup: Duration,
    dur: Duration,
) -> UnaryOutcome {
    let chans = node_channels(urls, conns).await;
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + dur;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..UNARY_CLIENTS {
        let mut clients = RoundRobin::new(&chans, t % conns, t);
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut rng = seeded(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
            let base = schedule_req(t as u64, 0);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let mut req = base.clone();
                req.ticket_id = format!("T{}", rng.random_range(0..100_000u32));
                req.send_at = Some(ts(now_ms() + 60_000 + rng.random_range(0..86_400_000i64)));
                match clients.next().schedule_message(req).await {
                    Ok(_) => {
                        let done = Instant::now();
                        if t0 >= measure_from && done <= end {
                            lat.push((done - t0).as_micros() as u32);
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("  schedule_message error: {e}");
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    UnaryOutcome {
        rps: all.len() as f64 / dur.as_secs_f64(),
        p50_ms: if all.is_empty() {
            0.0
        } else {
            pct(&all, 50.0) as f64 / 1000.0
        },
        p99_ms: if all.is_empty() {
            0.0
        } else {
            pct(&all, 99.0) as f64 / 1000.0
        },
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Loads `n` items with ScheduleBatch (`batch` entries each, `conc` requests in flight
/// over 2 connections to each of `urls`, round-robin); `send_at(i)` places item `i`.
/// Returns the elapsed time and, when `keep` is set, every (account, item_id).
async fn batch_load(
    urls: &[String],
    first: u64,
    n: u64,
    batch: u64,
    conc: usize,
    send_at: Arc<dyn Fn(u64) -> i64 + Send + Sync>,
    keep: bool,
) -> (Duration, Vec<(String, String)>) {
    let chans = node_channels(urls, 2).await;
    let next = Arc::new(AtomicU64::new(first));
    let end = first + n;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..conc {
        let mut clients = RoundRobin::new(&chans, t % 2, t);
        let next = next.clone();
        let send_at = send_at.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let lo = next.fetch_add(batch, Ordering::Relaxed);
                if lo >= end {
                    break;
                }
                let hi = (lo + batch).min(end);
                let mut entries: Vec<pb::BatchEntry> =
                    (lo..hi).map(|i| batch_entry(i, send_at(i))).collect();
                one_account_per_batch(&mut entries);
                let r = clients
                    .next()
                    .schedule_batch(pb::ScheduleBatchRequest { entries })
                    .await
                    .unwrap_or_else(|e| panic!("schedule_batch: {e}"))
                    .into_inner();
                if keep {
                    ids.extend(r.items.into_iter().map(|it| (it.account_id, it.item_id)));
                }
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    (start.elapsed(), ids)
}

/// Schedules at about `rate` per second (unary, 256 tasks, each task's calls round-robin
/// over `chans`, one connection per node) until `stop`; returns the count.
fn background_schedules(
    chans: Vec<Channel>,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let tasks = 256u64; // enough in flight for the rate at tens of ms per commit
        let per_task_every = Duration::from_secs_f64(tasks as f64 / rate as f64);
        let mut hs = Vec::new();
        let chans: Vec<Vec<Channel>> = chans.into_iter().map(|c| vec![c]).collect();
        for t in 0..tasks {
            let mut clients = RoundRobin::new(&chans, 0, t as usize);
            let stop = stop.clone();
            hs.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(per_task_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut rng = seeded(t + 77);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let i = rng.random_range(0..1u64 << 40);
                    // Due later today: they add write load, not jobs, during the run.
                    let req =
                        schedule_req(i, now_ms() + 3_600_000 + rng.random_range(0..3_600_000i64));
                    if clients.next().schedule_message(req).await.is_ok() {
                        n += 1;
                    }
                }
                n
            }));
        }
        let mut n = 0;
        for h in hs {
            n += h.await.unwrap();
        }
        n
    })
}

/// A no-op connector: one Dispatch stream to each of `chans` (every node; each hands out
/// its own partitions' jobs), acks every job at once, records lateness (µs) of each job.
struct Connector {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<i64>>>,
}

fn connector(
    chans: Vec<Channel>,
    id: usize,
    max_in_flight: u32,
    received: Arc<AtomicU64>,
    last_at: Arc<Mutex<Instant>>,
) -> Connector {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = chans
        .into_iter()
        .map(|chan| {
            connector_stream(
                chan,
                id,
                max_in_flight,
                received.clone(),
                last_at.clone(),
                stop.clone(),
            )
        })
        .collect();
    Connector { stop, tasks }
}

/// One of a connector's streams, until `st` is set or the stream ends.
fn connector_stream(
    chan: Channel,
    id: usize,
    max_in_flight: u32,
    received: Arc<AtomicU64>,
    last_at: Arc<Mutex<Instant>>,
    st: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<i64>> {
    tokio::spawn(async move {
        let mut client = DispatchClient::new(chan)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let (tx, rx) = mpsc::channel::<pb::ConnectorMessage>(max_in_flight as usize * 2);
        tx.send(pb::ConnectorMessage {
            msg: Some(pb::connector_message::Msg::Hello(pb::Hello {
                connector_id: format!("bench-{id}"),
                channels: vec![pb::Channel::Email as i32, pb::Channel::Chat as i32],
                max_in_flight,
            })),
        })
        .await
        .unwrap();
        let mut jobs = client
            .connect(ReceiverStream::new(rx))
            .await
            .expect("Dispatch.Connect")
            .into_inner();
        let mut lateness = Vec::with_capacity(1 << 20);
        loop {
            let msg = tokio::select! {
                m = jobs.message() => m,
                _ = async { while !st.load(Ordering::Relaxed) { tokio::time::sleep(Duration::from_millis(20)).await } } => break,
            };
            let Ok(Some(job)) = msg else { break };
            let at = now_us();
            if let Some(item) = &job.item {
                lateness.push(at - ts_us(&item.send_at));
            }
            received.fetch_add(1, Ordering::Relaxed);
            *last_at.lock().unwrap() = Instant::now();
            let ack = pb::ConnectorMessage {
                msg: Some(pb::connector_message::Msg::Ack(pb::Ack {
                    job_id: job.job_id,
                    provider_message_id: "bench".into(),
                })),
            };
            if tx.send(ack).await.is_err() {
                break;
            }
        }
        lateness
    })
}

impl Connector {
    async fn finish(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut lateness = Vec::new();
        for t in self.tasks {
            lateness.extend(t.await.unwrap());
        }
        lateness
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sendlater-e2e-")
        .tempdir()
        .expect("temp dir")
}

// ---------------------------------------------------------------------------------------
// Scenarios

async fn scenario_schedule_unary(o: &Opts) {
    let dur = Duration::from_secs(if o.quick { 5 } else { 20 });
    let warmup = Duration::from_secs(if o.quick { 1 } else { 2 });
    let dir = tempdir();
    for conns in [1usize, 4] {
        let s = Nodes::start(&dir.path().join(format!("unary{conns}.db"))).await;
        let nodes = s.count();
        let cpu0 = s.cpu_secs();
        let real = unary_load(&s.call_urls(), conns, warmup, dur).await;
        let cpu = s.cpu_secs() - cpu0;
        s.stop();
        let mut b = ServerProc::spawn_noop();
        b.wait_serving(Duration::from_secs(30)).await;
        let bcpu0 = b.cpu_secs();
        let base = unary_load(&[b.url.clone()], conns, warmup, dur).await;
        let bcpu = b.cpu_secs() - bcpu0;
        b.stop();
        let run = (warmup + dur).as_secs_f64();
        result(
            "schedule-unary",
            &[
                ("rps", f1(real.rps)),
                ("p50_ms", f3(real.p50_ms)),
                ("p99_ms", f3(real.p99_ms)),
                ("baseline_rps", f1(base.rps)),
                ("ratio", f3(real.rps / base.rps)),
                ("conns", conns.to_string()),
                ("clients", UNARY_CLIENTS.to_string()),
                ("baseline_p50_ms", f3(base.p50_ms)),
                ("baseline_p99_ms", f3(base.p99_ms)),
                ("server_cpu_cores", f3(cpu / run)),
                ("baseline_cpu_cores", f3(bcpu / run)),
                ("errors", (real.errors + base.errors).to_string()),
                ("nodes", nodes.to_string()),
                ("calls", calls_to().into()),
            ],
        );
    }
}

async fn scenario_schedule_batch(o: &Opts) {
    let dur = Duration::from_secs(if o.quick { 4 } else { 10 });
    let dir = tempdir();
    for batch in [1000u64, 100] {
        let s = Nodes::start(&dir.path().join(format!("batch{batch}.db"))).await;
        // 4 batches in flight: the group-commit writer can take the next one while
        // a response is being encoded.
        let conc = 4usize;
        let chans = node_channels(&s.call_urls(), 2).await;
        let written0 = s.written_bytes();
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let warm_end = start + Duration::from_secs(1);
        let end = warm_end + dur;
        let counted = Arc::new(AtomicU64::new(0));
        let t0 = now_ms();
        let mut tasks = Vec::new();
        for t in 0..conc {
            let mut clients = RoundRobin::new(&chans, t % 2, t);
            let next = next.clone();
            let counted = counted.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let lo = next.fetch_add(batch, Ordering::Relaxed);
                    let mut entries: Vec<pb::BatchEntry> = (lo..lo + batch)
                        // Spread over the next 24 h.
                        .map(|i| batch_entry(i, t0 + 60_000 + ((i * 7919) % 86_400_000) as i64))
                        .collect();
                    one_account_per_batch(&mut entries);
                    clients
                        .next()
                        .schedule_batch(pb::ScheduleBatchRequest { entries })
                        .await
                        .unwrap_or_else(|e| panic!("schedule_batch: {e}"));
                    let done = Instant::now();
                    if began >= warm_end && done <= end {
                        counted.fetch_add(batch, Ordering::Relaxed);
                        lat.push((done - began).as_micros() as u64);
                    }
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        lat.sort_unstable();
        let written = s.written_bytes() - written0;
        let scheduled = next.load(Ordering::Relaxed);
        let nodes = s.count();
        s.stop();
        let rps = counted.load(Ordering::Relaxed) as f64 / dur.as_secs_f64();
        result(
            "schedule-batch",
            &[
                ("rps", f1(rps)),
                ("batch", batch.to_string()),
                ("in_flight", conc.to_string()),
                ("batch_p50_ms", f3(pct(&lat, 50.0) as f64 / 1000.0)),
                ("batch_p99_ms", f3(pct(&lat, 99.0) as f64 / 1000.0)),
                (
                    "written_bytes_per_item",
                    f1(written as f64 / scheduled.max(1) as f64),
                ),
                ("nodes", nodes.to_string()),
                ("calls", calls_to().into()),
            ],
        );
    }
}

async fn scenario_dispatch(o: &Opts) {
    let n: u64 = std::env::var("E2E_ITEMS")
        .ok()
        .map(|v| v.parse().expect("E2E_ITEMS is a number of items"))
        .unwrap_or(if o.quick { 100_000 } else { 1_000_000 });
    let window_ms: i64 = if o.quick { 10_000 } else { 60_000 };
    let dir = tempdir();
    let s = Nodes::start(&dir.path().join("dispatch.db")).await;
    let all = s.urls();
    let urls = s.call_urls();

    // Calibrate: the first 2% go to tomorrow (they stay pending throughout); their rate
    // tells how long the rest takes to load, so the window starts after loading ends.
    let calib = n / 50;
    let tomorrow = now_ms() + 86_400_000;
    let (el, _) = batch_load(&urls, 0, calib, 1000, 4, Arc::new(move |_| tomorrow), false).await;
    let rate = calib as f64 / el.as_secs_f64();
    let rest = n - calib;
    let lead_ms = ((rest as f64 / rate) * 2.5 * 1000.0) as i64 + 5_000;
    let window_start = now_ms() + lead_ms;
    eprintln!(
        "  dispatch: loading {rest} items due over {window_ms} ms from +{lead_ms} ms ({rate:.0}/s)"
    );
    let w = window_ms as u64;
    let (el, _) = batch_load(
        &urls,
        calib,
        rest,
        1000,
        4,
        // Never less than 2 s ahead (validation refuses the past, should loading overrun).
        Arc::new(move |i| {
            (window_start + ((i.wrapping_mul(7919)) % w) as i64).max(now_ms() + 2_000)
        }),
        false,
    )
    .await;
    let load_rate = rest as f64 / el.as_secs_f64();
    let slack = window_start - now_ms();
    if slack < 0 {
        eprintln!(
            "  WARNING: loading overran the window start by {} ms",
            -slack
        );
    }
    let rss_loaded = s.rss_bytes();

    // Phase A: on time. Two connectors, acking at once; 5k/s new schedules meanwhile.
    let received = Arc::new(AtomicU64::new(0));
    let last_at = Arc::new(Mutex::new(Instant::now()));
    let conns = vec![
        connector(
            one_per_node(&all).await,
            0,
            1000,
            received.clone(),
            last_at.clone(),
        ),
        connector(
            one_per_node(&all).await,
            1,
            1000,
            received.clone(),
            last_at.clone(),
        ),
    ];
    let bg_stop = Arc::new(AtomicBool::new(false));
    let bg = background_schedules(one_per_node(&urls).await, 5_000, bg_stop.clone());
    let cpu0 = s.cpu_secs();
    let a_start = Instant::now();
    let deadline_ms = window_start + window_ms + 60_000;
    while received.load(Ordering::Relaxed) < rest && now_ms() < deadline_ms {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got_a = received.load(Ordering::Relaxed);
    let a_secs = a_start.elapsed().as_secs_f64();
    let a_cpu = s.cpu_secs() - cpu0;
    let mut late = Vec::new();
    for c in conns {
        late.extend(c.finish().await);
    }
    late.sort_unstable();
    let ms = |us: i64| us as f64 / 1000.0;

    // Phase B: drain. No connector; a backlog of `n` items that are all overdue by the
    // time it is loaded; then two connectors connect and we time the drain.
    // Due as soon as written (send_at may not lie in the past): overdue once loaded.
    // (5 s ahead at build time: a batch may queue behind the writer before validation.)
    let (_el, _) = batch_load(&urls, n, n, 1000, 4, Arc::new(|_| now_ms() + 5_000), false).await;
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    let received_b = Arc::new(AtomicU64::new(0));
    let last_b = Arc::new(Mutex::new(Instant::now()));
    let b_start = Instant::now();
    let cpu1 = s.cpu_secs();
    let written1 = s.written_bytes();
    let conns = vec![
        connector(
            one_per_node(&all).await,
            2,
            1000,
            received_b.clone(),
            last_b.clone(),
        ),
        connector(
            one_per_node(&all).await,
            3,
            1000,
            received_b.clone(),
            last_b.clone(),
        ),
    ];
    let limit = Instant::now() + Duration::from_secs(if o.quick { 120 } else { 600 });
    while received_b.load(Ordering::Relaxed) < n && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got_b = received_b.load(Ordering::Relaxed);
    let b_secs = last_b.lock().unwrap().duration_since(b_start).as_secs_f64();
    let b_cpu = s.cpu_secs() - cpu1;
    let b_written = s.written_bytes() - written1;
    for c in conns {
        c.finish().await;
    }
    bg_stop.store(true, Ordering::Relaxed);
    let bg_n = bg.await.unwrap();
    let nodes = s.count();
    s.stop();
    let drain = got_b as f64 / b_secs;
    result(
        "dispatch",
        &[
            ("pending", n.to_string()),
            ("jobs_per_s", f1(drain)),
            ("lateness_p50_ms", f3(ms(pct(&late, 50.0)))),
            ("lateness_p99_ms", f3(ms(pct(&late, 99.0)))),
            ("lateness_max_ms", f3(ms(*late.last().unwrap()))),
            ("ontime_jobs", got_a.to_string()),
            ("ontime_due", rest.to_string()),
            ("ontime_window_s", f1(window_ms as f64 / 1000.0)),
            ("ontime_jobs_per_s", f1(got_a as f64 / a_secs)),
            ("ontime_server_cpu_cores", f3(a_cpu / a_secs)),
            ("drain_jobs", got_b.to_string()),
            ("drain_server_cpu_cores", f3(b_cpu / b_secs)),
            (
                "drain_written_bytes_per_job",
                f1(b_written as f64 / got_b.max(1) as f64),
            ),
            (
                "background_schedules_per_s",
                f1(bg_n as f64 / (a_secs + b_secs + 2.0)),
            ),
            ("load_rps", f1(load_rate)),
            ("rss_mb_loaded", f1(rss_loaded as f64 / 1048576.0)),
            ("nodes", nodes.to_string()),
            ("calls", calls_to().into()),
        ],
    );
}

/// Appends `count` PENDING copies of the template row (id 1, made by the server) straight
/// into the file: the rows the server would write, minus the events (recovery and memory
/// do not read them). Send times spread over the next 24 h.
fn grow_file(db: &Path, count: u64, salt: u64) {
    let t = Instant::now();
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-4000000;",
    )
    .unwrap();
    let base = now_ms() + 3_600_000;
    let chunk = 1_000_000u64;
    let mut done = 0u64;
    while done < count {
        let k = chunk.min(count - done);
        let off = salt + done;
        conn.execute(
            "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i < ?2) \
             INSERT INTO items (account_id, ticket_id, kind, channel, author_id, content, \
                send_at, next_send_at, created_at, updated_at, state, on_activity, attempts) \
             SELECT 'acct-' || (i % 64), 'T' || (i % 1000003), t.kind, t.channel, t.author_id, \
                t.content, ?3 + (i * 7919) % 86400000, ?3 + (i * 7919) % 86400000, \
                t.created_at, t.created_at, 1, t.on_activity, 0 \
             FROM s, (SELECT * FROM items WHERE id = 1) AS t",
            rusqlite::params![off as i64, (off + k - 1) as i64, base],
        )
        .unwrap();
        done += k;
    }
    conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
    drop(conn);
    eprintln!(
        "  wrote {count} rows directly in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// A file made by the server with one item (the template row), and the RSS of that
/// server right after start on the empty file.
async fn template_file(db: &Path) -> u64 {
    let mut s = ServerProc::spawn_sendlater(db);
    s.wait_serving(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_empty = s.rss_bytes();
    let mut c = SchedulerClient::new(channel(&s.url).await);
    c.schedule_message(schedule_req(0, now_ms() + 3_600_000))
        .await
        .expect("template item");
    s.stop();
    rss_empty
}

/// Starts the server on `db` holding `n` pending items: RESULT recover, and the RSS.
async fn recover_once(db: &Path, n: u64, run: u32) -> u64 {
    let mut s = ServerProc::spawn_sendlater(db);
    let (accept, serving) = s.wait_serving(Duration::from_secs(600)).await;
    let (rebuilt, line) = s
        .recovered()
        .expect("a `recovered` log line before serving");
    let millis = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("millis="))
        .unwrap_or("?")
        .to_owned();
    let timers = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("timers="))
        .unwrap_or("?")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = s.rss_bytes();
    s.stop();
    result(
        "recover",
        &[
            ("pending", n.to_string()),
            ("serving_s", f3(serving.as_secs_f64())),
            ("rebuilt_s", f3(rebuilt.as_secs_f64())),
            ("accept_s", f3(accept.as_secs_f64())),
            ("server_recovery_ms", millis),
            ("timers", timers),
            ("run", run.to_string()),
        ],
    );
    rss
}

/// recover and memory share the files: 1M, then grown to 10M with --big.
async fn scenario_recover_memory(o: &Opts, recover: bool, memory: bool) {
    let dir = tempdir();
    let db = dir.path().join("recover.db");
    let rss_empty = template_file(&db).await;
    let mut have = 1u64;
    let mut sizes = vec![1_000_000u64];
    if o.big {
        sizes.push(10_000_000);
    }
    for n in sizes {
        grow_file(&db, n - have, have);
        have = n;
        let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        eprintln!("  file: {} MB for {n} items", size / 1_048_576);
        // Twice: the first start may pay for a cold page cache of the fresh file.
        let _ = recover_once(&db, n, 1).await;
        let rss = if recover {
            recover_once(&db, n, 2).await
        } else {
            0
        };
        if memory {
            let rss = if recover {
                rss
            } else {
                recover_once(&db, n, 2).await
            };
            result(
                "memory",
                &[
                    ("pending", n.to_string()),
                    (
                        "bytes_per_item",
                        f1((rss as f64 - rss_empty as f64) / n as f64),
                    ),
                    ("method", "restart".into()),
                    ("rss_empty_mb", f1(rss_empty as f64 / 1048576.0)),
                    ("rss_mb", f1(rss as f64 / 1048576.0)),
                ],
            );
        }
    }
    if memory {
        // After loading over gRPC into a running server (what a user sees).
        let n = 1_000_000u64;
        let mut s = ServerProc::spawn_sendlater(&dir.path().join("memory-rpc.db"));
        s.wait_serving(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss0 = s.rss_bytes();
        let t0 = now_ms() + 3_600_000;
        batch_load(
            &[s.url.clone()],
            0,
            n,
            1000,
            4,
            Arc::new(move |i| t0 + ((i * 7919) % 86_400_000) as i64),
            false,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let rss1 = s.rss_bytes();
        s.stop();
        result(
            "memory",
            &[
                ("pending", n.to_string()),
                ("bytes_per_item", f1((rss1 as f64 - rss0 as f64) / n as f64)),
                ("method", "rpc-load".into()),
                ("rss_empty_mb", f1(rss0 as f64 / 1048576.0)),
                ("rss_mb", f1(rss1 as f64 / 1048576.0)),
            ],
        );
    }
}

async fn scenario_cancel(o: &Opts) {
    let n: u64 = if o.quick { 100_000 } else { 1_000_000 };
    let dur = Duration::from_secs(if o.quick { 5 } else { 20 });
    let dir = tempdir();
    let mut s = ServerProc::spawn_sendlater(&dir.path().join("cancel.db"));
    s.wait_serving(Duration::from_secs(60)).await;
    let empty_size = pg_db_size(&s.db);
    let t0 = now_ms() + 3_600_000;
    let (_, mut ids) = batch_load(
        &[s.url.clone()],
        0,
        n,
        1000,
        4,
        Arc::new(move |i| t0 + ((i * 7919) % 86_400_000) as i64),
        true,
    )
    .await;
    // The database's bytes per pending item (PostgreSQL), as pg-boss's harness counts.
    let pg_sizes = pg_db_size(&s.db).map(|full| {
        (
            (full - empty_size.unwrap_or(0.0)) / n as f64,
            full / n as f64,
        )
    });
    // Random order; each item cancelled once.
    ids.shuffle(&mut seeded(12345));
    let chans = channels(&s.url, 4).await;
    let per = ids.len() / UNARY_CLIENTS;
    let start = Instant::now();
    let end = start + dur;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let cpu0 = s.cpu_secs();
    let written0 = s.written_bytes();
    for t in 0..UNARY_CLIENTS {
        let mine: Vec<(String, String)> = ids[t * per..(t + 1) * per].to_vec();
        let mut client = SchedulerClient::new(chans[t % 4].clone());
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for (account_id, item_id) in mine {
                let b = Instant::now();
                if b >= end {
                    break;
                }
                match client
                    .cancel(pb::ItemRef {
                        account_id,
                        item_id,
                    })
                    .await
                {
                    Ok(_) => lat.push((Instant::now() - b).as_micros() as u32),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("  cancel error: {e}");
                        }
                    }
                }
            }
            (lat, Instant::now())
        }));
    }
    let mut lat = Vec::new();
    let mut last = start;
    for t in tasks {
        let (l, at) = t.await.unwrap();
        lat.extend(l);
        last = last.max(at);
    }
    let secs = last.duration_since(start).as_secs_f64();
    let cpu = s.cpu_secs() - cpu0;
    let written = s.written_bytes() - written0;
    s.stop();
    lat.sort_unstable();
    if let Some((delta, total)) = pg_sizes {
        result(
            "pg-size",
            &[
                ("pending", n.to_string()),
                ("pg_bytes_per_item", f1(delta)),
                ("pg_total_bytes_per_item", f1(total)),
            ],
        );
    }
    result(
        "cancel",
        &[
            ("pending", n.to_string()),
            ("cancels_per_s", f1(lat.len() as f64 / secs)),
            ("p50_ms", f3(pct(&lat, 50.0) as f64 / 1000.0)),
            ("p99_ms", f3(pct(&lat, 99.0) as f64 / 1000.0)),
            ("cancelled", lat.len().to_string()),
            ("errors", errors.load(Ordering::Relaxed).to_string()),
            ("server_cpu_cores", f3(cpu / secs)),
            (
                "written_bytes_per_cancel",
                f1(written as f64 / lat.len().max(1) as f64),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Summary

fn summary() {
    let lines = RESULTS.lock().unwrap().clone();
    let get = |l: &str, k: &str| -> Option<f64> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
    };
    println!();
    println!("== sendlater end-to-end summary ==");
    for l in &lines {
        let sc = l.split_whitespace().nth(1).unwrap_or("");
        let (fig, target, ok) = match sc {
            "schedule-unary" => {
                let r = get(l, "ratio").unwrap_or(0.0);
                (
                    format!(
                        "{:.0}/s over {} conn(s), p50 {:.2} ms, p99 {:.2} ms, {:.0}% of no-op tonic ({:.0}/s)",
                        get(l, "rps").unwrap_or(0.0),
                        get(l, "conns").unwrap_or(0.0),
                        get(l, "p50_ms").unwrap_or(0.0),
                        get(l, "p99_ms").unwrap_or(0.0),
                        r * 100.0,
                        get(l, "baseline_rps").unwrap_or(0.0)
                    ),
                    ">= 60% of baseline",
                    r >= 0.6,
                )
            }
            "schedule-batch" => {
                let r = get(l, "rps").unwrap_or(0.0);
                (
                    format!("{r:.0}/s in batches of {}", get(l, "batch").unwrap_or(0.0)),
                    ">= 150k/s",
                    r >= 150_000.0,
                )
            }
            "dispatch" => {
                let j = get(l, "jobs_per_s").unwrap_or(0.0);
                let p99 = get(l, "lateness_p99_ms").unwrap_or(f64::MAX);
                (
                    format!(
                        "drain {j:.0} jobs/s; lateness p50 {:.1} ms p99 {p99:.1} ms max {:.1} ms",
                        get(l, "lateness_p50_ms").unwrap_or(0.0),
                        get(l, "lateness_max_ms").unwrap_or(0.0)
                    ),
                    ">= 30k jobs/s, p99 <= 5 ms",
                    j >= 30_000.0 && p99 <= 5.0,
                )
            }
            "recover" => {
                let n = get(l, "pending").unwrap_or(0.0);
                let s = get(l, "serving_s").unwrap_or(f64::MAX);
                let limit = if n >= 10_000_000.0 { 10.0 } else { 1.0 };
                (
                    format!(
                        "{n:.0} pending: serving after {s:.2} s (wheel rebuilt at {:.2} s)",
                        get(l, "rebuilt_s").unwrap_or(0.0)
                    ),
                    if n >= 10_000_000.0 {
                        "<= 10 s"
                    } else {
                        "<= 1 s"
                    },
                    s <= limit,
                )
            }
            "memory" => {
                let b = get(l, "bytes_per_item").unwrap_or(f64::MAX);
                (
                    format!(
                        "{:.0} pending: {b:.0} B RSS per item ({})",
                        get(l, "pending").unwrap_or(0.0),
                        l.split_whitespace()
                            .find_map(|w| w.strip_prefix("method="))
                            .unwrap_or("")
                    ),
                    "<= 150 B/item",
                    b <= 150.0,
                )
            }
            "cancel" => {
                let c = get(l, "cancels_per_s").unwrap_or(0.0);
                (format!("{c:.0} cancels/s"), ">= 40k/s", c >= 40_000.0)
            }
            _ => (String::new(), "", true),
        };
        println!(
            "  {:<15} {:<4} {fig}  (target {target})",
            sc,
            if ok { "MET" } else { "MISS" }
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__noop-server") {
        run_noop_server(args[1].parse().expect("port"));
        return;
    }
    let mut o = Opts {
        quick: false,
        big: false,
        scenarios: Vec::new(),
    };
    for a in &args {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--big" => o.big = true,
            "--bench" => {}
            s if ALL.contains(&s) => o.scenarios.push(s.to_owned()),
            "all" => o.scenarios.extend(ALL.iter().map(|s| s.to_string())),
            other => {
                eprintln!(
                    "unknown argument {other:?}; scenarios: {} (default all), --quick, --big",
                    ALL.join(" ")
                );
                std::process::exit(2);
            }
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = ALL.iter().map(|s| s.to_string()).collect();
    }
    println!(
        "sendlater e2e: server {}, {} core(s), quick={}, big={}",
        server_bin(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        o.quick,
        o.big
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let has = |s: &str| o.scenarios.iter().any(|x| x == s);
        if has("schedule-unary") {
            scenario_schedule_unary(&o).await;
        }
        if has("schedule-batch") {
            scenario_schedule_batch(&o).await;
        }
        if has("dispatch") {
            scenario_dispatch(&o).await;
        }
        if has("recover") || has("memory") {
            scenario_recover_memory(&o, has("recover"), has("memory")).await;
        }
        if has("cancel") {
            scenario_cancel(&o).await;
        }
    });
    summary();
    println!("(total {:.0} s)", started.elapsed().as_secs_f64());
}
