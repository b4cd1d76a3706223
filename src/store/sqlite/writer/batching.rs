//! When the writer commits a group, and what it does with nothing queued: the rules
//! the loop (`run`) follows, as functions of what it knows, so they can be checked
//! alone.
//!
//! A job runs as soon as it arrives, into the open group. The group commits
//! - at [`MAX_GROUP`] writes (then the writer blocks while the sync stage is behind), or
//! - once nothing more is queued and the sync stage has room for it; but when the
//!   previous group was at least twice this one, the writer first lingers a little
//!   ([`LINGER_STEPS`] naps of 50 us at most) for the callers still on their way.
//!
//! While the sync stage has no room, the group stays open (arriving jobs join it) and
//! the writer writes rows back in small steps, if enough is dirty. With no group open
//! and nothing queued, it writes rows back when the overlay wants it (a large chunk
//! when due or retrying after failures, a small step when merely many are dirty),
//! unless failed write-backs are backing off; else it sleeps until a message arrives.

use crate::store::sqlite::overlay::{SWEEP_CHUNK, SWEEP_STEP};

/// Most writes in one transaction: bounds a group's latency and memory.
pub const MAX_GROUP: usize = 2048;

/// How many 50 us naps the writer may take waiting for a group to fill.
pub(super) const LINGER_STEPS: u32 = 4;

/// Whether a group of `n` writes is full: it commits now, whatever is queued.
pub(super) fn full(n: usize) -> bool {
    n >= MAX_GROUP
}

/// What the writer does with an open group when nothing is queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OpenNext {
    /// The disk is busy: write a step of rows back (a write that arrives waits for one
    /// step at most).
    SweepStep,
    /// The disk is busy: wait for a write (run it now) or for the sync stage's wake-up.
    Wait,
    /// Nap 50 us for the callers still on their way.
    Linger,
    /// Commit the group and hand it to the sync stage.
    Commit,
}

/// The rule for an open group of `n` writes with nothing queued; `last_group`: the
/// size of the group before, `lingered`: naps taken for this one; `sweep_soon` is
/// asked only while the sync stage has no room.
pub(super) fn open_group_next(
    n: usize,
    last_group: usize,
    lingered: u32,
    sync_has_room: bool,
    sweep_soon: impl FnOnce() -> bool,
) -> OpenNext {
    if !sync_has_room {
        if sweep_soon() {
            OpenNext::SweepStep
        } else {
            OpenNext::Wait
        }
    } else if n * 2 < last_group && lingered < LINGER_STEPS {
        // At most LINGER_STEPS x 50 us (0.2 ms) against a ~4-30 ms fsync, and only when
        // the last group was at least twice this.
        OpenNext::Linger
    } else {
        OpenNext::Commit
    }
}

/// What an idle writer (no group open) does before it sleeps.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum IdleNext {
    /// Wait for a message.
    Wait,
    /// Unless a message is queued: open a group that writes this many rows back.
    Sweep(usize),
}

/// The rule for an idle writer: `retrying` (write-backs failed and items are dirty),
/// `due` (the overlay wants its idle sweep), `soon` (enough is dirty for a spare-time
/// step), `may_sweep` (no backoff after a failure is running).
pub(super) fn idle_next(retrying: bool, due: bool, soon: bool, may_sweep: bool) -> IdleNext {
    // While write-backs fail, one is retried after the backoff even without traffic
    // (so the store recovers, and says so, by itself); before that, the writer waits
    // for a write, or for the wake-up the retry timer sends.
    if !(retrying || due || soon) || !may_sweep {
        IdleNext::Wait
    } else if retrying || due {
        IdleNext::Sweep(SWEEP_CHUNK)
    } else {
        IdleNext::Sweep(SWEEP_STEP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        panic!("asked whether to sweep while the sync stage has room")
    }

    #[test]
    fn a_group_is_full_at_max_group_writes() {
        assert!(!full(MAX_GROUP - 1));
        assert!(full(MAX_GROUP));
    }

    #[test]
    fn with_room_to_sync_a_group_commits_once_nothing_more_is_queued() {
        assert_eq!(open_group_next(1, 0, 0, true, never), OpenNext::Commit);
        // Half the last group or more: no lingering.
        assert_eq!(open_group_next(50, 100, 0, true, never), OpenNext::Commit);
    }

    #[test]
    fn a_group_less_than_half_the_last_lingers_a_bounded_number_of_times() {
        for lingered in 0..LINGER_STEPS {
            assert_eq!(
                open_group_next(49, 100, lingered, true, never),
                OpenNext::Linger
            );
        }
        assert_eq!(
            open_group_next(49, 100, LINGER_STEPS, true, never),
            OpenNext::Commit
        );
    }

    #[test]
    fn while_the_disk_is_busy_a_group_stays_open_and_rows_go_back_in_steps() {
        assert_eq!(
            open_group_next(1, 0, 0, false, || true),
            OpenNext::SweepStep
        );
        assert_eq!(open_group_next(1, 0, 0, false, || false), OpenNext::Wait);
        // Even a full-looking last group does not make it linger or commit.
        assert_eq!(
            open_group_next(MAX_GROUP, 1, LINGER_STEPS, false, || false),
            OpenNext::Wait
        );
    }

    #[test]
    fn an_idle_writer_sleeps_unless_rows_want_writing_back() {
        assert_eq!(idle_next(false, false, false, true), IdleNext::Wait);
        assert_eq!(
            idle_next(false, true, false, true),
            IdleNext::Sweep(SWEEP_CHUNK)
        );
        assert_eq!(
            idle_next(false, false, true, true),
            IdleNext::Sweep(SWEEP_STEP)
        );
        assert_eq!(
            idle_next(true, false, true, true),
            IdleNext::Sweep(SWEEP_CHUNK)
        );
    }

    #[test]
    fn an_idle_writer_does_not_write_rows_back_while_failed_write_backs_back_off() {
        assert_eq!(idle_next(true, false, false, false), IdleNext::Wait);
        assert_eq!(idle_next(false, true, true, false), IdleNext::Wait);
    }
}
