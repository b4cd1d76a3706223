//! The validated configuration the service runs on: limits, dispatch tuning, storage.
//!
//! The CLI (and later the TOML config file) parse user input into these types; the rest
//! of the program only ever sees validated values. Defaults are those of API.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};

/// Input limits (API.md "Errors and limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Each body field (email text/html, chat text) at most this many bytes.
    pub max_body_bytes: usize,
    /// to + cc + bcc together at most this many addresses.
    pub max_recipients: usize,
    /// send_at at most this far in the future.
    pub max_horizon_days: u32,
    /// PENDING + DISPATCHING items per account at most.
    pub max_pending_per_account: u64,
    /// Entries in one ScheduleBatch at most.
    pub max_batch_entries: usize,
    /// page_size above this is lowered to it.
    pub max_page_size: u32,
    /// page_size 0 means this.
    pub default_page_size: u32,
    /// send_at may lie this far in the past (clock skew between caller and us).
    pub max_past_ms: i64,
    /// gRPC message size limit (both directions). Kept above what the largest valid
    /// request needs, so an oversize body is INVALID_ARGUMENT naming the field rather
    /// than RESOURCE_EXHAUSTED from the transport.
    pub max_message_bytes: usize,
    /// Live items one write of a business-hours re-resolution walks at most (a change
    /// of hours on a large account is done in writes of this size, not in one).
    pub rewindow_chunk: usize,
    /// Attachments of one item at most.
    pub max_attachments: usize,
    /// An attachment's URL at most this many bytes.
    pub max_url_bytes: usize,
    /// An item's whole content (bodies, subject, addresses, in_reply_to, conversation
    /// id, attachments) at most this many bytes.
    pub max_item_bytes: usize,
    /// Live WatchEvents streams one caller (a token; without tokens, a peer address)
    /// may hold at once.
    pub max_streams_per_caller: usize,
    /// Live WatchEvents streams of the whole service at once.
    pub max_streams: usize,
    /// The console's HTTP server: how long a client may take to send a request's head
    /// (also how long an idle keep-alive connection stays open), in milliseconds.
    pub http_header_read_ms: u64,
    /// The console's HTTP server: a connection on which nothing is read or written for
    /// this long is closed (a stalled request body), in milliseconds.
    pub http_idle_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_recipients: 100,
            max_horizon_days: 1826,
            max_pending_per_account: 1_000_000,
            max_batch_entries: 1000,
            max_page_size: 1000,
            default_page_size: 100,
            max_past_ms: 1000,
            max_message_bytes: 4 * 1024 * 1024,
            rewindow_chunk: 1000,
            max_attachments: 20,
            max_url_bytes: 2048,
            max_item_bytes: Limits::item_bytes_for(256 * 1024),
            max_streams_per_caller: 8,
            max_streams: 1024,
            http_header_read_ms: 10_000,
            http_idle_ms: 60_000,
        }
    }
}

impl Limits {
    /// The smallest gRPC message limit that still lets every body-size error be
    /// reported by validation: two maximal bodies (text and html), or a maximal item,
    /// plus headroom.
    pub fn min_message_bytes(&self) -> usize {
        (self.max_body_bytes * 2).max(self.max_item_bytes) + 256 * 1024
    }

    /// The gRPC message limit in force (never below [`Limits::min_message_bytes`]).
    pub fn effective_message_bytes(&self) -> usize {
        self.max_message_bytes.max(self.min_message_bytes())
    }

    /// What the items of one response may take: the message limit less 64 KiB for the
    /// rest of the response.
    pub fn response_budget(&self) -> usize {
        self.effective_message_bytes() - 64 * 1024
    }

    /// The default per-item limit for a body limit: two maximal bodies (text and
    /// html) and 64 KiB for the rest.
    pub fn item_bytes_for(max_body_bytes: usize) -> usize {
        max_body_bytes * 2 + 64 * 1024
    }

    /// The horizon in milliseconds.
    pub fn max_horizon_ms(&self) -> i64 {
        i64::from(self.max_horizon_days) * 86_400_000
    }
}

/// Delivery tuning (API.md "Dispatch RPC").
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// How long a connector holds a job before it goes to another one.
    pub lease_ms: i64,
    /// First retry backoff; doubles each attempt, with jitter.
    pub retry_base_ms: i64,
    /// Backoff never exceeds this.
    pub retry_cap_ms: i64,
    /// After this many attempts a transient failure becomes FAILED.
    pub max_attempts: u32,
    /// How long a graceful stop waits for the answers of jobs out at connectors.
    pub drain_grace_ms: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            lease_ms: 30_000,
            retry_base_ms: 1_000,
            retry_cap_ms: 600_000,
            max_attempts: 10,
            drain_grace_ms: 5_000,
        }
    }
}

