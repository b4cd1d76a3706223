//! Starts and stops the whole service: store, engine, gRPC server on one port.

use std::net::SocketAddr;

use crate::config::ServerConfig;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("storage: {0}")]
    Store(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Other(String),
}

/// A running server; dropping it does not stop it, call [`RunningServer::shutdown`].
pub struct RunningServer {
    local_addr: SocketAddr,
}

impl RunningServer {
    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR`, for building a tonic `Channel`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Graceful stop: stop accepting, finish in-flight RPCs, commit, close streams.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        todo!()
    }
}

/// Opens (or creates) the database, recovers the wheel, binds and starts serving.
/// Returns once the port is bound and the service accepts requests.
pub async fn start(_config: ServerConfig) -> Result<RunningServer, ServerError> {
    todo!()
}
