//! Several owners on one PostgreSQL database (`store::postgres::scope`): each store
//! numbers items and events in its own partitions' ranges, loads and prunes only its
//! own partitions' rows, refuses a write for an account of a partition it does not
//! hold, and marks its commits under its own key. Two stores run side by side on a fresh database (`common::pg::fresh_database`,
//! which fails without `SENDLATER_TEST_PG`), each with a fence of disjoint partitions
//! granted in the lease rows as a node's take does (owner, epoch bumped).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sendlater::clock::ManualClock;
use sendlater::cluster::partition_of;
use sendlater::config::Synchronous;
use sendlater::domain::machine::{self, Command, Step};
use sendlater::domain::{
    self, BusinessHours, Channel, Content, EmailContent, Error, Item, NewItem, OnActivity, Timing,
};
use sendlater::store::postgres::PgLeases;
use sendlater::store::{CommitHook, DbTarget, Effects, Fence, Store, Tx};

const T0: i64 = common::T0;
const PARTITIONS: u32 = 8;

struct NoHook;
impl CommitHook for NoHook {
    fn durable(&self, _: &Effects) {}
    fn abandoned(&self, _: &Effects) {}
}

/// A fresh database with its partition rows; a plain connection to it.
async fn database() -> (String, tokio_postgres::Client) {
    let url = common::pg::fresh_database().await;
    let leases = PgLeases::connect(&url).await.expect("the lease rows");
    leases
        .init(PARTITIONS)
        .await
        .expect("the partitions are made");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    (url, client)
}

/// Grants `parts` to `node` as a take does (epoch bumped, an hour's lease); the grants.
async fn grant(c: &tokio_postgres::Client, node: &str, parts: &[u32]) -> Vec<(u32, i64)> {
    let parts: Vec<i32> = parts.iter().map(|&p| p as i32).collect();
    let mut held: Vec<(u32, i64)> = c
        .query(
            "UPDATE partition_leases SET owner = $1, epoch = epoch + 1, \
             expires_at = now() + interval '1 hour' WHERE partition = ANY($2) \
             RETURNING partition, epoch",
            &[&node, &parts],
        )
        .await
        .expect("grant")
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
        .collect();
    held.sort_unstable();
    held
}

async fn open(url: &str, node: &str, held: &[(u32, i64)]) -> Store {
    let fence = Fence {
        node: node.into(),
        held: held.to_vec(),
        idle_limit: Duration::from_secs(60),
    };
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        Store::open_fenced(
            &DbTarget::Postgres(url),
            Synchronous::Full,
            Arc::new(ManualClock::new(T0)),
            Arc::new(NoHook),
            Some(fence),
        )
    })
    .await
    .expect("open does not panic")
    .expect("the store opens")
}

/// `n` accounts of each of `parts` (the first names that hash there).
fn accounts_of(parts: &[u32], n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for &p in parts {
        out.extend(
            (0..)
                .map(|i| format!("acct-{i}"))
                .filter(|a| partition_of(a, PARTITIONS) == p)
                .take(n),
        );
    }
    out
}

fn new_item(account: &str, n: i64) -> NewItem {
    let content = Content::Email(EmailContent {
        to: vec![format!("client{n}@example.org")],
        subject: format!("Re: case {n}"),
        text_body: format!("reply {n}"),
        ..Default::default()
    });
    NewItem {
        account_id: account.into(),
        ticket_id: format!("T{}", n % 7),
        kind: domain::Kind::Reply,
        channel: content.channel(),
        author_id: "agent".into(),
        content,
        send_at: T0 + 3_600_000 + n,
        on_activity: OnActivity::ConvertToNote,
        request_id: None,
        timing: Timing::default(),
    }
}

/// Stores a new item as the engine does; its id and event sequence.
fn insert(tx: &mut Tx<'_>, new: &NewItem) -> domain::Result<(Item, u64)> {
    let (mut item, change) = machine::schedule(new.clone(), 0, new.send_at, tx.now);
    item.id = tx.insert(new, new.send_at, &item.timing)?;
    let seq = tx.save_new(&item, change)?;
    Ok((item, seq))
}

