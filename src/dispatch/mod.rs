//! Dispatch: hands due items to connectors and records what they answer.
//!
//! One actor task owns all dispatch state (connectors and their credit, the due items
//! waiting per channel and account, the jobs in flight, held-back items); the gRPC
//! stream tasks talk to it over an mpsc. An actor here, unlike the wheel's short lock,
//! because each round awaits a store write and the state must not change under it.
//!
//! A round of the loop:
//! 1. take the ids the wheel fired, with the deadline each fired for, and read their
//!    account, channel, state and lease in one batch read (`meta`); queue PENDING ones
//!    per channel, round-robin across accounts (`fair`); a DISPATCHING one whose lease
//!    ended by that deadline (or that no stream holds, after a restart) is abandoned:
//!    the attempt counts and the stream that held it gets no more jobs (`conn`);
//! 2. apply lateness windows that ended, release held-back items whose pause ended or
//!    whose rate limit has room (`hold`);
//! 3. plan up to the connectors' free credit (never more than a stream's buffer takes),
//!    holding back paused or rate-limited items. An item this round read whole from its
//!    row is leased here, by the state machine, and *claimed* (`store::claims`): its
//!    job goes out at once, without waiting for the writer, which records the lease
//!    before any later write reads the item. The rest (changed recently, so known from
//!    memory only, or refused because a write touched it since the read) are leased in
//!    the store write that also records the answers received so far (`writes`); those
//!    jobs go out as soon as that write has executed in the writer's open group,
//!    before its fsync; up to `WRITES_IN_FLIGHT` such writes overlap. An answer counts
//!    only for a job its stream holds (`job`: the job id carries a secret lease token).

mod conn;
mod fair;
mod hold;
mod job;
mod meta;
pub mod writes;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Accounts;
use crate::domain::machine::{self, Command, Step};
use crate::domain::{self, Channel, EventType, Item, ItemId, Millis, State};
use crate::engine::{Engine, Fired};
use crate::store::Claim;
use conn::{Conn, Held};
use fair::FairQueue;
use hold::{Hold, Limiter};
pub use job::{job_id, parse_job_id, Answer, Job, JobKey};
use meta::{read_meta, Meta};
use writes::{Outcome, Tuning};

/// Most items leased or recorded in one write.
const BATCH: usize = 1000;

/// What a connector stream tells the dispatcher.
#[derive(Debug)]
pub enum ConnectorEvent {
    Hello {
        conn: u64,
        connector_id: String,
        channels: Vec<Channel>,
        /// The accounts whose items this connector's token may receive.
        accounts: Accounts,
        max_in_flight: usize,
        jobs: mpsc::Sender<Job>,
        /// Cancelled by the dispatcher to end the stream (a stalled connector).
        kick: CancellationToken,
    },
    Answer {
        conn: u64,
        job: JobKey,
        answer: Answer,
        /// Held until the dispatcher has looked at the answer: a stream has a bounded
        /// number of answers in the dispatcher's queue, so a flood waits in the
        /// stream's own flow control, not in memory here.
        permit: OwnedSemaphorePermit,
    },
    Gone {
        conn: u64,
    },
    /// Answered once the dispatcher has nothing left to do.
    Idle(oneshot::Sender<()>),
    /// A dispatch write of the actor's own finished (committed and durable, or not).
    WriteDone {
        write: u64,
        ok: bool,
        /// Answers it could not record (kept for a later write).
        kept: Vec<Outcome>,
    },
    /// Answered with the ids of the due items waiting in line and of the jobs out at
    /// connectors (for checks of "nothing stranded").
    Inspect(oneshot::Sender<Vec<ItemId>>),
    /// Answered with the connected streams (for the console's operations page).
    Connectors(oneshot::Sender<Vec<ConnectorInfo>>),
}

/// A connected connector stream, as the operations page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorInfo {
    pub connector_id: String,
    pub channels: Vec<Channel>,
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// A lease of it expired unanswered: it gets no more jobs.
    pub stalled: bool,
}

/// What the dispatcher shows of itself (for metrics), updated after each round.
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub connectors: AtomicU64,
    pub backlog_email: AtomicU64,
    pub backlog_chat: AtomicU64,
    /// Due items held back by a pause.
    pub held_paused: AtomicU64,
    /// Due items held back by a rate limit.
    pub held_rate_limited: AtomicU64,
    /// No new job is planned until a write is done: too many answers wait for the
    /// writer ([`ANSWERS_AHEAD`]). Published after each round (SeqCst, after the round's
    /// jobs were counted), so a test can tell "held" from "busy".
    pub held_by_answers: std::sync::atomic::AtomicBool,
}

