//! The staff console: the deferred-sending view, tickets, a schedule form and an
//! operations page, served as HTML by `sendlater serve` on its own address.
//!
//! - Server-rendered with maud (every interpolated value is HTML-escaped), a little
//!   JavaScript of our own (`static/console.js`: times in the viewer's zone, live
//!   updates over Server-Sent Events), every asset inside the binary.
//! - It calls the engine directly, the same calls the gRPC services make: the rules
//!   (validation, state machine, activity) live there, never here.
//! - Auth: the gRPC tokens. A login form exchanges a backend or admin token (not a
//!   connector's) for a session cookie (HttpOnly, SameSite=Strict); a session sees
//!   only its token's accounts, and the operations page needs an admin token for
//!   every account. With no tokens configured the console is open (as gRPC: loopback
//!   only), and a session is made on the first visit, for the CSRF
//!   token.
//! - Every state change is a POST carrying the session's CSRF token; every response
//!   has a strict Content-Security-Policy (no inline script or style).
//! - The front door ([`FrontDoor`]), before any route: a request whose Host is not a
//!   name of the console (its address, localhost, loopback, the `--console-host`
//!   names) is refused with 421, so a page of another site whose name re-resolves to
//!   127.0.0.1 (DNS rebinding) gets no page and no session; a POST whose Origin (or,
//!   without one, Sec-Fetch-Site) is another site is refused with 403.
//!
//! - With `[tls]` the console is served over TLS too (the gRPC port's certificate), and
//!   its cookies are `Secure` with the `__Host-` prefix (bound to this host, never
//!   set by a plain-HTTP page of it).
//!
//! Pinned paths: `/accounts/{account_id}/deferred` and
//! `/accounts/{account_id}/tickets/{ticket_id}`; `/` leads to them.

mod pages;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterSettings, ClusterView};
use crate::config::Role;
use crate::dispatch::Dispatcher;
use crate::domain::{self, Item, ItemId};
use crate::engine::{Audience, Engine, Order};
use crate::metrics::Gauges;
use crate::service::auth::{Auth, Identity, Refusal};
use crate::service::streams::{LiveStreams, StreamSlot};

/// How long a session lives without use.
const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most (the least recently used goes first).
const MAX_SESSIONS: usize = 10_000;

/// Live event streams one session may hold (a few tabs).
const STREAMS_PER_SESSION: usize = 4;

/// Event heads read (and queued) per wake of an event stream.
const SSE_BATCH: usize = 500;

/// The name of the session cookie (over plain HTTP).
const COOKIE: &str = "sendlater_session";

/// The name of the session cookie over TLS: `__Host-` makes the browser take it only
/// with `Secure`, `Path=/` and no `Domain`, from an https:// page of this very host.
const TLS_COOKIE: &str = "__Host-sendlater_session";

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// The Content-Security-Policy of every response: our own script and style only, no
/// inline code, no framing, forms post only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

struct Session {
    identity: Identity,
    csrf: String,
    last_used: Instant,
}

/// What the console's handlers share.
#[derive(Clone)]
pub struct Console {
    engine: Engine,
    dispatcher: Dispatcher,
    auth: Auth,
    gauges: Arc<dyn Gauges>,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    door: Arc<FrontDoor>,
    /// The live event streams (capped per session, per token and in all).
    streams: LiveStreams,
    /// Served over TLS with this configuration when set.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// This node and what answers for the cluster (the operations page shows them).
    cluster: Option<(Arc<dyn ClusterView>, ClusterSettings)>,
}

