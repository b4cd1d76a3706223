//! Starts and stops the whole service: store, engine, gRPC server on one port
//! (Scheduler, Dispatch, health, reflection).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::cluster::{ClusterSettings, ClusterView, SingleNode};
use crate::config::ServerConfig;
use std::sync::Arc;

use crate::dispatch::{DispatchStats, Dispatcher};
use crate::domain::Channel;
use crate::engine::Engine;
use crate::metrics::{self, Gauges};
use crate::pb;
use crate::service::auth::{self, Auth};
use crate::service::{ClusterService, DispatchService, SchedulerService};
use crate::store::StoreError;
use tonic::service::interceptor::InterceptedService;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Other(String),
}

/// How long shutdown waits for in-flight RPCs before giving up on them.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Scrape-time gauges of one server.
struct ServerGauges {
    engine: Engine,
    stats: Arc<DispatchStats>,
}

impl Gauges for ServerGauges {
    fn metrics(&self) -> &metrics::Metrics {
        self.engine.metrics()
    }
    fn pending_timers(&self) -> u64 {
        self.engine.pending_timers() as u64
    }
    fn due_backlog(&self, ch: Channel) -> u64 {
        let waiting = match ch {
            Channel::Email => &self.stats.backlog_email,
            Channel::Chat => &self.stats.backlog_chat,
        };
        waiting.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn connectors(&self) -> u64 {
        self.stats
            .connectors
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    fn held_back(&self, paused: bool) -> u64 {
        let n = if paused {
            &self.stats.held_paused
        } else {
            &self.stats.held_rate_limited
        };
        n.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// HTTP/2 keepalive: a connection that does not answer a PING within the timeout is
/// closed, so a half-open connector (its host gone, no FIN) is noticed in seconds and
/// its jobs go to another connector.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running server; dropping it does not stop it, call [`RunningServer::shutdown`].
pub struct RunningServer {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    console_addr: Option<SocketAddr>,
    engine: Engine,
    dispatcher: Dispatcher,
    dispatcher_task: JoinHandle<()>,
    health: tonic_health::server::HealthReporter,
    /// Cancelled to stop accepting connections.
    stop: CancellationToken,
    streams: CancellationToken,
    /// Why the service stopped working (the store's writer died), once it has.
    failure: watch::Receiver<Option<String>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// How long a stop waits for the store to close (flush, fsync) before it gives up
    /// on a disk that does not answer: the drain grace plus [`STORE_CLOSE_GRACE`].
    close_grace: Duration,
}

/// What a stop allows the store to close in, beyond the drain grace.
const STORE_CLOSE_GRACE: Duration = Duration::from_secs(5);

impl RunningServer {
    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where metrics are served, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the staff console is served, when enabled.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// `http://ADDR`, for building a tonic `Channel`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The engine (tests and benches look inside).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The dispatcher's published figures (tests look inside).
    pub fn dispatch_stats(&self) -> &DispatchStats {
        &self.dispatcher.stats
    }

    /// Resolves with the reason once the service can no longer work (the store's
    /// writer died): health already says NOT_SERVING and the listener stopped; the
    /// process should exit non-zero so a supervisor restarts it.
    pub async fn failed(&self) -> String {
        let mut f = self.failure.clone();
        let reason = match f.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the server stopped".into(),
        };
        reason
    }

    /// Waits until the server is idle: every write queued before this call committed
    /// and durable, the wheel advanced to the clock's time, and dispatch done with all
    /// it can do now (answers recorded, due items handed out as far as credit allows).
    /// Deterministic: for tests (with a manual clock) and tools, never for production
    /// paths. It does not wait for messages still on the network.
    ///
    /// # Errors
    /// The server cannot settle: a write failed (the writer died, the disk refused it)
    /// or the dispatcher stopped. Then "nothing happened" proves nothing.
    pub async fn settle(&self) -> crate::domain::Result<()> {
        loop {
            // Writes queued before: committed, durable, their timers applied.
            self.engine.store().write(|_| Ok(())).await?;
            let now = self.engine.clock().now_ms();
            self.engine.catch_up(now);
            if self.dispatcher_task.is_finished() {
                return Err(crate::domain::Error::Unavailable(
                    "the dispatcher stopped".into(),
                ));
            }
            self.dispatcher.idle().await;
            // Dispatch's own writes may have set timers that are due already; every
            // changed item is written back to its row (so a test may read the file).
            self.engine.store().write(|tx| tx.sweep()).await?;
            if self.engine.ready().is_empty() && !self.engine.due_by(now) {
                return Ok(());
            }
        }
    }

    /// Live items (PENDING or DISPATCHING) that nothing will ever send: no timer on
    /// the wheel, not waiting in dispatch's line, not out at a connector. Always empty
    /// unless there is a bug; call it after [`RunningServer::settle`] (for tests and
    /// checks).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn stranded_items(&self) -> crate::domain::Result<Vec<crate::domain::ItemId>> {
        let live = self.engine.live_item_ids().await?;
        let known: std::collections::HashSet<_> =
            self.dispatcher.known_ids().await.into_iter().collect();
        Ok(live
            .into_iter()
            .filter(|id| !known.contains(id) && !self.engine.has_timer(*id))
            .collect())
    }

    /// Graceful stop: say NOT_SERVING, stop accepting, end the watch streams, record
    /// the answers of jobs out at connectors (bounded by a grace period) and end their
    /// streams, let in-flight RPCs finish (bounded), then flush the store and stop the
    /// engine.
    ///
    /// # Errors
    /// The server task failed.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.shutdown_within(DRAIN_GRACE).await
    }

    /// [`RunningServer::shutdown`], waiting at most `in_flight` for the RPCs under way
    /// (then cut). A node restarting its server over a new set of partitions waits
    /// little: a peer that stopped (SIGSTOP) or was cut off keeps its connection, and
    /// its calls, open for ever, and the node's own partitions wait meanwhile.
    ///
    /// # Errors
    /// The server task failed.
    pub async fn shutdown_within(self, in_flight: Duration) -> Result<(), ServerError> {
        set_health(&self.health, ServingStatus::NotServing).await;
        self.stop.cancel();
        self.streams.cancel();
        if let Err(e) = self.dispatcher_task.await {
            tracing::error!(error = %e, "the dispatcher failed while stopping");
        }
        let mut task = self.task;
        let result = match tokio::time::timeout(in_flight, &mut task).await {
            Ok(Ok(r)) => r.map_err(|e| ServerError::Other(e.to_string())),
            Ok(Err(join)) => Err(ServerError::Other(join.to_string())),
            Err(_) => {
                tracing::warn!(
                    grace_ms = in_flight.as_millis() as u64,
                    "in-flight RPCs did not finish in time; stopping anyway"
                );
                task.abort();
                Ok(())
            }
        };
        // Whatever the disk does: a writer stuck in a write-back or an fsync that never
        // returns is left behind (nothing it holds was answered OK; start-up replays
        // the journal), and the stop says so.
        if tokio::time::timeout(self.close_grace, self.engine.close())
            .await
            .is_err()
        {
            let why = format!(
                "the store did not finish closing within {} s (the disk does not answer); \
                 stopping without it: the next start replays its journal",
                self.close_grace.as_secs()
            );
            tracing::error!("{why}");
            return Err(ServerError::Other(why));
        }
        tracing::info!("stopped");
        result
    }
}

/// Opens (or creates) the database, recovers the wheel, binds and starts serving.
/// Returns once the port is bound and the service accepts requests.
///
/// # Errors
/// The database is unusable, the address cannot be bound, or a token is shorter than
/// [`crate::config::MIN_TOKEN_CHARS`].
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    start_on(config, None).await
}

