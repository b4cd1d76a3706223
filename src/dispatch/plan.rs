//! Planning: which waiting items go to which connector this round. Per channel, items
//! are taken round-robin across accounts (`fair`), each to the connector with the most
//! free credit whose token allows its account, never more than the credit there is
//! (shared across channels) nor [`BATCH`]; items of a paused account, or over their
//! rate limit, are held back (`hold`). [`plan`] is pure: the actor passes it its queues,
//! the connectors' credit, the controls and the clock.

use std::collections::HashMap;

use super::actor::Actor;
use super::fair::FairQueue;
use super::hold::{Hold, Limiter};
use super::BATCH;
use crate::config::Accounts;
use crate::domain::{Channel, ItemId, Millis};
use crate::engine::{ControlsSnapshot, Fired};

/// A waiting item picked for a connector, not yet leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Planned {
    pub(super) id: ItemId,
    pub(super) due: Millis,
    pub(super) account: String,
    pub(super) channel: Channel,
    pub(super) conn: u64,
}

/// One connector stream's room for new jobs, as planning sees it.
pub(super) struct Credit<'a> {
    pub(super) conn: u64,
    pub(super) channels: &'a [Channel],
    pub(super) accounts: &'a Accounts,
    /// Jobs it may be given now.
    pub(super) free: usize,
}

/// What a round of planning decided.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Items picked, each with its connector.
    pub(super) planned: Vec<Planned>,
    /// Items held back, with the account, channel and why.
    pub(super) held: Vec<(String, Channel, Hold, Fired)>,
}

