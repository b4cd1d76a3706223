//! The PostgreSQL store: one writer thread doing group commit on its own connection,
//! and a few shared connections for reads.
//!
//! The writer takes every queued write (up to [`MAX_GROUP`]) into one transaction
//! (`BEGIN`), each inside the savepoint `w` (released, or rolled back alone, at the
//! boundary to the next write), then commits. With `synchronous_commit` on (required
//! unless `--sync normal`), COMMIT returns once the commit is durable on the server, and
//! only then are the group's effects applied and its callers answered. Readers see a
//! commit only once it is durable (PostgreSQL makes a transaction visible after its
//! commit record is flushed).
//!
//! Every group also writes its number, with the writer's random id, to `store_meta`
//! (`writer_group`, or `writer_group.NODE` for a node's fenced writer, so the writers of
//! several nodes keep apart; the id keeps a marker left by a previous process from
//! answering for a group of this one). When the connection is lost during COMMIT, the outcome is
//! unknown: the writer reconnects (retrying until it can; writes that come meanwhile
//! are answered UNAVAILABLE), ends the lost connection's session on the server (a
//! COMMIT still under way there could otherwise commit after the look) and reads the
//! marker back, so the group is answered as committed or as failed, never guessed.
//!
//! While it cannot write (the connection is lost, a group failed), [`Backend::degraded`]
//! says why, and the writer retries while idle too: it reconnects and commits a group of
//! no write (the marker, and the carried leases below), whose success clears it.
//!
//! Leases whose jobs left before the group committed ([`WriteTx::leases_out`]) are not
//! lost with a group that fails: the writer records them again first thing in its next
//! group (as SQLite's claims are applied again).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::NoTls;

use super::rows::{self, Pg};
use super::schema;
use super::scope::{Alloc, Scope};
use super::tx::{Group, PgTx, ANSWER_WITHIN};
use crate::clock::Clock;
use crate::config::Synchronous;
use crate::domain::machine::Change;
use crate::domain::{self, BusinessHours, DeferredTicket, EventType, Item, ItemId, ListQuery};
use crate::domain::{Millis, Order};
use crate::store::tickets::LiveTickets;
use crate::store::Fence;
use crate::store::{
    redact_url, Backend, CommitHook, Completion, ControlRow, DueRead, Effects, EventsAfter, Job,
    RecoveryScan, Rows, StoreError, Tx, WriteTx, MAX_GROUP,
};

/// Queue length in front of the writer; senders wait (backpressure) when it is full.
const QUEUE: usize = 8192;
/// Connections shared by reads.
const READERS: usize = 4;
/// The first and the longest wait between reconnection attempts.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

enum Msg {
    Job(Job),
    Close(oneshot::Sender<()>),
}

/// What the writer and the handles share.
struct Shared {
    metrics: Arc<crate::metrics::Metrics>,
    tickets: Arc<LiveTickets>,
    degraded: watch::Sender<Option<String>>,
    fatal: watch::Sender<Option<String>>,
    /// Leases whose jobs left before their group committed (see `Group::uncommitted`).
    uncommitted: Arc<AtomicUsize>,
}

/// The PostgreSQL engine behind the contract (see `store`).
pub struct PgStore {
    url: String,
    writer: mpsc::Sender<Msg>,
    readers: ReadPool,
    events: watch::Receiver<u64>,
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The partitions this store loads and writes.
    scope: Arc<Scope>,
}

