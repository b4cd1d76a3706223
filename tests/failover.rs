//! The failover test (issue 21, item 7; `design/multi-node.md`, "Testing on one 2-core
//! machine" and "Checks"): three real `sendlater serve` nodes on a PostgreSQL of the test's
//! own, each reaching it through its own pausable proxy; a connector written here keeping a
//! Dispatch stream to every node and acking every job at once; a steady load of schedules
//! with request ids, round-robin over the nodes. In turn, each once the system is steady
//! again (the nodes share the partitions fairly, ~21 each; "the owner" below is the node
//! holding partition 0, whose grants the figures time):
//! - (a) `kill -9` of the owner (restarted once another node sends; it then gets its
//!   share back by the others' planned handovers);
//! - (b) SIGSTOP of the owner for 3 leases, then SIGCONT (it must exit 1);
//! - (c) the owner cut off from PostgreSQL only (its proxy frozen and refusing) for 3
//!   leases, its connector stream kept;
//! - (d) a restart of PostgreSQL (crash, then start);
//! - (e) a SIGTERM rolling restart of every node, one after the other.
//!
//! The test is the nodes' supervisor: a node that exits with status 1 (it lost its
//! partitions) is restarted under the same id and port and counted; any other exit it did
//! not cause fails the test. It prints `RESULT multinode` lines (straight to stderr, past
//! the test harness's capture) and passes only if nothing acknowledged is lost, no
//! duplicate is unexplained, no job left a node after another was granted its partition
//! (fenced sends), and every lateness is within `lease_secs + 3 s`.
//!
//! The checks:
//! - **lost**: acknowledged (OK) schedules never received and not SENT in the database;
//!   also, no item (acknowledged or not) is left PENDING or DISPATCHING at the end;
//! - **duplicates** are explained only when the first receipt came from a node that failed
//!   (killed, stopped, cut off, PostgreSQL restarted under it, or exited 1 having lost its
//!   partitions) while that job was out ([`explain_duplicates`]); a planned stop explains
//!   none;
//! - **fenced sends**: a receipt from a node after `lease_log` granted the item's partition
//!   to another node at a later epoch ([`fenced_sends`]);
//! - **lateness**: first receipt − max(send_at, the fault's start) for an item pending when
//!   a fault began and due before the system was steady again ("inside"), first receipt −
//!   send_at otherwise ("outside"). For the restart of PostgreSQL it counts from when the
//!   server accepted connections again: no node can send while the database is down.
//!
//! Clocks: a receipt's time and a grant's `granted_at` (the database's `now()` at the
//! take's start) are both this machine's wall clock. `scripts/test.sh` runs it once, in
//! the PostgreSQL pass (the store switch does not concern it: it starts its own
//! PostgreSQL). The nodes' logs go to a temporary folder named at the start, kept when the
//! test fails (and with `SENDLATER_FAILOVER_KEEP=1`), their tails printed.
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::{free_port, PgCluster};
use common::proxy::Proxy;
use common::{chat_reply, item_ref};
use sendlater::pb;
use sendlater::pb::dispatch_client::DispatchClient;
use sendlater::pb::scheduler_client::SchedulerClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// `[cluster] lease_secs`: the minimum, so the faults are short.
const LEASE_SECS: i64 = 2;
/// The promise: a due item goes out within `lease_secs + 3 s` of a node's failure.
const BOUND_MS: i64 = (LEASE_SECS + 3) * 1000;
/// How long a stopped or cut-off owner stays so: three leases.
const FAULT: Duration = Duration::from_millis(3 * LEASE_SECS as u64 * 1000);
/// An ack sent this long before a node failed may not have been recorded by it: its item
/// may then go out again (an explained duplicate).
const ACK_SLACK_MS: i64 = 2_000;
/// How late the test may read a job that left a node (its receipt time is when read).
const READ_LAG_MS: i64 = 500;
/// Schedules per second.
const RATE: u64 = 30;
/// Partitions (the default of `[cluster] partitions`).
const PARTITIONS: u32 = sendlater::cluster::DEFAULT_PARTITIONS;
/// Bound of every wait for an observable effect.
const WAIT: Duration = Duration::from_secs(30);
const NODES: usize = 3;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A line past the test harness's capture (so CI logs show it on success too).
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What the supervisor expects of a node's next exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Nothing: status 1 (lost partitions) is restarted at once, as is 64 (no database
    /// at start) while the test has PostgreSQL down; anything else fails.
    Nothing,
    /// The test sent SIGKILL: it restarts the node when it chooses.
    Kill,
    /// The test sent SIGTERM: status 0, restarted when the test chooses.
    Term,
    /// The end of the test: status 0, not restarted.
    Final,
}

/// One job as the connector received it.
#[derive(Debug, Clone)]
struct Receipt {
    item: String,
    account: String,
    attempt: u32,
    node: usize,
    at: i64,
}

/// A schedule answered OK.
#[derive(Debug, Clone)]
struct Acked {
    send_at: i64,
    /// When the OK arrived.
    at: i64,
    account: String,
}

/// A node's exit, as its supervisor saw it.
#[derive(Debug, Clone)]
struct Exit {
    node: usize,
    at: i64,
    status: String,
    expected: Expect,
}

#[derive(Default)]
struct Ledger {
    receipts: Vec<Receipt>,
    /// The items received at least once.
    received: HashSet<String>,
    acked: HashMap<String, Acked>,
    scheduled: u64,
    /// Failed schedule attempts (retried), by status code.
    retries: BTreeMap<String, u64>,
    /// Schedules abandoned after retrying for [`WAIT`].
    gave_up: u64,
    /// Schedules refused as past due on a retry (never committed: a committed request id
    /// gets its item back whenever retried).
    expired: u64,
    exits: Vec<Exit>,
    /// Nodes restarted after exiting 1.
    restarts: u32,
    /// Nodes restarted after exiting 64 (no database at start) while PostgreSQL was down.
    unreachable_restarts: u32,
    /// Dispatch streams opened, per node.
    streams: [u64; NODES],
    failures: Vec<String>,
}

