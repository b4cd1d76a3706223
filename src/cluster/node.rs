//! The life of a node among several on one PostgreSQL (`design/multi-node.md`).
//!
//! This build's placement is the simplest the lease rows allow: **one node owns every
//! partition at a time** (the others are standbys). Every lease row, epoch and fence is
//! per partition already; spreading partitions over the nodes (a fair share each) is the
//! next step, and changes who takes what, not how.
//!
//! 1. **Standby**: register, serve as a [`Standby`] (forwarding Scheduler calls to the
//!    owner), and look every [`LOOK_EVERY`] whether the partitions are free: their
//!    lease expired by the database's clock (the owner died or was cut off) or was
//!    released (a planned stop), or they are this node's own (a restart).
//! 2. **Owner**: take them (every epoch bumped), then start the full server on the same
//!    address with every commit fenced by the grants and jobs handed out only inside the
//!    trust window; renew every `lease/5` in one statement.
//! 3. **End**: a stop request drains the server (answers recorded, streams ended) and
//!    releases the leases, so a standby takes over at its next look (a rolling restart
//!    moves the partitions in about a second). A lost lease (a renewal that finds it
//!    taken) or a fenced commit ends the node at once with [`Ended::Lost`]: its state
//!    may be stale, and the supervisor's restart brings it back as a standby.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::standby::Standby;
use super::trust::Trust;
use super::{ClusterSettings, ClusterStatus, ClusterView, Ownership};
use crate::config::ServerConfig;
use crate::server::{self, ServerError};
use crate::store::postgres::PgLeases;
use crate::store::Fence;

/// `GetClusterStatus` of a node: the lease rows, read through the node's lease session.
struct LeaseView(Arc<PgLeases>);

#[async_trait::async_trait]
impl ClusterView for LeaseView {
    async fn status(&self) -> crate::domain::Result<ClusterStatus> {
        Ok(self.0.status().await?)
    }
}

/// How often a standby looks whether the partitions are free.
pub const LOOK_EVERY: Duration = Duration::from_millis(500);

/// How a node's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop: drained, leases released.
    Stopped,
    /// The node lost its partitions (taken by another node, or a commit fenced).
    Lost(String),
}

