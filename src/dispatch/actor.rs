//! The dispatcher's actor: the state it owns and its loop. A round takes what fell due
//! (`take_due`), applies lateness windows and releases held-back items (`hold`), plans
//! (`plan`), leases by claim (`claims`) or through a write (`pipeline`) and hands the
//! jobs out (`hand_out`); answers and streams are handled as they arrive (`answers`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Held};
use super::fair::FairQueue;
use super::hold::{Hold, Limiter};
use super::meta::read_meta;
use super::pipeline::{PendingWrite, UNRECORDED_FIRST_RETRY, WRITES_IN_FLIGHT};
use super::writes::{Outcome, Tuning};
use super::{job_id, ConnectorEvent, ConnectorInfo, DispatchStats, Job, JobKey, BATCH};
use crate::domain::{self, Channel, Item, ItemId, Millis, State};
use crate::engine::{Engine, Fired};

/// Answers received and not yet durable past which no new job is handed out until a
/// write is done. Jobs leave without the writer (their leases are claims, see
/// `store::claims`) and a connector's credit comes back with its answer, so without
/// this bound a fast connector would be sent jobs as fast as the dispatcher can read
/// them while the writer fell ever further behind recording leases and answers.
const ANSWERS_AHEAD: usize = 4096;

pub(super) struct Actor {
    /// The actor's own event queue (for write completions).
    pub(super) events: mpsc::UnboundedSender<ConnectorEvent>,
    /// Writes executed (their jobs handed out) and not yet durable.
    pub(super) writes: HashMap<u64, PendingWrite>,
    pub(super) next_write: u64,
    /// A write failed since the loop last looked: wait before writing again.
    pub(super) write_failed: bool,
    /// How long a graceful stop waits for the answers of jobs in flight.
    pub(super) drain_grace: Duration,
    pub(super) stats: Arc<DispatchStats>,
    pub(super) engine: Engine,
    pub(super) tuning: Tuning,
    pub(super) connectors: HashMap<u64, Conn>,
    /// Due items not yet leased, per channel, with the deadline their timer fired for.
    pub(super) waiting: HashMap<Channel, FairQueue<Fired>>,
    /// Items leased and not expired: which stream holds them.
    pub(super) inflight: HashMap<ItemId, u64>,
    /// Answers and ended leases waiting to be recorded.
    pub(super) outcomes: Vec<Outcome>,
    /// After a failed write: how many of the outcomes at the front to record one by
    /// one, each in its own savepoint, so a bad one cannot hold back the others.
    pub(super) isolate: usize,
    /// Outcomes an isolated write could not record (not for a reason of their own
    /// row): recorded with the next write, or on their own at `unrecorded_at` (backing
    /// off from 1 s to a minute while they keep failing). Never dropped.
    pub(super) unrecorded: Vec<Outcome>,
    pub(super) unrecorded_at: Option<tokio::time::Instant>,
    pub(super) unrecorded_backoff: Duration,
    /// Callers of [`Dispatcher::idle`].
    pub(super) idle: Vec<oneshot::Sender<()>>,
    /// Due items held back by a pause or a rate limit, per account and channel.
    pub(super) parked: HashMap<(String, Channel), (Hold, VecDeque<Fired>)>,
    pub(super) limiter: Limiter,
    /// Waiting items with a lateness window, by the time it ends.
    pub(super) late_at: BTreeSet<(Millis, ItemId)>,
    /// Set when stopping: no new jobs; stop once nothing is in flight, or at this time.
    pub(super) draining: Option<tokio::time::Instant>,
    /// Items of this round's read, whole from their rows, that may be leased here
    /// without waiting for the writer (see `store::claims`), read at `fresh_epoch`.
    pub(super) fresh: HashMap<ItemId, Item>,
    pub(super) fresh_epoch: u64,
    /// Planned items went back in line because the writes were full: plan again once
    /// one is done.
    pub(super) replan: bool,
    /// Resolves once the last dispatch write is queued (the next one queues after it).
    pub(super) last_queued: Option<oneshot::Receiver<()>>,
    /// No job was planned because of [`ANSWERS_AHEAD`]: plan again once a write is done.
    pub(super) held_by_answers: bool,
}

impl Actor {
    /// The actor of a dispatcher: `events` is its own queue (its writes report there),
    /// `stats` the gauges it publishes.
    pub(super) fn new(
        engine: Engine,
        events: mpsc::UnboundedSender<ConnectorEvent>,
        stats: Arc<DispatchStats>,
    ) -> Actor {
        let cfg = engine.dispatch_config();
        let tuning = Tuning {
            lease_ms: cfg.lease_ms,
            retry_base_ms: cfg.retry_base_ms,
            retry_cap_ms: cfg.retry_cap_ms,
            max_attempts: cfg.max_attempts,
        };
        let drain_grace = Duration::from_millis(cfg.drain_grace_ms);
        Actor {
            events,
            writes: HashMap::new(),
            next_write: 0,
            write_failed: false,
            drain_grace,
            stats,
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
        }
    }

    pub(super) async fn run(
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
                let renewed = self.engine.clone();
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => self.on_event(ev),
                        None => return,
                    },
                    _ = ready.notified(), if self.draining.is_none() => {}
                    _ = controls.controls().changed.notified(), if self.draining.is_none() => {}
                    _ = clock.sleep_until(wake.unwrap_or(i64::MAX)), if wake.is_some() && self.draining.is_none() => {}
                    _ = shutdown.cancelled(), if self.draining.is_none() => {}
                    // Items wait while the trust window is closed: until a renewal.
                    _ = renewed.trust_renewed(), if !self.engine.may_hand_out() && self.waiting.values().any(|q| !q.is_empty()) => {}
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

    pub(super) fn on_event(&mut self, ev: ConnectorEvent) {
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

    pub(super) fn publish_stats(&self) {
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
    pub(super) async fn step(&mut self) -> domain::Result<()> {
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

    pub(super) async fn take_due(&mut self) -> domain::Result<()> {
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

    /// Sends a leased item to the connector planned for it. A job that cannot be
    /// written to the stream (it left, or its buffer is full) is not an attempt: the
    /// lease is taken back and the item waits again.
    pub(super) fn hand_out(&mut self, conn: Option<u64>, item: Item, token: u128) {
        let attempt = item.attempts;
        let id = item.id;
        let lease_expires_at = item.lease_expires_at.unwrap_or_default();
        let unsent = Outcome::Unsent { id, attempt };
        // Checked again just before the job leaves: the window may have closed since
        // the plan (a job never leaves a node that may have lost its partitions).
        if !self.engine.may_hand_out() {
            self.outcomes.push(unsent);
            return;
        }
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
