//! The life of a node among several on one PostgreSQL (`design/multi-node.md`).
//!
//! Every node owns a **fair share** of the partitions ([`super::share`]): it looks at
//! the lease rows every [`LOOK_EVERY`], takes free partitions while it is below its
//! share, and hands its surplus over while another live node is below its share. Its
//! server (`server::start_on`) serves what it owns, and forwards calls for other
//! accounts to their owners ([`super::placement::Placement`], refreshed at every look).
//!
//! A server's partitions are fixed for its life (its fence, its wheel, its dispatch):
//! when the node's set changes, the node **restarts its server** on the same listening
//! socket (connections arriving meanwhile wait in its backlog):
//! - **take**: grant the free rows (each epoch bumped), drain the server (answers of
//!   jobs out recorded, streams ended so connectors reconnect), start one over the
//!   larger set, which loads the new partitions' items;
//! - **hand over** (planned): drain the server first, so nothing of those partitions
//!   leaves after, then release their leases (another node takes them at its next
//!   look) and start a server over the smaller set. No duplicates.
//!
//! Leases are renewed every `lease/5` in one statement by a task of their own, so a
//! restart never delays a renewal; the trust window ([`Trust`]) is the node's. A node
//! with no partition (more nodes than partitions, or just started beside others)
//! serves all the same, forwarding everything.
//!
//! **End**: a stop request drains the server and releases every lease (a rolling
//! restart moves the partitions in about a second). A lost lease (a renewal that finds
//! one taken) or a fenced commit ends the node at once with [`Ended::Lost`]: its state
//! may be stale, and the supervisor's restart brings it back.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};

use super::placement::Placement;
use super::share::{self, Decision};
use super::trust::Trust;
use super::{ClusterSettings, ClusterStatus, ClusterView, Ownership};
use crate::config::ServerConfig;
use crate::server::{self, RunningServer, ServerError};
use crate::store::postgres::lease::Held;
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

/// How often a node looks at the lease rows (its share, free partitions, owners).
pub const LOOK_EVERY: Duration = Duration::from_millis(500);

/// How often a server that cannot start (the database is away) is tried again, and
/// how many times, before the node gives up (exit non-zero: its supervisor restarts it).
const START_RETRY: Duration = Duration::from_millis(500);
const START_ATTEMPTS: u32 = 20;

/// How long a server restarted over a new set of partitions waits for the RPCs under
/// way (the answers of jobs out are drained before, within `drain_grace`); those still
/// running are cut and their callers retry (request ids make it safe). A peer stopped
/// or cut off holds its calls open for ever.
const RESTART_IN_FLIGHT: Duration = Duration::from_millis(500);

/// How a node's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop: drained, leases released.
    Stopped,
    /// The node lost partitions (taken by another node, or a commit fenced).
    Lost(String),
}

