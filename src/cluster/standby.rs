//! A node that owns no partition yet: a standby. It listens where it will serve once
//! granted, and:
//! - forwards every Scheduler (and Cluster) call, unchanged, to the node that owns the
//!   partitions (one hop; the caller's metadata, its token included, goes along, so the
//!   owner checks it as if called directly). Between owners (none known, or nothing
//!   listening at the owner's address: it died) the call waits for the next one until
//!   the caller's deadline ([`FORWARD_WAIT`] without one), then answers UNAVAILABLE; a
//!   call that may have reached an owner is never sent twice;
//! - holds a connector's Dispatch stream open with no jobs, and ends it (UNAVAILABLE,
//!   "reconnect") when it stops: when this node takes the partitions, its connectors
//!   reconnect at once (an established stream resets their backoff) and get its jobs;
//! - says SERVING for the Scheduler (it forwards) and NOT_SERVING for Dispatch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;

use crate::server::ServerError;

/// Where forwarded calls go: the owner's address and a channel to it.
#[derive(Default)]
pub struct Owner {
    current: Mutex<Option<(String, Channel)>>,
    /// Signalled at every look at the leases (`set`), changed or not: what a call
    /// waiting for an owner it can reach waits on.
    looked: tokio::sync::Notify,
}

impl Owner {
    /// The owner is now at `address` (`host:port`), or unknown.
    pub fn set(&self, address: Option<&str>) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match address {
            None => *cur = None,
            Some(a) if cur.as_ref().is_some_and(|(have, _)| have == a) => {}
            Some(a) => match Endpoint::from_shared(format!("http://{a}")) {
                Ok(e) => {
                    tracing::info!(owner = %a, "forwarding Scheduler calls to the owner");
                    *cur = Some((a.to_owned(), e.connect_lazy()));
                }
                Err(e) => {
                    tracing::warn!(owner = %a, error = %e, "the owner's address is not usable");
                    *cur = None;
                }
            },
        }
        drop(cur);
        self.looked.notify_waiters();
    }

    fn get(&self) -> Option<(String, Channel)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The standby's server.