/// Handle to the dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::UnboundedSender<ConnectorEvent>,
    /// Cancelled when the actor has stopped (the stream readers stop with it).
    stopped: CancellationToken,
    /// Gauges of the actor.
    pub stats: Arc<DispatchStats>,
    /// The server's counters (the stream readers count ignored answers).
    pub metrics: Arc<crate::metrics::Metrics>,
    next_conn: Arc<AtomicU64>,
}

impl Dispatcher {
    /// Starts the dispatcher task. When `shutdown` is cancelled it stops handing out
    /// jobs, records the answers of the jobs out at connectors (waiting at most
    /// `drain_grace_ms` for them), then ends; the handle resolves then.
    pub fn start(engine: Engine, shutdown: CancellationToken) -> (Dispatcher, JoinHandle<()>) {
        // Unbounded: the senders bound themselves (a permit per answer, credit per job).
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg = engine.dispatch_config();
        let tuning = Tuning {
            lease_ms: cfg.lease_ms,
            retry_base_ms: cfg.retry_base_ms,
            retry_cap_ms: cfg.retry_cap_ms,
            max_attempts: cfg.max_attempts,
        };
        let stats = Arc::new(DispatchStats::default());
        let drain_grace = Duration::from_millis(cfg.drain_grace_ms);
        let metrics = engine.metrics().clone();
        let actor = Actor {
            events: tx.clone(),
            writes: HashMap::new(),
            next_write: 0,
            write_failed: false,
            drain_grace,
            stats: stats.clone(),
            engine,
            tuning,
            connectors: HashMap::new(),
            waiting: HashMap::new(),
            inflight: HashMap::new(),
            outcomes: Vec::new(),
            isolate: 0,
            unrecorded: Vec::new(),
            unrecorded_at: None,
            unrecorded_backoff: UNRECORDED_FIRST_RETRY,
            idle: Vec::new(),
            parked: HashMap::new(),
            limiter: Limiter::default(),
            late_at: BTreeSet::new(),
            draining: None,
            fresh: HashMap::new(),
            fresh_epoch: 0,
            replan: false,
            last_queued: None,
            held_by_answers: false,
        };
        let stopped = CancellationToken::new();
        let guard = stopped.clone().drop_guard();
        let task = tokio::spawn(async move {
            let _stopped = guard;
            actor.run(rx, shutdown).await;
        });
        (
            Dispatcher {
                tx,
                stopped,
                stats,
                metrics,
                next_conn: Default::default(),
            },
            task,
        )
    }

