//! The batch read of what fell due: each item's account, channel, state, lease and
//! lateness window, telling a row that cannot be decoded apart.

use std::collections::HashMap;

use rusqlite::types::Value;

use crate::domain::{self, Channel, ItemId, Millis, State, Timing};
use crate::engine::Fired;
use crate::store::rows::{with_lease, LEASE_EXPIRES};

/// What the batch read tells about a due id.
pub(super) struct Meta {
    pub(super) id: ItemId,
    pub(super) due: Millis,
    pub(super) account: String,
    /// `Err` when the stored row cannot be decoded.
    pub(super) decoded: Result<(Channel, State), String>,
    pub(super) lease_expires_at: Option<Millis>,
    pub(super) attempts: u32,
    /// When its lateness window ends, if it has one.
    pub(super) late_after: Option<Millis>,
}

pub(super) fn read_meta(conn: &rusqlite::Connection, fired: &[Fired]) -> domain::Result<Vec<Meta>> {
    let mut out = Vec::with_capacity(fired.len());
    for chunk in fired.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut st = conn.prepare_cached(&format!(
            "SELECT id, account_id, channel, state, {LEASE_EXPIRES}, attempts, send_at, timing \
             FROM items WHERE id IN ({marks})"
        ))?;
        let rows = st.query_map(
            rusqlite::params_from_iter(chunk.iter().map(|&(i, _)| Value::Integer(i))),
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
        let mut by_id: HashMap<ItemId, Meta> = HashMap::with_capacity(chunk.len());
        for r in rows {
            let (id, account, channel, state, lease_expires_at, attempts, send_at, timing) = r?;
            let timing = match timing {
                None => Some(Timing::default()),
                Some(b) => Timing::from_bytes(&b),
            };
            let decoded = match (Channel::from_i64(channel), State::from_i64(state), &timing) {
                (Some(c), Some(s), Some(_)) => Ok((c, s)),
                _ => Err(format!(
                    "stored item cannot be read (channel {channel}, state {state}, timing)"
                )),
            };
            let late_after = timing
                .and_then(|t| t.max_lateness)
                .map(|max| send_at.saturating_add(max).saturating_add(1));
            let (decoded, attempts) = match decoded {
                Ok((c, s)) => {
                    let (s, a) = with_lease(s, attempts, lease_expires_at);
                    (Ok((c, s)), a)
                }
                Err(e) => (Err(e), attempts),
            };
            by_id.insert(
                id,
                Meta {
                    id,
                    due: 0,
                    account,
                    decoded,
                    lease_expires_at,
                    attempts,
                    late_after,
                },
            );
        }
        // Keep the due order the wheel gave.
        out.extend(chunk.iter().filter_map(|&(id, due)| {
            by_id.remove(&id).map(|mut m| {
                m.due = due;
                m
            })
        }));
    }
    Ok(out)
}