/// The ledger, and a counter bumped on every change (to wait for an effect).
struct Shared {
    ledger: Mutex<Ledger>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            ledger: Mutex::new(Ledger::default()),
            changed: watch::channel(0).0,
        })
    }

    fn update<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let r = f(&mut self.ledger.lock().unwrap());
        self.changed.send_modify(|n| *n += 1);
        r
    }

    /// A change no wait depends on (counters): waiters are not woken.
    fn count(&self, f: impl FnOnce(&mut Ledger)) {
        f(&mut self.ledger.lock().unwrap());
    }

    fn read<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        f(&self.ledger.lock().unwrap())
    }

    fn fail(&self, what: String) {
        report(&format!("multinode failure: {what}"));
        self.update(|l| l.failures.push(what));
    }

    /// Waits (bounded by `wait`) until `pred` gives a value.
    async fn until<T>(
        &self,
        wait: Duration,
        mut pred: impl FnMut(&Ledger) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            if let Some(v) = self.read(&mut pred) {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}

/// One node: its id, port, proxy and log; the process is its supervisor's.
struct Node {
    idx: usize,
    id: String,
    port: u16,
    proxy: Proxy,
    db_url: String,
    config: PathBuf,
    log: PathBuf,
    pid: AtomicI32,
    expect: Mutex<Expect>,
    /// Exits so far.
    exits: watch::Sender<u64>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the node's log file");
        let mut c = Command::new(env!("CARGO_BIN_EXE_sendlater"));
        c.args(["serve", "--db", &self.db_url, "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--node-id", &self.id, "--console-listen", "off", "--config"])
            .arg(&self.config)
            .env_remove("SENDLATER_DB")
            .env_remove("SENDLATER_CONFIG")
            .env_remove("SENDLATER_LISTEN")
            .env_remove("SENDLATER_NODE_ID")
            .env_remove("SENDLATER_ADVERTISE")
            .env_remove("SENDLATER_METRICS_LISTEN")
            .env_remove("SENDLATER_CONSOLE_LISTEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        c
    }

    /// Sends `sig` to the running process; false when none runs.
    fn signal(&self, sig: libc::c_int) -> bool {
        let pid = self.pid.load(Ordering::SeqCst);
        // SAFETY: kill has no memory preconditions; pid is our own child's.
        pid > 0 && unsafe { libc::kill(pid, sig) } == 0
    }

    fn expect(&self, e: Expect) {
        *self.expect.lock().unwrap() = e;
    }

    fn running(&self) -> bool {
        self.pid.load(Ordering::SeqCst) > 0
    }

    /// Waits (bounded) until the node exited more than `seen` times; the exit count.
    async fn exited_after(&self, seen: u64) -> Option<u64> {
        let mut rx = self.exits.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|n| *n > seen))
            .await
            .ok()
            .and_then(|r| r.ok().map(|n| *n))
    }

    fn exit_count(&self) -> u64 {
        *self.exits.borrow()
    }

    /// The last lines of the node's log.
    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{status:?}"),
    }
}

/// The supervisor of one node (a thread: it blocks in `wait`).
fn supervise(
    node: Arc<Node>,
    shared: Arc<Shared>,
    restart: std::sync::mpsc::Receiver<()>,
    ending: Arc<AtomicBool>,
    outage_until: Arc<AtomicI64>,
) {
    loop {
        let mut child = match node.command().spawn() {
            Ok(c) => c,
            Err(e) => {
                shared.fail(format!("{}: cannot spawn sendlater serve: {e}", node.id));
                return;
            }
        };
        node.pid
            .store(i32::try_from(child.id()).unwrap_or(-1), Ordering::SeqCst);
        let status = child.wait().expect("wait for the node");
        node.pid.store(0, Ordering::SeqCst);
        let at = now_ms();
        let expected = std::mem::replace(&mut *node.expect.lock().unwrap(), Expect::Nothing);
        shared.update(|l| {
            l.exits.push(Exit {
                node: node.idx,
                at,
                status: describe(&status),
                expected,
            })
        });
        node.exits.send_modify(|n| *n += 1);
        // The end of the test (or a failed one): nothing is restarted.
        if ending.load(Ordering::SeqCst) && expected != Expect::Final {
            return;
        }
        match expected {
            Expect::Kill if status.signal() == Some(libc::SIGKILL) => {}
            Expect::Term | Expect::Final if status.code() == Some(0) => {}
            Expect::Nothing if status.code() == Some(1) => {
                shared.count(|l| l.restarts += 1);
                continue;
            }
            // `serve` exits 64 when it cannot reach the database at start: expected only
            // while the test has PostgreSQL down. A supervisor's retry pace.
            Expect::Nothing
                if status.code() == Some(64) && now_ms() <= outage_until.load(Ordering::SeqCst) =>
            {
                shared.count(|l| l.unreachable_restarts += 1);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            _ => shared.fail(format!(
                "{} exited with {} (expected: {expected:?}); its log ends:\n{}",
                node.id,
                describe(&status),
                node.tail(30)
            )),
        }
        if expected == Expect::Final || ending.load(Ordering::SeqCst) {
            return;
        }
        if expected == Expect::Nothing {
            continue;
        }
        if restart.recv().is_err() {
            return;
        }
    }
}

/// The nodes, their supervisors' restart switches; dropping it kills what still runs.
struct Cluster {
    nodes: Vec<Arc<Node>>,
    restart: Vec<std::sync::mpsc::Sender<()>>,
    ending: Arc<AtomicBool>,
    /// Until when (ms) PostgreSQL may be down: a node may then exit 64 at start.
    outage_until: Arc<AtomicI64>,
    supervisors: Vec<std::thread::JoinHandle<()>>,
}

impl Cluster {
    fn start_node(&mut self, idx: usize, shared: &Arc<Shared>) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.restart.push(tx);
        let (node, shared) = (self.nodes[idx].clone(), shared.clone());
        let (ending, outage) = (self.ending.clone(), self.outage_until.clone());
        self.supervisors.push(std::thread::spawn(move || {
            supervise(node, shared, rx, ending, outage)
        }));
    }

    /// Lets the supervisor of a node stopped by the test start it again.
    fn restart(&self, idx: usize) {
        let _ = self.restart[idx].send(());
    }

    fn tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ({}):\n{}", n.id, n.log.display(), n.tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.ending.store(true, Ordering::SeqCst);
        self.restart.clear();
        for n in &self.nodes {
            n.signal(libc::SIGCONT);
            n.signal(libc::SIGKILL);
        }
        for s in self.supervisors.drain(..) {
            let _ = s.join();
        }
    }
}

