//! Nodes sharing one PostgreSQL database (`cluster::node`), run in this process: a
//! standby forwards Scheduler calls to the owner and takes over at once when the owner
//! stops; an owner whose partitions another node took is fenced and stops.
//! The failover of real processes under faults is tests/failover.rs.
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sendlater::cluster::node::{self, Ended};
use sendlater::config::ServerConfig;
use sendlater::pb;
use tokio::sync::oneshot;

struct Node {
    addr: SocketAddr,
    clock: sendlater::clock::ManualClock,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Ended, sendlater::server::ServerError>>,
}

impl Node {
    fn start(url: &str, id: &str, lease_secs: u64) -> Node {
        let addr: SocketAddr = format!("127.0.0.1:{}", pg::free_port()).parse().unwrap();
        let mut config = ServerConfig::new(addr, url);
        let clock = sendlater::clock::ManualClock::new(T0);
        config.clock = Arc::new(clock.clone());
        config.dispatch.drain_grace_ms = 0;
        config.cluster.node_id = id.into();
        config.cluster.advertise = addr.to_string();
        config.cluster.lease_secs = lease_secs;
        let (stop, stopped) = oneshot::channel::<()>();
        let url = url.to_owned();
        let task = tokio::spawn(async move {
            node::run(config, &url, async {
                let _ = stopped.await;
            })
            .await
        });
        Node {
            addr,
            clock,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(mut self) -> Ended {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.end().await
    }

    async fn end(self) -> Ended {
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the node ends within 30 s")
            .expect("the node task ran")
            .expect("the node ran")
    }
}

async fn db(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// Waits until `node` holds partition 0's lease; returns its epoch.
async fn owner_is(c: &tokio_postgres::Client, node: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = c
            .query_opt(
                "SELECT owner, epoch FROM partition_leases WHERE partition = 0 AND expires_at > now()",
                &[],
            )
            .await
            .unwrap_or(None);
        if let Some(r) = row {
            if r.get::<_, Option<String>>(0).as_deref() == Some(node) {
                return r.get(1);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{node} never owned the partitions"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Scheduler client on `url`, once it answers (a node's server may still be starting).
async fn client_when_up(
    url: &str,
) -> pb::scheduler_client::SchedulerClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
        {
            return pb::scheduler_client::SchedulerClient::new(ch);
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Schedules through `client`, retrying while the call is UNAVAILABLE (between owners,
/// or the standby does not know the owner yet); the request id makes retries safe.
async fn schedule(
    client: &mut pb::scheduler_client::SchedulerClient<tonic::transport::Channel>,
    mut req: pb::ScheduleRequest,
    request_id: &str,
) -> Result<pb::ScheduledItem, tonic::Status> {
    req.request_id = request_id.into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.schedule_message(req.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

#[tokio::test]
async fn a_standby_forwards_to_the_owner_and_takes_over_at_once_when_the_owner_stops() {
    let url = pg::fresh_database().await;
    let c = db(&url).await;
    // A long lease: a takeover that waited for expiry would take 20 s.
    let n1 = Node::start(&url, "n1", 20);
    let first_epoch = owner_is(&c, "n1").await;
    let n2 = Node::start(&url, "n2", 20);
    let mut via_n2 = client_when_up(&n2.url()).await;
    let mut via_n1 = client_when_up(&n1.url()).await;
    // n2 is a standby: the schedule is forwarded to n1, and answered as n1 answers.
    let item = schedule(&mut via_n2, email_reply("acme", "T1", T0 + 60_000), "r1")
        .await
        .expect("scheduled through the standby");
    let direct = via_n1
        .get_item(item_ref("acme", &item.item_id))
        .await
        .expect("n1 has it")
        .into_inner();
    assert_eq!(direct, item);
    // The same request id through n1 is the same item (forwarding kept the key).
    let again = schedule(&mut via_n1, email_reply("acme", "T1", T0 + 60_000), "r1")
        .await
        .unwrap();
    assert_eq!(again.item_id, item.item_id);
    // GetClusterStatus from the lease rows, on the owner and (forwarded) on the standby.
    for url in [n1.url(), n2.url()] {
        let mut cluster = pb::cluster_client::ClusterClient::new(channel(&url).await);
        let s = cluster
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await
            .expect("GetClusterStatus")
            .into_inner();
        let ids: Vec<&str> = s.nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2"], "{s:?}");
        assert_eq!(s.nodes[0].partitions.len(), 64);
        assert!(s.nodes[1].partitions.is_empty());
        assert_eq!(s.nodes[1].address, n2.addr.to_string());
        assert_eq!(s.partitions.len(), 64);
        assert!(s
            .partitions
            .iter()
            .all(|p| p.owner == "n1" && p.epoch == first_epoch));
    }
    // A connector's stream to the standby is held open, with no jobs.
    let mut held = TestConnector::connect(&n2.url(), &[pb::Channel::Email], 10).await;
    // Connections to n2 made while it changes role are never refused: its listening
    // socket passes from the standby's server to the full one.
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = {
        let (probing, addr) = (probing.clone(), n2.addr);
        tokio::spawn(async move {
            let (mut tries, mut refused) = (0u32, 0u32);
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                tries += 1;
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    refused += 1;
                }
                tokio::task::yield_now().await;
            }
            (tries, refused)
        })
    };
    // A planned stop hands over at once, not at the lease's expiry.
    let stopped_at = Instant::now();
    assert_eq!(n1.stop().await, Ended::Stopped);
    let epoch = owner_is(&c, "n2").await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "the takeover waited {:?}: it should follow the release, not the expiry",
        stopped_at.elapsed()
    );
    assert_eq!(epoch, first_epoch + 1);
    let mut via_n2 = client_when_up(&n2.url()).await;
    via_n2
        .get_item(item_ref("acme", &item.item_id))
        .await
        .expect("n2 serves as the owner");
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (tries, refused) = prober.await.unwrap();
    assert!(tries > 0);
    assert_eq!(
        refused, 0,
        "{refused} of {tries} connections refused during the takeover"
    );
    let got = via_n2
        .get_item(item_ref("acme", &item.item_id))
        .await
        .expect("n2 serves it now")
        .into_inner();
    assert_eq!(got.state, pb::State::Pending as i32);
    // The held stream ended when n2 changed role, with UNAVAILABLE ("reconnect")...
    let end = tokio::time::timeout(Duration::from_secs(10), held.jobs.message())
        .await
        .expect("the held stream ends");
    assert_eq!(
        end.expect_err("ended with a status").code(),
        tonic::Code::Unavailable
    );
    // ...and a stream opened again gets n2's due jobs.
    let mut conn = TestConnector::connect(&n2.url(), &[pb::Channel::Email], 10).await;
    n2.clock.set(T0 + 60_000);
    let job = conn.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    conn.ack(&job, "ok").await;
    wait_state(&via_n2, "acme", &item.item_id, pb::State::Sent).await;
    let granted: Vec<(String, Option<String>)> = c
        .query(
            "SELECT owner, prev_owner FROM lease_log WHERE partition = 0 ORDER BY epoch",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        granted,
        vec![("n1".into(), None), ("n2".into(), Some("n1".into()))]
    );
    assert_eq!(n2.stop().await, Ended::Stopped);
}

#[tokio::test]
async fn an_owner_whose_partitions_were_taken_is_fenced_commits_nothing_and_stops() {
    let url = pg::fresh_database().await;
    let c = db(&url).await;
    let n1 = Node::start(&url, "n1", 20);
    owner_is(&c, "n1").await;
    let mut client = client_when_up(&n1.url()).await;
    schedule(
        &mut client,
        email_reply("acme", "T1", T0 + 60_000),
        "before",
    )
    .await
    .expect("n1 owns the partitions");
    // Another node takes partition 7 over (as after an expiry n1 did not see).
    c.execute(
        "UPDATE partition_leases SET owner = 'n9', epoch = epoch + 1, \
         expires_at = now() + interval '1 minute' WHERE partition = 7",
        &[],
    )
    .await
    .unwrap();
    let mut req = email_reply("acme", "T2", T0 + 60_000);
    req.request_id = "after".into();
    let refused = client
        .schedule_message(req)
        .await
        .expect_err("n1's commit is fenced");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let ended = n1.end().await;
    assert!(matches!(ended, Ended::Lost(_)), "{ended:?}");
    let keys: Vec<String> = c
        .query("SELECT request_id FROM items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys,
        vec!["before".to_owned()],
        "nothing after the takeover committed"
    );
}
