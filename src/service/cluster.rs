//! The `sendlater.v1.Cluster` gRPC service: `GetClusterStatus`, answered from the
//! node's [`ClusterView`] (the lease table on PostgreSQL, one node owning every
//! partition on SQLite). Operators only: with tokens configured it needs an `admin`
//! token (the interceptor refuses other roles, and the handler checks again).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth;
use super::convert;
use crate::cluster::{self, ClusterView};
use crate::config::Role;
use crate::domain::Millis;
use crate::pb;

/// The Cluster service.
#[derive(Clone)]
pub struct ClusterService {
    view: Arc<dyn ClusterView>,
}

impl ClusterService {
    pub fn new(view: Arc<dyn ClusterView>) -> Self {
        Self { view }
    }
}

/// An instant of the cluster's status on the wire; none for "never" (a lease that does
/// not end) or anything beyond the range of a protobuf timestamp.
fn instant(ms: Millis) -> Option<prost_types::Timestamp> {
    // google.protobuf.Timestamp ends with the year 9999.
    const LAST_MS: Millis = 253_402_300_799_999;
    (ms <= LAST_MS).then(|| convert::ts(ms))
}

/// The wire form of a cluster's status.
pub fn status_to_pb(s: cluster::ClusterStatus) -> pb::ClusterStatus {
    pb::ClusterStatus {
        nodes: s
            .nodes
            .into_iter()
            .map(|n| pb::NodeStatus {
                node_id: n.node_id,
                address: n.address,
                last_seen: instant(n.last_seen),
                partitions: n.partitions,
            })
            .collect(),
        partitions: s
            .partitions
            .into_iter()
            .map(|p| pb::PartitionStatus {
                partition: p.partition,
                owner: p.owner.unwrap_or_default(),
                epoch: p.epoch,
                expires_at: instant(p.expires_at),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn get_cluster_status(
        &self,
        req: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let id = auth::identity(&req)?;
        if id.role != Role::Admin {
            return Err(Status::permission_denied(
                "GetClusterStatus needs an admin token",
            ));
        }
        let status = self.view.status().await.map_err(|e| {
            tracing::warn!(error = %e, "cannot read the cluster's status");
            Status::from(e)
        })?;
        Ok(Response::new(status_to_pb(status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_that_never_ends_has_no_expiry_on_the_wire_and_no_owner_is_empty() {
        let s = status_to_pb(cluster::ClusterStatus {
            nodes: vec![cluster::NodeStatus {
                node_id: "n1".into(),
                address: "127.0.0.1:50051".into(),
                last_seen: 1_500,
                partitions: vec![0, 2],
            }],
            partitions: vec![
                cluster::PartitionStatus {
                    partition: 0,
                    owner: Some("n1".into()),
                    epoch: 3,
                    expires_at: Millis::MAX,
                },
                cluster::PartitionStatus {
                    partition: 1,
                    owner: None,
                    epoch: 0,
                    expires_at: 2_000,
                },
            ],
        });
        assert_eq!(s.nodes[0].last_seen, Some(convert::ts(1_500)));
        assert_eq!(s.nodes[0].partitions, vec![0, 2]);
        assert_eq!(s.partitions[0].expires_at, None);
        assert_eq!(s.partitions[0].owner, "n1");
        assert_eq!(s.partitions[0].epoch, 3);
        assert_eq!(s.partitions[1].owner, "");
        assert_eq!(s.partitions[1].expires_at, Some(convert::ts(2_000)));
    }
}
