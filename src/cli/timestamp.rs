//! Conversion between chrono's `DateTime<Utc>` and protobuf `Timestamp`, and how the
//! command line shows an instant.

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use prost_types::Timestamp;

/// The wire form of `t`.
pub fn to_pb(t: DateTime<Utc>) -> Timestamp {
    // `timestamp_subsec_nanos` is below 2e9 (leap seconds included), so it fits an i32.
    let nanos = i32::try_from(t.timestamp_subsec_nanos().min(999_999_999)).unwrap_or(0);
    Timestamp {
        seconds: t.timestamp(),
        nanos,
    }
}

/// The instant of a wire timestamp; `None` when it is out of range or malformed.
pub fn from_pb(t: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok()?;
    DateTime::from_timestamp(t.seconds, nanos)
}

/// RFC 3339 in UTC with a `Z`, sub-seconds only when present: the `--json` form.
pub fn rfc3339_utc(t: &Timestamp) -> Option<String> {
    from_pb(t).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// RFC 3339 to the second in the display zone (`Z` when that is UTC): the table form.
/// `-` when absent, `?` when malformed.
pub fn display(t: Option<&Timestamp>, tz: Tz) -> String {
    match t {
        None => "-".to_owned(),
        Some(t) => match from_pb(t) {
            Some(t) => t
                .with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
            None => "?".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_survives_the_round_trip_through_the_wire_form() {
        let t = DateTime::from_timestamp(1_795_500_000, 123_456_789).expect("valid instant");
        assert_eq!(from_pb(&to_pb(t)), Some(t));
    }

    #[test]
    fn times_show_in_the_display_zone_and_json_uses_utc() {
        let ts = Timestamp {
            seconds: 1_795_492_800, // 2026-11-24T04:00:00Z
            nanos: 0,
        };
        assert_eq!(display(Some(&ts), chrono_tz::UTC), "2026-11-24T04:00:00Z");
        assert_eq!(
            display(Some(&ts), chrono_tz::Europe::Moscow),
            "2026-11-24T07:00:00+03:00"
        );
        assert_eq!(display(None, chrono_tz::UTC), "-");
        assert_eq!(rfc3339_utc(&ts).as_deref(), Some("2026-11-24T04:00:00Z"));
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(display(Some(&bad), chrono_tz::UTC), "?");
    }
}