/// Schedules `per_account` items for each account, one write each, all queued at once.
async fn schedule(store: &Store, accounts: &[String], per_account: i64) -> Vec<(Item, u64)> {
    let mut waits = Vec::new();
    for n in 0..per_account {
        for a in accounts {
            let new = new_item(a, n);
            waits.push(
                store
                    .enqueue(move |tx| insert(tx, &new))
                    .await
                    .expect("queued"),
            );
        }
    }
    let mut out = Vec::new();
    for w in waits {
        out.push(w.await.expect("scheduled"));
    }
    out
}

fn epoch_of(held: &[(u32, i64)], p: u32) -> i64 {
    held.iter().find(|h| h.0 == p).expect("held").1
}

/// Checks that each item's id names its account's partition and each sequence its
/// partition and epoch; returns the sequences by account, in commit order.
fn check_numbering(done: &[(Item, u64)], held: &[(u32, i64)]) -> BTreeMap<String, Vec<u64>> {
    let mut by_account: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (item, seq) in done {
        let p = partition_of(&item.account_id, PARTITIONS);
        assert_eq!(
            item.id >> 48,
            i64::from(p),
            "item {} names its partition",
            item.id
        );
        assert_eq!(
            seq >> 40,
            epoch_of(held, p) as u64,
            "sequence {seq}: its epoch"
        );
        assert_eq!(
            (seq >> 28) & 0xfff,
            u64::from(p),
            "sequence {seq}: its partition"
        );
        by_account
            .entry(item.account_id.clone())
            .or_default()
            .push(*seq);
    }
    by_account
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_disjoint_partitions_schedule_at_once_without_colliding_ids_or_sequences() {
    let (url, c) = database().await;
    let (mine, theirs) = ([0, 1, 2, 3], [4, 5, 6, 7]);
    // n2 is granted twice: its epochs are above n1's.
    let h1 = grant(&c, "n1", &mine).await;
    grant(&c, "n2", &theirs).await;
    let h2 = grant(&c, "n2", &theirs).await;
    let (s1, s2) = (open(&url, "n1", &h1).await, open(&url, "n2", &h2).await);
    let (a1, a2) = (accounts_of(&mine, 2), accounts_of(&theirs, 2));
    let (d1, d2) = tokio::join!(schedule(&s1, &a1, 25), schedule(&s2, &a2, 25));
    assert_eq!((d1.len(), d2.len()), (200, 200));
    let ids: BTreeSet<i64> = d1.iter().chain(&d2).map(|(i, _)| i.id).collect();
    let seqs: BTreeSet<u64> = d1.iter().chain(&d2).map(|(_, s)| *s).collect();
    assert_eq!(
        (ids.len(), seqs.len()),
        (400, 400),
        "no id or sequence twice"
    );
    for seqs in check_numbering(&d1, &h1)
        .into_values()
        .chain(check_numbering(&d2, &h2).into_values())
    {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "an account's events increase: {seqs:?}"
        );
    }
    let rows: i64 = c
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 400);
    // Each node's writer marks its groups under its own key (the outcome of a commit
    // cut short is read back from it: another node's groups must not overwrite it).
    let keys: Vec<String> = c
        .query(
            "SELECT key FROM store_meta WHERE key LIKE 'writer_group%' ORDER BY key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["writer_group.n1", "writer_group.n2"]);
    // Every row carries its account's partition.
    for r in c
        .query("SELECT DISTINCT account_id, partition FROM items", &[])
        .await
        .unwrap()
    {
        let (a, p): (String, Option<i32>) = (r.get(0), r.get(1));
        assert_eq!(p, Some(partition_of(&a, PARTITIONS) as i32), "{a}");
    }
    s1.close().await;
    s2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refuses_every_write_for_an_account_of_a_partition_it_does_not_hold_and_writes_nothing(
) {
    let (url, c) = database().await;
    let h1 = grant(&c, "n1", &[0, 1, 2, 3]).await;
    let s1 = open(&url, "n1", &h1).await;
    let own = accounts_of(&[1], 1).remove(0);
    let other = accounts_of(&[5], 1).remove(0);
    let unavailable = |r: domain::Result<()>, what: &str| match r {
        Err(Error::Unavailable(m)) => assert!(
            m.contains("partition 5 is owned by another node (moved)"),
            "{what}: {m}"
        ),
        other => panic!("{what}: expected UNAVAILABLE, got {other:?}"),
    };
    // An own write first in the same write: nothing of it stays either.
    let (o, n) = (own.clone(), other.clone());
    let r = s1
        .write(move |tx| {
            insert(tx, &new_item(&o, 1))?;
            insert(tx, &new_item(&n, 2))?;
            Ok(())
        })
        .await;
    unavailable(r, "schedule");
    let n = other.clone();
    let r = s1
        .write(move |tx| tx.put_control(&n, Channel::Email, Some(true), None))
        .await;
    unavailable(r, "pause");
    let hours = BusinessHours::parse("Europe/Paris", &[(1, "09:00", "17:00")], &[]).unwrap();
    let n = other.clone();
    let r = s1.write(move |tx| tx.put_business_hours(&n, &hours)).await;
    unavailable(r, "business hours");
    for table in ["items", "events", "dispatch_controls", "business_hours"] {
        let rows: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "{table}: nothing written");
    }
    // The store goes on for its own accounts.
    let o = own.clone();
    let (item, _) = s1
        .write(move |tx| insert(tx, &new_item(&o, 3)))
        .await
        .expect("an own account's write");
    assert_eq!(item.id >> 48, 1);
    // An item of another partition's account, saved through this store (it read it
    // from the database): refused too.
    let mut foreign = item.clone();
    foreign.account_id = other.clone();
    let r = s1
        .write(move |tx| {
            let cmd = Command::Cancel;
            match machine::step(&mut foreign, cmd, tx.now)? {
                Step::Changed(change) => tx.save(&foreign, change).map(|_| ()),
                Step::Unchanged { .. } => Ok(()),
            }
        })
        .await;
    unavailable(r, "save");
    s1.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_taking_partitions_another_wrote_goes_on_after_their_ids_and_above_their_sequences()
{
    let (url, c) = database().await;
    let parts = [2, 6];
    let accounts = accounts_of(&parts, 2);
    let h1 = grant(&c, "n1", &parts).await;
    let s1 = open(&url, "n1", &h1).await;
    let before = schedule(&s1, &accounts, 5).await;
    // Reopened under the same grants (a restart of its store): numbering goes on.
    s1.close().await;
    let s1 = open(&url, "n1", &h1).await;
    let again = schedule(&s1, &accounts, 1).await;
    s1.close().await;
    // n2 takes them: a new epoch.
    let h2 = grant(&c, "n2", &parts).await;
    assert!(h2.iter().zip(&h1).all(|(b, a)| b.1 > a.1));
    let s2 = open(&url, "n2", &h2).await;
    let after = schedule(&s2, &accounts, 2).await;
    check_numbering(&after, &h2);
    for a in &accounts {
        let p = partition_of(a, PARTITIONS);
        let of = |d: &[(Item, u64)]| -> Vec<(i64, u64)> {
            d.iter()
                .filter(|(i, _)| &i.account_id == a)
                .map(|(i, s)| (i.id, *s))
                .collect()
        };
        let all: Vec<(i64, u64)> = [of(&before), of(&again), of(&after)].concat();
        assert!(
            all.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "{a} (partition {p}): ids and sequences keep increasing across reopen and owners: {all:?}"
        );
        // What a watcher's cursor is clamped to: the partition's newest, not the store's.
        let newest = s2.newest_event(a.clone()).await.unwrap();
        let last_of_p = after
            .iter()
            .filter(|(i, _)| partition_of(&i.account_id, PARTITIONS) == p)
            .map(|(_, s)| *s)
            .max()
            .unwrap();
        assert_eq!(newest, last_of_p, "{a}");
        // The events read back per account, in order, across both owners.
        let read = s2.events_after(Some(a.clone()), 0, 100).await.unwrap();
        let seqs: Vec<u64> = read.events.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, all.iter().map(|x| x.1).collect::<Vec<_>>(), "{a}");
    }
    s2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_loads_and_prunes_only_its_own_partitions_and_sees_another_partitions_newest_event()
{
    let (url, c) = database().await;
    let (mine, theirs) = ([0, 3, 5], [1, 2, 4, 6, 7]);
    let h1 = grant(&c, "n1", &mine).await;
    grant(&c, "n2", &theirs).await;
    let h2 = grant(&c, "n2", &theirs).await;
    let (s1, s2) = (open(&url, "n1", &h1).await, open(&url, "n2", &h2).await);
    let (a1, a2) = (accounts_of(&mine, 2), accounts_of(&theirs, 1));
    let d1 = schedule(&s1, &a1, 3).await;
    let d2 = schedule(&s2, &a2, 3).await;
    let hours = BusinessHours::parse("Europe/Paris", &[(1, "09:00", "17:00")], &[]).unwrap();
    for (s, a) in [(&s1, a1[0].clone()), (&s2, a2[0].clone())] {
        let h = hours.clone();
        s.write(move |tx| {
            tx.put_control(&a, Channel::Email, Some(true), None)?;
            tx.put_business_hours(&a, &h)?;
            tx.set_rewindow_cursor(&a, Some((T0, 0)))
        })
        .await
        .unwrap();
    }
    let ids = |d: &[(Item, u64)]| -> BTreeSet<i64> { d.iter().map(|(i, _)| i.id).collect() };
    let scan = s1.recovery_scan().await.unwrap();
    assert_eq!(
        scan.timers.iter().map(|t| t.0).collect::<BTreeSet<_>>(),
        ids(&d1)
    );
    let counted: BTreeSet<String> = scan.live_counts.iter().map(|c| c.0.clone()).collect();
    assert_eq!(counted, a1.iter().cloned().collect());
    assert_eq!(
        scan.controls
            .iter()
            .map(|c| c.account_id.clone())
            .collect::<Vec<_>>(),
        vec![a1[0].clone()]
    );
    assert_eq!(
        s1.live_item_ids()
            .await
            .unwrap()
            .into_iter()
            .collect::<BTreeSet<_>>(),
        ids(&d1)
    );
    assert_eq!(
        s2.live_item_ids()
            .await
            .unwrap()
            .into_iter()
            .collect::<BTreeSet<_>>(),
        ids(&d2)
    );
    assert_eq!(s1.rewindows_under_way().await.unwrap(), vec![a1[0].clone()]);
    let controls = s1.write(|tx| tx.all_controls()).await.unwrap();
    assert_eq!(controls.len(), 1, "{controls:?}");
    // n2's partitions are above n1's (a higher epoch): n1 still answers their newest.
    let b = a2[0].clone();
    let newest_b = d2
        .iter()
        .filter(|(i, _)| i.account_id == b)
        .map(|x| x.1)
        .max()
        .unwrap();
    assert!(newest_b > *s1.event_sequence().borrow());
    assert_eq!(s1.newest_event(b.clone()).await.unwrap(), newest_b);
    // n1 prunes everything it owns and nothing else.
    let pruned = s1
        .write(|tx| tx.prune_events(i64::MAX, 1_000))
        .await
        .unwrap();
    assert_eq!(pruned, d1.len());
    let left: i64 = c
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left as usize,
        d2.len(),
        "the other partitions' events are kept"
    );
    // Pruned through its newest: a cursor before it is told, the newest stays, and a
    // reopened store numbers above what was pruned.
    let a = a1[0].clone();
    let last_a = d1
        .iter()
        .filter(|(i, _)| i.account_id == a)
        .map(|x| x.1)
        .max()
        .unwrap();
    let p = partition_of(&a, PARTITIONS);
    let last_p = d1
        .iter()
        .filter(|(i, _)| partition_of(&i.account_id, PARTITIONS) == p)
        .map(|x| x.1)
        .max()
        .unwrap();
    assert_eq!(s1.newest_event(a.clone()).await.unwrap(), last_p);
    // The engine answers OUT_OF_RANGE when `after + 1 < oldest`: before the pruned
    // events it is; at the partition's newest it is not (nothing after it was pruned).
    let early = s1.events_after(Some(a.clone()), 1, 10).await.unwrap();
    assert!(
        early.events.is_empty() && 1 + 1 < early.oldest,
        "{}",
        early.oldest
    );
    let caught_up = s1.events_after(Some(a.clone()), last_p, 10).await.unwrap();
    assert!(caught_up.events.is_empty() && caught_up.oldest <= last_p + 1);
    s1.close().await;
    let s1 = open(&url, "n1", &h1).await;
    let next = schedule(&s1, std::slice::from_ref(&a), 1).await;
    assert!(
        next[0].1 > last_a && next[0].1 > last_p,
        "above what was pruned"
    );
    s1.close().await;
    s2.close().await;
}

