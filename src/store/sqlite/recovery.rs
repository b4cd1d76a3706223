//! The start-up read the engine rebuilds its memory from: every live item's id and
//! next send time (for the timing wheel), the live count of each account (for the
//! pending quota), how many items were out at connectors when the previous process
//! stopped, and the dispatch controls.
//!
//! # Contract
//! [`recovery_scan`] runs inside [`Store::read`](super::Store::read), which answers
//! only once what was read is durable (at start-up nothing else writes yet).
//! [`Store::read_hint`](super::Store::read_hint) may see a commit whose fsync is still
//! running and is not used for recovery. How a lease is stored (today the `leases`
//! table) stays behind this function: callers get a count.

use rusqlite::Connection;

use super::rows::all_controls;
use super::tickets::LiveTickets;
use super::StoreError;
use crate::domain::{ItemId, Millis};
use crate::store::RecoveryScan;

/// Reads what the engine rebuilds at start-up: one pass over the partial index
/// `items_live` (ids, times and per-account counts; each live item is counted into
/// `tickets`, which the caller then marks ready), the number of leased items, and the
/// dispatch controls.
///
/// # Errors
/// Storage errors.
pub fn recovery_scan(conn: &Connection, tickets: &LiveTickets) -> Result<RecoveryScan, StoreError> {
    // One pass over items_live: ids and times for the wheel, the live count of each
    // account (the index is in account order), and of each ticket (`tickets`).
    let mut st = conn.prepare(
        "SELECT account_id, id, next_send_at, ticket_id FROM items INDEXED BY items_live \
         WHERE state IN (1, 2)",
    )?;
    let mut timers: Vec<(ItemId, Millis)> = Vec::new();
    let mut live_counts: Vec<(String, u64)> = Vec::new();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let account = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
        match live_counts.last_mut() {
            Some((a, n)) if a == account => *n += 1,
            _ => live_counts.push((account.to_owned(), 1)),
        }
        timers.push((r.get(1)?, r.get(2)?));
        let ticket = r.get_ref(3)?.as_str().map_err(rusqlite::Error::from)?;
        tickets.add(LiveTickets::slot(account, ticket));
    }
    drop(rows);
    // A leased item was due when leased (next_send_at <= its lease time), so it fires
    // at once: the lease holder is gone with the old process.
    let leased: i64 = conn.query_row("SELECT COUNT(*) FROM leases", [], |r| r.get(0))?;
    Ok(RecoveryScan {
        timers,
        live_counts,
        leased: leased as usize,
        controls: all_controls(conn)?,
    })
}
