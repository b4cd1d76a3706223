//! What the writer's unit tests share: a recording commit hook, jobs that record the
//! answer their caller would get, and a writer on a connection of the test's own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::progress::Progress;
use super::Writer;
use crate::store::sqlite::{CommitHook, Completion, Effects, Job, StoreError, Tx, WheelOp};

/// Records what reaches the hook; optionally blocks `durable` until released.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) timers: Mutex<Vec<WheelOp>>,
    /// Timer changes handed back as abandoned (writes that did not commit).
    pub(super) abandoned: Mutex<Vec<WheelOp>>,
    pub(super) gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    pub(super) entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    pub(super) released: AtomicBool,
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
    fn abandoned(&self, fx: &Effects) {
        self.abandoned.lock().unwrap().extend_from_slice(&fx.timers);
    }
}

/// Whether the hook has seen the timer `i` at `1000 + i` as durable.
pub(super) fn seen_contains(seen: &Seen, i: i64) -> bool {
    seen.timers
        .lock()
        .unwrap()
        .contains(&WheelOp::Set(i, 1000 + i))
}

/// The answer a job's caller would get (`None`: not answered yet).
pub(super) type Answer = Arc<Mutex<Option<Result<(), StoreError>>>>;

/// A job that runs `f` (which says whether the write succeeded) and records its answer.
pub(super) fn job(f: impl FnOnce(&mut Tx<'_>) -> bool + Send + 'static) -> (Job, Answer) {
    let answer: Answer = Arc::default();
    let slot = answer.clone();
    let job: Job = Box::new(move |tx: &mut Tx<'_>| {
        let ok = f(tx);
        let done: Completion = Box::new(move |r| *slot.lock().unwrap() = Some(r));
        (ok, done)
    });
    (job, answer)
}

/// A job that runs SQL on the group's connection; it fails when the SQL does.
pub(super) fn sql_job(
    f: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
) -> (Job, Answer) {
    job(move |tx| f(tx.raw_connection()).is_ok())
}

/// A writer on `conn` (no queue, no sync stage, no retry timer).
pub(super) fn writer<'a>(
    conn: &'a Connection,
    hook: &'a dyn CommitHook,
    progress: &'a Progress,
) -> Writer<'a> {
    Writer::new(conn, hook, progress, None)
}

/// Rows in table `t`, read on a connection of its own (what is committed).
pub(super) fn committed_rows(path: &std::path::Path) -> Vec<i64> {
    let c = Connection::open(path).unwrap();
    let mut s = c.prepare("SELECT x FROM t ORDER BY x").unwrap();
    let rows = s.query_map([], |r| r.get(0)).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// A read-write connection on a new file `name` in `dir`, as the store opens it, with
/// a table `t (x INTEGER)`.
pub(super) fn connection(dir: &tempfile::TempDir, name: &str) -> (Connection, std::path::PathBuf) {
    let path = dir.path().join(name);
    let mut conn = crate::store::sqlite::open_rw(&path, crate::config::Synchronous::Full).unwrap();
    crate::store::sqlite::schema::migrate(&mut conn).unwrap();
    conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    (conn, path)
}