pub struct Standby {
    pub local_addr: SocketAddr,
    /// The listening socket, handed to the full server by [`Standby::stop`].
    kept: std::net::TcpListener,
    pub owner: Arc<Owner>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

fn refuse(code: tonic::Code, message: impl Into<String>) -> axum::response::Response {
    tonic::Status::new(code, message).into_http()
}

/// What the standby's handler shares.
struct Shared {
    owner: Arc<Owner>,
    stop: CancellationToken,
    /// Calls forwarded (answered by an owner).
    forwarded: AtomicU64,
    /// Forwards that found nothing listening at the owner's address.
    refused: AtomicU64,
    /// Times a call waited for an owner that can be reached.
    waiting: AtomicU64,
}

/// A Dispatch stream held open with no jobs until the standby stops, then ended with
/// UNAVAILABLE so the connector reconnects (to this address, served by the owner now).
fn hold_dispatch(stop: CancellationToken) -> axum::response::Response {
    let end = futures_util::stream::once(async move {
        stop.cancelled_owned().await;
        let mut trailers = axum::http::HeaderMap::new();
        trailers.insert("grpc-status", axum::http::HeaderValue::from_static("14"));
        trailers.insert(
            "grpc-message",
            axum::http::HeaderValue::from_static("the%20node%20changed%20role;%20reconnect"),
        );
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::trailers(trailers))
    });
    let body = axum::body::Body::new(http_body_util::StreamBody::new(end));
    let mut resp = axum::response::Response::new(body);
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// The longest a forwarded call waits for an owner that can be reached, when the
/// caller set no `grpc-timeout`.
pub const FORWARD_WAIT: Duration = Duration::from_secs(10);

/// The largest request body forwarded (Scheduler requests are single messages, bounded
/// far below this by the owner's own limit).
const MAX_FORWARDED_BODY: usize = 64 << 20;

/// The caller's deadline from its `grpc-timeout` header (`<digits><unit>`), if any.
pub(crate) fn grpc_timeout(headers: &axum::http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether the call failed before reaching the owner: nothing listens at its address
/// (it died; the next owner is not known yet). Only then is a forward tried again: a
/// call that may have reached the owner is never sent twice.
pub(crate) fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let path = req.uri().path().to_owned();
    if path == "/sendlater.v1.Dispatch/Connect" {
        return hold_dispatch(shared.stop.clone());
    }
    if !(path.starts_with("/sendlater.v1.Scheduler/") || path.starts_with("/sendlater.v1.Cluster/"))
    {
        return refuse(
            tonic::Code::Unavailable,
            "this node is a standby: it owns no partition and hands out no jobs; \
             the owner does",
        );
    }
    let deadline = Instant::now() + grpc_timeout(req.headers()).unwrap_or(FORWARD_WAIT);
    let (parts, body) = req.into_parts();
    // Kept whole so the call can be sent again to the next owner when the first cannot
    // be reached.
    let body = match axum::body::to_bytes(body, MAX_FORWARDED_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                tonic::Code::InvalidArgument,
                format!("the request cannot be read: {e}"),
            )
        }
    };
    let pq = parts
        .uri
        .path_and_query()
        .map_or(path.clone(), |pq| pq.as_str().to_owned());
    let mut why = "no node owns the partitions now (a failover is under way)".to_owned();
    loop {
        // Registered before the look at the owner, so a `set` just after it is not
        // missed.
        let looked = shared.owner.looked.notified();
        tokio::pin!(looked);
        looked.as_mut().enable();
        if let Some((address, mut channel)) = shared.owner.get() {
            let mut req = axum::http::Request::new(tonic::body::Body::new(
                http_body_util::Full::new(body.clone()),
            ));
            *req.method_mut() = parts.method.clone();
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers.clone();
            *req.uri_mut() = match format!("http://{address}{pq}").parse() {
                Ok(u) => u,
                Err(e) => return refuse(tonic::Code::Internal, format!("forwarding: {e}")),
            };
            let sent = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(req).await
            };
            match sent.await {
                Ok(resp) => {
                    shared.forwarded.fetch_add(1, Ordering::Relaxed);
                    return resp.map(axum::body::Body::new);
                }
                Err(e) if refused(&e) => {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    why = format!("the owner {address} cannot be reached: {e}");
                }
                Err(e) => {
                    return refuse(
                        tonic::Code::Unavailable,
                        format!("forwarding to the owner {address} failed: {e}; try again"),
                    )
                }
            }
        }
        if Instant::now() >= deadline {
            return refuse(
                tonic::Code::Unavailable,
                format!("{why}; try again (request_id makes it safe)"),
            );
        }
        shared.waiting.fetch_add(1, Ordering::Relaxed);
        // Until the next look at the leases (twice a second on a node), or the deadline.
        tokio::select! {
            () = looked => {}
            () = tokio::time::sleep_until(deadline.into()) => {}
            () = shared.stop.cancelled() => {
                return refuse(
                    tonic::Code::Unavailable,
                    "this node changed role; try again (request_id makes it safe)",
                );
            }
        }
    }
}

impl Standby {
    /// Binds `listen` and serves as a standby until [`Standby::stop`].
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start(listen: SocketAddr) -> Result<Standby, ServerError> {
        let bind = |source| ServerError::Bind {
            addr: listen,
            source,
        };
        let std_listener = std::net::TcpListener::bind(listen).map_err(bind)?;
        // A second handle on the listening socket, kept for the full server: the
        // socket outlives the standby's server, so nothing is refused at the takeover
        // (connections arriving meanwhile wait in its backlog).
        let kept = std_listener.try_clone().map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let listener = TcpListener::from_std(std_listener).map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        let owner = Arc::new(Owner::default());
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("sendlater.v1.Scheduler", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("sendlater.v1.Dispatch", ServingStatus::NotServing)
            .await;
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            owner: owner.clone(),
            stop: stop.clone(),
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        });
        let router = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let routes = tonic::service::Routes::from(router).add_service(health);
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
        );
        tracing::info!(addr = %local_addr, "standby: forwarding to the owner until granted partitions");
        Ok(Standby {
            local_addr,
            kept,
            owner,
            shared,
            stop,
            task,
        })
    }

    /// Calls forwarded so far (answered by an owner).
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Forwards that found nothing listening at the owner's address, so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Times a call waited for an owner that can be reached, so far.
    pub fn waits(&self) -> u64 {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// Stops serving; calls under way are cut (their callers retry). Returns the
    /// listening socket, still open: connections made from now on wait in its backlog
    /// for whoever accepts on it next (the full server, `server::start_on`).
    pub async fn stop(self) -> std::net::TcpListener {
        self.stop.cancel();
        // Streams forwarded (WatchEvents) would hold a graceful stop: bounded, then cut.
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = task.await;
        }
        self.kept
    }
}
