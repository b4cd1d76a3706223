//! The batch read of what fell due: each item's account, channel, state, lease and
//! lateness window, telling a row that cannot be decoded apart, in the order the wheel
//! fired them. The rows come from `store::meta`; this module keeps the due order and
//! works out the lateness window.

use std::collections::HashMap;

use crate::domain::{self, Channel, Item, ItemId, Millis, State};
use crate::engine::Fired;
use crate::store::ItemMeta;
use crate::store::Store;

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

impl Meta {
    fn new(m: ItemMeta, due: Millis) -> Meta {
        let (decoded, late_after) = match m.decoded {
            Ok((channel, state, timing)) => {
                let late_after = timing
                    .max_lateness
                    .map(|max| m.send_at.saturating_add(max).saturating_add(1));
                (Ok((channel, state)), late_after)
            }
            Err(why) => (Err(why), None),
        };
        Meta {
            id: m.id,
            due,
            account: m.account,
            decoded,
            lease_expires_at: m.lease_expires_at,
            attempts: m.attempts,
            late_after,
        }
    }
}

/// What the batch read found: the due ids that still exist, in the order given, and
/// the items read whole from their rows (which dispatch may lease itself, see
/// `store::claims`), with the claims epoch the read started at.
pub(super) struct Read {
    pub(super) metas: Vec<Meta>,
    pub(super) epoch: u64,
    pub(super) whole: HashMap<ItemId, Item>,
}

/// Reads the items of `fired` (a hint: every decision is re-checked in a write, or
/// claimed against what the writer did since).
///
/// # Errors
/// Storage errors.
pub(super) async fn read_meta(store: &Store, fired: &[Fired]) -> domain::Result<Read> {
    let ids: Vec<ItemId> = fired.iter().map(|&(id, _)| id).collect();
    let read = store.due_items(ids).await?;
    let mut by_id: HashMap<ItemId, ItemMeta> = read.metas.into_iter().map(|m| (m.id, m)).collect();
    let mut whole = HashMap::with_capacity(read.items.len());
    for item in read.items {
        by_id.insert(item.id, ItemMeta::of(&item));
        whole.insert(item.id, item);
    }
    // Keep the due order the wheel gave.
    let metas = fired
        .iter()
        .filter_map(|&(id, due)| by_id.remove(&id).map(|m| Meta::new(m, due)))
        .collect();
    Ok(Read {
        metas,
        epoch: read.epoch,
        whole,
    })
}