    /// A fresh connection number for a stream.
    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Relaxed)
    }

    /// The ids of the due items waiting in line and of the jobs out at connectors.
    pub async fn known_ids(&self) -> Vec<ItemId> {
        let (tx, rx) = oneshot::channel();
        if !self.send(ConnectorEvent::Inspect(tx)) {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The connected connector streams, by connector id.
    pub async fn connectors(&self) -> Vec<ConnectorInfo> {
        let (tx, rx) = oneshot::channel();
        if !self.send(ConnectorEvent::Connectors(tx)) {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Resolves once the actor has stopped.
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.stopped.clone().cancelled_owned()
    }

    /// Sends an event to the actor; false when it has stopped.
    pub fn send(&self, ev: ConnectorEvent) -> bool {
        self.tx.send(ev).is_ok()
    }

    /// Waits until the dispatcher has done everything it can do now (answers recorded,
    /// due items handed out as far as credit allows). Returns at once if it stopped.
    pub async fn idle(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(ConnectorEvent::Idle(tx)) {
            let _ = rx.await;
        }
    }
}

/// A dispatch write whose jobs went out when it executed, not yet known durable.
struct PendingWrite {
    /// The answers it records: put back if it does not commit.
    outcomes: Vec<Outcome>,
    /// Planned items it did not lease because an earlier write of the open group
    /// changed them: they wait in line again once it is done.
    deferred: Vec<Planned>,
    /// It was an isolated write of this many outcomes.
    isolated: usize,
}

/// The first wait before answers a write could not record are tried again on their own.
const UNRECORDED_FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest such wait.
const UNRECORDED_MAX_RETRY: Duration = Duration::from_secs(60);

/// Answers received and not yet durable past which no new job is handed out until a
/// write is done. Jobs leave without the writer (their leases are claims, see
/// `store::claims`) and a connector's credit comes back with its answer, so without
/// this bound a fast connector would be sent jobs as fast as the dispatcher can read
/// them while the writer fell ever further behind recording leases and answers.
const ANSWERS_AHEAD: usize = 4096;

/// Dispatch writes executed and not yet durable at once: the next rounds plan and hand
/// out while earlier writes wait for their fsync (a round waits only for its write to
/// *run*, which the writer does at once, even while the disk flushes). Bounds the
/// answers and jobs held for writes that might still fail.
const WRITES_IN_FLIGHT: usize = 32;

struct Actor {
    /// The actor's own event queue (for write completions).
    events: mpsc::UnboundedSender<ConnectorEvent>,
    /// Writes executed (their jobs handed out) and not yet durable.
    writes: HashMap<u64, PendingWrite>,
    next_write: u64,
    /// A write failed since the loop last looked: wait before writing again.
    write_failed: bool,
    /// How long a graceful stop waits for the answers of jobs in flight.
    drain_grace: Duration,
    stats: Arc<DispatchStats>,
    engine: Engine,
    tuning: Tuning,
    connectors: HashMap<u64, Conn>,
    /// Due items not yet leased, per channel, with the deadline their timer fired for.
    waiting: HashMap<Channel, FairQueue<Fired>>,
    /// Items leased and not expired: which stream holds them.
    inflight: HashMap<ItemId, u64>,
    /// Answers and ended leases waiting to be recorded.
    outcomes: Vec<Outcome>,
    /// After a failed write: how many of the outcomes at the front to record one by
    /// one, each in its own savepoint, so a bad one cannot hold back the others.
    isolate: usize,
    /// Outcomes an isolated write could not record (not for a reason of their own
    /// row): recorded with the next write, or on their own at `unrecorded_at` (backing
    /// off from 1 s to a minute while they keep failing). Never dropped.
    unrecorded: Vec<Outcome>,
    unrecorded_at: Option<tokio::time::Instant>,
    unrecorded_backoff: Duration,
    /// Callers of [`Dispatcher::idle`].
    idle: Vec<oneshot::Sender<()>>,
    /// Due items held back by a pause or a rate limit, per account and channel.
    parked: HashMap<(String, Channel), (Hold, VecDeque<Fired>)>,
    limiter: Limiter,
    /// Waiting items with a lateness window, by the time it ends.
    late_at: BTreeSet<(Millis, ItemId)>,
    /// Set when stopping: no new jobs; stop once nothing is in flight, or at this time.
    draining: Option<tokio::time::Instant>,
    /// Items of this round's read, whole from their rows, that may be leased here
    /// without waiting for the writer (see `store::claims`), read at `fresh_epoch`.
    fresh: HashMap<ItemId, Item>,
    fresh_epoch: u64,
    /// Planned items went back in line because the writes were full: plan again once
    /// one is done.
    replan: bool,
    /// Resolves once the last dispatch write is queued (the next one queues after it).
    last_queued: Option<oneshot::Receiver<()>>,
    /// No job was planned because of [`ANSWERS_AHEAD`]: plan again once a write is done.
    held_by_answers: bool,
}

/// A waiting item picked for a connector, not yet leased.
struct Planned {
    id: ItemId,
    due: Millis,
    account: String,
    channel: Channel,
    conn: u64,
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<ConnectorEvent>,
        shutdown: CancellationToken,
    ) {
        // After a failed round: when to try again.
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            if self.draining.is_none() && shutdown.is_cancelled() {
                tracing::info!(
                    connectors = self.connectors.len(),
                    in_flight = self.inflight.len(),
                    "dispatcher stopping: recording the answers of jobs in flight"
                );
                self.draining = Some(tokio::time::Instant::now() + self.drain_grace);
                self.requeue_unrecorded();
            }
            if let Some(deadline) = self.draining {
                let done =
                    self.outcomes.is_empty() && self.inflight.is_empty() && self.writes.is_empty();
                if done || tokio::time::Instant::now() >= deadline {
                    // What is left unrecorded is redelivered after the restart.
                    tracing::info!(
                        unanswered = self.inflight.len(),
                        unrecorded = self.outcomes.len(),
                        "dispatcher stopped"
                    );
                    return;
                }
            }
            let ready = self.engine.ready().clone_notify();
            let more_due = self.draining.is_none() && !self.engine.ready().is_empty();
            let writes_full = self.writes.len() >= WRITES_IN_FLIGHT;
            // Due items are read and claimed even while the writes are full (their
            // jobs leave without one); answers and the rest of the plan need a write.
            let work = more_due || (!writes_full && (!self.outcomes.is_empty() || self.replan));
            if retry_at.is_some() || !work {
                if retry_at.is_none() && self.writes.is_empty() && !more_due {
                    for w in self.idle.drain(..) {
                        let _ = w.send(());
                    }
                }
                let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
                let wake = self.next_wake();
                let clock = self.engine.clock().clone();
                let controls = self.engine.clone();
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => self.on_event(ev),
                        None => return,
                    },
                    _ = ready.notified(), if self.draining.is_none() => {}
                    _ = controls.controls().changed.notified(), if self.draining.is_none() => {}
                    _ = clock.sleep_until(wake.unwrap_or(i64::MAX)), if wake.is_some() && self.draining.is_none() => {}
                    _ = shutdown.cancelled(), if self.draining.is_none() => {}
                    _ = tokio::time::sleep_until(self.draining.unwrap_or(far)), if self.draining.is_some() => {}
                    _ = tokio::time::sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {
                        retry_at = None;
                    }
                    _ = tokio::time::sleep_until(self.unrecorded_at.unwrap_or(far)), if self.unrecorded_at.is_some() => {
                        self.requeue_unrecorded();
                    }
                }
            }
            while let Ok(ev) = rx.try_recv() {
                self.on_event(ev);
            }
            if std::mem::take(&mut self.write_failed) {
                retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(100));
            }
            if retry_at.is_some() {
                continue; // keep taking answers, but wait before writing again
            }
            if let Err(e) = self.step().await {
                tracing::error!(error = %e, "dispatch round failed; retrying in 100 ms");
                retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(100));
            }
            self.publish_stats();
        }
    }

    fn on_event(&mut self, ev: ConnectorEvent) {
        match ev {
            ConnectorEvent::Hello {
                conn,
                connector_id,
                channels,
                accounts,
                max_in_flight,
                jobs,
                kick,
            } => {
                tracing::info!(conn, connector_id = %connector_id, ?channels, max_in_flight, "connector connected");
                self.connectors.insert(
                    conn,
                    Conn {
                        connector_id,
                        channels,
                        accounts,
                        max_in_flight,
                        jobs,
                        kick,
                        held: HashMap::new(),
                        live: 0,
                        stalled: false,
                    },
                );
            }
            ConnectorEvent::Answer {
                conn,
                job,
                answer,
                permit,
            } => {
                self.on_answer(conn, job, answer);
                drop(permit);
            }
            ConnectorEvent::Gone { conn } => self.on_gone(conn),
            ConnectorEvent::Idle(waiter) => self.idle.push(waiter),
            ConnectorEvent::WriteDone { write, ok, kept } => self.on_write_done(write, ok, kept),
            ConnectorEvent::Inspect(reply) => {
                let mut ids: Vec<ItemId> = self.inflight.keys().copied().collect();
                for q in self.waiting.values() {
                    ids.extend(q.iter().map(|(_, (id, _))| *id));
                }
                let _ = reply.send(ids);
            }
            ConnectorEvent::Connectors(reply) => {
                let mut list: Vec<ConnectorInfo> = self
                    .connectors
                    .values()
                    .map(|c| ConnectorInfo {
                        connector_id: c.connector_id.clone(),
                        channels: c.channels.clone(),
                        in_flight: c.in_flight(),
                        max_in_flight: c.max_in_flight,
                        stalled: c.stalled,
                    })
                    .collect();
                list.sort_by(|a, b| a.connector_id.cmp(&b.connector_id));
                let _ = reply.send(list);
            }
        }
    }

    /// An answer counts only for a job its stream holds right now: this connection,
    /// this item, this attempt, this lease token. Anything else is ignored.
    fn on_answer(&mut self, conn: u64, job: JobKey, answer: Answer) {
        let held = self
            .connectors
            .get(&conn)
            .and_then(|c| c.held.get(&job.item))
            .copied();
        let Some(held) = held.filter(|h| h.attempt == job.attempt && h.token == job.token) else {
            self.engine.metrics().ignored_answers.inc();
            tracing::debug!(
                conn,
                item = job.item,
                attempt = job.attempt,
                "ignored an answer for a job this stream does not hold"
            );
            return;
        };
        if let Some(c) = self.connectors.get_mut(&conn) {
            c.take(job.item);
        }
        match answer {
            Answer::Ack {
                provider_message_id,
            } => {
                self.engine.metrics().acks.inc();
                if !held.expired {
                    self.inflight.remove(&job.item);
                }
                // Also after the lease expired: the connector did send it.
                self.outcomes.push(Outcome::Ack {
                    id: job.item,
                    provider_message_id,
                });
            }
            Answer::Nack { error, permanent } => {
                self.engine.metrics().nacks.inc();
                // A Nack after the lease expired says nothing new: that attempt ended.
                if !held.expired {
                    self.inflight.remove(&job.item);
                    self.outcomes.push(Outcome::Nack {
                        id: job.item,
                        attempt: job.attempt,
                        error,
                        permanent,
                    });
                }
            }
        }
        self.kick_if_stalled(conn);
    }

    fn on_gone(&mut self, conn: u64) {
        let Some(c) = self.connectors.remove(&conn) else {
            return;
        };
        tracing::info!(conn, connector_id = %c.connector_id, in_flight = c.in_flight(), "connector disconnected");
        for (id, h) in c.held {
            if !h.expired {
                self.inflight.remove(&id);
                self.outcomes.push(Outcome::Abandoned {
                    id,
                    attempt: h.attempt,
                    reason: "connector disconnected before answering",
                });
            }
        }
    }

    /// Ends the stream of a stalled connector once it holds no unexpired job.
    fn kick_if_stalled(&mut self, conn: u64) {
        let Some(c) = self.connectors.get(&conn) else {
            return;
        };
        if c.stalled && c.in_flight() == 0 {
            tracing::warn!(conn, connector_id = %c.connector_id, "ending the stream of a connector whose lease expired unanswered");
            self.engine.metrics().stalled_connectors.inc();
            c.kick.cancel();
            self.connectors.remove(&conn);
        }
    }

    fn publish_stats(&self) {
        let backlog = |ch| self.waiting.get(&ch).map_or(0, |q| q.len() as u64);
        self.stats
            .connectors
            .store(self.connectors.len() as u64, Relaxed);
        self.stats
            .backlog_email
            .store(backlog(Channel::Email), Relaxed);
        self.stats
            .backlog_chat
            .store(backlog(Channel::Chat), Relaxed);
        let held = |h| {
            self.parked
                .values()
                .filter(|(r, _)| *r == h)
                .map(|(_, q)| q.len() as u64)
                .sum::<u64>()
        };
        self.stats.held_paused.store(held(Hold::Pause), Relaxed);
        self.stats
            .held_rate_limited
            .store(held(Hold::RateLimit), Relaxed);
        self.stats
            .held_by_answers
            .store(self.held_by_answers, std::sync::atomic::Ordering::SeqCst);
    }

    /// One round: read what fell due, then record the answers and lease new jobs in
    /// a single store write (one group commit for both), until nothing is left to do.
    async fn step(&mut self) -> domain::Result<()> {
        if self.draining.is_none() {
            self.take_due().await?;
            let now = self.engine.clock().now_ms();
            self.expire_late(now);
            self.release_parked(now);
        }
        self.replan = false;
        loop {
            let planned = if self.draining.is_some() {
                Vec::new()
            } else if self.answers_unrecorded() >= ANSWERS_AHEAD {
                // The writer is behind: no new job until it caught up.
                self.held_by_answers = true;
                Vec::new()
            } else {
                let planned = self.plan();
                self.claim_leases(planned).await
            };
            if self.writes.len() >= WRITES_IN_FLIGHT {
                // The rest waits in line for a write; planned again once one is done.
                if !planned.is_empty() {
                    self.replan = true;
                }
                self.wait_again(planned);
                break;
            }
            if planned.is_empty() && self.outcomes.is_empty() {
                break;
            }
            self.write_round(planned).await;
        }
        // What this round read is stale for the next one.
        self.fresh.clear();
        Ok(())
    }

    /// Answers received and not yet recorded (queued, or in writes not yet durable).
    fn answers_unrecorded(&self) -> usize {
        self.outcomes.len()
            + self
                .writes
                .values()
                .map(|w| w.outcomes.len())
                .sum::<usize>()
    }

    /// Planned items not leased: back in line, first.
    fn wait_again(&mut self, planned: Vec<Planned>) {
        for p in planned.into_iter().rev() {
            self.waiting
                .entry(p.channel)
                .or_default()
                .push_front(&p.account, (p.id, p.due));
        }
    }

    /// Leases the planned items itself and hands their jobs out at once, without
    /// waiting for the writer: the state machine's `Lease` applied to the item as read
    /// whole from its row, claimed against every write that touched it since (see
    /// `store::claims`). Items this round read are taken from that read; items that
    /// waited in line since an earlier round (for credit) are read again. Returns the
    /// items left to lease through a write: not read whole (their last change is only
    /// in memory), not simply leased (a lateness policy applies, or the send time
    /// moved), or refused.
    async fn claim_leases(&mut self, planned: Vec<Planned>) -> Vec<Planned> {
        let mut fresh = Vec::new();
        let mut stale = Vec::new();
        for p in planned {
            match self.fresh.remove(&p.id) {
                Some(item) => fresh.push((p, item)),
                None => stale.push(p),
            }
        }
        let mut rest = self.claim_read(self.fresh_epoch, fresh);
        if stale.is_empty() {
            return rest;
        }
        let ids = stale.iter().map(|p| p.id).collect();
        match self.engine.store().due_items(ids).await {
            Ok(read) => {
                let mut whole: HashMap<ItemId, Item> =
                    read.items.into_iter().map(|i| (i.id, i)).collect();
                let mut again = Vec::new();
                for p in stale {
                    match whole.remove(&p.id) {
                        Some(item) => again.push((p, item)),
                        None => rest.push(p),
                    }
                }
                rest.extend(self.claim_read(read.epoch, again));
            }
            // The write leases them.
            Err(_) => rest.extend(stale),
        }
        rest
    }

    /// Claims the leases of planned items read whole at `epoch` and hands out the
    /// accepted ones; returns the others.
    fn claim_read(&mut self, epoch: u64, read: Vec<(Planned, Item)>) -> Vec<Planned> {
        let mut rest = Vec::new();
        if read.is_empty() {
            return rest;
        }
        let now = self.engine.clock().now_ms();
        let expires = now + self.tuning.lease_ms;
        let mut claims = Vec::new();
        let mut claimed: HashMap<ItemId, Planned> = HashMap::new();
        for (p, mut item) in read {
            let lease = Command::Lease {
                due: p.due,
                expires,
            };
            match machine::step(&mut item, lease, now) {
                Ok(Step::Changed(change)) if change.event == EventType::Dispatching => {
                    claimed.insert(p.id, p);
                    claims.push(Claim { item, change });
                }
                _ => rest.push(p),
            }
        }
        if claims.is_empty() {
            return rest;
        }
        let (ok, refused) = self.engine.store().claim(epoch, claims);
        // Refused: leased through a write, as planned.
        rest.extend(refused.iter().filter_map(|c| claimed.remove(&c.item.id)));
        self.engine.metrics().claimed_leases.inc_by(ok.len() as u64);
        let mut rng = rand::rng();
        for c in ok {
            let conn = claimed.remove(&c.item.id).map(|p| p.conn);
            self.hand_out(conn, c.item, rand::RngExt::random::<u128>(&mut rng));
        }
        rest
    }

    /// Records the answers and leases the planned items in one store write, and hands
    /// the leased jobs out as soon as the write has *executed* (its rows are in the
    /// writer's open transaction, so every later write sees them, e.g. a cancel finds
    /// the item DISPATCHING), without waiting for its commit and fsync: a lease need
    /// not be durable before the job leaves (at-least-once covers the redelivery a
    /// crash would cause, with the attempt count one low). The write's outcome comes
    /// back as [`ConnectorEvent::WriteDone`]; if it did not commit, its answers are
    /// recorded again and its items are due again.
    async fn write_round(&mut self, planned: Vec<Planned>) {
        // Answers kept from an earlier write go with this one.
        self.requeue_unrecorded();
        let isolated = if self.isolate > 0 {
            self.isolate.min(BATCH)
        } else {
            0
        };
        let n = self
            .outcomes
            .len()
            .min(if isolated > 0 { isolated } else { BATCH });
        let batch: Vec<Outcome> = self.outcomes.drain(..n).collect();
        let due: Vec<Fired> = planned.iter().map(|p| (p.id, p.due)).collect();
        let t = self.tuning;
        let (executed_tx, executed) = oneshot::channel::<writes::Leased>();
        let write = self.next_write;
        self.next_write += 1;
        let store = self.engine.store().clone();
        let events = self.events.clone();
        let records = batch.clone();
        // Queued in the order of the rounds (an answer recorded after an earlier one).
        let previous = self.last_queued.take();
        let (queued_tx, queued) = oneshot::channel::<()>();
        self.last_queued = Some(queued);
        tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let queued = store
                .enqueue(move |tx| {
                    // Leases first: their jobs leave as soon as they have run, before
                    // the answers are recorded. (Should recording fail, or the group's
                    // commit, the write rolls back but its leases are given back as
                    // claims and applied again: the jobs are out.)
                    let leased = writes::lease(tx, &due, t)?;
                    let _ = executed_tx.send(leased);
                    let mut rng = rand::rng();
                    let mut jitter = || rand::RngExt::random::<f64>(&mut rng);
                    if isolated > 0 {
                        writes::record_isolated(tx, &records, t, &mut jitter)
                    } else {
                        writes::record(tx, &records, t, &mut jitter).map(|()| Vec::new())
                    }
                })
                .await;
            let _ = queued_tx.send(());
            let r = match queued {
                Ok(done) => done.await,
                Err(e) => Err(e),
            };
            if let Err(e) = &r {
                tracing::error!(error = %e, "dispatch write failed");
            }
            let (ok, kept) = match r {
                Ok(kept) => (true, kept),
                Err(_) => (false, Vec::new()),
            };
            let _ = events.send(ConnectorEvent::WriteDone { write, ok, kept });
        });
        let mut deferred = Vec::new();
        // With only answers to record there is nothing to wait for: the next round
        // goes on at once.
        if !planned.is_empty() {
            match executed.await {
                Ok(leased) => {
                    let conn_of: HashMap<ItemId, u64> =
                        planned.iter().map(|p| (p.id, p.conn)).collect();
                    for (item, token) in leased.jobs {
                        let conn = conn_of.get(&item.id).copied();
                        self.hand_out(conn, item, token);
                    }
                    let later: std::collections::HashSet<ItemId> =
                        leased.deferred.iter().map(|&(id, _)| id).collect();
                    deferred = planned
                        .into_iter()
                        .filter(|p| later.contains(&p.id))
                        .collect();
                }
                // The write failed before leasing: the planned items wait again, first
                // in line (the answers are put back when its WriteDone arrives).
                Err(_) => self.wait_again(planned),
            }
        }
        self.writes.insert(
            write,
            PendingWrite {
                outcomes: batch,
                deferred,
                isolated,
            },
        );
    }

    /// A write of ours finished. Durable: done. Not committed: its answers are recorded
    /// again (one by one, in case one of them is what failed); the jobs it handed out
    /// stay out (their leases are applied again by the store, see
    /// `Tx::leases_out`). Either way, the items it deferred wait in line again.
    fn on_write_done(&mut self, write: u64, ok: bool, kept: Vec<Outcome>) {
        let Some(w) = self.writes.remove(&write) else {
            return;
        };
        if !kept.is_empty() {
            self.unrecorded.extend(kept);
            let wait = self.unrecorded_backoff;
            self.unrecorded_at = Some(tokio::time::Instant::now() + wait);
            self.unrecorded_backoff = (wait * 2).min(UNRECORDED_MAX_RETRY);
        } else if ok && w.isolated > 0 {
            self.unrecorded_backoff = UNRECORDED_FIRST_RETRY;
        }
        if std::mem::take(&mut self.held_by_answers) {
            self.replan = true;
        }
        if !w.deferred.is_empty() {
            self.wait_again(w.deferred);
            self.replan = true;
        }
        if ok {
            self.isolate = self.isolate.saturating_sub(w.isolated);
            return;
        }
        self.write_failed = true;
        self.isolate = self.isolate.max(w.outcomes.len());
        self.outcomes.splice(0..0, w.outcomes);
    }

    /// Puts the kept answers back in front of the outcomes to record.
    fn requeue_unrecorded(&mut self) {
        self.unrecorded_at = None;
        if !self.unrecorded.is_empty() {
            let kept = std::mem::take(&mut self.unrecorded);
            self.isolate += kept.len();
            self.outcomes.splice(0..0, kept);
        }
    }

    async fn take_due(&mut self) -> domain::Result<()> {
        let fired = self.engine.ready().take(BATCH * 4);
        if fired.is_empty() {
            return Ok(());
        }
        let read = match read_meta(self.engine.store(), &fired).await {
            Ok(m) => m,
            Err(e) => {
                // Not lost: they are read again next round.
                self.engine.ready().put_back(fired);
                return Err(e);
            }
        };
        self.fresh = read.whole;
        self.fresh_epoch = read.epoch;
        for m in read.metas {
            let (channel, state) = match m.decoded {
                Ok(d) => d,
                Err(why) => {
                    self.outcomes.push(Outcome::Unreadable { id: m.id, why });
                    continue;
                }
            };
            match state {
                State::Pending => {
                    if let Some(at) = m.late_after {
                        self.late_at.insert((at, m.id));
                    }
                    self.waiting
                        .entry(channel)
                        .or_default()
                        .push(&m.account, (m.id, m.due))
                }
                State::Dispatching => self.on_lease_timer(&m),
                // Sent, cancelled or converted meanwhile: a stream that still holds it
                // (a late answer of another attempt settled it) gets its credit back.
                _ => self.forget(m.id),
            }
        }
        Ok(())
    }

    /// A lease timer fired (or a leased item was found after a restart): if the lease
    /// ended by the deadline the timer fired for, the attempt ends and the item goes
    /// back in line; the stream that held it gets no more jobs.
    fn on_lease_timer(&mut self, m: &Meta) {
        let holder = self.inflight.get(&m.id).copied();
        let expired = m.lease_expires_at.is_none_or(|t| t <= m.due);
        if holder.is_some() && !expired {
            return; // a stale timer of an earlier lease; this lease has its own timer
        }
        let reason = if holder.is_some() {
            "lease expired without an answer"
        } else {
            "lease lost in a restart"
        };
        if let Some(conn) = holder {
            self.inflight.remove(&m.id);
            if let Some(c) = self.connectors.get_mut(&conn) {
                c.expire(m.id);
                c.stalled = true;
            }
            self.kick_if_stalled(conn);
        }
        self.outcomes.push(Outcome::Abandoned {
            id: m.id,
            attempt: m.attempts,
            reason,
        });
    }

    /// The item left the dispatching states: no stream holds a live lease of it.
    fn forget(&mut self, id: ItemId) {
        if let Some(conn) = self.inflight.remove(&id) {
            if let Some(c) = self.connectors.get_mut(&conn) {
                c.expire(id);
            }
            self.kick_if_stalled(conn);
        }
    }

    /// Picks up to [`BATCH`] waiting items for the connectors' free credit, round-robin
    /// across accounts per channel, each to the connector with the most free credit
    /// whose token allows its account.
    fn plan(&mut self) -> Vec<Planned> {
        let mut out: Vec<Planned> = Vec::new();
        let controls = self.engine.controls().snapshot();
        let now = self.engine.clock().now_ms();
        let mut held: Vec<(String, Channel, Hold, Fired)> = Vec::new();
        let channels: Vec<Channel> = self.waiting.keys().copied().collect();
        for ch in channels {
            let mut free: Vec<(u64, usize)> = self
                .connectors
                .iter()
                .filter(|(_, c)| c.channels.contains(&ch) && c.free() > 0)
                .map(|(&id, c)| (id, c.free()))
                .collect();
            // Credit already promised to another channel's plan this round.
            for (c, n) in free.iter_mut() {
                *n = n.saturating_sub(out.iter().filter(|p| p.conn == *c).count());
            }
            let credit: usize = free.iter().map(|f| f.1).sum();
            let Some(q) = self.waiting.get_mut(&ch) else {
                continue;
            };
            let want = credit.min(BATCH.saturating_sub(out.len()));
            let mut unplaced: Vec<(String, Fired)> = Vec::new();
            let mut placed = 0;
            while placed < want {
                let Some((account, (id, due))) = q.pop() else {
                    break;
                };
                if !controls.is_empty() && controls.is_paused(&account, ch) {
                    held.push((account, ch, Hold::Pause, (id, due)));
                    continue;
                }
                let target = free
                    .iter_mut()
                    .filter(|(c, n)| *n > 0 && self.connectors[c].accounts.allows(&account))
                    .max_by_key(|(_, n)| *n);
                if target.is_some() {
                    if let Some(per_minute) = controls.limit(&account, ch) {
                        if !self.limiter.try_start(&account, ch, per_minute, now) {
                            held.push((account, ch, Hold::RateLimit, (id, due)));
                            continue;
                        }
                    }
                }
                match target {
                    Some((c, n)) => {
                        *n -= 1;
                        placed += 1;
                        out.push(Planned {
                            id,
                            due,
                            account,
                            channel: ch,
                            conn: *c,
                        });
                    }
                    // No connector with credit may take this account's items yet.
                    None => unplaced.push((account, (id, due))),
                }
            }
            for (account, f) in unplaced.into_iter().rev() {
                q.push_front(&account, f);
            }
        }
        for (account, ch, hold, f) in held {
            self.park(account, ch, hold, f);
        }
        self.waiting.retain(|_, q| !q.is_empty());
        out
    }

    /// Sends a leased item to the connector planned for it. A job that cannot be
    /// written to the stream (it left, or its buffer is full) is not an attempt: the
    /// lease is taken back and the item waits again.
    fn hand_out(&mut self, conn: Option<u64>, item: Item, token: u128) {
        let attempt = item.attempts;
        let id = item.id;
        let lease_expires_at = item.lease_expires_at.unwrap_or_default();
        let unsent = Outcome::Unsent { id, attempt };
        let Some((conn, c)) = conn.and_then(|n| self.connectors.get_mut(&n).map(|c| (n, c))) else {
            self.outcomes.push(unsent);
            return;
        };
        let late_ms = (self.engine.clock().now_ms() - item.send_at).max(0);
        let channel = item.channel;
        let job = Job {
            job_id: job_id(JobKey {
                item: id,
                attempt,
                token,
            }),
            item,
            attempt,
            lease_expires_at,
        };
        match c.jobs.try_send(job) {
            Ok(()) => {
                self.engine.metrics().dispatches.inc();
                if attempt == 1 {
                    self.engine
                        .metrics()
                        .lateness(channel)
                        .observe(late_ms as f64 / 1000.0);
                }
                c.hold(
                    id,
                    Held {
                        attempt,
                        token,
                        expired: false,
                    },
                );
                self.inflight.insert(id, conn);
            }
            Err(e) => {
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    // Credit is bounded by the buffer's room, so a full buffer means
                    // the stream stopped draining: no more jobs for it.
                    c.stalled = true;
                    self.kick_if_stalled(conn);
                }
                self.outcomes.push(unsent);
            }
        }
    }
}
