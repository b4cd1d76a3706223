//! The router in front of the Scheduler service of a node among several
//! (`design/multi-node.md`, "Scheduler API"): every Scheduler call for an account this
//! server does not own goes to the account's owner.
//!
//! For each `sendlater.v1.Scheduler` call the router reads the request (one gRPC frame)
//! and finds its account: field 1 (`account_id`) of every request message, or the
//! entries' `account_id` of a `ScheduleBatchRequest`. Then:
//! - an account of a partition this server owns (`Ownership::fence.held`), or no valid
//!   account at all (empty, not UTF-8, a malformed message): the local service, with the
//!   same bytes and metadata (it authenticates and validates as it always did);
//! - another partition's account: the whole HTTP/2 request goes to the owner the
//!   [`Placement`] names, the caller's metadata (its token among them) unchanged, so the
//!   owner authenticates it as if called directly; the answer (a stream for
//!   WatchEvents) flows back as it comes. One hop: the forwarded request carries
//!   [`FORWARDED_HEADER`], and a server that receives a forwarded call for an account it
//!   does not own answers UNAVAILABLE with the [`MOVED_HEADER`] marker instead of
//!   forwarding it again: the forwarder then waits for the next refresh of the placement
//!   and tries the owner it names. Nothing listening at the owner's address is tried
//!   again the same way. Both mean the call did not run; any other failure may have run
//!   it and is answered at once (never sent twice). The waits end at the caller's
//!   deadline (`grpc-timeout`, [`FORWARD_WAIT`] without one): UNAVAILABLE, between owners;
//! - `GetDispatchControls` for every account (`*`): the local service, whose controls
//!   follow those `*`'s owner writes (within about a second, `engine::controls`);
//! - a `ScheduleBatch` whose accounts are owned by several nodes is refused
//!   (FAILED_PRECONDITION naming two entries): a batch is committed all or nothing
//!   (API.md), which one node's commit can promise and a split over nodes cannot.
//!
//! Dispatch, Cluster, health and reflection never pass here: each node hands out its own
//! partitions' jobs and answers the cluster's status itself.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{http, Bytes, Service};
use tonic::transport::{Channel, Endpoint};

use super::placement::Placement;
use crate::metrics::Metrics;
use crate::pb;

/// Set on a call one node forwards to another: the receiver answers it or says
/// "moved", never forwards it again.
pub const FORWARDED_HEADER: &str = "x-sendlater-forwarded";

/// On an UNAVAILABLE answer: the receiving server does not own the account's partition
/// (its value) and did not run the call; the forwarder may send it to the new owner.
pub const MOVED_HEADER: &str = "x-sendlater-moved";

/// The service routed (the name tonic routes by).
const SCHEDULER: &str = "sendlater.v1.Scheduler";

/// Bytes of a gRPC frame's header: the compressed flag and the length.
const FRAME_HEADER: usize = 5;

/// What the router knows: the partitions this server owns (fixed for its life), where
/// the others are, and its limits.
pub struct Router {
    partitions: u32,
    owned: BTreeSet<u32>,
    placement: Arc<Placement>,
    /// The largest request message accepted (the server's decoding limit).
    max_message: usize,
    metrics: Arc<Metrics>,
    /// Cancelled when the server stops: calls waiting for an owner end.
    stop: CancellationToken,
    /// A lazily connected channel per owner address.
    channels: Mutex<HashMap<String, Channel>>,
}

