//! The sync stage (its own thread): makes committed groups durable, then finishes
//! them in commit order.
//!
//! With `synchronous=FULL` configured the writer's connection runs at `NORMAL` (COMMIT
//! writes the WAL frames but does not fsync) and this stage `fdatasync`s the WAL file
//! itself, once for every group committed meanwhile ([`Durability::SyncWal`]): WAL
//! frames are written in commit order, so one fsync covers every earlier commit too.
//!
//! # Invariants
//! - No group is finished before the fsync that covers its commit returned; a failed
//!   fsync aborts the process (what is on disk is unknown: nobody may be told
//!   "committed").
//! - Groups are finished in the order they committed. Finishing one ([`finish`]):
//!   its tickets that left the live set are discounted, its effects reach the
//!   [`CommitHook`], the event sequence is published (it never goes back), then the
//!   group counts as done and only then are its callers answered.
//! - A group whose COMMIT failed (`fx: None`) is counted done in its place, with no
//!   effects (its callers were answered with the error already).
//! - After each batch the writer is woken: it may hold an open group until the stage
//!   has room for it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::progress::Progress;
use super::queue::Msg;
use crate::store::sqlite::{CommitHook, Completion, Effects};

/// Committed groups that may wait for the sync stage while it syncs another (1 measured
/// the same throughput as 4, with a slightly lower p99).
pub(super) const SYNC_QUEUE: usize = 1;

/// How a committed group becomes durable before its callers are answered.
pub(in crate::store::sqlite) enum Durability {
    /// SQLite's own `synchronous` setting decides (the connection's COMMIT syncs or not).
    Sqlite,
    /// The connection runs at `synchronous=NORMAL`; the sync stage fdatasyncs this WAL
    /// file after each run of commits.
    SyncWal(PathBuf),
}

/// A group past its COMMIT, waiting for the sync stage.
pub(super) struct Committed {
    pub(super) writes: usize,
    /// `None` when the COMMIT failed: nothing to sync, the completions carry errors.
    pub(super) fx: Option<Effects>,
    pub(super) completions: Vec<Completion>,
    pub(super) started: Instant,
}

/// Makes committed groups durable and answers them, in commit order.
pub(super) fn sync_stage(
    rx: std::sync::mpsc::Receiver<Committed>,
    hook: &dyn CommitHook,
    events: watch::Sender<u64>,
    durability: Durability,
    progress: &Progress,
    wake: mpsc::WeakSender<Msg>,
) {
    let mut wal: Option<std::fs::File> = None;
    let mut batch: Vec<Committed> = Vec::new();
    while let Ok(first) = rx.recv() {
        progress.wait_released();
        batch.push(first);
        batch.extend(rx.try_iter());
        if let Err(e) = make_durable(&durability, &mut wal) {
            // After a failed fsync the kernel may have dropped the dirty pages: what
            // is on disk is unknown, so no caller may be told "committed". Stop; a
            // restart recovers from what the file really holds (PostgreSQL does
            // the same since "fsyncgate").
            if let Durability::SyncWal(path) = &durability {
                tracing::error!(error = %e, wal = %path.display(), "fsync of the WAL failed; stopping");
            }
            std::process::abort();
        }
        for c in batch.drain(..) {
            finish(c, hook, &events, progress);
        }
        // The writer may hold an open group until there is room here. (A full queue
        // needs no wake-up: the writer is busy taking jobs, and looks again after each.)
        if let Some(tx) = wake.upgrade() {
            let _ = tx.try_send(Msg::Wake);
        }
    }
}

/// Makes every commit so far durable: with [`Durability::SyncWal`], fdatasyncs the WAL
/// file (opened at the first call and kept in `wal`); with [`Durability::Sqlite`], the
/// COMMIT did what was configured and there is nothing to do.
///
/// # Errors
/// The WAL cannot be opened or synced.
fn make_durable(durability: &Durability, wal: &mut Option<std::fs::File>) -> std::io::Result<()> {
    let Durability::SyncWal(path) = durability else {
        return Ok(());
    };
    // The WAL file exists once the writer has committed; it is never replaced while the
    // writer's connection is open.
    match wal {
        Some(f) => f.sync_data(),
        None => std::fs::File::open(path).and_then(|f| {
            let r = f.sync_data();
            *wal = Some(f);
            r
        }),
    }
}

