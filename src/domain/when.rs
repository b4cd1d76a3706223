//! Human time input: "tomorrow 09:00", "in 30 minutes" (`30m`), "next business morning".
//!
//! The one place in sendlater that understands human time, shared by the command line
//! (`--at WHEN`, `--in DURATION`) and the staff console (its "when" field). What it
//! returns is always a UTC instant or a wall-clock time in a named zone; the rest of
//! the program and the wire speak UTC only. Everything here is pure: `now` and the
//! user's time zone are arguments, so tests fix them, and no clock is read.
//!
//! "Next business morning" depends on the account's business hours, which only the
//! caller has: [`is_next_business_morning`] recognises the words and the caller asks
//! [`BusinessHours::next_morning`](super::BusinessHours::next_morning) for the instant.
//!
//! # `--at` forms ([`parse_when`])
//! Words are case-insensitive; a time is `H:MM` or `HH:MM[:SS]` (24-hour clock).
//!
//! | input | meaning |
//! |---|---|
//! | `2026-11-26T09:00:00+03:00`, `2026-11-26T06:00:00Z` | RFC 3339: that instant (`--tz` is not used) |
//! | `2026-11-26 09:00`, `2026-11-26T09:00:30` | that wall-clock time in `--tz` |
//! | `2026-11-26` | 09:00 that day in `--tz` |
//! | `today 18:30`, `tomorrow 09:00`, `tomorrow` | that day in `--tz`, at 09:00 when no time is given |
//! | `next monday`, `next mon 10:00` | the first Monday strictly after today in `--tz`, at 09:00 by default |
//! | `09:00` | today at 09:00 in `--tz`, or tomorrow when today's 09:00 is not later than `now` |
//!
//! # Wall-clock times that do not exist, or exist twice
//! Resolved as RFC 5545 (iCalendar, section 3.3.5) and `java.time` do, never by guessing:
//! - **gap** (clocks jump forward; Europe/Berlin 2026-03-29 02:00 CET -> 03:00 CEST): the
//!   time is read with the UTC offset in effect *before* the gap, which shifts it forward
//!   by the length of the gap: `2026-03-29 02:30` is 03:30 CEST (01:30 UTC).
//! - **fold** (clocks go back; Europe/Berlin 2026-10-25 03:00 CEST -> 02:00 CET): the
//!   earliest of the two instants: `2026-10-25 02:30` is 02:30 CEST (00:30 UTC).
//!
//! # `--in` forms ([`parse_duration`], [`parse_in`])
//! One or more `<number><unit>` with the units `s`, `m`, `h`, `d` (24 hours) and `w`
//! (7 days): `45s`, `30m`, `2h`, `1d`, `1h30m`. A `d` is 24 hours of real time, not a
//! calendar day: across a DST change `--in 1d` lands at another wall-clock hour; use
//! `--at "tomorrow 09:00"` for "the same time tomorrow".

use chrono::{
    DateTime, Datelike, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// The `--at` forms, quoted in every error so the user sees what would have worked.
pub const AT_FORMS: &str = "accepted: RFC 3339 (2026-11-26T09:00:00+03:00), \
     \"2026-11-26 09:00\", \"2026-11-26\", \"today 18:30\", \"tomorrow [09:00]\", \
     \"next monday [10:00]\" or a time of day \"09:00\" (today, or tomorrow if passed)";

/// The `--in` forms, quoted in every error.
pub const IN_FORMS: &str =
    "accepted: one or more <number><unit> with units s, m, h, d, w, e.g. 45s, 30m, 2h, 1d, 1h30m";

/// When a day is named without a time of day, this is the time.
pub const DEFAULT_TIME: NaiveTime = match NaiveTime::from_hms_opt(9, 0, 0) {
    Some(t) => t,
    None => panic!("09:00:00 is a valid time of day"),
};

/// How far back [`resolve_local`] looks for the wall-clock time just before a DST gap.
/// The longest gap on record is a whole day (Samoa, 2011-12-30), so two days is ample.
const MAX_GAP_MINUTES: i64 = 2 * 24 * 60;

/// Why a `--at` or `--in` value was not understood. The message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhenError {
    /// Not one of the `--at` forms.
    #[error("cannot read {input:?} as a time; {forms}", forms = AT_FORMS)]
    Time { input: String },
    /// Not one of the `--in` forms.
    #[error("cannot read {input:?} as a duration; {forms}", forms = IN_FORMS)]
    Duration { input: String },
    /// Understood, but outside what a timestamp can hold.
    #[error("{input:?} is out of range")]
    OutOfRange { input: String },
}

