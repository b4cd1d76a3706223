//! The batch read dispatch makes of the items whose timers fired: each item whole
//! ([`due_items`]), or, for a row that cannot be read as an item, its account,
//! channel, state (DISPATCHING when it holds a lease), lease, attempts and timing,
//! telling a row that cannot be decoded apart from a storage error ([`item_meta`]).
//!
//! # Contract
//! Rows may lag behind the journal (see `overlay`): [`super::Store::due_items`] takes
//! the meta of items whose rows are not written back yet from memory (as committed),
//! and the rest from their rows, on a reader connection that may see a commit whose
//! fsync is still running. What it returns says which items to look at: every
//! decision taken from it is re-checked inside a write, or claimed against every
//! write that touched the item since the read (`claims`). A client-facing read goes
//! through [`Store::read`](super::Store::read), which returns only what is durable.

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use super::rows::{item_from_row, with_lease, ITEM_COLUMNS, LEASE_EXPIRES};
use super::StoreError;
use crate::domain::{Channel, Item, ItemId, State, Timing};
use crate::store::ItemMeta;

/// Ids per statement (well under SQLite's bound-parameter limit).
const CHUNK: usize = 500;

/// The items of `ids` that have a row, whole (dispatch may lease them itself: see
/// `claims`), and the [`ItemMeta`] of those whose row cannot be read as an item (it
/// says why); in no particular order.
///
/// # Errors
/// Storage errors.
pub fn due_items(
    conn: &Connection,
    ids: &[ItemId],
) -> Result<(Vec<Item>, Vec<ItemMeta>), StoreError> {
    let mut items = Vec::with_capacity(ids.len());
    let mut unreadable = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut st = conn.prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS} FROM items WHERE id IN ({marks})"
        ))?;
        let rows = st.query_map(
            params_from_iter(chunk.iter().map(|&i| Value::Integer(i))),
            |r| Ok(item_from_row(r).map_err(|_| r.get::<_, ItemId>(0))),
        )?;
        for r in rows {
            match r? {
                Ok(item) => items.push(item),
                Err(id) => unreadable.push(id?),
            }
        }
    }
    let metas = if unreadable.is_empty() {
        Vec::new()
    } else {
        item_meta(conn, &unreadable)?
    };
    Ok((items, metas))
}

/// The [`ItemMeta`] of each of `ids` that has a row, in no particular order.
///
/// # Errors
/// Storage errors (a row that cannot be decoded is not one: see
/// [`ItemMeta::decoded`]).
pub fn item_meta(conn: &Connection, ids: &[ItemId]) -> Result<Vec<ItemMeta>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut st = conn.prepare_cached(&format!(
            "SELECT id, account_id, channel, state, {LEASE_EXPIRES}, attempts, send_at, timing \
             FROM items WHERE id IN ({marks})"
        ))?;
        let rows = st.query_map(
            params_from_iter(chunk.iter().map(|&i| Value::Integer(i))),
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<Vec<u8>>>(7)?,
                ))
            },
        )?;
        for r in rows {
            let (id, account, channel, state, lease_expires_at, attempts, send_at, timing) = r?;
            let timing = match timing {
                None => Some(Timing::default()),
                Some(b) => Timing::from_bytes(&b),
            };
            let (decoded, attempts) =
                match (Channel::from_i64(channel), State::from_i64(state), timing) {
                    (Some(c), Some(s), Some(t)) => {
                        let (s, a) = with_lease(s, attempts, lease_expires_at);
                        (Ok((c, s, t)), a)
                    }
                    _ => (
                        Err(format!(
                            "stored item cannot be read (channel {channel}, state {state}, timing)"
                        )),
                        attempts,
                    ),
                };
            out.push(ItemMeta {
                id,
                account,
                decoded,
                lease_expires_at,
                attempts,
                send_at,
            });
        }
    }
    Ok(out)
}
