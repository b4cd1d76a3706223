//! How many partitions a node should own, and which it takes or hands over: a fair
//! share each (`design/multi-node.md`, "Leases and fence"; issue 21 item 2).
//!
//! A node looks at the lease rows about twice a second ([`Look`]) and decides
//! ([`decide`]), with nothing but the rows to go by:
//! - **live nodes**: every node whose registration has not expired, except one whose
//!   every lease (it had some) has expired: it died or was cut off (its registration
//!   and its leases are renewed by the same statement, so they lapse together, give or
//!   take a look). This node always counts itself.
//! - **share** = ⌈partitions / live nodes⌉.
//! - Below its share, a node **takes** free partitions (expired or released leases, or
//!   its own rows from an earlier run under the same id first) up to its share; nodes
//!   pick from the free ones in an order rotated by their id, so two nodes taking at
//!   once mostly want different rows (the database decides any overlap).
//! - Above its share while another live node is below it (a node joined, or came back),
//!   it **hands over** its surplus by the planned path: stop handing them out, drain,
//!   release. The node below takes them at its next look.
//!
//! Shares converge in a few looks: with 64 partitions, three nodes hold 22, 22 and 20.

use std::collections::{BTreeSet, HashMap};

/// A lease row as a look reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub partition: u32,
    /// The node the row names (the last grant), expired or not.
    pub owner: Option<String>,
    /// That node's registered address, if it is registered.
    pub address: Option<String>,
    /// Whether the lease is unexpired by the database's clock.
    pub live: bool,
}

/// What a node reads at each look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Look {
    /// Nodes whose registration has not expired.
    pub registered: Vec<String>,
    /// Every partition's lease row.
    pub rows: Vec<LeaseRow>,
}

/// What a node does after a look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change.
    Stay,
    /// Take these free partitions.
    Take(Vec<u32>),
    /// Hand these over (planned: drained, then released).
    HandOver(Vec<u32>),
}

impl Look {
    /// The live nodes (see the module doc), `me` included.
    pub fn live_nodes(&self, me: &str) -> BTreeSet<String> {
        let mut any: HashMap<&str, bool> = HashMap::new();
        for r in &self.rows {
            if let Some(o) = &r.owner {
                *any.entry(o.as_str()).or_insert(false) |= r.live;
            }
        }
        let mut live: BTreeSet<String> = self
            .registered
            .iter()
            .filter(|n| any.get(n.as_str()).copied().unwrap_or(true))
            .cloned()
            .collect();
        live.insert(me.to_owned());
        live
    }

    /// Partition → address of its owner, for live leases of other nodes than `me`.
    pub fn owners_except(&self, me: &str) -> HashMap<u32, String> {
        self.rows
            .iter()
            .filter(|r| r.live && r.owner.as_deref() != Some(me))
            .filter_map(|r| Some((r.partition, r.address.clone()?)))
            .collect()
    }
}

/// ⌈partitions / live⌉ (at least 1 when there are partitions).
pub fn share(partitions: usize, live: usize) -> usize {
    partitions.div_ceil(live.max(1))
}

