//! `sendlater.v1.Cluster/GetClusterStatus` against a real server: one node owns every
//! partition of `[cluster] partitions`, at the address it advertises; with tokens
//! configured only an admin token may ask. The assertions hold on SQLite (one node for
//! ever) and on PostgreSQL (`SENDLATER_TEST_STORE=postgres`: a lease table with this one
//! node in it, once it has taken the leases).
mod common;

use std::time::{Duration, Instant};

use common::*;
use sendlater::config::{Accounts, Role, TokenConfig};
use sendlater::pb;
use sendlater::pb::cluster_client::ClusterClient;
use tonic::Code;

/// GetClusterStatus with `token`, if any.
async fn status(url: &str, token: Option<&str>) -> Result<pb::ClusterStatus, tonic::Status> {
    let mut client = ClusterClient::new(channel(url).await);
    let mut request = tonic::Request::new(pb::GetClusterStatusRequest {});
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client
        .get_cluster_status(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Whether `s` is one node owning each of `partitions` partitions.
fn one_node_owns_all(s: &pb::ClusterStatus, partitions: u32) -> bool {
    let all: Vec<u32> = (0..partitions).collect();
    s.nodes.len() == 1
        && s.nodes[0].partitions == all
        && s.partitions.iter().map(|p| p.partition).collect::<Vec<_>>() == all
        && s.partitions.iter().all(|p| p.owner == s.nodes[0].node_id)
}

/// The status once this one node owns every partition (at once on SQLite; on
/// PostgreSQL once it has taken the leases), bounded.
async fn settled_status(url: &str, token: Option<&str>, partitions: u32) -> pb::ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(url, token).await.expect("GetClusterStatus answers");
        if one_node_owns_all(&s, partitions) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "one node never owned all {partitions} partitions: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_node_owns_every_configured_partition_at_the_address_it_advertises() {
    let mut t = TestServer::start_with(|c| {
        c.cluster.node_id = "node-a".into();
        c.cluster.partitions = 12;
    })
    .await;
    let s = settled_status(&t.url(), None, 12).await;
    let node = &s.nodes[0];
    assert_eq!(node.node_id, "node-a");
    // The default address is the listen address, with the port the server was given.
    assert_eq!(node.address, t.running().local_addr().to_string());
    assert!(node.last_seen.is_some(), "{node:?}");
    assert_eq!(s.partitions.len(), 12);
    for p in &s.partitions {
        assert_eq!(p.owner, "node-a", "{p:?}");
        assert!(
            p.epoch >= 1,
            "a held lease has been taken at least once: {p:?}"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn by_default_the_node_is_named_by_host_and_port_and_owns_sixty_four_partitions() {
    let mut t = TestServer::start().await;
    let s = settled_status(&t.url(), None, 64).await;
    // The default id: the host name and the port the server was given.
    let port = t.running().local_addr().port();
    assert_eq!(
        s.nodes[0].node_id,
        format!("{}:{port}", sendlater::config::host_name())
    );
    assert_eq!(s.partitions.len(), 64);
    t.stop().await;
}

#[tokio::test]
async fn with_tokens_only_an_admin_token_reads_the_cluster_status() {
    let token = |token: &str, role| TokenConfig {
        token: token.into(),
        role,
        accounts: Accounts::All,
    };
    let mut t = TestServer::start_with(|c| {
        c.cluster.partitions = 4;
        c.tokens = vec![
            token("backend-token-0001", Role::Backend),
            token("connector-token-01", Role::Connector),
            token("operator-token-0001", Role::Admin),
        ];
    })
    .await;
    let url = t.url();
    let none = status(&url, None).await.expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let unknown = status(&url, Some("not-a-token-of-ours"))
        .await
        .expect_err("unknown token");
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown:?}");
    for other in ["backend-token-0001", "connector-token-01"] {
        let refused = status(&url, Some(other)).await.expect_err(other);
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{other}: {refused:?}"
        );
        assert!(refused.message().contains("Cluster"), "{refused:?}");
    }
    let s = settled_status(&url, Some("operator-token-0001"), 4).await;
    assert_eq!(s.nodes.len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_cluster_service() {
    let mut t = TestServer::start().await;
    let names = reflection_services(&t.url()).await;
    assert!(
        names.iter().any(|n| n == "sendlater.v1.Cluster"),
        "{names:?}"
    );
    t.stop().await;
}
