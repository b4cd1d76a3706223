//! The connector runner: one Dispatch stream per server, each kept open across
//! failures, all feeding one pool of sends.
//!
//! A connector may be given several servers (the nodes of a cluster: each hands out
//! only the jobs of the partitions it owns). For each distinct server the runner keeps a
//! *link*: a session connects, sends Hello, then loops over three sources: delivery jobs
//! from that server (each started as a task on the link's `JoinSet`), outcomes of the
//! link's finished tasks (forwarded to that server as Ack/Nack) and the shutdown token.
//! When the stream ends or fails the link sleeps an exponential backoff with jitter
//! (`reconnect_min` .. `reconnect_max`, reset once a session was established) and opens
//! a new one. A node ends its streams when its partitions change (it restarts its
//! server over the new set), so the connector is back at once (the stream was
//! established). A server that answers Connect itself with a status worth retrying
//! (UNAVAILABLE: not ready to hand out jobs) is asked again within [`DECLINED_RETRY`], however long it declined, rather
//! than after the long backoff of a server that cannot be reached. Links are
//! independent: a server that is down only keeps its own link in backoff while the
//! others deliver.
//!
//! An answer goes back to the server its job came from: the server counts an answer
//! only on the stream that holds the job. Each link has its own outcome queue that
//! outlives its sessions, so a send that finishes while the stream is down is answered
//! on that server's next stream (where the server ignores it: it took the job back when
//! the stream dropped; the at-least-once rule covers the repeat).
//!
//! Shared credit: every stream declares the full `max_in_flight` in its Hello, and one
//! semaphore of `max_in_flight` permits, shared by all links and all their sessions,
//! bounds the sends running at once. So the sends in progress never exceed
//! `max_in_flight` in total, however the due work is spread over the servers (one node
//! holding all of it still gets the whole pool), and a reconnect never doubles the
//! concurrency. The price: with `K` servers up to `K * max_in_flight` jobs may be leased
//! to this connector at once, and a job beyond the pool waits (first come, first
//! served) for a send to finish. A job may wait behind `K - 1` jobs per slot, so it
//! starts within the server's lease (`lease_secs`) while one send takes well under
//! `lease_secs / K`. A job still waiting when its stream drops is not sent at all (the
//! server has taken it back).
//!
//! Shutdown: every link stops reading jobs, drops the jobs still waiting for a slot,
//! waits up to `shutdown_grace` for its running sends and forwards their answers, then
//! closes its half of the stream and waits briefly for the server to close the other,
//! so the answers are read before the connection goes away. Jobs left unanswered are
//! re-leased by the server. If a stream is down when shutdown comes, that link's running
//! sends are abandoned at once (their jobs are already back with the server).
//!
//! Refusals that retrying cannot fix (UNAUTHENTICATED, PERMISSION_DENIED,
//! INVALID_ARGUMENT, UNIMPLEMENTED on Connect) from any server stop every link (as a
//! shutdown) and end the runner with an error.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::{Id, JoinSet};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};
use tracing::Instrument;

use super::{ConnectorError, Result, SendError, Sender};
use crate::pb;
use crate::pb::connector_message::Msg;

/// The server's bounds on `max_in_flight` (API.md).
const MAX_IN_FLIGHT: u32 = 10_000;

/// The longest wait before asking again a server that answered Connect with a status
/// worth retrying (UNAVAILABLE: it is up but hands out no jobs yet).
pub const DECLINED_RETRY: Duration = Duration::from_secs(1);

/// How long, after closing our half at shutdown, to wait for the server to close its.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Where and how a connector talks to the sendlater server.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// gRPC URLs of the servers (the nodes of a cluster), e.g.
    /// `http://127.0.0.1:50051`, or `https://` for a server with `[tls]`. At least one;
    /// repeats (after trimming blanks and a trailing `/`) count once.
    pub servers: Vec<String>,
    /// PEM file of the CA (or the certificate itself) that an `https://` server's
    /// certificate must chain to; the system's roots when `None`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Bearer token sent as `authorization: Bearer <token>`; `None` for an open server.
    pub token: Option<String>,
    /// Names this connector in the server's logs; not empty.
    pub connector_id: String,
    /// Jobs processed at once, across all servers; 1..=10000. Also the credit each
    /// stream declares.
    pub max_in_flight: u32,
    /// First reconnect delay; doubled after each failed attempt, up to `reconnect_max`.
    /// Each actual delay is jittered to between half and all of the current value.
    pub reconnect_min: Duration,
    /// Upper bound of the reconnect delay; `>= reconnect_min`.
    pub reconnect_max: Duration,
    /// At shutdown, how long running sends may take to finish and be answered.
    pub shutdown_grace: Duration,
}