/// A grant in `lease_log`.
#[derive(Debug, Clone)]
struct Grant {
    partition: i32,
    epoch: i64,
    owner: String,
    granted_at: i64,
}

/// Every grant (of `partition`, or of all), by partition and epoch; `None` while the
/// database cannot be reached.
async fn grants(url: &str, partition: Option<i32>) -> Option<Vec<Grant>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    let conn = tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT partition, epoch, owner, \
               (extract(epoch FROM granted_at) * 1000)::bigint \
             FROM lease_log WHERE $1::int IS NULL OR partition = $1 \
             ORDER BY partition, epoch",
            &[&partition],
        )
        .await
        .ok();
    drop(client);
    let _ = conn.await;
    Some(
        rows?
            .iter()
            .map(|r| Grant {
                partition: r.get(0),
                epoch: r.get(1),
                owner: r.get(2),
                granted_at: r.get(3),
            })
            .collect(),
    )
}

/// The last grant of partition 0 (every partition moves with it in this build).
async fn last_grant(url: &str) -> Option<Grant> {
    grants(url, Some(0)).await?.pop()
}

/// Waits (bounded) for a grant of partition 0 at or after `after`.
async fn grant_after(url: &str, after: i64) -> Option<Grant> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(g) = last_grant(url).await.filter(|g| g.granted_at >= after) {
            return Some(g);
        }
        // The lease log is polled: PostgreSQL's LISTEN would need a session per wait.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn node_index(id: &str) -> Option<usize> {
    id.strip_prefix('n')?.parse::<usize>().ok()?.checked_sub(1)
}

