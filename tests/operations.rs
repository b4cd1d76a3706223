//! Operations: Prometheus metrics over HTTP, online backup while serving.
mod common;

use std::time::Duration;

use common::*;
use sendlater::pb;

#[tokio::test]
async fn metrics_are_scraped_over_http_and_follow_the_service() {
    let mut t = TestServer::start_with(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.cluster.partitions = 16;
    })
    .await;
    let addr = t.running().metrics_addr().expect("metrics enabled");
    let before = scrape_metrics(addr).await;
    // Each server has its own counters: they start at zero.
    assert_eq!(metric_value(&before, "sendlater_schedules_total"), 0.0);
    // The cluster's figures are there from the start.
    for (name, kind) in [
        ("sendlater_partitions_owned", "gauge"),
        ("sendlater_partition_takeovers_total", "counter"),
        ("sendlater_lease_renew_seconds", "histogram"),
        ("sendlater_forwarded_requests_total", "counter"),
        ("sendlater_fenced_writes_total", "counter"),
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}:\n{before}"
        );
    }
    assert_eq!(metric_value(&before, "sendlater_fenced_writes_total"), 0.0);
    // One node owns every partition (on PostgreSQL once it has taken the leases).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let owned = metric_value(&scrape_metrics(addr).await, "sendlater_partitions_owned");
        if owned == 16.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "owns {owned} of 16");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ids = Vec::new();
    for i in 0..3 {
        let item = t
            .client
            .schedule_message(chat_reply("acme", &format!("T{i}"), T0 + 60_000))
            .await
            .unwrap()
            .into_inner();
        ids.push(item.item_id);
    }
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 10).await;
    let body = scrape_metrics(addr).await;
    assert_eq!(metric_value(&body, "sendlater_schedules_total"), 3.0);
    assert_eq!(metric_value(&body, "sendlater_pending_timers"), 3.0);
    assert!(body.contains("# TYPE sendlater_dispatch_lateness_seconds histogram"));
    assert!(body.contains("sendlater_commit_batch_size_bucket{le=\"+Inf\"}"));
    t.advance(Duration::from_secs(60));
    for _ in 0..3 {
        let job = c.next_job().await;
        c.ack(&job, "ok").await;
    }
    // The acks are recorded, then the server is idle (the dispatcher has published
    // its last round): the gauges follow.
    for id in &ids {
        wait_state(&t.client, "acme", id, pb::State::Sent).await;
    }
    t.settle().await;
    let body = scrape_metrics(addr).await;
    assert_eq!(metric_value(&body, "sendlater_connectors"), 1.0, "{body}");
    assert_eq!(
        metric_value(&body, "sendlater_pending_timers"),
        0.0,
        "{body}"
    );
    for (series, want) in [
        ("sendlater_dispatches_total", 3.0),
        ("sendlater_acks_total", 3.0),
        ("sendlater_nacks_total", 0.0),
        (
            "sendlater_dispatch_lateness_seconds_count{channel=\"chat\"}",
            3.0,
        ),
        (
            "sendlater_dispatch_lateness_seconds_count{channel=\"email\"}",
            0.0,
        ),
    ] {
        assert_eq!(metric_value(&body, series), want, "{series}:\n{body}");
    }
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn backup_copies_a_live_database_consistently() {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    for i in 0..20 {
        t.client
            .schedule_message(chat_reply("acme", &format!("T{i}"), T0 + 60_000))
            .await
            .unwrap();
    }
    let out = t.dir.path().join("copy.db");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sendlater"))
        .args(["backup", "--db"])
        .arg(t.db_path())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let conn = rusqlite::Connection::open(&out).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 20);
    // A second backup to the same file is refused rather than overwriting it.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_sendlater"))
        .args(["backup", "--db"])
        .arg(t.db_path())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert_eq!(again.code(), Some(64));
    // The copy serves: a server started on it has the items.
    let mut config = sendlater::config::ServerConfig::new("127.0.0.1:0".parse().unwrap(), &out);
    config.clock = std::sync::Arc::new(t.clock.clone());
    let s2 = sendlater::server::start(config).await.unwrap();
    let mut c2 = connect(&s2.url()).await;
    let list = c2
        .list_scheduled(pb::ListScheduledRequest {
            account_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.items.len(), 20);
    s2.shutdown().await.unwrap();
    t.stop().await;
}

#[tokio::test]
async fn a_corrupt_or_newer_database_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        b"this is not a database, not even close; ".repeat(200),
    )
    .unwrap();
    let err = serve_fails(&junk);
    assert!(err.contains("not a usable sendlater database"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let newer = dir.path().join("newer.db");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 999)
        .unwrap();
    let err = serve_fails(&newer);
    assert!(err.contains("newer sendlater"), "{err}");
}

/// Runs `sendlater serve` on `db`, which must fail; returns its stderr.
fn serve_fails(db: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sendlater"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_config_file_with_an_unknown_key_stops_start_up_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[limits]\nmax_body = 10\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sendlater"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_body"));
}

#[test]
fn a_public_address_without_tokens_is_refused_with_exit_64_naming_insecure() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sendlater"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--db",
            "/nonexistent/x.db",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure"));
}

#[tokio::test]
async fn each_server_counts_only_its_own_work() {
    let with_metrics = |c: &mut sendlater::config::ServerConfig| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    };
    let mut busy = TestServer::start_with(with_metrics).await;
    let mut quiet = TestServer::start_with(with_metrics).await;
    for i in 0..2 {
        busy.schedule(chat_reply("acme", &format!("T{i}"), T0 + 60_000))
            .await;
    }
    let busy_body = scrape_metrics(busy.running().metrics_addr().unwrap()).await;
    let quiet_body = scrape_metrics(quiet.running().metrics_addr().unwrap()).await;
    assert_eq!(
        metric_value(&busy_body, "sendlater_schedules_total"),
        2.0,
        "{busy_body}"
    );
    assert_eq!(
        metric_value(&quiet_body, "sendlater_schedules_total"),
        0.0,
        "another server's schedules counted here:\n{quiet_body}"
    );
    busy.stop().await;
    quiet.stop().await;
}
