//! The wheel behind its lock, the driver task that advances it, and the ready queue.

use std::collections::{BTreeSet, VecDeque};
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

/// An item whose timer fired: its id and the deadline the timer was set for. The
/// deadline, not a second reading of the clock, is what tells dispatch whether the
/// item is due (its next send time is not after it) or the timer was stale (the item
/// moved later meanwhile, and a newer timer exists): a clock that steps back between
/// the firing and the check must not strand the item.
pub type Fired = (ItemId, Millis);

/// Items that fell due, oldest first, waiting for dispatch.
#[derive(Default)]
pub struct ReadyQueue {
    q: Mutex<VecDeque<Fired>>,
    /// Signalled when ids are pushed (one stored permit: the single consumer never
    /// misses a push that happens while it is busy).
    notify: Arc<Notify>,
}

impl ReadyQueue {
    fn push_all(&self, fired: impl IntoIterator<Item = Fired>) {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        let before = q.len();
        q.extend(fired);
        if q.len() > before {
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Puts taken items back at the head, in their order (a read of them failed).
    pub fn put_back(&self, fired: Vec<Fired>) {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        for f in fired.into_iter().rev() {
            q.push_front(f);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// The signal the consumer waits on.
    pub fn clone_notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Takes up to `max` items.
    pub fn take(&self, max: usize) -> Vec<Fired> {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.q.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The wheel and the timers it fired early.
struct Wheel {
    wheel: TimingWheel,
    /// Timers the wheel fired whose deadline the clock has not reached: the wheel's
    /// time never goes back, so after the clock steps back it fires what is due by its
    /// own (later) time. They are held here, by deadline, until the clock gets there.
    early: BTreeSet<(Millis, ItemId)>,
}

impl Wheel {
    /// Advances to `now`; appends what is due by `now` to `out`, in deadline order.
    fn advance(&mut self, now: Millis, scratch: &mut Vec<(u64, u64)>, out: &mut Vec<Fired>) {
        scratch.clear();
        // The wheel's time never goes back: after the clock stepped back, advance it to
        // its own time, so a timer set meanwhile for a moment it has passed fires (and is
        // held back below unless the clock has reached it too). A step short of that left
        // the timer on the wheel while `next_deadline` reported it due: the driver spun.
        let to = tick(now).max(self.wheel.now());
        self.wheel.advance(to, scratch);
        for &(id, at) in scratch.iter() {
            let at = i64::try_from(at).unwrap_or(i64::MAX);
            if at <= now {
                out.push((id as ItemId, at));
            } else {
                self.early.insert((at, id as ItemId));
            }
        }
        while let Some(&(at, id)) = self.early.first() {
            if at > now {
                break;
            }
            self.early.pop_first();
            out.push((id, at));
        }
    }

    /// The earliest deadline waiting, on the wheel or held back.
    fn next_deadline(&mut self) -> Option<Millis> {
        let wheel = self
            .wheel
            .next_deadline()
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let early = self.early.first().map(|&(at, _)| at);
        match (wheel, early) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The timing wheel, its wake-up signal and the ready queue.
pub struct Timers {
    wheel: Mutex<Wheel>,
    /// Wakes the driver when a timer earlier than the one it sleeps for is set.
    wake: Notify,
    stopped: AtomicBool,
    /// Where due ids go.
    pub ready: ReadyQueue,
}

impl Timers {
    pub(crate) fn new(now: Millis) -> Self {
        Self {
            wheel: Mutex::new(Wheel {
                wheel: TimingWheel::new(tick(now)),
                early: BTreeSet::new(),
            }),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            ready: ReadyQueue::default(),
        }
    }

    fn wheel(&self) -> MutexGuard<'_, Wheel> {
        self.wheel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies committed timer changes (called by the writer thread after a commit).
    pub fn apply(&self, ops: &[WheelOp]) {
        let mut w = self.wheel();
        let before = w.next_deadline();
        for op in ops {
            match *op {
                WheelOp::Set(id, at) => {
                    w.wheel.insert(id as u64, tick(at));
                }
                WheelOp::Remove(id) => {
                    w.wheel.cancel(id as u64);
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
        if w.wheel.is_empty() {
            // Size the slab and index once instead of growing them step by step.
            w.wheel = TimingWheel::with_capacity(w.wheel.now(), entries.len());
        }
        for &(id, at) in entries {
            w.wheel.insert(id as u64, tick(at));
        }
        drop(w);
        self.wake.notify_one();
    }

    /// Whether the item has a timer, on the wheel or held back.
    pub(crate) fn contains(&self, id: ItemId) -> bool {
        let w = self.wheel();
        w.wheel.contains(id as u64) || w.early.iter().any(|&(_, i)| i == id)
    }

    /// Timers pending (on the wheel or fired early and held back).
    pub fn len(&self) -> usize {
        let w = self.wheel();
        w.wheel.len() + w.early.len()
    }

    /// Whether a timer (on the wheel or held back) is due by `now`.
    pub(crate) fn due_by(&self, now: Millis) -> bool {
        self.wheel().next_deadline().is_some_and(|at| at <= now)
    }

    /// Does the driver's work now: advances to `now` and queues what is due by it.
    pub(crate) fn catch_up(&self, now: Millis) {
        let mut scratch = Vec::new();
        let mut due = Vec::new();
        self.wheel().advance(now, &mut scratch, &mut due);
        if !due.is_empty() {
            self.ready.push_all(due);
        }
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
        let mut scratch: Vec<(u64, u64)> = Vec::with_capacity(1024);
        let mut due: Vec<Fired> = Vec::with_capacity(1024);
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
                w.advance(now, &mut scratch, &mut due);
                w.next_deadline()
            };
            if !due.is_empty() {
                // In deadline order: oldest first.
                self.ready.push_all(due.drain(..));
                continue;
            }
            match next {
                Some(at) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock stepped back after the wheel moved ahead of it, and a timer is then set
    /// for a time before the clock's (an item due at once): whatever says it is due by
    /// `now` must also be fired by a catch-up to `now`. Before, the wheel refused to
    /// advance "backwards" and kept the timer while `due_by` reported it: the settle
    /// loop (and the driver) spun on it until the clock passed the wheel's time again.
    #[test]
    fn a_timer_set_in_the_past_after_the_clock_stepped_back_fires_at_the_next_catch_up() {
        let timers = Timers::new(0);
        timers.apply(&[WheelOp::Set(1, 100_000)]);
        timers.catch_up(100_000);
        assert_eq!(timers.ready.take(10), vec![(1, 100_000)]);
        // NTP steps the clock back to 21 s; an item due at 10 s gets a timer.
        timers.apply(&[WheelOp::Set(2, 10_000), WheelOp::Set(3, 30_000)]);
        assert!(timers.due_by(21_000));
        timers.catch_up(21_000);
        assert_eq!(timers.ready.take(10), vec![(2, 10_000)]);
        assert!(!timers.due_by(21_000), "nothing else is due by 21 s");
        // The timer for 30 s is held back until the clock gets there.
        assert_eq!(timers.len(), 1);
        timers.catch_up(29_999);
        assert!(timers.ready.is_empty());
        timers.catch_up(30_000);
        assert_eq!(timers.ready.take(10), vec![(3, 30_000)]);
        assert!(timers.is_empty());
    }
}