impl Router {
    /// A router for a server owning `owned` of `partitions`, forwarding by `placement`.
    pub fn new(
        partitions: u32,
        owned: impl IntoIterator<Item = u32>,
        placement: Arc<Placement>,
        max_message: usize,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Router {
        Router {
            partitions: partitions.max(1),
            owned: owned.into_iter().collect(),
            placement,
            max_message,
            metrics,
            stop,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn partition(&self, account: &str) -> u32 {
        super::partition_of(account, self.partitions)
    }

    fn owns(&self, partition: u32) -> bool {
        self.owned.contains(&partition)
    }

    fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("the owner's address {address} is not usable: {e}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// The Scheduler service behind a [`Router`]; served in its place (same name).
#[derive(Clone)]
pub struct Routed<S> {
    inner: S,
    router: Arc<Router>,
}

impl<S> Routed<S> {
    pub fn new(inner: S, router: Arc<Router>) -> Self {
        Routed { inner, router }
    }
}

impl<S> tonic::server::NamedService for Routed<S> {
    const NAME: &'static str = SCHEDULER;
}

type Answer = http::Response<Body>;

impl<S, B> Service<http::Request<Body>> for Routed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The local service is made ready when a call goes to it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let router = self.router.clone();
        Box::pin(async move { Ok(route(&router, inner, req).await) })
    }
}

fn status(code: tonic::Code, message: impl Into<String>) -> Answer {
    tonic::Status::new(code, message).into_http()
}

/// Where a call goes.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// The local service.
    Local,
    /// The owners of these partitions (none of them this server's).
    Forward(Vec<u32>),
    /// Refused: a batch for accounts owned by different nodes.
    Spanning(String),
}

/// Where a call to `method` with the request message `message` goes.
fn decide(router: &Router, method: &str, message: &[u8]) -> Decision {
    if method == "ScheduleBatch" {
        let Ok(batch) = <pb::ScheduleBatchRequest as prost::Message>::decode(message) else {
            return Decision::Local;
        };
        let accounts: Vec<&str> = batch
            .entries
            .iter()
            .map(|e| e.account_id.as_str())
            .collect();
        return decide_batch(router, &accounts);
    }
    match account_of(message) {
        // Every node holds the controls of every account (it follows `*`'s owner, see
        // `engine::controls`): it answers what it has in force.
        Ok(Some(crate::engine::EVERY_ACCOUNT)) if method == "GetDispatchControls" => {
            Decision::Local
        }
        Ok(Some(account)) if !account.is_empty() => {
            let p = router.partition(account);
            if router.owns(p) {
                Decision::Local
            } else {
                Decision::Forward(vec![p])
            }
        }
        _ => Decision::Local,
    }
}

/// A batch goes where all its valid accounts are owned; accounts owned here and
/// elsewhere are refused (the owners elsewhere are compared when forwarding).
fn decide_batch(router: &Router, accounts: &[&str]) -> Decision {
    let mut local: Option<usize> = None;
    let mut remote: Option<usize> = None;
    let mut partitions = BTreeSet::new();
    for (i, account) in accounts.iter().enumerate() {
        if account.is_empty() {
            continue;
        }
        let p = router.partition(account);
        if router.owns(p) {
            local.get_or_insert(i);
        } else {
            remote.get_or_insert(i);
            partitions.insert(p);
        }
        if let (Some(l), Some(r)) = (local, remote) {
            return Decision::Spanning(spanning_message(
                (l, accounts[l]),
                (r, accounts[r]),
                "is served by this node",
                "by another",
            ));
        }
    }
    if partitions.is_empty() {
        Decision::Local
    } else {
        Decision::Forward(partitions.into_iter().collect())
    }
}

fn spanning_message(a: (usize, &str), b: (usize, &str), first: &str, second: &str) -> String {
    let (a, b) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    format!(
        "entries[{}].account_id {:?} {first} and entries[{}].account_id {:?} {second}: a batch \
         is committed all or nothing by one node, so its accounts must all be served by the \
         same node; send these accounts in separate batches",
        a.0, a.1, b.0, b.1
    )
}

/// One call through the router.
async fn route<S, B>(router: &Router, mut inner: S, req: http::Request<Body>) -> Answer
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    let method = req
        .uri()
        .path()
        .strip_prefix("/sendlater.v1.Scheduler/")
        .unwrap_or_default()
        .to_owned();
    let (parts, body) = req.into_parts();
    // Kept whole: it goes to the local service as it came, or to an owner (and again to
    // the next one when the first did not run it).
    let limit = router.max_message.saturating_add(FRAME_HEADER);
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return status(
                tonic::Code::OutOfRange,
                format!(
                    "the request is larger than this server's limit of {} bytes per message",
                    router.max_message
                ),
            )
        }
        Err(e) => {
            return status(
                tonic::Code::InvalidArgument,
                format!("the request cannot be read: {e}"),
            )
        }
    };
    let decision = match frame(&body, router.max_message) {
        Frame::Message(message) => decide(router, &method, message),
        Frame::Compressed => {
            return status(
                tonic::Code::Unimplemented,
                "compressed requests are not supported: send the message uncompressed \
                 (compressed flag 0, no grpc-encoding)",
            )
        }
        Frame::TooLarge(len) => {
            return status(
                tonic::Code::OutOfRange,
                format!(
                    "the request message has {len} bytes, over this server's limit of {} bytes",
                    router.max_message
                ),
            )
        }
        // The local service answers a malformed request as it always did.
        Frame::Malformed => Decision::Local,
    };
    match decision {
        Decision::Local => {
            let req = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(body)));
            if std::future::poll_fn(|cx| inner.poll_ready(cx))
                .await
                .is_err()
            {
                return status(tonic::Code::Internal, "the Scheduler service is not ready");
            }
            match inner.call(req).await {
                Ok(resp) => resp.map(Body::new),
                Err(never) => match never {},
            }
        }
        Decision::Spanning(why) => status(tonic::Code::FailedPrecondition, why),
        Decision::Forward(partitions) => {
            if parts.headers.contains_key(FORWARDED_HEADER) {
                return moved(router, &method, &partitions);
            }
            forward(router, parts, body, &method, &partitions).await
        }
    }
}

