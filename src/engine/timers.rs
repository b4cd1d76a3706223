//! The wheel behind its lock, the driver task that advances it, and the ready queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::domain::{ItemId, Millis};
use crate::store::WheelOp;
use crate::wheel::TimingWheel;

/// Wall-clock milliseconds to wheel ticks: negative times (before 1970) clamp to 0.
fn tick(ms: Millis) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

/// Item ids that fell due, oldest first, waiting for dispatch.
#[derive(Default)]
pub struct ReadyQueue {
    q: Mutex<VecDeque<ItemId>>,
    /// Signalled when ids are pushed (one stored permit: the single consumer never
    /// misses a push that happens while it is busy).
    notify: Arc<Notify>,
}

impl ReadyQueue {
    fn push_all(&self, ids: impl IntoIterator<Item = ItemId>) {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        let before = q.len();
        q.extend(ids);
        if q.len() > before {
            drop(q);
            self.notify.notify_one();
        }
    }

    /// The signal the consumer waits on.
    pub fn clone_notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Takes up to `max` ids.
    pub fn take(&self, max: usize) -> Vec<ItemId> {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    /// Ids waiting.
    pub fn len(&self) -> usize {
        self.q.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The timing wheel, its wake-up signal and the ready queue.
pub struct Timers {
    wheel: Mutex<TimingWheel>,
    /// Wakes the driver when a timer earlier than the one it sleeps for is set.
    wake: Notify,
    stopped: AtomicBool,
    /// Where due ids go.
    pub ready: ReadyQueue,
}

impl Timers {
    pub(crate) fn new(now: Millis) -> Self {
        Self {
            wheel: Mutex::new(TimingWheel::new(tick(now))),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            ready: ReadyQueue::default(),
        }
    }

    fn wheel(&self) -> MutexGuard<'_, TimingWheel> {
        self.wheel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies committed timer changes (called by the writer thread after a commit).
    pub fn apply(&self, ops: &[WheelOp]) {
        let mut w = self.wheel();
        let before = w.next_deadline();
        for op in ops {
            match *op {
                WheelOp::Set(id, at) => {
                    w.insert(id as u64, tick(at));
                }
                WheelOp::Remove(id) => {
                    w.cancel(id as u64);
                }
            }
        }
        let after = w.next_deadline();
        drop(w);
        if after.is_some() && (before.is_none() || after < before) {
            self.wake.notify_one();
        }
    }

    /// Loads recovered timers.
    pub(crate) fn load(&self, entries: &[(ItemId, Millis)]) {
        let mut w = self.wheel();
        if w.is_empty() {
            // Size the slab and index once instead of growing them step by step.
            *w = TimingWheel::with_capacity(w.now(), entries.len());
        }
        for &(id, at) in entries {
            w.insert(id as u64, tick(at));
        }
        drop(w);
        self.wake.notify_one();
    }

    /// Timers pending.
    pub fn len(&self) -> usize {
        self.wheel().len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub(crate) fn spawn_driver(self: &Arc<Self>, clock: Arc<dyn Clock>) {
        let me = self.clone();
        tokio::spawn(async move { me.drive(clock).await });
    }

    /// Sleeps until the next deadline or a wake-up, advances, pushes due ids. Never
    /// polls while idle: with no timers it waits for a wake-up alone.
    async fn drive(self: Arc<Self>, clock: Arc<dyn Clock>) {
        let mut due: Vec<(u64, u64)> = Vec::with_capacity(1024);
        loop {
            // Register for a wake-up before looking at the wheel, so a timer set between
            // the look and the sleep is not missed.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            let now = clock.now_ms();
            let next = {
                let mut w = self.wheel();
                due.clear();
                w.advance(tick(now), &mut due);
                w.next_deadline()
            };
            if !due.is_empty() {
                // Within one advance the wheel yields in deadline order: oldest first.
                self.ready.push_all(due.iter().map(|&(id, _)| id as ItemId));
                continue;
            }
            match next {
                Some(at) => {
                    let at = i64::try_from(at).unwrap_or(i64::MAX);
                    tokio::select! {
                        _ = clock.sleep_until(at) => {}
                        _ = &mut woken => {}
                    }
                }
                None => woken.await,
            }
        }
    }
}