impl RunnerConfig {
    /// Defaults for one `server`: no token, connector id `connector-<pid>`, 16 in flight,
    /// reconnect 100 ms .. 30 s, 10 s shutdown grace.
    pub fn new(server: impl Into<String>) -> RunnerConfig {
        RunnerConfig {
            servers: vec![server.into()],
            ca_file: None,
            token: None,
            connector_id: format!("connector-{}", std::process::id()),
            max_in_flight: 16,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// The servers to connect to: each trimmed (blanks and one trailing `/`), the
    /// first of any repeats kept, in the given order.
    pub fn distinct_servers(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.servers
            .iter()
            .map(|s| {
                let s = s.trim();
                s.strip_suffix('/').unwrap_or(s).to_owned()
            })
            .filter(|s| seen.insert(s.clone()))
            .collect()
    }
}

/// Runs `sender` against the servers until `shutdown` is cancelled.
///
/// Connection failures and dropped streams are retried for ever with backoff, per
/// server; only a bad configuration or a refusal from a server ends the run early.
///
/// # Errors
/// [`ConnectorError::Config`] for an unusable setting (checked before connecting);
/// [`ConnectorError::Refused`] when a server rejects the connector.
pub async fn run<S: Sender>(
    config: RunnerConfig,
    sender: Arc<S>,
    shutdown: CancellationToken,
) -> Result<()> {
    let endpoints = endpoints(&config)?;
    let auth = auth(config.token.as_deref())?;
    let hello = pb::Hello {
        connector_id: config.connector_id.clone(),
        channels: vec![sender.channel() as i32],
        max_in_flight: config.max_in_flight,
    };
    let permits = Arc::new(Semaphore::new(config.max_in_flight as usize));
    // Cancelled by the caller's shutdown, or by a refusal (which stops every link).
    let stop = shutdown.child_token();
    let span = tracing::info_span!("connector", connector_id = %config.connector_id);
    tracing::info!(parent: &span, servers = endpoints.len(), max_in_flight = config.max_in_flight, "connector starting");
    let mut links = JoinSet::new();
    for (server, endpoint) in endpoints {
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        let link = Link {
            hello: hello.clone(),
            sender: Arc::clone(&sender),
            auth: auth.clone(),
            shutdown: stop.clone(),
            grace: config.shutdown_grace,
            permits: Arc::clone(&permits),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            outcomes_tx,
            outcomes_rx,
            carried: Vec::new(),
        };
        let backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
        let link_span = tracing::info_span!(parent: &span, "link", server = %server);
        links.spawn(link.run(endpoint, backoff).instrument(link_span));
    }
    let mut refused = None;
    while let Some(joined) = links.join_next().await {
        match joined {
            Ok(LinkEnd::Shutdown) => {}
            Ok(LinkEnd::Refused(status)) => {
                stop.cancel();
                refused.get_or_insert(status);
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => {
                tracing::error!(parent: &span, error = %e, "a link task was cancelled");
                stop.cancel();
            }
        }
    }
    tracing::info!(parent: &span, "connector stopped");
    match refused {
        Some(status) => Err(ConnectorError::Refused(status)),
        None => Ok(()),
    }
}

/// Checks the runner settings and builds one gRPC endpoint per distinct server.
fn endpoints(config: &RunnerConfig) -> Result<Vec<(String, Endpoint)>> {
    let servers = config.distinct_servers();
    if servers.is_empty() {
        return Err(ConnectorError::Config(
            "server: at least one server URL is required".into(),
        ));
    }
    servers
        .into_iter()
        .map(|server| endpoint(config, &server).map(|e| (server, e)))
        .collect()
}

/// Checks the runner settings and builds the gRPC endpoint of `server`.
fn endpoint(config: &RunnerConfig, server: &str) -> Result<Endpoint> {
    if !(1..=MAX_IN_FLIGHT).contains(&config.max_in_flight) {
        return Err(ConnectorError::Config(format!(
            "max_in_flight: must be 1..={MAX_IN_FLIGHT}, got {}",
            config.max_in_flight
        )));
    }
    if config.connector_id.is_empty() {
        return Err(ConnectorError::Config("connector_id: is required".into()));
    }
    if config.reconnect_min.is_zero() || config.reconnect_max < config.reconnect_min {
        return Err(ConnectorError::Config(
            "reconnect: need 0 < reconnect_min <= reconnect_max".into(),
        ));
    }
    let https = server.starts_with("https://");
    if !https && !server.starts_with("http://") {
        return Err(ConnectorError::Config(format!(
            "server: {server:?} must be an http:// or https:// URL"
        )));
    }
    let mut endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| ConnectorError::Config(format!("server: {server:?}: {e}")))?;
    match (&config.ca_file, https) {
        (Some(_), false) => {
            return Err(ConnectorError::Config(format!(
                "ca-file: only for an https:// server, and --server is {server:?}"
            )))
        }
        (ca_file, true) => {
            let tls = match ca_file {
                Some(path) => ClientTlsConfig::new().ca_certificate(ca_certificate(path)?),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ConnectorError::Config(format!("server: {e}")))?;
        }
        (None, false) => {}
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// The CA certificate(s) of `path`, checked to hold at least one PEM certificate.
fn ca_certificate(path: &std::path::Path) -> Result<Certificate> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |m: &dyn std::fmt::Display| {
        ConnectorError::Config(format!("ca-file: {}: {m}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| bad(&e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in it"));
    }
    Ok(Certificate::from_pem(pem))
}

fn auth(token: Option<&str>) -> Result<Option<MetadataValue<Ascii>>> {
    token
        .map(|t| {
            MetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| ConnectorError::Config("token: must be printable ASCII".into()))
        })
        .transpose()
}

/// How a link ended.
enum LinkEnd {
    /// The shutdown token fired.
    Shutdown,
    /// The server refused us for a reason retrying cannot fix.
    Refused(Status),
}

/// How a session ended.
enum SessionEnd {
    /// The shutdown token fired; answers were flushed as far as the grace allowed.
    Shutdown,
    /// The server refused us for a reason retrying cannot fix.
    Refused(Status),
    /// The connection or stream failed; reconnect after a backoff.
    Lost { reached: Reached, reason: String },
}

/// How far a lost session got; decides the wait before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    /// No connection (refused, unreachable, timed out): exponential backoff.
    Nothing,
    /// The server answered Connect with a status worth retrying (up, but no jobs
    /// yet): the backoff, but never longer than [`DECLINED_RETRY`], and it goes on
    /// from there (a node that then rebinds its port refuses a connection for a
    /// moment: that waits about a second, not the long
    /// backoff of a dead server).
    Declined,
    /// The stream was open (Hello accepted) before it was lost: the backoff restarts.
    Established,
}

/// The wait before the next session after one that got as far as `reached`; `unit`
/// in [0, 1) places the jitter.
fn retry_delay(backoff: &mut Backoff, reached: Reached, unit: f64) -> Duration {
    match reached {
        Reached::Nothing => backoff.next_delay(unit),
        Reached::Declined => {
            let delay = backoff.next_delay(unit).min(DECLINED_RETRY);
            backoff.cap(DECLINED_RETRY);
            delay
        }
        Reached::Established => {
            backoff.reset();
            backoff.next_delay(unit)
        }
    }
}

/// One server's link: state that outlives its sessions.
struct Link<S> {
    hello: pb::Hello,
    sender: Arc<S>,
    auth: Option<MetadataValue<Ascii>>,
    shutdown: CancellationToken,
    grace: Duration,
    /// Bounds the sends running at once to `max_in_flight`, across links and sessions.
    permits: Arc<Semaphore>,
    /// This link's sends, running or waiting for a permit; each sends its answer on
    /// `outcomes_tx` before it ends.
    tasks: JoinSet<()>,
    /// Job id of every task in `tasks`, to answer for a task that panicked.
    running: HashMap<Id, String>,
    /// Answers of this link's jobs: they go to this server only.
    outcomes_tx: mpsc::UnboundedSender<pb::ConnectorMessage>,
    outcomes_rx: mpsc::UnboundedReceiver<pb::ConnectorMessage>,
    /// Answers a dead stream refused; sent first on the next one.
    carried: Vec<pb::ConnectorMessage>,
}

impl<S: Sender> Link<S> {
    /// Sessions one after another, with backoff between them, until shutdown or a
    /// refusal. Dropping the link at the end aborts the sends still running.
    async fn run(mut self, endpoint: Endpoint, mut backoff: Backoff) -> LinkEnd {
        loop {
            // A job still waiting for a permit when its session ends is not sent.
            let session = CancellationToken::new();
            let end = self.session(&endpoint, &session).await;
            session.cancel();
            match end {
                SessionEnd::Shutdown => return LinkEnd::Shutdown,
                SessionEnd::Refused(status) => {
                    tracing::error!(code = ?status.code(), message = status.message(), "server refused the connector");
                    return LinkEnd::Refused(status);
                }
                SessionEnd::Lost { reached, reason } => {
                    let delay = retry_delay(&mut backoff, reached, random_unit());
                    tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "dispatch stream lost; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => return LinkEnd::Shutdown,
                    }
                }
            }
        }
    }