/// UNAVAILABLE with the "moved" marker: a forwarded call for an account this server does
/// not own (the forwarder's placement was out of date). Not run here.
fn moved(router: &Router, method: &str, partitions: &[u32]) -> Answer {
    router.metrics.moved_requests.inc();
    let partition = partitions.first().copied().unwrap_or_default();
    tracing::info!(
        method,
        partition,
        "a forwarded call for a partition this node does not own: answered moved"
    );
    let mut s = tonic::Status::unavailable(format!(
        "moved: this node does not own partition {partition}; the forwarding node tries its \
         new owner"
    ));
    if let Ok(v) = partition.to_string().parse() {
        s.metadata_mut().insert(MOVED_HEADER, v);
    }
    s.into_http()
}

/// Where the owners of `partitions` are now: one address, or why the call cannot go.
enum Owners {
    At(String),
    /// No owner known for this partition (between owners).
    Unknown(u32),
    /// The partitions have different owners (a batch).
    Several(String),
}

fn owners(router: &Router, partitions: &[u32]) -> Owners {
    let mut at: Option<(u32, String)> = None;
    for &p in partitions {
        let Some(address) = router.placement.owner_address(p) else {
            return Owners::Unknown(p);
        };
        match &at {
            None => at = Some((p, address)),
            Some((q, a)) if *a != address => {
                return Owners::Several(format!(
                    "the batch's accounts are served by different nodes (partition {q} by {a}, \
                     partition {p} by {address}): a batch is committed all or nothing by one \
                     node; send the accounts of each node in separate batches"
                ))
            }
            Some(_) => {}
        }
    }
    match at {
        Some((_, a)) => Owners::At(a),
        None => Owners::Unknown(0),
    }
}

/// The most a call waiting for an owner gives back of the caller's timeout, so that the
/// caller gets the router's answer (why it found no owner) before its own deadline ends
/// the call.
const ANSWER_MARGIN: Duration = Duration::from_millis(200);

/// How long a call with the caller's `timeout` may wait for an owner: all of it but a
/// tenth, at most [`ANSWER_MARGIN`].
fn answer_within(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 10).min(ANSWER_MARGIN))
}

