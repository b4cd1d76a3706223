//! The writer when rows cannot be written back (issue 19 item 2): a sweep that fails
//! (here: an injected trigger refuses every UPDATE of an item row, as a statement-level
//! SQLITE_FULL or I/O error would) must not make the writer spin, must not hang a
//! stop, and takes the service out of rotation until rows can be written again.
//! Events (the journal) can still be appended, so nothing acknowledged is lost.
mod common;

use std::time::Duration;

use common::*;
use sendlater::pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const HOUR: i64 = 3_600_000;

const REFUSE_ROWS: &str = "CREATE TRIGGER refuse_rows BEFORE UPDATE ON items \
     BEGIN SELECT RAISE(ABORT, 'injected: rows cannot be written'); END;";

/// Schedules an item and cancels it: the cancel is journalled, its row is dirty.
async fn dirty_item(t: &TestServer) -> String {
    let item = t.schedule(email_reply("acme", "T1", T0 + HOUR)).await;
    t.client
        .clone()
        .cancel(item_ref("acme", &item.item_id))
        .await
        .expect("cancel");
    item.item_id
}

/// Asks the writer to write every changed row back now (as a write that needs current
/// rows does) and sees it fail: from then on the writer retries by itself, after its
/// backoff.
async fn until_a_write_back_failed(t: &TestServer) {
    let store = t.running().engine().store().clone();
    let r = store.write(|tx| tx.sweep()).await;
    assert!(r.is_err(), "the write-back was refused: {r:?}");
    assert!(store.sweep_failures() > 0);
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn reads_do_not_depend_on_writing_rows_back() {
    // The changed rows cannot be written back; every read answers from the journal
    // (on main each read asked for a write-back first, and failed).
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    raw(&t).execute_batch(REFUSE_ROWS).unwrap();
    let id = dirty_item(&t).await;
    until_a_write_back_failed(&t).await;
    let mut client = t.client.clone();
    let item = client
        .get_item(item_ref("acme", &id))
        .await
        .expect("GetItem")
        .into_inner();
    assert_eq!(item.state, pb::State::Cancelled as i32);
    let listed = client
        .list_scheduled(pb::ListScheduledRequest {
            account_id: "acme".into(),
            state: pb::State::Cancelled as i32,
            ..Default::default()
        })
        .await
        .expect("ListScheduled")
        .into_inner();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|i| i.item_id.as_str())
            .collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    let pending = client
        .list_scheduled(pb::ListScheduledRequest {
            account_id: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("ListScheduled")
        .into_inner();
    assert!(
        pending.items.iter().all(|i| i.item_id != id),
        "the cancelled item is not listed as pending"
    );
    let tickets = client
        .list_deferred_tickets(pb::ListDeferredTicketsRequest {
            account_id: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("ListDeferredTickets")
        .into_inner();
    assert!(
        tickets.tickets.iter().all(|t| t.ticket_id != "T1"),
        "T1 has nothing pending: {tickets:?}"
    );
    raw(&t).execute_batch("DROP TRIGGER refuse_rows").unwrap();
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn a_stop_finishes_when_rows_cannot_be_written_back_and_loses_nothing() {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    raw(&t).execute_batch(REFUSE_ROWS).unwrap();
    let id = dirty_item(&t).await;
    // On main the writer's final write-back loop ran forever.
    tokio::time::timeout(Duration::from_secs(10), t.stop())
        .await
        .expect("the stop finishes within 10 s");
    // The cancel is in the journal: once rows can be written, the restart replays it.
    raw(&t).execute_batch("DROP TRIGGER refuse_rows").unwrap();
    t.restart().await;
    let item = t.get_acme(&id).await;
    assert_eq!(item.state, pb::State::Cancelled as i32, "{item:?}");
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn a_failed_write_back_backs_off_instead_of_spinning() {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    raw(&t).execute_batch(REFUSE_ROWS).unwrap();
    let _id = dirty_item(&t).await;
    let store = t.running().engine().store().clone();
    until_a_write_back_failed(&t).await;
    // A bound for a negative over a second of real time, not a synchronisation: on
    // main the idle writer looped begin -> failed sweep -> empty commit -> fsync with
    // no pause (thousands a second).
    let before = store.sweep_failures();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tries = store.sweep_failures() - before;
    assert!(tries <= 10, "{tries} failed write-backs in one second");
    raw(&t).execute_batch("DROP TRIGGER refuse_rows").unwrap();
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn health_is_not_serving_while_rows_cannot_be_written_back_and_serving_after() {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    let mut health = HealthClient::new(channel(&t.url()).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "sendlater.v1.Scheduler".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    raw(&t).execute_batch(REFUSE_ROWS).unwrap();
    let id = dirty_item(&t).await;
    until_a_write_back_failed(&t).await;
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("health changes within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    raw(&t).execute_batch("DROP TRIGGER refuse_rows").unwrap();
    let again = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("health changes back within 20 s")
        .unwrap()
        .unwrap();
    assert_eq!(again.status, ServingStatus::Serving as i32);
    assert_eq!(t.get_acme(&id).await.state, pb::State::Cancelled as i32);
    // The health stream would hold the graceful stop open.
    drop((watch, health));
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn a_stop_finishes_when_the_disk_never_makes_a_group_durable() {
    // The sync stage never returns (as an fsync that hangs): the store cannot close.
    // The stop gives up after the drain grace plus a few seconds and says why; on
    // main it waited forever.
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    let store = t.running().engine().store().clone();
    let hold = store.hold_durability();
    // A write that runs (its group commits and waits for the held sync stage).
    let (ran_tx, ran) = tokio::sync::oneshot::channel();
    let pending = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .write(move |_| {
                    let _ = ran_tx.send(());
                    Ok(())
                })
                .await
        }
    });
    ran.await.unwrap();
    let server = t.server.take().expect("running");
    let stopped = tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("the stop finishes within 20 s");
    let err = stopped.expect_err("the stop reports the store it left behind");
    assert!(err.to_string().contains("did not finish closing"), "{err}");
    // The caller of the write that never became durable was not answered.
    assert!(
        !pending.is_finished(),
        "a write was answered without its fsync"
    );
    // Let the store left behind finish its fsync before the test's folder goes (a
    // sync stage that cannot open its WAL aborts the process, as it must).
    drop(hold);
    let _ = pending.await;
}

/// As `REFUSE_ROWS`, but the failure ends the whole transaction (as SQLite does
/// for some SQLITE_FULL / IOERR / NOMEM): the sweep's `conn.is_autocommit()` branch.
const ROLLBACK_ROWS: &str = "CREATE TRIGGER refuse_rows BEFORE UPDATE ON items \
     BEGIN SELECT RAISE(ROLLBACK, 'injected: the transaction is rolled back'); END;";

/// CPU time (user + system, in clock ticks) of this process's threads named `prefix*`.
fn thread_cpu(prefix: &str) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the ')'.
        total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    }
    total
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn a_write_back_sqlite_rolls_back_whole_backs_off_instead_of_spinning() {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    raw(&t).execute_batch(ROLLBACK_ROWS).unwrap();
    let _id = dirty_item(&t).await;
    until_a_write_back_failed(&t).await;
    // A bound for a negative over a second of real time: the writer spun (87 of ~100
    // clock ticks) when the failure ended the whole transaction.
    let before = thread_cpu("sendlater-write");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ticks = thread_cpu("sendlater-write") - before;
    let failures = t.running().engine().store().sweep_failures();
    assert!(
        ticks <= 20,
        "the writer thread used {ticks} clock ticks (of ~100/s) in one idle second; \
         sweep_failures counted {failures}"
    );
    raw(&t).execute_batch("DROP TRIGGER refuse_rows").unwrap();
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn a_stop_finishes_when_sqlite_rolls_back_the_final_write_back() {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    raw(&t).execute_batch(ROLLBACK_ROWS).unwrap();
    let _id = dirty_item(&t).await;
    let server = t.server.take().expect("running");
    let r = tokio::time::timeout(Duration::from_secs(15), server.shutdown())
        .await
        .expect("the shutdown returns (bounded)");
    assert!(r.is_ok(), "the store did not close: {r:?}");
}
