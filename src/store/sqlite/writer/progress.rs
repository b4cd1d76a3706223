//! How far the writer has got: the watermarks a reader waits on, and the state the
//! writer shares with the rest of the store.
//!
//! A group is counted `committing` before its COMMIT runs, `syncing` while the sync
//! stage has it, and `done` once the sync stage finished it (durable, or known failed),
//! in commit order. So a reader that saw a group's rows reads a `committing` number at
//! least that group's, and [`Progress::durable_barrier`] returns once `done` reaches
//! it: what the reader saw is durable (or the writer died, and the barrier says so).
//!
//! # Invariants
//! - `done` only grows, by one per group handed to the sync stage, in commit order;
//!   `done <= committing` (failed commits are counted in both).
//! - `syncing` is at most `1 + SYNC_QUEUE`: the writer hands a group over only while
//!   [`Progress::sync_has_room`], or blocks on the full channel.
//! - While held ([`Progress::set_hold`]), the sync stage makes nothing durable.
//!
//! Health (degraded, fatal) lives in `health`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::durable::SYNC_QUEUE;
use crate::store::sqlite::StoreError;

/// How far the writer has got, for readers that must see only durable data and for
/// whoever must notice that the writer died.
pub(in crate::store::sqlite) struct Progress {
    /// Groups whose COMMIT has started (counted before COMMIT runs, so a reader that
    /// saw a group's rows reads a number at least that group's).
    pub(super) committing: AtomicU64,
    /// Groups handed to the sync stage and not finished by it.
    pub(super) syncing: AtomicU64,
    /// Groups the sync stage has finished (durable, or known failed), in order.
    pub(super) done: watch::Sender<u64>,
    /// Set once, when the writer or the sync stage stopped for a reason other than a
    /// close: a panic, or a lost channel. Writes fail from then on.
    pub(super) fatal: watch::Sender<Option<String>>,
    /// While true, the sync stage does not make anything durable (tests use it to
    /// observe what happens between a commit and its fsync; see `Store::hold_durability`).
    hold: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
    /// How many items are changed but not yet written back to their rows.
    pub(in crate::store::sqlite) dirty: Arc<std::sync::atomic::AtomicUsize>,
    /// The meta of those items, for dispatch's hint reads.
    pub(in crate::store::sqlite) hints: crate::store::sqlite::overlay::Hints,
    /// Which tickets may have live items (counted by the writer, discounted here).
    pub(in crate::store::sqlite) tickets: Arc<crate::store::sqlite::tickets::LiveTickets>,
    /// The dispatcher's leases waiting for the writer.
    pub(in crate::store::sqlite) claims: Arc<crate::store::sqlite::claims::Claims>,
    /// Write-backs of rows (sweeps) that failed and were rolled back.
    pub(in crate::store::sqlite) sweep_failures: AtomicU64,
    /// Why the writer cannot do all its work now (rows cannot be written back, or a
    /// group failed to commit), `None` while it can; see `Store::degraded`.
    pub(super) degraded: watch::Sender<Option<String>>,
    /// The two causes of `degraded`, each cleared by its own next success.
    pub(super) sweep_failing: std::sync::Mutex<Option<String>>,
    pub(super) commit_failing: std::sync::Mutex<Option<String>>,
    /// The server's counters and histograms (group commits are observed here).
    pub(in crate::store::sqlite) metrics: Arc<crate::metrics::Metrics>,
}

impl Progress {
    pub(in crate::store::sqlite) fn new() -> Arc<Progress> {
        Arc::new(Progress {
            committing: AtomicU64::new(0),
            syncing: AtomicU64::new(0),
            done: watch::channel(0).0,
            fatal: watch::channel(None).0,
            hold: std::sync::Mutex::new(false),
            released: std::sync::Condvar::new(),
            dirty: Default::default(),
            hints: Default::default(),
            tickets: Default::default(),
            claims: Default::default(),
            sweep_failures: AtomicU64::new(0),
            degraded: watch::channel(None).0,
            sweep_failing: std::sync::Mutex::new(None),
            commit_failing: std::sync::Mutex::new(None),
            metrics: Default::default(),
        })
    }

    /// Holds (`true`) or releases the sync stage.
    pub(in crate::store::sqlite) fn set_hold(&self, on: bool) {
        *self.hold.lock().unwrap_or_else(|p| p.into_inner()) = on;
        self.released.notify_all();
    }

    /// Whether the sync stage can take another group without the writer blocking: it
    /// is flushing at most one, and has none queued.
    pub(super) fn sync_has_room(&self) -> bool {
        self.syncing.load(Ordering::SeqCst) < 1 + SYNC_QUEUE as u64
    }