/// A server owning `held` of the database at `url` as node `node` (a test server on
/// PostgreSQL with that fence, its trust window open for an hour).
async fn server_owning(url: &str, node: &str, held: Vec<(u32, i64)>) -> common::TestServer {
    let ownership = common::pg::owning(node, held, None);
    let url = url.to_owned();
    common::TestServer::start_with(move |c| {
        c.db_path = std::path::PathBuf::from(url);
        c.ownership = Some(ownership);
    })
    .await
}

/// WatchEvents clamps a cursor beyond "the newest" to the newest of the account's
/// partition: another node's partition at a higher epoch numbers above everything this
/// node wrote, and a valid cursor there must not be lowered (its events would come again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_on_one_node_resumes_a_cursor_of_another_nodes_higher_epoch_partition_without_replay(
) {
    let url = common::pg::fresh_database().await;
    let leases = PgLeases::connect(&url).await.expect("the lease rows");
    let all = sendlater::cluster::DEFAULT_PARTITIONS;
    leases.init(all).await.expect("the partitions are made");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let (mine, theirs): (Vec<u32>, Vec<u32>) = (0..all).partition(|p| p % 2 == 0);
    let h1 = grant(&c, "n1", &mine).await;
    grant(&c, "n2", &theirs).await;
    let h2 = grant(&c, "n2", &theirs).await;
    let (a, b) = (
        server_owning(&url, "n1", h1).await,
        server_owning(&url, "n2", h2).await,
    );
    let name = |odd: bool| {
        (0..)
            .map(|i| format!("acct-{i}"))
            .find(|n| (partition_of(n, all) % 2 == 1) == odd)
            .unwrap()
    };
    let (on_a, on_b) = (name(false), name(true));
    let last_seq = |account: String| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT max(seq) FROM events WHERE account_id = $1",
                &[&account],
            )
            .await
            .unwrap()
            .get::<_, i64>(0) as u64
        }
    };
    b.schedule(common::email_reply(&on_b, "T1", T0 + 3_600_000))
        .await;
    let seen = last_seq(on_b.clone()).await;
    assert!(seen > *a.running().engine().store().event_sequence().borrow());
    // The watcher saw on_b's first event; it resumes after it on node a.
    let mut events = a
        .client
        .clone()
        .watch_events(sendlater::pb::WatchEventsRequest {
            account_id: on_b.clone(),
            after_sequence: seen,
        })
        .await
        .expect("a stream")
        .into_inner();
    let next = b
        .schedule(common::email_reply(&on_b, "T2", T0 + 3_600_000))
        .await;
    // A stream is woken by its own node's commits: a write on a wakes it.
    a.schedule(common::email_reply(&on_a, "T3", T0 + 3_600_000))
        .await;
    let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("the next event arrives")
        .expect("no error")
        .expect("the stream is open");
    assert_eq!(
        ev.item.expect("its item").item_id,
        next.item_id,
        "the first event after the cursor, not the one before it again (sequence {})",
        ev.sequence
    );
    assert!(ev.sequence > seen);
}
