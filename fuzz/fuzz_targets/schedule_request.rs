//! Arbitrary bytes decoded as a ScheduleRequest / BatchEntry / ListScheduled request,
//! then converted to the domain and validated: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sendlater::config::Limits;
use sendlater::domain::{validate_new, Kind};
use sendlater::pb;
use sendlater::service::convert::{self, ScheduleFields};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let now = 1_800_000_000_000;
    if let Ok(req) = pb::ScheduleRequest::decode(data) {
        if let Ok(new) = ScheduleFields::from(req).into_new_item(Kind::Reply) {
            let _ = validate_new(&new, now, &limits);
        }
    }
    if let Ok(entry) = pb::BatchEntry::decode(data) {
        if let Ok((kind, fields)) = convert::batch_entry(entry) {
            if let Ok(new) = fields.into_new_item(kind) {
                let _ = validate_new(&new, now, &limits);
            }
        }
    }
    if let Ok(r) = pb::RecordTicketActivityRequest::decode(data) {
        let _ = convert::activity(&r);
    }
    if let Ok(r) = pb::ListScheduledRequest::decode(data) {
        let _ = convert::order(r.order);
        let _ = convert::state("state", r.state);
        let _ = convert::optional_ms("send_at_from", r.send_at_from.as_ref());
    }
});
