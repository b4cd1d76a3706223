//! Connector tests: a connector (the library's runner: chat, email) as a task of the
//! test, stopped by [`ConnectorTask::stop`], and a real HTTP webhook on 127.0.0.1 that
//! reports every request it gets.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A connector running as a task.
pub struct ConnectorTask {
    /// Cancelled: the connector stops (after the sends in progress).
    pub shutdown: CancellationToken,
    task: JoinHandle<sendlater::connector::Result<()>>,
}

impl ConnectorTask {
    /// Runs `run` (given the shutdown token) as a task. Logs on request:
    /// `RUST_LOG=sendlater=debug cargo test --test NAME`.
    pub fn spawn<F>(run: impl FnOnce(CancellationToken) -> F) -> ConnectorTask
    where
        F: Future<Output = sendlater::connector::Result<()>> + Send + 'static,
    {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(shutdown.clone()));
        ConnectorTask { shutdown, task }
    }

    /// Stops the connector and asserts it stopped cleanly within 10 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the connector stops within 10 s")
            .expect("no panic")
            .expect("a clean stop");
    }
}

/// A webhook on 127.0.0.1:0: every request goes to the `answer` it was started with,
/// which reports it (as an `H`) on the channel it is given and makes the response.
/// Counts the requests it holds at once; stops when dropped.
pub struct Webhook<H> {
    pub addr: SocketAddr,
    /// What `answer` reported, in order.
    pub hits: mpsc::UnboundedReceiver<H>,
    /// Highest number of requests held at once (from their arrival until their
    /// response is made, before it leaves: the connector's next request can only
    /// follow it).
    pub max_held: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl<H: Send + 'static> Webhook<H> {
    pub async fn start<F, Fut>(answer: F) -> Webhook<H>
    where
        F: Fn(Request<Incoming>, mpsc::UnboundedSender<H>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, hits) = mpsc::unbounded_channel();
        let held = Arc::new(AtomicUsize::new(0));
        let max_held = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let max = Arc::clone(&max_held);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => a.expect("accept"),
                    () = stopped.cancelled() => return,
                };
                let (tx, answer) = (tx.clone(), answer.clone());
                let (held, max) = (Arc::clone(&held), Arc::clone(&max));
                let service = service_fn(move |req: Request<Incoming>| {
                    let answer = answer(req, tx.clone());
                    let (held, max) = (Arc::clone(&held), Arc::clone(&max));
                    async move {
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(now, Ordering::SeqCst);
                        let response = answer.await;
                        held.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(response)
                    }
                });
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let conn =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = stopped.cancelled() => {}
                    }
                });
            }
        });
        Webhook {
            addr,
            hits,
            max_held,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/sendlater", self.addr)
    }

    /// The next request's report, within 10 s.
    pub async fn next_hit(&mut self) -> H {
        tokio::time::timeout(Duration::from_secs(10), self.hits.recv())
            .await
            .expect("a webhook request within 10 s")
            .expect("webhook running")
    }
}

impl<H> Drop for Webhook<H> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