/// What a `--at` value names: an instant (RFC 3339 with an offset), or a wall-clock time
/// in the user's zone (every other form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// RFC 3339 with an offset or `Z`: that instant, whatever the zone.
    Instant(DateTime<Utc>),
    /// A wall-clock date and time (whole seconds) in the zone given to [`parse_when_local`];
    /// relative forms (`tomorrow`, `next monday`, `09:00`) are already turned into a date.
    Local(NaiveDateTime),
}

/// Reads a `--at` value as a UTC instant; naive wall-clock times are in `tz`.
///
/// See the module documentation for the forms and for how DST gaps and folds resolve.
///
/// # Errors
/// [`WhenError::Time`] naming the accepted forms when `input` is none of them;
/// [`WhenError::OutOfRange`] when the result does not fit a timestamp.
pub fn parse_when(input: &str, now: DateTime<Utc>, tz: Tz) -> Result<DateTime<Utc>, WhenError> {
    match parse_when_local(input, now, tz)? {
        When::Instant(instant) => Ok(instant),
        When::Local(local) => resolve_local(tz, local).ok_or_else(|| WhenError::OutOfRange {
            input: input.to_owned(),
        }),
    }
}

/// Reads a `--at` value without resolving a wall-clock time: RFC 3339 gives
/// [`When::Instant`], every other form the wall-clock time it names in `tz` (days named in
/// words are dates in `tz` at `now`; a bare time of day is today's when that is later
/// than `now`, else tomorrow's). [`parse_when`] is this plus [`resolve_local`].
///
/// # Errors
/// As [`parse_when`].
pub fn parse_when_local(input: &str, now: DateTime<Utc>, tz: Tz) -> Result<When, WhenError> {
    let unknown = || WhenError::Time {
        input: input.to_owned(),
    };
    let out_of_range = || WhenError::OutOfRange {
        input: input.to_owned(),
    };
    let trimmed = input.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(When::Instant(instant.with_timezone(&Utc)));
    }
    let lower = trimmed.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let today = now.with_timezone(&tz).date_naive();
    let tomorrow = today.succ_opt().ok_or_else(out_of_range)?;

    let (date, time) = match words.as_slice() {
        ["today", rest @ ..] => (today, optional_time(rest).ok_or_else(unknown)?),
        ["tomorrow", rest @ ..] => (tomorrow, optional_time(rest).ok_or_else(unknown)?),
        ["next", day, rest @ ..] => {
            let weekday = parse_weekday(day).ok_or_else(unknown)?;
            let date = next_weekday(today, weekday).ok_or_else(out_of_range)?;
            (date, optional_time(rest).ok_or_else(unknown)?)
        }
        [date, time] => (
            parse_date(date).ok_or_else(unknown)?,
            parse_time(time).ok_or_else(unknown)?,
        ),
        [word] => {
            if let Some((date, time)) = word.split_once('t') {
                (
                    parse_date(date).ok_or_else(unknown)?,
                    parse_time(time).ok_or_else(unknown)?,
                )
            } else if let Some(date) = parse_date(word) {
                (date, DEFAULT_TIME)
            } else {
                // A bare time of day: the next time the clock shows it.
                let time = parse_time(word).ok_or_else(unknown)?;
                let candidate = resolve_local(tz, today.and_time(time)).ok_or_else(out_of_range)?;
                let date = if candidate > now { today } else { tomorrow };
                (date, time)
            }
        }
        _ => return Err(unknown()),
    };
    Ok(When::Local(date.and_time(time)))
}

/// Reads a `--in` value: one or more `<number><unit>`, units `s m h d w`.
///
/// # Errors
/// [`WhenError::Duration`] naming the accepted forms for anything else, including a
/// number without a unit (`30` could mean seconds or minutes) or a total that overflows.
pub fn parse_duration(input: &str) -> Result<TimeDelta, WhenError> {
    let error = || WhenError::Duration {
        input: input.to_owned(),
    };
    let mut total_secs: i64 = 0;
    let mut number: Option<i64> = None;
    let mut any_part = false;
    for c in input.trim().chars().filter(|c| !c.is_whitespace()) {
        if let Some(digit) = c.to_digit(10) {
            let so_far = number.unwrap_or(0);
            number = Some(
                so_far
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(i64::from(digit)))
                    .ok_or_else(error)?,
            );
            continue;
        }
        let unit_secs = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(error()),
        };
        let part = number
            .take()
            .and_then(|n| n.checked_mul(unit_secs))
            .ok_or_else(error)?;
        total_secs = total_secs.checked_add(part).ok_or_else(error)?;
        any_part = true;
    }
    if number.is_some() || !any_part {
        return Err(error());
    }
    TimeDelta::try_seconds(total_secs).ok_or_else(error)
}

