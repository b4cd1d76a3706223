//! The writer thread: one read-write connection, group commit.
//!
//! Loop: a job that arrives runs at once, inside its own savepoint, in the open group's
//! transaction (`BEGIN IMMEDIATE` when the first one arrives). The group commits when
//! nothing more is queued and the sync stage has room for it (or at [`MAX_GROUP`]
//! writes), then goes to the sync stage; while the sync stage is busy, arriving jobs
//! keep running into the open group. A failed commit answers every job of the group
//! with an error and applies none of their timer changes.
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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::domain;

use super::checkpoint::Checkpointer;
use super::overlay::{Overlay, SWEEP_CHUNK, SWEEP_STEP};
use super::rows;
use super::{CommitHook, Completion, Effects, Job, SqliteTx, StoreError, Tx};

/// Most writes in one transaction: bounds a group's latency and memory.
pub const MAX_GROUP: usize = 2048;

/// How many 50 us naps the writer may take waiting for a group to fill.
const LINGER_STEPS: u32 = 4;

/// Queue length in front of the writer; senders wait (backpressure) when it is full.
const QUEUE: usize = 8192;

enum Msg {
    Job(Job),
    Close(oneshot::Sender<()>),
    /// From the sync stage: it made room (an open group may commit now).
    Wake,
    /// From the dispatcher: claims wait to be applied.
    Claims,
}

