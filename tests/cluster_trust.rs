//! The trust window of a node owning partitions among several (`cluster::trust`): jobs
//! leave only while it is open. On SQLite (one node, no fence) the window alone is
//! under test: the PostgreSQL fence has its own tests (`store::postgres::lease`,
//! tests/cluster_node.rs).
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sendlater::cluster::trust::Trust;
use sendlater::cluster::Ownership;
use sendlater::pb;
use sendlater::store::Fence;

fn owner(trust: &Arc<Trust>) -> Ownership {
    Ownership {
        fence: Fence {
            node: "n1".into(),
            held: Vec::new(),
            idle_limit: Duration::from_secs(1),
        },
        trust: trust.clone(),
        view: None,
        placement: None,
        metrics: None,
    }
}

#[tokio::test]
async fn a_due_item_waits_while_the_trust_window_is_closed_and_leaves_once_it_opens() {
    let trust = Arc::new(Trust::new());
    let own = owner(&trust);
    let mut t = TestServer::start_sqlite_with(|c| c.ownership = Some(own)).await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 1_000)).await;
    t.advance(Duration::from_secs(1));
    t.settle().await;
    // Due, a connector with credit, and yet nothing left: the window is closed.
    let it = wait_state(&t.client, "acme", &item.item_id, pb::State::Pending).await;
    assert_eq!(it.attempts, 0);
    // A renewal opens it: the item goes out, attempt 1.
    trust.renewed(Instant::now(), Duration::from_secs(30));
    let job = c.next_job().await;
    assert_eq!((job_item(&job), job.attempt), (item.item_id.clone(), 1));
    c.ack(&job, "ok").await;
    wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    // Closed again (the lease lost): the next due item stays PENDING.
    trust.close();
    let second = t.schedule(email_reply("acme", "T2", T0 + 2_000)).await;
    t.advance(Duration::from_secs(1));
    t.settle().await;
    let it = wait_state(&t.client, "acme", &second.item_id, pb::State::Pending).await;
    assert_eq!(it.attempts, 0);
    t.stop().await;
}
