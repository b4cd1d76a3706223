//! One group: a transaction (`BEGIN IMMEDIATE`) in which jobs run one after another,
//! each inside its own savepoint, then one COMMIT.
//!
//! # Invariants
//! - A job that fails rolls back alone (its savepoint, its overlay changes); its
//!   effects are handed back as abandoned at the commit, and its caller is answered
//!   with its own error once the group is durable. The group's other writes commit.
//! - Every job sees the dispatcher's leases taken before it: waiting claims are applied
//!   (in a savepoint of their own) before each job. Claims that fail to apply wait
//!   again.
//! - After every job the transaction must still be open. If SQLite ended it by itself
//!   (SQLITE_FULL, IOERR, NOMEM) or a savepoint fails, the group is broken: it is
//!   rolled back ([`Writer::abort`]), every write run in it is answered with an error,
//!   all their effects are abandoned and the overlay undone; no write commits on its
//!   own in autocommit.
//! - A COMMIT that fails answers every write of the group with the error and gives
//!   their effects back; the group still goes to the sync stage (without effects) so
//!   the groups are counted done in commit order.
//! - A failed group or commit reports the store degraded; the next commit clears it.
//! - A group is counted `committing` before its COMMIT runs.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::durable::Committed;
use super::Writer;
use crate::store::sqlite::{Completion, Effects, Job, SqliteTx, StoreError, Tx};

/// A group being written: its transaction is open.
pub(super) struct Open {
    pub(super) started: Instant,
    /// Writes run in it (committed or not).
    pub(super) n: usize,
    pub(super) completions: Vec<Completion>,
    pub(super) fx: Effects,
    /// Effects of writes that will not commit (each rolled back alone).
    pub(super) undone: Effects,
}

