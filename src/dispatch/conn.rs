//! One connector stream as the dispatcher sees it: its credit and the jobs it holds.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Job;
use crate::config::Accounts;
use crate::domain::{Channel, ItemId};

/// A job a stream was given and has not answered.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub(super) attempt: u32,
    pub(super) token: u128,
    /// Its lease expired: the attempt has ended (the item went back in line), but the
    /// connector may still report that it did send it (a late Ack counts).
    pub(super) expired: bool,
}

pub(super) struct Conn {
    pub(super) connector_id: String,
    pub(super) channels: Vec<Channel>,
    pub(super) accounts: Accounts,
    pub(super) max_in_flight: usize,
    pub(super) jobs: mpsc::Sender<Job>,
    pub(super) kick: CancellationToken,
    /// Jobs sent to this stream and not answered. Invariant: at most `max_in_flight`
    /// not expired. Changed only through `hold` / `take` / `expire`.
    pub(super) held: HashMap<ItemId, Held>,
    /// How many of `held` are not expired (the credit in use).
    pub(super) live: usize,
    /// A lease of this stream expired unanswered: it gets no more jobs, and its stream
    /// is ended once it holds no unexpired job.
    pub(super) stalled: bool,
}

impl Conn {
    pub(super) fn in_flight(&self) -> usize {
        debug_assert_eq!(
            self.live,
            self.held.values().filter(|h| !h.expired).count(),
            "live count of {}",
            self.connector_id
        );
        self.live
    }

    pub(super) fn hold(&mut self, id: ItemId, h: Held) {
        if let Some(old) = self.held.insert(id, h) {
            if !old.expired {
                self.live -= 1;
            }
        }
        if !h.expired {
            self.live += 1;
        }
    }

    /// Removes the job of `id`, if held.
    pub(super) fn take(&mut self, id: ItemId) -> Option<Held> {
        let h = self.held.remove(&id)?;
        if !h.expired {
            self.live -= 1;
        }
        Some(h)
    }

    /// The lease of `id` ended; the stream may still answer it (late).
    pub(super) fn expire(&mut self, id: ItemId) {
        if let Some(h) = self.held.get_mut(&id) {
            if !h.expired {
                h.expired = true;
                self.live -= 1;
            }
        }
    }

    /// Credit for new jobs: none when stalled; never more than the stream's buffer
    /// has room for (a job that cannot be written is not handed out).
    pub(super) fn free(&self) -> usize {
        if self.stalled {
            return 0;
        }
        self.max_in_flight
            .saturating_sub(self.in_flight())
            .min(self.jobs.capacity())
    }
}
