//! Faults of the PostgreSQL store (issue 20, "Faults"): PostgreSQL down at start, restarted
//! while serving, connections lost around a COMMIT, a group that fails after its leases'
//! jobs left. Always on PostgreSQL (in both passes of `scripts/test.sh`): the shared test
//! server (`SENDLATER_TEST_PG`), a cluster of the test's own when it must be stopped, and a
//! proxy that cuts connections at chosen moments.
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::pg::{free_port, fresh_database, server_url, PgCluster};
use common::proxy::{CommitCut, Proxy};
use common::*;
use sendlater::clock::Clock;
use sendlater::pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const HOUR: i64 = 3_600_000;
const SEC: i64 = 1_000;
const PASSWORD: &str = "s3cr3t-Pw-42";

/// A `sendlater serve` process's exit code and output, bounded to 60 s.
struct Exited {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn serve_command(db: &str, cwd: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sendlater"));
    c.args([
        "serve",
        "--db",
        db,
        "--listen",
        "127.0.0.1:0",
        "--console-listen",
        "off",
    ])
    .current_dir(cwd)
    .env_remove("SENDLATER_DB")
    .env_remove("SENDLATER_CONFIG")
    .env_remove("SENDLATER_LISTEN")
    .env_remove("SENDLATER_METRICS_LISTEN")
    .env_remove("SENDLATER_CONSOLE_LISTEN")
    .env_remove("RUST_LOG")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

/// Runs `serve` expecting it to exit by itself (within 60 s).
fn serve_until_exit(db: &str, cwd: &std::path::Path) -> Exited {
    let child = serve_command(db, cwd).spawn().expect("the binary runs");
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("wait for serve"),
        Err(_) => {
            // SAFETY: killing the child we started, by its pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("serve did not exit within 60 s");
        }
    };
    Exited {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_no_password(out: &Exited) {
    assert!(
        !out.stdout.contains(PASSWORD) && !out.stderr.contains(PASSWORD),
        "the database password was printed:\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
}

fn assert_left_nothing(cwd: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(cwd)
        .expect("read the working folder")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "serve left files behind: {left:?}");
}

/// `url` with a user and password set (the test servers trust every connection from
/// 127.0.0.1, so the password is only there to be hidden).
fn with_password(url: &str, user: &str) -> String {
    let mut u = url::Url::parse(url).expect("a URL");
    u.set_username(user).expect("user");
    u.set_password(Some(PASSWORD)).expect("password");
    u.to_string()
}

#[test]
fn serve_with_postgresql_down_exits_64_naming_the_url_without_its_password() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let url = format!("postgres://alice:{PASSWORD}@127.0.0.1:{port}/helpdesk");
    let out = serve_until_exit(&url, cwd.path());
    assert_eq!(
        out.code,
        Some(64),
        "a database that cannot be reached is a configuration error (src/cli/error.rs):\n{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("postgres://alice:***@127.0.0.1:{port}/helpdesk")),
        "the error names the URL without its password: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("cannot connect"),
        "the error says what failed: {}",
        out.stderr
    );
    assert_no_password(&out);
    assert_left_nothing(cwd.path());
}

#[test]
fn serve_with_a_postgresql_that_never_answers_exits_64_after_a_bounded_wait() {
    // A server that accepts the connection and then says nothing (frozen, or a network
    // that drops what follows): start-up gives up after its connect timeout rather
    // than waiting for ever.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("address").port();
    let held = std::thread::spawn(move || {
        // Accept and hold (never answer) until serve closes its end.
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept() {
            let done = {
                use std::io::Read;
                let mut probe = s.try_clone().expect("clone");
                let mut buf = [0u8; 1024];
                // Read the startup message and answer nothing; a closed end reads 0.
                loop {
                    match probe.read(&mut buf) {
                        Ok(0) | Err(_) => break true,
                        Ok(_) => continue,
                    }
                }
            };
            open.push(s);
            if done {
                return;
            }
        }
    });
    let cwd = tempfile::tempdir().expect("temp dir");
    let url = format!("postgres://alice:{PASSWORD}@127.0.0.1:{port}/helpdesk");
    let started = std::time::Instant::now();
    let out = serve_until_exit(&url, cwd.path());
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(
        out.stderr
            .contains(&format!("postgres://alice:***@127.0.0.1:{port}/helpdesk")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);
    assert_no_password(&out);
    assert_left_nothing(cwd.path());
    let _ = held.join();
}

#[tokio::test]
async fn serve_against_a_database_that_does_not_exist_exits_64_and_creates_nothing() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let name = format!("missing_{}_{}", std::process::id(), free_port());
    let mut u = url::Url::parse(&server_url()).expect("a URL");
    u.set_path(&format!("/{name}"));
    let url = with_password(u.as_str(), "postgres");
    let db = url.clone();
    let path = cwd.path().to_owned();
    let out = tokio::task::spawn_blocking(move || serve_until_exit(&db, &path))
        .await
        .unwrap();
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(
        out.stderr.contains(&name) && out.stderr.contains("does not exist"),
        "the error names the database and says it does not exist: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(":***@"),
        "the URL is shown without its password: {}",
        out.stderr
    );
    assert_no_password(&out);
    assert_left_nothing(cwd.path());
    let (client, conn) = tokio_postgres::connect(&server_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(conn);
    let found: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 0, "serve created the database {name}");
}

#[tokio::test]
async fn a_serving_process_never_prints_the_password_of_its_database() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let url = with_password(&fresh_database().await, "postgres");
    let mut child = serve_command(&url, cwd.path())
        .env("RUST_LOG", "debug")
        .spawn()
        .expect("the binary runs");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    // Wait (bounded) for the line saying it serves.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("sendlater is serving") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("serve did not say it serves within 60 s");
            }
        }
    }
    // SAFETY: a signal to the child we started, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("serve exits");
    let out = Exited {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: reader.join().expect("stderr read"),
    };
    // A SIGTERM before its handler is installed ends it at once: either way, what it
    // printed is what counts.
    assert!(matches!(out.code, Some(0) | None), "{}", out.stderr);
    assert_no_password(&out);
}