/// [`start`] on a socket already listening at `config.listen` (a node keeps its own
/// across its servers, so connections arriving while it restarts its server over a new
/// set of partitions wait in its backlog instead of being refused); `None` binds one.
///
/// # Errors
/// As [`start`].
pub async fn start_on(
    mut config: ServerConfig,
    listening: Option<std::net::TcpListener>,
) -> Result<RunningServer, ServerError> {
    // A guessable token is no lock; its position is named, never its value.
    if let Some(i) = crate::config::first_weak_token(&config.tokens) {
        return Err(ServerError::Other(format!(
            "tokens[{i}]: shorter than {} characters",
            crate::config::MIN_TOKEN_CHARS
        )));
    }
    let started = std::time::Instant::now();
    let (engine, recovery) = Engine::open(
        &config.db_path,
        config.synchronous,
        config.clock.clone(),
        config.limits.clone(),
        config.dispatch.clone(),
        config.ownership.clone(),
    )
    .await?;
    tracing::info!(
        db = %crate::store::DbTarget::parse(&config.db_path.to_string_lossy()).display(),
        timers = recovery.timers,
        overdue = recovery.overdue,
        leased = recovery.leased,
        millis = started.elapsed().as_millis() as u64,
        "recovered"
    );
    let bound = match listening {
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(l)),
        None => TcpListener::bind(config.listen).await,
    };
    let listener = bound.map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    if config.listen.port() == 0 {
        config.cluster = with_bound_port(config.cluster, local_addr.port());
    }

    let streams = CancellationToken::new();
    // The gRPC transport limit stays well above the body limit, so an oversize body is
    // INVALID_ARGUMENT naming the field, not RESOURCE_EXHAUSTED from the transport.
    let max_message = config
        .limits
        .max_message_bytes
        .max(config.limits.min_message_bytes());
    let auth = Auth::with_clock(config.tokens.clone(), config.clock.clone());
    let scheduler = pb::scheduler_server::SchedulerServer::new(SchedulerService::new(
        engine.clone(),
        streams.clone(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let scheduler = InterceptedService::new(scheduler, auth.interceptor(auth::Service::Scheduler));

    let (dispatcher, dispatcher_task) = Dispatcher::start(engine.clone(), streams.clone());
    let cluster = cluster_view(&engine, &config.cluster, config.ownership.as_ref());
    publish_partitions_owned(&engine, cluster.as_ref(), &config.cluster.node_id).await;
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let gauges = Arc::new(ServerGauges {
                engine: engine.clone(),
                stats: dispatcher.stats.clone(),
            });
            let bound = retry_in_use(|| metrics::serve(addr, gauges.clone(), streams.clone()))
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            tracing::info!(addr = %bound, "serving metrics");
            Some(bound)
        }
        None => None,
    };
    let console_addr = match config.console_listen {
        Some(addr) => {
            let gauges = Arc::new(ServerGauges {
                engine: engine.clone(),
                stats: dispatcher.stats.clone(),
            });
            let console = crate::console::Console::new(
                engine.clone(),
                dispatcher.clone(),
                auth.clone(),
                gauges,
            )
            .with_hosts(config.console_hosts.clone())
            .with_cluster(cluster.clone(), config.cluster.clone());
            // With [tls] the console speaks TLS too, with the same certificate.
            let console = match &config.tls {
                Some(tls) => {
                    console.with_tls(crate::console::tls_config(tls).map_err(ServerError::Other)?)
                }
                None => console,
            };
            match retry_in_use(|| crate::console::serve(addr, console.clone(), streams.clone()))
                .await
            {
                Ok(bound) => {
                    tracing::info!(url = %format!("http://{bound}/"), "serving the staff console");
                    Some(bound)
                }
                // The default address is taken (another sendlater, another service):
                // the engine matters more than its console.
                Err(e) if config.console_optional => {
                    tracing::warn!(%addr, error = %e, "the staff console is off: its default address cannot be bound (choose one with --console-listen)");
                    None
                }
                Err(source) => return Err(ServerError::Bind { addr, source }),
            }
        }
        None => None,
    };
    engine.spawn_event_pruner(config.event_retention_ms, streams.clone());
    // A node among several: a change to every account's controls (`*`) is written by
    // `*`'s owner; the others follow it from the store.
    if config
        .ownership
        .as_ref()
        .is_some_and(|o| o.placement.is_some())
    {
        engine.spawn_every_account_follower(streams.clone());
    }
    // Re-resolutions of business hours a stop interrupted go on.
    engine
        .resume_rewindows()
        .await
        .map_err(|e| ServerError::Other(format!("resuming business-hours changes: {e}")))?;
    let dispatch =
        pb::dispatch_server::DispatchServer::new(DispatchService::new(dispatcher.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
    let dispatch = InterceptedService::new(dispatch, auth.interceptor(auth::Service::Dispatch));
    let cluster_service = InterceptedService::new(
        pb::cluster_server::ClusterServer::new(ClusterService::new(cluster)),
        auth.interceptor(auth::Service::Cluster),
    );

    let (health_reporter, health) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Other(e.to_string()))?;

    let stop = CancellationToken::new();
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ServerError::Other(format!("tls: {}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServerError::Other(format!("tls: {e}")))?;
    }
    let router = builder.add_service(health).add_service(reflection);
    // A node among several: Scheduler calls for accounts of partitions it does not own
    // go to their owner (`cluster::route`); otherwise it owns every partition.
    let router = match scheduler_router(&config, max_message, &engine, &streams) {
        Some(route) => router.add_service(crate::cluster::route::Routed::new(scheduler, route)),
        None => router.add_service(scheduler),
    };
    let router = router.add_service(dispatch).add_service(cluster_service);
    // TCP_NODELAY: without it, a response that follows a small one waits for the
    // client's delayed ACK (figures: BENCHMARKS.md, "Figures that explain the code").
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task =
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()));
    let failure = watch_for_failure(&engine, &health_reporter, &stop, &streams);
    watch_degraded(&engine, &health_reporter, &stop);
    tracing::info!(addr = %local_addr, "serving");
    Ok(RunningServer {
        local_addr,
        metrics_addr,
        console_addr,
        engine,
        dispatcher,
        dispatcher_task,
        health: health_reporter,
        stop,
        streams,
        failure,
        task,
        close_grace: Duration::from_millis(config.dispatch.drain_grace_ms) + STORE_CLOSE_GRACE,
    })
}

