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
//!
//! The modules, by concept: `actor` (the state and the loop), `plan` (which waiting
//! item goes to which connector: pure), `claims` (leases taken without the writer),
//! `pipeline` (the dispatch writes and what happens when one fails), `answers` (Acks,
//! Nacks, streams that leave, leases that end), `hold` (pauses, rate limits, lateness
//! windows), `writes` (what a dispatch write does inside the store transaction).

mod actor;
mod answers;
mod claims;
mod conn;
mod fair;
mod hold;
mod job;
mod meta;
mod pipeline;
mod plan;
pub mod writes;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Accounts;
use crate::domain::{Channel, ItemId};
use crate::engine::Engine;
use actor::Actor;
pub use job::{job_id, parse_job_id, Answer, Job, JobKey};
use writes::Outcome;

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
    engine: Engine,
}

impl Dispatcher {
    /// Starts the dispatcher task. When `shutdown` is cancelled it stops handing out
    /// jobs, records the answers of the jobs out at connectors (waiting at most
    /// `drain_grace_ms` for them), then ends; the handle resolves then.
    pub fn start(engine: Engine, shutdown: CancellationToken) -> (Dispatcher, JoinHandle<()>) {
        // Unbounded: the senders bound themselves (a permit per answer, credit per job).
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(DispatchStats::default());
        let metrics = engine.metrics().clone();
        let actor = Actor::new(engine.clone(), tx.clone(), stats.clone());
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
                engine,
            },
            task,
        )
    }

    /// Whether a job may leave now (see `Engine::may_hand_out`): the stream adapter looks
    /// again just before it writes a job out.
    pub fn may_hand_out(&self) -> bool {
        self.engine.may_hand_out()
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
