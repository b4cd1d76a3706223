//! The router of a node among several (`cluster::route`): a Scheduler call for an
//! account another node owns is answered by that owner, through any node.
//!
//! Servers on one PostgreSQL database (`SENDLATER_TEST_PG`), each owning a disjoint set
//! of its partitions (the lease rows taken, then handed to each node's id, as nodes do),
//! with a `Placement` naming the others' addresses.
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sendlater::cluster::placement::Placement;
use sendlater::cluster::{partition_of, ClusterSettings};
use sendlater::pb;

/// Partitions of the test databases.
const PARTITIONS: u32 = 4;

/// A server of the test cluster and the placement it forwards by.
struct Node {
    t: TestServer,
    placement: Arc<Placement>,
    owns: Vec<u32>,
}

impl Node {
    fn address(&self) -> String {
        self.t.url().trim_start_matches("http://").to_owned()
    }
    fn schedules(&self) -> u64 {
        self.t.running().engine().metrics().schedules.get()
    }
    fn forwarded(&self) -> u64 {
        self.t.running().engine().metrics().forwarded_requests.get()
    }
    fn moved(&self) -> u64 {
        self.t.running().engine().metrics().moved_requests.get()
    }
}

/// The lease rows of a fresh database, node `n{i}` holding `split[i]` (at the epoch of
/// one grant each), every grant for an hour.
async fn split_leases(url: &str, split: &[&[u32]]) -> Vec<Vec<(u32, i64)>> {
    let hour = Duration::from_secs(3600);
    let leases = sendlater::store::postgres::PgLeases::connect(url)
        .await
        .expect("the lease rows");
    leases
        .init(PARTITIONS)
        .await
        .expect("the partitions are made");
    let all = leases
        .take_all("n0", hour)
        .await
        .expect("the leases can be read")
        .expect("a fresh database's partitions are free");
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("a session");
    tokio::spawn(connection);
    let mut held = Vec::new();
    for (i, parts) in split.iter().enumerate() {
        let ps: Vec<i32> = parts.iter().map(|&p| p as i32).collect();
        client
            .execute(
                "UPDATE partition_leases SET owner = $1 WHERE partition = ANY($2)",
                &[&format!("n{i}"), &ps],
            )
            .await
            .expect("the partitions handed to the node");
        held.push(
            all.iter()
                .copied()
                .filter(|(p, _)| parts.contains(p))
                .collect(),
        );
    }
    held
}

/// Servers on one database, server `i` owning `split[i]`; every placement names every
/// partition's owner.
async fn cluster(split: &[&[u32]]) -> Vec<Node> {
    cluster_with(split, |_| {}).await
}

/// As [`cluster`], each server's configuration changed by `tweak`.
async fn cluster_with(
    split: &[&[u32]],
    tweak: impl Fn(&mut sendlater::config::ServerConfig) + Clone + Send + 'static,
) -> Vec<Node> {
    let url = pg::fresh_database().await;
    let held = split_leases(&url, split).await;
    let mut nodes = Vec::new();
    for (i, held) in held.into_iter().enumerate() {
        let placement = Arc::new(Placement::new());
        let ownership = pg::owning(&format!("n{i}"), held.clone(), Some(placement.clone()));
        let url = url.clone();
        let tweak = tweak.clone();
        let t = TestServer::start_with(move |c| {
            c.db_path = url.into();
            let mut settings = ClusterSettings::new(format!("n{i}"), "127.0.0.1:0");
            settings.partitions = PARTITIONS;
            c.cluster = settings;
            c.ownership = Some(ownership);
            tweak(c);
        })
        .await;
        nodes.push(Node {
            t,
            placement,
            owns: held.iter().map(|&(p, _)| p).collect(),
        });
    }
    let owners = true_owners(&nodes);
    for n in &nodes {
        n.placement.set_owners(owners.clone());
    }
    nodes
}