/// Sends the call to the owner of `partitions` and returns its answer; waits for the next
/// placement refresh while there is none, it cannot be reached, or it says "moved", until
/// the caller's deadline.
async fn forward(
    router: &Router,
    parts: http::request::Parts,
    body: Bytes,
    method: &str,
    partitions: &[u32],
) -> Answer {
    let timeout = grpc_timeout(&parts.headers);
    let deadline = Instant::now() + timeout.map_or(FORWARD_WAIT, answer_within);
    let had_timeout = timeout.is_some();
    let pq = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let mut why;
    loop {
        // Registered before the placement is read, so a refresh just after is not missed.
        let looked = router.placement.looked().notified();
        tokio::pin!(looked);
        looked.as_mut().enable();
        match owners(router, partitions) {
            Owners::Several(message) => return status(tonic::Code::FailedPrecondition, message),
            Owners::Unknown(p) => why = format!("no node owns partition {p} now"),
            Owners::At(address) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let sent = send(
                    router,
                    &parts,
                    &body,
                    &pq,
                    &address,
                    had_timeout.then_some(remaining),
                );
                // A call out at an owner that does not answer (stopped, cut off) must
                // not hold this server's stop (a node restarting over a new set of
                // partitions): it is cut, and the caller told it may have run.
                let sent = tokio::select! {
                    sent = sent => sent,
                    () = router.stop.cancelled() => {
                        return status(
                            tonic::Code::Unavailable,
                            format!(
                                "this node is stopping while the call was at the owner {address} \
                                 (it may have run); try again (request_id makes it safe)"
                            ),
                        );
                    }
                };
                match sent {
                    Sent::Answered(resp) => {
                        router.metrics.forwarded_requests.inc();
                        tracing::debug!(method, owner = %address, "forwarded to the owner");
                        if method == "WatchEvents" {
                            // A stream held open through this server must not hold its
                            // stop: it ends as a local one does.
                            let stop = router.stop.clone().cancelled_owned();
                            return resp.map(|body| Body::new(EndsAtStop::new(body, stop)));
                        }
                        return resp;
                    }
                    Sent::Moved => {
                        why = format!("the node at {address} no longer owns the partition");
                    }
                    Sent::Refused(e) => why = format!("the owner {address} cannot be reached: {e}"),
                    Sent::Failed(message) => return status(tonic::Code::Unavailable, message),
                }
            }
        }
        if Instant::now() >= deadline {
            tracing::info!(method, why = %why, "no owner answered before the caller's deadline");
            return status(
                tonic::Code::Unavailable,
                format!("{why}: between owners; try again (request_id makes it safe)"),
            );
        }
        // Until the next refresh of the placement (twice a second on a node), or the
        // deadline.
        tokio::select! {
            () = looked => {}
            () = tokio::time::sleep_until(deadline.into()) => {}
            () = router.stop.cancelled() => {
                return status(
                    tonic::Code::Unavailable,
                    "this node is stopping; try again (request_id makes it safe)",
                );
            }
        }
    }
}

/// What one attempt at the owner gave.
enum Sent {
    /// The owner's answer (it ran the call, or refused it for its own reasons).
    Answered(Answer),
    /// The receiver does not own the partition and did not run the call.
    Moved,
    /// Nothing listens at the address: the call did not leave.
    Refused(String),
    /// The call may have reached the owner: not tried again.
    Failed(String),
}

async fn send(
    router: &Router,
    parts: &http::request::Parts,
    body: &Bytes,
    pq: &str,
    address: &str,
    remaining: Option<Duration>,
) -> Sent {
    let mut channel = match router.channel(address) {
        Ok(c) => c,
        Err(e) => return Sent::Refused(e),
    };
    let mut req = http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
    *req.method_mut() = parts.method.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.headers_mut()
        .insert(FORWARDED_HEADER, http::HeaderValue::from_static("1"));
    // The owner gets what is left of the caller's deadline.
    if let Some(left) = remaining {
        let ms = left.as_millis().clamp(1, 99_999_999);
        if let Ok(v) = http::HeaderValue::from_str(&format!("{ms}m")) {
            req.headers_mut().insert("grpc-timeout", v);
        }
    }
    *req.uri_mut() = match format!("http://{address}{pq}").parse() {
        Ok(u) => u,
        Err(e) => return Sent::Failed(format!("forwarding to {address}: {e}")),
    };
    let sent = async {
        std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
        channel.call(req).await
    };
    match sent.await {
        Ok(resp) if resp.headers().contains_key(MOVED_HEADER) => Sent::Moved,
        Ok(resp) => Sent::Answered(resp),
        Err(e) if refused(&e) => Sent::Refused(e.to_string()),
        Err(e) => Sent::Failed(format!(
            "forwarding to the owner {address} failed: {e}; the call may have run there: \
             try again (request_id makes it safe)"
        )),
    }
}

