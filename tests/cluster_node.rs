//! Nodes sharing one PostgreSQL database (`cluster::node`), run in this process: a node
//! that joins gets its fair share by a planned handover (nothing sent twice), every
//! node serves every account (forwarding the others'), a stop hands everything over at
//! once, and an owner whose partitions another node took is fenced and stops.
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
        Node::start_with(url, id, lease_secs, 0)
    }

    fn start_with(url: &str, id: &str, lease_secs: u64, drain_grace_ms: u64) -> Node {
        // Logs on request: `RUST_LOG=sendlater=info cargo test --test cluster_node`.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let addr: SocketAddr = format!("127.0.0.1:{}", pg::free_port()).parse().unwrap();
        let mut config = ServerConfig::new(addr, url);
        let clock = sendlater::clock::ManualClock::new(T0);
        config.clock = Arc::new(clock.clone());
        config.dispatch.drain_grace_ms = drain_grace_ms;
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
/// or the node restarting its server); the request id makes retries safe.
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

/// Each node's live partitions, once `want` nodes hold them all between them, none
/// above its fair share.
async fn shared_fairly(c: &tokio_postgres::Client, want: &[&str]) -> Vec<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = c
            .query(
                "SELECT partition, owner FROM partition_leases WHERE expires_at > now()",
                &[],
            )
            .await
            .unwrap_or_default();
        let per: Vec<Vec<u32>> = want
            .iter()
            .map(|n| {
                let mut v: Vec<u32> = rows
                    .iter()
                    .filter(|r| r.get::<_, Option<String>>(1).as_deref() == Some(*n))
                    .map(|r| r.get::<_, i32>(0) as u32)
                    .collect();
                v.sort_unstable();
                v
            })
            .collect();
        let total: usize = per.iter().map(Vec::len).sum();
        let (min, max) = (
            per.iter().map(Vec::len).min().unwrap_or(0),
            per.iter().map(Vec::len).max().unwrap_or(0),
        );
        // Every node at most its share, ceil(64 / nodes), and every partition owned.
        if total == 64 && min > 0 && max <= 64usize.div_ceil(want.len()) {
            return per;
        }
        assert!(
            Instant::now() < deadline,
            "the partitions were never shared fairly by {want:?}: {:?}",
            per.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An account whose partition (of 64) is in `partitions`.
fn account_in(partitions: &[u32]) -> String {
    (0..)
        .map(|i| format!("acct-{i}"))
        .find(|a| partitions.contains(&sendlater::cluster::partition_of(a, 64)))
        .expect("some account hashes there")
}

#[tokio::test]
async fn a_node_that_joins_gets_half_the_partitions_and_every_node_serves_every_account() {
    let url = pg::fresh_database().await;
    let c = db(&url).await;
    // A long lease: nothing here may wait for an expiry.
    let n1 = Node::start(&url, "n1", 20);
    let alone = shared_fairly(&c, &["n1"]).await;
    assert_eq!(alone[0].len(), 64, "a lone node owns every partition");
    let mut via_n1 = client_when_up(&n1.url()).await;
    let before = schedule(&mut via_n1, email_reply("acme", "T0", T0 + 60_000), "r0")
        .await
        .expect("scheduled on the lone node");
    // Connections to n1 made while it hands partitions over are never refused: its
    // listening socket passes from one server to the next.
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = {
        let (probing, addr) = (probing.clone(), n1.addr);
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
    let joined_at = Instant::now();
    let n2 = Node::start(&url, "n2", 20);
    let per = shared_fairly(&c, &["n1", "n2"]).await;
    assert!(
        joined_at.elapsed() < Duration::from_secs(10),
        "the share moved after {:?}: it should follow the handover, not an expiry",
        joined_at.elapsed()
    );
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (tries, refused) = prober.await.unwrap();
    assert!(tries > 0);
    assert_eq!(refused, 0, "{refused} of {tries} connections refused");
    assert_eq!(per[0].len(), 32);
    assert_eq!(per[1].len(), 32);
    // The moved partitions were handed from n1 to n2 (one grant each); n1's others
    // kept their first grant.
    let log: Vec<(i32, String, Option<String>)> = c
        .query(
            "SELECT partition, owner, prev_owner FROM lease_log ORDER BY partition, epoch",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for p in &per[0] {
        let grants: Vec<_> = log.iter().filter(|g| g.0 == *p as i32).collect();
        assert_eq!(grants.len(), 1, "partition {p} stayed with n1: {grants:?}");
    }
    for p in &per[1] {
        let grants: Vec<_> = log.iter().filter(|g| g.0 == *p as i32).collect();
        assert_eq!(grants.len(), 2, "{grants:?}");
        assert_eq!(
            (grants[1].1.as_str(), grants[1].2.as_deref()),
            ("n2", Some("n1"))
        );
    }
    // Either node answers for every account, alike: calls for the other's accounts are
    // forwarded (one hop), with the caller's request id.
    let (a1, a2) = (account_in(&per[0]), account_in(&per[1]));
    let mut via_n1 = client_when_up(&n1.url()).await;
    let mut via_n2 = client_when_up(&n2.url()).await;
    let i2 = schedule(&mut via_n1, email_reply(&a2, "T2", T0 + 60_000), "r2")
        .await
        .expect("n1 forwards n2's account");
    let i1 = schedule(&mut via_n2, email_reply(&a1, "T1", T0 + 60_000), "r1")
        .await
        .expect("n2 forwards n1's account");
    for (account, item) in [(&a1, &i1), (&a2, &i2)] {
        for client in [&mut via_n1, &mut via_n2] {
            let got = client
                .get_item(item_ref(account, &item.item_id))
                .await
                .expect("either node reads it")
                .into_inner();
            assert_eq!(&got, item);
        }
    }
    let again = schedule(&mut via_n2, email_reply(&a2, "T2", T0 + 60_000), "r2")
        .await
        .unwrap();
    assert_eq!(
        again.item_id, i2.item_id,
        "the request id held across nodes"
    );
    // Each node hands out its own partitions' jobs, once.
    let mut k1 = TestConnector::connect(&n1.url(), &[pb::Channel::Email], 10).await;
    let mut k2 = TestConnector::connect(&n2.url(), &[pb::Channel::Email], 10).await;
    n1.clock.set(T0 + 60_000);
    n2.clock.set(T0 + 60_000);
    let before_owner = if per[0].contains(&sendlater::cluster::partition_of("acme", 64)) {
        0
    } else {
        1
    };
    let mut want1 = vec![i1.item_id.clone()];
    let mut want2 = vec![i2.item_id.clone()];
    if before_owner == 0 {
        want1.push(before.item_id.clone());
    } else {
        want2.push(before.item_id.clone());
    }
    for (conn, want) in [(&mut k1, &mut want1), (&mut k2, &mut want2)] {
        want.sort();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let job = conn.next_job().await;
            got.push(job_item(&job));
            conn.ack(&job, "ok").await;
        }
        got.sort();
        assert_eq!(&got, want, "each node sends its own partitions' items");
    }
    wait_state(&via_n1, &a1, &i1.item_id, pb::State::Sent).await;
    wait_state(&via_n1, &a2, &i2.item_id, pb::State::Sent).await;
    wait_state(&via_n2, "acme", &before.item_id, pb::State::Sent).await;
    // A planned stop hands everything to the other node at once.
    assert_eq!(n1.stop().await, Ended::Stopped);
    let per = shared_fairly(&c, &["n2"]).await;
    assert_eq!(per[0].len(), 64);
    assert_eq!(n2.stop().await, Ended::Stopped);
}

#[tokio::test]
async fn a_job_out_at_a_connector_when_its_partition_is_handed_over_is_answered_first_and_never_sent_twice(
) {
    let url = pg::fresh_database().await;
    let c = db(&url).await;
    let n1 = Node::start_with(&url, "n1", 20, 30_000);
    shared_fairly(&c, &["n1"]).await;
    // The upper half moves when a second node joins (the owner hands over its last
    // partitions).
    let upper: Vec<u32> = (32..64).collect();
    let account = account_in(&upper);
    let mut via_n1 = client_when_up(&n1.url()).await;
    let x = schedule(&mut via_n1, email_reply(&account, "TX", T0 + 60_000), "x")
        .await
        .unwrap();
    let y = schedule(&mut via_n1, email_reply(&account, "TY", T0 + 120_000), "y")
        .await
        .unwrap();
    let mut k1 = TestConnector::connect(&n1.url(), &[pb::Channel::Email], 10).await;
    n1.clock.set(T0 + 60_000);
    let job = k1.next_job().await;
    assert_eq!(job_item(&job), x.item_id);
    // n2 joins; n1 drains before releasing: its server stops answering (health turns
    // NOT_SERVING, connections are ended) while it waits for the answer of the job out.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&n1.url()).await);
    let serving =
        |s: &Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status>| {
            s.as_ref().is_ok_and(|r| {
                r.get_ref().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            })
        };
    let check = || tonic_health::pb::HealthCheckRequest {
        service: "sendlater.v1.Dispatch".into(),
    };
    assert!(
        serving(&health.check(check()).await),
        "n1 serves before n2 joins"
    );
    let n2 = Node::start(&url, "n2", 20);
    let deadline = Instant::now() + Duration::from_secs(30);
    // A check that gets no answer within a second counts as "not serving": a draining
    // server ends its connections and accepts none until the next one starts.
    while let Ok(answer) = tokio::time::timeout(Duration::from_secs(1), health.check(check())).await
    {
        if !serving(&answer) {
            break;
        }
        assert!(Instant::now() < deadline, "n1 never began its handover");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The upper half is still n1's: it is waiting for the answer.
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM partition_leases WHERE owner = 'n1' AND expires_at > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        held, 64,
        "n1 released partitions before the answer of a job out"
    );
    k1.ack(&job, "ok").await;
    let per = shared_fairly(&c, &["n1", "n2"]).await;
    assert_eq!(per[1], upper);
    let mut via_n2 = client_when_up(&n2.url()).await;
    wait_state(&via_n2, &account, &x.item_id, pb::State::Sent).await;
    // n2 never hands X out: the first job it gives is Y.
    let mut k2 = TestConnector::connect(&n2.url(), &[pb::Channel::Email], 10).await;
    n2.clock.set(T0 + 120_000);
    let first = k2.next_job().await;
    assert_eq!(
        job_item(&first),
        y.item_id,
        "X went out once, acknowledged at n1"
    );
    k2.ack(&first, "ok").await;
    wait_state(&via_n2, &account, &y.item_id, pb::State::Sent).await;
    let got = via_n2
        .get_item(item_ref(&account, &x.item_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.attempts, 1, "{got:?}");
    n1.clock.set(T0 + 120_000);
    assert_eq!(n1.stop().await, Ended::Stopped);
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

#[tokio::test]
async fn a_take_grants_only_free_rows_once_and_a_handover_releases_only_those_given() {
    use sendlater::store::postgres::PgLeases;
    let url = pg::fresh_database().await;
    let c = db(&url).await;
    let ttl = Duration::from_secs(60);
    let a = PgLeases::connect(&url).await.unwrap();
    a.init(8).await.unwrap();
    let b = PgLeases::connect(&url).await.unwrap();
    b.look("b", "b:1", ttl).await.unwrap();
    let look = a.look("a", "a:1", ttl).await.unwrap();
    assert_eq!(look.registered, ["a", "b"], "a look registers the node");
    assert_eq!(look.rows.len(), 8);
    assert!(look.rows.iter().all(|r| r.owner.is_none() && !r.live));
    // Both want 0-5 at once: each row is granted to one of them only.
    let (ga, gb) = tokio::join!(
        a.take("a", &[0, 1, 2, 3, 4, 5], ttl),
        b.take("b", &[5, 4, 3, 2, 1, 0], ttl)
    );
    let (ga, gb) = (ga.unwrap(), gb.unwrap());
    let mut all: Vec<u32> = ga.iter().chain(&gb).map(|h| h.0).collect();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3, 4, 5], "{ga:?} {gb:?}");
    assert!(
        ga.iter().chain(&gb).all(|h| h.1 == 1),
        "first grants: epoch 1"
    );
    // A live row of another node is not taken; its own row is re-taken at a new epoch.
    let (mine, theirs) = if ga.is_empty() {
        (&gb, "b")
    } else {
        (&ga, "a")
    };
    let other = if theirs == "a" { &b } else { &a };
    let other_id = if theirs == "a" { "b" } else { "a" };
    let p = mine[0].0;
    assert!(other.take(other_id, &[p], ttl).await.unwrap().is_empty());
    let again = if theirs == "a" { &a } else { &b };
    let re = again.take(theirs, &[p], ttl).await.unwrap();
    assert_eq!(re, vec![(p, 2)]);
    // A handover releases the rows given, keeps the node registered, and the other
    // node takes them at once.
    again.hand_over(theirs, &re).await.unwrap();
    let look = other.look(other_id, "o:1", ttl).await.unwrap();
    assert!(look.registered.iter().any(|n| n == theirs), "{look:?}");
    let row = look.rows.iter().find(|r| r.partition == p).unwrap();
    assert!(!row.live, "released");
    let taken = other.take(other_id, &[p], ttl).await.unwrap();
    assert_eq!(taken, vec![(p, 3)]);
    let log: Vec<(i64, String, Option<String>)> = c
        .query(
            "SELECT epoch, owner, prev_owner FROM lease_log WHERE partition = $1 ORDER BY epoch",
            &[&(p as i32)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[2].1, other_id);
    assert_eq!(log[2].2.as_deref(), Some(theirs));
}