/// Runs a node on the PostgreSQL database at `url` until `stop` resolves or the node
/// loses its partitions.
///
/// # Errors
/// The database cannot be reached at start, has another partition count, the address
/// cannot be bound, or the server cannot start.
pub async fn run(
    mut config: ServerConfig,
    url: &str,
    stop: impl Future<Output = ()>,
) -> Result<Ended, ServerError> {
    tokio::pin!(stop);
    let leases = Arc::new(PgLeases::connect(url).await?);
    leases.init(config.cluster.partitions).await?;
    let standby = Standby::start(config.listen).await?;
    config.listen = standby.local_addr;
    config.cluster = server::with_bound_port(config.cluster.clone(), config.listen.port());
    let me = config.cluster.clone();
    let lease = me.lease();
    tracing::info!(node = %me.node_id, advertise = %me.advertise, partitions = me.partitions, lease_secs = me.lease_secs, "node starting as a standby");

    // 1. Standby until the partitions are free.
    let mut failures = 0u64;
    let (held, granted_at) = loop {
        let started = Instant::now();
        match take(&leases, &me).await {
            Ok(Some(held)) => break (held, started),
            Ok(None) => {
                if failures > 0 {
                    tracing::info!(failures, "standby: the leases can be read again");
                    failures = 0;
                }
                let owner = owner_address(&leases, &me).await;
                standby.owner.set(owner.as_deref());
            }
            Err(e) => {
                // Twice a second while the database is away: said once, then every 30 s.
                failures += 1;
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(error = %e, failures, "standby: cannot look at the leases");
                }
            }
        }
        tokio::select! {
            () = &mut stop => {
                drop(standby.stop().await);
                return Ok(Ended::Stopped);
            }
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
    };
    let forwarded = standby.forwarded();
    let listening = standby.stop().await;
    tracing::info!(node = %me.node_id, partitions = held.len(), epoch = held.first().map_or(0, |h| h.1), "took the partitions; loading them");

    // 2. Owner.
    let trust = Arc::new(Trust::new());
    trust.renewed(granted_at, lease);
    config.ownership = Some(Ownership {
        fence: Fence {
            node: me.node_id.clone(),
            held: held.clone(),
            idle_limit: lease / 2,
        },
        trust: trust.clone(),
        view: Some(Arc::new(LeaseView(leases.clone()))),
        placement: None,
    });
    let running = match server::start_on(config.clone(), Some(listening)).await {
        Ok(r) => r,
        Err(e) => {
            trust.close();
            let _ = leases.release(&me.node_id, &held).await;
            return Err(e);
        }
    };
    tracing::info!(node = %me.node_id, millis = granted_at.elapsed().as_millis() as u64, "took over every partition");
    tracing::info!(
        addr = %running.local_addr(),
        db = %crate::store::DbTarget::parse(&config.db_path.to_string_lossy()).display(),
        "sendlater is serving"
    );
    let metrics = running.engine().metrics().clone();
    metrics.partition_takeovers.inc_by(held.len() as u64);
    metrics.forwarded_requests.inc_by(forwarded);
    metrics.partitions_owned.set(held.len() as i64);
    let mut next_renew = tokio::time::Instant::now() + me.renew_every();
    let ended = loop {
        tokio::select! {
            () = &mut stop => break Ended::Stopped,
            reason = running.failed() => {
                trust.close();
                break Ended::Lost(reason);
            }
            () = tokio::time::sleep_until(next_renew) => {
                next_renew += me.renew_every();
                let started = Instant::now();
                let renewed = tokio::time::timeout(
                    lease / 2,
                    leases.renew(&me.node_id, &me.advertise, &held, lease),
                )
                .await;
                metrics.lease_renew_seconds.observe(started.elapsed().as_secs_f64());
                match renewed {
                    Ok(Ok(parts)) if parts.len() == held.len() => trust.renewed(started, lease),
                    Ok(Ok(parts)) => {
                        trust.close();
                        metrics.partitions_owned.set(parts.len() as i64);
                        break Ended::Lost(format!(
                            "{} of {} partitions were taken by another node",
                            held.len() - parts.len(),
                            held.len()
                        ));
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, left_ms = trust.remaining_at(Instant::now()).as_millis() as u64, "lease renewal failed");
                    }
                    Err(_) => {
                        tracing::warn!(left_ms = trust.remaining_at(Instant::now()).as_millis() as u64, "lease renewal timed out");
                    }
                }
            }
        }
    };
    // 3. End.
    match &ended {
        Ended::Stopped => {
            let drained = running.shutdown().await;
            trust.close();
            match leases.release(&me.node_id, &held).await {
                Ok(()) => tracing::info!(node = %me.node_id, "released the partitions"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release the partitions: they move when the lease expires")
                }
            }
            drained?;
        }
        Ended::Lost(why) => {
            tracing::error!(node = %me.node_id, reason = %why, "lost the partitions: stopping");
            // Nothing may leave any more (the window is closed); the server is cut short.
            let _ = tokio::time::timeout(Duration::from_secs(2), running.shutdown()).await;
        }
    }
    Ok(ended)
}

/// Registers this node and takes every partition if they are free.
async fn take(
    leases: &PgLeases,
    me: &ClusterSettings,
) -> Result<Option<Vec<crate::store::postgres::lease::Held>>, crate::store::StoreError> {
    leases
        .register(&me.node_id, &me.advertise, me.lease())
        .await?;
    leases.take_all(&me.node_id, me.lease()).await
}

/// The address of the node owning partition 0 (every partition, in this build), if
/// its lease is live and it is another node.
async fn owner_address(leases: &PgLeases, me: &ClusterSettings) -> Option<String> {
    leases.owner_address(0, &me.node_id).await.ok().flatten()
}
