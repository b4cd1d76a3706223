//! Business hours of an account, and the search for the next time it is open.
//!
//! An account's hours are a zone, a week of opening intervals (several a day allowed) and a
//! set of holiday dates (API.md "When it goes out", `SetBusinessHours`). An item scheduled
//! with `DELIVERY_WINDOW_BUSINESS_HOURS` whose send time falls outside them moves to
//! [`BusinessHours::next_opening`].
//!
//! The window of a day `d` is, for each interval, the half-open range of instants
//! `[resolve_local(d open), resolve_local(d close))`: the open and close wall-clock times are
//! resolved with the DST rule of [`resolve_local`] (a time in a spring-forward gap moves
//! forward by the gap, a time in a fall-back overlap is the earlier instant). So an opening
//! at 02:30 on a day whose clocks jump 02:00 -> 03:00 is at 03:30, and an interval
//! 00:00-03:00 on a fall-back day lasts four real hours, the repeated hour included. Away
//! from clock changes this is simply "open <= wall-clock time < close on a day that is not a
//! holiday". A holiday closes the windows of that date (a window belongs to the date whose
//! intervals define it, even where DST pushes part of it past midnight). A date a zone
//! skipped altogether (Pacific/Apia, 2011-12-30) has its hours moved forward by the gap,
//! onto the next wall-clock day, like any other time in a gap.
//!
//! The search walks dates from two before the requested instant's local date (a window of
//! an earlier date can reach past midnight) to at most ten years after it, resolving each
//! date's intervals; it never reads a clock.

use std::collections::BTreeSet;

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use chrono_tz::Tz;

use super::local_time::{parse_date, parse_zone, two_digits};
use super::{local_of, resolve_local, Error, Millis, Result};

/// Minutes in a day; an interval's `close` may equal it (24:00, the end of the day).
pub const MINUTES_PER_DAY: u16 = 1440;

/// How many dates past the requested one the search looks at before giving up (ten years).
const MAX_SEARCH_DAYS: i64 = 3653;

/// Intervals one SetBusinessHours request may give (before merging).
pub const MAX_INTERVALS: usize = 100;

/// Holidays one SetBusinessHours request may give.
pub const MAX_HOLIDAYS: usize = 1000;

/// Milliseconds in a day (for bounding a search by an instant).
const DAY_MS: Millis = 86_400_000;

/// How many dates after the first with a candidate are still searched: DST can move a later
/// date's window start before an earlier date's (a gap shifts a time by up to a day).
const LOOK_AHEAD_DAYS: i64 = 2;

/// First line of [`BusinessHours::encode`]'s format, naming its version.
const ENCODING_HEADER: &str = "sendlater.business_hours v1";

/// An opening interval within a day, in minutes since local midnight.
///
/// Invariant (kept by [`BusinessHours::parse`]): `open < close <= MINUTES_PER_DAY`. Minutes
/// rather than `NaiveTime` so that `close` can be 24:00 (1440) and the two compare directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    /// Opening minute, 0..=1439 (00:00 to 23:59).
    pub open: u16,
    /// Closing minute, exclusive, 1..=1440 (00:01 to 24:00).
    pub close: u16,
}

/// The validated business hours of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessHours {
    /// The zone the intervals and holidays are in.
    pub zone: Tz,
    /// Intervals of each weekday, index 0 = Monday (ISO 1) to 6 = Sunday. Each list is
    /// sorted, and its intervals neither overlap nor touch (parse merges them).
    pub days: [Vec<Interval>; 7],
    /// Dates (in `zone`) on which the account is closed all day.
    pub holidays: BTreeSet<NaiveDate>,
}

/// Business hours in the request and response shape of the API (canonical text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessHoursSpec {
    /// The IANA zone name.
    pub time_zone: String,
    /// One entry per interval, by weekday then opening time.
    pub days: Vec<DaySpec>,
    /// "YYYY-MM-DD", ascending, without duplicates.
    pub holidays: Vec<String>,
}

/// One opening interval as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaySpec {
    /// ISO weekday, 1 = Monday to 7 = Sunday.
    pub weekday: i32,
    /// "HH:MM".
    pub open: String,
    /// "HH:MM", or "24:00" for the end of the day.
    pub close: String,
}

impl BusinessHours {
    /// Validates business hours given as (ISO weekday 1..=7, open "HH:MM", close "HH:MM" or
    /// "24:00") intervals and "YYYY-MM-DD" holidays. Overlapping or touching intervals of a
    /// day are merged; duplicate holidays collapse.
    ///
    /// # Errors
    /// `InvalidArgument` naming `time_zone`, `days` (none, or more than
    /// [`MAX_INTERVALS`], given), `days[i].weekday`, `days[i].open`, `days[i].close`
    /// (malformed, or not after open), `holidays` (more than [`MAX_HOLIDAYS`]) or
    /// `holidays[i]`.
    pub fn parse(
        time_zone: &str,
        days: &[(i32, &str, &str)],
        holidays: &[&str],
    ) -> Result<BusinessHours> {
        if days.len() > MAX_INTERVALS {
            return Err(Error::invalid(
                "days",
                format!(
                    "has {} intervals, at most {MAX_INTERVALS} allowed",
                    days.len()
                ),
            ));
        }
        if holidays.len() > MAX_HOLIDAYS {
            return Err(Error::invalid(
                "holidays",
                format!(
                    "has {} dates, at most {MAX_HOLIDAYS} allowed",
                    holidays.len()
                ),
            ));
        }
        BusinessHours::build(time_zone, days, holidays)
    }

