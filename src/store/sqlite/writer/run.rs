//! The writer's loop: takes messages from the queue, runs jobs into the open group,
//! commits it when `batching` says so and hands it to the sync stage; and its stop.
//!
//! # Invariants
//! - Jobs run in queue order, each as soon as it is taken (never held back waiting for
//!   the sync stage): while the disk flushes earlier groups, new writes run at once (a
//!   lease is visible to every later write, and its job can leave) and join the group
//!   that commits when the flush is done.
//! - A group is handed to the sync stage only after its COMMIT; the hand-over blocks
//!   while the stage is `SYNC_QUEUE` groups behind (backpressure).
//! - The loop ends on a close (after the messages queued before it) or when every
//!   handle is gone; it reports `false` (fatal) only when the sync stage is gone.
//! - A stop ([`Writer::stop`]) records the leases taken meanwhile, writes every dirty
//!   row back (unless write-backs fail: start-up replays them from the journal),
//!   refuses the writes queued behind the close, waits until every committed group is
//!   synced and answered, checkpoints the WAL, and only then completes the close.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::batching::{self, IdleNext, OpenNext};
use super::durable::Committed;
use super::group::Open;
use super::queue::Msg;
use super::Writer;
use crate::clock::Clock;
use crate::store::sqlite::checkpoint::Checkpointer;