/// What a node keeps across its servers.
struct Node {
    config: ServerConfig,
    me: ClusterSettings,
    leases: Arc<PgLeases>,
    /// The grants the node holds; locked around every statement that reads or changes
    /// them (renewal, take, hand-over, release), so a renewal never extends a lease
    /// released a moment before.
    held: Arc<Mutex<Vec<Held>>>,
    trust: Arc<Trust>,
    placement: Arc<Placement>,
    /// The listening socket every server of this node accepts on.
    socket: std::net::TcpListener,
    /// The node's metrics, kept across its servers.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Node {
    /// Starts a server over `held` on the node's socket, trying again while the
    /// database is away.
    async fn start(&self, held: Vec<Held>) -> Result<RunningServer, ServerError> {
        let mut config = self.config.clone();
        config.ownership = Some(Ownership {
            fence: Fence {
                node: self.me.node_id.clone(),
                held,
                idle_limit: self.me.lease() / 2,
            },
            trust: self.trust.clone(),
            view: Some(Arc::new(LeaseView(self.leases.clone()))),
            placement: Some(self.placement.clone()),
            metrics: Some(self.metrics.clone()),
        });
        let mut attempt = 0;
        let running = loop {
            attempt += 1;
            let socket = self
                .socket
                .try_clone()
                .map_err(|source| ServerError::Bind {
                    addr: self.config.listen,
                    source,
                })?;
            match server::start_on(config.clone(), Some(socket)).await {
                Ok(r) => break r,
                Err(e) if attempt < START_ATTEMPTS && !matches!(e, ServerError::Bind { .. }) => {
                    tracing::warn!(error = %e, attempt, "the node's server cannot start; trying again");
                    tokio::time::sleep(START_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(running)
    }

    /// After a server that cannot start: the window closed, the leases released (best
    /// effort), `e` returned for the node to end with.
    async fn give_up(&self, e: ServerError) -> ServerError {
        self.trust.close();
        let mut held = self.held.lock().await;
        let _ = self.leases.release(&self.me.node_id, &held).await;
        held.clear();
        tracing::error!(node = %self.me.node_id, error = %e, "the node's server cannot start: stopping");
        e
    }

    /// The partitions held, ascending.
    async fn held_partitions(&self) -> Vec<u32> {
        self.held.lock().await.iter().map(|h| h.0).collect()
    }

    /// Takes what it can of `wanted`; the grants, added to the held set.
    async fn take(&self, wanted: &[u32]) -> Result<Vec<Held>, crate::store::StoreError> {
        let mut held = self.held.lock().await;
        let started = Instant::now();
        let granted = self
            .leases
            .take(&self.me.node_id, wanted, self.me.lease())
            .await?;
        if !granted.is_empty() {
            if held.is_empty() {
                // The window opens with these grants; otherwise it stays the last
                // renewal's (earlier than these grants, so shorter than their lease).
                self.trust.renewed(started, self.me.lease());
            }
            held.extend(granted.iter().copied());
            held.sort_unstable();
        }
        Ok(granted)
    }
}

/// Renews the node's leases every `lease/5` until one is found lost (reported on
/// `lost`) or the task is dropped.
async fn renew_loop(
    leases: Arc<PgLeases>,
    me: ClusterSettings,
    held: Arc<Mutex<Vec<Held>>>,
    trust: Arc<Trust>,
    metrics: Arc<crate::metrics::Metrics>,
    lost: watch::Sender<Option<String>>,
) {
    let lease = me.lease();
    let mut next = tokio::time::Instant::now() + me.renew_every();
    loop {
        tokio::time::sleep_until(next).await;
        next += me.renew_every();
        let held = held.lock().await;
        if held.is_empty() {
            continue;
        }
        let started = Instant::now();
        let renewed = tokio::time::timeout(
            lease / 2,
            leases.renew(&me.node_id, &me.advertise, &held, lease),
        )
        .await;
        metrics
            .lease_renew_seconds
            .observe(started.elapsed().as_secs_f64());
        match renewed {
            Ok(Ok(parts)) if parts.len() == held.len() => trust.renewed(started, lease),
            Ok(Ok(parts)) => {
                trust.close();
                let _ = lost.send(Some(format!(
                    "{} of {} partitions were taken by another node",
                    held.len() - parts.len(),
                    held.len()
                )));
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, left_ms = trust.remaining_at(Instant::now()).as_millis() as u64, "lease renewal failed");
            }
            Err(_) => {
                tracing::warn!(
                    left_ms = trust.remaining_at(Instant::now()).as_millis() as u64,
                    "lease renewal timed out"
                );
            }
        }
    }
}

/// What woke the node.
enum Wake {
    Stop,
    Lost(String),
    Look,
}

/// Runs a node on the PostgreSQL database at `url` until `stop` resolves or the node
/// loses partitions.
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
    let listen = config.listen;
    let bind = |source| ServerError::Bind {
        addr: listen,
        source,
    };
    let socket = std::net::TcpListener::bind(listen).map_err(bind)?;
    config.listen = socket.local_addr().map_err(bind)?;
    config.cluster = server::with_bound_port(config.cluster.clone(), config.listen.port());
    let me = config.cluster.clone();
    let lease = me.lease();
    tracing::info!(node = %me.node_id, advertise = %me.advertise, partitions = me.partitions, lease_secs = me.lease_secs, "node starting");
    let node = Node {
        config,
        me: me.clone(),
        leases: leases.clone(),
        held: Arc::default(),
        trust: Arc::new(Trust::new()),
        placement: Arc::new(Placement::new()),
        socket,
        metrics: Arc::default(),
    };

    // A first look before serving, so a lone node starts with its partitions loaded.
    let mut took = 0;
    match leases.look(&me.node_id, &me.advertise, lease).await {
        Ok(look) => {
            node.placement.set_owners(look.owners_except(&me.node_id));
            if let Decision::Take(wanted) = share::decide(&look, &me.node_id, &[]) {
                match node.take(&wanted).await {
                    Ok(granted) => took = granted.len(),
                    Err(e) => tracing::warn!(error = %e, "cannot take partitions at start"),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot look at the leases at start"),
    }
    let snapshot = node.held.lock().await.clone();
    let mut running = match node.start(snapshot.clone()).await {
        Ok(r) => r,
        Err(e) => {
            node.trust.close();
            let _ = leases.release(&me.node_id, &snapshot).await;
            return Err(e);
        }
    };
    if took > 0 {
        log_take(&node, &running, &snapshot);
    }
    tracing::info!(
        addr = %running.local_addr(),
        db = %crate::store::DbTarget::parse(&node.config.db_path.to_string_lossy()).display(),
        partitions = snapshot.len(),
        "sendlater is serving"
    );
    let (lost_tx, mut lost_rx) = watch::channel(None);
    let renewer = tokio::spawn(renew_loop(
        leases.clone(),
        me.clone(),
        node.held.clone(),
        node.trust.clone(),
        node.metrics.clone(),
        lost_tx,
    ));
    let renewer = AbortOnDrop(renewer);
    let mut failures = 0u64;
    let ended = loop {
        let wake = tokio::select! {
            () = &mut stop => Wake::Stop,
            reason = running.failed() => Wake::Lost(reason),
            r = lost_rx.wait_for(Option::is_some) => Wake::Lost(
                r.map(|v| v.clone().unwrap_or_default())
                    .unwrap_or_else(|_| "the lease renewal stopped".into()),
            ),
            () = tokio::time::sleep(LOOK_EVERY) => Wake::Look,
        };
        match wake {
            Wake::Stop => break Ended::Stopped,
            Wake::Lost(why) => {
                node.trust.close();
                break Ended::Lost(why);
            }
            Wake::Look => {}
        }
        let look = match leases.look(&me.node_id, &me.advertise, lease).await {
            Ok(look) => {
                if failures > 0 {
                    tracing::info!(failures, "the leases can be read again");
                    failures = 0;
                }
                look
            }
            Err(e) => {
                // Twice a second while the database is away: said once, then every 30 s.
                failures += 1;
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(error = %e, failures, "cannot look at the leases");
                }
                continue;
            }
        };
        node.placement.set_owners(look.owners_except(&me.node_id));
        let mine = node.held_partitions().await;
        match share::decide(&look, &me.node_id, &mine) {
            Decision::Stay => {}
            Decision::Take(wanted) => {
                let granted = match node.take(&wanted).await {
                    Ok(g) if g.is_empty() => continue,
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take partitions");
                        continue;
                    }
                };
                let started = Instant::now();
                let drained = running.shutdown_within(RESTART_IN_FLIGHT).await;
                if let Err(e) = drained {
                    tracing::warn!(error = %e, "the server did not stop cleanly before growing");
                }
                let snapshot = node.held.lock().await.clone();
                running = match node.start(snapshot.clone()).await {
                    Ok(r) => r,
                    Err(e) => return Err(node.give_up(e).await),
                };
                log_take(&node, &running, &granted);
                tracing::info!(node = %me.node_id, partitions = snapshot.len(), millis = started.elapsed().as_millis() as u64, "serving the larger set");
            }
            Decision::HandOver(give) => {
                let started = Instant::now();
                // Drained first: nothing of these partitions leaves after their release.
                if let Err(e) = running.shutdown_within(RESTART_IN_FLIGHT).await {
                    tracing::warn!(error = %e, "the server did not stop cleanly before a handover");
                }
                let snapshot = {
                    let mut held = node.held.lock().await;
                    let gone: Vec<Held> = held
                        .iter()
                        .filter(|(p, _)| give.contains(p))
                        .copied()
                        .collect();
                    match leases.hand_over(&me.node_id, &gone).await {
                        Ok(()) => {
                            tracing::info!(node = %me.node_id, partitions = %super::partition_ranges(&give), "handed partitions over")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, partitions = %super::partition_ranges(&give), "cannot release handed-over partitions: they move when their lease expires")
                        }
                    }
                    held.retain(|(p, _)| !give.contains(p));
                    held.clone()
                };
                running = match node.start(snapshot.clone()).await {
                    Ok(r) => r,
                    Err(e) => return Err(node.give_up(e).await),
                };
                tracing::info!(node = %me.node_id, partitions = snapshot.len(), millis = started.elapsed().as_millis() as u64, "serving the smaller set");
            }
        }
    };
    drop(renewer);
    // End.
    match &ended {
        Ended::Stopped => {
            let drained = running.shutdown().await;
            node.trust.close();
            let mut held = node.held.lock().await;
            match leases.release(&me.node_id, &held).await {
                Ok(()) => tracing::info!(node = %me.node_id, "released the partitions"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release the partitions: they move when the lease expires")
                }
            }
            held.clear();
            drained?;
        }
        Ended::Lost(why) => {
            tracing::error!(node = %me.node_id, reason = %why, "lost partitions: stopping");
            // Nothing may leave any more (the window is closed); the server is cut short.
            let _ = tokio::time::timeout(Duration::from_secs(2), running.shutdown()).await;
        }
    }
    Ok(ended)
}

/// A log line and the counter for a takeover.
fn log_take(node: &Node, running: &RunningServer, granted: &[Held]) {
    let parts: Vec<u32> = granted.iter().map(|h| h.0).collect();
    tracing::info!(node = %node.me.node_id, partitions = %super::partition_ranges(&parts), count = parts.len(), "took partitions");
    running
        .engine()
        .metrics()
        .partition_takeovers
        .inc_by(granted.len() as u64);
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
