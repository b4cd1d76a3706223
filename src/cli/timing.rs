//! How the command line shows when an item goes out: the local time of an item scheduled
//! at a wall-clock time (`send_at_local`) beside its UTC instant, and the rest of its
//! timing (requested time, delivery window, lateness policy) in `get`.
//!
//! An item's zone is the one of its `send_at_local`; instants are shown there as
//! `2026-11-26 09:00 Europe/Moscow` (seconds only when not zero). Durations are shown
//! as `1h30m`, `45s`, `2m0.500s`, in the units `--in` takes.

use chrono::Timelike;
use chrono_tz::Tz;
use prost_types::{Duration, Timestamp};

use super::{output, timestamp};
use crate::pb;

/// `t` as a wall-clock time in the zone of the item's `send_at_local`; `None` when the
/// item has none, `t` is absent or malformed, or the zone is unknown to this build.
pub fn in_item_zone(t: Option<&Timestamp>, item: &pb::ScheduledItem) -> Option<String> {
    let zone: Tz = item.send_at_local.as_ref()?.time_zone.parse().ok()?;
    let local = timestamp::from_pb(t?)?.with_timezone(&zone);
    let format = if local.second() == 0 {
        "%Y-%m-%d %H:%M"
    } else {
        "%Y-%m-%d %H:%M:%S"
    };
    Some(format!("{} {}", local.format(format), zone.name()))
}

/// `t` in the display zone, followed by `(... Zone)` in the item's own zone when it was
/// scheduled at a local time in another zone than the display zone:
/// `2026-11-26T06:00:00Z (2026-11-26 09:00 Europe/Moscow)`.
pub fn beside(t: &Option<Timestamp>, item: &pb::ScheduledItem, tz: Tz) -> String {
    let shown = timestamp::display(t.as_ref(), tz);
    let same_zone = item
        .send_at_local
        .as_ref()
        .is_some_and(|l| l.time_zone == tz.name());
    match in_item_zone(t.as_ref(), item) {
        Some(local) if !same_zone => format!("{shown} ({local})"),
        _ => shown,
    }
}

/// The timing lines of `get`, after `send at`: the local time as asked, the requested
/// instant (set for BUSINESS_HOURS items), the delivery window, and the lateness policy
/// when there is a limit (or an unusual policy). Empty values are left out by the caller.
pub fn fields(item: &pb::ScheduledItem, tz: Tz) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(local) = &item.send_at_local {
        out.push(("send at local", as_given(local)));
    }
    if item.requested_send_at.is_some() {
        out.push(("requested at", beside(&item.requested_send_at, item, tz)));
    }
    out.push(("delivery window", window(item.delivery_window)));
    let limited = item.max_lateness.as_ref().is_some_and(|d| !is_zero(d));
    if limited {
        out.push((
            "max lateness",
            item.max_lateness.as_ref().map(human).unwrap_or_default(),
        ));
    }
    // Without a limit the policy never applies; the default (SEND) is then noise.
    let default_policy = [pb::OnLate::Unspecified as i32, pb::OnLate::Send as i32];
    if limited || !default_policy.contains(&item.on_late) {
        out.push(("on late", output::on_late(item.on_late)));
    }
    if let Some(late_by) = &item.late_by {
        out.push(("late by", human(late_by)));
    }
    out
}

/// The delivery window's short name; UNSPECIFIED is shown as the ANY it means.
pub fn window(v: i32) -> String {
    if v == pb::DeliveryWindow::Unspecified as i32 {
        output::delivery_window(pb::DeliveryWindow::Any as i32)
    } else {
        output::delivery_window(v)
    }
}

/// A local time as the item keeps it: `2026-11-28 20:00 Europe/Moscow` (the `T` read as
/// a space, `:00` seconds dropped); the text as sent when it has another shape.
pub fn as_given(local: &pb::LocalTime) -> String {
    let text = &local.local_time;
    let pretty = match text.split_once('T') {
        Some((date, time)) => {
            let time = time
                .strip_suffix(":00")
                .filter(|t| t.len() == 5)
                .unwrap_or(time);
            format!("{date} {time}")
        }
        None => text.clone(),
    };
    format!("{pretty} {}", local.time_zone)
}

