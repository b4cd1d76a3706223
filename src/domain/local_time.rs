//! Wall-clock times in a named zone, and their resolution to UTC instants.
//!
//! A caller may say "send at 09:00 in Europe/Paris" (`send_at_local`, API.md "When it goes
//! out"). This module parses that pair strictly and turns a local date-time into UTC
//! milliseconds with one fixed rule for the two places where the mapping is not one to one
//! (the rule of RFC 5545 and of JavaScript Temporal's `"compatible"` disambiguation):
//!
//! - a local time that does not exist (a spring-forward gap) moves forward by the length
//!   of the gap: 02:30 in a 02:00 -> 03:00 gap is 03:30, which is the same as reading it
//!   with the UTC offset in force just before the gap;
//! - a local time that exists twice (a fall-back overlap) is the earlier instant.
//!
//! Zone rules come from chrono-tz (the IANA database compiled in), so half-hour shifts
//! (Australia/Lord_Howe) and historical changes (Europe/Moscow 2011, 2014) are covered.
//! Nothing here reads a clock.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta};
use chrono::{LocalResult, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::{Error, Millis, Result};

/// The accepted shapes of a local time, as shown in error messages.
const LOCAL_TIME_FORMS: &str = "YYYY-MM-DDTHH:MM or YYYY-MM-DDTHH:MM:SS (no offset)";

/// A wall-clock time in an IANA zone, as a caller gave it (`send_at_local`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalTime {
    /// The wall-clock date and time; whole seconds (the parser accepts no fraction).
    pub local: NaiveDateTime,
    /// The zone the wall clock is in.
    pub zone: Tz,
}

impl LocalTime {
    /// Parses `local_time` ("YYYY-MM-DDTHH:MM" or "YYYY-MM-DDTHH:MM:SS", no offset) and
    /// `time_zone` (an IANA name such as "Europe/Paris", case-sensitive). `field` is the
    /// path of the message holding both (`send_at_local`), used to name the bad part.
    ///
    /// # Errors
    /// `InvalidArgument` naming `{field}.local_time` when it has another shape or is not a
    /// real calendar date and time, or `{field}.time_zone` when the zone is unknown.
    pub fn parse(local_time: &str, time_zone: &str, field: &str) -> Result<LocalTime> {
        let local = parse_local_date_time(local_time).ok_or_else(|| {
            Error::invalid(
                format!("{field}.local_time"),
                format!("must be {LOCAL_TIME_FORMS}, a real date and time; got {local_time:?}"),
            )
        })?;
        let zone = parse_zone(time_zone)
            .map_err(|reason| Error::invalid(format!("{field}.time_zone"), reason))?;
        Ok(LocalTime { local, zone })
    }

    /// The canonical text of the wall-clock time, "YYYY-MM-DDTHH:MM:SS".
    pub fn local_time_string(&self) -> String {
        let (d, t) = (self.local.date(), self.local.time());
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            d.year(),
            d.month(),
            d.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }

    /// The IANA name of the zone.
    pub fn zone_name(&self) -> &'static str {
        self.zone.name()
    }

    /// The UTC instant this wall-clock time stands for (see [`resolve_local`]).
    pub fn resolve(&self) -> Millis {
        resolve_local(self.local, self.zone)
    }
}

/// Parses an IANA zone name; the error is the reason, for the caller to attach a field.
pub(crate) fn parse_zone(time_zone: &str) -> std::result::Result<Tz, String> {
    if time_zone.is_empty() {
        return Err("is required (an IANA zone name such as \"Europe/Paris\")".into());
    }
    time_zone
        .parse::<Tz>()
        .map_err(|_| format!("{time_zone:?} is not a known IANA time zone"))
}

/// The UTC instant of the wall-clock time `local` in `zone`.
///
/// - In a spring-forward gap the time moves forward by the length of the gap (it is read
///   with the offset in force just before the gap): 02:30 in a 02:00 -> 03:00 gap is the
///   instant whose wall-clock time is 03:30.
/// - In a fall-back overlap it is the earlier of the two instants.
///
/// The offset "just before the gap" is the offset one day before, as Temporal does; two
/// transitions within a day of each other (never seen in practice) could blur that.
pub fn resolve_local(local: NaiveDateTime, zone: Tz) -> Millis {
    let as_utc = local.and_utc().timestamp_millis();
    match zone.offset_from_local_datetime(&local) {
        LocalResult::Single(offset) => as_utc - offset_millis(offset.fix()),
        LocalResult::Ambiguous(a, b) => {
            (as_utc - offset_millis(a.fix())).min(as_utc - offset_millis(b.fix()))
        }
        LocalResult::None => {
            let day_before = local
                .checked_sub_signed(TimeDelta::days(1))
                .unwrap_or(local);
            let before = zone.offset_from_utc_datetime(&day_before).fix();
            as_utc - offset_millis(before)
        }
    }
}

