//! sendlater: schedule helpdesk replies and new tickets to be sent later.
#![forbid(unsafe_code)]

pub mod pb;
pub mod wheel;