/// How long a connection may take (TCP, start-up, authentication) when the URL sets no
/// `connect_timeout`: a server that accepts and then says nothing must not hold the
/// start, or the writer, for ever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `url` on the current runtime (its connection task is spawned there),
/// within the URL's `connect_timeout` or [`CONNECT_TIMEOUT`].
async fn connect(url: &str) -> Result<Pg, StoreError> {
    let failed = |reason: String| StoreError::Connect {
        url: redact_url(url),
        reason,
    };
    let limit = url
        .parse::<tokio_postgres::Config>()
        .map_err(|e| failed(with_causes(&e)))?
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT);
    let (client, conn) = tokio::time::timeout(limit, tokio_postgres::connect(url, NoTls))
        .await
        .map_err(|_| {
            failed(format!(
                "timed out after {} s (the server accepted no session)",
                limit.as_secs_f64()
            ))
        })?
        .map_err(|e| failed(with_causes(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok(Pg::new(client))
}

/// A plain session on `url` (the lease manager's), on the current runtime.
pub(super) async fn connect_client(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    Ok(connect(url).await?.client)
}

/// The driver's error with its causes: tokio-postgres shows only "db error" for what
/// the server said (`FATAL: database "x" does not exist`), which is in its source.
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// A few connections every read shares (tokio-postgres pipelines concurrent queries on
/// one connection); a lost one is replaced on the next read.
struct ReadPool {
    url: String,
    conns: Vec<tokio::sync::Mutex<Option<Arc<Pg>>>>,
    next: AtomicUsize,
}

impl ReadPool {
    async fn get(&self) -> Result<Arc<Pg>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut slot = self.conns[i].lock().await;
        if let Some(pg) = slot.as_ref().filter(|pg| !pg.client.is_closed()) {
            return Ok(pg.clone());
        }
        let pg = Arc::new(connect(&self.url).await.map_err(|e| match e {
            StoreError::Connect { reason, .. } => StoreError::Unavailable(reason),
            other => other,
        })?);
        *slot = Some(pg.clone());
        Ok(pg)
    }

    /// Drops every shared connection (the next reads take new ones).
    async fn drop_all(&self) {
        for slot in &self.conns {
            *slot.lock().await = None;
        }
    }
}

/// What the writer thread reports once it has connected and migrated.
struct Ready {
    scope: Arc<Scope>,
}

impl PgStore {
    /// Connects to `url`, creates or migrates the schema, checks that commits are
    /// durable (`synchronous_commit` not `off`, unless `sync` is `Normal`), and starts
    /// the writer thread.
    ///
    /// # Errors
    /// The database cannot be reached (the message names the URL without its password),
    /// has a newer schema, or does not make commits durable.
    pub fn open(
        url: &str,
        sync: Synchronous,
        clock: Arc<dyn Clock>,
        hook: Arc<dyn CommitHook>,
        fence: Option<Fence>,
    ) -> Result<Arc<dyn Backend>, StoreError> {
        Self::open_with(url, sync, clock, hook, fence, None)
    }

    /// [`PgStore::open`], counting into `metrics` when given (a node's registry, kept
    /// across its servers).
    ///
    /// # Errors
    /// As [`PgStore::open`].
    pub fn open_with(
        url: &str,
        sync: Synchronous,
        clock: Arc<dyn Clock>,
        hook: Arc<dyn CommitHook>,
        fence: Option<Fence>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Result<Arc<dyn Backend>, StoreError> {
        let shared = Arc::new(Shared {
            metrics: metrics.unwrap_or_default(),
            tickets: Default::default(),
            degraded: watch::channel(None).0,
            fatal: watch::channel(None).0,
            uncommitted: Default::default(),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let (events_tx, events) = watch::channel(0u64);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready, StoreError>>();
        let (u, sh, fen) = (url.to_owned(), shared.clone(), fence.clone());
        let thread = std::thread::Builder::new()
            .name("sendlater-pg-writer".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Unavailable(e.to_string())));
                        return;
                    }
                };
                let started = rt.block_on(start(&u, sync, fen.as_ref()));
                let (pg, alloc, scope) = match started {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let session = rt.block_on(session_pid(&pg));
                let _ = events_tx.send(alloc.last_seq());
                let _ = ready_tx.send(Ok(Ready {
                    scope: scope.clone(),
                }));
                let mut w = Writer {
                    url: u,
                    sync,
                    rt,
                    clock,
                    hook,
                    events: events_tx,
                    shared: sh.clone(),
                    g: Group::new(
                        pg,
                        alloc,
                        scope,
                        sh.metrics.clone(),
                        sh.tickets.clone(),
                        sh.uncommitted.clone(),
                    ),
                    carry: Vec::new(),
                    session,
                    rx,
                    closing: None,
                    run_id: rand::random(),
                    group_no: 0,
                    fence: fen,
                };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run()));
                if r.is_err() {
                    sh.fatal
                        .send_replace(Some("the PostgreSQL writer thread panicked".into()));
                }
            })
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let ready = ready_rx
            .recv()
            .map_err(|_| StoreError::Unavailable("the writer thread ended".into()))?;
        let scope = match ready {
            Ok(r) => r.scope,
            Err(e) => {
                let _ = thread.join();
                return Err(e);
            }
        };
        Ok(Arc::new(PgStore {
            url: url.to_owned(),
            writer: tx,
            readers: ReadPool {
                url: url.to_owned(),
                conns: (0..READERS)
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next: AtomicUsize::new(0),
            },
            events,
            shared,
            thread: Mutex::new(Some(thread)),
            scope,
        }))
    }

    async fn reader(&self) -> domain::Result<Arc<Pg>> {
        Ok(self.readers.get().await?)
    }

    /// Before a read a client sees: when jobs left whose leases have not committed yet
    /// (they leave as soon as their write has run), waits for a write queued behind
    /// them, so the read shows those items DISPATCHING as their connector does.
    async fn after_leases_out(&self) -> domain::Result<()> {
        if self.shared.uncommitted.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let (job, outcome) = crate::store::job(|_| Ok(()));
        self.writer
            .send(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        outcome.await
    }

    /// Waits for a read for at most [`ANSWER_WITHIN`]: past it the server is taken
    /// for not answering, every shared connection is dropped (the next reads take new
    /// ones) and the read is UNAVAILABLE.
    async fn bounded<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> domain::Result<T> {
        match tokio::time::timeout(ANSWER_WITHIN, read).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                self.readers.drop_all().await;
                Err(StoreError::Unavailable(format!(
                    "the database did not answer a read within {} s",
                    ANSWER_WITHIN.as_secs()
                ))
                .into())
            }
        }
    }
}