/// A group being written: its transaction is open.
struct Open {
    started: Instant,
    /// Writes run in it (committed or not).
    n: usize,
    completions: Vec<Completion>,
    fx: Effects,
    /// Effects of writes that will not commit (each rolled back alone).
    undone: Effects,
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

/// How far the writer has got, for readers that must see only durable data and for
/// whoever must notice that the writer died.
pub(super) struct Progress {
    /// Groups whose COMMIT has started (counted before COMMIT runs, so a reader that
    /// saw a group's rows reads a number at least that group's).
    committing: AtomicU64,
    /// Groups handed to the sync stage and not finished by it.
    syncing: AtomicU64,
    /// Groups the sync stage has finished (durable, or known failed), in order.
    done: watch::Sender<u64>,
    /// Set once, when the writer or the sync stage stopped for a reason other than a
    /// close: a panic, or a lost channel. Writes fail from then on.
    fatal: watch::Sender<Option<String>>,
    /// While true, the sync stage does not make anything durable (tests use it to
    /// observe what happens between a commit and its fsync; see `Store::hold_durability`).
    hold: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
    /// How many items are changed but not yet written back to their rows.
    pub(super) dirty: Arc<std::sync::atomic::AtomicUsize>,
    /// The meta of those items, for dispatch's hint reads.
    pub(super) hints: super::overlay::Hints,
    /// Which tickets may have live items (counted by the writer, discounted here).
    pub(super) tickets: Arc<super::tickets::LiveTickets>,
    /// The dispatcher's leases waiting for the writer.
    pub(super) claims: Arc<super::claims::Claims>,
    /// Write-backs of rows (sweeps) that failed and were rolled back.
    pub(super) sweep_failures: AtomicU64,
    /// Why the writer cannot do all its work now (rows cannot be written back, or a
    /// group failed to commit), `None` while it can; see `Store::degraded`.
    degraded: watch::Sender<Option<String>>,
    /// The two causes of `degraded`, each cleared by its own next success.
    sweep_failing: std::sync::Mutex<Option<String>>,
    commit_failing: std::sync::Mutex<Option<String>>,
    /// The server's counters and histograms (group commits are observed here).
    pub(super) metrics: Arc<crate::metrics::Metrics>,
}

impl Progress {
    pub(super) fn new() -> Arc<Progress> {
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
    pub(super) fn set_hold(&self, on: bool) {
        *self.hold.lock().unwrap_or_else(|p| p.into_inner()) = on;
        self.released.notify_all();
    }

    /// Whether the sync stage can take another group without the writer blocking: it
    /// is flushing at most one, and has none queued.
    fn sync_has_room(&self) -> bool {
        self.syncing.load(Ordering::SeqCst) < 1 + SYNC_QUEUE as u64
    }

    /// Waits while the sync stage is held.
    fn wait_released(&self) {
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
    pub(super) async fn durable_barrier(&self) -> Result<(), StoreError> {
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

    /// Why the writer cannot do all its work now, `None` while it can.
    pub(super) fn degraded(&self) -> watch::Receiver<Option<String>> {
        self.degraded.subscribe()
    }

    /// Whether write-backs are failing now.
    pub(super) fn sweep_failing(&self) -> bool {
        self.sweep_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Records that write-backs fail (`Some(why)`) or succeed again (`None`).
    pub(super) fn set_sweep_failing(&self, why: Option<String>) {
        *self.sweep_failing.lock().unwrap_or_else(|p| p.into_inner()) = why;
        self.publish_degraded();
    }

    /// Records that group commits fail (`Some(why)`) or succeed again (`None`).
    fn set_commit_failing(&self, why: Option<String>) {
        *self
            .commit_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = why;
        self.publish_degraded();
    }

    fn publish_degraded(&self) {
        let now = self
            .commit_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .or_else(|| {
                self.sweep_failing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            });
        self.degraded.send_if_modified(|d| {
            let changed = d.is_some() != now.is_some();
            if changed {
                match &now {
                    Some(why) => tracing::error!(reason = %why, "the store cannot do all its work; out of rotation until it can"),
                    None => tracing::info!("the store works again"),
                }
            }
            *d = now;
            changed
        });
    }

    /// Resolves with the reason once the writer or the sync stage died.
    pub(super) fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    fn die(&self, why: String) {
        tracing::error!(reason = %why, "the store's writer stopped; writes fail from now on");
        self.fatal.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(why.clone());
            }
            first
        });
    }
}

/// A group past its COMMIT, waiting for the sync stage.
struct Committed {
    writes: usize,
    /// `None` when the COMMIT failed: nothing to sync, the completions carry errors.
    fx: Option<Effects>,
    completions: Vec<Completion>,
    started: Instant,
}

/// Committed groups that may wait for the sync stage while it syncs another (1 measured
/// the same throughput as 4, with a slightly lower p99).
const SYNC_QUEUE: usize = 1;

/// Runs `body` on a named thread; a panic (or an early end) marks the store dead.
fn spawn_thread(
    name: &'static str,
    progress: Arc<Progress>,
    body: impl FnOnce() -> bool + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(format!("sendlater-{name}"))
        .spawn(move || match catch_unwind(AssertUnwindSafe(body)) {
            Ok(true) => {}
            Ok(false) => progress.die(format!("the {name} thread stopped unexpectedly")),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                progress.die(format!("the {name} thread panicked: {what}"));
            }
        })
        .map_err(|e| StoreError::Unusable {
            path: Default::default(),
            reason: format!("cannot start the {name} thread: {e}"),
        })
}

pub(super) fn spawn(
    conn: Connection,
    hook: Arc<dyn CommitHook>,
    events: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
    checkpointer: Checkpointer,
    durability: Durability,
    progress: Arc<Progress>,
) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (synced_tx, synced_rx) = std::sync::mpsc::sync_channel::<Committed>(SYNC_QUEUE);
    let sync_hook = hook.clone();
    let sync_progress = progress.clone();
    let wake = tx.downgrade();
    let waker = tx.downgrade();
    let syncer = spawn_thread("sync", progress.clone(), move || {
        sync_stage(
            synced_rx,
            &*sync_hook,
            events,
            durability,
            &sync_progress,
            wake,
        );
        true
    })?;
    let writer_progress = progress.clone();
    spawn_thread("writer", progress, move || {
        let mut w = Writer {
            conn: &conn,
            hook: &*hook,
            progress: &writer_progress,
            overlay: Overlay::new(
                writer_progress.dirty.clone(),
                writer_progress.hints.clone(),
                writer_progress.claims.clone(),
            ),
            sweep_retry_at: None,
            sweep_backoff: SWEEP_RETRY_FIRST,
            group_failed: false,
            waker: Some(waker),
        };
        w.run(rx, synced_tx, syncer, clock, checkpointer)
    })?;
    Ok(WriterHandle { tx })
}