/// Every partition → the address of the node owning it.
fn true_owners(nodes: &[Node]) -> HashMap<u32, String> {
    nodes
        .iter()
        .flat_map(|n| n.owns.iter().map(move |&p| (p, n.address())))
        .collect()
}

/// The `k`-th account (from 0) of partition `p`.
fn account_in(p: u32, k: usize) -> String {
    (0..)
        .map(|i| format!("acct-{i}"))
        .filter(|a| partition_of(a, PARTITIONS) == p)
        .nth(k)
        .expect("accounts of every partition")
}

async fn stop_all(nodes: Vec<Node>) {
    for mut n in nodes {
        n.t.stop().await;
    }
}

fn with_request_id(mut r: pb::ScheduleRequest, id: &str) -> pb::ScheduleRequest {
    r.request_id = id.into();
    r
}

#[tokio::test]
async fn a_schedule_for_another_nodes_account_is_run_by_its_owner_with_the_same_answer_and_idempotency(
) {
    let nodes = cluster(&[&[0], &[1, 2, 3]]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let theirs = account_in(1, 0);
    let req = with_request_id(email_reply(&theirs, "T1", T0 + 60_000), "r1");

    let mut via_a = a.t.client.clone();
    let item = via_a
        .schedule_message(req.clone())
        .await
        .expect("answered through A")
        .into_inner();
    assert_eq!(item.account_id, theirs);
    assert_eq!((a.schedules(), b.schedules()), (0, 1), "run by B, not by A");
    assert_eq!(a.forwarded(), 1);
    let got =
        b.t.client
            .clone()
            .get_item(item_ref(&theirs, &item.item_id))
            .await
            .expect("B has it")
            .into_inner();
    assert_eq!(got, item);

    // The same request id, through A or directly: the same item, nothing new.
    let again = via_a
        .schedule_message(req.clone())
        .await
        .expect("a retry through A")
        .into_inner();
    assert_eq!(again, item);
    let direct =
        b.t.client
            .clone()
            .schedule_message(req.clone())
            .await
            .expect("a retry at B")
            .into_inner();
    assert_eq!(direct, item);
    let mut changed = req.clone();
    changed.send_at = Some(ts(T0 + 120_000));
    assert_status(
        via_a.schedule_message(changed).await,
        tonic::Code::AlreadyExists,
        "",
    );
    assert_eq!(
        b.t.client
            .clone()
            .list_scheduled(pb::ListScheduledRequest {
                account_id: theirs.clone(),
                ..Default::default()
            })
            .await
            .expect("B lists")
            .into_inner()
            .items,
        vec![item.clone()],
        "one item for the one request id"
    );

    // An account of A's own stays on A.
    let mine = account_in(0, 0);
    let b_before = b.schedules();
    let own = via_a
        .schedule_message(with_request_id(email_reply(&mine, "T2", T0 + 60_000), "r1"))
        .await
        .expect("A's own account")
        .into_inner();
    assert_eq!(own.account_id, mine);
    assert_eq!((a.schedules(), b.schedules()), (1, b_before));
    assert_eq!(
        a.forwarded(),
        3,
        "the call for A's account was not forwarded"
    );
    assert_eq!(b.moved(), 0);
    stop_all(nodes).await;
}

#[tokio::test]
async fn reads_and_the_event_stream_of_another_nodes_account_work_through_any_node() {
    let nodes = cluster(&[&[0], &[1, 2, 3]]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let theirs = account_in(2, 0);
    let mut via_a = a.t.client.clone();
    let first =
        b.t.client
            .clone()
            .schedule_message(email_reply(&theirs, "T1", T0 + 60_000))
            .await
            .expect("scheduled at B")
            .into_inner();

    let got = via_a
        .get_item(item_ref(&theirs, &first.item_id))
        .await
        .expect("GetItem through A")
        .into_inner();
    assert_eq!(got, first);
    let listed = via_a
        .list_scheduled(pb::ListScheduledRequest {
            account_id: theirs.clone(),
            ..Default::default()
        })
        .await
        .expect("ListScheduled through A")
        .into_inner();
    assert_eq!(listed.items, vec![first.clone()]);
    assert_status(
        via_a.get_item(item_ref(&theirs, "999999")).await,
        tonic::Code::NotFound,
        "",
    );

    let mut events = via_a
        .watch_events(pb::WatchEventsRequest {
            account_id: theirs.clone(),
            after_sequence: 0,
        })
        .await
        .expect("WatchEvents through A")
        .into_inner();
    let e = events.message().await.expect("an event").expect("open");
    assert_eq!(
        e.item.as_ref().map(|i| i.item_id.clone()),
        Some(first.item_id)
    );
    // The stream through A is live: B's next write reaches it.
    let second =
        b.t.client
            .clone()
            .schedule_message(email_reply(&theirs, "T2", T0 + 90_000))
            .await
            .expect("scheduled at B")
            .into_inner();
    let e = events.message().await.expect("an event").expect("open");
    assert_eq!(e.item.map(|i| i.item_id), Some(second.item_id));
    assert_eq!(a.schedules(), 0);
    assert_eq!(
        a.forwarded(),
        4,
        "GetItem twice, ListScheduled, WatchEvents"
    );
    drop(events);
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_batch_goes_to_the_one_node_owning_all_its_accounts_and_is_refused_when_they_span_nodes()
{
    let nodes = cluster(&[&[0], &[1, 2, 3]]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut via_a = a.t.client.clone();
    let (b1, b2, mine) = (account_in(1, 0), account_in(3, 0), account_in(0, 0));

    let entries = vec![
        batch_entry(email_reply(&b1, "T1", T0 + 60_000)),
        batch_entry(email_reply(&b2, "T2", T0 + 70_000)),
        batch_entry(email_reply(&b1, "T3", T0 + 80_000)),
    ];
    let items = via_a
        .schedule_batch(pb::ScheduleBatchRequest { entries })
        .await
        .expect("a batch of B's accounts through A")
        .into_inner()
        .items;
    let order: Vec<(String, String)> = items
        .iter()
        .map(|i| (i.account_id.clone(), i.ticket_id.clone()))
        .collect();
    assert_eq!(
        order,
        vec![
            (b1.clone(), "T1".to_owned()),
            (b2.clone(), "T2".to_owned()),
            (b1.clone(), "T3".to_owned())
        ]
    );
    assert_eq!((a.schedules(), b.schedules()), (0, 3));

    // Accounts of A and of B in one batch: refused whole, wherever it is sent.
    let spanning = pb::ScheduleBatchRequest {
        entries: vec![
            batch_entry(email_reply(&mine, "T4", T0 + 60_000)),
            batch_entry(email_reply(&b2, "T5", T0 + 60_000)),
        ],
    };
    for (via, name) in [(a, "A"), (b, "B")] {
        let r = via.t.client.clone().schedule_batch(spanning.clone()).await;
        assert_status(r, tonic::Code::FailedPrecondition, "entries[0].account_id");
        let r = via.t.client.clone().schedule_batch(spanning.clone()).await;
        let why = r.expect_err("refused").message().to_owned();
        assert!(
            why.contains("entries[1].account_id") && why.contains("all or nothing"),
            "through {name}: {why}"
        );
    }
    assert_eq!(
        (a.schedules(), b.schedules()),
        (0, 3),
        "nothing of it stored"
    );
    let listed = via_a
        .list_scheduled(pb::ListScheduledRequest {
            account_id: mine.clone(),
            ..Default::default()
        })
        .await
        .expect("A lists")
        .into_inner();
    assert!(listed.items.is_empty());

    // A batch of A's own account is A's to answer (here: to refuse, as it would alone).
    let mut bad = email_reply(&mine, "T6", T0 + 60_000);
    bad.send_at = None;
    let r = via_a
        .schedule_batch(pb::ScheduleBatchRequest {
            entries: vec![batch_entry(bad)],
        })
        .await;
    assert_eq!(
        r.expect_err("no send_at").code(),
        tonic::Code::InvalidArgument
    );
    let items = via_a
        .schedule_batch(pb::ScheduleBatchRequest {
            entries: vec![
                batch_entry(email_reply(&mine, "T7", T0 + 60_000)),
                batch_entry(email_reply(&account_in(0, 1), "T8", T0 + 60_000)),
            ],
        })
        .await
        .expect("a batch of A's accounts")
        .into_inner()
        .items;
    assert_eq!(items.len(), 2);
    assert_eq!((a.schedules(), b.schedules()), (2, 3));
    assert_eq!(a.forwarded(), 1, "only the batch of B's accounts went to B");
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_call_sent_to_a_node_that_does_not_own_the_account_is_answered_moved_and_goes_to_the_owner_after_a_refresh(
) {
    let nodes = cluster(&[&[0], &[1, 2], &[3]]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let theirs = account_in(1, 0);
    // A's map is out of date: it says C owns B's partition 1.
    let mut stale = true_owners(&nodes);
    stale.insert(1, c.address());
    a.placement.set_owners(stale.clone());

    let mut via_a = a.t.client.clone();
    let req = with_request_id(email_reply(&theirs, "T1", T0 + 60_000), "r1");
    let call = {
        let req = req.clone();
        tokio::spawn(async move { via_a.schedule_message(req).await })
    };
    a.t.eventually("C answers moved", || c.moved() >= 1).await;
    // A refresh that changes nothing: tried at C again, moved again.
    a.placement.set_owners(stale);
    a.t.eventually("C answers moved again", || c.moved() >= 2)
        .await;
    assert!(!call.is_finished(), "answered before the owner was known");
    a.placement.set_owners(true_owners(&nodes));
    let item = call
        .await
        .expect("the call ran")
        .expect("answered by the owner after the refresh")
        .into_inner();
    assert_eq!(
        (a.schedules(), b.schedules(), c.schedules()),
        (0, 1, 0),
        "run once, by B"
    );
    assert_eq!(c.moved(), 2);
    assert_eq!(a.forwarded(), 1, "one answer forwarded");
    let got =
        b.t.client
            .clone()
            .get_item(item_ref(&theirs, &item.item_id))
            .await
            .expect("B has it")
            .into_inner();
    assert_eq!(got, item);

    // A batch of B's and C's accounts: two owners elsewhere, refused.
    let r =
        a.t.client
            .clone()
            .schedule_batch(pb::ScheduleBatchRequest {
                entries: vec![
                    batch_entry(email_reply(&theirs, "T2", T0 + 60_000)),
                    batch_entry(email_reply(&account_in(3, 0), "T3", T0 + 60_000)),
                ],
            })
            .await;
    let s = r.expect_err("refused");
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{}", s.message());
    assert!(s.message().contains("different nodes"), "{}", s.message());
    assert_eq!((b.schedules(), c.schedules()), (1, 0));
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_call_for_a_partition_with_no_known_owner_ends_unavailable_at_the_callers_deadline() {
    let nodes = cluster(&[&[0], &[1, 2, 3]]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let theirs = account_in(1, 0);
    let wait = Duration::from_millis(400);

    // Between owners: nobody holds partition 1.
    let mut owners = true_owners(&nodes);
    owners.remove(&1);
    a.placement.set_owners(owners.clone());
    let mut req = tonic::Request::new(email_reply(&theirs, "T1", T0 + 60_000));
    req.set_timeout(wait);
    let started = Instant::now();
    let r = a.t.client.clone().schedule_message(req).await;
    assert!(
        started.elapsed() >= wait * 9 / 10,
        "gave up long before the deadline"
    );
    let s = r.expect_err("no owner");
    assert_eq!(s.code(), tonic::Code::Unavailable, "{}", s.message());
    assert!(
        s.message()
            .ends_with("between owners; try again (request_id makes it safe)"),
        "{}",
        s.message()
    );

    // The owner's address answers nothing (it died).
    owners.insert(1, format!("127.0.0.1:{}", pg::free_port()));
    a.placement.set_owners(owners);
    let mut req = tonic::Request::new(email_reply(&theirs, "T1", T0 + 60_000));
    req.set_timeout(wait);
    let started = Instant::now();
    let r = a.t.client.clone().schedule_message(req).await;
    assert!(
        started.elapsed() >= wait * 9 / 10,
        "gave up long before the deadline"
    );
    let why = r.expect_err("no owner").message().to_owned();
    assert!(
        why.contains("cannot be reached") && why.contains("request_id makes it safe"),
        "{why}"
    );
    assert_eq!((a.schedules(), b.schedules(), a.forwarded()), (0, 0, 0));
    stop_all(nodes).await;
}

#[tokio::test]
async fn the_owner_authenticates_a_forwarded_call_with_the_callers_token() {
    let token = "route-test-token-0123456789abcdef";
    let nodes = cluster_with(&[&[0], &[1, 2, 3]], move |c| {
        c.tokens = vec![sendlater::config::TokenConfig {
            token: token.into(),
            role: sendlater::config::Role::Admin,
            accounts: sendlater::config::Accounts::All,
        }];
    })
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let theirs = account_in(1, 0);
    let r =
        a.t.client
            .clone()
            .schedule_message(email_reply(&theirs, "T1", T0 + 60_000))
            .await;
    assert_status(r, tonic::Code::Unauthenticated, "");
    let mut req = tonic::Request::new(email_reply(&theirs, "T1", T0 + 60_000));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    a.t.client
        .clone()
        .schedule_message(req)
        .await
        .expect("the token goes along to B");
    assert_eq!((a.schedules(), b.schedules()), (0, 1));
    assert_eq!(a.forwarded(), 2, "both answers came from B");
    stop_all(nodes).await;
}

/// A server on SQLite owning partition 0 only, with `placement` for the others.
async fn sqlite_owning_partition_0(placement: Option<Arc<Placement>>) -> TestServer {
    TestServer::start_sqlite_with(|c| {
        let mut settings = ClusterSettings::new("n0", "127.0.0.1:0");
        settings.partitions = PARTITIONS;
        c.cluster = settings;
        c.ownership = Some(pg::owning("n0", vec![(0, 1)], placement));
    })
    .await
}

#[tokio::test]
async fn with_no_placement_a_server_answers_every_account_itself() {
    let t = sqlite_owning_partition_0(None).await;
    let other = account_in(1, 0);
    let item = t
        .client
        .clone()
        .schedule_message(email_reply(&other, "T1", T0 + 60_000))
        .await
        .expect("answered here")
        .into_inner();
    assert_eq!(item.account_id, other);
    let m = t.running().engine().metrics();
    assert_eq!((m.schedules.get(), m.forwarded_requests.get()), (1, 0));
}

#[tokio::test]
async fn an_event_stream_through_a_stopping_node_ends_unavailable_and_resumes_at_the_owner() {
    let mut nodes = cluster(&[&[0], &[1, 2, 3]]).await;
    let theirs = account_in(3, 0);
    let mut at_b = nodes[1].t.client.clone();
    let first = at_b
        .schedule_message(email_reply(&theirs, "T1", T0 + 60_000))
        .await
        .expect("scheduled at B")
        .into_inner();
    let mut events = nodes[0]
        .t
        .client
        .clone()
        .watch_events(pb::WatchEventsRequest {
            account_id: theirs.clone(),
            after_sequence: 0,
        })
        .await
        .expect("WatchEvents through A")
        .into_inner();
    let e = events.message().await.expect("an event").expect("open");
    assert_eq!(e.item.map(|i| i.item_id), Some(first.item_id));

    // A stops with the stream open: the stream ends as a local one does, and the stop
    // is not held by it.
    let mut a = nodes.remove(0);
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        a.t.stop().await;
        events.message().await
    })
    .await
    .expect("the stream through A ends when A stops")
    .expect_err("the stream ended");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{}", end.message());
    assert!(
        end.message().contains("after_sequence"),
        "{}",
        end.message()
    );

    // The caller resumes at the owner after the last sequence it saw.
    let second = at_b
        .schedule_message(email_reply(&theirs, "T2", T0 + 60_000))
        .await
        .expect("scheduled at B")
        .into_inner();
    let mut resumed = at_b
        .watch_events(pb::WatchEventsRequest {
            account_id: theirs.clone(),
            after_sequence: e.sequence,
        })
        .await
        .expect("WatchEvents at B")
        .into_inner();
    let next = resumed.message().await.expect("an event").expect("open");
    assert_eq!(next.item.map(|i| i.item_id), Some(second.item_id));
    drop(resumed);
    stop_all(nodes).await;
}

/// The answer (status code, message) of a raw Scheduler call with `body` as its HTTP/2
/// body, on a routed server.
async fn raw_call(url: &str, method: &str, body: Vec<u8>) -> (String, String) {
    use tonic::codegen::{http, Bytes, Service};
    let mut ch = channel(url).await;
    let mut req = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(
        Bytes::from(body),
    )));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("{url}/sendlater.v1.Scheduler/{method}")
        .parse()
        .expect("a URI");
    let h = req.headers_mut();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert("te", http::HeaderValue::from_static("trailers"));
    std::future::poll_fn(|cx| ch.poll_ready(cx))
        .await
        .expect("ready");
    let resp = ch.call(req).await.expect("an answer");
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .replace("%20", " ")
    };
    (header("grpc-status"), header("grpc-message"))
}

fn framed(flag: u8, declared: usize, message: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(&(declared as u32).to_be_bytes());
    v.extend_from_slice(message);
    v
}

#[tokio::test]
async fn a_routed_server_refuses_compressed_and_oversized_requests_with_clear_codes() {
    let t = sqlite_owning_partition_0(Some(Arc::new(Placement::new()))).await;
    let limit = t.config.limits.effective_message_bytes();
    let msg = prost::Message::encode_to_vec(&item_ref(&account_in(0, 0), "1"));

    let (code, why) = raw_call(&t.url(), "GetItem", framed(1, msg.len(), &msg)).await;
    assert_eq!(code, "12", "UNIMPLEMENTED: {why}");
    assert!(why.contains("compressed"), "{why}");

    let big = vec![0u8; limit + 1];
    let (code, why) = raw_call(&t.url(), "GetItem", framed(0, big.len(), &big)).await;
    assert_eq!(code, "11", "OUT_OF_RANGE: {why}");
    assert!(why.contains(&format!("limit of {limit} bytes")), "{why}");
    let (code, why) = raw_call(&t.url(), "GetItem", framed(0, limit + 1, &msg)).await;
    assert_eq!(code, "11", "OUT_OF_RANGE (as declared): {why}");

    // A well-formed call for the owned account is answered here (NOT_FOUND), and a
    // malformed one by the service as it always was.
    let (code, why) = raw_call(&t.url(), "GetItem", framed(0, msg.len(), &msg)).await;
    assert_eq!(code, "5", "NOT_FOUND: {why}");
    let (code, why) = raw_call(&t.url(), "GetItem", framed(0, 3, &[0xff, 0xff, 0xff])).await;
    assert_eq!(code, "13", "INTERNAL (a decoding error): {why}");
    assert_eq!(t.running().engine().metrics().forwarded_requests.get(), 0);
}

#[tokio::test]
async fn a_stopping_node_cuts_a_call_out_at_an_owner_that_does_not_answer_instead_of_waiting_for_it(
) {
    let mut nodes = cluster(&[&[0], &[1, 2, 3]]).await;
    let theirs = account_in(1, 0);
    // Partition 1's owner accepts connections and never answers (a stopped process).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(8);
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
            let _ = accepted_tx.send(()).await;
        }
    });
    let mut owners = true_owners(&nodes);
    owners.insert(1, silent_addr.to_string());
    nodes[0].placement.set_owners(owners);
    let mut client = nodes[0].t.client.clone();
    let call = tokio::spawn(async move {
        client
            .schedule_message(email_reply(&theirs, "T1", T0 + 60_000))
            .await
    });
    accepted
        .recv()
        .await
        .expect("the call went out to the owner");
    // A stops (as a node restarting over a new set of partitions): the call out is cut
    // with a clear answer, and the stop does not wait for it.
    let mut a = nodes.remove(0);
    let started = Instant::now();
    a.t.stop().await;
    let stopped = started.elapsed();
    let s = call
        .await
        .unwrap()
        .expect_err("the call cannot have been answered");
    assert_eq!(s.code(), tonic::Code::Unavailable, "{}", s.message());
    assert!(
        s.message()
            .contains("this node is stopping while the call was at the owner")
            && s.message().contains("request_id makes it safe"),
        "{}",
        s.message()
    );
    assert!(
        stopped < Duration::from_secs(9),
        "the stop waited {stopped:?}, as long as the in-flight grace"
    );
    holder.abort();
    stop_all(nodes).await;
}

