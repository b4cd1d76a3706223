//! Dispatch: hands due items to connectors and records what they answer.
//!
//! One actor task owns all dispatch state (connectors and their credit, the due items
//! waiting per channel and account, the jobs in flight); the gRPC stream tasks talk to
//! it over an mpsc. An actor here, unlike the wheel's short lock, because each step
//! awaits a store write and the state must not change under it.
//!
//! A round of the loop:
//! 1. record the acks/nacks/abandoned leases received so far, in one write;
//! 2. take the due ids the wheel pushed, read their channel and account in one batch
//!    read, and queue them per channel, round-robin across accounts; a DISPATCHING row
//!    whose lease expired (or that no live stream holds, after a restart) is abandoned:
//!    the attempt counts and the item is retried at once;
//! 3. while connectors of a channel have credit (max_in_flight minus unacknowledged),
//!    lease up to that many items in one write (PENDING -> DISPATCHING, lease timer on
//!    the wheel) and only then send the jobs, spread over the connectors with the most
//!    free credit.

mod fair;
pub mod writes;

use std::collections::HashMap;

use rusqlite::types::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Accounts;
use crate::domain::{self, format_item_id, parse_item_id, Channel, Item, ItemId, Millis, State};
use crate::engine::Engine;
use crate::metrics::METRICS;
use crate::store::rows::{with_lease, LEASE_EXPIRES};
use fair::FairQueue;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use writes::{Outcome, Tuning};

/// Most items leased or recorded in one write.
const BATCH: usize = 1000;

/// A job sent to a connector.
#[derive(Debug, Clone)]
pub struct Job {
    pub job_id: String,
    pub item: Item,
    pub attempt: u32,
    pub lease_expires_at: Millis,
}

/// `itm_42#3`: the item and the attempt.
pub fn job_id(id: ItemId, attempt: u32) -> String {
    format!("{}#{attempt}", format_item_id(id))
}

/// Parses a job id.
pub fn parse_job_id(s: &str) -> Option<(ItemId, u32)> {
    let (item, attempt) = s.split_once('#')?;
    Some((parse_item_id(item)?, attempt.parse().ok()?))
}

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
    },
    Ack {
        conn: u64,
        job: (ItemId, u32),
        provider_message_id: String,
    },
    Nack {
        conn: u64,
        job: (ItemId, u32),
        error: String,
        permanent: bool,
    },
    Gone {
        conn: u64,
    },
}

/// What the dispatcher shows of itself (for metrics), updated after each round.
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub connectors: AtomicU64,
    pub backlog_email: AtomicU64,
    pub backlog_chat: AtomicU64,
}