/// `now` plus a `--in` duration.
///
/// # Errors
/// As [`parse_duration`]; [`WhenError::OutOfRange`] when the sum overflows.
pub fn parse_in(input: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, WhenError> {
    let delta = parse_duration(input)?;
    now.checked_add_signed(delta)
        .ok_or_else(|| WhenError::OutOfRange {
            input: input.to_owned(),
        })
}

/// The UTC instant of wall-clock time `local` in `tz`: a fold gives the earliest
/// instant, a gap reads `local` with the offset in effect before the gap (module docs).
/// `None` only when the result is out of range.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        MappedLocalTime::Single(t) => Some(t.with_timezone(&Utc)),
        MappedLocalTime::Ambiguous(earliest, _latest) => Some(earliest.with_timezone(&Utc)),
        MappedLocalTime::None => {
            // Walk back to the last wall-clock minute before the gap; its offset is the
            // one "before the gap".
            let mut probe = local;
            for _ in 0..MAX_GAP_MINUTES {
                probe = probe.checked_sub_signed(TimeDelta::minutes(1))?;
                if let Some(before) = tz.from_local_datetime(&probe).latest() {
                    let offset = i64::from(before.offset().fix().local_minus_utc());
                    let utc = local.checked_sub_signed(TimeDelta::try_seconds(offset)?)?;
                    return Some(utc.and_utc());
                }
            }
            None
        }
    }
}

/// Whether a "when" value asks for the next business morning (any case and spacing).
pub fn is_next_business_morning(at: &str) -> bool {
    let words: Vec<String> = at.split_whitespace().map(str::to_ascii_lowercase).collect();
    words == ["next", "business", "morning"]
}

/// No words: the default time; one word: a time of day; more: not understood.
fn optional_time(rest: &[&str]) -> Option<NaiveTime> {
    match rest {
        [] => Some(DEFAULT_TIME),
        [time] => parse_time(time),
        _ => None,
    }
}