/// The wall-clock time in `zone` at the instant `t`.
///
/// Instants beyond the range chrono can represent (about 262,000 years either side of
/// 1970) are clamped to it.
pub fn local_of(t: Millis, zone: Tz) -> NaiveDateTime {
    // One day inside chrono's range, so adding any UTC offset stays representable.
    let min = DateTime::<Utc>::MIN_UTC.timestamp_millis() + 86_400_000;
    let max = DateTime::<Utc>::MAX_UTC.timestamp_millis() - 86_400_000;
    let utc = DateTime::from_timestamp_millis(t.clamp(min, max)).unwrap_or_default();
    utc.with_timezone(&zone).naive_local()
}

fn offset_millis(offset: chrono::FixedOffset) -> Millis {
    Millis::from(offset.local_minus_utc()) * 1000
}

/// Parses exactly "YYYY-MM-DDTHH:MM" or "YYYY-MM-DDTHH:MM:SS" into a real date and time.
fn parse_local_date_time(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if !(b.len() == 16 || b.len() == 19) || b.get(10) != Some(&b'T') {
        return None;
    }
    let date = parse_date(s.get(..10)?)?;
    let hour = two_digits(b, 11)?;
    let minute = (b.get(13) == Some(&b':')).then(|| two_digits(b, 14))??;
    let second = if b.len() == 19 {
        (b.get(16) == Some(&b':')).then(|| two_digits(b, 17))??
    } else {
        0
    };
    Some(date.and_time(NaiveTime::from_hms_opt(hour, minute, second)?))
}

/// Parses exactly "YYYY-MM-DD" into a real calendar date.
pub(crate) fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = two_digits(b, 0)? * 100 + two_digits(b, 2)?;
    let year = i32::try_from(year).ok()?;
    NaiveDate::from_ymd_opt(year, two_digits(b, 5)?, two_digits(b, 8)?)
}