/// Handle to the dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::UnboundedSender<ConnectorEvent>,
    /// Gauges of the actor.
    pub stats: Arc<DispatchStats>,
    next_conn: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Dispatcher {
    /// Starts the dispatcher task; it stops when `shutdown` is cancelled.
    pub fn start(engine: Engine, shutdown: CancellationToken) -> Dispatcher {
        // Unbounded: acks must never wait behind a full queue (the credit window bounds
        // them: at most max_in_flight answers per stream can be outstanding).
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg = engine.dispatch_config();
        let tuning = Tuning {
            lease_ms: cfg.lease_ms,
            retry_base_ms: cfg.retry_base_ms,
            retry_cap_ms: cfg.retry_cap_ms,
            max_attempts: cfg.max_attempts,
        };
        let stats = Arc::new(DispatchStats::default());
        let actor = Actor {
            stats: stats.clone(),
            engine,
            tuning,
            connectors: HashMap::new(),
            waiting: HashMap::new(),
            inflight: HashMap::new(),
            outcomes: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15 ^ (std::process::id() as u64) << 17,
        };
        tokio::spawn(actor.run(rx, shutdown));
        Dispatcher {
            tx,
            stats,
            next_conn: Default::default(),
        }
    }

    /// A fresh connection number for a stream.
    pub fn next_conn(&self) -> u64 {
        self.next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends an event to the actor; false when it has stopped.
    pub fn send(&self, ev: ConnectorEvent) -> bool {
        self.tx.send(ev).is_ok()
    }
}

struct Conn {
    connector_id: String,
    channels: Vec<Channel>,
    accounts: Accounts,
    max_in_flight: usize,
    in_flight: usize,
    jobs: mpsc::Sender<Job>,
}

impl Conn {
    fn free(&self) -> usize {
        self.max_in_flight.saturating_sub(self.in_flight)
    }
}

struct Actor {
    stats: Arc<DispatchStats>,
    engine: Engine,
    tuning: Tuning,
    connectors: HashMap<u64, Conn>,
    /// Due items not yet leased, per channel.
    waiting: HashMap<Channel, FairQueue>,
    /// Leased items: which stream holds which attempt.
    inflight: HashMap<ItemId, (u64, u32)>,
    /// Answers and abandoned leases waiting to be recorded.
    outcomes: Vec<Outcome>,
    rng: u64,
}

/// A waiting item picked for a connector, not yet leased.
struct Planned {
    id: ItemId,
    account: String,
    channel: Channel,
    conn: u64,
}

/// What the batch read tells about a due id.
struct Meta {
    id: ItemId,
    account: String,
    channel: Channel,
    state: State,
    lease_expires_at: Option<Millis>,
    attempts: u32,
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<ConnectorEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let ready = self.engine.ready().clone_notify();
            let more_due = !self.engine.ready().is_empty();
            if !more_due && self.outcomes.is_empty() {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => self.on_event(ev),
                        None => return,
                    },
                    _ = ready.notified() => {}
                    _ = shutdown.cancelled() => {
                        tracing::info!(connectors = self.connectors.len(), "dispatcher stopping");
                        return;
                    }
                }
            }
            while let Ok(ev) = rx.try_recv() {
                self.on_event(ev);
            }
            if let Err(e) = self.step().await {
                tracing::error!(error = %e, "dispatch round failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
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
            } => {
                tracing::info!(conn, connector_id = %connector_id, ?channels, max_in_flight, "connector connected");
                self.connectors.insert(
                    conn,
                    Conn {
                        connector_id,
                        channels,
                        accounts,
                        max_in_flight,
                        in_flight: 0,
                        jobs,
                    },
                );
            }
            ConnectorEvent::Ack {
                conn,
                job: (id, attempt),
                provider_message_id,
            } => {
                METRICS.acks.fetch_add(1, Relaxed);
                self.release(conn, id, attempt);
                self.outcomes.push(Outcome::Ack {
                    id,
                    provider_message_id,
                });
            }
            ConnectorEvent::Nack {
                conn,
                job: (id, attempt),
                error,
                permanent,
            } => {
                METRICS.nacks.fetch_add(1, Relaxed);
                self.release(conn, id, attempt);
                self.outcomes.push(Outcome::Nack {
                    id,
                    attempt,
                    error,
                    permanent,
                });
            }
            ConnectorEvent::Gone { conn } => {
                if let Some(c) = self.connectors.remove(&conn) {
                    tracing::info!(conn, connector_id = %c.connector_id, in_flight = c.in_flight, "connector disconnected");
                }
                let dropped: Vec<(ItemId, u32)> = self
                    .inflight
                    .iter()
                    .filter(|(_, (c, _))| *c == conn)
                    .map(|(&id, &(_, a))| (id, a))
                    .collect();
                for (id, attempt) in dropped {
                    self.inflight.remove(&id);
                    self.outcomes.push(Outcome::Abandoned {
                        id,
                        attempt,
                        reason: "connector disconnected before answering",
                    });
                }
            }
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
    }

    /// Frees the credit a job held, if this stream still holds that attempt.
    fn release(&mut self, conn: u64, id: ItemId, attempt: u32) {
        if self.inflight.get(&id) == Some(&(conn, attempt)) {
            self.inflight.remove(&id);
            if let Some(c) = self.connectors.get_mut(&conn) {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
        }
    }

    fn jitter(&mut self) -> f64 {
        // xorshift64*: plenty for spreading retries.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One round: read what fell due, then record the answers and lease new jobs in
    /// a single store write (one group commit for both), until nothing is left to do.
    async fn step(&mut self) -> domain::Result<()> {
        self.take_due().await?;
        loop {
            let planned = self.plan();
            if planned.is_empty() && self.outcomes.is_empty() {
                return Ok(());
            }
            let n = self.outcomes.len().min(BATCH);
            let batch: Vec<Outcome> = self.outcomes.drain(..n).collect();
            let ids: Vec<ItemId> = planned.iter().map(|p| p.id).collect();
            let engine = self.engine.clone();
            let t = self.tuning;
            let mut seed = self.jitter().to_bits();
            let result = self
                .engine
                .store()
                .write(move |tx| {
                    let mut jitter = move || {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed >> 11) as f64 / (1u64 << 53) as f64
                    };
                    writes::record(&engine, tx, &batch, t, &mut jitter)?;
                    writes::lease(tx, &ids, t)
                })
                .await;
            match result {
                Ok(leased) => {
                    let conn_of: HashMap<ItemId, u64> =
                        planned.iter().map(|p| (p.id, p.conn)).collect();
                    for item in leased {
                        let conn = conn_of.get(&item.id).copied();
                        self.hand_out(conn, item);
                    }
                }
                Err(e) => {
                    // Nothing was written. The answers are lost from memory, but their
                    // leases expire and the items are retried (at-least-once); the
                    // planned items wait again, first in line.
                    for p in planned.into_iter().rev() {
                        self.waiting
                            .entry(p.channel)
                            .or_default()
                            .push_front(&p.account, p.id);
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn take_due(&mut self) -> domain::Result<()> {
        let ids = self.engine.ready().take(BATCH * 4);
        if ids.is_empty() {
            return Ok(());
        }
        let metas = self
            .engine
            .store()
            .read(move |conn| read_meta(conn, &ids))
            .await?;
        let now = self.engine.clock().now_ms();
        for m in metas {
            match m.state {
                State::Pending => self
                    .waiting
                    .entry(m.channel)
                    .or_default()
                    .push(&m.account, m.id),
                State::Dispatching => {
                    let held = self.inflight.get(&m.id).copied();
                    let expired = m.lease_expires_at.is_none_or(|t| t <= now);
                    if expired || held.is_none() {
                        if let Some((conn, attempt)) = held {
                            self.release(conn, m.id, attempt);
                        }
                        self.outcomes.push(Outcome::Abandoned {
                            id: m.id,
                            attempt: m.attempts,
                            reason: if expired {
                                "lease expired without an answer"
                            } else {
                                "lease lost in a restart"
                            },
                        });
                    }
                }
                _ => {} // cancelled, converted or sent meanwhile: nothing to do
            }
        }
        Ok(())
    }

    /// Picks up to [`BATCH`] waiting items for the connectors' free credit, round-robin
    /// across accounts per channel, each to the connector with the most free credit
    /// whose token allows its account.
    fn plan(&mut self) -> Vec<Planned> {
        let mut out: Vec<Planned> = Vec::new();
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
            let mut unplaced: Vec<(String, ItemId)> = Vec::new();
            let mut placed = 0;
            while placed < want {
                let Some((account, id)) = q.pop() else { break };
                let target = free
                    .iter_mut()
                    .filter(|(c, n)| *n > 0 && self.connectors[c].accounts.allows(&account))
                    .max_by_key(|(_, n)| *n);
                match target {
                    Some((c, n)) => {
                        *n -= 1;
                        placed += 1;
                        out.push(Planned {
                            id,
                            account,
                            channel: ch,
                            conn: *c,
                        });
                    }
                    // No connector with credit may take this account's items yet.
                    None => unplaced.push((account, id)),
                }
            }
            for (account, id) in unplaced.into_iter().rev() {
                q.push_front(&account, id);
            }
        }
        self.waiting.retain(|_, q| !q.is_empty());
        out
    }

    /// Sends a leased item to the connector planned for it.
    fn hand_out(&mut self, conn: Option<u64>, item: Item) {
        let attempt = item.attempts;
        let id = item.id;
        let lease_expires_at = item.lease_expires_at.unwrap_or_default();
        let abandoned = Outcome::Abandoned {
            id,
            attempt,
            reason: "connector disconnected before the job was sent",
        };
        // The planned connector may have left while the lease was being written.
        let Some(c) = conn.and_then(|c| self.connectors.get_mut(&c)) else {
            self.outcomes.push(abandoned);
            return;
        };
        let job = Job {
            job_id: job_id(id, attempt),
            item,
            attempt,
            lease_expires_at,
        };
        // The stream's channel has room for max_in_flight jobs, and credit says fewer
        // are outstanding, so try_send only fails when the stream is gone.
        let late_ms = (self.engine.clock().now_ms() - job.item.send_at).max(0);
        let channel = job.item.channel;
        match c.jobs.try_send(job) {
            Ok(()) => {
                METRICS.dispatches.fetch_add(1, Relaxed);
                if attempt == 1 {
                    METRICS.lateness(channel).observe(late_ms as f64 / 1000.0);
                }
                c.in_flight += 1;
                self.inflight
                    .insert(id, (conn.unwrap_or_default(), attempt));
            }
            Err(_) => self.outcomes.push(abandoned),
        }
    }
}

fn read_meta(conn: &rusqlite::Connection, ids: &[ItemId]) -> domain::Result<Vec<Meta>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut st = conn.prepare_cached(&format!(
            "SELECT id, account_id, channel, state, {LEASE_EXPIRES}, attempts FROM items \
             WHERE id IN ({marks})"
        ))?;
        let rows = st.query_map(
            rusqlite::params_from_iter(chunk.iter().map(|&i| Value::Integer(i))),
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, u32>(5)?,
                ))
            },
        )?;
        let mut by_id: HashMap<ItemId, Meta> = HashMap::with_capacity(chunk.len());
        for r in rows {
            let (id, account, channel, state, lease_expires_at, attempts) = r?;
            let (Some(channel), Some(state)) = (Channel::from_i64(channel), State::from_i64(state))
            else {
                continue;
            };
            let (state, attempts) = with_lease(state, attempts, lease_expires_at);
            by_id.insert(
                id,
                Meta {
                    id,
                    account,
                    channel,
                    state,
                    lease_expires_at,
                    attempts,
                },
            );
        }
        // Keep the due order the wheel gave.
        out.extend(chunk.iter().filter_map(|id| by_id.remove(id)));
    }
    Ok(out)
}
