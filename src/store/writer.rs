//! The writer thread: one read-write connection, group commit.
//!
//! Loop: block for one job, then take whatever else is queued (up to [`MAX_GROUP`]),
//! `BEGIN IMMEDIATE`, run each job inside its own savepoint, `COMMIT`, then hand the
//! group to the sync stage. A failed commit answers every job of the group with an
//! error and applies none of their timer changes.
//!
//! The sync stage (its own thread) makes committed groups durable, then, in commit
//! order, hands their timer changes to the hook, publishes the last event sequence and
//! answers their jobs. With `synchronous=FULL` configured, the writer's connection
//! runs at `NORMAL` (COMMIT writes the WAL frames but does not fsync) and the sync stage
//! `fdatasync`s the WAL file itself, once for every group committed meanwhile: the
//! writer executes the next group while the disk flushes the previous one, and no
//! caller is answered before the fsync that covers its commit (WAL frames are written
//! in commit order, so one fsync covers every earlier commit too). This is group
//! commit with the flush pipelined, as databases with a write-ahead log do it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::domain;

use super::checkpoint::Checkpointer;
use super::{CommitHook, StoreError, Tx, WheelOp};

/// Most writes in one transaction: bounds a group's latency and memory.
pub const MAX_GROUP: usize = 2048;

/// How many 50 us naps the writer may take waiting for a group to fill.
const LINGER_STEPS: u32 = 4;

/// Queue length in front of the writer; senders wait (backpressure) when it is full.
const QUEUE: usize = 8192;

/// Sends the outcome to the caller once the group's commit is known.
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write: runs in the transaction, says whether it succeeded, returns its completion.
type Job = Box<dyn FnOnce(&mut Tx<'_>) -> (bool, Completion) + Send>;

enum Msg {
    Job(Job),
    Close(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(super) struct WriterHandle {
    tx: mpsc::Sender<Msg>,
}

/// How a committed group becomes durable before its callers are answered.
pub(super) enum Durability {
    /// SQLite's own `synchronous` setting decides (the connection's COMMIT syncs or not).
    Sqlite,
    /// The connection runs at `synchronous=NORMAL`; the sync stage fdatasyncs this WAL
    /// file after each run of commits.
    SyncWal(PathBuf),
}

/// A committed group waiting for its fsync.
struct Committed {
    writes: usize,
    ops: Vec<WheelOp>,
    max_seq: u64,
    completions: Vec<Completion>,
    started: Instant,
}

/// Committed groups that may wait for the sync stage while it syncs another (1 measured
/// the same throughput as 4, with a slightly lower p99).
const SYNC_QUEUE: usize = 1;

pub(super) fn spawn(
    conn: Connection,
    hook: CommitHook,
    events: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
    checkpointer: Checkpointer,
    durability: Durability,
) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let cannot = |what: &str, e: std::io::Error| StoreError::Unusable {
        path: Default::default(),
        reason: format!("cannot start the {what} thread: {e}"),
    };
    let (synced_tx, synced_rx) = std::sync::mpsc::sync_channel::<Committed>(SYNC_QUEUE);
    let syncer = std::thread::Builder::new()
        .name("sendlater-sync".into())
        .spawn(move || sync_stage(synced_rx, hook, events, durability))
        .map_err(|e| cannot("sync", e))?;
    std::thread::Builder::new()
        .name("sendlater-writer".into())
        .spawn(move || run(conn, rx, synced_tx, syncer, clock, checkpointer))
        .map_err(|e| cannot("writer", e))?;
    Ok(WriterHandle { tx })
}

/// Makes committed groups durable and answers them, in commit order.
fn sync_stage(
    rx: std::sync::mpsc::Receiver<Committed>,
    mut hook: CommitHook,
    events: watch::Sender<u64>,
    durability: Durability,
) {
    let mut wal: Option<std::fs::File> = None;
    let mut batch: Vec<Committed> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter());
        if let Durability::SyncWal(path) = &durability {
            // The WAL file exists once the writer has committed; it is never replaced
            // while the writer's connection is open.
            let synced = match &wal {
                Some(f) => f.sync_data(),
                None => std::fs::File::open(path).and_then(|f| {
                    let r = f.sync_data();
                    wal = Some(f);
                    r
                }),
            };
            if let Err(e) = synced {
                // After a failed fsync the kernel may have dropped the dirty pages: what
                // is on disk is unknown, so no caller may be told "committed". Stop; a
                // restart recovers from what the file really holds (PostgreSQL does
                // the same since "fsyncgate").
                tracing::error!(error = %e, wal = %path.display(), "fsync of the WAL failed; stopping");
                std::process::abort();
            }
        }
        for c in batch.drain(..) {
            if !c.ops.is_empty() {
                hook(&c.ops);
            }
            if c.max_seq > 0 {
                events.send_if_modified(|last| {
                    let changed = c.max_seq > *last;
                    *last = (*last).max(c.max_seq);
                    changed
                });
            }
            crate::metrics::METRICS
                .commit_batch_size
                .observe(c.writes as f64);
            crate::metrics::METRICS
                .commit_seconds
                .observe(c.started.elapsed().as_secs_f64());
            tracing::trace!(
                writes = c.writes,
                micros = c.started.elapsed().as_micros() as u64,
                "group committed"
            );
            for done in c.completions {
                done(Ok(()));
            }
        }
    }
}