/// Connects, migrates, sets up the writer's session; returns the connection, where
/// numbering stands and what the store owns (see `scope`).
async fn start(
    url: &str,
    sync: Synchronous,
    fence: Option<&Fence>,
) -> Result<(Pg, Alloc, Arc<Scope>), StoreError> {
    let mut pg = connect(url).await?;
    schema::migrate(&mut pg.client).await?;
    set_up_writer_session(&pg, url, sync, fence).await?;
    let scope = match (schema::partition_count(&pg.client).await?, fence) {
        (None, None) => Scope::unpartitioned(),
        (None, Some(f)) => {
            return Err(StoreError::Corrupt(format!(
                "node {} holds partitions, but the database has no partition count \
                 (store_meta.partitions, fixed by the lease rows' init)",
                f.node
            )))
        }
        (Some(n), Some(f)) => Scope::new(n, f.held.clone())?,
        (Some(n), None) => {
            // No fence: every partition, each at the epoch of its lease row now.
            let mut held: Vec<(u32, i64)> = (0..n).map(|p| (p, 0)).collect();
            for (p, e) in rows::lease_epochs(&pg).await? {
                if let Some(h) = held.get_mut(p as usize) {
                    h.1 = e;
                }
            }
            Scope::new(n, held)?
        }
    };
    let alloc = match scope.partitions {
        None => {
            let (max_id, last_seq) = rows::max_ids(&pg).await?;
            Alloc::unpartitioned(max_id, last_seq)
        }
        Some(_) => Alloc::partitioned(&rows::partition_heads(&pg, &scope.held).await?),
    };
    tracing::debug!(
        partitions = ?scope.partitions,
        owned = scope.held.len(),
        fenced = fence.is_some(),
        "PostgreSQL store: partitions loaded and written"
    );
    Ok((pg, alloc, Arc::new(scope)))
}

/// The server process serving `pg`'s session, if the server tells.
async fn session_pid(pg: &Pg) -> Option<i32> {
    match pg.client.query_one("SELECT pg_backend_pid()", &[]).await {
        Ok(row) => row.try_get(0).ok(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot learn the session's server process");
            None
        }
    }
}

/// Makes a new connection the writer's (at start and after every reconnect): refuses
/// `synchronous_commit = off` unless `--sync normal` (under `normal` the session runs
/// with it off: a crash of the server may take back the last commits, as SQLite's
/// `NORMAL` may), uses custom plans, and prepares every statement the writer queues.
async fn set_up_writer_session(
    pg: &Pg,
    url: &str,
    sync: Synchronous,
    fence: Option<&Fence>,
) -> Result<(), StoreError> {
    if let Some(f) = fence {
        pg.client
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = {}",
                f.idle_limit.as_millis().max(1)
            ))
            .await?;
        pg.statements
            .get(&pg.client, super::lease::fence_sql())
            .await?;
    }
    // The writer's statements take arrays of any length (ids = ANY($1), unnest): a
    // generic plan, which PostgreSQL switches to after five runs, cannot know their
    // size and picked scans of the whole table (on-time lateness of seconds).
    pg.client
        .batch_execute("SET plan_cache_mode = force_custom_plan")
        .await?;
    match sync {
        Synchronous::Full => {
            let row = pg.client.query_one("SHOW synchronous_commit", &[]).await?;
            let v: String = row.get(0);
            if v == "off" {
                return Err(StoreError::Connect {
                    url: redact_url(url),
                    reason: "synchronous_commit is off on this server, so an OK would not \
                             mean durable; turn it on, or start with --sync normal"
                        .into(),
                });
            }
        }
        Synchronous::Normal => {
            pg.client
                .batch_execute("SET synchronous_commit = off")
                .await?;
        }
    }
    // Queued statements must be prepared already: one not prepared yet sends its
    // Execute only after its Parse is answered, and what was queued after it overtakes it.
    rows::prepare_writes(pg).await?;
    Ok(())
}