/// A forwarded server stream that ends, between two messages, when this server stops:
/// UNAVAILABLE as a local WatchEvents stream ends at a stop (the caller resumes from its
/// last sequence, at any node). Without it a stream forwarded from the owner would hold
/// the server's graceful stop until the drain grace runs out.
struct EndsAtStop {
    inner: Body,
    stop: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    messages: Messages,
    ended: bool,
}

impl EndsAtStop {
    fn new(inner: Body, stop: tokio_util::sync::WaitForCancellationFutureOwned) -> Self {
        EndsAtStop {
            inner,
            stop: Box::pin(stop),
            messages: Messages::default(),
            ended: false,
        }
    }
}

impl tonic::codegen::Body for EndsAtStop {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.messages.at_boundary() && this.stop.as_mut().poll(cx).is_ready() {
            this.ended = true;
            let mut trailers = http::HeaderMap::new();
            let status =
                tonic::Status::unavailable("server shutting down; resume with after_sequence");
            if status.add_header(&mut trailers).is_err() {
                trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
            }
            return Poll::Ready(Some(Ok(hyper::body::Frame::trailers(trailers))));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.messages.feed(data);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

/// Where a stream of gRPC frames stands: inside a frame's header or message, or between
/// two frames.
#[derive(Debug, Default)]
struct Messages {
    /// The bytes of the next frame's header seen so far (fewer than 5).
    header: Vec<u8>,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl Messages {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if let [_, l0, l1, l2, l3] = self.header[..] {
                self.remaining = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
                self.header.clear();
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.remaining == 0
    }
}

/// A request body as one gRPC frame.
#[derive(Debug, PartialEq, Eq)]
enum Frame<'a> {
    /// An uncompressed message, exactly the frame's length.
    Message(&'a [u8]),
    /// The compressed flag is set.
    Compressed,
    /// The frame says its message has this many bytes, over the limit.
    TooLarge(usize),
    /// Not one well-formed frame (short, truncated, trailing bytes, unknown flag).
    Malformed,
}

fn frame(body: &[u8], max_message: usize) -> Frame<'_> {
    let Some((head, message)) = body.split_first_chunk::<FRAME_HEADER>() else {
        return Frame::Malformed;
    };
    let [flag, l0, l1, l2, l3] = *head;
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    match flag {
        0 if len > max_message => Frame::TooLarge(len),
        0 if len == message.len() => Frame::Message(message),
        1 => Frame::Compressed,
        _ => Frame::Malformed,
    }
}

/// Why a message could not be scanned.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanError {
    /// A varint runs past the end or past 10 bytes.
    Varint,
    /// A field's bytes run past the end.
    Truncated,
    /// Wire type 3, 4 (groups), 6 or 7.
    WireType(u8),
    /// Field 1 is not length-delimited.
    NotAString,
}

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, ScanError> {
    let mut v: u64 = 0;
    for shift in 0..10 {
        let b = *buf.get(*at).ok_or(ScanError::Varint)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << (7 * shift);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ScanError::Varint)
}

/// The bytes of top-level field 1 (length-delimited) of a protobuf message, the last one
/// when it occurs several times (as a decoder keeps); `None` when absent. Understands wire
/// types 0, 1, 2 and 5.
///
/// # Errors
/// The message is malformed, or field 1 is not length-delimited.
pub fn field_one(message: &[u8]) -> Result<Option<&[u8]>, ScanError> {
    let mut at = 0;
    let mut found = None;
    while at < message.len() {
        let key = varint(message, &mut at)?;
        let wire = (key & 7) as u8;
        let field = key >> 3;
        let skip = match wire {
            0 => {
                varint(message, &mut at)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(message, &mut at)?).map_err(|_| ScanError::Truncated)?,
            5 => 4,
            other => return Err(ScanError::WireType(other)),
        };
        let end = at.checked_add(skip).ok_or(ScanError::Truncated)?;
        let bytes = message.get(at..end).ok_or(ScanError::Truncated)?;
        if field == 1 {
            if wire != 2 {
                return Err(ScanError::NotAString);
            }
            found = Some(bytes);
        }
        at = end;
    }
    Ok(found)
}

/// The `account_id` (field 1) of a Scheduler request message; `None` when absent or
/// not UTF-8.
///
/// # Errors
/// As [`field_one`].
pub fn account_of(message: &[u8]) -> Result<Option<&str>, ScanError> {
    Ok(field_one(message)?.and_then(|b| std::str::from_utf8(b).ok()))
}

/// The longest a forwarded call waits for an owner that can be reached, when the
/// caller set no `grpc-timeout`.
pub const FORWARD_WAIT: Duration = Duration::from_secs(10);

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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(message.len() as u32).to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    #[test]
    fn the_account_is_found_in_every_request_shape_whatever_the_field_order() {
        let item = pb::ItemRef {
            account_id: "acme".into(),
            item_id: "42".into(),
        };
        assert_eq!(account_of(&item.encode_to_vec()), Ok(Some("acme")));
        let list = pb::ListScheduledRequest {
            account_id: "globex".into(),
            page_size: 7,
            ticket_id: "T1".into(),
            ..Default::default()
        };
        assert_eq!(account_of(&list.encode_to_vec()), Ok(Some("globex")));
        let watch = pb::WatchEventsRequest {
            account_id: "initech".into(),
            after_sequence: 99,
        };
        assert_eq!(account_of(&watch.encode_to_vec()), Ok(Some("initech")));
        // Other fields of every wire type before field 1, as another encoder may write.
        let mut m = Vec::new();
        m.extend_from_slice(&[2 << 3 | 2, 3, b'x', b'y', b'z']); // 2: string
        m.extend_from_slice(&[3 << 3, 0x96, 0x01]); // 3: varint 150
        m.extend_from_slice(&[4 << 3 | 1, 1, 2, 3, 4, 5, 6, 7, 8]); // 4: fixed64
        m.extend_from_slice(&[5 << 3 | 5, 1, 2, 3, 4]); // 5: fixed32
        m.extend_from_slice(&[(16 << 3 | 2) as u8 | 0x80, 1, 0]); // 16: empty bytes, 2-byte key
        m.extend_from_slice(&[1 << 3 | 2, 4, b'a', b'c', b'm', b'e']);
        m.extend_from_slice(&[6 << 3, 1]);
        assert_eq!(account_of(&m), Ok(Some("acme")));
        // A repeated field 1: the last one counts, as for a decoder.
        let mut twice = m.clone();
        twice.extend_from_slice(&[1 << 3 | 2, 2, b'z', b'z']);
        assert_eq!(account_of(&twice), Ok(Some("zz")));
        // Absent, empty, not UTF-8.
        assert_eq!(account_of(&[3 << 3, 1]), Ok(None));
        assert_eq!(account_of(&[]), Ok(None));
        assert_eq!(account_of(&[1 << 3 | 2, 0]), Ok(Some("")));
        assert_eq!(account_of(&[1 << 3 | 2, 2, 0xff, 0xfe]), Ok(None));
    }