/// The router of a server owning some partitions, with a placement for the others;
/// `None` (no ownership, or no placement): the server owns every partition.
fn scheduler_router(
    config: &ServerConfig,
    max_message: usize,
    engine: &Engine,
    stop: &CancellationToken,
) -> Option<Arc<crate::cluster::route::Router>> {
    let ownership = config.ownership.as_ref()?;
    let placement = ownership.placement.clone()?;
    let owned: Vec<u32> = ownership.fence.held.iter().map(|&(p, _)| p).collect();
    tracing::info!(
        partitions = config.cluster.partitions,
        owned = %crate::cluster::partition_ranges(&owned),
        "Scheduler calls for the other partitions' accounts go to their owners"
    );
    Some(Arc::new(crate::cluster::route::Router::new(
        config.cluster.partitions,
        owned,
        placement,
        max_message,
        engine.metrics().clone(),
        stop.clone(),
    )))
}

/// Binds with `bind`, trying again for up to a second while the address is in use: a
/// node restarting its server (its partitions changed) binds the console and metrics
/// addresses its former server is letting go of.
async fn retry_in_use<T, F, Fut>(mut bind: F) -> std::io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let mut tries = 0;
    loop {
        match bind().await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

/// What answers `GetClusterStatus` and the console's node section: a node among several
/// (`cluster::node`) answers from the lease rows; otherwise (SQLite, or a server started
/// alone) one node owning every partition.
fn cluster_view(
    engine: &Engine,
    settings: &ClusterSettings,
    ownership: Option<&crate::cluster::Ownership>,
) -> Arc<dyn ClusterView> {
    if let Some(view) = ownership.and_then(|o| o.view.clone()) {
        return view;
    }
    Arc::new(SingleNode {
        settings: settings.clone(),
        clock: engine.clock().clone(),
    })
}

/// Sets `sendlater_partitions_owned` to the partitions `node_id` holds as `view` sees
/// them now (a view that cannot answer leaves it at 0 and says so).
async fn publish_partitions_owned(engine: &Engine, view: &dyn ClusterView, node_id: &str) {
    match view.status().await {
        Ok(status) => {
            let owned = status
                .nodes
                .iter()
                .find(|n| n.node_id == node_id)
                .map_or(0, |n| n.partitions.len());
            engine
                .metrics()
                .partitions_owned
                .set(i64::try_from(owned).unwrap_or(i64::MAX));
            tracing::info!(node_id, partitions = owned, "partitions owned");
        }
        Err(error) => {
            tracing::warn!(node_id, %error, "cannot read the cluster's status at start");
        }
    }
}

/// A node id or address ending in port 0 (a server asked for any free port) with the
/// port it was given.
pub(crate) fn with_bound_port(mut cluster: ClusterSettings, port: u16) -> ClusterSettings {
    for name in [&mut cluster.node_id, &mut cluster.advertise] {
        if let Some(host) = name.strip_suffix(":0") {
            *name = format!("{host}:{port}");
        }
    }
    cluster
}

/// The health of both services.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health
        .set_service_status(
            <pb::scheduler_server::SchedulerServer<SchedulerService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health
        .set_service_status(
            <pb::dispatch_server::DispatchServer<DispatchService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
}

/// While the store cannot do all its work (rows cannot be written back, groups fail
/// to commit), health says NOT_SERVING, and SERVING again once it can; until a stop
/// (which says NOT_SERVING itself).
fn watch_degraded(
    engine: &Engine,
    health: &tonic_health::server::HealthReporter,
    stop: &CancellationToken,
) {
    let mut degraded = engine.store().degraded();
    let health = health.clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = degraded.changed() => if r.is_err() { return },
                _ = stop.cancelled() => return,
            }
            let status = if degraded.borrow_and_update().is_some() {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            if stop.is_cancelled() {
                return;
            }
            set_health(&health, status).await;
        }
    });
}

/// When the store's writer dies (a panic, a lost thread), nothing can be written any
/// more: say NOT_SERVING, stop accepting and end the streams, and report the reason
/// (`sendlater serve` then exits non-zero, so a supervisor restarts it).
fn watch_for_failure(
    engine: &Engine,
    health: &tonic_health::server::HealthReporter,
    stop: &CancellationToken,
    streams: &CancellationToken,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    let mut fatal = engine.store().fatal();
    let health = health.clone();
    let stop = stop.clone();
    let streams = streams.clone();
    tokio::spawn(async move {
        let reason = tokio::select! {
            r = fatal.wait_for(Option::is_some) => match r {
                Ok(reason) => reason.clone().unwrap_or_default(),
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        tracing::error!(reason = %reason, "the service cannot work any more; stopping");
        set_health(&health, ServingStatus::NotServing).await;
        stop.cancel();
        streams.cancel();
        let _ = tx.send(Some(reason));
    });
    rx
}