struct Writer {
    url: String,
    sync: Synchronous,
    rt: Runtime,
    clock: Arc<dyn Clock>,
    hook: Arc<dyn CommitHook>,
    events: watch::Sender<u64>,
    shared: Arc<Shared>,
    g: Group,
    /// Leases whose jobs left but whose group did not commit: recorded again first.
    carry: Vec<(Item, Change)>,
    /// The server process of the writer's connection (`pg_backend_pid`), if known.
    session: Option<i32>,
    /// The queue of writes.
    rx: mpsc::Receiver<Msg>,
    /// Set once the store is asked to close: the writer stops after this group.
    closing: Option<oneshot::Sender<()>>,
    /// This writer's groups are numbered from 1; `run_id` (random, per writer) makes the
    /// marker of one tell apart from a marker another writer (a previous process) left.
    run_id: u64,
    group_no: u64,
    /// Every commit is conditional on these leases (several nodes); `None`: one node.
    fence: Option<Fence>,
}

impl Writer {
    fn run(&mut self) {
        let mut idle_wait = RECONNECT_FIRST;
        while self.closing.is_none() {
            let retry = self.g.broken().is_some()
                || !self.carry.is_empty()
                || self.shared.degraded.borrow().is_some();
            if !retry {
                idle_wait = RECONNECT_FIRST;
            }
            let first = if retry {
                // Retry while idle too: reconnect, then commit a group of no write (the
                // marker, and the leases carried from a failed group), whose success
                // clears `degraded`, so health comes back without traffic. The timer
                // is made inside the runtime (it needs its time driver).
                // The wait doubles while it fails, as far as RECONNECT_MAX.
                let wait = idle_wait;
                let (rt, rx) = (&self.rt, &mut self.rx);
                match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(m) => m,
                    Err(_) => {
                        if self.g.broken.borrow().is_none() || self.reconnect_once() {
                            self.group(Vec::new());
                        }
                        idle_wait = (idle_wait * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            } else {
                self.rx.blocking_recv()
            };
            let Some(first) = first else { break };
            let mut jobs = Vec::new();
            match first {
                Msg::Close(ack) => {
                    self.closing = Some(ack);
                }
                Msg::Job(j) => jobs.push(j),
            }
            while self.closing.is_none() && jobs.len() < MAX_GROUP {
                match self.rx.try_recv() {
                    Ok(Msg::Job(j)) => jobs.push(j),
                    Ok(Msg::Close(ack)) => self.closing = Some(ack),
                    Err(_) => break,
                }
            }
            if !jobs.is_empty() {
                self.group(jobs);
            }
        }
        if let Some(ack) = self.closing.take() {
            let _ = ack.send(());
        }
    }

    /// One reconnection attempt; clears `broken` on success.
    fn reconnect_once(&mut self) -> bool {
        let attempt = async {
            let pg = connect(&self.url).await?;
            let ready = async {
                set_up_writer_session(&pg, &self.url, self.sync, self.fence.as_ref()).await?;
                Ok::<_, StoreError>(session_pid(&pg).await)
            };
            let session = tokio::time::timeout(ANSWER_WITHIN, ready)
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "the new connection did not answer within {} s",
                        ANSWER_WITHIN.as_secs()
                    ))
                })??;
            Ok::<_, StoreError>((pg, session))
        };
        match self.rt.block_on(attempt) {
            Ok((pg, session)) => {
                self.g.pg = Arc::new(pg);
                self.session = session;
                *self.g.broken.borrow_mut() = None;
                tracing::info!(url = %redact_url(&self.url), "reconnected to the database");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reconnect to the database yet");
                false
            }
        }
    }

    fn set_degraded(&self, why: Option<String>) {
        self.shared.degraded.send_if_modified(|d| {
            if *d != why {
                *d = why;
                true
            } else {
                false
            }
        });
    }

    /// Runs `jobs` as one group and answers them.
    fn group(&mut self, jobs: Vec<Job>) {
        if self.g.broken().is_some() {
            self.reconnect_once();
        }
        let had_jobs = !jobs.is_empty();
        self.group_no += 1;
        let group_no = self.group_no;
        self.g.changed.clear();
        let mut committed_fx = Effects::default();
        let mut answers: Vec<Completion> = Vec::with_capacity(jobs.len());
        let mut group_leases: Vec<(Item, Change)> = Vec::new();
        *self.g.doomed.borrow_mut() = None;
        self.g.job.set(0);
        let begun: Result<(), StoreError> = match self.g.broken() {
            Some(why) => Err(StoreError::Unavailable(why)),
            None => {
                self.g.queue_simple("BEGIN; SAVEPOINT w");
                Ok(())
            }
        };
        // Leases carried from a group that failed: recorded before anything reads them.
        if begun.is_ok() && !self.carry.is_empty() {
            let carry = std::mem::take(&mut self.carry);
            let now = self.clock.now_ms();
            let mut fx = Effects::default();
            let mut leases = Vec::new();
            let r = {
                let mut ptx = PgTx::new(now, &mut self.g, &self.rt, &mut fx, &mut leases);
                let mut r = Ok(());
                for (item, change) in &carry {
                    if let Err(e) = ptx.save(item, *change) {
                        r = Err(e);
                        break;
                    }
                }
                r
            };
            let r = r.and_then(|()| self.boundary(true).map_err(domain::Error::from));
            match r {
                Ok(()) => {
                    committed_fx.append(fx);
                    group_leases.extend(carry);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recording carried leases failed; kept for the next group");
                    self.carry = carry;
                }
            }
        }
        for (n, job) in jobs.into_iter().enumerate() {
            self.g.job.set(n as u64 + 1);
            let now = self.clock.now_ms();
            let mut fx = Effects::default();
            let mut leases = Vec::new();
            let (ok, done) = {
                let mut ptx = PgTx::new(now, &mut self.g, &self.rt, &mut fx, &mut leases);
                if begun.is_err() {
                    // The connection is gone: every operation fails at once.
                    ptx.g
                        .broken
                        .borrow_mut()
                        .get_or_insert_with(|| "the transaction could not begin".into());
                }
                job(&mut Tx::new(now, &mut ptx))
            };
            let ended = self.boundary(ok);
            match (ok, ended) {
                (true, Ok(())) => {
                    committed_fx.append(fx);
                    group_leases.extend(leases);
                    answers.push(done);
                }
                (false, Ok(())) => {
                    // The closure's own error, rolled back alone: its caller gets it.
                    self.hook.abandoned(&fx);
                    self.carry.extend(leases);
                    done(Ok(()));
                }
                (_, Err(e)) => {
                    // A statement failed, or the connection is lost.
                    self.hook.abandoned(&fx);
                    self.carry.extend(leases);
                    done(Err(e));
                }
            }
        }
        let outcome = if self.g.broken().is_some() || begun.is_err() {
            self.g.drop_all_unsent();
            Err(StoreError::Unavailable(self.g.broken().unwrap_or_else(
                || "the transaction could not begin".into(),
            )))
        } else {
            self.commit(group_no)
        };
        match outcome {
            Ok(()) => {
                self.set_degraded(None);
                // Recorded: reads need not wait for these leases any more.
                self.shared
                    .uncommitted
                    .fetch_sub(group_leases.len(), Ordering::SeqCst);
                if had_jobs {
                    self.shared
                        .metrics
                        .commit_batch_size
                        .observe(answers.len() as f64);
                }
                if committed_fx.unreadable > 0 {
                    self.shared
                        .metrics
                        .unreadable_items
                        .inc_by(committed_fx.unreadable);
                }
                if committed_fx.abandoned > 0 {
                    self.shared
                        .metrics
                        .abandoned_leases
                        .inc_by(committed_fx.abandoned);
                }
                self.hook.durable(&committed_fx);
                if committed_fx.max_seq > 0 {
                    // Every commit with events wakes the watchers (a partition's
                    // sequences may be below another's); the value stays the largest.
                    self.events
                        .send_modify(|s| *s = (*s).max(committed_fx.max_seq));
                }
                for done in answers {
                    done(Ok(()));
                }
            }
            Err(e) => {
                let why = e.to_string();
                tracing::warn!(error = %why, writes = answers.len(), "a group did not commit");
                self.set_degraded(Some(format!("the database cannot be written: {why}")));
                self.hook.abandoned(&committed_fx);
                self.carry.extend(group_leases);
                for done in answers {
                    done(Err(StoreError::Unavailable(why.clone())));
                }
                if self.g.broken.borrow().is_none() {
                    // Whatever is left queued belongs to the failed group.
                    self.g.drop_all_unsent();
                    let pg = self.g.pg.clone();
                    let rollback = self.g.within(&self.rt, async move {
                        Ok(pg.client.batch_execute("ROLLBACK").await?)
                    });
                    if let Err(e) = rollback {
                        self.g.note(&e);
                    }
                }
            }
        }
    }

    /// Ends a write: queues the release of its savepoint and the next one (`ok`), or
    /// drops what it queued and rolls it back. Nothing is sent here: the next read, or
    /// the commit, takes it along (a later failure of its statements dooms the group).
    fn boundary(&self, ok: bool) -> Result<(), StoreError> {
        if let Some(why) = self.g.broken() {
            return Err(StoreError::Unavailable(why));
        }
        if ok {
            self.g.queue_simple("RELEASE w; SAVEPOINT w");
        } else {
            self.g.drop_unsent_of_current();
            self.g.queue_simple("ROLLBACK TO w");
        }
        Ok(())
    }

    /// What group `group_no` of this writer writes to `store_meta` (`writer_group`):
    /// unique to this writer, so a marker another process left never matches.
    fn marker(&self, group_no: u64) -> String {
        format!("{:016x}-{group_no}", self.run_id)
    }

    /// The `store_meta` key of this writer's marker: one per node (`writer_group.NODE`)
    /// when fenced, so another node's groups never overwrite it (nor wait for its row
    /// lock); `writer_group` for the one writer of an unfenced store.
    fn marker_key(&self) -> String {
        match &self.fence {
            Some(f) => format!("writer_group.{}", f.node),
            None => "writer_group".into(),
        }
    }

    /// Commits the open group, with its number; resolves an unknown outcome.
    fn commit(&mut self, group_no: u64) -> Result<(), StoreError> {
        let pg = self.g.pg.clone();
        let marker = self.marker(group_no);
        let key = self.marker_key();
        // Everything queued, the group's number and COMMIT go in one round trip.
        self.g.seal();
        let pending: Vec<_> = std::mem::take(&mut *self.g.pending.borrow_mut())
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        let fence = self.fence.clone();
        let commit = async move {
            let st = match pg
                .statements
                .get(
                    &pg.client,
                    "INSERT INTO store_meta (key, value) VALUES ($2, $1) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .await
            {
                Ok(st) => st,
                Err(e) => return vec![e],
            };
            // The fence goes last before the marker: it holds the lease rows until the
            // COMMIT, and aborts the transaction if another node took one.
            let fenced = async {
                let Some(f) = &fence else { return Ok(()) };
                let st = pg
                    .statements
                    .get(&pg.client, super::lease::fence_sql())
                    .await?;
                let parts: Vec<i32> = f.held.iter().map(|&(p, _)| p as i32).collect();
                let epochs: Vec<i64> = f.held.iter().map(|&(_, e)| e).collect();
                let n = parts.len() as i64;
                match pg.client.query(&st, &[&f.node, &parts, &epochs, &n]).await {
                    Ok(_) => Ok(()),
                    Err(e) if super::lease::is_fence_refusal(&e) => Err(StoreError::Fenced(
                        format!("node {} holds its partitions at other epochs", f.node),
                    )),
                    Err(e) => Err(StoreError::from(e)),
                }
            };
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&marker, &key];
            let mark = pg.client.execute(&st, &params);
            let commit = pg.client.batch_execute("COMMIT");
            let (p, f, m, c) = futures_util::future::join4(
                futures_util::future::join_all(pending),
                fenced,
                mark,
                commit,
            )
            .await;
            // A statement that failed aborted the transaction: its COMMIT rolled back.
            let mut errors: Vec<StoreError> = p.into_iter().filter_map(Result::err).collect();
            if let Err(e) = f {
                // The fence's refusal first: it is why the statements after it failed.
                errors.insert(0, e);
            }
            errors.extend(m.err().map(StoreError::from));
            errors.extend(c.err().map(StoreError::from));
            errors
        };
        // The timer is made inside the runtime (it needs its time driver).
        let sent = self
            .rt
            .block_on(async { tokio::time::timeout(ANSWER_WITHIN, commit).await });
        // No answer in time: the connection is taken for lost, the outcome unknown.
        let sent = sent.unwrap_or_else(|_| {
            vec![StoreError::Unavailable(format!(
                "the database did not answer the COMMIT within {} s",
                ANSWER_WITHIN.as_secs()
            ))]
        });
        if sent.is_empty() {
            return Ok(());
        }
        let lost = sent.iter().find_map(|e| match e {
            StoreError::Postgres(pe) if pe.is_closed() || pe.code().is_none() => {
                Some(pe.to_string())
            }
            StoreError::Unavailable(why) => Some(why.clone()),
            _ => None,
        });
        if let Some(StoreError::Fenced(why)) = sent.first() {
            // Another node owns the partitions: nothing this writer writes may commit
            // again; the node must stop acting as owner.
            tracing::warn!(reason = %why, "the commit was fenced: another node took the partitions");
            self.shared.metrics.fenced_writes.inc();
            self.shared
                .fatal
                .send_replace(Some(format!("fenced: {why}")));
            return Err(StoreError::Fenced(why.clone()));
        }
        let Some(e) = lost else {
            // The server answered every statement: the group did not commit.
            return Err(sent.into_iter().next().unwrap_or(StoreError::Closed));
        };
        // The connection was lost around COMMIT: find out whether it committed.
        tracing::warn!(error = %e, group = group_no, "commit outcome unknown; reconnecting to learn it");
        self.shared.metrics.commit_outcome_unknown.inc();
        self.g.broken.borrow_mut().get_or_insert_with(|| e.clone());
        self.set_degraded(Some(format!("the database connection is lost: {e}")));
        let mut wait = RECONNECT_FIRST;
        let started = Instant::now();
        let lost_session = self.session;
        loop {
            if self.reconnect_once() && lost_session.is_none_or(|pid| self.end_session(pid)) {
                let pg = self.g.pg.clone();
                let key = self.marker_key();
                let found = self.g.within(&self.rt, async move {
                    Ok(pg
                        .client
                        .query_opt("SELECT value FROM store_meta WHERE key = $1", &[&key])
                        .await?)
                });
                match found {
                    Ok(row) => {
                        let v: Option<String> = row.map(|r| r.get(0));
                        return if v.as_deref() == Some(self.marker(group_no).as_str()) {
                            tracing::info!(group = group_no, "the group had committed");
                            Ok(())
                        } else {
                            Err(StoreError::Unavailable(format!(
                                "the connection was lost before the commit: {e}"
                            )))
                        };
                    }
                    Err(e2) => {
                        self.g
                            .broken
                            .borrow_mut()
                            .get_or_insert_with(|| e2.to_string());
                    }
                }
            }
            if started.elapsed() > Duration::from_secs(3600) {
                self.shared.fatal.send_replace(Some(format!(
                    "the outcome of a commit stayed unknown for an hour: {e}"
                )));
                return Err(StoreError::Unavailable(e));
            }
            if !self.refuse_for(wait, &e.to_string()) {
                // Closing: the outcome stays unknown, and is not reported OK.
                return Err(StoreError::Unavailable(format!(
                    "the store closed before the outcome of a commit was known: {e}"
                )));
            }
            wait = (wait * 2).min(RECONNECT_MAX);
        }
    }

    /// Ends the lost connection's session on the server and waits (up to 5 s) until it
    /// is gone: until then its transaction may still commit (a COMMIT waiting for the
    /// disk or for a synchronous standby goes on without its client), so the marker read
    /// now would prove nothing. `true` once it is gone, or when the server cannot end it
    /// (no `pg_terminate_backend` with a timeout, as on PostgreSQL before 14): the
    /// marker is then read as it is.
    fn end_session(&mut self, pid: i32) -> bool {
        let pg = self.g.pg.clone();
        let r = self.g.within(&self.rt, async move {
            Ok(pg
                .client
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1) \
                     OR pg_terminate_backend($1, 5000)",
                    &[&pid],
                )
                .await?)
        });
        match r {
            Ok(row) => {
                let gone: bool = row.get(0);
                if !gone {
                    tracing::warn!(
                        pid,
                        "the lost connection's session goes on; waiting for it to end"
                    );
                }
                gone
            }
            Err(e) => {
                self.g.note(&e);
                if self.g.broken.borrow().is_some() {
                    return false;
                }
                tracing::warn!(error = %e, pid, "cannot end the lost connection's session; reading the outcome as it stands");
                true
            }
        }
    }

    /// Waits `wait` before the next reconnection attempt while a group's outcome is
    /// unknown (nothing may commit before it is known): the writes that come meanwhile
    /// are answered UNAVAILABLE at once rather than left waiting. Returns `false` when
    /// the store is asked to close.
    fn refuse_for(&mut self, wait: Duration, why: &str) -> bool {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            let (rt, rx) = (&self.rt, &mut self.rx);
            match rt.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                Ok(Some(Msg::Job(job))) => self.refuse(job, why),
                Ok(Some(Msg::Close(ack))) => {
                    self.closing = Some(ack);
                    return false;
                }
                // Every handle is gone: nothing more will come.
                Ok(None) => {
                    std::thread::sleep(left);
                    return true;
                }
                Err(_) => return true,
            }
        }
    }

    /// Answers `job` UNAVAILABLE: it runs on the broken connection (every read fails
    /// at once, nothing it queues is sent), its effects are handed back as abandoned and
    /// the leases it marked out are carried, as for a write of a failed group.
    fn refuse(&mut self, job: Job, why: &str) {
        self.g
            .broken
            .borrow_mut()
            .get_or_insert_with(|| why.to_owned());
        let now = self.clock.now_ms();
        let mut fx = Effects::default();
        let mut leases = Vec::new();
        let (_, done) = {
            let mut ptx = PgTx::new(now, &mut self.g, &self.rt, &mut fx, &mut leases);
            job(&mut Tx::new(now, &mut ptx))
        };
        self.g.drop_all_unsent();
        self.hook.abandoned(&fx);
        self.carry.extend(leases);
        done(Err(StoreError::Unavailable(why.to_owned())));
    }
}