/// The channels `node` holds paused for every account, as its `GetDispatchControls`
/// for `*` answers.
async fn every_account_paused(node: &Node) -> Vec<i32> {
    node.t
        .client
        .clone()
        .get_dispatch_controls(pb::GetDispatchControlsRequest {
            account_id: "*".into(),
        })
        .await
        .expect("the controls of every account")
        .into_inner()
        .paused_channels
}

/// Waits (bounded) until `node` holds `want` paused for every account.
async fn until_every_account_paused(node: &Node, want: Vec<i32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = every_account_paused(node).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node still holds {got:?} paused for every account, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_pause_of_every_account_sent_to_its_owner_holds_another_nodes_due_items_until_a_resume() {
    let nodes = cluster(&[&[0], &[1, 2, 3]]).await;
    let star = partition_of("*", PARTITIONS);
    let (owner, other) = if nodes[0].owns.contains(&star) {
        (&nodes[0], &nodes[1])
    } else {
        (&nodes[1], &nodes[0])
    };
    let mine = account_in(other.owns[0], 0);
    let mut conn = TestConnector::connect(&other.t.url(), &[pb::Channel::Email], 10).await;
    let item = other
        .t
        .schedule(email_reply(&mine, "T1", T0 + 60_000))
        .await;

    let email = vec![pb::Channel::Email as i32];
    let paused = owner
        .t
        .client
        .clone()
        .pause_dispatch(pb::DispatchControlRequest {
            account_id: "*".into(),
            channel: pb::Channel::Email as i32,
        })
        .await
        .expect("paused at the owner of *")
        .into_inner();
    assert_eq!(paused.paused_channels, email);
    // The other node learns of it from the store.
    until_every_account_paused(other, email).await;

    other.t.advance(Duration::from_secs(61));
    other.t.settle().await;
    let m = other.t.running().engine().metrics();
    assert_eq!(
        m.dispatches.get(),
        0,
        "no job was handed out on the other node"
    );
    assert_eq!(
        other
            .t
            .running()
            .dispatch_stats()
            .held_paused
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the due item is held by the pause"
    );
    let held = other
        .t
        .client
        .clone()
        .get_item(item_ref(&mine, &item.item_id))
        .await
        .expect("the item")
        .into_inner();
    assert_eq!(held.state, pb::State::Pending as i32);

    owner
        .t
        .client
        .clone()
        .resume_dispatch(pb::DispatchControlRequest {
            account_id: "*".into(),
            channel: pb::Channel::Email as i32,
        })
        .await
        .expect("resumed at the owner of *");
    // The resume reaches the other node and wakes its line: the item goes out there.
    let job = conn.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    assert!(every_account_paused(other).await.is_empty());
    stop_all(nodes).await;
}
