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
//!
//! # Parts
//! - `queue`: what reaches the writer thread, in order, and the store's handle on it.
//! - `run`: the writer's loop, and its stop.
//! - `batching`: when an open group commits; what an idle writer does.
//! - `group`: one group's transaction: a savepoint per job, claims, commit or abort.
//! - `sweep`: writing dirty rows back inside a group; the backoff while that fails.
//! - `durable`: the sync stage: fsync, then effects and answers in commit order.
//! - `progress`: the watermarks readers wait on, and what the writer shares.
//! - `health`: degraded and fatal; threads whose death is reported as fatal.

mod batching;
mod durable;
mod group;
mod health;
mod progress;
mod queue;
mod run;
mod sweep;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;

use super::checkpoint::Checkpointer;
use super::overlay::Overlay;
use super::{CommitHook, StoreError};

pub use batching::MAX_GROUP;
pub(super) use durable::Durability;
pub(super) use progress::Progress;
pub(super) use queue::WriterHandle;

use durable::{sync_stage, Committed, SYNC_QUEUE};
use health::spawn_thread;
use queue::Msg;
use sweep::SWEEP_RETRY_FIRST;

pub(super) fn spawn(
    conn: Connection,
    hook: Arc<dyn CommitHook>,
    events: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
    checkpointer: Checkpointer,
    durability: Durability,
    progress: Arc<Progress>,
) -> Result<WriterHandle, StoreError> {
    let (handle, rx) = queue::channel();
    let (synced_tx, synced_rx) = std::sync::mpsc::sync_channel::<Committed>(SYNC_QUEUE);
    let sync_hook = hook.clone();
    let sync_progress = progress.clone();
    let wake = handle.downgrade();
    let waker = handle.downgrade();
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
        let mut w = Writer::new(&conn, &*hook, &writer_progress, Some(waker));
        w.run(rx, synced_tx, syncer, clock, checkpointer)
    })?;
    Ok(handle)
}

/// The writer thread's state: its connection, the overlay of dirty items, and how its
/// write-backs and groups fare.
struct Writer<'a> {
    conn: &'a Connection,
    hook: &'a dyn CommitHook,
    progress: &'a Progress,
    overlay: Overlay,
    /// After a failed write-back: none is tried before this time (the writer used to
    /// retry at once, in a loop of empty commits and fsyncs).
    sweep_retry_at: Option<Instant>,
    /// The wait after the next failure (doubling from [`SWEEP_RETRY_FIRST`] up to
    /// `SWEEP_RETRY_MAX`; back to the first after a success).
    sweep_backoff: std::time::Duration,
    /// The last group failed (to commit, or SQLite ended its transaction).
    group_failed: bool,
    /// Wakes the idle writer when a write-back retry is due (`None` in unit tests).
    waker: Option<mpsc::WeakSender<Msg>>,
}

impl<'a> Writer<'a> {
    fn new(
        conn: &'a Connection,
        hook: &'a dyn CommitHook,
        progress: &'a Progress,
        waker: Option<mpsc::WeakSender<Msg>>,
    ) -> Writer<'a> {
        Writer {
            conn,
            hook,
            progress,
            overlay: Overlay::new(
                progress.dirty.clone(),
                progress.hints.clone(),
                progress.claims.clone(),
            ),
            sweep_retry_at: None,
            sweep_backoff: SWEEP_RETRY_FIRST,
            group_failed: false,
            waker,
        }
    }
}
