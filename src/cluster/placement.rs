//! Where each partition is served: the node-wide map a router consults to forward a
//! call for an account this server does not own (`design/multi-node.md`, "Scheduler
//! API").
//!
//! The node refreshes it at every look at the leases ([`Placement::set_owners`]); a call
//! waiting for a partition's owner (between owners, or after a "moved" answer) waits
//! for the next refresh ([`Placement::looked`]) or its deadline.
//!
//! What *this* server owns is not here: it is fixed for a server's life by its grants
//! (`Ownership::fence.held`), since a node restarts its server whenever its set changes.

use std::collections::HashMap;
use std::sync::Mutex;

/// Partition → the advertised gRPC address (`host:port`) of the node holding its
/// unexpired lease; refreshed by the node.
#[derive(Debug, Default)]
pub struct Placement {
    owners: Mutex<HashMap<u32, String>>,
    looked: tokio::sync::Notify,
}

impl Placement {
    /// A map with no owner known yet.
    pub fn new() -> Placement {
        Placement::default()
    }

    /// The owners as the lease rows say now (partitions missing: no owner, between
    /// owners). Wakes every call waiting for an owner, changed or not.
    pub fn set_owners(&self, owners: HashMap<u32, String>) {
        *self.owners.lock().unwrap_or_else(|p| p.into_inner()) = owners;
        self.looked.notify_waiters();
    }

    /// The address of `partition`'s owner, if one is known.
    pub fn owner_address(&self, partition: u32) -> Option<String> {
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .cloned()
    }

    /// Signalled at every [`Placement::set_owners`]. Register the wait (`notified()`
    /// then `enable()`) before reading the owner, so a refresh in between is not missed.
    pub fn looked(&self) -> &tokio::sync::Notify {
        &self.looked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_set_is_found_and_a_refresh_replaces_the_whole_map() {
        let p = Placement::new();
        assert_eq!(p.owner_address(3), None);
        p.set_owners(HashMap::from([
            (3, "a:1".to_owned()),
            (4, "b:2".to_owned()),
        ]));
        assert_eq!(p.owner_address(3).as_deref(), Some("a:1"));
        p.set_owners(HashMap::from([(4, "b:2".to_owned())]));
        assert_eq!(
            p.owner_address(3),
            None,
            "partition 3 is between owners now"
        );
        assert_eq!(p.owner_address(4).as_deref(), Some("b:2"));
    }
}
