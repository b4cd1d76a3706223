//! Output of an account's settings: its business hours (`hours get|set`) and its
//! dispatch controls (`pause`, `resume`, `rate-limit`, `controls`), as small tables and
//! as `--json`.
//!
//! Like [`super::output`], every function returns the text or value instead of
//! printing it. Tables list every weekday (a closed one says so) and every channel this
//! build knows (plus any other the server named), so what is *not* set is visible too.

use serde_json::{json, Value};

use super::json::enum_value;
use super::output::{self, table};
use crate::pb;

/// English weekday names, index 0 = ISO weekday 1 (Monday).
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// The channels a controls table always shows.
const CHANNELS: [pb::Channel; 2] = [pb::Channel::Email, pb::Channel::Chat];

/// Business hours as text: the zone, a DAY / HOURS table of the seven weekdays, the
/// holidays.
///
/// ```text
/// time zone: Europe/Moscow
/// DAY          HOURS
/// 1 Monday     09:00-13:00, 14:00-18:00
/// ...
/// 7 Sunday     closed
/// holidays:  2026-12-31
/// ```
pub fn hours_text(hours: &pb::BusinessHours) -> String {
    let rows: Vec<Vec<String>> = (1..=7)
        .zip(WEEKDAYS)
        .map(|(weekday, name)| {
            let intervals: Vec<String> = hours
                .days
                .iter()
                .filter(|d| d.weekday == weekday)
                .map(|d| format!("{}-{}", d.open, d.close))
                .collect();
            let shown = if intervals.is_empty() {
                "closed".to_owned()
            } else {
                intervals.join(", ")
            };
            vec![format!("{weekday} {name}"), shown]
        })
        .collect();
    let holidays = if hours.holidays.is_empty() {
        "none".to_owned()
    } else {
        hours.holidays.join(", ")
    };
    format!(
        "time zone: {}\n{}holidays:  {holidays}\n",
        hours.time_zone,
        table(&["DAY", "HOURS"], &rows)
    )
}

/// Business hours as JSON, in the shape of the proto message.
pub fn hours_json(hours: &pb::BusinessHours) -> Value {
    let days: Vec<Value> = hours
        .days
        .iter()
        .map(|d| json!({ "weekday": d.weekday, "open": d.open, "close": d.close }))
        .collect();
    json!({
        "account_id": hours.account_id,
        "time_zone": hours.time_zone,
        "days": days,
        "holidays": hours.holidays,
    })
}

/// Dispatch controls as a CHANNEL / DISPATCH / RATE LIMIT table, after a line naming
/// the account.
///
/// ```text
/// account: acme
/// CHANNEL  DISPATCH  RATE LIMIT
/// EMAIL    paused    -
/// CHAT     running   60/min
/// ```
pub fn controls_text(controls: &pb::DispatchControls) -> String {
    let rows: Vec<Vec<String>> = channels_of(controls)
        .into_iter()
        .map(|channel| {
            let paused = controls.paused_channels.contains(&channel);
            let limit = controls
                .rate_limits
                .iter()
                .find(|l| l.channel == channel)
                .map_or_else(|| "-".to_owned(), |l| format!("{}/min", l.per_minute));
            let dispatch = if paused { "paused" } else { "running" };
            vec![output::channel(channel), dispatch.to_owned(), limit]
        })
        .collect();
    format!(
        "account: {}\n{}",
        controls.account_id,
        table(&["CHANNEL", "DISPATCH", "RATE LIMIT"], &rows)
    )
}

/// Dispatch controls as JSON: channel short names, rate limits per channel.
pub fn controls_json(controls: &pb::DispatchControls) -> Value {
    let paused: Vec<Value> = controls
        .paused_channels
        .iter()
        .map(|&c| enum_value(output::channel(c)))
        .collect();
    let limits: Vec<Value> = controls
        .rate_limits
        .iter()
        .map(|l| {
            json!({
                "channel": enum_value(output::channel(l.channel)),
                "per_minute": l.per_minute,
            })
        })
        .collect();
    json!({
        "account_id": controls.account_id,
        "paused_channels": paused,
        "rate_limits": limits,
    })
}

/// The known channels, then any other the controls mention, each once.
fn channels_of(controls: &pb::DispatchControls) -> Vec<i32> {
    let mut channels: Vec<i32> = CHANNELS.iter().map(|&c| c as i32).collect();
    let mentioned = controls
        .paused_channels
        .iter()
        .copied()
        .chain(controls.rate_limits.iter().map(|l| l.channel));
    for channel in mentioned {
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    channels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(weekday: i32, open: &str, close: &str) -> pb::BusinessDay {
        pb::BusinessDay {
            weekday,
            open: open.into(),
            close: close.into(),
        }
    }

    fn moscow() -> pb::BusinessHours {
        pb::BusinessHours {
            account_id: "acme".into(),
            time_zone: "Europe/Moscow".into(),
            days: vec![
                day(1, "09:00", "13:00"),
                day(1, "14:00", "18:00"),
                day(6, "10:00", "14:00"),
            ],
            holidays: vec!["2026-12-31".into(), "2027-01-01".into()],
        }
    }

    #[test]
    fn hours_are_a_table_of_the_seven_weekdays_with_the_zone_and_holidays() {
        let want = "\
time zone: Europe/Moscow
DAY          HOURS
1 Monday     09:00-13:00, 14:00-18:00
2 Tuesday    closed
3 Wednesday  closed
4 Thursday   closed
5 Friday     closed
6 Saturday   10:00-14:00
7 Sunday     closed
holidays:  2026-12-31, 2027-01-01
";
        assert_eq!(hours_text(&moscow()), want);
        let v = hours_json(&moscow());
        assert_eq!(v["time_zone"], "Europe/Moscow");
        assert_eq!(v["days"][1]["open"], "14:00");
        assert_eq!(v["days"][2]["weekday"], 6);
        assert_eq!(v["holidays"][1], "2027-01-01");
    }

    #[test]
    fn controls_show_every_channel_paused_or_running_with_its_limit() {
        let controls = pb::DispatchControls {
            account_id: "acme".into(),
            paused_channels: vec![pb::Channel::Email as i32],
            rate_limits: vec![pb::RateLimit {
                channel: pb::Channel::Chat as i32,
                per_minute: 60,
            }],
        };
        let want = "\
account: acme
CHANNEL  DISPATCH  RATE LIMIT
EMAIL    paused    -
CHAT     running   60/min
";
        assert_eq!(controls_text(&controls), want);
        let v = controls_json(&controls);
        assert_eq!(v["paused_channels"], json!(["EMAIL"]));
        assert_eq!(v["rate_limits"][0]["channel"], "CHAT");
        assert_eq!(v["rate_limits"][0]["per_minute"], 60);
    }

    #[test]
    fn a_channel_unknown_to_this_build_gets_its_own_row() {
        let controls = pb::DispatchControls {
            account_id: "acme".into(),
            paused_channels: vec![9],
            rate_limits: vec![],
        };
        assert!(controls_text(&controls).ends_with("\n9        paused    -\n"));
        assert_eq!(controls_json(&controls)["paused_channels"], json!([9]));
    }
}
