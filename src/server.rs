//! Starts and stops the whole service: store, engine, gRPC server on one port
//! (Scheduler, Dispatch, health, reflection).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use std::sync::Arc;

use crate::dispatch::{DispatchStats, Dispatcher};
use crate::domain::Channel;
use crate::engine::Engine;
use crate::metrics::{self, Gauges};
use crate::pb;
use crate::service::auth::{self, Auth};
use crate::service::{DispatchService, SchedulerService};
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
}

/// A running server; dropping it does not stop it, call [`RunningServer::shutdown`].
pub struct RunningServer {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    engine: Engine,
    stop: oneshot::Sender<()>,
    streams: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where metrics are served, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `http://ADDR`, for building a tonic `Channel`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The engine (tests and benches look inside).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Graceful stop: stop accepting, end the long-lived streams (connectors and
    /// watchers reconnect elsewhere or later), let in-flight RPCs finish (bounded by a
    /// grace period), then flush the store and stop the engine.
    ///
    /// # Errors
    /// The server task failed.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(());
        self.streams.cancel();
        let mut task = self.task;
        let result = match tokio::time::timeout(DRAIN_GRACE, &mut task).await {
            Ok(Ok(r)) => r.map_err(|e| ServerError::Other(e.to_string())),
            Ok(Err(join)) => Err(ServerError::Other(join.to_string())),
            Err(_) => {
                tracing::warn!(
                    grace_secs = DRAIN_GRACE.as_secs(),
                    "in-flight RPCs did not finish in time; stopping anyway"
                );
                task.abort();
                Ok(())
            }
        };
        self.engine.close().await;
        tracing::info!("stopped");
        result
    }
}

/// Opens (or creates) the database, recovers the wheel, binds and starts serving.
/// Returns once the port is bound and the service accepts requests.
///
/// # Errors
/// The database is unusable or the address cannot be bound.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let started = std::time::Instant::now();
    let (engine, recovery) = Engine::open(
        &config.db_path,
        config.synchronous,
        config.clock.clone(),
        config.limits.clone(),
        config.dispatch.clone(),
    )
    .await?;
    tracing::info!(
        db = %config.db_path.display(),
        timers = recovery.timers,
        overdue = recovery.overdue,
        leased = recovery.leased,
        millis = started.elapsed().as_millis() as u64,
        "recovered"
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;

    let streams = CancellationToken::new();
    // The gRPC transport limit stays well above the body limit, so an oversize body is
    // INVALID_ARGUMENT naming the field, not RESOURCE_EXHAUSTED from the transport.
    let max_message = config
        .limits
        .max_message_bytes
        .max(config.limits.min_message_bytes());
    let auth = Auth::new(config.tokens.clone());
    let scheduler = pb::scheduler_server::SchedulerServer::new(SchedulerService::new(
        engine.clone(),
        streams.clone(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let scheduler = InterceptedService::new(scheduler, auth.interceptor(auth::Service::Scheduler));

    let dispatcher = Dispatcher::start(engine.clone(), streams.clone());
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let gauges = Arc::new(ServerGauges {
                engine: engine.clone(),
                stats: dispatcher.stats.clone(),
            });
            let bound = metrics::serve(addr, gauges, streams.clone())
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            tracing::info!(addr = %bound, "serving metrics");
            Some(bound)
        }
        None => None,
    };
    engine.spawn_event_pruner(config.event_retention_ms, streams.clone());
    let dispatch =
        pb::dispatch_server::DispatchServer::new(DispatchService::new(dispatcher, streams.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
    let dispatch = InterceptedService::new(dispatch, auth.interceptor(auth::Service::Dispatch));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::scheduler_server::SchedulerServer<SchedulerService>>()
        .await;
    health_reporter
        .set_serving::<pb::dispatch_server::DispatchServer<DispatchService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Other(e.to_string()))?;

    let (stop, stopped) = oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ServerError::Other(format!("tls: {}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServerError::Other(format!("tls: {e}")))?;
    }
    let router = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(scheduler)
        .add_service(dispatch);
    // TCP_NODELAY: without it, a response that follows a small one waits for the
    // client's delayed ACK (~40 ms on Linux), which capped 64 unary clients at ~1.3k/s.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stopped.await;
    }));
    tracing::info!(addr = %local_addr, "serving");
    Ok(RunningServer {
        local_addr,
        metrics_addr,
        engine,
        stop,
        streams,
        task,
    })
}
