//! Account settings that decide when items go out: business hours (and the
//! re-resolution of pending items when they change) and dispatch controls (pause,
//! rate limit). Each change is one write; the in-memory copies follow once it is
//! durable.

use super::transitions::apply;
use super::Engine;
use crate::domain::machine::Command;
use crate::domain::{self, BusinessHours, Channel, Error, Item};
use crate::store::rows::get_business_hours;

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
    /// Sets the account's business hours and, in the same commit, moves every PENDING
    /// item of the account whose window is BUSINESS_HOURS (and that is not out at a
    /// connector or waiting for a retry) to the next opening after its requested time.
    /// Returns the hours and the items that moved.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn set_business_hours(
        &self,
        account: String,
        hours: BusinessHours,
    ) -> domain::Result<(BusinessHours, Vec<Item>)> {
        domain::validate_id("account_id", &account)?;
        self.inner
            .store
            .write(move |tx| {
                tx.put_business_hours(&account, &hours)?;
                let mut moved = Vec::new();
                for mut item in tx.business_hours_items(&account)? {
                    let requested = item.timing.requested_send_at.unwrap_or(item.send_at);
                    let Some(at) = hours.next_opening(requested) else {
                        continue;
                    };
                    if apply(tx, &mut item, Command::Rewindow { at })?
                        .change()
                        .is_some()
                    {
                        moved.push(item);
                    }
                }
                Ok((hours, moved))
            })
            .await
    }

    /// The account's business hours.
    ///
    /// # Errors
    /// `NotFound` if never set.
    pub async fn business_hours(&self, account: String) -> domain::Result<BusinessHours> {
        domain::validate_id("account_id", &account)?;
        let a = account.clone();
        self.inner
            .store
            // Business hours are written to their rows by the write itself (not
            // journalled): no write-back is needed to read them.
            .read_journal(move |conn| Ok(get_business_hours(conn, &a)?))
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