#[async_trait::async_trait]
impl Backend for PgStore {
    fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.shared.metrics
    }
    fn live_tickets(&self) -> Arc<LiveTickets> {
        self.shared.tickets.clone()
    }
    fn degraded(&self) -> watch::Receiver<Option<String>> {
        self.shared.degraded.subscribe()
    }
    fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.shared.fatal.subscribe()
    }
    fn event_sequence(&self) -> watch::Receiver<u64> {
        self.events.clone()
    }
    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        if let Some(why) = self.shared.fatal.borrow().clone() {
            return Err(StoreError::Unavailable(why));
        }
        self.writer
            .send(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Closed)
    }
    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::debug!(url = %redact_url(&self.url), "PostgreSQL store closed");
    }

    async fn get_item(&self, account: String, id: ItemId) -> domain::Result<Option<Item>> {
        self.after_leases_out().await?;
        let pg = self.reader().await?;
        self.bounded(rows::get_item(&*pg, &account, id)).await
    }
    async fn ticket_items(&self, account: String, ticket: String) -> domain::Result<Vec<Item>> {
        self.after_leases_out().await?;
        let pg = self.reader().await?;
        self.bounded(rows::ticket_items(&*pg, &account, &ticket))
            .await
    }
    async fn list_items(
        &self,
        q: ListQuery,
        after: Option<(Millis, ItemId)>,
        limit: usize,
    ) -> domain::Result<Rows<Item>> {
        self.after_leases_out().await?;
        let pg = self.reader().await?;
        self.bounded(rows::list_items(&*pg, &q, after, limit)).await
    }
    async fn deferred_tickets(
        &self,
        account: String,
        order: Order,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> domain::Result<Rows<DeferredTicket>> {
        self.after_leases_out().await?;
        let pg = self.reader().await?;
        let after = after.as_ref().map(|(at, t)| (*at, t.as_str()));
        self.bounded(rows::deferred_tickets(&*pg, &account, order, after, limit))
            .await
    }
    async fn events_after(
        &self,
        account: Option<String>,
        after: u64,
        limit: usize,
    ) -> domain::Result<EventsAfter> {
        self.after_leases_out().await?;
        let pg = self.reader().await?;
        let partition = account.as_deref().and_then(|a| self.scope.partition(a));
        self.bounded(rows::events_after(
            &*pg,
            account.as_deref(),
            after,
            limit,
            partition,
        ))
        .await
    }
    async fn newest_event(&self, account: String) -> domain::Result<u64> {
        match self.scope.partition(&account) {
            // Before partitions, one sequence for all.
            None => Ok(*self.events.borrow()),
            Some(p) => {
                let pg = self.reader().await?;
                self.bounded(rows::newest_of_partition(&*pg, p)).await
            }
        }
    }
    async fn recovery_scan(&self) -> domain::Result<RecoveryScan> {
        let pg = self.reader().await?;
        let owned = self.scope.filter();
        let mut scan = self
            .bounded(rows::recovery_scan(
                &*pg,
                &self.shared.tickets,
                owned.as_deref(),
            ))
            .await?;
        scan.controls
            .retain(|c| self.scope.sees_control(&c.account_id));
        Ok(scan)
    }
    async fn live_item_ids(&self) -> domain::Result<Vec<ItemId>> {
        let pg = self.reader().await?;
        let owned = self.scope.filter();
        self.bounded(rows::live_item_ids(&*pg, owned.as_deref()))
            .await
    }
    async fn event_heads(
        &self,
        account: String,
        after: u64,
        limit: usize,
    ) -> domain::Result<Vec<(u64, EventType, ItemId, String)>> {
        let pg = self.reader().await?;
        self.bounded(rows::event_heads(&*pg, &account, after, limit))
            .await
    }
    async fn business_hours(&self, account: String) -> domain::Result<Option<BusinessHours>> {
        let pg = self.reader().await?;
        self.bounded(rows::get_business_hours(&*pg, &account)).await
    }
    async fn every_account_controls(&self) -> domain::Result<Vec<ControlRow>> {
        let pg = self.reader().await?;
        self.bounded(rows::every_account_controls(&*pg)).await
    }
    async fn rewindows_under_way(&self) -> domain::Result<Vec<String>> {
        let pg = self.reader().await?;
        let mut accounts = self.bounded(rows::rewindows_under_way(&*pg)).await?;
        // A few rows: other partitions' are left to their owners.
        accounts.retain(|a| self.scope.owns(a));
        Ok(accounts)
    }
    async fn due_items(&self, ids: Vec<ItemId>) -> domain::Result<DueRead> {
        let pg = self.reader().await?;
        let (items, metas) = self.bounded(rows::due_items(&*pg, &ids)).await?;
        Ok(DueRead {
            epoch: 0,
            metas,
            items,
        })
    }
}