/// The console's TLS configuration from the gRPC port's `[tls]` PEM files.
///
/// # Errors
/// A file that cannot be read or holds no usable certificate or key, naming it.
pub fn tls_config(tls: &crate::config::TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_err = |e: &dyn std::fmt::Display| format!("tls: {}: {e}", tls.cert.display());
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| cert_err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(&e))?;
    if certs.is_empty() {
        return Err(cert_err(&"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("tls: {}: {e}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: {}: {e}", tls.key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connections of a TLS port, handed to axum once their handshake is done. Each
/// handshake runs on its own task (bounded by [`TLS_HANDSHAKE`]), so a slow or silent
/// client holds up no one else.
struct TlsListener {
    done: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` until `stop`.
    fn new(
        tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, done) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // As axum's own listener: out of descriptors and the
                            // like pass; wait a moment rather than spin.
                            tracing::debug!(error = %e, "console: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "console: TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "console: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { done, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(conn) => conn,
            // Stopped: nothing more comes (axum stops asking once it shuts down).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Which requests may reach the console's routes at all: those naming one of its
/// hosts (DNS rebinding), and of those, the POSTs of its own pages (cross-site forms).
#[derive(Debug, Clone)]
pub struct FrontDoor {
    /// The bound address (its port is the one Host must name).
    bound: SocketAddr,
    /// Names the operator configured (`name` at any port, or `name:port`), lowercase.
    names: Vec<String>,
    /// Served over TLS (the scheme an Origin must name).
    https: bool,
}

/// A `--console-host` / `console_hosts` entry as the console compares it: a DNS name
/// (letters, digits, `-`, `.`) or a bracketed IPv6 address, optionally `:PORT`;
/// lowercase.
///
/// # Errors
/// What is wrong with it.
pub fn console_host(text: &str) -> Result<String, String> {
    let t = text.trim().to_ascii_lowercase();
    let (host, port) = split_host_port(&t);
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && (host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            || host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok()));
    if !name_ok {
        return Err(format!(
            "{text:?} is not a host name (e.g. console.example.com or console.example.com:8080)"
        ));
    }
    match port {
        Some(Err(())) => Err(format!("{text:?}: the port is not a number 1..=65535")),
        _ => Ok(t),
    }
}

/// `host[:port]` split (IPv6 in brackets); the port is `Err` when present but not
/// a port number.
fn split_host_port(authority: &str) -> (&str, Option<Result<u16, ()>>) {
    let port_at = match authority.rfind(':') {
        // `[::1]` alone: the colons are inside the brackets.
        Some(at) if authority[at..].contains(']') => None,
        other => other,
    };
    match port_at {
        Some(at) => {
            let port = authority[at + 1..]
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(());
            (&authority[..at], Some(port))
        }
        None => (authority, None),
    }
}

impl FrontDoor {
    /// The door of a console bound at `bound` that also answers to `names` (entries of
    /// [`console_host`]).
    pub fn new(bound: SocketAddr, names: Vec<String>, https: bool) -> Self {
        FrontDoor {
            bound,
            names,
            https,
        }
    }

    /// Whether a request naming `authority` (its Host) is for this console: a
    /// configured name; or at the console's port, `localhost`, a loopback address, the
    /// bound address, or (bound to every interface) any IP address. An IP literal
    /// cannot be a rebinding: a page's origin is then that address itself.
    pub fn allows_host(&self, authority: &str) -> bool {
        let authority = authority.trim().to_ascii_lowercase();
        let (host, port) = split_host_port(&authority);
        let port = match port {
            None => Ok(if self.https { 443 } else { 80 }),
            Some(p) => p,
        };
        let Ok(port) = port else { return false };
        if self.names.iter().any(|n| match split_host_port(n) {
            (name, None) => name == host,
            (name, Some(p)) => name == host && p == Ok(port),
        }) {
            return true;
        }
        if port != self.bound.port() || host.is_empty() {
            return false;
        }
        if host == "localhost" {
            return true;
        }
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map_or_else(
                || host.parse::<std::net::Ipv4Addr>().map(IpAddr::V4).ok(),
                |h| h.parse::<std::net::Ipv6Addr>().map(IpAddr::V6).ok(),
            );
        ip.is_some_and(|ip| {
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            ip.is_loopback() || ip == self.bound.ip() || self.bound.ip().is_unspecified()
        })
    }

    /// Whether a state-changing request comes from another site: its Origin is not
    /// this console's (scheme and the request's Host), or, without an Origin, its
    /// Sec-Fetch-Site is anything but `same-origin` / `none` (typed in by the user).
    /// Neither header (a script, curl): not a browser's cross-site form.
    fn foreign(&self, headers: &HeaderMap, host: &str) -> bool {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let scheme = if self.https { "https" } else { "http" };
            return origin.to_str().map_or(true, |o| {
                !o.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
            });
        }
        match headers.get("sec-fetch-site").map(HeaderValue::to_str) {
            None => false,
            Some(Ok(site)) => !matches!(site, "same-origin" | "none"),
            Some(Err(_)) => true,
        }
    }
}

/// The front door (see [`FrontDoor`]), before every route.
async fn front_door(
    State(door): State<Arc<FrontDoor>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // HTTP/1.1 names the host in Host (and an absolute-form target may name one too);
    // HTTP/2 in :authority. Every name the request carries must be ours.
    let host = req.headers().get(header::HOST).map(HeaderValue::to_str);
    let target = req.uri().authority().map(|a| a.as_str().to_owned());
    let host = match (host, target) {
        (Some(Ok(h)), Some(t)) if h.eq_ignore_ascii_case(&t) => Some(h.to_owned()),
        (Some(Ok(h)), None) => Some(h.to_owned()),
        (None, Some(t)) => Some(t),
        _ => None,
    };
    let Some(host) = host.filter(|h| door.allows_host(h)) else {
        tracing::info!(
            host = ?req.headers().get(header::HOST),
            "console: refused a request naming another host"
        );
        return page_error(
            StatusCode::MISDIRECTED_REQUEST,
            "Wrong address",
            &format!(
                "This console answers only to its own address (127.0.0.1, localhost or \
                 [::1] at port {}) and the names its operator configured \
                 (--console-host); this request's Host header names another. If you \
                 reached it through another name, ask for that name to be added.",
                door.bound.port()
            ),
        );
    };
    if !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) && door.foreign(req.headers(), &host)
    {
        tracing::info!(
            origin = ?req.headers().get(header::ORIGIN),
            path = %req.uri().path(),
            "console: refused a form posted by another site"
        );
        return page_error(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "this request was sent by another site (its Origin or Sec-Fetch-Site); the \
             console takes changes only from its own pages",
        );
    }
    next.run(req).await
}

fn random_hex() -> String {
    use rand::RngExt;
    format!("{:032x}", rand::rng().random::<u128>())
}

/// What a request is allowed to see, from its session.
struct Viewer {
    identity: Identity,
    csrf: String,
}

impl Console {
    /// The console over these parts.
    pub fn new(
        engine: Engine,
        dispatcher: Dispatcher,
        auth: Auth,
        gauges: Arc<dyn Gauges>,
    ) -> Self {
        let streams = LiveStreams::new(engine.limits().max_streams);
        Console {
            engine,
            dispatcher,
            auth,
            gauges,
            sessions: Arc::default(),
            streams,
            door: Arc::new(FrontDoor::new(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Vec::new(),
                false,
            )),
            tls: None,
            cluster: None,
        }
    }

    /// The console of node `settings`, whose partitions `view` tells.
    #[must_use]
    pub fn with_cluster(mut self, view: Arc<dyn ClusterView>, settings: ClusterSettings) -> Self {
        self.cluster = Some((view, settings));
        self
    }

    /// The console served over TLS with `config` (see [`tls_config`]).
    #[must_use]
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The session cookie's name.
    fn cookie_name(&self) -> &'static str {
        if self.tls.is_some() {
            TLS_COOKIE
        } else {
            COOKIE
        }
    }

    /// The attributes of every cookie the console sets (`Secure` over TLS).
    fn cookie_attributes(&self) -> &'static str {
        if self.tls.is_some() {
            "Path=/; HttpOnly; SameSite=Strict; Secure"
        } else {
            "Path=/; HttpOnly; SameSite=Strict"
        }
    }

    /// The console that also answers to these host names (entries of
    /// [`console_host`]), besides its own address.
    #[must_use]
    pub fn with_hosts(mut self, names: Vec<String>) -> Self {
        let door = FrontDoor {
            names,
            ..(*self.door).clone()
        };
        self.door = Arc::new(door);
        self
    }

    fn session_id(&self, headers: &HeaderMap) -> Option<String> {
        cookie(headers, self.cookie_name())
    }

    /// The viewer of a request, if it has a live session.
    /// Whether session `id` is still live and may see `account` (without counting as a
    /// use): an event stream re-checks it on each wake.
    fn session_allows(&self, id: &str, account: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(id).is_some_and(|s| {
            s.last_used.elapsed() <= SESSION_IDLE && s.identity.accounts.allows(account)
        })
    }

    fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        let id = self.session_id(headers)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions.get_mut(&id)?;
        if s.last_used.elapsed() > SESSION_IDLE {
            sessions.remove(&id);
            return None;
        }
        s.last_used = Instant::now();
        Some(Viewer {
            identity: s.identity.clone(),
            csrf: s.csrf.clone(),
        })
    }

    /// A new session for `identity`; returns the Set-Cookie value.
    fn open_session(&self, identity: Identity) -> String {
        let id = random_hex();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.last_used.elapsed() <= SESSION_IDLE);
        // Bounded: the open console makes a session per cookie-less visit.
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                identity,
                csrf: random_hex(),
                last_used: Instant::now(),
            },
        );
        format!("{}={id}; {}", self.cookie_name(), self.cookie_attributes())
    }

    /// The viewer, or where to send a request that has none: the login form, or (no
    /// tokens configured) a fresh open session and the same page again.
    // The error is the response to send as it is (a redirect): not worth a box.
    #[allow(clippy::result_large_err)]
    fn require(&self, headers: &HeaderMap, here: &str) -> Result<Viewer, Response> {
        if let Some(v) = self.viewer(headers) {
            return Ok(v);
        }
        if self.auth.enabled() {
            return Err(Redirect::to("/login").into_response());
        }
        let cookie = self.open_session(Identity::open());
        let mut r = Redirect::to(here).into_response();
        r.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("ascii"),
        );
        Err(r)
    }
}

/// Adds the security headers to every response.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// The console's routes.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/static/console.js", get(script))
        .route("/static/console.css", get(style))
        .route("/operations", get(operations))
        .route("/accounts/{account}/deferred", get(deferred))
        .route("/accounts/{account}/tickets/{ticket}", get(ticket))
        .route(
            "/accounts/{account}/schedule",
            get(schedule_form).post(schedule),
        )
        .route(
            "/accounts/{account}/items/{item}/{action}",
            post(item_action),
        )
        .route("/accounts/{account}/events", get(events))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            console.door.clone(),
            front_door,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console)
}

/// Binds `addr` and serves the console until `stop`; returns the bound address.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    console: Console,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut console = console;
    console.door = Arc::new(FrontDoor {
        bound,
        https: console.tls.is_some(),
        ..(*console.door).clone()
    });
    let tls = console.tls.clone();
    let limits = console.engine.limits();
    let timeouts = HttpTimeouts {
        header_read: Duration::from_millis(limits.http_header_read_ms.max(1)),
        idle: Duration::from_millis(limits.http_idle_ms.max(1)),
    };
    let app = router(console);
    match tls {
        None => {
            tokio::spawn(serve_connections(listener, app, timeouts, stop));
        }
        Some(config) => {
            let listener = TlsListener::new(listener, config, stop.clone())?;
            tokio::spawn(serve_connections(listener, app, timeouts, stop));
        }
    }
    Ok(bound)
}

/// The console's HTTP timeouts (see [`crate::config::Limits`]).
#[derive(Debug, Clone, Copy)]
struct HttpTimeouts {
    /// A request head must arrive within this (also: an idle keep-alive connection).
    header_read: Duration,
    /// A connection with nothing read or written for this long is closed.
    idle: Duration,
}

/// Serves HTTP/1.1 on every connection `listener` accepts until `stop`: hyper with a
/// timer, so a request head that does not arrive within the header-read timeout (a
/// slow-loris client, or an idle keep-alive connection) ends the connection, and each
/// connection's I/O behind [`IdleIo`]. The peer address reaches the handlers as
/// `ConnectInfo` (the login's per-address backoff).
async fn serve_connections<L>(
    mut listener: L,
    app: Router,
    timeouts: HttpTimeouts,
    stop: CancellationToken,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    loop {
        let (io, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(app);
            let io = TokioIo::new(IdleIo::new(io, timeouts.idle));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.header_read)
                .serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "console: connection ended");
            }
        });
    }
}

/// A connection's I/O that fails (`TimedOut`) once nothing has been read or written for
/// `idle`: a client that stalls mid-request holds its connection no longer. A stream
/// being written (Server-Sent Events and their keep-alives) stays open.
struct IdleIo<T> {
    inner: T,
    idle: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleIo<T> {
    fn new(inner: T, idle: Duration) -> Self {
        IdleIo {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// On a pending read or write: an error once the idle time is over.
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match std::future::Future::poll(self.deadline.as_mut(), cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "console: connection idle",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                std::task::Poll::Ready(Ok(()))
            }
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => self.expired(cx),
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, data) {
            std::task::Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                std::task::Poll::Ready(Ok(n))
            }
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => self.expired(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn html(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

fn page_error(status: StatusCode, title: &str, detail: &str) -> Response {
    (status, html(pages::error(title, detail))).into_response()
}

fn domain_error(e: domain::Error) -> Response {
    use domain::Error as E;
    let status = match &e {
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        E::FailedPrecondition(_) | E::AlreadyExists(_) => StatusCode::CONFLICT,
        E::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    page_error(status, "That did not work", &e.to_string())
}

fn forbidden(account: &str) -> Response {
    page_error(
        StatusCode::FORBIDDEN,
        "Not allowed",
        &format!("this session may not see account {account:?}"),
    )
}

/// The viewer, allowed to see `account` (else the response to send).
#[allow(clippy::result_large_err)]
fn for_account(
    c: &Console,
    headers: &HeaderMap,
    account: &str,
    here: &str,
) -> Result<Viewer, Response> {
    let v = c.require(headers, here)?;
    if domain::validate_id("account_id", account).is_err() {
        return Err(page_error(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such account",
        ));
    }
    if !v.identity.accounts.allows(account) {
        return Err(forbidden(account));
    }
    Ok(v)
}

async fn not_found() -> Response {
    page_error(StatusCode::NOT_FOUND, "Not found", "no such page")
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("static/console.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("static/console.css"),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Go {
    account: Option<String>,
}

async fn home(State(c): State<Console>, headers: HeaderMap, Query(go): Query<Go>) -> Response {
    let v = match c.require(&headers, "/") {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(a) = go.account.filter(|a| !a.is_empty()) {
        return Redirect::to(&format!("/accounts/{}/deferred", pages::path_segment(&a)))
            .into_response();
    }
    match &v.identity.accounts {
        crate::config::Accounts::Only(list) if list.len() == 1 => Redirect::to(&format!(
            "/accounts/{}/deferred",
            pages::path_segment(&list[0])
        ))
        .into_response(),
        accounts => html(pages::home(accounts)),
    }
}

/// The cookie that ties a login form to the browser that loaded it.
const LOGIN_COOKIE: &str = "sendlater_login";

/// Its name over TLS (`__Host-`: see [`TLS_COOKIE`]; so its path is `/`).
const TLS_LOGIN_COOKIE: &str = "__Host-sendlater_login";

impl Console {
    /// The login cookie's name.
    fn login_cookie_name(&self) -> &'static str {
        if self.tls.is_some() {
            TLS_LOGIN_COOKIE
        } else {
            LOGIN_COOKIE
        }
    }

    /// The login form, with a fresh token that must come back both in the form and in
    /// a SameSite=Strict cookie (so another site cannot log this browser in).
    fn login_page(&self, status: StatusCode, problem: Option<&str>) -> Response {
        let token = random_hex();
        let mut r = (status, html(pages::login(problem, &token))).into_response();
        let cookie = if self.tls.is_some() {
            format!(
                "{}={token}; {}",
                self.login_cookie_name(),
                self.cookie_attributes()
            )
        } else {
            format!("{LOGIN_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict")
        };
        r.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("ascii"),
        );
        r
    }
}

async fn login_form(State(c): State<Console>) -> Response {
    if !c.auth.enabled() {
        return Redirect::to("/").into_response();
    }
    c.login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct Login {
    token: String,
    #[serde(default)]
    login_csrf: String,
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

async fn login(
    State(c): State<Console>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(f): Form<Login>,
) -> Response {
    let bound = cookie(&headers, c.login_cookie_name());
    if f.login_csrf.len() != 32 || bound.as_deref() != Some(f.login_csrf.as_str()) {
        return c.login_page(
            StatusCode::FORBIDDEN,
            Some("The login form is stale or did not come from this console; try again."),
        );
    }
    let peer = peer.map(|p| p.0 .0.ip());
    let identity = match c.auth.identify_from(f.token.trim(), peer) {
        Ok(identity) => identity,
        Err(Refusal::Unknown) => {
            return c.login_page(StatusCode::UNAUTHORIZED, Some("That token is not known."))
        }
        Err(Refusal::LockedOut(ms)) => {
            let secs = (ms + 999) / 1000;
            let mut r = c.login_page(
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "Too many unknown tokens from this address; try again in {secs} s."
                )),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
    };
    // The console is the Scheduler's: a connector token (Dispatch only) opens nothing.
    if identity.role == Role::Connector {
        tracing::info!(
            token_index = ?identity.token_index,
            "console: refused a login with a connector token"
        );
        return c.login_page(
            StatusCode::FORBIDDEN,
            Some("That is a connector token: the console needs a backend or admin token."),
        );
    }
    let cookie = c.open_session(identity);
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("ascii"),
    );
    r
}

#[derive(Deserialize)]
struct Csrf {
    csrf: String,
}

fn csrf_ok(v: &Viewer, given: &str) -> bool {
    // Same length, every byte compared.
    v.csrf.len() == given.len()
        && v.csrf
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn bad_csrf() -> Response {
    page_error(
        StatusCode::FORBIDDEN,
        "Not allowed",
        "the form is stale or did not come from this console; reload the page and try again",
    )
}

async fn logout(State(c): State<Console>, headers: HeaderMap, Form(f): Form<Csrf>) -> Response {
    if let Some(v) = c.viewer(&headers) {
        if !csrf_ok(&v, &f.csrf) {
            return bad_csrf();
        }
        if let Some(id) = c.session_id(&headers) {
            c.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{}=; {}; Max-Age=0",
            c.cookie_name(),
            c.cookie_attributes()
        ))
        .expect("ascii"),
    );
    r
}

#[derive(Deserialize, Default)]
struct DeferredQuery {
    order: Option<String>,
    page_token: Option<String>,
    /// Only the table (for live updates).
    fragment: Option<String>,
}

async fn deferred(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(account): Path<String>,
    Query(q): Query<DeferredQuery>,
) -> Response {
    let here = format!("/accounts/{}/deferred", pages::path_segment(&account));
    let v = match for_account(&c, &headers, &account, &here) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let order = match q.order.as_deref() {
        Some("desc") => Order::Desc,
        _ => Order::Asc,
    };
    let token = q.page_token.unwrap_or_default();
    // Read before the page: every change after it reaches the page's event stream.
    let after = match c.engine.store().newest_event(account.clone()).await {
        Ok(s) => s,
        Err(e) => return domain_error(e),
    };
    let page = match c
        .engine
        .deferred_tickets(account.clone(), order, pages::PAGE_SIZE, token.clone())
        .await
    {
        Ok(p) => p,
        Err(e) => return domain_error(e),
    };
    if q.fragment.is_some() {
        return html(pages::deferred_table(&account, order, &page));
    }
    html(pages::deferred(&account, order, &token, &page, after, &v))
}

#[derive(Deserialize, Default)]
struct TicketQuery {
    view: Option<String>,
    fragment: Option<String>,
}

async fn ticket(
    State(c): State<Console>,
    headers: HeaderMap,
    Path((account, ticket)): Path<(String, String)>,
    Query(q): Query<TicketQuery>,
) -> Response {
    let here = format!(
        "/accounts/{}/tickets/{}",
        pages::path_segment(&account),
        pages::path_segment(&ticket)
    );
    let v = match for_account(&c, &headers, &account, &here) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let client = q.view.as_deref() == Some("client");
    // Read before the page (the account's newest: see `Store::newest_event`).
    let after = match c.engine.store().newest_event(account.clone()).await {
        Ok(s) => s,
        Err(e) => return domain_error(e),
    };
    let audience = if client {
        Audience::Client
    } else {
        Audience::Staff
    };
    let items = match c
        .engine
        .timeline(account.clone(), ticket.clone(), audience)
        .await
    {
        Ok(items) => items,
        // The client sees no ticket at all until something in it was sent.
        Err(domain::Error::NotFound(_)) if client => Vec::new(),
        Err(e) => return domain_error(e),
    };
    if q.fragment.is_some() {
        return html(pages::timeline(&account, &items, client, &v.csrf));
    }
    html(pages::ticket(&account, &ticket, &items, client, after, &v))
}

async fn schedule_form(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(account): Path<String>,
    Query(prefill): Query<pages::ScheduleForm>,
) -> Response {
    let here = format!("/accounts/{}/schedule", pages::path_segment(&account));
    match for_account(&c, &headers, &account, &here) {
        Ok(v) => html(pages::schedule(&account, &prefill, None, &v)),
        Err(r) => r,
    }
}

async fn schedule(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(account): Path<String>,
    Form(f): Form<pages::ScheduleForm>,
) -> Response {
    let here = format!("/accounts/{}/schedule", pages::path_segment(&account));
    let v = match for_account(&c, &headers, &account, &here) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !csrf_ok(&v, &f.csrf) {
        return bad_csrf();
    }
    let now = c.engine.clock().now_ms();
    let new = match resolve_when(&c, &account, &f.when, Some(&f.tz), now)
        .await
        .and_then(|at| f.to_new_item(&account, at))
    {
        Ok(n) => n,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                html(pages::schedule(&account, &f, Some(&e), &v)),
            )
                .into_response()
        }
    };
    let ticket = new.ticket_id.clone();
    match c.engine.schedule(new).await {
        Ok(item) => Redirect::to(&format!(
            "/accounts/{}/tickets/{}#{}",
            pages::path_segment(&account),
            pages::path_segment(&ticket),
            item.public_id()
        ))
        .into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            html(pages::schedule(&account, &f, Some(&e.to_string()), &v)),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct ItemForm {
    csrf: String,
    /// Reschedule: when, in `tz`.
    when: Option<String>,
    tz: Option<String>,
    /// Edit: the new text (and subject, for email).
    text: Option<String>,
    subject: Option<String>,
}

async fn item_action(
    State(c): State<Console>,
    headers: HeaderMap,
    Path((account, item, action)): Path<(String, String, String)>,
    Form(f): Form<ItemForm>,
) -> Response {
    let v = match for_account(&c, &headers, &account, "/") {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !csrf_ok(&v, &f.csrf) {
        return bad_csrf();
    }
    let Some(id) = domain::parse_item_id(&item) else {
        return page_error(StatusCode::NOT_FOUND, "Not found", "no such item");
    };
    let now = c.engine.clock().now_ms();
    let done: domain::Result<Item> = match action.as_str() {
        "send-now" => c.engine.send_now(account.clone(), id).await,
        "cancel" => c.engine.cancel(account.clone(), id).await,
        "reschedule" => {
            let when = f.when.as_deref().unwrap_or("");
            match resolve_when(&c, &account, when, f.tz.as_deref(), now).await {
                Ok((send_at, send_at_local)) => {
                    let changes = crate::engine::Changes {
                        send_at: Some(send_at),
                        send_at_local,
                        ..Default::default()
                    };
                    c.engine.reschedule(account.clone(), id, changes).await
                }
                Err(e) => Err(domain::Error::invalid("when", e)),
            }
        }
        "edit" => edit(&c, &account, id, &f).await,
        _ => return page_error(StatusCode::NOT_FOUND, "Not found", "no such action"),
    };
    match done {
        Ok(item) => Redirect::to(&format!(
            "/accounts/{}/tickets/{}#{}",
            pages::path_segment(&account),
            pages::path_segment(&item.ticket_id),
            item.public_id()
        ))
        .into_response(),
        Err(e) => domain_error(e),
    }
}

/// A send time as the form gave it: the CLI's forms, or "next business morning" (the
/// first opening of a business day of the account's hours after now).
async fn resolve_when(
    c: &Console,
    account: &str,
    when: &str,
    tz: Option<&str>,
    now: domain::Millis,
) -> Result<(domain::Millis, Option<domain::LocalTime>), String> {
    if crate::domain::when::is_next_business_morning(when) {
        let hours = c
            .engine
            .business_hours(account.to_owned())
            .await
            .map_err(|e| format!("next business morning: {e}"))?;
        return hours
            .next_morning(now)
            .map(|t| (t, None))
            .ok_or_else(|| "next business morning: the business hours never open".to_owned());
    }
    pages::parse_when(when, tz, now)
}

async fn edit(c: &Console, account: &str, id: ItemId, f: &ItemForm) -> domain::Result<Item> {
    let item = c.engine.get(account.to_owned(), id).await?;
    let text = f.text.clone().unwrap_or_default();
    let content = match item.content {
        domain::Content::Email(mut e) => {
            if let Some(s) = &f.subject {
                e.subject = s.clone();
            }
            e.text_body = text;
            domain::Content::Email(e)
        }
        domain::Content::Chat(mut ch) => {
            ch.text = text;
            domain::Content::Chat(ch)
        }
    };
    let changes = crate::engine::Changes {
        content: Some(content),
        ..Default::default()
    };
    c.engine.reschedule(account.to_owned(), id, changes).await
}

/// Server-Sent Events for one account: one `change` event per committed (durable)
/// change of one of its items, carrying `{"sequence", "type", "item", "ticket"}`; the
/// page re-reads what it shows.
#[derive(Deserialize, Default)]
struct EventsQuery {
    /// The last sequence the page reflects (it was rendered after it).
    after: Option<u64>,
}

async fn events(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(account): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let v = match for_account(&c, &headers, &account, "/") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(sid) = c.session_id(&headers) else {
        return page_error(StatusCode::FORBIDDEN, "Not allowed", "no session");
    };
    // A few streams per session and per token, and a cap for the console.
    let caller = v
        .identity
        .token_index
        .map_or_else(|| "token:open".to_owned(), |i| format!("token:{i}"));
    let slot = match c.streams.try_open(&[
        (format!("session:{sid}"), STREAMS_PER_SESSION),
        (caller, c.engine.limits().max_streams_per_caller),
    ]) {
        Ok(slot) => slot,
        Err(full) => {
            return page_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many live views",
                &full.to_string(),
            )
        }
    };
    let engine = c.engine.clone();
    let seq = engine.store().event_sequence();
    // Resume where the page (or, after a reconnect, the stream: Last-Event-ID) stood,
    // so nothing committed in between is missed; else from now.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Never beyond the newest (the account's): a stream waiting for a sequence that may
    // never come would show nothing.
    let newest = match engine.store().newest_event(account.clone()).await {
        Ok(s) => s,
        Err(e) => return domain_error(e),
    };
    let start = resumed
        .into_iter()
        .chain(q.after)
        .max()
        .map_or(newest, |s| s.min(newest));
    let session = {
        let (c, account) = (c.clone(), account.clone());
        move || c.session_allows(&sid, &account)
    };
    let stream = event_stream(engine, account, seq, start, session, slot);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// One `change` event (id: its sequence) per event of `account` after `start`, while
/// `session()` holds (checked on every wake: a logged-out session's stream ends).
/// Bounded: at most [`SSE_BATCH`] heads are queued, each a few hundred bytes (ids are
/// at most 256 bytes). `slot` is the stream's place among the live ones, given back when
/// the stream is dropped.
fn event_stream(
    engine: Engine,
    account: String,
    seq: tokio::sync::watch::Receiver<u64>,
    start: u64,
    session: impl Fn() -> bool + Send + Sync + 'static,
    slot: StreamSlot,
) -> impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    futures_util::stream::unfold(
        (
            (engine, session, slot),
            account,
            seq,
            start,
            std::collections::VecDeque::new(),
        ),
        |(parts, account, mut seq, mut after, mut queue)| async move {
            loop {
                if let Some(ev) = queue.pop_front() {
                    return Some((Ok(ev), (parts, account, seq, after, queue)));
                }
                if *seq.borrow_and_update() <= after && seq.changed().await.is_err() {
                    return None;
                }
                let (engine, session, _slot) = &parts;
                if !session() {
                    return None;
                }
                // An error ends the stream; the browser reconnects with Last-Event-ID.
                let heads = engine
                    .event_heads(account.clone(), after, SSE_BATCH)
                    .await
                    .ok()?;
                for (sequence, kind, item, ticket) in heads {
                    after = after.max(sequence);
                    let data = serde_json::json!({
                        "sequence": sequence,
                        "type": kind.name(),
                        "item": domain::format_item_id(item),
                        "ticket": ticket,
                    });
                    queue.push_back(
                        SseEvent::default()
                            .event("change")
                            .id(sequence.to_string())
                            .data(data.to_string()),
                    );
                }
            }
        },
    )
}

async fn operations(State(c): State<Console>, headers: HeaderMap) -> Response {
    let v = match c.require(&headers, "/operations") {
        Ok(v) => v,
        Err(r) => return r,
    };
    // Operators only: the page shows every account's controls and the connectors.
    if v.identity.role != Role::Admin
        || !matches!(v.identity.accounts, crate::config::Accounts::All)
    {
        return page_error(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "the operations page needs an admin token for every account",
        );
    }
    let connectors = c.dispatcher.connectors().await;
    let controls = c.engine.controls().snapshot();
    let node = match &c.cluster {
        Some((view, settings)) => Some(this_node(view.as_ref(), settings).await),
        None => None,
    };
    html(pages::operations(
        &connectors,
        &controls,
        &*c.gauges,
        node.as_ref(),
        &v,
    ))
}

/// This node as the operations page shows it: its partitions as the cluster sees them
/// now, or why they cannot be read.
async fn this_node(view: &dyn ClusterView, settings: &ClusterSettings) -> pages::ThisNode {
    let partitions = match view.status().await {
        Ok(status) => Ok(status
            .nodes
            .into_iter()
            .find(|n| n.node_id == settings.node_id)
            .map(|n| n.partitions)
            .unwrap_or_default()),
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot read the cluster's status");
            Err(e.to_string())
        }
    };
    pages::ThisNode {
        node_id: settings.node_id.clone(),
        advertise: settings.advertise.clone(),
        partitions,
        of: settings.partitions,
    }
}