/// Makes committed groups durable and answers them, in commit order.
fn sync_stage(
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
        // The writer may hold an open group until there is room here. (A full queue
        // needs no wake-up: the writer is busy taking jobs, and looks again after each.)
        if let Some(tx) = wake.upgrade() {
            let _ = tx.try_send(Msg::Wake);
        }
    }
}

impl WriterHandle {
    pub(super) async fn write<T, F>(&self, f: F) -> domain::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> domain::Result<T> + Send + 'static,
    {
        self.enqueue(f).await?.await
    }

    /// Queues the write (writes run in the order they were queued) and returns what
    /// resolves with its outcome, as [`WriterHandle::write`].
    pub(super) async fn enqueue<T, F>(
        &self,
        f: F,
    ) -> domain::Result<impl std::future::Future<Output = domain::Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> domain::Result<T> + Send + 'static,
    {
        let (job, outcome) = crate::store::job(f);
        self.submit(job).await?;
        Ok(outcome)
    }

    /// Queues a job (writes run in the order they were queued).
    pub(super) async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.tx
            .send(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Tells the writer that claims wait (if its queue is full it is busy, and applies
    /// them at the start of its next write).
    pub(super) fn poke(&self) {
        let _ = self.tx.try_send(Msg::Claims);
    }

    pub(super) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Writer<'a> {
    conn: &'a Connection,
    hook: &'a dyn CommitHook,
    progress: &'a Progress,
    overlay: Overlay,
    /// After a failed write-back: none is tried before this time (the writer used to
    /// retry at once, in a loop of empty commits and fsyncs).
    sweep_retry_at: Option<Instant>,
    /// The wait after the next failure (doubling from [`SWEEP_RETRY_FIRST`] up to
    /// [`SWEEP_RETRY_MAX`]; back to the first after a success).
    sweep_backoff: std::time::Duration,
    /// The last group failed (to commit, or SQLite ended its transaction).
    group_failed: bool,
    /// Wakes the idle writer when a write-back retry is due (`None` in unit tests).
    waker: Option<mpsc::WeakSender<Msg>>,
}

/// The first wait after a failed write-back of rows.
const SWEEP_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
/// The longest wait between write-back attempts while they fail.
const SWEEP_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

impl Writer<'_> {
    /// The writer's loop; `true` when it ended by a close (or every handle dropped),
    /// `false` when it lost the sync stage.
    ///
    /// Jobs are executed as they arrive, into the open group's transaction; the group
    /// commits once nothing more is queued and the sync stage has room for it (or it is
    /// full). So while the disk flushes earlier groups, new writes do not wait in the
    /// queue: they run at once (a lease is visible to every later write, and its job can
    /// leave) and join the group that commits when the flush is done.
    fn run(
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
        // it alone costs a whole fsync. Linger briefly for the others (bounded, see below).
        let mut last_group = 0usize;
        let mut lingered = 0;
        'run: while closing.is_none() {
            let msg = match &open {
                None => {
                    // Idle: write back what has waited a while, or a step of a backlog,
                    // before sleeping.
                    // While write-backs fail, one is retried after the backoff even
                    // without traffic (so the store recovers, and says so, by itself).
                    let retrying = self.sweep_retry_at.is_some() && self.overlay.len() > 0;
                    let wants = retrying
                        || self.overlay.wants_sweep(true)
                        || self.overlay.wants_sweep_soon();
                    if wants && !self.may_sweep() {
                        // Write-backs fail: wait for a write, or for the wake-up the
                        // retry timer sends once the backoff has passed.
                        rx.blocking_recv()
                    } else if wants {
                        if let Ok(m) = rx.try_recv() {
                            Some(m)
                        } else {
                            if let Ok(g) = self.begin() {
                                let limit = if retrying || self.overlay.wants_sweep(true) {
                                    SWEEP_CHUNK
                                } else {
                                    SWEEP_STEP
                                };
                                match self.sweep(limit) {
                                    Ok(_) => open = Some(g),
                                    Err(why) => self.abort(g, &why),
                                }
                            }
                            continue;
                        }
                    } else {
                        rx.blocking_recv()
                    }
                }
                Some(g) => match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if !self.progress.sync_has_room() {
                            // The disk is busy with earlier groups: write rows back in
                            // small steps (a write that arrives waits for one step at
                            // most), or wait for a write (run it now) or for the sync
                            // stage's wake-up.
                            if self.overlay.wants_sweep_soon() && self.may_sweep() {
                                if let Err(why) = self.sweep(SWEEP_STEP) {
                                    let g = open.take().expect("open group");
                                    self.abort(g, &why);
                                }
                                continue;
                            }
                            rx.blocking_recv()
                        } else if g.n * 2 < last_group && lingered < LINGER_STEPS {
                            // At most LINGER_STEPS x 50 us (0.2 ms) against a ~4-30 ms
                            // fsync, and only when the last group was at least twice this.
                            lingered += 1;
                            std::thread::sleep(std::time::Duration::from_micros(50));
                            continue;
                        } else {
                            let g = open.take().expect("open group");
                            (last_group, lingered) = (g.n, 0);
                            if !self.close(g, &synced, &checkpointer) {
                                healthy = false;
                                break 'run;
                            }
                            continue;
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
                        Ok(()) if g.n >= MAX_GROUP => {
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
    /// sync stage (blocking while the stage is [`SYNC_QUEUE`] groups behind); `false`
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

    /// Opens a group's transaction.
    fn begin(&mut self) -> Result<Open, ()> {
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "cannot begin a write transaction");
            return Err(());
        }
        Ok(Open {
            started: Instant::now(),
            n: 0,
            completions: Vec::new(),
            fx: Effects::default(),
            undone: Effects::default(),
        })
    }

    /// Whether a write-back may be tried now (none is while backing off after one
    /// failed).
    fn may_sweep(&self) -> bool {
        self.sweep_retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// No write-back before the backoff has passed; then the idle writer is woken to
    /// try one (a timer thread sends it a wake-up: its queue has no receive with a
    /// timeout).
    fn retry_sweep_later(&mut self) {
        let wait = self.sweep_backoff;
        self.sweep_retry_at = Some(Instant::now() + wait);
        if let Some(waker) = self.waker.clone() {
            let spawned = std::thread::Builder::new()
                .name("sendlater-sweep-retry".into())
                .spawn(move || {
                    std::thread::sleep(wait);
                    if let Some(tx) = waker.upgrade() {
                        let _ = tx.try_send(Msg::Wake);
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the write-back retry timer; retrying at the next write");
            }
        }
    }

    /// A write-back failed: counted, reported, and the next one waits for the backoff.
    fn sweep_failed(&mut self, e: &StoreError) {
        self.progress.sweep_failures.fetch_add(1, Ordering::SeqCst);
        tracing::error!(error = %e, retry_in_ms = self.sweep_backoff.as_millis() as u64, "writing rows back failed; they stay dirty");
        self.retry_sweep_later();
        self.sweep_backoff = (self.sweep_backoff * 2).min(SWEEP_RETRY_MAX);
        self.progress
            .set_sweep_failing(Some(format!("writing rows back failed: {e}")));
    }

    /// Writes dirty rows back in the open group, after its writes (so a sweep never
    /// delays the writes that arrived before it, e.g. a lease whose job waits to leave).
    /// A sweep that fails is undone alone and the group's writes commit without it
    /// (`Ok(false)`; the next one is tried after a backoff, and the store reports
    /// itself degraded until one succeeds); `Err` only when SQLite ended the whole
    /// transaction.
    fn sweep(&mut self, limit: usize) -> Result<bool, String> {
        let conn = self.conn;
        conn.execute_batch("SAVEPOINT s")
            .map_err(|e| format!("savepoint failed: {e}"))?;
        let mark = self.overlay.mark();
        let (ids, up_to) = self.overlay.take_for_sweep(limit);
        let overlay = &self.overlay;
        match rows::sweep(conn, ids.iter().filter_map(|&id| overlay.get(id)), up_to) {
            Ok(()) => {
                conn.execute_batch("RELEASE s")
                    .map_err(|e| format!("savepoint release failed: {e}"))?;
                if self.sweep_retry_at.take().is_some() {
                    self.sweep_backoff = SWEEP_RETRY_FIRST;
                    self.progress.set_sweep_failing(None);
                }
                Ok(true)
            }
            Err(e) if conn.is_autocommit() => {
                // SQLite ended the whole transaction: the group fails, and the next
                // write-back waits for the backoff as after any failed one.
                self.sweep_failed(&e);
                Err(format!("writing rows back failed: {e}"))
            }
            Err(e) => {
                self.sweep_failed(&e);
                self.overlay.rollback_to(mark);
                conn.execute_batch("ROLLBACK TO s; RELEASE s")
                    .map_err(|e| format!("savepoint rollback failed: {e}"))?;
                Ok(false)
            }
        }
    }

    /// Runs one job in the open group, inside its own savepoint. `Err` when the group
    /// cannot go on (SQLite rolled its transaction back, or a savepoint failed): the
    /// caller aborts it.
    ///
    /// SQLite may roll back the whole transaction by itself (SQLITE_FULL, IOERR, NOMEM,
    /// ...) in the middle of the group: then the later jobs would run in autocommit,
    /// each committing on its own, unsynced, while told it failed. So after every job
    /// the transaction must still be open; if it is not (or a savepoint cannot be
    /// opened or released), the whole group fails.
    fn execute(&mut self, g: &mut Open, job: Job, now: i64) -> Result<(), String> {
        let conn = self.conn;
        // Every write sees the dispatcher's leases taken before it.
        self.apply_claims(g, now)?;
        if let Err(e) = conn
            .prepare_cached("SAVEPOINT w")
            .and_then(|mut s| s.execute([]))
        {
            // Dropped unrun: its caller sees Unavailable.
            return Err(format!("savepoint failed: {e}"));
        }
        let mut job_fx = Effects::default();
        let mark = self.overlay.mark();
        let (ok, done) = {
            let mut stx = SqliteTx {
                conn,
                now,
                fx: &mut job_fx,
                overlay: &mut self.overlay,
                tickets: &self.progress.tickets,
                progress: self.progress,
            };
            job(&mut Tx::new(now, &mut stx))
        };
        g.completions.push(done);
        g.n += 1;
        if self.sweep_retry_at.is_none() && self.progress.sweep_failing() {
            // A write's own write-back (a read asked for it) failed: the writer retries
            // by itself after a backoff, so the store recovers without traffic.
            self.retry_sweep_later();
        }
        if conn.is_autocommit() {
            g.undone.append(job_fx);
            return Err("SQLite rolled back the group's transaction".into());
        }
        let end = if ok {
            conn.prepare_cached("RELEASE w")
                .and_then(|mut s| s.execute([]).map(drop))
        } else {
            conn.execute_batch("ROLLBACK TO w; RELEASE w")
        };
        match end {
            Ok(()) if ok => {
                g.fx.append(job_fx);
                Ok(())
            }
            Ok(()) => {
                self.overlay.rollback_to(mark);
                g.undone.append(job_fx);
                Ok(())
            }
            Err(e) => {
                g.undone.append(job_fx);
                Err(format!("savepoint release failed: {e}"))
            }
        }
    }

    /// Applies the waiting claims (the dispatcher's leases) in the open group, in a
    /// savepoint of their own. If that fails they wait again; `Err` only when SQLite
    /// ended the whole transaction.
    fn apply_claims(&mut self, g: &mut Open, now: i64) -> Result<(), String> {
        if self.progress.claims.waiting() == 0 {
            return Ok(());
        }
        let conn = self.conn;
        conn.execute_batch("SAVEPOINT c")
            .map_err(|e| format!("savepoint failed: {e}"))?;
        let mut claims = self.progress.claims.take_all().into_iter();
        let mark = self.overlay.mark();
        let mut fx = Effects::default();
        let r = {
            let mut tx = SqliteTx {
                conn,
                now,
                fx: &mut fx,
                overlay: &mut self.overlay,
                tickets: &self.progress.tickets,
                progress: self.progress,
            };
            claims.by_ref().try_for_each(|c| tx.apply_claim(c))
        };
        match r {
            Ok(()) => {
                g.fx.append(fx);
                conn.execute_batch("RELEASE c")
                    .map_err(|e| format!("savepoint release failed: {e}"))
            }
            Err(e) => {
                tracing::error!(error = %e, "recording the dispatcher's leases failed; they wait again");
                // Those not run yet, and (by the rollback) those applied before.
                self.progress.claims.give_back(claims);
                self.overlay.rollback_to(mark);
                if conn.is_autocommit() {
                    return Err(format!("recording leases failed: {e}"));
                }
                conn.execute_batch("ROLLBACK TO c; RELEASE c")
                    .map_err(|e| format!("savepoint rollback failed: {e}"))
            }
        }
    }

    /// Rolls a broken group back and answers its writes with an error.
    fn abort(&mut self, mut g: Open, why: &str) {
        tracing::error!(reason = %why, writes = g.n, "write group failed; rolling it back");
        self.group_failed = true;
        self.progress
            .set_commit_failing(Some(format!("a write group failed: {why}")));
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        let fx = std::mem::take(&mut g.fx);
        g.undone.append(fx);
        self.overlay.abandoned();
        self.fail(&g.undone, g.completions, why);
    }

    /// Commits the open group; `None` when nothing is left for the sync stage.
    fn commit(&mut self, g: Open) -> Option<Committed> {
        let conn = self.conn;
        if !g.undone.is_empty() {
            self.hook.abandoned(&g.undone);
        }
        self.progress.committing.fetch_add(1, Ordering::SeqCst);
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                self.overlay.committed();
                if std::mem::take(&mut self.group_failed) {
                    self.progress.set_commit_failing(None);
                }
                Some(Committed {
                    writes: g.n,
                    fx: Some(g.fx),
                    completions: g.completions,
                    started: g.started,
                })
            }
            Err(e) => {
                self.overlay.abandoned();
                tracing::error!(error = %e, writes = g.n, "group commit failed");
                self.group_failed = true;
                self.progress
                    .set_commit_failing(Some(format!("a group commit failed: {e}")));
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                self.fail(&g.fx, g.completions, &e.to_string());
                // Counted as committing: the sync stage counts it done, in order.
                Some(Committed {
                    writes: g.n,
                    fx: None,
                    completions: Vec::new(),
                    started: g.started,
                })
            }
        }
    }

    /// Runs `jobs` as one group (the loop's steps in one go, for tests); the jobs a
    /// broken group did not run are left in `jobs`.
    #[cfg(test)]
    fn commit_group(&mut self, jobs: &mut Vec<Job>, now: i64, sweep: bool) -> Option<Committed> {
        let mut g = self.begin().ok()?;
        let mut queued = std::mem::take(jobs).into_iter();
        for job in queued.by_ref() {
            if let Err(why) = self.execute(&mut g, job, now) {
                jobs.extend(queued);
                self.abort(g, &why);
                return None;
            }
        }
        if sweep {
            if let Err(why) = self.sweep(SWEEP_CHUNK) {
                self.abort(g, &why);
                return None;
            }
        }
        self.commit(g)
    }

    /// Answers every write of a group that did not commit with an error, after giving
    /// back what they reserved.
    fn fail(&self, fx: &Effects, completions: Vec<Completion>, why: &str) {
        self.hook.abandoned(fx);
        for done in completions {
            done(Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                Some(why.to_owned()),
            ))));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::clock::SystemClock;
    use crate::config::Synchronous;
    use crate::store::sqlite::Store;
    use crate::store::WheelOp;

    /// Records what reaches the hook; optionally blocks `durable` until released.
    #[derive(Default)]
    struct Seen {
        timers: Mutex<Vec<WheelOp>>,
        gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
        entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
        released: AtomicBool,
    }

    impl CommitHook for Seen {
        fn durable(&self, fx: &Effects) {
            if let Some(gate) = self.gate.lock().unwrap().take() {
                if let Some(e) = self.entered.lock().unwrap().take() {
                    let _ = e.send(());
                }
                let _ = gate.recv();
                self.released.store(true, Ordering::SeqCst);
            }
            self.timers.lock().unwrap().extend_from_slice(&fx.timers);
        }
        fn abandoned(&self, _fx: &Effects) {}
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

    fn seen_contains(seen: &Seen, i: i64) -> bool {
        seen.timers
            .lock()
            .unwrap()
            .contains(&WheelOp::Set(i, 1000 + i))
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

    /// While the disk flushes earlier groups (here: the sync stage is held), writes
    /// keep running as they arrive, into the group that commits next: a lease is
    /// visible to later writes, and its job can leave, without waiting for the flush.
    /// (The writer used to run a group only once the sync stage could take the one
    /// before: the fourth write below waited for the flush.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_run_while_the_disk_flushes_earlier_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("w.db"),
            Synchronous::Full,
            Arc::new(SystemClock),
            Arc::new(Seen::default()),
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

    type Answer = Arc<Mutex<Option<Result<(), StoreError>>>>;

    /// A job that runs `f` and records the answer its caller would get.
    fn job(f: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static) -> (Job, Answer) {
        let answer: Answer = Arc::default();
        let slot = answer.clone();
        let job: Job = Box::new(move |tx: &mut Tx<'_>| {
            let ok = f(tx.raw_connection()).is_ok();
            let done: Completion = Box::new(move |r| *slot.lock().unwrap() = Some(r));
            (ok, done)
        });
        (job, answer)
    }

    /// SQLite may roll the whole transaction back by itself in the middle of a group
    /// (SQLITE_FULL, IOERR, NOMEM); the writes after it must not run in autocommit.
    #[test]
    fn a_transaction_rolled_back_by_sqlite_mid_group_fails_the_group_and_commits_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        let progress = Progress::new();
        let hook = Seen::default();
        let mut w = Writer {
            conn: &conn,
            hook: &hook,
            progress: &progress,
            overlay: Overlay::new(
                progress.dirty.clone(),
                progress.hints.clone(),
                progress.claims.clone(),
            ),
            sweep_retry_at: None,
            sweep_backoff: SWEEP_RETRY_FIRST,
            group_failed: false,
            waker: None,
        };
        let (j1, a1) = job(|c| c.execute("INSERT INTO t VALUES (1)", []).map(drop));
        // What SQLite does on SQLITE_FULL: the transaction is gone.
        let (j2, a2) = job(|c| c.execute_batch("ROLLBACK"));
        let (j3, a3) = job(|c| c.execute("INSERT INTO t VALUES (3)", []).map(drop));
        let mut jobs = vec![j1, j2, j3];
        assert!(
            w.commit_group(&mut jobs, 0, false).is_none(),
            "the group must fail"
        );
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&conn), 0, "a write committed on its own");
        assert!(matches!(*a1.lock().unwrap(), Some(Err(_))));
        assert!(matches!(*a2.lock().unwrap(), Some(Err(_))));
        assert!(
            a3.lock().unwrap().is_none(),
            "the write after it must not run"
        );
        assert!(conn.is_autocommit());
        // The write that had not run goes into the next group, and commits there.
        assert_eq!(jobs.len(), 1);
        assert!(w.commit_group(&mut jobs, 0, false).is_some());
        assert_eq!(count(&conn), 1);
    }

    #[test]
    fn a_panic_on_the_writer_thread_is_reported_as_fatal() {
        let progress = Progress::new();
        let fatal = progress.fatal();
        let t = spawn_thread("writer", progress.clone(), || panic!("boom")).unwrap();
        let _ = t.join();
        let why = fatal.borrow().clone().expect("fatal set");
        assert!(why.contains("writer") && why.contains("boom"), "{why}");
    }
}