/// Finishes one durable group (see the module's invariants for the order).
fn finish(c: Committed, hook: &dyn CommitHook, events: &watch::Sender<u64>, progress: &Progress) {
    if let Some(fx) = &c.fx {
        for &slot in &fx.left_tickets {
            progress.tickets.remove(slot);
        }
        if !fx.is_empty() {
            hook.durable(fx);
        }
        if fx.max_seq > 0 {
            events.send_if_modified(|last| {
                let changed = fx.max_seq > *last;
                *last = (*last).max(fx.max_seq);
                changed
            });
        }
        if fx.unreadable > 0 {
            progress.metrics.unreadable_items.inc_by(fx.unreadable);
        }
        if fx.abandoned > 0 {
            progress.metrics.abandoned_leases.inc_by(fx.abandoned);
        }
        progress.metrics.commit_batch_size.observe(c.writes as f64);
        progress
            .metrics
            .commit_seconds
            .observe(c.started.elapsed().as_secs_f64());
        tracing::trace!(
            writes = c.writes,
            micros = c.started.elapsed().as_micros() as u64,
            "group committed"
        );
    }
    progress.done.send_modify(|n| *n += 1);
    progress.syncing.fetch_sub(1, Ordering::SeqCst);
    for done in c.completions {
        done(Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::*;
    use crate::clock::SystemClock;
    use crate::config::Synchronous;
    use crate::store::sqlite::writer::testing::{seen_contains, Seen};
    use crate::store::sqlite::{Store, WheelOp};

    /// A group that set a timer for `id` and wrote events up to `max_seq`; its one
    /// caller's answer is recorded in `log` with the timers the hook had seen by then.
    fn group(
        id: i64,
        max_seq: u64,
        seen: &Arc<Seen>,
        log: &Arc<Mutex<Vec<(i64, usize)>>>,
    ) -> Committed {
        let (seen, log) = (seen.clone(), log.clone());
        let done: Completion = Box::new(move |r| {
            assert!(r.is_ok());
            let timers = seen.timers.lock().unwrap().len();
            log.lock().unwrap().push((id, timers));
        });
        Committed {
            writes: 1,
            fx: Some(Effects {
                timers: vec![WheelOp::Set(id, 1000 + id)],
                max_seq,
                ..Effects::default()
            }),
            completions: vec![done],
            started: Instant::now(),
        }
    }

    /// Runs the sync stage over `groups` (as the writer hands them over) to its end.
    fn run_stage(
        groups: Vec<Committed>,
        durability: Durability,
        seen: &Arc<Seen>,
        progress: &Arc<Progress>,
    ) -> (watch::Receiver<u64>, mpsc::Receiver<Msg>) {
        let (events_tx, events) = watch::channel(0);
        let (wake_tx, wake_rx) = mpsc::channel(8);
        let (tx, rx) = std::sync::mpsc::sync_channel(groups.len());
        for g in groups {
            progress.syncing.fetch_add(1, Ordering::SeqCst);
            progress.committing.fetch_add(1, Ordering::SeqCst);
            tx.send(g).unwrap();
        }
        drop(tx);
        let (hook, p, wake) = (seen.clone(), progress.clone(), wake_tx.downgrade());
        std::thread::spawn(move || sync_stage(rx, &*hook, events_tx, durability, &p, wake))
            .join()
            .unwrap();
        drop(wake_tx);
        (events, wake_rx)
    }

    #[test]
    fn groups_finish_in_commit_order_each_answered_after_its_effects_reached_the_hook() {
        let seen = Arc::new(Seen::default());
        let log = Arc::default();
        let progress = Progress::new();
        let failed = Committed {
            writes: 3,
            fx: None,
            completions: Vec::new(),
            started: Instant::now(),
        };
        let groups = vec![
            group(1, 3, &seen, &log),
            failed,
            group(2, 7, &seen, &log),
            // Sequences are published as the highest so far: never back.
            group(3, 5, &seen, &log),
        ];
        let (events, mut wake) = run_stage(groups, Durability::Sqlite, &seen, &progress);
        assert_eq!(*log.lock().unwrap(), vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(
            *seen.timers.lock().unwrap(),
            vec![
                WheelOp::Set(1, 1001),
                WheelOp::Set(2, 1002),
                WheelOp::Set(3, 1003)
            ]
        );
        assert_eq!(*events.borrow(), 7);
        assert_eq!(
            *progress.done.borrow(),
            4,
            "the failed group counts as done"
        );
        assert_eq!(progress.syncing.load(Ordering::SeqCst), 0);
        assert!(
            matches!(wake.try_recv(), Ok(Msg::Wake)),
            "the writer is woken after a batch"
        );
    }

    #[test]
    fn with_sync_wal_the_stage_syncs_the_wal_file_before_finishing_groups() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("x.db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let mut file = None;
        make_durable(&Durability::SyncWal(wal.clone()), &mut file).unwrap();
        assert!(file.is_some(), "the WAL is opened once and kept");
        make_durable(&Durability::SyncWal(wal.clone()), &mut file).unwrap();

        // No WAL file (it cannot be synced): an error, on which the stage stops.
        let mut none = None;
        let missing = Durability::SyncWal(dir.path().join("missing-wal"));
        assert!(make_durable(&missing, &mut none).is_err());
        // SQLite's own setting: nothing to open.
        make_durable(&Durability::Sqlite, &mut none).unwrap();
        assert!(none.is_none());

        let seen = Arc::new(Seen::default());
        let log = Arc::default();
        let progress = Progress::new();
        let groups = vec![group(1, 1, &seen, &log), group(2, 2, &seen, &log)];
        let (events, _) = run_stage(groups, Durability::SyncWal(wal), &seen, &progress);
        assert_eq!(*log.lock().unwrap(), vec![(1, 1), (2, 2)]);
        assert_eq!(*events.borrow(), 2);
    }

    /// With FULL configured the sync stage answers; what the caller sees must still be
    /// committed, its timer changes applied before the answer, and in commit order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_is_answered_after_its_timer_changes_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        for sync in [Synchronous::Full, Synchronous::Normal] {
            let seen = Arc::new(Seen::default());
            let store = Store::open(&path, sync, Arc::new(SystemClock), seen.clone()).unwrap();
            let mut writes = Vec::new();
            for i in 0..50i64 {
                let s = store.clone();
                let seen = seen.clone();
                writes.push(tokio::spawn(async move {
                    s.write(move |tx| {
                        tx.raw_connection()
                            .execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER)")?;
                        tx.raw_connection()
                            .execute("INSERT INTO t VALUES (?1)", [i])?;
                        tx.rearm(i, 1000 + i);
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
}
