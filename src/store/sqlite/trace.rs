//! Records the SQL text of every statement the store's connections run, when asked:
//! the query-plan tests `EXPLAIN` the statements the code really runs (every listing,
//! filter and write they exercised), not copies of them. Off unless
//! [`start_recording`] was called before the store opened its connections, so a
//! production process pays nothing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rusqlite::trace::{TraceEvent, TraceEventCodes};
use rusqlite::Connection;

static RECORDING: AtomicBool = AtomicBool::new(false);
static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// From now on, connections the store opens record the statements they run.
pub fn start_recording() {
    RECORDING.store(true, Ordering::SeqCst);
}

/// The distinct statements recorded so far (SQL text as prepared, parameters unbound).
pub fn recorded() -> Vec<String> {
    SEEN.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// Installs the recorder on `conn` when recording is on.
pub(super) fn install(conn: &Connection) {
    if RECORDING.load(Ordering::SeqCst) {
        conn.trace_v2(TraceEventCodes::SQLITE_TRACE_STMT, Some(on_event));
    }
}

fn on_event(ev: TraceEvent<'_>) {
    if let TraceEvent::Stmt(stmt, _) = ev {
        let sql = stmt.sql();
        // Trigger sub-programs report themselves as comments; keep real statements.
        if !sql.trim_start().starts_with("--") {
            SEEN.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(sql.into_owned());
        }
    }
}