impl Writer<'_> {
    /// The writer's loop; `true` when it ended by a close (or every handle dropped),
    /// `false` when it lost the sync stage.
    ///
    /// Jobs are executed as they arrive, into the open group's transaction; the group
    /// commits once nothing more is queued and the sync stage has room for it (or it is
    /// full). So while the disk flushes earlier groups, new writes do not wait in the
    /// queue: they run at once (a lease is visible to every later write, and its job can
    /// leave) and join the group that commits when the flush is done.
    pub(super) fn run(
        &mut self,
        mut rx: mpsc::Receiver<Msg>,
        synced: std::sync::mpsc::SyncSender<Committed>,
        syncer: std::thread::JoinHandle<()>,
        clock: Arc<dyn Clock>,
        checkpointer: Checkpointer,
    ) -> bool {
        let mut open: Option<Open> = None;
        let mut closing: Option<oneshot::Sender<()>> = None;
        let mut healthy = true;
        // Size of the previous group: when many callers are active, the first request
        // after a commit arrives alone while the rest are still on their way; committing
        // it alone costs a whole fsync. Linger briefly for the others (bounded, see
        // `batching`).
        let mut last_group = 0usize;
        let mut lingered = 0;
        'run: while closing.is_none() {
            let msg = match &open {
                None => {
                    // Idle: write back what has waited a while, or a step of a backlog,
                    // before sleeping.
                    let retrying = self.sweep_retry_at.is_some() && self.overlay.len() > 0;
                    let next = batching::idle_next(
                        retrying,
                        self.overlay.wants_sweep(true),
                        self.overlay.wants_sweep_soon(),
                        self.may_sweep(),
                    );
                    match next {
                        IdleNext::Wait => rx.blocking_recv(),
                        IdleNext::Sweep(limit) => {
                            if let Ok(m) = rx.try_recv() {
                                Some(m)
                            } else {
                                if let Ok(g) = self.begin() {
                                    match self.sweep(limit) {
                                        Ok(_) => open = Some(g),
                                        Err(why) => self.abort(g, &why),
                                    }
                                }
                                continue;
                            }
                        }
                    }
                }
                Some(g) => match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let next = batching::open_group_next(
                            g.n,
                            last_group,
                            lingered,
                            self.progress.sync_has_room(),
                            || self.overlay.wants_sweep_soon() && self.may_sweep(),
                        );
                        match next {
                            OpenNext::SweepStep => {
                                if let Err(why) =
                                    self.sweep(crate::store::sqlite::overlay::SWEEP_STEP)
                                {
                                    let g = open.take().expect("open group");
                                    self.abort(g, &why);
                                }
                                continue;
                            }
                            OpenNext::Wait => rx.blocking_recv(),
                            OpenNext::Linger => {
                                lingered += 1;
                                std::thread::sleep(std::time::Duration::from_micros(50));
                                continue;
                            }
                            OpenNext::Commit => {
                                let g = open.take().expect("open group");
                                (last_group, lingered) = (g.n, 0);
                                if !self.close(g, &synced, &checkpointer) {
                                    healthy = false;
                                    break 'run;
                                }
                                continue;
                            }
                        }
                    }
                },
            };
            match msg {
                Some(Msg::Job(job)) => {
                    // No group (begin failed, logged): dropped unrun, its caller sees
                    // Unavailable.
                    let Some(mut g) = open.take().or_else(|| self.begin().ok()) else {
                        continue;
                    };
                    match self.execute(&mut g, job, clock.now_ms()) {
                        Ok(()) if batching::full(g.n) => {
                            (last_group, lingered) = (g.n, 0);
                            // Blocks while the sync stage is behind (backpressure).
                            if !self.close(g, &synced, &checkpointer) {
                                healthy = false;
                                break 'run;
                            }
                        }
                        Ok(()) => open = Some(g),
                        Err(why) => self.abort(g, &why),
                    }
                }
                Some(Msg::Wake) => {}
                // Already applied by a write since the poke: nothing to open a group for.
                Some(Msg::Claims) if self.progress.claims.waiting() == 0 => {}
                Some(Msg::Claims) => {
                    let Some(mut g) = open.take().or_else(|| self.begin().ok()) else {
                        continue;
                    };
                    match self.apply_claims(&mut g, clock.now_ms()) {
                        Ok(()) => open = Some(g),
                        Err(why) => self.abort(g, &why),
                    }
                }
                Some(Msg::Close(done)) => closing = Some(done),
                None => break,
            }
        }
        self.stop(
            open,
            closing,
            healthy,
            rx,
            synced,
            syncer,
            clock,
            checkpointer,
        )
    }

    /// The end of [`Writer::run`]: commits what is open (with the leases taken
    /// meanwhile), writes the dirty rows back, refuses what is queued, waits for the
    /// sync stage, checkpoints, then completes the close; returns `healthy` as it ends.
    #[allow(clippy::too_many_arguments)]
    fn stop(
        &mut self,
        mut open: Option<Open>,
        closing: Option<oneshot::Sender<()>>,
        mut healthy: bool,
        rx: mpsc::Receiver<Msg>,
        synced: std::sync::mpsc::SyncSender<Committed>,
        syncer: std::thread::JoinHandle<()>,
        clock: Arc<dyn Clock>,
        checkpointer: Checkpointer,
    ) -> bool {
        if self.progress.claims.waiting() > 0 && open.is_none() {
            open = self.begin().ok();
        }
        if let Some(mut g) = open.take() {
            // Leases taken meanwhile are recorded (their jobs are out).
            match self.apply_claims(&mut g, clock.now_ms()) {
                Ok(()) => healthy = healthy && self.hand_off(g, false, &synced, &checkpointer),
                Err(why) => self.abort(g, &why),
            }
        }
        // A clean stop leaves every row written back: nothing to replay at start-up.
        // If rows cannot be written back, the stop does not wait for that: they stay
        // behind the watermark and start-up replays them from the journal.
        while healthy && self.overlay.len() > 0 {
            let before = self.progress.sweep_failures.load(Ordering::SeqCst);
            self.group_failed = false;
            match self.begin() {
                Ok(g) => healthy = self.hand_off(g, true, &synced, &checkpointer),
                Err(()) => break,
            }
            if self.progress.sweep_failures.load(Ordering::SeqCst) != before || self.group_failed {
                tracing::warn!(
                    dirty = self.overlay.len(),
                    "stopping with rows not written back; start-up replays them from the journal"
                );
                break;
            }
        }
        // Writes still queued behind a close are refused: their senders see `Closed`.
        drop(rx);
        // Every committed group is synced and answered before the close completes.
        drop(synced);
        let _ = syncer.join();
        drop(checkpointer);
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "checkpoint at close failed");
        }
        if let Some(done) = closing {
            let _ = done.send(());
        }
        healthy
    }

    /// Commits a group of writes, with the sweep that is due at a commit (if any).
    fn close(
        &mut self,
        g: Open,
        synced: &std::sync::mpsc::SyncSender<Committed>,
        checkpointer: &Checkpointer,
    ) -> bool {
        let sweep = self.overlay.wants_sweep(false) && self.may_sweep();
        self.hand_off(g, sweep, synced, checkpointer)
    }

    /// Commits the group (writing dirty rows back first if `sweep`) and hands it to the
    /// sync stage (blocking while the stage is `SYNC_QUEUE` groups behind); `false`
    /// when the sync stage is gone.
    fn hand_off(
        &mut self,
        g: Open,
        sweep: bool,
        synced: &std::sync::mpsc::SyncSender<Committed>,
        checkpointer: &Checkpointer,
    ) -> bool {
        if sweep {
            let size = self.overlay.sweep_size();
            if let Err(why) = self.sweep(size) {
                self.abort(g, &why);
                return true;
            }
        }
        if let Some(c) = self.commit(g) {
            self.progress.syncing.fetch_add(1, Ordering::SeqCst);
            if synced.send(c).is_err() {
                return false;
            }
            checkpointer.committed();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Waker};
    use std::time::Duration;

    use crate::clock::SystemClock;
    use crate::config::Synchronous;
    use crate::domain::machine::{self, Command, Step};
    use crate::domain::State;
    use crate::store::sqlite::test_support::{store_with_item, NoHook};
    use crate::store::sqlite::{rows, Store};

    /// A store on a new file at `path` with a table `t (x INTEGER)` to write to.
    async fn store_with_table_t(path: &std::path::Path) -> Store {
        let store = Store::open(
            path,
            Synchronous::Full,
            Arc::new(SystemClock),
            Arc::new(NoHook),
        )
        .unwrap();
        store
            .write(|tx| {
                Ok(tx
                    .raw_connection()
                    .execute_batch("CREATE TABLE t (x INTEGER)")?)
            })
            .await
            .unwrap();
        store
    }

    /// While the disk flushes earlier groups (here: the sync stage is held), writes
    /// keep running as they arrive, into the group that commits next: a lease is
    /// visible to later writes, and its job can leave, without waiting for the flush.
    /// (The writer used to run a group only once the sync stage could take the one
    /// before: the fourth write below waited for the flush.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_run_while_the_disk_flushes_earlier_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_table_t(&dir.path().join("w.db")).await;
        let hold = store.hold_durability();
        let (ran_tx, ran) = std::sync::mpsc::channel::<i64>();
        let mut writes = Vec::new();
        for i in 0..6 {
            let ran_tx = ran_tx.clone();
            let w = store.clone();
            writes.push(tokio::spawn(async move {
                w.write(move |tx| {
                    tx.raw_connection()
                        .execute("INSERT INTO t VALUES (?1)", [i])?;
                    ran_tx.send(i).unwrap();
                    Ok(())
                })
                .await
            }));
            // Each write runs before the next is sent (so each could be a group).
            let n = tokio::task::block_in_place(|| ran.recv_timeout(Duration::from_secs(10)));
            assert_eq!(
                n.ok(),
                Some(i),
                "write {i} did not run while the disk was busy"
            );
        }
        for w in &writes {
            assert!(!w.is_finished(), "a write was answered before its fsync");
        }
        drop(hold);
        for w in writes {
            w.await.unwrap().unwrap();
        }
        let n: i64 = store
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 6);
        store.close().await;
    }

    /// A clean stop leaves nothing for start-up to replay: the change kept in memory
    /// (rows are written back later, see `overlay`) is on its row, and the watermark
    /// covers the last event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_close_every_change_is_on_its_row_and_nothing_is_left_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_item(&dir).await;
        store
            .write(move |tx| {
                let mut item = tx.load("a", id)?.expect("exists");
                let Step::Changed(change) = machine::step(&mut item, Command::Cancel, tx.now)?
                else {
                    panic!("cancelled")
                };
                tx.save(&item, change)?;
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
        let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        let row = rows::get_item_any(&conn, id).unwrap().expect("row");
        assert_eq!(row.state, State::Cancelled);
        let (mark, last): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT swept_seq FROM sweep_mark), (SELECT MAX(seq) FROM events)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(mark, last, "events past the watermark would be replayed");
    }

    /// Messages are taken in order: a write queued after a close is not run, and its
    /// caller is told the store is shutting down (nothing hangs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_queued_behind_a_close_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = store_with_table_t(&path).await;
        let mut close = pin!(store.close());
        // The first poll queues the close (the queue has room), then waits for it.
        assert!(close
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending());
        let behind = match store
            .enqueue(|tx| {
                Ok(tx
                    .raw_connection()
                    .execute("INSERT INTO t VALUES (1)", [])?)
            })
            .await
        {
            Ok(outcome) => outcome.await,
            Err(e) => Err(e),
        };
        assert!(
            matches!(&behind, Err(crate::domain::Error::Unavailable(why)) if why.contains("shutting down")),
            "{behind:?}"
        );
        close.await;
        let conn = rusqlite::Connection::open(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "the write behind the close ran");
    }
}