    /// One Dispatch stream; `session` is cancelled when it ends (jobs waiting for a
    /// permit drop out).
    async fn session(&mut self, endpoint: &Endpoint, session: &CancellationToken) -> SessionEnd {
        let channel = tokio::select! {
            c = endpoint.connect() => c,
            () = self.shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                return SessionEnd::Lost {
                    reached: Reached::Nothing,
                    reason: format!("connect: {e}"),
                }
            }
        };
        let mut client = pb::dispatch_client::DispatchClient::new(channel);
        let (tx, rx) = mpsc::unbounded_channel();
        let hello = pb::ConnectorMessage {
            msg: Some(Msg::Hello(self.hello.clone())),
        };
        tx.send(hello).expect("the receiver is alive: we hold it");
        for msg in self.carried.drain(..) {
            tx.send(msg).expect("the receiver is alive: we hold it");
        }
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
        if let Some(auth) = &self.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        let response = tokio::select! {
            r = client.connect(request) => r,
            () = self.shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        let mut jobs = match response {
            Ok(r) => r.into_inner(),
            Err(status) if is_refusal(status.code()) => return SessionEnd::Refused(status),
            Err(status) => {
                return SessionEnd::Lost {
                    reached: Reached::Declined,
                    reason: format!("connect: {status}"),
                }
            }
        };
        tracing::info!(
            max_in_flight = self.hello.max_in_flight,
            "dispatch stream open"
        );
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    session.cancel();
                    self.drain(tx, jobs).await;
                    return SessionEnd::Shutdown;
                }
                Some(msg) = self.outcomes_rx.recv() => {
                    if let Err(mpsc::error::SendError(msg)) = tx.send(msg) {
                        self.carried.push(msg);
                        return lost("the request stream closed");
                    }
                }
                Some(joined) = self.tasks.join_next_with_id() => self.reap(joined),
                m = jobs.message() => match m {
                    Ok(Some(job)) => self.start(job, session.clone()),
                    Ok(None) => return lost("the server closed the stream"),
                    Err(status) => return lost(&format!("stream: {status}")),
                },
            }
        }
    }

    /// Starts one send as a task that first waits for a permit of the shared pool
    /// (giving up, unanswered, if `session` ends first); its answer goes to
    /// `outcomes_tx`.
    fn start(&mut self, job: pb::DeliveryJob, session: CancellationToken) {
        let item_id = job
            .item
            .as_ref()
            .map(|i| i.item_id.clone())
            .unwrap_or_default();
        let span = tracing::info_span!("delivery", item_id = %item_id, attempt = job.attempt, job_id = %job.job_id);
        let job_id = job.job_id.clone();
        let sender = Arc::clone(&self.sender);
        let permits = Arc::clone(&self.permits);
        let out = self.outcomes_tx.clone();
        let task = async move {
            let _permit = tokio::select! {
                biased;
                () = session.cancelled() => {
                    tracing::debug!("not sent: the stream ended while the job waited for a free slot");
                    return;
                }
                permit = permits.acquire_owned() => match permit {
                    Ok(p) => p,
                    // Never closed; if it were, nothing could be sent.
                    Err(_) => return,
                },
            };
            let result = if job.item.is_none() {
                Err(SendError::permanent("delivery job without an item"))
            } else {
                sender.send(&job).await
            };
            let msg = match result {
                Ok(provider_message_id) => {
                    tracing::info!(%provider_message_id, "sent");
                    ack(&job.job_id, provider_message_id)
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, permanent = e.permanent, "send failed");
                    nack(&job.job_id, &e)
                }
            };
            // Fails only when the runner is gone, and then nobody can answer anyway.
            let _ = out.send(msg);
        };
        let handle = self.tasks.spawn(task.instrument(span));
        self.running.insert(handle.id(), job_id);
    }

    /// Forgets a finished task; answers a transient Nack for one that panicked.
    fn reap(&mut self, joined: std::result::Result<(Id, ()), tokio::task::JoinError>) {
        let (id, failure) = match joined {
            Ok((id, ())) => (id, None),
            Err(e) => (e.id(), Some(e)),
        };
        let job_id = self.running.remove(&id);
        if let (Some(e), Some(job_id)) = (failure, job_id) {
            if e.is_panic() {
                tracing::error!(%job_id, "the sender panicked");
                let _ = self.outcomes_tx.send(nack(
                    &job_id,
                    &SendError::transient("connector error: the sender panicked"),
                ));
            }
        }
    }

    /// Shutdown: let running sends finish within the grace, forward their answers,
    /// close our half and give the server a moment to read them.
    async fn drain(
        &mut self,
        tx: mpsc::UnboundedSender<pb::ConnectorMessage>,
        mut jobs: Streaming<pb::DeliveryJob>,
    ) {
        let deadline = tokio::time::sleep(self.grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => {
                    tracing::warn!(abandoned = self.tasks.len(), "shutdown grace over; unfinished sends will be redelivered");
                    break;
                }
                Some(msg) = self.outcomes_rx.recv() => { let _ = tx.send(msg); }
                joined = self.tasks.join_next_with_id() => match joined {
                    Some(joined) => self.reap(joined),
                    None => break,
                },
            }
        }
        while let Ok(msg) = self.outcomes_rx.try_recv() {
            let _ = tx.send(msg);
        }
        self.tasks.abort_all();
        drop(tx);
        // The server ends its side once it has read ours to the end.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Ok(Some(_)) = jobs.message().await {}
        })
        .await;
        tracing::info!("dispatch stream closed");
    }
}

