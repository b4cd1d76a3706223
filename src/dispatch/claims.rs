//! Claims: the planned items this round read whole from their rows are leased by the
//! actor itself (the state machine's `Lease`) and *claimed* against every write that
//! touched them since the read (`store::claims`); their jobs go out at once, without
//! waiting for the writer. What is not simply leased, or is refused, is leased through
//! a dispatch write instead (`pipeline`).

use std::collections::HashMap;

use super::actor::Actor;
use super::plan::Planned;
use crate::domain::machine::{self, Command, Step};
use crate::domain::{EventType, Item, ItemId};
use crate::store::Claim;

impl Actor {
    /// Leases the planned items itself and hands their jobs out at once, without
    /// waiting for the writer: the state machine's `Lease` applied to the item as read
    /// whole from its row, claimed against every write that touched it since (see
    /// `store::claims`). Items this round read are taken from that read; items that
    /// waited in line since an earlier round (for credit) are read again. Returns the
    /// items left to lease through a write: not read whole (their last change is only
    /// in memory), not simply leased (a lateness policy applies, or the send time
    /// moved), or refused.
    pub(super) async fn claim_leases(&mut self, planned: Vec<Planned>) -> Vec<Planned> {
        let mut fresh = Vec::new();
        let mut stale = Vec::new();
        for p in planned {
            match self.fresh.remove(&p.id) {
                Some(item) => fresh.push((p, item)),
                None => stale.push(p),
            }
        }
        let mut rest = self.claim_read(self.fresh_epoch, fresh);
        if stale.is_empty() {
            return rest;
        }
        let ids = stale.iter().map(|p| p.id).collect();
        match self.engine.store().due_items(ids).await {
            Ok(read) => {
                let mut whole: HashMap<ItemId, Item> =
                    read.items.into_iter().map(|i| (i.id, i)).collect();
                let mut again = Vec::new();
                for p in stale {
                    match whole.remove(&p.id) {
                        Some(item) => again.push((p, item)),
                        None => rest.push(p),
                    }
                }
                rest.extend(self.claim_read(read.epoch, again));
            }
            // The write leases them.
            Err(_) => rest.extend(stale),
        }
        rest
    }

    /// Claims the leases of planned items read whole at `epoch` and hands out the
    /// accepted ones; returns the others.
    pub(super) fn claim_read(&mut self, epoch: u64, read: Vec<(Planned, Item)>) -> Vec<Planned> {
        let mut rest = Vec::new();
        if read.is_empty() {
            return rest;
        }
        let now = self.engine.clock().now_ms();
        let expires = now + self.tuning.lease_ms;
        let mut claims = Vec::new();
        let mut claimed: HashMap<ItemId, Planned> = HashMap::new();
        for (p, mut item) in read {
            let lease = Command::Lease {
                due: p.due,
                expires,
            };
            match machine::step(&mut item, lease, now) {
                Ok(Step::Changed(change)) if change.event == EventType::Dispatching => {
                    claimed.insert(p.id, p);
                    claims.push(Claim { item, change });
                }
                _ => rest.push(p),
            }
        }
        if claims.is_empty() {
            return rest;
        }
        let (ok, refused) = self.engine.store().claim(epoch, claims);
        // Refused: leased through a write, as planned.
        rest.extend(refused.iter().filter_map(|c| claimed.remove(&c.item.id)));
        self.engine.metrics().claimed_leases.inc_by(ok.len() as u64);
        let mut rng = rand::rng();
        for c in ok {
            let conn = claimed.remove(&c.item.id).map(|p| p.conn);
            self.hand_out(conn, c.item, rand::RngExt::random::<u128>(&mut rng));
        }
        rest
    }
}