/// A duration in the units of `--in`: `1h30m`, `45s`, `0s`; a fraction of a second as
/// milliseconds (`2m0.500s`).
pub fn human(d: &Duration) -> String {
    let negative = d.seconds < 0 || d.nanos < 0;
    let secs = d.seconds.unsigned_abs();
    let millis = d.nanos.unsigned_abs() / 1_000_000;
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
    ];
    let mut out: String = if negative { "-".into() } else { String::new() };
    for (n, unit) in parts {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    let s = secs % 60;
    if millis > 0 {
        out.push_str(&format!("{s}.{millis:03}s"));
    } else if s > 0 || out.is_empty() || out == "-" {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// A duration in the proto3 JSON form: `"1800s"`, `"0.500s"`.
pub fn json(d: &Duration) -> String {
    if d.nanos == 0 {
        return format!("{}s", d.seconds);
    }
    let sign = if d.seconds < 0 || d.nanos < 0 {
        "-"
    } else {
        ""
    };
    let fraction = format!("{:09}", d.nanos.unsigned_abs());
    format!(
        "{sign}{}.{}s",
        d.seconds.unsigned_abs(),
        fraction.trim_end_matches('0')
    )
}

fn is_zero(d: &Duration) -> bool {
    d.seconds == 0 && d.nanos == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-26T06:00:00Z.
    const T0: i64 = 1_795_672_800;

    fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn moscow_item() -> pb::ScheduledItem {
        pb::ScheduledItem {
            send_at: ts(T0),
            send_at_local: Some(pb::LocalTime {
                local_time: "2026-11-26T09:00:00".into(),
                time_zone: "Europe/Moscow".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_local_time_is_shown_beside_the_utc_instant() {
        let item = moscow_item();
        assert_eq!(
            beside(&item.send_at, &item, chrono_tz::UTC),
            "2026-11-26T06:00:00Z (2026-11-26 09:00 Europe/Moscow)"
        );
        let plain = pb::ScheduledItem {
            send_at: ts(T0),
            ..Default::default()
        };
        assert_eq!(
            beside(&plain.send_at, &plain, chrono_tz::UTC),
            "2026-11-26T06:00:00Z"
        );
        assert_eq!(beside(&None, &item, chrono_tz::UTC), "-");
        // Shown in the item's own zone already: no need to repeat it.
        assert_eq!(
            beside(&item.send_at, &item, chrono_tz::Europe::Moscow),
            "2026-11-26T09:00:00+03:00"
        );
        assert_eq!(
            in_item_zone(ts(T0 + 30).as_ref(), &item).as_deref(),
            Some("2026-11-26 09:00:30 Europe/Moscow")
        );
    }

    #[test]
    fn get_shows_the_local_time_as_given_the_window_and_the_lateness_policy() {
        let mut item = moscow_item();
        item.requested_send_at = ts(T0 - 3_600);
        item.delivery_window = pb::DeliveryWindow::BusinessHours as i32;
        item.max_lateness = Some(Duration {
            seconds: 1_800,
            nanos: 0,
        });
        item.on_late = pb::OnLate::ConvertToNote as i32;
        item.late_by = Some(Duration {
            seconds: 125,
            nanos: 500_000_000,
        });
        assert_eq!(
            fields(&item, chrono_tz::UTC),
            [
                ("send at local", "2026-11-26 09:00 Europe/Moscow".to_owned()),
                (
                    "requested at",
                    "2026-11-26T05:00:00Z (2026-11-26 08:00 Europe/Moscow)".to_owned()
                ),
                ("delivery window", "BUSINESS_HOURS".to_owned()),
                ("max lateness", "30m".to_owned()),
                ("on late", "CONVERT_TO_NOTE".to_owned()),
                ("late by", "2m5.500s".to_owned()),
            ]
        );
        let plain = fields(&pb::ScheduledItem::default(), chrono_tz::UTC);
        assert_eq!(plain, [("delivery window", "ANY".to_owned())]);
        // What the server returns for an item scheduled without a policy.
        let defaults = pb::ScheduledItem {
            delivery_window: pb::DeliveryWindow::Any as i32,
            on_late: pb::OnLate::Send as i32,
            ..Default::default()
        };
        assert_eq!(
            fields(&defaults, chrono_tz::UTC),
            [("delivery window", "ANY".to_owned())]
        );
    }

    #[test]
    fn durations_read_like_the_in_flag_and_json_uses_the_proto3_form() {
        let d = |seconds, nanos| Duration { seconds, nanos };
        assert_eq!(human(&d(5_400, 0)), "1h30m");
        assert_eq!(human(&d(45, 0)), "45s");
        assert_eq!(human(&d(0, 0)), "0s");
        assert_eq!(human(&d(90_061, 0)), "1d1h1m1s");
        assert_eq!(human(&d(0, 250_000_000)), "0.250s");
        assert_eq!(human(&d(-60, 0)), "-1m");
        assert_eq!(json(&d(1_800, 0)), "1800s");
        assert_eq!(json(&d(1, 500_000_000)), "1.5s");
    }

    #[test]
    fn a_local_time_in_another_shape_is_shown_as_sent() {
        let odd = pb::LocalTime {
            local_time: "2026-11-26T09:00:30".into(),
            time_zone: "Mars/Base".into(),
        };
        assert_eq!(as_given(&odd), "2026-11-26 09:00:30 Mars/Base");
        let item = pb::ScheduledItem {
            send_at_local: Some(odd),
            ..Default::default()
        };
        assert_eq!(in_item_zone(ts(T0).as_ref(), &item), None);
    }
}
