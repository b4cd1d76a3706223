//! `sendlater cluster` end to end: the real binary against a real server, as a table and
//! as JSON, refused without an admin token; and `sendlater serve` taking its node id and
//! address from the environment and its partitions from the config file.
mod common;

use std::time::Duration;

use common::cli::{rows, run_off_runtime, Run, Serve};
use common::*;
use sendlater::config::{Accounts, Role, TokenConfig};

/// Runs `sendlater cluster ARGS` against `url`, off the runtime's thread so an
/// in-process server keeps serving meanwhile.
async fn cluster(url: &str, args: &[&str]) -> Run {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sendlater"));
    command
        .arg("cluster")
        .args(args)
        .env("SENDLATER_SERVER", url)
        .env_remove("SENDLATER_TZ")
        .env_remove("SENDLATER_TOKEN")
        .env_remove("SENDLATER_ACCOUNT");
    run_off_runtime(command).await
}

/// `sendlater cluster --json` against `url`, parsed.
async fn cluster_json(url: &str) -> serde_json::Value {
    cluster(url, &["--json"]).await.json()
}

#[tokio::test]
async fn cluster_prints_the_node_with_its_partition_ranges_and_every_partition() {
    let mut t = TestServer::start_with(|c| {
        c.cluster.node_id = "node-a".into();
        c.cluster.partitions = 6;
    })
    .await;
    let addr = t.running().local_addr().to_string();
    // On PostgreSQL the node owns them once it has taken the leases.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let json = cluster_json(&t.url()).await;
        if json["nodes"][0]["partitions"] == serde_json::json!([0, 1, 2, 3, 4, 5]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{json}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = cluster(&t.url(), &[]).await.ok();
    let (nodes, partitions) = out.split_once("\n\n").expect("two tables");
    let nodes = rows(nodes);
    assert_eq!(
        nodes[0],
        ["NODE", "ADDRESS", "LAST", "SEEN", "OWNS", "PARTITIONS"],
        "{out}"
    );
    assert_eq!(nodes.len(), 2, "one node:\n{out}");
    assert_eq!(
        (nodes[1][0], nodes[1][1], nodes[1][3], nodes[1][4]),
        ("node-a", addr.as_str(), "6", "0-5"),
        "{out}"
    );
    let partitions = rows(partitions);
    assert_eq!(
        partitions[0],
        ["PARTITION", "OWNER", "EPOCH", "EXPIRES", "AT"],
        "{out}"
    );
    let owners: Vec<(&str, &str)> = partitions[1..].iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        owners,
        ["0", "1", "2", "3", "4", "5"].map(|p| (p, "node-a")),
        "{out}"
    );

    let json = cluster_json(&t.url()).await;
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json["nodes"][0]["node_id"], "node-a");
    assert_eq!(json["nodes"][0]["address"], addr.as_str());
    assert_eq!(
        json["nodes"][0]["partitions"],
        serde_json::json!([0, 1, 2, 3, 4, 5])
    );
    assert!(json["nodes"][0]["last_seen"].is_string(), "{json}");
    let parts = json["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 6);
    assert!(parts.iter().all(|p| p["owner"] == "node-a"), "{json}");
    t.stop().await;
}

#[tokio::test]
async fn cluster_needs_an_admin_token_when_tokens_are_configured() {
    let mut t = TestServer::start_with(|c| {
        c.cluster.partitions = 2;
        c.tokens = vec![
            TokenConfig {
                token: "backend-token-0001".into(),
                role: Role::Backend,
                accounts: Accounts::All,
            },
            TokenConfig {
                token: "operator-token-0001".into(),
                role: Role::Admin,
                accounts: Accounts::All,
            },
        ];
    })
    .await;
    let none = cluster(&t.url(), &[]).await;
    assert_eq!(none.code, Some(1), "{}", none.stderr);
    assert!(none.stderr.contains("UNAUTHENTICATED"), "{}", none.stderr);
    assert_eq!(none.stdout, "");
    let backend = cluster(&t.url(), &["--token", "backend-token-0001"]).await;
    assert_eq!(backend.code, Some(1), "{}", backend.stderr);
    assert!(
        backend.stderr.contains("PERMISSION_DENIED"),
        "{}",
        backend.stderr
    );
    let admin = cluster(&t.url(), &["--token", "operator-token-0001"])
        .await
        .ok();
    assert!(admin.starts_with("NODE "), "{admin}");
    t.stop().await;
}

/// Starts `sendlater serve --config FILE` (with `config` in FILE) with `env`, on a
/// temporary SQLite file and a free port; killed when dropped.
fn serve(config: &str, env: &[(&str, &str)]) -> Serve {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("sendlater.toml");
    std::fs::write(&file, config).expect("config file");
    let mut command = Serve::command(&dir.path().join("cluster.db"));
    command
        .arg("--config")
        .arg(&file)
        .env_remove("SENDLATER_NODE_ID")
        .env_remove("SENDLATER_ADVERTISE");
    for (k, v) in env {
        command.env(k, v);
    }
    Serve::spawn(command).keeping(dir)
}

#[tokio::test]
async fn serve_takes_its_node_id_and_address_from_the_environment_and_partitions_from_the_file() {
    let s = serve(
        "[cluster]\npartitions = 3\nlease_secs = 5\n",
        &[
            ("SENDLATER_NODE_ID", "node-env"),
            ("SENDLATER_ADVERTISE", "node-env.internal:7777"),
        ],
    );
    let json = cluster_json(&s.url).await;
    assert_eq!(json["nodes"][0]["node_id"], "node-env", "{json}");
    assert_eq!(json["nodes"][0]["address"], "node-env.internal:7777");
    assert_eq!(json["nodes"][0]["partitions"], serde_json::json!([0, 1, 2]));
    drop(s);

    // Without them: the host name and the port it listens on, at its listen address.
    let s = serve("", &[]);
    let json = cluster_json(&s.url).await;
    let port = s.addr.rsplit_once(':').expect("HOST:PORT").1;
    assert_eq!(
        json["nodes"][0]["node_id"],
        format!("{}:{port}", sendlater::config::host_name()),
        "{json}"
    );
    assert_eq!(json["nodes"][0]["address"], s.addr.as_str());
    assert_eq!(json["partitions"].as_array().map(Vec::len), Some(64));
}