/// The number written by the two ASCII digits at `at`, if both are digits.
pub(crate) fn two_digits(b: &[u8], at: usize) -> Option<u32> {
    match (b.get(at), b.get(at + 1)) {
        (Some(h @ b'0'..=b'9'), Some(l @ b'0'..=b'9')) => {
            Some(u32::from(h - b'0') * 10 + u32::from(l - b'0'))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        parse_local_date_time(s).expect("test times are well formed")
    }

    fn utc(s: &str) -> Millis {
        at(s).and_utc().timestamp_millis()
    }

    fn zone(name: &str) -> Tz {
        name.parse().expect("test zones exist")
    }

    #[test]
    fn local_times_resolve_with_gaps_moved_forward_and_overlaps_taking_the_earlier_instant() {
        #[rustfmt::skip]
        let cases = [
            // zone, local time, UTC, why
            ("America/New_York", "2026-07-01T09:00", "2026-07-01T13:00", "summer, EDT"),
            ("America/New_York", "2026-01-15T09:00", "2026-01-15T14:00", "winter, EST"),
            ("America/New_York", "2026-03-08T01:59", "2026-03-08T06:59", "just before gap"),
            ("America/New_York", "2026-03-08T02:00", "2026-03-08T07:00", "gap start"),
            ("America/New_York", "2026-03-08T02:30", "2026-03-08T07:30", "gap: 03:30 EDT"),
            ("America/New_York", "2026-03-08T03:00", "2026-03-08T07:00", "gap end"),
            ("America/New_York", "2026-11-01T01:30", "2026-11-01T05:30", "overlap: EDT"),
            ("America/New_York", "2026-11-01T02:00", "2026-11-01T07:00", "after overlap"),
            ("Europe/Moscow", "2011-03-27T02:30", "2011-03-26T23:30", "gap +3 -> +4"),
            ("Europe/Moscow", "2011-03-27T03:00", "2011-03-26T23:00", "gap end"),
            ("Europe/Moscow", "2014-10-26T01:30", "2014-10-25T21:30", "overlap: +4"),
            ("Europe/Moscow", "2014-10-26T02:00", "2014-10-25T23:00", "after: +3"),
            ("Europe/Moscow", "2012-06-01T12:00", "2012-06-01T08:00", "permanent +4"),
            ("Australia/Lord_Howe", "2026-10-04T02:15", "2026-10-03T15:45", "30 min gap"),
            ("Australia/Lord_Howe", "2026-10-04T02:30", "2026-10-03T15:30", "gap end"),
            ("Australia/Lord_Howe", "2026-04-05T01:45", "2026-04-04T14:45", "overlap: +11"),
            ("Australia/Lord_Howe", "2026-04-05T02:00", "2026-04-04T15:30", "after: +10:30"),
            ("Pacific/Apia", "2011-12-30T09:00", "2011-12-30T19:00", "a skipped day, -10"),
            ("Asia/Kolkata", "2026-01-01T09:00:30", "2026-01-01T03:30:30", "seconds kept"),
            ("UTC", "2026-01-01T00:00", "2026-01-01T00:00", "UTC"),
        ];
        for (z, local, expected, why) in cases {
            let got = resolve_local(at(local), zone(z));
            assert_eq!(got, utc(expected), "{z} {local} ({why})");
        }
    }

    #[test]
    fn a_time_in_a_gap_reads_back_as_the_time_plus_the_gap() {
        #[rustfmt::skip]
        let cases = [
            ("America/New_York", "2026-03-08T02:30", "2026-03-08T03:30:00"),
            ("Europe/Moscow", "2011-03-27T02:30", "2011-03-27T03:30:00"),
            ("Australia/Lord_Howe", "2026-10-04T02:15", "2026-10-04T02:45:00"),
            ("Pacific/Apia", "2011-12-30T09:00", "2011-12-31T09:00:00"),
        ];
        for (z, local, read_back) in cases {
            let t = resolve_local(at(local), zone(z));
            assert_eq!(local_of(t, zone(z)), at(read_back), "{z} {local}");
        }
    }

    #[test]
    fn an_ordinary_local_time_round_trips_through_its_instant() {
        for z in [
            "America/New_York",
            "Europe/Moscow",
            "Australia/Lord_Howe",
            "Asia/Kathmandu",
        ] {
            for local in [
                "2026-01-15T09:05:07",
                "2026-07-15T23:59:59",
                "2000-02-29T00:00",
            ] {
                let t = resolve_local(at(local), zone(z));
                assert_eq!(local_of(t, zone(z)), at(local), "{z} {local}");
            }
        }
    }

    #[test]
    fn instants_beyond_chronos_range_are_clamped_rather_than_panicking() {
        let far = local_of(Millis::MAX, zone("Pacific/Kiritimati"));
        assert!(far.year() > 200_000);
        let early = local_of(Millis::MIN, zone("America/Adak"));
        assert!(early.year() < -200_000);
    }

    #[test]
    fn parse_accepts_minutes_or_seconds_and_prints_the_canonical_form() {
        let a = LocalTime::parse("2026-03-08T02:30", "America/New_York", "send_at_local")
            .expect("valid");
        assert_eq!(a.local_time_string(), "2026-03-08T02:30:00");
        assert_eq!(a.zone_name(), "America/New_York");
        assert_eq!(a.resolve(), utc("2026-03-08T07:30"));
        let b =
            LocalTime::parse("2026-12-31T23:59:59", "Asia/Tokyo", "send_at_local").expect("valid");
        assert_eq!(b.local_time_string(), "2026-12-31T23:59:59");
        assert_eq!(b.zone, chrono_tz::Asia::Tokyo);
    }

    #[test]
    fn parse_names_the_bad_part_of_a_local_time() {
        let bad_times = [
            "2026-13-01T00:00",
            "2026-02-30T09:00",
            "2026-01-01 09:00",
            "2026-01-01T09:00+03:00",
            "2026-01-01T09:00Z",
            "2026-01-01T24:00",
            "2026-01-01T23:59:60",
            "2026-01-01T9:00",
            "2026-1-01T09:00",
            "2026-01-01t09:00",
            "2026-01-01T09:00:00.5",
            "+2026-01-01T09:00",
            "2026-01-01",
            "",
            "2026-01-01T09:0٠",
        ];
        for s in bad_times {
            let err = LocalTime::parse(s, "UTC", "send_at_local").expect_err(s);
            match err {
                Error::InvalidArgument { field, reason } => {
                    assert_eq!(field, "send_at_local.local_time", "{s}");
                    assert!(reason.contains("YYYY-MM-DDTHH:MM"), "{s}: {reason}");
                }
                other => panic!("{s}: {other:?}"),
            }
        }
        for z in ["Mars/Base", "", "america/new_york", "EST+5"] {
            let err =
                LocalTime::parse("2026-01-01T09:00", z, "entries[2].send_at_local").expect_err(z);
            assert!(
                matches!(&err, Error::InvalidArgument { field, .. }
                    if field == "entries[2].send_at_local.time_zone"),
                "{z}: {err:?}"
            );
        }
    }
}