/// Picks up to [`BATCH`] waiting items for the connectors' free credit, round-robin
/// across accounts per channel, each to the connector with the most free credit whose
/// token allows its account. Picked and held items leave `waiting`; an item no
/// connector with credit may take stays first in line; channels left empty are
/// removed. Starts under a rate limit are counted in `limiter`.
pub(super) fn plan(
    waiting: &mut HashMap<Channel, FairQueue<Fired>>,
    credits: &[Credit<'_>],
    controls: &ControlsSnapshot,
    limiter: &mut Limiter,
    now: Millis,
) -> Plan {
    let mut out: Vec<Planned> = Vec::new();
    let mut held: Vec<(String, Channel, Hold, Fired)> = Vec::new();
    let channels: Vec<Channel> = waiting.keys().copied().collect();
    for ch in channels {
        let mut free: Vec<(u64, usize, &Accounts)> = credits
            .iter()
            .filter(|c| c.channels.contains(&ch) && c.free > 0)
            .map(|c| (c.conn, c.free, c.accounts))
            .collect();
        // Credit already promised to another channel's plan this round.
        for (c, n, _) in free.iter_mut() {
            *n = n.saturating_sub(out.iter().filter(|p| p.conn == *c).count());
        }
        let credit: usize = free.iter().map(|f| f.1).sum();
        let Some(q) = waiting.get_mut(&ch) else {
            continue;
        };
        let want = credit.min(BATCH.saturating_sub(out.len()));
        let mut unplaced: Vec<(String, Fired)> = Vec::new();
        let mut placed = 0;
        while placed < want {
            let Some((account, (id, due))) = q.pop() else {
                break;
            };
            if !controls.is_empty() && controls.is_paused(&account, ch) {
                held.push((account, ch, Hold::Pause, (id, due)));
                continue;
            }
            let target = free
                .iter_mut()
                .filter(|(_, n, accounts)| *n > 0 && accounts.allows(&account))
                .max_by_key(|(_, n, _)| *n);
            if target.is_some() {
                if let Some(per_minute) = controls.limit(&account, ch) {
                    if !limiter.try_start(&account, ch, per_minute, now) {
                        held.push((account, ch, Hold::RateLimit, (id, due)));
                        continue;
                    }
                }
            }
            match target {
                Some((c, n, _)) => {
                    *n -= 1;
                    placed += 1;
                    out.push(Planned {
                        id,
                        due,
                        account,
                        channel: ch,
                        conn: *c,
                    });
                }
                // No connector with credit may take this account's items yet.
                None => unplaced.push((account, (id, due))),
            }
        }
        for (account, f) in unplaced.into_iter().rev() {
            q.push_front(&account, f);
        }
    }
    waiting.retain(|_, q| !q.is_empty());
    Plan { planned: out, held }
}

impl Actor {
    /// This round's plan ([`plan`]) over the connected streams' credit; held items are
    /// parked until they may go.
    pub(super) fn plan(&mut self) -> Vec<Planned> {
        // Outside the trust window (a renewal of the node's leases is overdue) nothing
        // is planned: the items wait in line until a renewal wakes the actor.
        if !self.engine.may_hand_out() {
            return Vec::new();
        }
        let controls = self.engine.controls().snapshot();
        let now = self.engine.clock().now_ms();
        let credits: Vec<Credit<'_>> = self
            .connectors
            .iter()
            .map(|(&conn, c)| Credit {
                conn,
                channels: &c.channels,
                accounts: &c.accounts,
                free: c.free(),
            })
            .collect();
        let Plan { planned, held } = plan(
            &mut self.waiting,
            &credits,
            &controls,
            &mut self.limiter,
            now,
        );
        for (account, ch, hold, f) in held {
            self.park(account, ch, hold, f);
        }
        planned
    }

    /// Planned items not leased: back in line, first.
    pub(super) fn wait_again(&mut self, planned: Vec<Planned>) {
        for p in planned.into_iter().rev() {
            self.waiting
                .entry(p.channel)
                .or_default()
                .push_front(&p.account, (p.id, p.due));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMAIL: Channel = Channel::Email;
    const CHAT: Channel = Channel::Chat;

    /// Waiting items: (channel, account, id), queued in this order; due = id.
    fn waiting(items: &[(Channel, &str, ItemId)]) -> HashMap<Channel, FairQueue<Fired>> {
        let mut w: HashMap<Channel, FairQueue<Fired>> = HashMap::new();
        for &(ch, account, id) in items {
            w.entry(ch).or_default().push(account, (id, id));
        }
        w
    }

    fn credit<'a>(
        conn: u64,
        channels: &'a [Channel],
        accounts: &'a Accounts,
        free: usize,
    ) -> Credit<'a> {
        Credit {
            conn,
            channels,
            accounts,
            free,
        }
    }

    fn ids(p: &Plan) -> Vec<ItemId> {
        p.planned.iter().map(|p| p.id).collect()
    }

    fn run(
        w: &mut HashMap<Channel, FairQueue<Fired>>,
        credits: &[Credit<'_>],
        controls: &ControlsSnapshot,
    ) -> Plan {
        plan(w, credits, controls, &mut Limiter::default(), 0)
    }

    #[test]
    fn accounts_take_turns_within_the_credit_and_the_rest_waits_in_order() {
        let mut w = waiting(&[
            (EMAIL, "big", 1),
            (EMAIL, "big", 2),
            (EMAIL, "big", 3),
            (EMAIL, "small", 10),
        ]);
        let all = Accounts::All;
        let p = run(
            &mut w,
            &[credit(1, &[EMAIL], &all, 3)],
            &ControlsSnapshot::default(),
        );
        assert_eq!(ids(&p), [1, 10, 2]);
        assert!(p.planned.iter().all(|p| p.conn == 1 && p.channel == EMAIL));
        assert_eq!(p.planned[1].account, "small");
        let left: Vec<ItemId> = w[&EMAIL].iter().map(|(_, f)| f.0).collect();
        assert_eq!(left, [3]);
    }

    #[test]
    fn each_item_goes_to_the_connector_with_the_most_free_credit() {
        let mut w = waiting(&[(EMAIL, "a", 1), (EMAIL, "a", 2), (EMAIL, "a", 3)]);
        let all = Accounts::All;
        let p = run(
            &mut w,
            &[credit(1, &[EMAIL], &all, 1), credit(2, &[EMAIL], &all, 3)],
            &ControlsSnapshot::default(),
        );
        let conns: Vec<u64> = p.planned.iter().map(|p| p.conn).collect();
        // 2 has 3 free: it takes two before both have one left, then either.
        assert_eq!(&conns[..2], [2, 2]);
        assert_eq!(p.planned.len(), 3);
        assert!(w.is_empty(), "an emptied channel is removed");
    }

    #[test]
    fn a_connector_gets_only_the_accounts_its_token_allows_and_the_others_stay_first_in_line() {
        let mut w = waiting(&[(EMAIL, "acme", 1), (EMAIL, "other", 2), (EMAIL, "acme", 3)]);
        let only_acme = Accounts::Only(vec!["acme".into()]);
        let p = run(
            &mut w,
            &[credit(1, &[EMAIL], &only_acme, 10)],
            &ControlsSnapshot::default(),
        );
        assert_eq!(ids(&p), [1, 3]);
        let q = w.get_mut(&EMAIL).expect("other's item still waits");
        assert_eq!(q.pop(), Some(("other".to_owned(), (2, 2))));
    }

    #[test]
    fn credit_is_shared_by_the_channels_of_one_connector() {
        let mut w = waiting(&[
            (EMAIL, "a", 1),
            (EMAIL, "a", 2),
            (CHAT, "a", 3),
            (CHAT, "a", 4),
        ]);
        let all = Accounts::All;
        let p = run(
            &mut w,
            &[credit(1, &[EMAIL, CHAT], &all, 3)],
            &ControlsSnapshot::default(),
        );
        assert_eq!(p.planned.len(), 3);
        assert_eq!(w.values().map(FairQueue::len).sum::<usize>(), 1);
    }

    #[test]
    fn nothing_is_planned_without_credit_on_the_channel() {
        let mut w = waiting(&[(EMAIL, "a", 1)]);
        let all = Accounts::All;
        let p = run(
            &mut w,
            &[credit(1, &[CHAT], &all, 5), credit(2, &[EMAIL], &all, 0)],
            &ControlsSnapshot::default(),
        );
        assert!(p.planned.is_empty() && p.held.is_empty());
        assert_eq!(w[&EMAIL].len(), 1);
    }

    #[test]
    fn a_paused_account_is_held_back_and_the_others_go() {
        let mut w = waiting(&[(EMAIL, "paused", 1), (EMAIL, "free", 2)]);
        let all = Accounts::All;
        let controls = ControlsSnapshot::for_tests(&[("paused", EMAIL)], &[]);
        let p = run(&mut w, &[credit(1, &[EMAIL], &all, 5)], &controls);
        assert_eq!(ids(&p), [2]);
        assert_eq!(p.held, [("paused".to_owned(), EMAIL, Hold::Pause, (1, 1))]);
        assert!(w.is_empty());
    }

    #[test]
    fn starts_beyond_the_rate_limit_are_held_back_until_the_minute_has_room() {
        let items: Vec<(Channel, &str, ItemId)> = (1..=4).map(|i| (EMAIL, "a", i)).collect();
        let mut w = waiting(&items);
        let all = Accounts::All;
        let controls = ControlsSnapshot::for_tests(&[], &[("a", EMAIL, 2)]);
        let mut limiter = Limiter::default();
        let credits = [credit(1, &[EMAIL], &all, 10)];
        let p = plan(&mut w, &credits, &controls, &mut limiter, 1_000);
        assert_eq!(ids(&p), [1, 2]);
        let held: Vec<(Hold, ItemId)> = p.held.iter().map(|h| (h.2, h.3 .0)).collect();
        assert_eq!(held, [(Hold::RateLimit, 3), (Hold::RateLimit, 4)]);
        assert_eq!(limiter.next_free("a", EMAIL), Some(61_000));
        // A minute later there is room again.
        let mut w = waiting(&[(EMAIL, "a", 3)]);
        let p = plan(&mut w, &credits, &controls, &mut limiter, 61_000);
        assert_eq!(ids(&p), [3]);
    }

    #[test]
    fn one_round_plans_at_most_a_batch() {
        let items: Vec<(Channel, &str, ItemId)> = (0..(BATCH as ItemId + 5))
            .map(|i| (EMAIL, "a", i))
            .collect();
        let mut w = waiting(&items);
        let all = Accounts::All;
        let p = run(
            &mut w,
            &[credit(1, &[EMAIL], &all, BATCH * 2)],
            &ControlsSnapshot::default(),
        );
        assert_eq!(p.planned.len(), BATCH);
        assert_eq!(w[&EMAIL].len(), 5);
    }
}
