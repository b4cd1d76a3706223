//! WAL checkpoints on their own thread and connection, off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses the threshold, so
//! with `synchronous=FULL` one unlucky group (and every caller waiting on it) paid for
//! copying the WAL into the database file and fsyncing it: 13% of the writer's CPU in a
//! dispatch profile. The writer turns that off (`wal_autocheckpoint=0`) and pokes this
//! thread after each commit instead; it runs a PASSIVE checkpoint (never blocks the
//! writer) at most every [`MIN_INTERVAL`]. A passive checkpoint never lets
//! the WAL start over while the writer keeps appending, so once the WAL is longer than
//! [`RESTART_FRAMES`] a RESTART checkpoint waits for a gap between groups, copies the
//! few frames left and makes the next write start the WAL from its beginning. Durability does not depend on this thread: a committed group
//! is in the fsynced WAL whether or not it was ever checkpointed.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::StoreError;
use crate::config::Synchronous;

/// Least time between two checkpoints.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// WAL length (frames, i.e. pages) past which a RESTART checkpoint starts it over
/// (~32 MiB at 4 KiB pages; SQLite's own automatic checkpoint is at 1000).
const RESTART_FRAMES: i64 = 8_000;

/// A PASSIVE checkpoint this quick left little for a RESTART to copy under the lock.
const QUICK_PASSIVE: Duration = Duration::from_millis(5);

/// PASSIVE checkpoints in a row, at most, before a RESTART (each copies what was
/// appended during the one before: the remainder shrinks quickly).
const MAX_PASSIVE_ROUNDS: u32 = 6;

/// Pokes the checkpointer; dropping it stops the thread.
pub(super) struct Checkpointer {
    poke: mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Opens a second read-write connection on `path` and starts the thread.
    pub(super) fn start(path: &Path, sync: Synchronous) -> Result<Self, StoreError> {
        let conn = super::open_rw(path, sync)?;
        let (poke, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("sendlater-checkpoint".into())
            .spawn(move || run(&conn, &rx))
            .map_err(|e| StoreError::Unusable {
                path: path.to_path_buf(),
                reason: format!("cannot start the checkpoint thread: {e}"),
            })?;
        Ok(Self { poke })
    }

    /// Says that a commit happened; never blocks (a pending poke is enough).
    pub(super) fn committed(&self) {
        let _ = self.poke.try_send(());
    }
}

fn run(conn: &Connection, rx: &mpsc::Receiver<()>) {
    let mut last = Instant::now() - MIN_INTERVAL;
    // Blocks while nothing is written; ends when the writer drops its Checkpointer.
    while rx.recv().is_ok() {
        let since = last.elapsed();
        if since < MIN_INTERVAL {
            std::thread::sleep(MIN_INTERVAL - since);
        }
        last = Instant::now();
        // A RESTART holds the writer out while it copies the frames the last PASSIVE
        // did not (those appended meanwhile) and syncs the database file: measured
        // 35-73 ms after a 20-70 ms PASSIVE, which was the on-time lateness p99. So
        // PASSIVE runs again until one finds little left (it took under
        // QUICK_PASSIVE), and only then does a RESTART take the lock.
        for round in 0..MAX_PASSIVE_ROUNDS {
            let started = Instant::now();
            match checkpoint(conn, "PASSIVE") {
                Ok((_, log, _)) if log > RESTART_FRAMES => {
                    if started.elapsed() < QUICK_PASSIVE || round + 1 == MAX_PASSIVE_ROUNDS {
                        if let Err(e) = checkpoint(conn, "RESTART") {
                            tracing::warn!(error = %e, "restart checkpoint failed");
                        }
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoint failed");
                    break;
                }
            }
        }
    }
}

/// `(busy, frames in the WAL, frames checkpointed)`.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}