/// A health watch of the whole server (service "").
struct Health(tonic::Streaming<tonic_health::pb::HealthCheckResponse>);

impl Health {
    async fn watch(url: &str) -> Health {
        let mut client = HealthClient::new(channel(url).await);
        let stream = client
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner();
        Health(stream)
    }

    /// Waits (bounded, 30 s) until health says `want`.
    async fn until(&mut self, want: ServingStatus, what: &str) {
        let wait = async {
            loop {
                let r = self
                    .0
                    .message()
                    .await
                    .expect("health stream")
                    .expect("health stream open");
                if r.status == want as i32 {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("health never said {want:?}: {what}"));
    }
}

fn with_request_id(mut r: pb::ScheduleRequest, id: &str) -> pb::ScheduleRequest {
    r.request_id = id.into();
    r
}

/// GetItem, retried (bounded) while it answers UNAVAILABLE (a read connection cut a
/// moment ago is replaced on the next read).
async fn get_item(t: &TestServer, id: &str) -> Result<pb::ScheduledItem, tonic::Status> {
    let mut client = t.client.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.get_item(item_ref("acme", id)).await {
            Err(s) if s.code() == tonic::Code::Unavailable => {
                assert!(std::time::Instant::now() < deadline, "GetItem {id}: {s}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r.map(|r| r.into_inner()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_while_serving_answers_unavailable_then_recovers_by_itself() {
    let cluster = PgCluster::start().await;
    let url = cluster.url();
    let mut t = TestServer::start_with(|c| c.db_path = PathBuf::from(url)).await;
    let mut health = Health::watch(&t.url()).await;
    health.until(ServingStatus::Serving, "at start").await;
    let mut connector = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let mut client = t.client.clone();
    let a = t
        .schedule(with_request_id(email_reply("acme", "T1", T0 + HOUR), "a"))
        .await;
    let b = t
        .schedule(with_request_id(email_reply("acme", "T2", T0 + HOUR), "b"))
        .await;

    cluster.crash().await;
    let c_req = with_request_id(email_reply("acme", "T3", T0 + HOUR), "c");
    for attempt in 1..=2 {
        let r = client.schedule_message(c_req.clone()).await;
        assert_status(r, tonic::Code::Unavailable, "");
        let _ = attempt;
    }
    health
        .until(ServingStatus::NotServing, "while PostgreSQL is down")
        .await;
    let read = client.get_item(item_ref("acme", &a.item_id)).await;
    assert_status(read, tonic::Code::Unavailable, "");

    cluster.restart().await;
    // No request meanwhile: the writer reconnects by itself.
    health
        .until(
            ServingStatus::Serving,
            "after PostgreSQL is back, without traffic",
        )
        .await;
    let d = t
        .schedule(with_request_id(email_reply("acme", "T4", T0 + HOUR), "d"))
        .await;
    let c = t.schedule(c_req.clone()).await;
    let c_again = t.schedule(c_req).await;
    assert_eq!(c.item_id, c_again.item_id, "one item per request_id");
    for it in [&a, &b, &c, &d] {
        let got = get_item(&t, &it.item_id)
            .await
            .expect("an item answered OK");
        assert_eq!(got.state, pb::State::Pending as i32);
    }
    t.advance(Duration::from_millis(HOUR as u64));
    let mut out = Vec::new();
    for _ in 0..4 {
        let job = connector.next_job().await;
        connector
            .ack(&job, &format!("<{}@example.com>", job_item(&job)))
            .await;
        out.push(job_item(&job));
    }
    out.sort();
    let mut want = vec![a.item_id, b.item_id, c.item_id, d.item_id];
    want.sort();
    assert_eq!(out, want, "every item answered OK goes out once");
    for id in &want {
        wait_state(&t.client, "acme", id, pb::State::Sent).await;
    }
    t.stop().await;
}

/// The shared test server's address (host and port of `SENDLATER_TEST_PG`).
fn server_addr() -> std::net::SocketAddr {
    let u = url::Url::parse(&server_url()).expect("a URL");
    let host = u.host_str().expect("a host");
    let port = u.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .expect("resolve the test server")
        .next()
        .expect("an address")
}

async fn raw_pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_connection_is_lost_is_never_reported_ok_and_retries_make_one_item_each() {
    let direct = fresh_database().await;
    let proxy = Proxy::start(server_addr()).await;
    let url = proxy.url_through(&direct);
    let mut t = TestServer::start_with(|c| c.db_path = PathBuf::from(url)).await;
    const TASKS: usize = 6;
    let stop = Arc::new(AtomicBool::new(false));
    // How many schedules were answered so far (OK or not).
    let (done, answered) = tokio::sync::watch::channel(0usize);
    let done = Arc::new(done);
    let mut load = Vec::new();
    for task in 0..TASKS {
        let (client, stop, done) = (t.client.clone(), stop.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let mut client = client;
            let mut answers: Vec<(String, Result<String, tonic::Status>)> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let rid = format!("r-{task}-{n}");
                let req = with_request_id(
                    email_reply("acme", &format!("T{task}-{n}"), T0 + HOUR),
                    &rid,
                );
                let r = client
                    .schedule_message(req)
                    .await
                    .map(|r| r.into_inner().item_id);
                answers.push((rid, r));
                done.send_modify(|n| *n += 1);
                n += 1;
            }
            answers
        }));
    }
    // Waits (bounded) until `more` further schedules were answered.
    let progress = |more: usize| {
        let mut answered = answered.clone();
        async move {
            let target = *answered.borrow_and_update() + more;
            tokio::time::timeout(Duration::from_secs(60), answered.wait_for(|n| *n >= target))
                .await
                .expect("the load goes on")
                .expect("the load is running");
        }
    };
    let unknown_before = t.running().engine().metrics().commit_outcome_unknown.get();
    progress(30).await;
    // The server commits, the answer is lost: the writer must learn it committed.
    proxy.arm(CommitCut::AfterCommit, false);
    proxy.wait_fired(1).await;
    progress(30).await;
    // The COMMIT never reaches the server: nothing committed.
    proxy.arm(CommitCut::BeforeCommit, false);
    proxy.wait_fired(2).await;
    progress(30).await;
    // Every connection, wherever the writer stands.
    proxy.cut_all();
    progress(30).await;
    proxy.arm(CommitCut::AfterCommit, false);
    proxy.wait_fired(3).await;
    progress(30).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for l in load {
        answers.extend(l.await.expect("a load task"));
    }
    let unknown = t.running().engine().metrics().commit_outcome_unknown.get() - unknown_before;
    assert!(
        unknown >= 3,
        "the three cuts around a COMMIT were resolved through the marker ({unknown})"
    );

    let mut ok: HashMap<String, String> = HashMap::new();
    let mut unavailable = 0;
    for (rid, r) in &answers {
        match r {
            Ok(id) => {
                ok.insert(rid.clone(), id.clone());
            }
            Err(s) => {
                assert_eq!(
                    s.code(),
                    tonic::Code::Unavailable,
                    "{rid}: a lost connection answers UNAVAILABLE: {s:?}"
                );
                unavailable += 1;
            }
        }
    }
    assert!(unavailable > 0, "the cuts failed some writes");
    eprintln!(
        "{} schedules, {} OK, {unavailable} UNAVAILABLE, {unknown} commit outcomes learned again",
        answers.len(),
        ok.len()
    );
    // Every OK is there.
    for (rid, id) in &ok {
        let got = get_item(&t, id)
            .await
            .unwrap_or_else(|s| panic!("{rid} answered OK ({id}) is gone: {s}"));
        assert_eq!(got.request_id, *rid);
    }
    // Retrying every request gives the item answered before, or makes it now.
    let mut client = t.client.clone();
    for (rid, _) in &answers {
        let (task, n) = rid[2..].split_once('-').unwrap();
        let req = with_request_id(email_reply("acme", &format!("T{task}-{n}"), T0 + HOUR), rid);
        let again = client
            .schedule_message(req)
            .await
            .unwrap_or_else(|s| panic!("retry of {rid}: {s}"))
            .into_inner();
        if let Some(id) = ok.get(rid) {
            assert_eq!(&again.item_id, id, "{rid} made a second item");
        }
    }
    let db = raw_pg(&direct).await;
    let rows = db
        .query(
            "SELECT request_id, count(*) FROM items GROUP BY request_id",
            &[],
        )
        .await
        .unwrap();
    let counts: HashMap<String, i64> = rows
        .iter()
        .map(|r| (r.get::<_, Option<String>>(0).unwrap_or_default(), r.get(1)))
        .collect();
    assert_eq!(counts.len(), answers.len(), "one item per request_id");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert_invariants(&t, "acme", &ok.values().cloned().collect::<Vec<_>>()).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_after_a_restart_is_not_taken_for_the_previous_processes_group() {
    // The writer learns the outcome of a lost COMMIT from the group marker it wrote in
    // the transaction. A marker left by the previous process must not answer for a
    // group of this one: every write whose COMMIT never reached the server fails.
    let direct = fresh_database().await;
    let proxy = Proxy::start(server_addr()).await;
    let url = proxy.url_through(&direct);
    let mut t = TestServer::start_with(|c| c.db_path = PathBuf::from(url)).await;
    t.schedule(with_request_id(
        email_reply("acme", "T0", T0 + HOUR),
        "first",
    ))
    .await;
    t.stop().await;
    let db = raw_pg(&direct).await;
    let marker: String = db
        .query_one(
            "SELECT value FROM store_meta WHERE key LIKE 'writer_group%'",
            &[],
        )
        .await
        .expect("the previous process left its marker")
        .get(0);
    // As many groups as the previous process numbered, and more: whatever a group's
    // number, its COMMIT is cut before it reaches the server.
    let groups: usize = marker
        .rsplit(['-', ':'])
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    t.restart().await;
    proxy.arm(CommitCut::BeforeCommit, true);
    let mut client = t.client.clone();
    for n in 0..groups + 3 {
        let rid = format!("lost-{n}");
        let r = client
            .schedule_message(with_request_id(
                email_reply("acme", &format!("L{n}"), T0 + HOUR),
                &rid,
            ))
            .await;
        assert_status(r, tonic::Code::Unavailable, "");
    }
    proxy.disarm();
    let lost: i64 = db
        .query_one(
            "SELECT count(*) FROM items WHERE request_id LIKE 'lost-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(lost, 0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_group_fails_at_commit_after_its_job_left_stays_taken() {
    // PostgreSQL's counterpart of wrong_sends.rs's test on SQLite. X's lease runs in a
    // dispatch write, its job leaves, then the group's COMMIT fails (a deferred foreign
    // key that a trigger breaks, once). The job is out at the connector: X must stay
    // DISPATCHING (a Cancel is FAILED_PRECONDITION), must not be handed out again, and
    // its Ack is recorded.
    let direct = fresh_database().await;
    let mut t = TestServer::start_with(|c| c.db_path = PathBuf::from(direct.clone())).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let x = t.schedule(email_reply("acme", "T1", T0 + SEC)).await;
    let db = raw_pg(&direct).await;
    db.batch_execute(&format!(
        "CREATE SEQUENCE fail_once;
         CREATE TABLE poison (x BIGINT REFERENCES items (id) DEFERRABLE INITIALLY DEFERRED);
         CREATE FUNCTION poison_x() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF nextval('fail_once') = 1 THEN INSERT INTO poison VALUES (-1); END IF;
             RETURN NULL;
           END $$;
         CREATE TRIGGER fail_x AFTER INSERT ON events FOR EACH ROW
           WHEN (NEW.item_id = {} AND NEW.type = {})
           EXECUTE FUNCTION poison_x();",
        numeric_id(&x.item_id),
        sendlater::domain::EventType::Dispatching.as_i64()
    ))
    .await
    .unwrap();
    t.advance(Duration::from_secs(1));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), x.item_id);
    assert_eq!(job.attempt, 1);
    t.settle().await;
    // The group that leased X failed once; the lease was recorded again after it.
    let dispatching: i64 = db
        .query_one("SELECT last_value FROM fail_once", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        dispatching, 2,
        "X's lease: one failed group, recorded again"
    );
    let held = get_item(&t, &x.item_id).await.expect("X is there");
    assert_eq!(
        held.state,
        pb::State::Dispatching as i32,
        "X's job is out: {held:?}"
    );
    // Fenced by a later item: the next job is it, not X again.
    let fence = t
        .schedule(email_reply("acme", "T2", t.clock.now_ms()))
        .await;
    let next = c.next_job().await;
    assert_eq!(
        job_item(&next),
        fence.item_id,
        "X was handed out a second time while its first job was out: {next:?}"
    );
    let mut client = t.client.clone();
    let cancel = client.cancel(item_ref("acme", &x.item_id)).await;
    assert_status(cancel, tonic::Code::FailedPrecondition, "");
    c.ack(&job, "<x@example.com>").await;
    let sent = wait_state(&t.client, "acme", &x.item_id, pb::State::Sent).await;
    assert_eq!(sent.attempts, 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_answer_unavailable_while_a_lost_commit_cannot_be_resolved() {
    // The COMMIT's connection is lost and PostgreSQL cannot be reached to learn the
    // outcome: the writer waits for it before committing anything else, but the writes
    // that come meanwhile are answered UNAVAILABLE, not left hanging until it is back.
    let direct = fresh_database().await;
    let proxy = Proxy::start(server_addr()).await;
    let url = proxy.url_through(&direct);
    let mut t = TestServer::start_with(|c| c.db_path = PathBuf::from(url)).await;
    t.schedule(with_request_id(
        email_reply("acme", "T0", T0 + HOUR),
        "before",
    ))
    .await;
    proxy.refuse(true);
    proxy.arm(CommitCut::BeforeCommit, false);
    let lost_req = with_request_id(email_reply("acme", "T1", T0 + HOUR), "lost");
    let mut client = t.client.clone();
    let lost = tokio::spawn({
        let req = lost_req.clone();
        async move { client.schedule_message(req).await }
    });
    proxy.wait_fired(1).await;
    let mut client = t.client.clone();
    for n in 0..3 {
        let req = with_request_id(
            email_reply("acme", &format!("M{n}"), T0 + HOUR),
            &format!("meanwhile-{n}"),
        );
        let r = tokio::time::timeout(Duration::from_secs(10), client.schedule_message(req))
            .await
            .unwrap_or_else(|_| panic!("meanwhile-{n} got no answer within 10 s"));
        assert_status(r, tonic::Code::Unavailable, "");
    }
    proxy.refuse(false);
    let r = tokio::time::timeout(Duration::from_secs(30), lost)
        .await
        .expect("the lost write is answered once PostgreSQL is reachable")
        .unwrap();
    assert_status(r, tonic::Code::Unavailable, "");
    // Once the writer commits again (health is SERVING after its first commit), each
    // retry makes its item once.
    let mut health = Health::watch(&t.url()).await;
    health
        .until(
            ServingStatus::Serving,
            "after PostgreSQL is reachable again",
        )
        .await;
    for (rid, ticket) in [("lost", "T1"), ("meanwhile-0", "M0")] {
        let req = with_request_id(email_reply("acme", ticket, T0 + HOUR), rid);
        t.client
            .clone()
            .schedule_message(req)
            .await
            .unwrap_or_else(|s| panic!("{rid} retried once the writer commits again: {s}"));
    }
    let db = raw_pg(&direct).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "before, lost and meanwhile-0, once each");
    t.stop().await;
}

/// Waits (bounded, 30 s) until a session of `db`'s server waits for a synchronous
/// standby in its COMMIT.
async fn wait_for_sync_rep(db: &tokio_postgres::Client, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: no COMMIT waits"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_still_under_way_on_the_server_is_not_taken_for_lost() {
    // The connection is lost while PostgreSQL still holds the group's COMMIT (it waits
    // for a synchronous standby that never answers; a slow disk does the same). Read at
    // once, the marker says "not committed", yet the session can still commit after
    // that: the writer must end that session first, then read the outcome. Before, it
    // answered UNAVAILABLE and handed the effects back, and the group committed later:
    // an item in the database with no timer, that never went out.
    let cluster = PgCluster::start().await;
    let proxy = Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], cluster.port()))).await;
    let url = proxy.url_through(&cluster.url());
    let mut t = TestServer::start_with(|c| c.db_path = PathBuf::from(url)).await;
    let mut connector = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let warm = t
        .schedule(with_request_id(
            email_reply("acme", "T0", T0 + HOUR),
            "warm",
        ))
        .await;
    let admin = raw_pg(&cluster.url()).await;
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    // A probe's commit shows when commits wait for the standby; cancelled, it commits.
    let probe = {
        let url = cluster.url();
        tokio::spawn(async move {
            raw_pg(&url)
                .await
                .batch_execute("CREATE TABLE probe ()")
                .await
        })
    };
    wait_for_sync_rep(&admin, "the probe").await;
    admin
        .batch_execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
        )
        .await
        .unwrap();
    probe
        .await
        .unwrap()
        .expect("the probe commits once its wait is cancelled");

    let x_req = with_request_id(email_reply("acme", "T1", T0 + HOUR), "x");
    let x = {
        let mut client = t.client.clone();
        let req = x_req.clone();
        tokio::spawn(async move { client.schedule_message(req).await })
    };
    wait_for_sync_rep(&admin, "X's group").await;
    proxy.cut_all();
    let x = tokio::time::timeout(Duration::from_secs(60), x)
        .await
        .expect("X is answered")
        .unwrap()
        .expect("X's group committed: it is answered OK")
        .into_inner();
    for sql in [
        "ALTER SYSTEM RESET synchronous_standby_names",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let again = t.schedule(x_req).await;
    assert_eq!(again.item_id, x.item_id);
    let y = t
        .schedule(with_request_id(email_reply("acme", "T2", T0 + HOUR), "y"))
        .await;
    t.advance(Duration::from_millis(HOUR as u64));
    let mut out = Vec::new();
    for _ in 0..3 {
        let job = connector.next_job().await;
        connector
            .ack(&job, &format!("<{}@example.com>", job_item(&job)))
            .await;
        out.push(job_item(&job));
    }
    out.sort();
    let mut want = vec![warm.item_id, x.item_id, y.item_id];
    want.sort();
    assert_eq!(out, want, "every item goes out once");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_is_taken_for_lost_and_writes_go_on() {
    // The connections stay open but nothing comes back (a frozen server, a network
    // that drops everything without a reset). A write and a read must not wait for
    // ever: after the answer timeout they are UNAVAILABLE, new connections are taken,
    // and reads and writes go on; health is SERVING again by itself.
    let direct = fresh_database().await;
    let proxy = Proxy::start(server_addr()).await;
    let url = proxy.url_through(&direct);
    let mut t = TestServer::start_with(|c| c.db_path = PathBuf::from(url)).await;
    let mut health = Health::watch(&t.url()).await;
    let before = t
        .schedule(with_request_id(
            email_reply("acme", "T0", T0 + HOUR),
            "before",
        ))
        .await;
    // The shared read connections are open too (reads take them in turn).
    for _ in 0..8 {
        get_item(&t, &before.item_id)
            .await
            .expect("before is there");
    }
    proxy.freeze_open();
    let x_req = with_request_id(email_reply("acme", "T1", T0 + HOUR), "x");
    let (mut writer, mut reader) = (t.client.clone(), t.client.clone());
    let (w, r) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(40),
            writer.schedule_message(x_req.clone()),
        ),
        tokio::time::timeout(
            Duration::from_secs(40),
            reader.get_item(item_ref("acme", &before.item_id)),
        ),
    );
    let w = w.expect("a write to a database that stopped answering is answered within 40 s");
    assert_status(w, tonic::Code::Unavailable, "");
    let r = r.expect("a read from a database that stopped answering is answered within 40 s");
    assert_status(r, tonic::Code::Unavailable, "");
    // Still frozen: reads take new connections.
    let again = get_item(&t, &before.item_id).await.expect("read again");
    assert_eq!(again.item_id, before.item_id);
    health
        .until(
            ServingStatus::Serving,
            "after the writer took a new connection",
        )
        .await;
    let y = t
        .schedule(with_request_id(email_reply("acme", "T2", T0 + HOUR), "y"))
        .await;
    proxy.thaw();
    let x = t.schedule(x_req).await;
    for id in [&x.item_id, &y.item_id] {
        get_item(&t, id).await.expect("answered OK, so there");
    }
    let db = raw_pg(&direct).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "before, x and y, once each");
    t.stop().await;
}