impl WriterHandle {
    pub(super) async fn write<T, F>(&self, f: F) -> domain::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> domain::Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel::<domain::Result<T>>();
        let job: Job = Box::new(move |tx: &mut Tx<'_>| {
            let r = f(tx);
            let ok = r.is_ok();
            let done: Completion = Box::new(move |commit| {
                let _ = reply.send(match commit {
                    Ok(()) => r,
                    Err(e) => Err(e.into()),
                });
            });
            (ok, done)
        });
        self.tx
            .send(Msg::Job(job))
            .await
            .map_err(|_| domain::Error::from(StoreError::Closed))?;
        rx.await
            .map_err(|_| domain::Error::from(StoreError::Closed))?
    }

    pub(super) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Msg>,
    synced: std::sync::mpsc::SyncSender<Committed>,
    syncer: std::thread::JoinHandle<()>,
    clock: Arc<dyn Clock>,
    checkpointer: Checkpointer,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut closing: Option<oneshot::Sender<()>> = None;
    // Size of the previous group: when many callers are active, the first request
    // after a commit arrives alone while the rest are still on their way; committing
    // it alone costs a whole fsync. Linger briefly for the others (bounded, see below).
    let mut last_group = 0usize;
    while closing.is_none() {
        match rx.blocking_recv() {
            Some(Msg::Job(j)) => jobs.push(j),
            Some(Msg::Close(done)) => closing = Some(done),
            None => break,
        }
        let mut lingered = 0;
        while jobs.len() < MAX_GROUP && closing.is_none() {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => jobs.push(j),
                Ok(Msg::Close(done)) => closing = Some(done),
                Err(_) if jobs.len() * 2 < last_group && lingered < LINGER_STEPS => {
                    // At most LINGER_STEPS x 50 us (0.2 ms) against a ~4-30 ms fsync,
                    // and only when the last group was at least twice this one.
                    lingered += 1;
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                Err(_) => break,
            }
        }
        last_group = jobs.len();
        if !jobs.is_empty() {
            if let Some(c) = commit_group(&conn, &mut jobs, clock.now_ms()) {
                // Blocks when the sync stage is SYNC_QUEUE groups behind (backpressure).
                if synced.send(c).is_err() {
                    break;
                }
                checkpointer.committed();
            }
        }
    }
    // Writes still queued behind a close are refused: their senders see `Closed`.
    drop(rx);
    // Every committed group is synced and answered before the close completes.
    drop(synced);
    let _ = syncer.join();
    drop(checkpointer);
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "checkpoint at close failed");
    }
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Runs the group in one transaction; `None` when nothing committed (every job was
/// answered with an error or dropped).
fn commit_group(conn: &Connection, jobs: &mut Vec<Job>, now: i64) -> Option<Committed> {
    let started = Instant::now();
    let n = jobs.len();
    let mut completions: Vec<Completion> = Vec::with_capacity(n);
    let mut ops: Vec<WheelOp> = Vec::new();
    let mut max_seq = 0u64;
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %e, writes = n, "cannot begin a write transaction");
        // Dropping a job drops its reply sender: the caller sees Unavailable.
        jobs.clear();
        return None;
    }
    for job in jobs.drain(..) {
        let mut job_ops = Vec::new();
        let mut job_seq = 0u64;
        if let Err(e) = conn
            .prepare_cached("SAVEPOINT w")
            .and_then(|mut s| s.execute([]))
        {
            tracing::error!(error = %e, "savepoint failed");
            continue; // the dropped job answers Unavailable
        }
        let (ok, done) = {
            let mut tx = Tx {
                conn,
                now,
                ops: &mut job_ops,
                max_seq: &mut job_seq,
            };
            job(&mut tx)
        };
        let end = if ok {
            conn.prepare_cached("RELEASE w")
                .and_then(|mut s| s.execute([]).map(drop))
        } else {
            conn.execute_batch("ROLLBACK TO w; RELEASE w")
        };
        match end {
            Ok(()) if ok => {
                ops.extend(job_ops);
                max_seq = max_seq.max(job_seq);
            }
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, "savepoint release failed"),
        }
        completions.push(done);
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => Some(Committed {
            writes: n,
            ops,
            max_seq,
            completions,
            started,
        }),
        Err(e) => {
            tracing::error!(error = %e, writes = n, "group commit failed");
            let _ = conn.execute_batch("ROLLBACK");
            for done in completions {
                done(Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                    Some(e.to_string()),
                ))));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::clock::SystemClock;
    use crate::config::Synchronous;
    use crate::store::{Store, WheelOp};

    /// With FULL configured the sync stage answers; what the caller sees must still be
    /// committed, its timer changes applied before the answer, and in commit order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_is_answered_after_its_timer_changes_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        for sync in [Synchronous::Full, Synchronous::Normal] {
            let seen: Arc<Mutex<Vec<WheelOp>>> = Arc::default();
            let hook_seen = seen.clone();
            let store = Store::open(
                &path,
                sync,
                Arc::new(SystemClock),
                Box::new(move |ops| hook_seen.lock().unwrap().extend_from_slice(ops)),
            )
            .unwrap();
            let mut writes = Vec::new();
            for i in 0..50i64 {
                let s = store.clone();
                let seen = seen.clone();
                writes.push(tokio::spawn(async move {
                    s.write(move |tx| {
                        tx.conn
                            .execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER)")?;
                        tx.conn.execute("INSERT INTO t VALUES (?1)", [i])?;
                        tx.set_timer(i, 1000 + i);
                        Ok(i)
                    })
                    .await
                    .map(|i| (i, seen_contains(&seen, i)))
                }));
            }
            let mut seen_at_answer = Vec::new();
            for w in writes {
                seen_at_answer.push(w.await.unwrap().unwrap());
            }
            assert!(
                seen_at_answer.iter().all(|&(_, seen)| seen),
                "a write was answered before its timer change reached the hook"
            );
            store.close().await;
            let conn = rusqlite::Connection::open(&path).unwrap();
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, if sync == Synchronous::Full { 50 } else { 100 });
        }
    }

    fn seen_contains(seen: &Arc<Mutex<Vec<WheelOp>>>, i: i64) -> bool {
        seen.lock().unwrap().contains(&WheelOp::Set(i, 1000 + i))
    }
}