/// Whether the node answers health SERVING.
async fn healthy(node: &Node) -> bool {
    let Ok(ch) = Endpoint::from_shared(node.url())
        .expect("url")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

async fn wait_healthy(node: &Node) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if node.running() && healthy(node).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A connector's stream to one node: reconnects every ~100 ms when the stream ends or is
/// refused (a node restarting its server answers UNAVAILABLE), logs every job and acks it at once.
async fn connector(node: usize, url: String, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let channel = Endpoint::from_shared(url)
        .expect("url")
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    while !*stop.borrow() {
        let (tx, rx) = mpsc::channel(4096);
        let hello = pb::ConnectorMessage {
            msg: Some(pb::connector_message::Msg::Hello(pb::Hello {
                connector_id: format!("failover-test-{}", node + 1),
                channels: vec![pb::Channel::Chat as i32],
                max_in_flight: 256,
            })),
        };
        tx.send(hello).await.expect("queue the hello");
        let mut client = DispatchClient::new(channel.clone());
        let opened = tokio::time::timeout(
            Duration::from_secs(2),
            client.connect(ReceiverStream::new(rx)),
        )
        .await;
        if let Ok(Ok(resp)) = opened {
            shared.count(|l| l.streams[node] += 1);
            let mut jobs = resp.into_inner();
            let mut stop = stop.clone();
            loop {
                let job = tokio::select! {
                    m = jobs.message() => m,
                    _ = stop.wait_for(|s| *s) => break,
                };
                let Ok(Some(job)) = job else { break };
                let at = now_ms();
                let item = job.item.clone().unwrap_or_default();
                shared.update(|l| {
                    l.received.insert(item.item_id.clone());
                    l.receipts.push(Receipt {
                        item: item.item_id.clone(),
                        account: item.account_id.clone(),
                        attempt: job.attempt,
                        node,
                        at,
                    })
                });
                let ack = pb::ConnectorMessage {
                    msg: Some(pb::connector_message::Msg::Ack(pb::Ack {
                        job_id: job.job_id.clone(),
                        provider_message_id: format!("p-{}", item.item_id),
                    })),
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Schedules `RATE` items a second, round-robin over the nodes, each retried (on the
/// next node) until OK; each due 4 to 8 s after it is sent.
async fn load(urls: Vec<String>, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let clients: Vec<SchedulerClient<Channel>> = urls
        .into_iter()
        .map(|u| {
            SchedulerClient::new(
                Endpoint::from_shared(u)
                    .expect("url")
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(2))
                    .connect_lazy(),
            )
        })
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut tasks = tokio::task::JoinSet::new();
    let mut k: u64 = 0;
    while !*stop.borrow() {
        tick.tick().await;
        k += 1;
        tasks.spawn(schedule_one(k, clients.clone(), shared.clone()));
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a schedule task panicked");
    }
}

async fn schedule_one(k: u64, mut clients: Vec<SchedulerClient<Channel>>, shared: Arc<Shared>) {
    let account = format!("acct{}", k % 5);
    let send_at = now_ms() + 4_000 + (k as i64 * 37) % 4_000;
    let mut req = chat_reply(&account, &format!("t{k}"), send_at);
    req.request_id = format!("req-{k}");
    if let Some(pb::schedule_request::Content::Chat(chat)) = &mut req.content {
        chat.text = format!("item {k}");
    }
    shared.count(|l| l.scheduled += 1);
    let started = Instant::now();
    let mut at = (k as usize) % NODES;
    let mut retried = false;
    loop {
        match clients[at].schedule_message(req.clone()).await {
            Ok(item) => {
                let id = item.into_inner().item_id;
                shared.update(|l| {
                    l.acked.insert(
                        id,
                        Acked {
                            send_at,
                            at: now_ms(),
                            account: account.clone(),
                        },
                    )
                });
                return;
            }
            Err(s) => {
                let code = s.code();
                shared.count(|l| *l.retries.entry(format!("{code:?}")).or_default() += 1);
                match code {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted
                    | tonic::Code::Internal => {}
                    // A connection the node ended (GOAWAY): its h2 server answers a
                    // pile of cancelled calls (a node that was stopped reads every
                    // reset at once) with ENHANCE_YOUR_CALM; nothing was served.
                    tonic::Code::ResourceExhausted
                        if std::error::Error::source(&s).is_some_and(|e| {
                            e.downcast_ref::<tonic::transport::Error>().is_some()
                        }) => {}
                    tonic::Code::InvalidArgument if retried && now_ms() > send_at => {
                        shared.count(|l| l.expired += 1);
                        return;
                    }
                    _ => {
                        shared.fail(format!("schedule req-{k} on n{}: {s:?}", at + 1));
                        return;
                    }
                }
            }
        }
        if started.elapsed() > WAIT {
            shared.count(|l| l.gave_up += 1);
            return;
        }
        retried = true;
        at = (at + 1) % NODES;
        // Back-off between attempts (a retry policy, not a synchronisation).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fault and what the system did about it.
#[derive(Debug, Clone)]
struct Fault {
    name: String,
    /// The owner it struck.
    node: Option<usize>,
    /// When it began.
    start: i64,
    /// Lateness is counted from here for items due before it: the start, or for the
    /// restart of PostgreSQL, when it accepted connections again (no node can send
    /// while the database is down).
    from: i64,
    /// Receipts of the struck node up to here may have had their ack lost with it.
    victim_until: i64,
    /// Whether the promise allows duplicates for it (a planned stop does not).
    failure: bool,
    /// The first grant after it began.
    regrant: Option<Grant>,
    /// The first receipt from the node owning the partitions after it, after its grant
    /// and after `from`.
    first_send: Option<i64>,
    /// The system steady again: the owner sends, every node serves.
    end: i64,
}

/// The harness: database, nodes, ledger.
struct Run {
    pg: PgCluster,
    url: String,
    cluster: Cluster,
    shared: Arc<Shared>,
    faults: Vec<Fault>,
}

impl Run {
    fn node(&self, idx: usize) -> &Arc<Node> {
        &self.cluster.nodes[idx]
    }

    fn abort(&self, what: &str) -> ! {
        report(&format!("multinode aborted: {what}"));
        report(&self.cluster.tails());
        panic!("{what}");
    }

    /// The current owner (by the last grant of partition 0).
    async fn owner(&self) -> (usize, Grant) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(g) = last_grant(&self.url).await {
                if let Some(i) = node_index(&g.owner) {
                    return (i, g);
                }
                self.abort(&format!("lease_log names an unknown owner {:?}", g.owner));
            }
            if Instant::now() > deadline {
                self.abort("no grant in lease_log");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the system is steady after `after`: the owner of the partitions (the
    /// last grant) sent a job after `after` and after its grant, and every node serves.
    /// Returns the owner, its grant and that first receipt's time.
    async fn steady(&self, after: i64) -> (usize, Grant, i64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (owner, g) = self.owner().await;
            let since = after.max(g.granted_at);
            let sent = self
                .shared
                .until(Duration::from_millis(500), |l| {
                    l.receipts
                        .iter()
                        .find(|r| r.node == owner && r.at >= since)
                        .map(|r| r.at)
                })
                .await;
            if let Some(at) = sent {
                self.drained().await;
                for n in &self.cluster.nodes {
                    if !wait_healthy(n).await {
                        self.abort(&format!("{} does not serve", n.id));
                    }
                }
                // The owner may have changed meanwhile: then wait for the new one.
                if last_grant(&self.url)
                    .await
                    .is_some_and(|now| now.epoch == g.epoch)
                {
                    return (owner, g, at);
                }
            }
            if Instant::now() > deadline {
                self.abort(&format!(
                    "not steady {} ms after {after}: no job from the owner {} (granted at {})",
                    WAIT.as_millis(),
                    g.owner,
                    g.granted_at
                ));
            }
        }
    }

    /// Waits (bounded, 10 s) until every acknowledged item due a second ago was received:
    /// the backlog of a failover sent, so the next fault starts from a clean state. What
    /// is still missing then is the final check's business.
    async fn drained(&self) {
        let drained = self
            .shared
            .until(Duration::from_secs(10), |l| {
                let due = now_ms() - 1_000;
                l.acked
                    .iter()
                    .all(|(id, a)| a.send_at > due || l.received.contains(id))
                    .then_some(())
            })
            .await;
        if drained.is_none() {
            report("multinode: the backlog was not sent within 10 s (see the final checks)");
        }
    }

    /// Records a fault that began at `start` against `node`, once steady again.
    async fn settle(
        &mut self,
        name: &str,
        node: Option<usize>,
        start: i64,
        from: i64,
        victim_until: i64,
        failure: bool,
    ) {
        let (owner, _, end) = self.steady(from).await;
        let regrant = grants(&self.url, Some(0))
            .await
            .and_then(|gs| gs.into_iter().find(|g| g.granted_at >= start));
        let since = regrant.as_ref().map_or(from, |g| g.granted_at.max(from));
        let first_send = self.shared.read(|l| {
            l.receipts
                .iter()
                .filter(|r| r.node == owner && r.at >= since)
                .map(|r| r.at)
                .min()
        });
        let f = Fault {
            name: name.to_owned(),
            node,
            start,
            from,
            victim_until: victim_until.max(start),
            failure,
            regrant,
            first_send,
            end,
        };
        report(&format!(
            "multinode: {name} ({}) at {start}: regrant {:?} ms, first send {:?} ms, steady {} ms",
            node.map_or("-".into(), |i| format!("n{}", i + 1)),
            f.regrant.as_ref().map(|g| g.granted_at - start),
            f.first_send.map(|t| t - start),
            end - start
        ));
        self.faults.push(f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multinode_failover_loses_nothing_acknowledged_and_sends_nothing_from_a_node_that_lost_its_lease(
) {
    let began = Instant::now();
    let pg = PgCluster::start().await;
    let url = pg.url();
    // Kept when the test fails (the nodes' logs), deleted when it passes.
    let dir = tempfile::Builder::new()
        .prefix("sendlater-failover.")
        .tempdir()
        .expect("a temporary folder")
        .keep();
    let config = dir.join("node.toml");
    std::fs::write(&config, format!("[cluster]\nlease_secs = {LEASE_SECS}\n")).expect("config");
    let target: std::net::SocketAddr = ([127, 0, 0, 1], pg.port()).into();
    let mut nodes = Vec::new();
    for idx in 0..NODES {
        let proxy = Proxy::start(target).await;
        let db_url = proxy.url_through(&url);
        nodes.push(Arc::new(Node {
            idx,
            id: format!("n{}", idx + 1),
            port: free_port(),
            proxy,
            db_url,
            config: config.clone(),
            log: dir.join(format!("n{}.log", idx + 1)),
            pid: AtomicI32::new(0),
            expect: Mutex::new(Expect::Nothing),
            exits: watch::channel(0).0,
        }));
    }
    let shared = Shared::new();
    let mut run = Run {
        pg,
        url: url.clone(),
        cluster: Cluster {
            nodes,
            restart: Vec::new(),
            ending: Arc::new(AtomicBool::new(false)),
            outage_until: Arc::new(AtomicI64::new(0)),
            supervisors: Vec::new(),
        },
        shared: shared.clone(),
        faults: Vec::new(),
    };
    report(&format!(
        "multinode: the nodes' logs are in {}",
        dir.display()
    ));

    // n1 first (it creates the schema and takes the partitions), then the others (they
    // get their shares by n1's handovers).
    run.cluster.start_node(0, &shared);
    if grant_after(&url, 0).await.is_none() {
        run.abort("n1 took no partition");
    }
    for idx in 1..NODES {
        run.cluster.start_node(idx, &shared);
    }
    for idx in 0..NODES {
        if !wait_healthy(run.node(idx)).await {
            run.abort(&format!("{} does not serve", run.node(idx).id));
        }
    }

    // The connector and the load.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (load_stop_tx, load_stop_rx) = watch::channel(false);
    let mut background = Vec::new();
    for idx in 0..NODES {
        background.push(tokio::spawn(connector(
            idx,
            run.node(idx).url(),
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    let urls: Vec<String> = run.cluster.nodes.iter().map(|n| n.url()).collect();
    let load_task = tokio::spawn(load(urls, shared.clone(), load_stop_rx));
    let load_began = now_ms();
    run.steady(load_began).await;
    report(&format!(
        "multinode: steady under load {} ms after the start",
        began.elapsed().as_millis()
    ));

    // (a) kill -9 of the owner, restarted once another node sends.
    let (o, _) = run.owner().await;
    let seen = run.node(o).exit_count();
    run.node(o).expect(Expect::Kill);
    let start = now_ms();
    assert!(run.node(o).signal(libc::SIGKILL), "the owner runs");
    if run.node(o).exited_after(seen).await.is_none() {
        run.abort("the killed owner did not exit");
    }
    match grant_after(&url, start).await {
        Some(g) if g.owner != run.node(o).id => {}
        other => run.abort(&format!("after the kill of n{}: grant {other:?}", o + 1)),
    }
    run.cluster.restart(o);
    run.settle("kill -9", Some(o), start, start, start + READ_LAG_MS, true)
        .await;

    // (b) SIGSTOP of the owner for three leases; after SIGCONT it must exit 1.
    let (o, _) = run.owner().await;
    let seen = run.node(o).exit_count();
    let start = now_ms();
    assert!(run.node(o).signal(libc::SIGSTOP), "the owner runs");
    tokio::time::sleep(FAULT).await;
    let cont = now_ms();
    run.node(o).signal(libc::SIGCONT);
    if run.node(o).exited_after(seen).await.is_none() {
        run.abort(&format!("n{} did not exit after SIGCONT", o + 1));
    }
    run.settle("SIGSTOP", Some(o), start, start, start + READ_LAG_MS, true)
        .await;
    report(&format!(
        "multinode: SIGCONT {} ms after SIGSTOP",
        cont - start
    ));

    // (c) The owner cut off from PostgreSQL only (open connections frozen, new ones
    // refused) for three leases; its connector stream stays.
    let (o, _) = run.owner().await;
    let seen = run.node(o).exit_count();
    let start = now_ms();
    run.node(o).proxy.refuse(true);
    run.node(o).proxy.freeze_open();
    tokio::time::sleep(FAULT).await;
    let restored = now_ms();
    run.node(o).proxy.refuse(false);
    run.node(o).proxy.thaw();
    if run.node(o).exited_after(seen).await.is_none() {
        run.abort(&format!("n{} never noticed it lost the partitions", o + 1));
    }
    run.settle("cut off", Some(o), start, start, restored, true)
        .await;
    let cut_last = shared.read(|l| {
        l.receipts
            .iter()
            .filter(|r| r.node == o && r.at >= start)
            .map(|r| r.at - start)
            .max()
    });
    report(&format!(
        "multinode: the cut-off node's last send came {cut_last:?} ms after the cut"
    ));

    // (d) A restart of PostgreSQL.
    let (o, _) = run.owner().await;
    let start = now_ms();
    run.cluster.outage_until.store(i64::MAX, Ordering::SeqCst);
    run.pg.crash().await;
    run.pg.restart().await;
    let back = now_ms();
    run.cluster
        .outage_until
        .store(back + 2_000, Ordering::SeqCst);
    report(&format!(
        "multinode: PostgreSQL accepted connections again {} ms after the crash",
        back - start
    ));
    run.settle("PostgreSQL restart", Some(o), start, back, back, true)
        .await;

    // (e) A SIGTERM rolling restart: each node in turn, started again once it exited 0.
    for idx in 0..NODES {
        let (o, _) = run.owner().await;
        let seen = run.node(idx).exit_count();
        run.node(idx).expect(Expect::Term);
        let start = now_ms();
        assert!(run.node(idx).signal(libc::SIGTERM), "the node runs");
        if run.node(idx).exited_after(seen).await.is_none() {
            run.abort(&format!("n{} did not stop on SIGTERM", idx + 1));
        }
        // The owner's partitions go to another node before it starts again (it would
        // otherwise take back its own, released, partitions first).
        if o == idx && grant_after(&url, start).await.is_none() {
            run.abort(&format!("nobody took n{}'s released partitions", idx + 1));
        }
        run.cluster.restart(idx);
        if o == idx {
            run.settle(
                &format!("SIGTERM n{}", idx + 1),
                Some(idx),
                start,
                start,
                start,
                false,
            )
            .await;
        } else if !wait_healthy(run.node(idx)).await {
            run.abort(&format!("n{} does not serve after its restart", idx + 1));
        }
    }

    // The end of the load; every acknowledged item delivered (bounded).
    load_stop_tx.send_replace(true);
    load_task.await.expect("the load panicked");
    let last_due = shared.read(|l| l.acked.values().map(|a| a.send_at).max().unwrap_or(0));
    let wait =
        Duration::from_millis(u64::try_from(last_due + BOUND_MS + 10_000 - now_ms()).unwrap_or(0));
    let delivered_all = shared
        .until(wait, |l| {
            l.acked
                .keys()
                .all(|id| l.received.contains(id))
                .then_some(())
        })
        .await
        .is_some();
    report(&format!(
        "multinode: load and faults done in {} ms; every acknowledged item received: {delivered_all}",
        began.elapsed().as_millis()
    ));

    // What is still undelivered, by the database.
    let (o, _) = run.owner().await;
    let mut reader = SchedulerClient::new(
        Endpoint::from_shared(run.node(o).url())
            .expect("url")
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
    );
    let missing: Vec<(String, Acked)> = shared.read(|l| {
        l.acked
            .iter()
            .filter(|(id, _)| !l.received.contains(*id))
            .map(|(id, a)| (id.clone(), a.clone()))
            .collect()
    });
    // Nothing committed stays undelivered, acknowledged or not (a schedule may commit
    // without its OK arriving): no live item is left once all were due.
    let deadline = Instant::now() + Duration::from_secs(10);
    let left_live = loop {
        let live = live_items(&mut reader).await;
        if live == Some(0) || Instant::now() > deadline {
            break live;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut lost = Vec::new();
    for (id, a) in &missing {
        match reader.get_item(item_ref(&a.account, id)).await {
            Ok(item) if item.get_ref().state == pb::State::Sent as i32 => {}
            Ok(item) => lost.push(format!(
                "{id} (due {}): {:?}",
                a.send_at,
                item.into_inner().state
            )),
            Err(s) => lost.push(format!("{id} (due {}): {s:?}", a.send_at)),
        }
    }

    // Stop everything: the connector last, so the final drains are received.
    run.cluster.ending.store(true, Ordering::SeqCst);
    for n in &run.cluster.nodes {
        let seen = n.exit_count();
        n.expect(Expect::Final);
        if n.signal(libc::SIGTERM) && n.exited_after(seen).await.is_none() {
            shared.fail(format!("{} did not stop on the final SIGTERM", n.id));
        }
    }
    stop_tx.send_replace(true);
    for t in background {
        t.await.expect("a connector panicked");
    }
    let all_grants = grants(&url, None).await.unwrap_or_default();
    let fenced_writes: usize = run
        .cluster
        .nodes
        .iter()
        .map(|n| {
            std::fs::read_to_string(&n.log)
                .unwrap_or_default()
                .matches("the commit was fenced")
                .count()
        })
        .sum();
    let mut failures = check(&run, &shared, &all_grants, &lost, fenced_writes);
    report(&format!("RESULT multinode left_live={left_live:?}"));
    if left_live != Some(0) {
        failures.push(format!(
            "{left_live:?} items still PENDING or DISPATCHING once every item was due"
        ));
    }
    if !failures.is_empty() {
        report(&run.cluster.tails());
        panic!("multinode failed:\n{}", failures.join("\n"));
    }
    if std::env::var_os("SENDLATER_FAILOVER_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// PENDING and DISPATCHING items of the load's accounts (`None`: not answered).
async fn live_items(c: &mut SchedulerClient<Channel>) -> Option<usize> {
    let mut n = 0;
    for k in 0..5 {
        for state in [pb::State::Pending, pb::State::Dispatching] {
            n += c
                .list_scheduled(pb::ListScheduledRequest {
                    account_id: format!("acct{k}"),
                    state: state as i32,
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .items
                .len();
        }
    }
    Some(n)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The duplicates, explained or not.
#[derive(Debug, Default)]
struct Duplicates {
    explained: usize,
    /// Explained duplicates by the failure explaining them.
    why: BTreeMap<String, usize>,
    /// Per fault, how long before it the first receipts of its duplicates came (min, max).
    lead_ms: BTreeMap<String, (i64, i64)>,
    unexplained: Vec<String>,
}

/// Duplicates (receipts of an item beyond its first), explained when the first receipt
/// came from a node that failed while that job was out, so its ack may have been lost
/// with it: a failure (not a planned stop) striking that node from [`ACK_SLACK_MS`]
/// before the receipt until the end of its window for the node, the next receipt after
/// it; or the node's own exit with status 1 (it lost its partitions) within a lease and
/// that slack of the receipt, the next receipt from another node or after the exit. `by_item`: each item's receipts in time order.
fn explain_duplicates(
    by_item: &HashMap<&str, Vec<&Receipt>>,
    faults: &[Fault],
    exits: &[Exit],
) -> Duplicates {
    let mut d = Duplicates::default();
    let lost_exits: Vec<&Exit> = exits
        .iter()
        .filter(|e| e.expected == Expect::Nothing)
        .collect();
    for (item, rs) in by_item {
        if rs.len() < 2 {
            continue;
        }
        let first = rs[0];
        let by_fault = faults.iter().find(|f| {
            f.failure
                && f.node == Some(first.node)
                && first.at >= f.start - ACK_SLACK_MS
                && first.at <= f.victim_until
                && rs[1].at >= f.start
        });
        let by_exit = lost_exits.iter().find(|e| {
            e.node == first.node
                && first.at >= e.at - ACK_SLACK_MS - LEASE_SECS * 1000
                && first.at <= e.at
                && (rs[1].node != first.node || rs[1].at > e.at)
        });
        if let Some(f) = by_fault {
            d.explained += rs.len() - 1;
            *d.why.entry(f.name.clone()).or_default() += rs.len() - 1;
            let lead = d
                .lead_ms
                .entry(f.name.clone())
                .or_insert((i64::MAX, i64::MIN));
            *lead = (
                lead.0.min(f.start - first.at),
                lead.1.max(f.start - first.at),
            );
        } else if let Some(e) = by_exit {
            d.explained += rs.len() - 1;
            *d.why
                .entry(format!("exit 1 of n{}", e.node + 1))
                .or_default() += rs.len() - 1;
        } else {
            d.unexplained.push(format!(
                "{item}: {:?}",
                rs.iter()
                    .map(|r| format!("n{}@{} attempt {}", r.node + 1, r.at, r.attempt))
                    .collect::<Vec<_>>()
            ));
        }
    }
    d
}

/// Fenced sends: a receipt from node X at a time when `lease_log` says another node had
/// been granted the item's partition at a later epoch than X's last grant of it (or X
/// never was granted it).
fn fenced_sends(receipts: &[Receipt], grants: &[Grant]) -> Vec<String> {
    let mut by_partition: HashMap<i32, Vec<&Grant>> = HashMap::new();
    for g in grants {
        by_partition.entry(g.partition).or_default().push(g);
    }
    let mut fenced = Vec::new();
    for r in receipts {
        let p = sendlater::cluster::partition_of(&r.account, PARTITIONS) as i32;
        let me = format!("n{}", r.node + 1);
        let gs = by_partition.get(&p).map(Vec::as_slice).unwrap_or(&[]);
        let mine = gs
            .iter()
            .filter(|g| g.owner == me && g.granted_at <= r.at)
            .map(|g| g.epoch)
            .max();
        let later = gs
            .iter()
            .find(|g| g.owner != me && g.granted_at <= r.at && mine.is_none_or(|e| g.epoch > e));
        if let Some(g) = later {
            fenced.push(format!(
                "{} from {me} at {} (partition {p}, its epoch {mine:?}): {} granted epoch {} at {}",
                r.item, r.at, g.owner, g.epoch, g.granted_at
            ));
        }
    }
    fenced
}

/// The checks and the RESULT lines; the failures found.
fn check(
    run: &Run,
    shared: &Shared,
    grants: &[Grant],
    lost: &[String],
    fenced_writes: usize,
) -> Vec<String> {
    let l = shared.ledger.lock().unwrap();
    let mut failures = l.failures.clone();
    let faults = &run.faults;

    // Receipts by item, in order.
    let mut by_item: HashMap<&str, Vec<&Receipt>> = HashMap::new();
    for r in &l.receipts {
        by_item.entry(r.item.as_str()).or_default().push(r);
    }
    for rs in by_item.values_mut() {
        rs.sort_by_key(|r| r.at);
    }

    let d = explain_duplicates(&by_item, faults, &l.exits);
    let (explained, unexplained) = (d.explained, d.unexplained);
    let fenced = fenced_sends(&l.receipts, grants);

    // Lateness of each acknowledged item's first receipt, inside and outside the fault
    // windows (the item was pending when a fault began and due before it was over).
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    let mut late = Vec::new();
    for (id, a) in &l.acked {
        let Some(first) = by_item.get(id.as_str()).map(|rs| rs[0]) else {
            continue;
        };
        let window = faults
            .iter()
            .filter(|f| first.at >= f.start && a.send_at <= f.end)
            .map(|f| f.from)
            .max();
        let lateness = first.at - a.send_at.max(window.unwrap_or(i64::MIN));
        if lateness > BOUND_MS {
            late.push(format!(
                "{id}: due {}, first received at {} from n{} ({lateness} ms; fault window from {window:?})",
                a.send_at,
                first.at,
                first.node + 1
            ));
        }
        if window.is_some() {
            inside.push(lateness);
        } else {
            outside.push(lateness);
        }
    }
    inside.sort_unstable();
    outside.sort_unstable();

    let delivered = l
        .acked
        .keys()
        .filter(|id| by_item.contains_key(id.as_str()))
        .count();
    let delivered_unacknowledged = by_item
        .keys()
        .filter(|id| !l.acked.contains_key(**id))
        .count();
    let duplicates = explained + unexplained.len();
    report(&format!(
        "RESULT multinode scheduled={} acknowledged={} delivered={delivered} lost={} duplicates={duplicates} explained={explained} unexplained={} fenced_sends={} fenced_writes_rejected={fenced_writes} restarts={} unreachable_restarts={} gave_up={} expired={} delivered_unacknowledged={delivered_unacknowledged} retries={:?}",
        l.scheduled,
        l.acked.len(),
        lost.len(),
        unexplained.len(),
        fenced.len(),
        l.restarts,
        l.unreachable_restarts,
        l.gave_up,
        l.expired,
        l.retries,
    ));
    let mut ack_times: Vec<i64> = l.acked.values().map(|a| a.at).collect();
    ack_times.sort_unstable();
    for f in faults {
        // The longest wait between two OKs to schedules around it: the callers' gap.
        let before = ack_times
            .partition_point(|&t| t < f.start)
            .saturating_sub(1);
        let after = ack_times.partition_point(|&t| t <= f.end + 5_000);
        let gap = ack_times[before..after.max(before)]
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0);
        report(&format!(
            "RESULT multinode fault={:?} node={} regrant_ms={} first_send_ms={} steady_ms={} schedule_gap_ms={gap}",
            f.name,
            f.node.map_or("-".into(), |i| format!("n{}", i + 1)),
            f.regrant
                .as_ref()
                .map_or("none".into(), |g| format!("{} (to {} epoch {})", g.granted_at - f.start, g.owner, g.epoch)),
            f.first_send.map_or("none".into(), |t| (t - f.start).to_string()),
            f.end - f.start
        ));
    }
    for (name, v) in [("outside", &outside), ("inside", &inside)] {
        report(&format!(
            "RESULT multinode lateness={name} n={} p50_ms={} p99_ms={} max_ms={} bound_ms={BOUND_MS}",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(0)
        ));
    }
    let mut per_owner: BTreeMap<&str, usize> = BTreeMap::new();
    for g in grants.iter().filter(|g| g.partition == 0) {
        *per_owner.entry(g.owner.as_str()).or_default() += 1;
    }
    report(&format!(
        "RESULT multinode explained_by={:?} first_receipt_before_fault_ms={:?} grants_of_partition_0={per_owner:?} last_epoch={} streams={:?} exits={}",
        d.why,
        d.lead_ms,
        grants.iter().map(|g| g.epoch).max().unwrap_or(0),
        l.streams,
        l.exits
            .iter()
            .map(|e| format!("n{}@{}:{}({:?})", e.node + 1, e.at, e.status, e.expected))
            .collect::<Vec<_>>()
            .join(",")
    ));

    let mut show = |what: &str, v: &[String]| {
        if !v.is_empty() {
            failures.push(format!(
                "{what}: {} (first {}):\n  {}",
                v.len(),
                v.len().min(10),
                v[..v.len().min(10)].join("\n  ")
            ));
        }
    };
    show("lost", lost);
    show("unexplained duplicates", &unexplained);
    show("fenced sends", &fenced);
    show("late beyond the bound", &late);
    if l.acked.is_empty() || l.receipts.is_empty() {
        failures.push("no load went through".into());
    }
    failures
}

/// The checks themselves can fail: a send after another node's later grant is fenced
/// (and one by a node never granted the partition), one inside the sender's own grant is
/// not; a duplicate whose first receipt came from a node just before it failed is
/// explained, one with no failure, or only a planned stop, is not.
#[test]
fn the_checks_flag_a_send_after_another_nodes_later_grant_and_a_duplicate_no_failure_explains() {
    let p = sendlater::cluster::partition_of("acct0", PARTITIONS) as i32;
    let grant = |epoch, owner: &str, granted_at| Grant {
        partition: p,
        epoch,
        owner: owner.into(),
        granted_at,
    };
    let grants = vec![grant(1, "n1", 1_000), grant(2, "n2", 5_000)];
    let receipt = |item: &str, node, at| Receipt {
        item: item.into(),
        account: "acct0".into(),
        attempt: 1,
        node,
        at,
    };
    let receipts = vec![
        receipt("a", 0, 4_000),
        receipt("b", 0, 5_100),
        receipt("c", 1, 5_200),
        receipt("d", 2, 3_000),
    ];
    let fenced = fenced_sends(&receipts, &grants);
    assert_eq!(fenced.len(), 2, "{fenced:?}");
    assert!(fenced[0].starts_with("b from n1"), "{fenced:?}");
    assert!(fenced[1].starts_with("d from n3"), "{fenced:?}");

    let fault = |name: &str, node, start, failure| Fault {
        name: name.into(),
        node: Some(node),
        start,
        from: start,
        victim_until: start + READ_LAG_MS,
        failure,
        regrant: None,
        first_send: None,
        end: start + 3_000,
    };
    let faults = vec![
        fault("kill -9", 0, 4_100, true),
        fault("SIGTERM n3", 2, 20_000, false),
    ];
    let twice = [
        (receipt("a", 0, 4_000), receipt("a", 1, 6_000)),
        (receipt("e", 1, 6_000), receipt("e", 0, 7_800)),
        (receipt("g", 1, 6_100), receipt("g", 1, 7_000)),
        (receipt("f", 2, 19_990), receipt("f", 0, 20_300)),
    ];
    let mut by_item: HashMap<&str, Vec<&Receipt>> = HashMap::new();
    for (x, y) in &twice {
        by_item.entry(x.item.as_str()).or_default().extend([x, y]);
    }
    let d = explain_duplicates(&by_item, &faults, &[]);
    assert_eq!(d.explained, 1, "{d:?}");
    assert_eq!(d.why.get("kill -9"), Some(&1), "{d:?}");
    let mut unexplained = d.unexplained.clone();
    unexplained.sort();
    assert_eq!(unexplained.len(), 3, "{d:?}");
    assert!(unexplained[0].starts_with("e:"), "{d:?}");
    assert!(unexplained[1].starts_with("f:"), "{d:?}");
    assert!(unexplained[2].starts_with("g:"), "{d:?}");
    // The node's own exit 1 (it lost its partitions) explains a job it had out and
    // another node sent again, not one it sent twice itself before exiting.
    let exits = [Exit {
        node: 1,
        at: 7_500,
        status: "status 1".into(),
        expected: Expect::Nothing,
    }];
    let d = explain_duplicates(&by_item, &faults, &exits);
    assert_eq!(d.explained, 2, "{d:?}");
    assert_eq!(d.why.get("exit 1 of n2"), Some(&1), "{d:?}");
    assert_eq!(d.unexplained.len(), 2, "{d:?}");
}
