//! Jobs as connectors see them: the job, its id (a capability: item, attempt and a
//! secret lease token) and the answers a connector gives.

use crate::domain::{format_item_id, parse_item_id, Item, ItemId, Millis};

/// A job sent to a connector.
#[derive(Debug, Clone)]
pub struct Job {
    pub job_id: String,
    pub item: Item,
    pub attempt: u32,
    pub lease_expires_at: Millis,
}

/// What a job id names: the item, the attempt, and the lease's secret token. The
/// token makes a job id a capability: only the stream it was sent to can know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobKey {
    pub item: ItemId,
    pub attempt: u32,
    pub token: u128,
}

/// `itm_42#3.<32 hex digits>`: the item, the attempt and the lease token.
pub fn job_id(k: JobKey) -> String {
    format!("{}#{}.{:032x}", format_item_id(k.item), k.attempt, k.token)
}

/// Parses a job id; `None` for anything not spelt as [`job_id`] spells it.
pub fn parse_job_id(s: &str) -> Option<JobKey> {
    let (item, rest) = s.split_once('#')?;
    let (attempt, token) = rest.split_once('.')?;
    if token.len() != 32 {
        return None;
    }
    Some(JobKey {
        item: parse_item_id(item)?,
        attempt: attempt.parse().ok()?,
        token: u128::from_str_radix(token, 16).ok()?,
    })
}

/// A connector's answer to a job.
#[derive(Debug)]
pub enum Answer {
    Ack { provider_message_id: String },
    Nack { error: String, permanent: bool },
}