impl Writer<'_> {
    /// Opens a group's transaction.
    pub(super) fn begin(&mut self) -> Result<Open, ()> {
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

    /// Runs one job in the open group, inside its own savepoint. `Err` when the group
    /// cannot go on (SQLite rolled its transaction back, or a savepoint failed): the
    /// caller aborts it.
    ///
    /// SQLite may roll back the whole transaction by itself (SQLITE_FULL, IOERR, NOMEM,
    /// ...) in the middle of the group: then the later jobs would run in autocommit,
    /// each committing on its own, unsynced, while told it failed. So after every job
    /// the transaction must still be open; if it is not (or a savepoint cannot be
    /// opened or released), the whole group fails.
    pub(super) fn execute(&mut self, g: &mut Open, job: Job, now: i64) -> Result<(), String> {
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
    pub(super) fn apply_claims(&mut self, g: &mut Open, now: i64) -> Result<(), String> {
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
    pub(super) fn abort(&mut self, mut g: Open, why: &str) {
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
    pub(super) fn commit(&mut self, g: Open) -> Option<Committed> {
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
    pub(super) fn commit_group(
        &mut self,
        jobs: &mut Vec<Job>,
        now: i64,
        sweep: bool,
    ) -> Option<Committed> {
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
            if let Err(why) = self.sweep(crate::store::sqlite::overlay::SWEEP_CHUNK) {
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
    use std::sync::atomic::Ordering;

    use rusqlite::Connection;

    use super::super::testing::{committed_rows, connection, job, sql_job, writer, Seen};
    use super::*;
    use crate::store::sqlite::writer::progress::Progress;
    use crate::store::sqlite::WheelOp;

    /// A job that inserts `x` into `t` and sets a timer for it; `ok`: whether it
    /// succeeds after that.
    fn insert(x: i64, ok: bool) -> (Job, super::super::testing::Answer) {
        job(move |tx| {
            tx.raw_connection()
                .execute("INSERT INTO t VALUES (?1)", [x])
                .unwrap();
            tx.rearm(x, 1000 + x);
            ok
        })
    }

    #[test]
    fn a_failing_write_rolls_back_alone_and_the_group_commits_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, path) = connection(&dir, "g.db");
        let progress = Progress::new();
        let hook = Seen::default();
        let mut w = writer(&conn, &hook, &progress);
        let (j1, a1) = insert(1, true);
        let (j2, a2) = insert(2, false);
        let (j3, a3) = insert(3, true);
        let mut jobs = vec![j1, j2, j3];
        let c = w
            .commit_group(&mut jobs, 0, false)
            .expect("the group commits");
        assert_eq!(committed_rows(&path), vec![1, 3]);
        assert_eq!(c.writes, 3);
        assert_eq!(
            c.fx.as_ref().expect("committed").timers,
            vec![WheelOp::Set(1, 1001), WheelOp::Set(3, 1003)]
        );
        assert_eq!(
            *hook.abandoned.lock().unwrap(),
            vec![WheelOp::Set(2, 1002)],
            "the failed write's timer is handed back"
        );
        // Nobody is answered before the sync stage; then each its own outcome (the
        // failed write's error is its own, carried by its completion).
        assert!([&a1, &a2, &a3].iter().all(|a| a.lock().unwrap().is_none()));
        assert_eq!(c.completions.len(), 3);
        assert_eq!(progress.committing.load(Ordering::SeqCst), 1);
        assert_eq!(*progress.degraded().borrow(), None);
    }

    /// SQLite may roll the whole transaction back by itself in the middle of a group
    /// (SQLITE_FULL, IOERR, NOMEM); the writes after it must not run in autocommit.
    #[test]
    fn a_transaction_rolled_back_by_sqlite_mid_group_fails_the_group_and_commits_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        let progress = Progress::new();
        let hook = Seen::default();
        let mut w = writer(&conn, &hook, &progress);
        let (j1, a1) = sql_job(|c| c.execute("INSERT INTO t VALUES (1)", []).map(drop));
        // What SQLite does on SQLITE_FULL: the transaction is gone.
        let (j2, a2) = sql_job(|c| c.execute_batch("ROLLBACK"));
        let (j3, a3) = sql_job(|c| c.execute("INSERT INTO t VALUES (3)", []).map(drop));
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
        let degraded = progress.degraded().borrow().clone().expect("degraded");
        assert!(degraded.contains("a write group failed"), "{degraded}");
        // The write that had not run goes into the next group, and commits there.
        assert_eq!(jobs.len(), 1);
        assert!(w.commit_group(&mut jobs, 0, false).is_some());
        assert_eq!(count(&conn), 1);
        assert_eq!(*progress.degraded().borrow(), None, "cleared by a commit");
    }

    /// A deferred foreign key is checked by COMMIT only: the COMMIT fails.
    #[test]
    fn a_failed_commit_answers_every_write_with_the_error_and_gives_their_effects_back() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, path) = connection(&dir, "c.db");
        conn.execute_batch(
            "CREATE TABLE p (id INTEGER PRIMARY KEY);
             CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        let progress = Progress::new();
        let hook = Seen::default();
        let mut w = writer(&conn, &hook, &progress);
        let (j1, a1) = insert(1, true);
        let (j2, a2) = sql_job(|c| c.execute("INSERT INTO c VALUES (42)", []).map(drop));
        let mut jobs = vec![j1, j2];
        let c = w
            .commit_group(&mut jobs, 0, false)
            .expect("to the sync stage");
        assert!(c.fx.is_none(), "nothing to make durable");
        assert!(c.completions.is_empty(), "answered already");
        assert!(matches!(*a1.lock().unwrap(), Some(Err(_))));
        assert!(matches!(*a2.lock().unwrap(), Some(Err(_))));
        assert_eq!(*hook.abandoned.lock().unwrap(), vec![WheelOp::Set(1, 1001)]);
        assert!(conn.is_autocommit(), "rolled back");
        assert_eq!(committed_rows(&path), Vec::<i64>::new());
        assert_eq!(
            progress.committing.load(Ordering::SeqCst),
            1,
            "counted, so the sync stage counts it done in its place"
        );
        let why = progress.degraded().borrow().clone().expect("degraded");
        assert!(why.contains("a group commit failed"), "{why}");

        let (j3, a3) = insert(3, true);
        let c = w.commit_group(&mut vec![j3], 0, false).expect("commits");
        assert!(c.fx.is_some());
        assert!(a3.lock().unwrap().is_none());
        assert_eq!(committed_rows(&path), vec![3]);
        assert_eq!(*progress.degraded().borrow(), None, "cleared by a commit");
    }
}