/// What `me`, holding `held`, does after `look`.
pub fn decide(look: &Look, me: &str, held: &[u32]) -> Decision {
    let partitions = look.rows.len();
    let live = look.live_nodes(me);
    let fair = share(partitions, live.len());
    let held_set: BTreeSet<u32> = held.iter().copied().collect();
    if held.len() < fair {
        let rotate = crate::cluster::fnv1a64(me.as_bytes()) % (partitions.max(1) as u64);
        // Own rows from an earlier run first, then the rest from a point of our own.
        let mut free: Vec<(bool, u64, u32)> = look
            .rows
            .iter()
            .filter(|r| !held_set.contains(&r.partition))
            .filter(|r| !r.live || r.owner.as_deref() == Some(me))
            .map(|r| {
                let own = r.owner.as_deref() == Some(me);
                let order = (u64::from(r.partition) + partitions as u64 - rotate)
                    % (partitions.max(1) as u64);
                (!own, order, r.partition)
            })
            .collect();
        free.sort_unstable();
        let take: Vec<u32> = free
            .into_iter()
            .take(fair - held.len())
            .map(|(_, _, p)| p)
            .collect();
        return if take.is_empty() {
            Decision::Stay
        } else {
            Decision::Take(take)
        };
    }
    if held.len() > fair {
        let mut counts: HashMap<&str, usize> = live.iter().map(|n| (n.as_str(), 0)).collect();
        for r in look.rows.iter().filter(|r| r.live) {
            if let Some(c) = r.owner.as_deref().and_then(|o| counts.get_mut(o)) {
                *c += 1;
            }
        }
        let someone_below = counts.iter().any(|(n, &c)| *n != me && c < fair);
        if someone_below {
            let mut mine = held.to_vec();
            mine.sort_unstable();
            return Decision::HandOver(mine.split_off(fair));
        }
    }
    Decision::Stay
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(partition: u32, owner: Option<&str>, live: bool) -> LeaseRow {
        LeaseRow {
            partition,
            owner: owner.map(str::to_owned),
            address: owner.map(|o| format!("{o}:1")),
            live,
        }
    }

    fn look(registered: &[&str], rows: Vec<LeaseRow>) -> Look {
        Look {
            registered: registered.iter().map(|s| (*s).to_owned()).collect(),
            rows,
        }
    }

    #[test]
    fn a_lone_node_takes_every_free_partition() {
        let l = look(&["a"], (0..8).map(|p| row(p, None, false)).collect());
        match decide(&l, "a", &[]) {
            Decision::Take(mut t) => {
                t.sort_unstable();
                assert_eq!(t, (0..8).collect::<Vec<_>>());
            }
            d => panic!("expected a take, got {d:?}"),
        }
    }

    #[test]
    fn a_node_that_joins_takes_only_its_share_and_the_owner_hands_over_its_surplus() {
        let l = look(
            &["a", "b"],
            (0..8).map(|p| row(p, Some("a"), true)).collect(),
        );
        assert_eq!(
            decide(&l, "a", &(0..8).collect::<Vec<_>>()),
            Decision::HandOver(vec![4, 5, 6, 7])
        );
        assert_eq!(decide(&l, "b", &[]), Decision::Stay, "nothing is free yet");
        // a released 4-7: b takes them, and no more than its share.
        let mut rows: Vec<LeaseRow> = (0..4).map(|p| row(p, Some("a"), true)).collect();
        rows.extend((4..8).map(|p| row(p, Some("a"), false)));
        let l = look(&["a", "b"], rows);
        match decide(&l, "b", &[]) {
            Decision::Take(mut t) => {
                t.sort_unstable();
                assert_eq!(t, vec![4, 5, 6, 7]);
            }
            d => panic!("expected a take, got {d:?}"),
        }
        assert_eq!(decide(&l, "a", &[0, 1, 2, 3]), Decision::Stay);
    }

    #[test]
    fn a_dead_nodes_partitions_are_shared_by_the_survivors_even_before_its_registration_lapses() {
        // c's leases expired; its registration is still there.
        let mut rows: Vec<LeaseRow> = (0..3).map(|p| row(p, Some("a"), true)).collect();
        rows.extend((3..6).map(|p| row(p, Some("b"), true)));
        rows.extend((6..9).map(|p| row(p, Some("c"), false)));
        let l = look(&["a", "b", "c"], rows);
        assert_eq!(l.live_nodes("a").len(), 2, "c counts as gone");
        let (Decision::Take(ta), Decision::Take(tb)) =
            (decide(&l, "a", &[0, 1, 2]), decide(&l, "b", &[3, 4, 5]))
        else {
            panic!("both survivors take");
        };
        assert!(
            ta.len() == 2 && tb.len() == 2,
            "share 5 each: {ta:?} {tb:?}"
        );
        assert!(ta.iter().chain(&tb).all(|p| (6..9).contains(p)));
    }

    #[test]
    fn nobody_hands_over_when_no_live_node_is_below_its_share() {
        // 8 partitions, 3 nodes: share 3; a=3, b=3, c=2.
        let mut rows: Vec<LeaseRow> = (0..3).map(|p| row(p, Some("a"), true)).collect();
        rows.extend((3..6).map(|p| row(p, Some("b"), true)));
        rows.extend((6..8).map(|p| row(p, Some("c"), true)));
        let l = look(&["a", "b", "c"], rows);
        assert_eq!(decide(&l, "a", &[0, 1, 2]), Decision::Stay);
        assert_eq!(decide(&l, "c", &[6, 7]), Decision::Stay, "nothing is free");
    }

    #[test]
    fn a_restarted_node_takes_back_its_own_unexpired_rows_first() {
        let mut rows: Vec<LeaseRow> = (0..4).map(|p| row(p, Some("a"), true)).collect();
        rows.extend((4..8).map(|p| row(p, None, false)));
        let l = look(&["a"], rows);
        match decide(&l, "a", &[]) {
            Decision::Take(t) => {
                assert_eq!(t.len(), 8);
                assert_eq!(&t[..4], &[0, 1, 2, 3], "its own rows come first");
            }
            d => panic!("expected a take, got {d:?}"),
        }
    }

    #[test]
    fn owners_are_mapped_to_addresses_for_live_leases_of_other_nodes_only() {
        let l = look(
            &["a", "b"],
            vec![
                row(0, Some("a"), true),
                row(1, Some("b"), true),
                row(2, Some("b"), false),
            ],
        );
        let m = l.owners_except("a");
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(&1).map(String::as_str), Some("b:1"));
    }
}
