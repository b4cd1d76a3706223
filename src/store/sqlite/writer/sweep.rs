//! Write-backs: the writer writes dirty rows back (a *sweep*, see `overlay`) inside
//! an open group, after its writes, in a savepoint of its own.
//!
//! # Invariants
//! - A sweep never delays the writes that arrived before it: it runs after them in the
//!   group.
//! - A sweep that fails is undone alone (savepoint and overlay): the group's writes
//!   commit without it and the items stay dirty. Only when SQLite ended the whole
//!   transaction does the group fail.
//! - After a failure, the store reports itself degraded, the failure is counted, and
//!   no write-back is tried before a backoff has passed (doubling from
//!   [`SWEEP_RETRY_FIRST`] up to [`SWEEP_RETRY_MAX`]); a timer thread then wakes the
//!   idle writer to try again, so the store recovers without traffic. The first
//!   success resets the backoff and clears the degraded state.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::queue::Msg;
use super::Writer;
use crate::store::sqlite::{rows, StoreError};

/// The first wait after a failed write-back of rows.
pub(super) const SWEEP_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between write-back attempts while they fail.
const SWEEP_RETRY_MAX: Duration = Duration::from_secs(5);

impl Writer<'_> {
    /// Whether a write-back may be tried now (none is while backing off after one
    /// failed).
    pub(super) fn may_sweep(&self) -> bool {
        self.sweep_retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// No write-back before the backoff has passed; then the idle writer is woken to
    /// try one (a timer thread sends it a wake-up: its queue has no receive with a
    /// timeout).
    pub(super) fn retry_sweep_later(&mut self) {
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
    pub(super) fn sweep(&mut self, limit: usize) -> Result<bool, String> {
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
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::testing::{committed_rows, connection, sql_job, writer, Seen};
    use super::*;
    use crate::store::sqlite::test_support::pending_chat;
    use crate::store::sqlite::writer::progress::Progress;

    /// Makes every write-back fail (the watermark's update is refused).
    fn refuse_write_backs(conn: &rusqlite::Connection) {
        conn.execute_batch(
            "CREATE TEMP TRIGGER no_sweep BEFORE UPDATE ON sweep_mark \
             BEGIN SELECT RAISE(ABORT, 'injected'); END",
        )
        .unwrap();
    }

    #[test]
    fn a_failed_write_back_is_undone_alone_and_the_group_commits_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, path) = connection(&dir, "s.db");
        let progress = Progress::new();
        let hook = Seen::default();
        let mut w = writer(&conn, &hook, &progress);
        refuse_write_backs(&conn);
        w.overlay.put(pending_chat(7), 1);
        let (j, a) = sql_job(|c| c.execute("INSERT INTO t VALUES (1)", []).map(drop));
        let c = w
            .commit_group(&mut vec![j], 0, true)
            .expect("the group commits");
        assert!(c.fx.is_some());
        assert!(a.lock().unwrap().is_none(), "answered by the sync stage");
        assert_eq!(committed_rows(&path), vec![1]);
        assert_eq!(w.overlay.len(), 1, "the item stays dirty");
        assert_eq!(progress.sweep_failures.load(Ordering::SeqCst), 1);
        let why = progress.degraded().borrow().clone().expect("degraded");
        assert!(why.contains("writing rows back failed"), "{why}");
        assert!(!w.may_sweep(), "the next write-back waits for the backoff");
    }

    #[test]
    fn write_backs_back_off_doubling_up_to_a_limit_and_a_success_resets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _path) = connection(&dir, "b.db");
        let progress = Progress::new();
        let hook = Seen::default();
        let mut w = writer(&conn, &hook, &progress);
        refuse_write_backs(&conn);
        let mut waits = Vec::new();
        for _ in 0..8 {
            let g = w.begin().unwrap();
            waits.push(w.sweep_backoff);
            assert_eq!(w.sweep(10), Ok(false));
            w.commit(g).expect("committed");
        }
        let ms: Vec<u128> = waits.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(progress.sweep_failures.load(Ordering::SeqCst), 8);
        assert!(progress.sweep_failing());

        conn.execute_batch("DROP TRIGGER no_sweep").unwrap();
        let g = w.begin().unwrap();
        assert_eq!(w.sweep(10), Ok(true));
        w.commit(g).expect("committed");
        assert_eq!(w.sweep_backoff, SWEEP_RETRY_FIRST);
        assert!(w.may_sweep());
        assert!(!progress.sweep_failing());
        assert_eq!(*progress.degraded().borrow(), None);
    }
}
