//! Account settings that decide when items go out: business hours (and the
//! re-resolution of pending items when they change) and dispatch controls (pause,
//! rate limit). Each change is one write; the in-memory copies follow once it is
//! durable.

use super::transitions::apply;
use super::Engine;
use crate::domain::machine::Command;
use std::collections::HashSet;

use crate::domain::{self, BusinessHours, Channel, Error, Item, ItemId, Millis};
use crate::store::LiveKey;

/// Where a re-resolution walk starts: before every key.
const START: LiveKey = (Millis::MIN, 0);

/// One chunk of a re-resolution: moves the chunk's business-hours items to the next
/// opening after their requested time (none beyond the horizon: such an item keeps its
/// time); returns the items moved and where to go on from.
fn rewindow_chunk(
    tx: &mut crate::store::Tx<'_>,
    account: &str,
    hours: &BusinessHours,
    after: LiveKey,
    chunk: usize,
    horizon: Millis,
    seen: &mut HashSet<ItemId>,
) -> domain::Result<(Vec<Item>, Option<LiveKey>)> {
    let (items, next) = tx.rewindow_chunk(account, after, chunk, seen)?;
    let mut moved = Vec::new();
    for mut item in items {
        let requested = item.timing.requested_send_at.unwrap_or(item.send_at);
        let Some(at) = hours.next_opening_until(requested, requested.saturating_add(horizon))
        else {
            continue;
        };
        if apply(tx, &mut item, Command::Rewindow { at })?
            .change()
            .is_some()
        {
            moved.push(item);
        }
    }
    Ok((moved, next))
}

/// The dispatch controls of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountControls {
    pub account_id: String,
    pub paused: Vec<Channel>,
    pub rate_limits: Vec<(Channel, u32)>,
}

/// A change to the controls of an account, on some channels.
#[derive(Debug, Clone, Copy)]
pub enum ControlChange {
    Pause,
    Resume,
    RateLimit(u32),
}

impl Engine {
    /// Sets the account's business hours and re-resolves the account's PENDING items
    /// whose window is BUSINESS_HOURS (and that are not out at a connector or waiting
    /// for a retry) to the next opening after their requested time: the first chunk
    /// ([`crate::config::Limits::rewindow_chunk`] live items) in the same commit as the
    /// hours, the rest in further writes of that size right after (so a large account
    /// never holds the writer for every other tenant), resumed by a restart if a stop
    /// interrupts them. Returns the hours and the items the first chunk moved.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn set_business_hours(
        &self,
        account: String,
        hours: BusinessHours,
    ) -> domain::Result<(BusinessHours, Vec<Item>)> {
        domain::validate_id("account_id", &account)?;
        let chunk = self.inner.limits.rewindow_chunk.max(1);
        let horizon = self.inner.limits.max_horizon_ms();
        let a = account.clone();
        let (hours, moved, more, seen) = self
            .inner
            .store
            .write(move |tx| {
                tx.put_business_hours(&a, &hours)?;
                let mut seen = HashSet::new();
                let (moved, next) =
                    rewindow_chunk(tx, &a, &hours, START, chunk, horizon, &mut seen)?;
                tx.set_rewindow_cursor(&a, next)?;
                Ok((hours, moved, next.is_some(), seen))
            })
            .await?;
        if more {
            self.spawn_rewindow(account, seen);
        }
        Ok((hours, moved))
    }

    /// Goes on with the account's re-resolution in the background, a chunk a write,
    /// until it is done (the cursor in the store says where it stands).
    /// `seen`: the changed items the walk took already (see `Tx::rewindow_chunk`).
    pub(crate) fn spawn_rewindow(&self, account: String, mut seen: HashSet<ItemId>) {
        let me = self.clone();
        tokio::spawn(async move {
            let chunk = me.inner.limits.rewindow_chunk.max(1);
            let horizon = me.inner.limits.max_horizon_ms();
            loop {
                let a = account.clone();
                let r = me
                    .inner
                    .store
                    .write(move |tx| {
                        let Some(after) = tx.rewindow_cursor(&a)? else {
                            return Ok((false, seen));
                        };
                        let Some(hours) = tx.business_hours(&a)? else {
                            tx.set_rewindow_cursor(&a, None)?;
                            return Ok((false, seen));
                        };
                        let (_, next) =
                            rewindow_chunk(tx, &a, &hours, after, chunk, horizon, &mut seen)?;
                        tx.set_rewindow_cursor(&a, next)?;
                        Ok((next.is_some(), seen))
                    })
                    .await;
                match r {
                    Ok((true, s)) => seen = s,
                    Ok((false, _)) => return,
                    Err(e) => {
                        // The store is stopping or failing: a restart resumes the walk.
                        tracing::warn!(account = %account, error = %e, "re-resolving business hours paused; a restart resumes it");
                        return;
                    }
                }
            }
        });
    }

    /// Resumes every re-resolution a stop interrupted (at start-up).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn resume_rewindows(&self) -> domain::Result<()> {
        let accounts = self.inner.store.rewindows_under_way().await?;
        for account in accounts {
            tracing::info!(account = %account, "resuming the re-resolution of business-hours items");
            self.spawn_rewindow(account, HashSet::new());
        }
        Ok(())
    }

    /// The account's business hours.
    ///
    /// # Errors
    /// `NotFound` if never set.
    pub async fn business_hours(&self, account: String) -> domain::Result<BusinessHours> {
        domain::validate_id("account_id", &account)?;
        self.inner
            .store
            .business_hours(account.clone())
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("account {account:?} has no business hours set"))
            })
    }

    /// Pauses, resumes or rate-limits the account's dispatch on `channels`; durable,
    /// then applied to the dispatcher.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn change_controls(
        &self,
        account: String,
        channels: Vec<Channel>,
        change: ControlChange,
    ) -> domain::Result<AccountControls> {
        if account != super::controls::EVERY_ACCOUNT {
            domain::validate_id("account_id", &account)?;
        } else if matches!(change, ControlChange::RateLimit(_)) {
            // A pause can hold a channel for everyone (a provider outage); a rate limit
            // is a budget of one account.
            return Err(Error::invalid(
                "account_id",
                "a rate limit is set per account, not for every account (*)",
            ));
        }
        let a = account.clone();
        let rows = self
            .inner
            .store
            .write(move |tx| {
                for &ch in &channels {
                    let (paused, per_minute) = match change {
                        ControlChange::Pause => (Some(true), None),
                        ControlChange::Resume => (Some(false), None),
                        ControlChange::RateLimit(n) => (None, Some(n)),
                    };
                    tx.put_control(&a, ch, paused, per_minute)?;
                }
                tx.all_controls()
            })
            .await?;
        self.inner.controls.replace(&rows);
        Ok(self.controls_of(account))
    }

    /// The account's controls as they are in force.
    pub fn controls_of(&self, account: String) -> AccountControls {
        let (paused, rate_limits) = self.inner.controls.snapshot().of_account(&account);
        AccountControls {
            account_id: account,
            paused,
            rate_limits,
        }
    }
}
