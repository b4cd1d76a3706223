//! A node that owns no partition yet: a standby. It listens where it will serve once
//! granted, and:
//! - forwards every Scheduler (and Cluster) call, unchanged, to the node that owns the
//!   partitions (one hop; the caller's metadata, its token included, goes along, so the
//!   owner checks it as if called directly); between owners it answers UNAVAILABLE;
//! - holds a connector's Dispatch stream open with no jobs, and ends it (UNAVAILABLE,
//!   "reconnect") when it stops: when this node takes the partitions, its connectors
//!   reconnect at once (an established stream resets their backoff) and get its jobs;
//! - says SERVING for the Scheduler (it forwards) and NOT_SERVING for Dispatch.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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
    pub owner: Arc<Owner>,
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

async fn forward(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let path = req.uri().path().to_owned();
    if path == "/sendlater.v1.Dispatch/Connect" {
        return hold_dispatch(shared.stop.clone());
    }
    let owner = &shared.owner;
    if !(path.starts_with("/sendlater.v1.Scheduler/") || path.starts_with("/sendlater.v1.Cluster/"))
    {
        return refuse(
            tonic::Code::Unavailable,
            "this node is a standby: it owns no partition and hands out no jobs; \
             the owner does",
        );
    }
    let Some((address, mut channel)) = owner.get() else {
        return refuse(
            tonic::Code::Unavailable,
            "no node owns the partitions now (a failover is under way); try again \
             (request_id makes it safe)",
        );
    };
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or(path.clone(), |pq| pq.as_str().to_owned());
    parts.uri = match format!("http://{address}{pq}").parse() {
        Ok(u) => u,
        Err(e) => return refuse(tonic::Code::Internal, format!("forwarding: {e}")),
    };
    let req = axum::http::Request::from_parts(parts, tonic::body::Body::new(body));
    if let Err(e) = std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
        return refuse(
            tonic::Code::Unavailable,
            format!("the owner {address} cannot be reached: {e}; try again"),
        );
    }
    match channel.call(req).await {
        Ok(resp) => resp.map(axum::body::Body::new),
        Err(e) => refuse(
            tonic::Code::Unavailable,
            format!("forwarding to the owner {address} failed: {e}; try again"),
        ),
    }
}

impl Standby {
    /// Binds `listen` and serves as a standby until [`Standby::stop`].
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start(listen: SocketAddr) -> Result<Standby, ServerError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: listen,
            source,
        })?;
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
        let router = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::new(Shared {
                owner: owner.clone(),
                stop: stop.clone(),
            }));
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
            owner,
            stop,
            task,
        })
    }

    /// Stops listening; calls under way are cut (their callers retry).
    pub async fn stop(self) {
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
    }
}