    /// Waits while the sync stage is held.
    pub(super) fn wait_released(&self) {
        let mut held = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until every group that had started committing when this was called is
    /// durable; a reader calls it after reading, so what it read is durable when it
    /// returns.
    ///
    /// # Errors
    /// The writer died: what was read may never become durable.
    pub(in crate::store::sqlite) async fn durable_barrier(&self) -> Result<(), StoreError> {
        let target = self.committing.load(Ordering::SeqCst);
        let mut done = self.done.subscribe();
        let mut fatal = self.fatal.subscribe();
        loop {
            if *done.borrow_and_update() >= target {
                return Ok(());
            }
            if fatal.borrow_and_update().is_some() {
                return Err(StoreError::Closed);
            }
            tokio::select! {
                r = done.changed() => if r.is_err() { return Err(StoreError::Closed) },
                r = fatal.changed() => if r.is_err() { return Err(StoreError::Closed) },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::Progress;
    use crate::clock::SystemClock;
    use crate::config::Synchronous;
    use crate::store::sqlite::writer::testing::Seen;
    use crate::store::sqlite::{Store, StoreError};

    /// Polls `f` once, without waking anything.
    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn the_durable_barrier_waits_for_the_groups_committing_when_it_was_called_and_no_later_ones() {
        let p = Progress::new();
        p.committing.fetch_add(2, Ordering::SeqCst);
        let mut barrier = pin!(p.durable_barrier());
        assert!(
            poll_once(barrier.as_mut()).is_pending(),
            "nothing is durable"
        );
        p.done.send_modify(|n| *n += 1);
        assert!(
            poll_once(barrier.as_mut()).is_pending(),
            "one of the two groups is not durable yet"
        );
        // A group that started committing after the barrier is not waited for.
        p.committing.fetch_add(1, Ordering::SeqCst);
        p.done.send_modify(|n| *n += 1);
        assert!(matches!(poll_once(barrier.as_mut()), Poll::Ready(Ok(()))));
    }

    #[test]
    fn the_durable_barrier_fails_once_the_writer_died() {
        let p = Progress::new();
        p.committing.fetch_add(1, Ordering::SeqCst);
        let mut barrier = pin!(p.durable_barrier());
        assert!(poll_once(barrier.as_mut()).is_pending());
        p.die("lost".into());
        assert!(matches!(
            poll_once(barrier.as_mut()),
            Poll::Ready(Err(StoreError::Closed))
        ));
    }

    #[test]
    fn the_sync_stage_has_room_for_one_group_flushing_and_one_queued() {
        let p = Progress::new();
        assert!(p.sync_has_room());
        p.syncing.fetch_add(1, Ordering::SeqCst);
        assert!(p.sync_has_room(), "one flushing, none queued");
        p.syncing.fetch_add(1, Ordering::SeqCst);
        assert!(!p.sync_has_room(), "one flushing and one queued");
        p.syncing.fetch_sub(1, Ordering::SeqCst);
        assert!(p.sync_has_room());
    }

    /// A read sees committed rows; it must not return them before they are durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_returns_only_once_what_it_saw_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Seen::default());
        let (release, gate) = std::sync::mpsc::channel();
        let (entered_tx, entered) = std::sync::mpsc::channel();
        *seen.gate.lock().unwrap() = Some(gate);
        *seen.entered.lock().unwrap() = Some(entered_tx);
        let store = Store::open(
            &dir.path().join("r.db"),
            Synchronous::Full,
            Arc::new(SystemClock),
            seen.clone(),
        )
        .unwrap();
        let writer = store.clone();
        let write = tokio::spawn(async move {
            writer
                .write(|tx| {
                    tx.raw_connection()
                        .execute_batch("CREATE TABLE t (x INTEGER)")?;
                    tx.raw_connection()
                        .execute("INSERT INTO t VALUES (1)", [])?;
                    tx.rearm(1, 1);
                    Ok(())
                })
                .await
        });
        // The group committed; its sync stage is held before it counts as durable.
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        let reader = store.clone();
        let seen2 = seen.clone();
        let mut read = tokio::spawn(async move {
            let n = reader
                .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))?))
                .await;
            (n, seen2.released.load(Ordering::SeqCst))
        });
        // A bound for a negative (the read must still be waiting), not a synchronisation.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut read)
                .await
                .is_err(),
            "a read returned rows whose commit is not durable yet"
        );
        release.send(()).unwrap();
        let (n, released) = read.await.unwrap();
        assert_eq!(n.unwrap(), 1);
        assert!(released);
        write.await.unwrap().unwrap();
        store.close().await;
    }
}