fn lost(reason: &str) -> SessionEnd {
    SessionEnd::Lost {
        reached: Reached::Established,
        reason: reason.to_owned(),
    }
}

/// Codes on Connect that mean "fix the configuration", not "try again".
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::Unimplemented
    )
}

fn ack(job_id: &str, provider_message_id: String) -> pb::ConnectorMessage {
    pb::ConnectorMessage {
        msg: Some(Msg::Ack(pb::Ack {
            job_id: job_id.to_owned(),
            provider_message_id,
        })),
    }
}

fn nack(job_id: &str, e: &SendError) -> pb::ConnectorMessage {
    pb::ConnectorMessage {
        msg: Some(Msg::Nack(pb::Nack {
            job_id: job_id.to_owned(),
            error: e.message.clone(),
            permanent: e.permanent,
        })),
    }
}

/// A uniformly distributed value in [0, 1), from the std hasher's random keys.
fn random_unit() -> f64 {
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Exponential reconnect delays: `min`, `2 min`, ... capped at `max`, each jittered.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    /// The un-jittered next delay; at most `max`, and at least `min` unless capped.
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        debug_assert!(min <= max, "backoff min {min:?} > max {max:?}");
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The next delay: between half and all of the current value (`unit` in [0, 1)
    /// picks where), then the current value doubles up to `max`.
    fn next_delay(&mut self, unit: f64) -> Duration {
        let d = self.current.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
        self.current = self.current.saturating_mul(2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    /// Brings the current value down to `cap` (below `min` too: a server that just
    /// answered is not a dead one).
    fn cap(&mut self, cap: Duration) {
        self.current = self.current.min(cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_reconnect_delay_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(ms(100), ms(30_000));
        let full: Vec<Duration> = (0..11).map(|_| b.next_delay(0.999_999)).collect();
        let expect = [
            100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 30_000, 30_000,
        ];
        for (got, want) in full.iter().zip(expect) {
            assert!(
                got.abs_diff(ms(want)) < ms(1),
                "got {got:?}, want ~{want} ms"
            );
        }
        b.reset();
        assert_eq!(b.next_delay(0.0), ms(50));
    }

    #[test]
    fn a_server_that_declines_is_asked_again_within_a_second_however_long_it_declined() {
        let mut b = Backoff::new(ms(100), ms(30_000));
        for round in 0..20 {
            let d = retry_delay(&mut b, Reached::Declined, 0.999_999);
            assert!(d <= DECLINED_RETRY, "round {round}: {d:?}");
        }
        // Refused right after (a node rebinding its port): about a
        // second, not the long backoff; an unreachable server's delay then grows.
        let refused: Vec<Duration> = (0..7)
            .map(|_| retry_delay(&mut b, Reached::Nothing, 0.999_999))
            .collect();
        let expect = [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000];
        for (got, want) in refused.iter().zip(expect) {
            assert!(got.abs_diff(ms(want)) < ms(1), "{refused:?}");
        }
        // A stream that was open starts the backoff again.
        let d = retry_delay(&mut b, Reached::Established, 0.999_999);
        assert!(d.abs_diff(ms(100)) < ms(1), "{d:?}");
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        for i in 0..1000 {
            let mut b = Backoff::new(ms(1000), ms(1000));
            let d = b.next_delay(random_unit());
            assert!(d >= ms(500) && d <= ms(1000), "round {i}: {d:?}");
        }
    }

    #[test]
    fn bad_runner_settings_are_rejected_before_connecting() {
        let mut c = RunnerConfig::new("http://127.0.0.1:1");
        assert!(endpoints(&c).is_ok());
        c.max_in_flight = 0;
        assert!(
            matches!(endpoints(&c), Err(ConnectorError::Config(m)) if m.starts_with("max_in_flight"))
        );
        let mut c = RunnerConfig::new("127.0.0.1:1");
        c.connector_id = "x".into();
        assert!(matches!(endpoints(&c), Err(ConnectorError::Config(m)) if m.starts_with("server")));
        assert!(auth(Some("bad\ntoken")).is_err());
        assert!(auth(Some("good")).unwrap().is_some());
    }

    #[test]
    fn an_https_server_takes_a_ca_file_and_a_bad_one_is_named() {
        let config = |server: &str, ca: Option<&std::path::Path>| {
            let mut c = RunnerConfig::new(server);
            c.ca_file = ca.map(std::path::Path::to_path_buf);
            endpoints(&c).map(|_| ())
        };
        let config_error = |r: Result<()>| match r {
            Err(ConnectorError::Config(m)) => m,
            other => panic!("not a config error: {other:?}"),
        };
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        assert!(config("https://localhost:50051", Some(&ca)).is_ok());
        assert!(config("https://localhost:50051", None).is_ok());
        let m = config_error(config("http://localhost:50051", Some(&ca)));
        assert!(m.starts_with("ca-file: only for an https://"), "{m}");
        let m = config_error(config("https://localhost:50051", Some(&not_pem)));
        assert!(m.starts_with("ca-file: ") && m.contains("not.pem"), "{m}");
        let missing = dir.path().join("missing.pem");
        let m = config_error(config("https://localhost:50051", Some(&missing)));
        assert!(
            m.starts_with("ca-file: ") && m.contains("missing.pem"),
            "{m}"
        );
        let m = config_error(config("ftp://localhost:50051", None));
        assert!(m.starts_with("server: "), "{m}");
    }

    #[test]
    fn the_servers_are_trimmed_and_each_counts_once_in_the_given_order() {
        let mut c = RunnerConfig::new("http://b:1");
        c.servers
            .extend([" http://a:1 ", "http://b:1/", "http://a:1", "https://c:1"].map(String::from));
        assert_eq!(
            c.distinct_servers(),
            ["http://b:1", "http://a:1", "https://c:1"]
        );
        let names: Vec<String> = endpoints(&c).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(names, ["http://b:1", "http://a:1", "https://c:1"]);
    }

    #[test]
    fn every_server_is_checked_and_a_bad_one_is_named() {
        let config_error = |c: &RunnerConfig| match endpoints(c) {
            Err(ConnectorError::Config(m)) => m,
            other => panic!("not a config error: {:?}", other.map(|v| v.len())),
        };
        let mut c = RunnerConfig::new("http://a:1");
        c.servers.push("a:2".into());
        let m = config_error(&c);
        assert!(m.starts_with("server: \"a:2\""), "{m}");
        c.servers = vec!["http://a:1".into(), String::new()];
        let m = config_error(&c);
        assert!(m.starts_with("server: \"\""), "{m}");
        c.servers.clear();
        let m = config_error(&c);
        assert!(m.starts_with("server: at least one"), "{m}");
    }

    #[test]
    fn refusals_are_the_codes_retrying_cannot_fix() {
        assert!(is_refusal(Code::Unauthenticated));
        assert!(is_refusal(Code::PermissionDenied));
        assert!(!is_refusal(Code::Unavailable));
        assert!(!is_refusal(Code::Internal));
    }
}