    #[test]
    fn malformed_messages_are_errors_not_accounts() {
        // A varint that never ends, or ends past the buffer.
        assert_eq!(field_one(&[0x80]), Err(ScanError::Varint));
        assert_eq!(field_one(&[3 << 3, 0xff]), Err(ScanError::Varint));
        assert_eq!(field_one(&[0xff; 11]), Err(ScanError::Varint));
        // A length beyond the end; fixed fields cut short.
        assert_eq!(field_one(&[1 << 3 | 2, 5, b'a']), Err(ScanError::Truncated));
        assert_eq!(
            field_one(&[2 << 3 | 2, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(ScanError::Truncated)
        );
        assert_eq!(field_one(&[4 << 3 | 1, 1, 2]), Err(ScanError::Truncated));
        assert_eq!(field_one(&[5 << 3 | 5, 1]), Err(ScanError::Truncated));
        // Groups and unknown wire types; field 1 as a number.
        assert_eq!(field_one(&[2 << 3 | 3]), Err(ScanError::WireType(3)));
        assert_eq!(field_one(&[2 << 3 | 6]), Err(ScanError::WireType(6)));
        assert_eq!(field_one(&[1 << 3, 5]), Err(ScanError::NotAString));
    }

    #[test]
    fn a_request_body_is_one_uncompressed_frame_of_its_stated_length() {
        let m = pb::ItemRef {
            account_id: "acme".into(),
            item_id: "1".into(),
        }
        .encode_to_vec();
        fn frame(b: &[u8]) -> Frame<'_> {
            super::frame(b, 100)
        }
        let body = framed(&m);
        assert_eq!(frame(&body), Frame::Message(&m[..]));
        assert_eq!(frame(&framed(&[])), Frame::Message(&[][..]));
        assert_eq!(frame(&framed(&[0; 101])), Frame::TooLarge(101));
        assert_eq!(frame(&framed(&[0; 100])), Frame::Message(&[0; 100][..]));
        let mut huge = body.clone();
        huge[1] = 0x7f;
        assert_eq!(
            frame(&huge),
            Frame::TooLarge(0x7f00_0000 + m.len()),
            "said, not sent"
        );
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(frame(&compressed), Frame::Compressed);
        let mut flag = body.clone();
        flag[0] = 2;
        assert_eq!(frame(&flag), Frame::Malformed);
        assert_eq!(frame(&body[..4]), Frame::Malformed, "a short header");
        assert_eq!(
            frame(&body[..body.len() - 1]),
            Frame::Malformed,
            "truncated"
        );
        let mut trailing = body.clone();
        trailing.push(0);
        assert_eq!(frame(&trailing), Frame::Malformed, "two frames or junk");
    }

    fn router(owned: &[u32]) -> Router {
        Router::new(
            8,
            owned.iter().copied(),
            Arc::new(Placement::new()),
            4 << 20,
            Arc::new(Metrics::default()),
            CancellationToken::new(),
        )
    }

    /// An account of partition `p` of 8.
    fn account_in(p: u32) -> String {
        (0..)
            .map(|i| format!("account-{i}"))
            .find(|a| super::super::partition_of(a, 8) == p)
            .unwrap_or_default()
    }

    fn batch(accounts: &[&str]) -> Vec<u8> {
        pb::ScheduleBatchRequest {
            entries: accounts
                .iter()
                .map(|a| pb::BatchEntry {
                    account_id: (*a).into(),
                    ..Default::default()
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn calls_go_to_the_local_service_for_owned_or_invalid_accounts_and_to_the_owner_otherwise() {
        let r = router(&[0, 1]);
        let (mine, theirs) = (account_in(1), account_in(5));
        let get = |a: &str| {
            pb::ItemRef {
                account_id: a.into(),
                item_id: "1".into(),
            }
            .encode_to_vec()
        };
        assert_eq!(decide(&r, "GetItem", &get(&mine)), Decision::Local);
        assert_eq!(
            decide(&r, "GetItem", &get(&theirs)),
            Decision::Forward(vec![5])
        );
        assert_eq!(decide(&r, "GetItem", &get("")), Decision::Local);
        assert_eq!(decide(&r, "GetItem", &[0xff]), Decision::Local, "malformed");
        assert_eq!(
            decide(&r, "ScheduleBatch", &batch(&[&theirs, "", &account_in(6)])),
            Decision::Forward(vec![5, 6])
        );
        assert_eq!(
            decide(&r, "ScheduleBatch", &batch(&[&mine, &account_in(0)])),
            Decision::Local
        );
        assert_eq!(decide(&r, "ScheduleBatch", &batch(&[])), Decision::Local);
        match decide(&r, "ScheduleBatch", &batch(&[&mine, "", &theirs])) {
            Decision::Spanning(why) => {
                assert!(why.contains("entries[0].account_id"), "{why}");
                assert!(why.contains("entries[2].account_id"), "{why}");
                assert!(why.contains("all or nothing"), "{why}");
            }
            other => panic!("a batch over two nodes was not refused: {other:?}"),
        }
    }

    #[test]
    fn the_controls_of_every_account_are_read_here_and_changed_at_their_owner() {
        let star = super::super::partition_of(crate::engine::EVERY_ACCOUNT, 8);
        let r = router(&[(star + 1) % 8]);
        let read = pb::GetDispatchControlsRequest {
            account_id: crate::engine::EVERY_ACCOUNT.into(),
        }
        .encode_to_vec();
        assert_eq!(decide(&r, "GetDispatchControls", &read), Decision::Local);
        let change = pb::DispatchControlRequest {
            account_id: crate::engine::EVERY_ACCOUNT.into(),
            channel: pb::Channel::Email as i32,
        }
        .encode_to_vec();
        assert_eq!(
            decide(&r, "PauseDispatch", &change),
            Decision::Forward(vec![star])
        );
        assert_eq!(
            decide(&r, "GetItem", &read),
            Decision::Forward(vec![star]),
            "other calls naming * go to its owner"
        );
    }

    #[test]
    fn a_stream_of_frames_is_between_messages_only_after_each_whole_frame() {
        let mut body = framed(b"abc");
        body.extend_from_slice(&framed(b""));
        body.extend_from_slice(&framed(&[7; 300]));
        let mut m = Messages::default();
        assert!(m.at_boundary());
        // Fed one byte at a time: between messages exactly at the frames' ends.
        let ends = [8, 13, body.len()];
        for (i, b) in body.iter().enumerate() {
            m.feed(&[*b]);
            assert_eq!(
                m.at_boundary(),
                ends.contains(&(i + 1)),
                "after {} bytes",
                i + 1
            );
        }
        // Fed in chunks that split headers and messages.
        let mut m = Messages::default();
        m.feed(&body[..3]);
        assert!(!m.at_boundary());
        m.feed(&body[3..10]);
        assert!(!m.at_boundary());
        m.feed(&body[10..13]);
        assert!(m.at_boundary());
        m.feed(&body[13..20]);
        assert!(!m.at_boundary());
        m.feed(&body[20..]);
        assert!(m.at_boundary());
    }

    #[test]
    fn a_call_waiting_for_an_owner_answers_a_little_before_the_callers_deadline() {
        assert_eq!(
            answer_within(Duration::from_secs(10)),
            Duration::from_millis(9_800)
        );
        assert_eq!(
            answer_within(Duration::from_secs(1)),
            Duration::from_millis(900)
        );
        assert_eq!(answer_within(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_batch_whose_partitions_have_different_owners_elsewhere_is_refused() {
        let r = router(&[0]);
        let placement = HashMap::from([(5, "b:1".to_owned()), (6, "b:1".to_owned())]);
        r.placement.set_owners(placement);
        assert!(matches!(owners(&r, &[5, 6]), Owners::At(a) if a == "b:1"));
        assert!(matches!(owners(&r, &[5, 7]), Owners::Unknown(7)));
        r.placement.set_owners(HashMap::from([
            (5, "b:1".to_owned()),
            (6, "c:1".to_owned()),
        ]));
        assert!(
            matches!(owners(&r, &[5, 6]), Owners::Several(why) if why.contains("all or nothing"))
        );
    }
}