/// SQLite durability: `FULL` by default; `NORMAL` may lose the last transactions on
/// power loss (never on a process crash) and is only for benchmarks and tests that say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

/// What a token may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The Scheduler service.
    Backend,
    /// The Dispatch service.
    Connector,
    /// Both.
    Admin,
}

/// The accounts a token may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accounts {
    All,
    Only(Vec<String>),
}

impl Accounts {
    /// Whether `account` is among them.
    pub fn allows(&self, account: &str) -> bool {
        match self {
            Accounts::All => true,
            Accounts::Only(list) => list.iter().any(|a| a == account),
        }
    }
}

/// Tokens shorter than this are refused at start-up (`openssl rand -hex 32` makes a
/// good one).
pub const MIN_TOKEN_CHARS: usize = 16;

/// The position of the first token shorter than [`MIN_TOKEN_CHARS`], if any.
pub fn first_weak_token(tokens: &[TokenConfig]) -> Option<usize> {
    tokens
        .iter()
        .position(|t| t.token.trim().chars().count() < MIN_TOKEN_CHARS)
}

/// One bearer token. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenConfig {
    pub token: String,
    pub role: Role,
    pub accounts: Accounts,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .field("accounts", &self.accounts)
            .finish()
    }
}

/// TLS on the gRPC port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Everything `server::start` needs.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free one (see `RunningServer::local_addr`).
    pub listen: SocketAddr,
    /// The SQLite file; created with the schema when missing.
    pub db_path: PathBuf,
    pub limits: Limits,
    pub dispatch: DispatchConfig,
    pub synchronous: Synchronous,
    /// Events older than this are pruned.
    pub event_retention_ms: i64,
    /// The engine's clock; tests pass a `ManualClock`.
    pub clock: Arc<dyn Clock>,
    /// Bearer tokens; none configured means the service is open (loopback only unless
    /// the operator insisted).
    pub tokens: Vec<TokenConfig>,
    /// TLS on the gRPC port when set.
    pub tls: Option<TlsConfig>,
    /// Prometheus metrics on this address when set.
    pub metrics_listen: Option<SocketAddr>,
    /// The staff console (HTML) on this address when set.
    pub console_listen: Option<SocketAddr>,
    /// The console address is the default one, not asked for: if it cannot be bound
    /// (the port is taken), the service starts without the console and says so.
    pub console_optional: bool,
    /// Host names the console answers to besides its own address (`name` or
    /// `name:port`, lowercase; see `console::console_host`).
    pub console_hosts: Vec<String>,
    /// This node among the nodes sharing a database (`--node-id`, `--advertise`,
    /// `[cluster]`). A port 0 in its id or address is the port bound at start.
    pub cluster: crate::cluster::ClusterSettings,
    /// Set when this node acts as the owner of partitions it was granted (several nodes
    /// on PostgreSQL): every commit is fenced by them and jobs leave only inside the
    /// trust window. `None`: one node owning everything (SQLite, tests).
    pub ownership: Option<crate::cluster::Ownership>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("db_path", &self.db_path)
            .field("limits", &self.limits)
            .field("dispatch", &self.dispatch)
            .field("synchronous", &self.synchronous)
            .field("event_retention_ms", &self.event_retention_ms)
            .field("tokens", &self.tokens)
            .field("tls", &self.tls)
            .field("metrics_listen", &self.metrics_listen)
            .field("console_listen", &self.console_listen)
            .field("console_optional", &self.console_optional)
            .field("console_hosts", &self.console_hosts)
            .field("cluster", &self.cluster)
            .field("ownership", &self.ownership)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// The embedded defaults: `./sendlater.db` on 127.0.0.1:50051, system clock.
    pub fn new(listen: SocketAddr, db_path: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            db_path: db_path.into(),
            limits: Limits::default(),
            dispatch: DispatchConfig::default(),
            synchronous: Synchronous::Full,
            event_retention_ms: 7 * 86_400_000,
            clock: Arc::new(SystemClock),
            tokens: Vec::new(),
            tls: None,
            metrics_listen: None,
            console_listen: None,
            console_optional: false,
            console_hosts: Vec::new(),
            cluster: crate::cluster::ClusterSettings::new(
                default_node_id(listen),
                listen.to_string(),
            ),
            ownership: None,
        }
    }
}

/// This machine's host name: `/proc/sys/kernel/hostname` (Linux), else `$HOSTNAME`,
/// else `localhost`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The node id of a node listening on `listen` that names none: `HOSTNAME:PORT`.
pub fn default_node_id(listen: SocketAddr) -> String {
    format!("{}:{}", host_name(), listen.port())
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::new(
            SocketAddr::from(([127, 0, 0, 1], 50051)),
            PathBuf::from("./sendlater.db"),
        )
    }
}