    /// [`BusinessHours::parse`] without the caps on counts: for hours read back from
    /// storage, which may predate them.
    fn build(
        time_zone: &str,
        days: &[(i32, &str, &str)],
        holidays: &[&str],
    ) -> Result<BusinessHours> {
        let zone = parse_zone(time_zone).map_err(|reason| Error::invalid("time_zone", reason))?;
        if days.is_empty() {
            return Err(Error::invalid("days", "at least one interval is required"));
        }
        let mut week: [Vec<Interval>; 7] = Default::default();
        for (i, &(weekday, open, close)) in days.iter().enumerate() {
            let index = usize::try_from(weekday)
                .ok()
                .filter(|w| (1..=7).contains(w))
                .ok_or_else(|| {
                    Error::invalid(
                        format!("days[{i}].weekday"),
                        format!("must be 1 (Monday) to 7 (Sunday), got {weekday}"),
                    )
                })?;
            let open_min = parse_minute(open).filter(|&m| m < MINUTES_PER_DAY);
            let open_min = open_min.ok_or_else(|| {
                Error::invalid(
                    format!("days[{i}].open"),
                    format!("must be HH:MM from 00:00 to 23:59, got {open:?}"),
                )
            })?;
            let close_min = parse_minute(close).ok_or_else(|| {
                Error::invalid(
                    format!("days[{i}].close"),
                    format!("must be HH:MM from 00:00 to 24:00, got {close:?}"),
                )
            })?;
            if open_min >= close_min {
                return Err(Error::invalid(
                    format!("days[{i}].close"),
                    format!("must be after open ({open}), got {close}"),
                ));
            }
            week[index - 1].push(Interval {
                open: open_min,
                close: close_min,
            });
        }
        for day in &mut week {
            merge(day);
        }
        let holidays = holidays
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_date(s).ok_or_else(|| {
                    Error::invalid(
                        format!("holidays[{i}]"),
                        format!("must be a date YYYY-MM-DD, got {s:?}"),
                    )
                })
            })
            .collect::<Result<BTreeSet<_>>>()?;
        Ok(BusinessHours {
            zone,
            days: week,
            holidays,
        })
    }

    /// The canonical API shape: merged intervals by weekday, sorted unique holidays.
    pub fn to_spec(&self) -> BusinessHoursSpec {
        let days = (1..)
            .zip(&self.days)
            .flat_map(|(weekday, intervals)| {
                intervals.iter().map(move |iv| DaySpec {
                    weekday,
                    open: format_minute(iv.open),
                    close: format_minute(iv.close),
                })
            })
            .collect();
        BusinessHoursSpec {
            time_zone: self.zone.name().to_string(),
            days,
            holidays: self.holidays.iter().map(|d| format_date(*d)).collect(),
        }
    }

    /// A compact text form for storage, read back by [`BusinessHours::decode`]:
    ///
    /// ```text
    /// sendlater.business_hours v1
    /// zone America/New_York
    /// day 1 09:00-12:00 13:00-18:00
    /// holidays 2026-12-25 2027-01-01
    /// ```
    ///
    /// One `day` line per weekday that has intervals; the `holidays` line is always there.
    pub fn encode(&self) -> String {
        let mut out = format!("{ENCODING_HEADER}\nzone {}\n", self.zone.name());
        for (weekday, intervals) in (1..).zip(&self.days) {
            if intervals.is_empty() {
                continue;
            }
            out.push_str(&format!("day {weekday}"));
            for iv in intervals {
                let (open, close) = (format_minute(iv.open), format_minute(iv.close));
                out.push_str(&format!(" {open}-{close}"));
            }
            out.push('\n');
        }
        out.push_str("holidays");
        for day in &self.holidays {
            out.push(' ');
            out.push_str(&format_date(*day));
        }
        out.push('\n');
        out
    }

    /// Reads what [`BusinessHours::encode`] wrote, validating it as [`BusinessHours::parse`]
    /// does.
    ///
    /// # Errors
    /// `Internal` when the text is not in that format or does not validate: it came from
    /// storage, not from a caller.
    pub fn decode(text: &str) -> Result<BusinessHours> {
        let corrupt = |why: &str| Error::Internal(format!("stored business hours: {why}"));
        let mut lines = text.lines();
        if lines.next() != Some(ENCODING_HEADER) {
            return Err(corrupt("unknown format"));
        }
        let mut zone = None;
        let mut days: Vec<(i32, &str, &str)> = Vec::new();
        let mut holidays: Vec<&str> = Vec::new();
        for line in lines {
            let mut words = line.split(' ');
            match words.next() {
                Some("zone") => zone = words.next(),
                Some("day") => {
                    let weekday = words.next().and_then(|w| w.parse::<i32>().ok());
                    let weekday = weekday.ok_or_else(|| corrupt("bad weekday"))?;
                    for range in words {
                        let (open, close) = range
                            .split_once('-')
                            .ok_or_else(|| corrupt("bad interval"))?;
                        days.push((weekday, open, close));
                    }
                }
                Some("holidays") => holidays.extend(words.filter(|w| !w.is_empty())),
                Some("") => {}
                _ => return Err(corrupt("unknown line")),
            }
        }
        let zone = zone.ok_or_else(|| corrupt("no zone"))?;
        BusinessHours::build(zone, &days, &holidays).map_err(|e| corrupt(&e.to_string()))
    }

    /// Whether the instant `t` lies in one of the windows (see the module doc).
    pub fn is_open(&self, t: Millis) -> bool {
        let date = local_of(t, self.zone).date();
        // DST can move a window up to a day past its date, or its end before midnight's
        // first occurrence, so the owning date is within [date - 2, date + 1].
        (-2..=1).any(|k| {
            add_days(date, k).is_some_and(|day| self.windows(day).any(|(o, c)| o <= t && t < c))
        })
    }

    /// The earliest instant `>= t` inside a window: `t` itself when open then. `None` when
    /// no window starts within about ten years (every day a holiday, or no intervals).
    pub fn next_opening(&self, t: Millis) -> Option<Millis> {
        self.next_opening_until(t, Millis::MAX)
    }

    /// [`BusinessHours::next_opening`], but `None` when it is later than `until`; the
    /// search stops at the date of `until` (a bounded search whatever the holidays).
    pub fn next_opening_until(&self, t: Millis, until: Millis) -> Option<Millis> {
        self.earliest_until(t, until, |open, close| (close > t).then_some(open.max(t)))
            .filter(|&at| at <= until)
    }

    /// The start of the next opening strictly after `after`: the earliest window start
    /// `> after` that ends a closed period. When open at `after`, that is the start of the
    /// following opening, not `after`; a window that starts where another ends (Monday
    /// 09:00-24:00 then Tuesday 00:00-18:00) continues it and is not a start. `None` as for
    /// [`BusinessHours::next_opening`].
    pub fn next_open_start(&self, after: Millis) -> Option<Millis> {
        self.earliest(after, |open, _| {
            (open > after && !self.is_open(open - 1)).then_some(open)
        })
    }

    /// The next business morning after `after`: the first opening of a business day
    /// (a day's first window, starting a closed period) strictly after `after`. Unlike
    /// [`BusinessHours::next_open_start`], a reopening after lunch is not a morning: at
    /// 10:00 with 09:00-13:00 and 14:00-18:00 it is tomorrow's 09:00, not today's 14:00.
    pub fn next_morning(&self, after: Millis) -> Option<Millis> {
        self.earliest(after, |open, _| {
            let first_of_day = self
                .windows(local_of(open, self.zone).date())
                .next()
                .map(|(o, _)| o);
            (open > after && first_of_day == Some(open) && !self.is_open(open - 1)).then_some(open)
        })
    }

    /// The least candidate over the windows of the dates from just before `from` onwards.
    fn earliest(
        &self,
        from: Millis,
        candidate: impl Fn(Millis, Millis) -> Option<Millis>,
    ) -> Option<Millis> {
        self.earliest_until(from, Millis::MAX, candidate)
    }

    /// [`BusinessHours::earliest`] over the dates up to a day or two past `until`'s (DST
    /// moves a window by less than a day) and at most [`MAX_SEARCH_DAYS`].
    fn earliest_until(
        &self,
        from: Millis,
        until: Millis,
        candidate: impl Fn(Millis, Millis) -> Option<Millis>,
    ) -> Option<Millis> {
        let first = local_of(from, self.zone).date();
        let mut best: Option<Millis> = None;
        let span = until.saturating_sub(from).max(0) / DAY_MS;
        let mut last = MAX_SEARCH_DAYS.min(span.saturating_add(LOOK_AHEAD_DAYS));
        for k in -2..=MAX_SEARCH_DAYS {
            if k > last {
                break;
            }
            let Some(day) = add_days(first, k) else {
                continue;
            };
            for (open, close) in self.windows(day) {
                if let Some(x) = candidate(open, close) {
                    best = Some(best.map_or(x, |b| b.min(x)));
                    last = last.min(k + LOOK_AHEAD_DAYS);
                }
            }
        }
        best
    }

    /// The non-empty windows `[open, close)` of `day` as instants, in order; none on a
    /// holiday. DST can make a window empty (an opening moved past its closing by a gap).
    fn windows(&self, day: NaiveDate) -> impl Iterator<Item = (Millis, Millis)> + '_ {
        let intervals: &[Interval] = if self.holidays.contains(&day) {
            &[]
        } else {
            &self.days[day.weekday().num_days_from_monday() as usize]
        };
        intervals.iter().filter_map(move |iv| {
            let open = resolve_local(at_minute(day, iv.open)?, self.zone);
            let close = resolve_local(at_minute(day, iv.close)?, self.zone);
            (open < close).then_some((open, close))
        })
    }
}