/// `H:MM`, `HH:MM` or `HH:MM:SS`, 24-hour clock.
fn parse_time(s: &str) -> Option<NaiveTime> {
    let parts: Vec<&str> = s.split(':').collect();
    let number = |p: &str, max_len: usize| -> Option<u32> {
        if p.is_empty() || p.len() > max_len || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    match parts.as_slice() {
        [h, m] if m.len() == 2 => NaiveTime::from_hms_opt(number(h, 2)?, number(m, 2)?, 0),
        [h, m, s] if m.len() == 2 && s.len() == 2 => {
            NaiveTime::from_hms_opt(number(h, 2)?, number(m, 2)?, number(s, 2)?)
        }
        _ => None,
    }
}

/// `YYYY-MM-DD`.
fn parse_date(s: &str) -> Option<NaiveDate> {
    if s.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// English weekday names and their three-letter abbreviations, lower case.
fn parse_weekday(s: &str) -> Option<Weekday> {
    let day = match s {
        "monday" | "mon" => Weekday::Mon,
        "tuesday" | "tue" | "tues" => Weekday::Tue,
        "wednesday" | "wed" => Weekday::Wed,
        "thursday" | "thu" | "thur" | "thurs" => Weekday::Thu,
        "friday" | "fri" => Weekday::Fri,
        "saturday" | "sat" => Weekday::Sat,
        "sunday" | "sun" => Weekday::Sun,
        _ => return None,
    };
    Some(day)
}

/// The first `weekday` strictly after `today` (a week later when today is that day).
fn next_weekday(today: NaiveDate, weekday: Weekday) -> Option<NaiveDate> {
    let ahead = (7 + weekday.num_days_from_monday() - today.weekday().num_days_from_monday()) % 7;
    let ahead = if ahead == 0 { 7 } else { ahead };
    today.checked_add_days(chrono::Days::new(u64::from(ahead)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test timestamps are valid RFC 3339")
            .with_timezone(&Utc)
    }

    const BERLIN: Tz = chrono_tz::Europe::Berlin;
    const MOSCOW: Tz = chrono_tz::Europe::Moscow;
    const UTC: Tz = chrono_tz::UTC;

    #[test]
    fn every_accepted_at_form_gives_the_documented_instant() {
        // Wednesday 2026-11-25, 10:00 UTC = 13:00 in Moscow (fixed +03:00, no DST).
        let now = utc("2026-11-25T10:00:00Z");
        let table: &[(&str, Tz, &str)] = &[
            // RFC 3339 ignores --tz.
            ("2026-11-26T09:00:00+03:00", BERLIN, "2026-11-26T06:00:00Z"),
            ("2026-11-26T06:00:00Z", MOSCOW, "2026-11-26T06:00:00Z"),
            (
                "  2026-11-26T06:00:00.250Z ",
                UTC,
                "2026-11-26T06:00:00.250Z",
            ),
            // Naive date-times are in --tz; UTC by default.
            ("2026-11-26 09:00", UTC, "2026-11-26T09:00:00Z"),
            ("2026-11-26 09:00", MOSCOW, "2026-11-26T06:00:00Z"),
            ("2026-11-26T09:00:30", MOSCOW, "2026-11-26T06:00:30Z"),
            ("2026-11-26 09:00", BERLIN, "2026-11-26T08:00:00Z"),
            ("2026-11-26", MOSCOW, "2026-11-26T06:00:00Z"),
            // Days named in words, in --tz.
            ("tomorrow 09:00", MOSCOW, "2026-11-26T06:00:00Z"),
            ("Tomorrow", MOSCOW, "2026-11-26T06:00:00Z"),
            ("today 18:30", MOSCOW, "2026-11-25T15:30:00Z"),
            ("TODAY 9:05", UTC, "2026-11-25T09:05:00Z"),
            ("next monday", MOSCOW, "2026-11-30T06:00:00Z"),
            ("next mon 10:00", UTC, "2026-11-30T10:00:00Z"),
            // Today is Wednesday: "next wednesday" is a week away, not today.
            ("next wednesday 23:00", UTC, "2026-12-02T23:00:00Z"),
            ("next thursday", UTC, "2026-11-26T09:00:00Z"),
            // A bare time: today if still ahead, else tomorrow.
            ("18:30", MOSCOW, "2026-11-25T15:30:00Z"),
            ("09:00", MOSCOW, "2026-11-26T06:00:00Z"),
            ("13:00", MOSCOW, "2026-11-26T10:00:00Z"), // exactly now: already passed
            ("13:00:01", MOSCOW, "2026-11-25T10:00:01Z"),
        ];
        for (input, tz, want) in table {
            let got = parse_when(input, now, *tz);
            assert_eq!(got, Ok(utc(want)), "parse_when({input:?}, tz = {tz})");
        }
    }

    #[test]
    fn only_rfc3339_is_an_instant_every_other_form_a_wall_clock_time() {
        let now = utc("2026-11-25T10:00:00Z");
        let wall = |s: &str| {
            When::Local(NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").expect("valid"))
        };
        let table: &[(&str, When)] = &[
            (
                "2026-11-26T09:00:00+03:00",
                When::Instant(utc("2026-11-26T06:00:00Z")),
            ),
            ("2026-11-26 09:00", wall("2026-11-26T09:00:00")),
            ("tomorrow", wall("2026-11-26T09:00:00")),
            ("next monday 10:00", wall("2026-11-30T10:00:00")),
            // 13:00 in Moscow now: 09:00 has passed today, 18:30 has not.
            ("09:00", wall("2026-11-26T09:00:00")),
            ("18:30", wall("2026-11-25T18:30:00")),
        ];
        for (input, want) in table {
            assert_eq!(parse_when_local(input, now, MOSCOW), Ok(*want), "{input:?}");
        }
        // A time in a DST gap stays as typed: whoever resolves it moves it forward.
        assert_eq!(
            parse_when_local("2027-03-28 02:30", now, BERLIN),
            Ok(wall("2027-03-28T02:30:00"))
        );
    }

    #[test]
    fn today_and_tomorrow_are_the_dates_in_the_given_zone_not_in_utc() {
        // 22:30 UTC on the 25th is already 01:30 on the 26th in Moscow.
        let now = utc("2026-11-25T22:30:00Z");
        let table: &[(&str, Tz, &str)] = &[
            ("today 18:30", MOSCOW, "2026-11-26T15:30:00Z"),
            ("tomorrow", MOSCOW, "2026-11-27T06:00:00Z"),
            ("tomorrow", UTC, "2026-11-26T09:00:00Z"),
            ("09:00", MOSCOW, "2026-11-26T06:00:00Z"),
        ];
        for (input, tz, want) in table {
            assert_eq!(
                parse_when(input, now, *tz),
                Ok(utc(want)),
                "{input:?} in {tz}"
            );
        }
    }

    #[test]
    fn berlin_dst_gap_shifts_forward_and_fold_takes_the_earliest_instant() {
        // Saturday before spring-forward (2026-03-29 02:00 CET -> 03:00 CEST).
        let now = utc("2026-03-28T12:00:00Z");
        let table: &[(&str, &str)] = &[
            // In the gap: read with the offset before it (+01:00) = 03:30 CEST.
            ("2026-03-29 02:30", "2026-03-29T01:30:00Z"),
            ("2026-03-29 02:00", "2026-03-29T01:00:00Z"),
            ("tomorrow 02:30", "2026-03-29T01:30:00Z"),
            // Either side of the gap is unambiguous.
            ("2026-03-29 01:59", "2026-03-29T00:59:00Z"),
            ("2026-03-29 03:00", "2026-03-29T01:00:00Z"),
            // "tomorrow 09:00" is 09:00 CEST although today is CET.
            ("tomorrow 09:00", "2026-03-29T07:00:00Z"),
            ("today 09:00", "2026-03-28T08:00:00Z"),
            // Fall back (2026-10-25 03:00 CEST -> 02:00 CET): 02:30 happens twice;
            // the earliest is 02:30 CEST = 00:30 UTC.
            ("2026-10-25 02:30", "2026-10-25T00:30:00Z"),
            ("2026-10-25 03:00", "2026-10-25T02:00:00Z"),
            ("2026-10-25 01:59", "2026-10-24T23:59:00Z"),
        ];
        for (input, want) in table {
            assert_eq!(
                parse_when(input, now, BERLIN),
                Ok(utc(want)),
                "{input:?} in Europe/Berlin"
            );
        }
    }

    #[test]
    fn a_bare_time_inside_tomorrows_gap_still_shifts_forward() {
        // 03:00 CET on the 28th has passed, so "02:30" means the 29th, inside the gap.
        let now = utc("2026-03-28T02:00:00Z");
        assert_eq!(
            parse_when("02:30", now, BERLIN),
            Ok(utc("2026-03-29T01:30:00Z"))
        );
    }

    #[test]
    fn unreadable_times_are_refused_with_the_accepted_forms() {
        let now = utc("2026-11-25T10:00:00Z");
        for input in [
            "",
            "soon",
            "25:00",
            "9",
            "9:5",
            "09:00:0",
            "2026-13-01",
            "2026-02-30 09:00",
            "next",
            "next funday",
            "tomorrow 09:00 please",
            "today at 9",
            "2026-11-26 09:00 +03:00",
            "in 30m",
        ] {
            let err = parse_when(input, now, UTC).expect_err(input);
            assert_eq!(
                err,
                WhenError::Time {
                    input: input.to_owned()
                }
            );
            let message = err.to_string();
            assert!(message.contains("tomorrow"), "{message}");
            assert!(message.contains("RFC 3339"), "{message}");
        }
    }

    #[test]
    fn durations_add_up_their_parts() {
        let table: &[(&str, i64)] = &[
            ("45s", 45),
            ("30m", 30 * 60),
            ("2h", 2 * 3600),
            ("1d", 86_400),
            ("1w", 7 * 86_400),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("1H30M", 5400),
            ("0s", 0),
            ("90m", 5400),
            ("1d2h3m4s", 86_400 + 2 * 3600 + 3 * 60 + 4),
        ];
        for (input, secs) in table {
            assert_eq!(
                parse_duration(input),
                Ok(TimeDelta::seconds(*secs)),
                "{input:?}"
            );
        }
    }

    #[test]
    fn unreadable_durations_are_refused_with_the_accepted_forms() {
        for input in [
            "",
            "30",
            "m",
            "1h30",
            "-5m",
            "1.5h",
            "2y",
            "tomorrow",
            "99999999999999999999s",
            "9223372036854775807w",
        ] {
            let err = parse_duration(input).expect_err(input);
            assert_eq!(
                err,
                WhenError::Duration {
                    input: input.to_owned()
                }
            );
            assert!(err.to_string().contains("1h30m"), "{err}");
        }
    }

    #[test]
    fn next_business_morning_is_recognised_in_any_case_and_spacing() {
        assert!(is_next_business_morning("next business morning"));
        assert!(is_next_business_morning("  Next  Business\tMORNING "));
        assert!(!is_next_business_morning("next monday"));
        assert!(!is_next_business_morning("next business morning 10:00"));
    }

    #[test]
    fn in_is_counted_from_now_in_real_time() {
        let now = utc("2026-03-28T12:00:00Z");
        assert_eq!(parse_in("30m", now), Ok(utc("2026-03-28T12:30:00Z")));
        // Across Berlin's spring-forward: 24 real hours, not "same time tomorrow".
        assert_eq!(parse_in("1d", now), Ok(utc("2026-03-29T12:00:00Z")));
    }
}
