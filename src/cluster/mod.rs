//! Several nodes on one PostgreSQL: accounts hash to partitions, each partition has
//! one owner through a lease row with an epoch, and an owner acts only inside its
//! trust window (see `design/multi-node.md` and API.md, "Storage and several nodes").
//!
//! This module is driver-free: the lease rows are read and written by the store
//! ([`crate::store::Leases`]); here are the partition function, the settings, the
//! status a node reports, and the trust window.

pub mod node;
pub mod placement;
pub mod route;
pub mod share;
pub mod trust;

use std::sync::Arc;

use crate::domain::Millis;

/// Partitions of a new database when the configuration names none.
pub const DEFAULT_PARTITIONS: u32 = 64;
/// Most partitions a database may have.
pub const MAX_PARTITIONS: u32 = 4096;
/// A partition whose owner stops renewing moves after this many seconds.
pub const DEFAULT_LEASE_SECS: u64 = 10;
/// Shortest lease a node may be configured with.
pub const MIN_LEASE_SECS: u64 = 2;
/// Longest lease a node may be configured with.
pub const MAX_LEASE_SECS: u64 = 600;

/// 64-bit FNV-1a: stable across Rust releases and platforms, unlike `DefaultHasher`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The partition of `account` among `partitions` (which must be at least 1).
pub fn partition_of(account: &str, partitions: u32) -> u32 {
    let p = u64::from(partitions.max(1));
    // The remainder is below `partitions`, a u32.
    u32::try_from(fnv1a64(account.as_bytes()) % p).unwrap_or(0)
}

/// What a node is told about the cluster (`--node-id`, `--advertise`, `[cluster]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Unique among the nodes sharing a database.
    pub node_id: String,
    /// The gRPC address other nodes and connectors reach this node at (`host:port`).
    pub advertise: String,
    /// Partitions of the database; fixed when it is created.
    pub partitions: u32,
    /// Seconds after which a partition whose owner stopped renewing moves.
    pub lease_secs: u64,
}

impl ClusterSettings {
    /// Settings of a node at `advertise` with the defaults.
    pub fn new(node_id: impl Into<String>, advertise: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            advertise: advertise.into(),
            partitions: DEFAULT_PARTITIONS,
            lease_secs: DEFAULT_LEASE_SECS,
        }
    }

    /// The lease's time to live.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_secs)
    }

    /// How often an owner renews its leases: a fifth of the lease.
    pub fn renew_every(&self) -> std::time::Duration {
        self.lease() / 5
    }
}

/// What a node granted partitions acts under: its commits are fenced by the grants,
/// and it hands out jobs only while the trust window is open.
#[derive(Clone)]
pub struct Ownership {
    pub fence: crate::store::Fence,
    pub trust: Arc<trust::Trust>,
    /// The cluster as the lease rows say (for `GetClusterStatus` and the console);
    /// `None`: this node alone ([`SingleNode`]).
    pub view: Option<Arc<dyn ClusterView>>,
    /// Where the partitions this server does not own are served (calls for their
    /// accounts are forwarded there); `None`: this server owns every partition.
    pub placement: Option<Arc<placement::Placement>>,
    /// The node's metrics registry, kept across its servers (a server restarted over a
    /// new set of partitions goes on counting); `None`: the server's own.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("fence", &self.fence)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

/// A node as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: String,
    /// Its advertised gRPC address.
    pub address: String,
    /// When it last registered or renewed, by the database's clock (Unix ms).
    pub last_seen: Millis,
    /// The partitions whose unexpired lease it holds, ascending.
    pub partitions: Vec<u32>,
}

/// A partition's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: u32,
    /// The node holding it (its lease may have expired); `None` if never taken.
    pub owner: Option<String>,
    /// Bumped by every takeover; writes carry it as their fence.
    pub epoch: i64,
    /// When the lease ends unless renewed, by the database's clock (Unix ms).
    pub expires_at: Millis,
}

/// `Cluster/GetClusterStatus`: every node and every partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeStatus>,
    pub partitions: Vec<PartitionStatus>,
}

/// What answers `GetClusterStatus` on a node.
#[async_trait::async_trait]
pub trait ClusterView: Send + Sync {
    /// The cluster as the database (or, on SQLite, this node) sees it now.
    async fn status(&self) -> crate::domain::Result<ClusterStatus>;
}

/// One node owning every partition for ever: SQLite, or a store without leases.
pub struct SingleNode {
    pub settings: ClusterSettings,
    pub clock: Arc<dyn crate::clock::Clock>,
}

#[async_trait::async_trait]
impl ClusterView for SingleNode {
    async fn status(&self) -> crate::domain::Result<ClusterStatus> {
        let now = self.clock.now_ms();
        let all: Vec<u32> = (0..self.settings.partitions).collect();
        Ok(ClusterStatus {
            nodes: vec![NodeStatus {
                node_id: self.settings.node_id.clone(),
                address: self.settings.advertise.clone(),
                last_seen: now,
                partitions: all.clone(),
            }],
            partitions: all
                .into_iter()
                .map(|partition| PartitionStatus {
                    partition,
                    owner: Some(self.settings.node_id.clone()),
                    epoch: 1,
                    expires_at: Millis::MAX,
                })
                .collect(),
        })
    }
}

/// Partitions written compactly, ascending runs as ranges: `[0, 1, 2, 5, 7, 8]` is
/// `0-2,5,7-8`; none is the empty string. For people (the CLI, the console).
pub fn partition_ranges(partitions: &[u32]) -> String {
    let mut sorted = partitions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for p in sorted {
        match runs.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(p) => *end = p,
            _ => runs.push((p, p)),
        }
    }
    runs.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        // From the FNV reference (draft-eastlake-fnv): "", "a", "foobar".
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn accounts_spread_over_every_partition_and_keep_theirs() {
        let mut seen = vec![0u32; 64];
        for i in 0..6_400 {
            let p = partition_of(&format!("account-{i}"), 64);
            assert!(p < 64);
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50 && n < 150), "{seen:?}");
        assert_eq!(partition_of("acme", 64), partition_of("acme", 64));
        assert_eq!(partition_of("acme", 1), 0);
        assert_eq!(partition_of("acme", 0), 0, "no partitions is taken as one");
    }

    #[test]
    fn partitions_are_written_as_ranges_of_consecutive_runs() {
        assert_eq!(partition_ranges(&[]), "");
        assert_eq!(partition_ranges(&[7]), "7");
        let mut some: Vec<u32> = (0..=20).collect();
        some.push(45);
        assert_eq!(partition_ranges(&some), "0-20,45");
        assert_eq!(partition_ranges(&[8, 7, 5, 2, 1, 0, 1]), "0-2,5,7-8");
        assert_eq!(
            partition_ranges(&[u32::MAX - 1, u32::MAX]),
            "4294967294-4294967295"
        );
    }

    #[tokio::test]
    async fn a_single_node_owns_every_partition() {
        let clock = Arc::new(crate::clock::ManualClock::new(1_000));
        let mut settings = ClusterSettings::new("n1", "127.0.0.1:50051");
        settings.partitions = 4;
        let s = SingleNode { settings, clock }.status().await.unwrap();
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.nodes[0].partitions, vec![0, 1, 2, 3]);
        assert!(s
            .partitions
            .iter()
            .all(|p| p.owner.as_deref() == Some("n1")));
    }
}