/// Sorts intervals and merges those that overlap or touch.
fn merge(intervals: &mut Vec<Interval>) {
    intervals.sort_unstable();
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for iv in intervals.drain(..) {
        match merged.last_mut() {
            Some(last) if iv.open <= last.close => last.close = last.close.max(iv.close),
            _ => merged.push(iv),
        }
    }
    *intervals = merged;
}

/// "HH:MM" with HH 00..=23 and MM 00..=59, or "24:00", as minutes since midnight.
fn parse_minute(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    if b.len() != 5 || b[2] != b':' {
        return None;
    }
    let (h, m) = (two_digits(b, 0)?, two_digits(b, 3)?);
    let minute = match (h, m) {
        (24, 0) => MINUTES_PER_DAY,
        (0..=23, 0..=59) => u16::try_from(h * 60 + m).ok()?,
        _ => return None,
    };
    Some(minute)
}

fn format_minute(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

fn format_date(d: NaiveDate) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

fn add_days(date: NaiveDate, days: i64) -> Option<NaiveDate> {
    date.checked_add_signed(TimeDelta::days(days))
}

/// The wall-clock time `minute` minutes after the midnight starting `day` (1440 is the next
/// midnight); `None` only at the end of chrono's range.
fn at_minute(day: NaiveDate, minute: u16) -> Option<NaiveDateTime> {
    day.and_time(NaiveTime::MIN)
        .checked_add_signed(TimeDelta::minutes(i64::from(minute)))
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_next_morning_skips_a_reopening_after_lunch_and_closed_days() {
        let h = BusinessHours::parse(
            "Europe/Moscow",
            &[
                (1, "09:00", "13:00"),
                (1, "14:00", "18:00"),
                (2, "09:00", "18:00"),
            ],
            &[],
        )
        .unwrap();
        let at = |s: &str| {
            resolve_local(
                NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").unwrap(),
                h.zone,
            )
        };
        // Monday 2026-11-30 10:00: not 14:00 the same day, Tuesday 09:00.
        assert_eq!(
            h.next_morning(at("2026-11-30T10:00")),
            Some(at("2026-12-01T09:00"))
        );
        assert_eq!(
            h.next_open_start(at("2026-11-30T10:00")),
            Some(at("2026-11-30T14:00"))
        );
        // Monday 07:00: this morning. Tuesday 10:00: next Monday (closed Wed-Sun).
        assert_eq!(
            h.next_morning(at("2026-11-30T07:00")),
            Some(at("2026-11-30T09:00"))
        );
        assert_eq!(
            h.next_morning(at("2026-12-01T10:00")),
            Some(at("2026-12-07T09:00"))
        );
    }
    use super::*;
    use chrono::{Offset, TimeZone, Timelike};
    use proptest::prelude::*;

    const MINUTE: Millis = 60_000;
    const DAY: Millis = 86_400_000;

    /// UTC millis of "YYYY-MM-DDTHH:MM".
    fn utc(s: &str) -> Millis {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M")
            .expect("test times are well formed")
            .and_utc()
            .timestamp_millis()
    }

    fn hours(zone: &str, days: &[(i32, &str, &str)], holidays: &[&str]) -> BusinessHours {
        BusinessHours::parse(zone, days, holidays).expect("test hours are valid")
    }

    fn weekdays(open: &'static str, close: &'static str) -> Vec<(i32, &'static str, &'static str)> {
        (1..=5).map(|d| (d, open, close)).collect()
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("not an InvalidArgument: {other:?}"),
        }
    }

    type Days<'a> = Vec<(i32, &'a str, &'a str)>;

    #[test]
    fn parse_names_each_bad_field() {
        let ok = [(1, "09:00", "17:00")];
        #[rustfmt::skip]
        let cases: Vec<(&str, Days, Vec<&str>, &str)> = vec![
            ("Mars/Base", ok.to_vec(), vec![], "time_zone"),
            ("", ok.to_vec(), vec![], "time_zone"),
            ("UTC", vec![], vec![], "days"),
            ("UTC", vec![ok[0], (0, "09:00", "17:00")], vec![], "days[1].weekday"),
            ("UTC", vec![(8, "09:00", "17:00")], vec![], "days[0].weekday"),
            ("UTC", vec![(1, "9:00", "17:00")], vec![], "days[0].open"),
            ("UTC", vec![(1, "24:00", "24:00")], vec![], "days[0].open"),
            ("UTC", vec![(1, "09:60", "17:00")], vec![], "days[0].open"),
            ("UTC", vec![(1, "09:00:00", "17:00")], vec![], "days[0].open"),
            ("UTC", vec![(1, "09:00", "24:01")], vec![], "days[0].close"),
            ("UTC", vec![(1, "09:00", "25:00")], vec![], "days[0].close"),
            ("UTC", vec![(1, "09:00", "5pm")], vec![], "days[0].close"),
            ("UTC", vec![(1, "10:00", "10:00")], vec![], "days[0].close"),
            ("UTC", vec![ok[0], (2, "10:00", "09:00")], vec![], "days[1].close"),
            ("UTC", vec![(1, "00:00", "00:00")], vec![], "days[0].close"),
            ("UTC", ok.to_vec(), vec!["2026-12-25", "2026-02-30"], "holidays[1]"),
            ("UTC", ok.to_vec(), vec!["2026/12/25"], "holidays[0]"),
            ("UTC", ok.to_vec(), vec![""], "holidays[0]"),
        ];
        for (zone, days, holidays, field) in cases {
            let err = BusinessHours::parse(zone, &days, &holidays).expect_err(field);
            assert_eq!(field_of(err), field, "{zone} {days:?} {holidays:?}");
        }
    }

    #[test]
    fn intervals_of_a_day_are_sorted_and_overlapping_or_touching_ones_merged() {
        let h = hours(
            "Europe/Paris",
            &[
                (1, "13:00", "18:00"),
                (1, "09:00", "12:00"),
                (3, "00:00", "24:00"),
                (1, "11:30", "13:00"),
                (1, "20:00", "21:00"),
                (1, "21:00", "22:00"),
                (1, "20:30", "20:45"),
            ],
            &["2026-12-25", "2026-01-01", "2026-12-25"],
        );
        let spec = h.to_spec();
        let days: Vec<(i32, &str, &str)> = spec
            .days
            .iter()
            .map(|d| (d.weekday, d.open.as_str(), d.close.as_str()))
            .collect();
        assert_eq!(
            days,
            [
                (1, "09:00", "18:00"),
                (1, "20:00", "22:00"),
                (3, "00:00", "24:00")
            ]
        );
        assert_eq!(spec.time_zone, "Europe/Paris");
        assert_eq!(spec.holidays, ["2026-01-01", "2026-12-25"]);
    }

    #[test]
    fn decode_reads_back_what_encode_wrote() {
        let schedules = [
            hours("America/New_York", &weekdays("09:00", "18:00"), &[]),
            hours(
                "Australia/Lord_Howe",
                &[
                    (7, "00:00", "24:00"),
                    (2, "08:05", "12:00"),
                    (2, "13:00", "17:55"),
                ],
                &["2026-04-05", "2030-01-01"],
            ),
        ];
        for h in schedules {
            let text = h.encode();
            assert_eq!(BusinessHours::decode(&text), Ok(h.clone()), "{text}");
        }
        let text = hours("UTC", &[(1, "09:00", "10:00")], &["2026-01-01"]).encode();
        assert_eq!(
            text,
            "sendlater.business_hours v1\nzone UTC\nday 1 09:00-10:00\nholidays 2026-01-01\n"
        );
    }

    #[test]
    fn decode_of_anything_else_is_an_internal_error() {
        for text in [
            "",
            "zone UTC\nday 1 09:00-10:00\n",
            "sendlater.business_hours v1\nday 1 09:00-10:00\n",
            "sendlater.business_hours v1\nzone UTC\nday x 09:00-10:00\n",
            "sendlater.business_hours v1\nzone UTC\nday 1 10:00-09:00\n",
            "sendlater.business_hours v1\nzone UTC\nday 1 09:00\n",
            "sendlater.business_hours v1\nzone UTC\nweek 1 09:00-10:00\n",
            "sendlater.business_hours v1\nzone UTC\nholidays\n",
        ] {
            let err = BusinessHours::decode(text).expect_err(text);
            assert!(matches!(err, Error::Internal(_)), "{text:?}: {err:?}");
        }
    }

    #[test]
    fn next_opening_is_the_instant_itself_when_open_and_the_next_open_otherwise() {
        // UTC, weekdays 09:00-12:00 and 13:00-18:00; 2026-01-05 is a Monday, 01-06 a holiday.
        let mut days = weekdays("09:00", "12:00");
        days.extend(weekdays("13:00", "18:00"));
        let h = hours("UTC", &days, &["2026-01-06"]);
        #[rustfmt::skip]
        let cases = [
            ("2026-01-05T08:59", "2026-01-05T09:00", "before opening"),
            ("2026-01-05T09:00", "2026-01-05T09:00", "at opening"),
            ("2026-01-05T11:59", "2026-01-05T11:59", "inside"),
            ("2026-01-05T12:00", "2026-01-05T13:00", "at close: lunch"),
            ("2026-01-05T18:00", "2026-01-07T09:00", "evening before a holiday"),
            ("2026-01-09T18:30", "2026-01-12T09:00", "Friday evening"),
            ("2026-01-10T12:00", "2026-01-12T09:00", "Saturday"),
        ];
        for (asked, expected, why) in cases {
            assert_eq!(h.next_opening(utc(asked)), Some(utc(expected)), "{why}");
            assert_eq!(h.is_open(utc(asked)), asked == expected, "{why}");
        }
        let inside = utc("2026-01-05T11:59") + 1;
        assert_eq!(h.next_opening(inside), Some(inside));
    }

    #[test]
    fn next_open_start_skips_the_current_opening_and_continuous_ones() {
        let mut days = weekdays("09:00", "12:00");
        days.extend(weekdays("13:00", "18:00"));
        days.extend([(6, "20:00", "24:00"), (7, "00:00", "02:00")]);
        let h = hours("UTC", &days, &[]);
        #[rustfmt::skip]
        let cases = [
            ("2026-01-05T08:00", "2026-01-05T09:00", "before opening"),
            ("2026-01-05T09:00", "2026-01-05T13:00", "at opening: the next one"),
            ("2026-01-05T10:00", "2026-01-05T13:00", "inside: after lunch"),
            ("2026-01-05T15:00", "2026-01-06T09:00", "afternoon: next morning"),
            ("2026-01-09T15:00", "2026-01-10T20:00", "Friday: Saturday evening"),
            ("2026-01-10T21:00", "2026-01-12T09:00", "Sunday 00:00 continues Saturday"),
        ];
        for (after, expected, why) in cases {
            assert_eq!(h.next_open_start(utc(after)), Some(utc(expected)), "{why}");
        }
    }

    #[test]
    fn next_opening_until_is_none_past_the_bound_and_the_same_within_it() {
        let h = hours(
            "UTC",
            &[(1, "09:00", "17:00")],
            &["2026-11-30", "2026-12-07"],
        );
        let wed = utc("2026-11-25T12:00");
        let monday = utc("2026-12-14T09:00");
        assert_eq!(h.next_opening(wed), Some(monday));
        assert_eq!(h.next_opening_until(wed, monday), Some(monday));
        assert_eq!(h.next_opening_until(wed, monday - 1), None);
        assert_eq!(h.next_opening_until(wed, wed), None);
    }

    #[test]
    fn a_request_over_the_caps_names_days_or_holidays() {
        let days: Vec<(i32, &str, &str)> = vec![(1, "09:00", "10:00"); MAX_INTERVALS + 1];
        assert_eq!(
            field_of(BusinessHours::parse("UTC", &days, &[]).unwrap_err()),
            "days"
        );
        let holidays = vec!["2027-01-01"; MAX_HOLIDAYS + 1];
        assert_eq!(
            field_of(BusinessHours::parse("UTC", &days[..1], &holidays).unwrap_err()),
            "holidays"
        );
        assert!(
            BusinessHours::parse("UTC", &days[..MAX_INTERVALS], &holidays[..MAX_HOLIDAYS]).is_ok()
        );
    }

    #[test]
    fn no_opening_within_ten_years_is_none() {
        let never = BusinessHours {
            zone: chrono_tz::UTC,
            days: Default::default(),
            holidays: BTreeSet::new(),
        };
        assert_eq!(never.next_opening(utc("2026-01-01T00:00")), None);
        assert_eq!(never.next_open_start(utc("2026-01-01T00:00")), None);
        let start = NaiveDate::from_ymd_opt(2025, 12, 30).expect("valid date");
        let every_day = BusinessHours {
            holidays: (0..3700).filter_map(|k| add_days(start, k)).collect(),
            ..hours("UTC", &[(1, "09:00", "10:00")], &[])
        };
        assert_eq!(every_day.next_opening(utc("2026-01-01T00:00")), None);
    }

    #[test]
    fn business_hours_follow_new_york_across_the_spring_forward_weekend() {
        // Clocks go 02:00 EST -> 03:00 EDT on Sunday 2026-03-08.
        let week = hours("America/New_York", &weekdays("09:00", "18:00"), &[]);
        // Saturday 20:00 EST is 2026-03-08T01:00Z; Monday 09:00 EDT is 13:00Z.
        let saturday_evening = utc("2026-03-08T01:00");
        assert_eq!(
            week.next_opening(saturday_evening),
            Some(utc("2026-03-09T13:00"))
        );
        assert_eq!(
            week.next_open_start(saturday_evening),
            Some(utc("2026-03-09T13:00"))
        );

        // 01:00-03:00 on the Sunday itself: 03:00 exists (it is the gap's end), so the
        // window is 01:00 EST (06:00Z) to 03:00 EDT (07:00Z), one real hour.
        let sunday = hours("America/New_York", &[(7, "01:00", "03:00")], &[]);
        #[rustfmt::skip]
        let cases = [
            ("2026-03-08T05:30", "2026-03-08T06:00", "00:30 EST: opens at 01:00"),
            ("2026-03-08T06:59", "2026-03-08T06:59", "01:59 EST: open"),
            ("2026-03-08T07:00", "2026-03-15T05:00", "03:00 EDT: closed, next Sunday"),
        ];
        for (asked, expected, why) in cases {
            let opening = sunday.next_opening(utc(asked));
            assert_eq!(opening, Some(utc(expected)), "{why}");
        }

        // An opening at 02:30, inside the gap, is at 03:30 EDT (07:30Z).
        let in_gap = hours("America/New_York", &[(7, "02:30", "05:00")], &[]);
        let opening = in_gap.next_opening(utc("2026-03-08T06:00"));
        assert_eq!(opening, Some(utc("2026-03-08T07:30")));
        assert!(
            !in_gap.is_open(utc("2026-03-08T07:10")),
            "03:10 EDT is before 03:30"
        );
    }

    #[test]
    fn business_hours_follow_moscows_historical_changes() {
        // 2011-03-27: 02:00 MSK+3 -> 03:00 MSK+4 (at 2011-03-26T23:00Z).
        let spring = hours("Europe/Moscow", &[(7, "02:30", "06:00")], &[]);
        let opening = spring.next_opening(utc("2011-03-26T22:00"));
        assert_eq!(opening, Some(utc("2011-03-26T23:30")), "03:30 MSK+4");

        // 2014-10-26: 02:00 MSK+4 -> 01:00 MSK+3 (at 2014-10-25T22:00Z); 01:00-02:00 twice.
        let repeated = hours("Europe/Moscow", &[(7, "01:00", "01:30")], &[]);
        let first_pass = repeated.next_opening(utc("2014-10-25T20:00"));
        assert_eq!(first_pass, Some(utc("2014-10-25T21:00")), "the first 01:00");
        // After the first 01:30 the window is over: the second 01:00-01:30 is not opened
        // again (open and close are the earlier instants), so the next is a week later.
        let after = repeated.next_opening(utc("2014-10-25T21:45"));
        assert_eq!(
            after,
            Some(utc("2014-11-01T22:00")),
            "next Sunday 01:00 MSK+3"
        );

        // 00:00-03:00 on that day spans four real hours, the repeated hour included.
        let long = hours("Europe/Moscow", &[(7, "00:00", "03:00")], &[]);
        assert!(long.is_open(utc("2014-10-25T22:15")), "second 01:15");
        assert!(long.is_open(utc("2014-10-25T23:59")));
        assert!(!long.is_open(utc("2014-10-26T00:00")), "03:00 MSK+3");
    }

    #[test]
    fn business_hours_follow_lord_howes_half_hour_shifts() {
        // 2026-10-04: 02:00 +10:30 -> 02:30 +11 (at 2026-10-03T15:30Z).
        let spring = hours("Australia/Lord_Howe", &[(7, "02:15", "05:00")], &[]);
        let opening = spring.next_opening(utc("2026-10-03T15:00"));
        assert_eq!(opening, Some(utc("2026-10-03T15:45")), "02:45 +11");

        // 2026-04-05: 02:00 +11 -> 01:30 +10:30 (at 2026-04-04T15:00Z); 01:30-02:00 twice.
        let autumn = hours("Australia/Lord_Howe", &[(7, "01:45", "03:00")], &[]);
        let opening = autumn.next_opening(utc("2026-04-04T14:00"));
        assert_eq!(
            opening,
            Some(utc("2026-04-04T14:45")),
            "the first 01:45, +11"
        );
        assert!(
            autumn.is_open(utc("2026-04-04T15:10")),
            "second 01:40: still open"
        );
        assert_eq!(
            autumn.next_open_start(utc("2026-04-04T14:00")),
            Some(utc("2026-04-04T14:45"))
        );
    }

    #[test]
    fn the_hours_of_a_date_samoa_skipped_move_to_the_next_wall_clock_day() {
        // Pacific/Apia went from 2011-12-29T23:59:59 -10 to 2011-12-31T00:00 +14 (at
        // 2011-12-30T10:00Z): Friday the 30th never happened there. Its 09:00-17:00 moves
        // forward by the 24-hour gap, to Saturday 09:00-17:00 +14 (19:00Z to 03:00Z), and
        // overlaps Saturday's own 08:00-10:00 (18:00Z to 20:00Z).
        let h = hours(
            "Pacific/Apia",
            &[(5, "09:00", "17:00"), (6, "08:00", "10:00")],
            &[],
        );
        let change = utc("2011-12-30T10:00");
        assert_eq!(h.next_opening(change), Some(utc("2011-12-30T18:00")));
        assert!(
            h.is_open(utc("2011-12-31T02:59")),
            "Saturday 16:59 +14, Friday's hours"
        );
        assert!(!h.is_open(utc("2011-12-31T03:00")));
        let fridays_only = hours("Pacific/Apia", &[(5, "09:00", "17:00")], &[]);
        assert_eq!(
            fridays_only.next_opening(change),
            Some(utc("2011-12-30T19:00"))
        );
        // Friday's 19:00Z start lies inside Saturday's window: not a new opening.
        assert_eq!(
            h.next_open_start(utc("2011-12-30T18:30")),
            Some(utc("2012-01-05T19:00")),
            "next Friday 09:00 +14"
        );
    }

    // ---- properties -------------------------------------------------------------------

    /// Wall-clock membership, written independently of the search: the local time at `t`
    /// is in an interval of its own date, which is not a holiday. Exact wherever the UTC
    /// offset does not change within two days of `t`.
    fn wall_clock_open(h: &BusinessHours, t: Millis) -> bool {
        let local = local_of(t, h.zone);
        let day = local.date();
        let millis_of_day = Millis::from(local.time().num_seconds_from_midnight()) * 1000
            + Millis::from(local.time().nanosecond() / 1_000_000);
        !h.holidays.contains(&day)
            && h.days[day.weekday().num_days_from_monday() as usize]
                .iter()
                .any(|iv| {
                    Millis::from(iv.open) * MINUTE <= millis_of_day
                        && millis_of_day < Millis::from(iv.close) * MINUTE
                })
    }

    /// The date whose window holds `t`, with open and close resolved as the module doc
    /// says; used where a clock change is near.
    fn owning_day(h: &BusinessHours, t: Millis) -> Option<NaiveDate> {
        let date = local_of(t, h.zone).date();
        let resolve = |day: NaiveDate, minute: u16| {
            let local = day.and_time(NaiveTime::MIN) + TimeDelta::minutes(minute.into());
            resolve_local(local, h.zone)
        };
        (-2..=1).filter_map(|k| add_days(date, k)).find(|&day| {
            !h.holidays.contains(&day)
                && h.days[day.weekday().num_days_from_monday() as usize]
                    .iter()
                    .any(|iv| resolve(day, iv.open) <= t && t < resolve(day, iv.close))
        })
    }

    fn offset_at(zone: Tz, t: Millis) -> chrono::FixedOffset {
        let utc = chrono::DateTime::from_timestamp_millis(t).expect("test instants in range");
        zone.offset_from_utc_datetime(&utc.naive_utc()).fix()
    }

    /// Whether the UTC offset of `zone` is the same all through `[from, to]` (sampled every
    /// 15 minutes; no zone changes twice within that).
    fn offset_constant(zone: Tz, from: Millis, to: Millis) -> bool {
        let first = offset_at(zone, from);
        (from..=to)
            .step_by(15 * MINUTE as usize)
            .chain([to])
            .all(|t| offset_at(zone, t) == first)
    }

    /// The first instant after `from`, within 400 days, at which `zone`'s offset changes.
    fn next_clock_change(zone: Tz, from: Millis) -> Option<Millis> {
        let first = offset_at(zone, from);
        let k = (1..=400).find(|k| offset_at(zone, from + k * DAY) != first)?;
        let (mut same, mut changed) = (from + (k - 1) * DAY, from + k * DAY);
        while changed - same > 1 {
            let mid = same + (changed - same) / 2;
            if offset_at(zone, mid) == first {
                same = mid;
            } else {
                changed = mid;
            }
        }
        Some(changed)
    }

    /// The membership predicate used to check results over `[from, to]`: the wall-clock
    /// one when no clock change is near, the resolved one otherwise.
    fn open_predicate(h: &BusinessHours, from: Millis, to: Millis) -> impl Fn(Millis) -> bool + '_ {
        let quiet = offset_constant(h.zone, from - 2 * DAY, to + 2 * DAY);
        move |x| {
            if quiet {
                wall_clock_open(h, x)
            } else {
                owning_day(h, x).is_some()
            }
        }
    }

    /// (a) inside a window, (b) not before `t`, (c) no earlier open instant on the 5-minute
    /// grid, (d) not on a holiday; and the hours survive encode/decode.
    fn check_next_opening(h: &BusinessHours, t: Millis) -> Result<(), TestCaseError> {
        let found = h.next_opening(t);
        prop_assert!(found.is_some(), "an interval exists and at most 3 holidays");
        let r = found.unwrap_or_default();
        prop_assert!(r >= t);
        let owner = owning_day(h, r);
        prop_assert!(
            owner.is_some_and(|d| !h.holidays.contains(&d)),
            "{:?}",
            owner
        );
        let open = open_predicate(h, t, r);
        prop_assert!(open(r));
        if wall_clock_open(h, r) {
            let local_date = local_of(r, h.zone).date();
            prop_assert!(!h.holidays.contains(&local_date), "never on a holiday");
        }
        for x in (t..r).step_by(5 * MINUTE as usize) {
            prop_assert!(!open(x), "open earlier, at {}", x);
        }
        prop_assert_eq!(h.is_open(t), r == t);
        prop_assert_eq!(BusinessHours::decode(&h.encode()), Ok(h.clone()));
        Ok(())
    }

    /// The start is after `t`, opens a closed period, and no opening edge lies between.
    fn check_next_open_start(h: &BusinessHours, t: Millis) -> Result<(), TestCaseError> {
        let found = h.next_open_start(t);
        prop_assert!(found.is_some());
        let s = found.unwrap_or_default();
        prop_assert!(s > t);
        let open = open_predicate(h, t, s);
        prop_assert!(open(s) && !open(s - 1), "an opening edge");
        for x in (t + 5 * MINUTE..s).step_by(5 * MINUTE as usize) {
            let edge = open(x) && !open(x - 5 * MINUTE);
            prop_assert!(!edge, "an earlier edge at {}", x);
        }
        Ok(())
    }

    /// Hours in `zone` from (weekday, open minute, close minute) intervals.
    fn build(zone: Tz, intervals: &[(i32, u16, u16)], holidays: &[NaiveDate]) -> BusinessHours {
        let texts: Vec<(i32, String, String)> = intervals
            .iter()
            .map(|&(w, o, c)| (w, format_minute(o), format_minute(c)))
            .collect();
        let days: Vec<(i32, &str, &str)> = texts
            .iter()
            .map(|(w, o, c)| (*w, o.as_str(), c.as_str()))
            .collect();
        let holidays: Vec<String> = holidays.iter().map(|d| format_date(*d)).collect();
        let holidays: Vec<&str> = holidays.iter().map(String::as_str).collect();
        BusinessHours::parse(zone.name(), &days, &holidays).expect("generated hours are valid")
    }

    /// An interval on a random weekday with open and close on 5-minute marks.
    fn interval() -> impl Strategy<Value = (i32, u16, u16)> {
        (1i32..=7, 0u16..288).prop_flat_map(|(weekday, open)| {
            (
                Just(weekday),
                Just(open * 5),
                (open + 1..=288).prop_map(|c| c * 5),
            )
        })
    }

    fn utc_ms_2000_to_2040() -> impl Strategy<Value = Millis> {
        const STEP: Millis = 5 * MINUTE;
        (946_684_800_000 / STEP..2_208_988_800_000 / STEP).prop_map(|n| n * STEP)
    }

    /// A zone, a week of 1-3 intervals on 5-minute marks, an instant in 2000..2040 on a
    /// 5-minute mark and 0-3 holidays within 20 days of it.
    fn schedule() -> impl Strategy<Value = (BusinessHours, Millis)> {
        (
            0..chrono_tz::TZ_VARIANTS.len(),
            prop::collection::vec(interval(), 1..=3),
            utc_ms_2000_to_2040(),
            prop::collection::vec(0i64..20, 0..=3),
        )
            .prop_map(|(zone, intervals, t, holiday_offsets)| {
                let zone = chrono_tz::TZ_VARIANTS[zone];
                let today = local_of(t, zone).date();
                let holidays: Vec<NaiveDate> = holiday_offsets
                    .iter()
                    .filter_map(|&k| add_days(today, k))
                    .collect();
                (build(zone, &intervals, &holidays), t)
            })
    }

    /// Like [`schedule`], but the instant is up to three days before a clock change of the
    /// zone and one interval opens and closes within two hours of the wall-clock time of
    /// the change, so opens and closes fall in gaps and overlaps.
    fn near_a_clock_change() -> impl Strategy<Value = (BusinessHours, Millis)> {
        (
            0..chrono_tz::TZ_VARIANTS.len(),
            utc_ms_2000_to_2040(),
            (-24i32..=24, -24i32..=24),
            0i64..=3 * 288,
            prop::collection::vec(interval(), 0..=2),
            prop::option::of(-1i64..=1),
        )
            .prop_filter_map(
                "the zone does not change its clocks within 400 days",
                |(zone, from, (a, b), back, mut intervals, holiday)| {
                    let zone = chrono_tz::TZ_VARIANTS[zone];
                    let change = next_clock_change(zone, from)?;
                    let before = local_of(change - 1, zone);
                    let minute = before.time().num_seconds_from_midnight() / 60;
                    let mark = i32::try_from((minute + 1) / 5 * 5).ok()?;
                    let open = (mark + 5 * a.min(b)).clamp(0, 1435);
                    let close = (mark + 5 * a.max(b)).clamp(open + 5, 1440);
                    let weekday = i32::try_from(before.weekday().number_from_monday()).ok()?;
                    let (open, close) = (u16::try_from(open).ok()?, u16::try_from(close).ok()?);
                    intervals.push((weekday, open, close));
                    let holidays: Vec<NaiveDate> = holiday
                        .and_then(|k| add_days(before.date(), k))
                        .into_iter()
                        .collect();
                    Some((
                        build(zone, &intervals, &holidays),
                        change - back * 5 * MINUTE,
                    ))
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn next_opening_is_the_earliest_open_instant_not_before_the_request(
            (h, t) in schedule()
        ) {
            check_next_opening(&h, t)?;
        }

        #[test]
        fn next_opening_is_the_earliest_open_instant_near_a_clock_change(
            (h, t) in near_a_clock_change()
        ) {
            check_next_opening(&h, t)?;
        }

        #[test]
        fn next_open_start_is_the_first_opening_edge_after_the_instant(
            (h, t) in schedule()
        ) {
            check_next_open_start(&h, t)?;
        }

        #[test]
        fn next_open_start_is_the_first_opening_edge_near_a_clock_change(
            (h, t) in near_a_clock_change()
        ) {
            check_next_open_start(&h, t)?;
        }
    }
}
