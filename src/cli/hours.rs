//! Business hours on the command line: reading `hours set --day` values, and finding
//! "next business morning" in the hours the server holds.
//!
//! A `--day` value is `DAYS INTERVALS`: DAYS a comma-separated list of ISO weekdays
//! (1 = Monday .. 7 = Sunday) and ranges (`1-5`, `6`, `1-3,5`), INTERVALS a
//! comma-separated list of `HH:MM-HH:MM` (close may be `24:00`). The hours as a whole
//! (times, order, holidays, zone) are then validated by the domain's
//! [`BusinessHours::parse`], the same code the server runs, and its complaints are
//! turned back into the flag and value at fault. Everything here is pure.

use chrono::{DateTime, Utc};

use super::error::{CliError, Result};
use crate::domain::{self, BusinessHours};
use crate::pb;

/// The accepted shape of a `--day` value, quoted in errors.
pub const DAY_FORM: &str = "expected \"DAYS HH:MM-HH:MM[,HH:MM-HH:MM...]\" with DAYS ISO \
     weekdays 1 (Monday) to 7 (Sunday) as a day, a range or a list, e.g. \
     \"1-5 09:00-13:00,14:00-18:00\" or \"6 10:00-14:00\"";

/// One opening interval from a `--day` value, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayInterval {
    /// ISO weekday, 1..=7.
    pub weekday: i32,
    /// "HH:MM" as typed.
    pub open: String,
    /// "HH:MM" as typed.
    pub close: String,
}

/// Builds the `SetBusinessHours` request from `--tz`, the `--day` and the `--holiday`
/// values, validated as the server will.
///
/// # Errors
/// [`CliError::Config`] naming `--day` (with the value) when one cannot be read or holds a
/// bad time, `--holiday` for a bad date.
pub fn business_hours_request(
    account: &str,
    zone: &str,
    days: &[String],
    holidays: &[String],
) -> Result<pb::BusinessHours> {
    let mut intervals = Vec::new();
    // The --day value each interval came from, to name it in errors.
    let mut origin = Vec::new();
    for spec in days {
        for interval in parse_day(spec)? {
            intervals.push(interval);
            origin.push(spec.as_str());
        }
    }
    let triples: Vec<(i32, &str, &str)> = intervals
        .iter()
        .map(|d| (d.weekday, d.open.as_str(), d.close.as_str()))
        .collect();
    let dates: Vec<&str> = holidays.iter().map(String::as_str).collect();
    BusinessHours::parse(zone, &triples, &dates).map_err(|e| blame(e, &origin, holidays, zone))?;
    Ok(pb::BusinessHours {
        account_id: account.to_owned(),
        time_zone: zone.to_owned(),
        days: intervals
            .into_iter()
            .map(|d| pb::BusinessDay {
                weekday: d.weekday,
                open: d.open,
                close: d.close,
            })
            .collect(),
        holidays: holidays.to_vec(),
    })
}

/// Reads one `--day` value into its intervals, one per weekday and time range.
///
/// # Errors
/// [`CliError::Config`] naming `--day` and the value when it is not of the form
/// [`DAY_FORM`]; the times themselves are checked by [`business_hours_request`].
pub fn parse_day(spec: &str) -> Result<Vec<DayInterval>> {
    let bad = |why: &str| CliError::Config(format!("--day {spec:?}: {why}; {DAY_FORM}"));
    let mut words = spec.split_whitespace();
    let (Some(days), Some(ranges), None) = (words.next(), words.next(), words.next()) else {
        return Err(bad("needs the weekdays, a space, then the opening times"));
    };
    let weekdays = parse_weekdays(days).ok_or_else(|| bad("cannot read the weekdays"))?;
    let mut out = Vec::new();
    for weekday in weekdays {
        for range in ranges.split(',') {
            let (open, close) = range
                .split_once('-')
                .ok_or_else(|| bad(&format!("{range:?} is not HH:MM-HH:MM")))?;
            out.push(DayInterval {
                weekday,
                open: open.to_owned(),
                close: close.to_owned(),
            });
        }
    }
    Ok(out)
}

/// "1-5", "6", "1-3,5" as the weekdays they name, in order; `None` unless every part is
/// a weekday 1..=7 or an ascending range of them.
fn parse_weekdays(s: &str) -> Option<Vec<i32>> {
    let weekday = |p: &str| p.parse::<i32>().ok().filter(|d| (1..=7).contains(d));
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (weekday(from)?, weekday(to)?);
                if from > to {
                    return None;
                }
                out.extend(from..=to);
            }
            None => out.push(weekday(part)?),
        }
    }
    Some(out)
}

/// A domain complaint about the hours, told in terms of the flags: `days[i]` is the
/// `--day` value interval `i` came from, `holidays[i]` the i-th `--holiday`.
fn blame(error: domain::Error, origin: &[&str], holidays: &[String], zone: &str) -> CliError {
    let domain::Error::InvalidArgument { field, reason } = error else {
        return CliError::Config(format!("business hours: {error}"));
    };
    let index = |prefix: &str| {
        field
            .strip_prefix(prefix)
            .and_then(|rest| rest.split(']').next())
            .and_then(|i| i.parse::<usize>().ok())
    };
    let message = if let Some(spec) = index("days[").and_then(|i| origin.get(i)) {
        format!("--day {spec:?}: {reason}")
    } else if let Some(date) = index("holidays[").and_then(|i| holidays.get(i)) {
        format!("--holiday {date:?}: {reason}")
    } else if field == "time_zone" {
        format!("--tz {zone:?}: {reason}")
    } else {
        format!("--day: {reason}")
    };
    CliError::Config(message)
}

/// The start of the account's next opening strictly after `now`, for `--at "next
/// business morning"`: [`BusinessHours::next_morning`] (the first opening of the next
/// business day, not a reopening after lunch) over the hours the server returned.
///
/// # Errors
/// [`CliError::Protocol`] when the server's hours do not validate;
/// [`CliError::Config`] naming `--at` when they never open (every day a holiday).
pub fn next_business_morning(
    hours: &pb::BusinessHours,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>> {
    let triples: Vec<(i32, &str, &str)> = hours
        .days
        .iter()
        .map(|d| (d.weekday, d.open.as_str(), d.close.as_str()))
        .collect();
    let holidays: Vec<&str> = hours.holidays.iter().map(String::as_str).collect();
    let parsed = BusinessHours::parse(&hours.time_zone, &triples, &holidays)
        .map_err(|e| CliError::Protocol(format!("the account's business hours: {e}")))?;
    parsed
        .next_morning(now.timestamp_millis())
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| {
            CliError::Config(format!(
                "--at \"next business morning\": the business hours of account {:?} do not \
                 open within ten years",
                hours.account_id
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid")
            .with_timezone(&Utc)
    }

    fn config_error<T: std::fmt::Debug>(result: Result<T>) -> String {
        match result {
            Err(CliError::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    fn interval(weekday: i32, open: &str, close: &str) -> DayInterval {
        DayInterval {
            weekday,
            open: open.into(),
            close: close.into(),
        }
    }

    #[test]
    fn a_day_value_gives_one_interval_per_weekday_and_range() {
        let got = parse_day("1-2 09:00-13:00,14:00-18:00").expect("valid");
        assert_eq!(
            got,
            [
                interval(1, "09:00", "13:00"),
                interval(1, "14:00", "18:00"),
                interval(2, "09:00", "13:00"),
                interval(2, "14:00", "18:00"),
            ]
        );
        assert_eq!(
            parse_day("  6   10:00-14:00 ").expect("valid"),
            [interval(6, "10:00", "14:00")]
        );
        let list = parse_day("1-3,5,7 00:00-24:00").expect("valid");
        let weekdays: Vec<i32> = list.iter().map(|d| d.weekday).collect();
        assert_eq!(weekdays, [1, 2, 3, 5, 7]);
    }

    #[test]
    fn unreadable_day_values_are_refused_naming_the_flag_and_the_value() {
        for spec in [
            "",
            "1-5",
            "09:00-18:00",
            "0 09:00-18:00",
            "8 09:00-18:00",
            "5-1 09:00-18:00",
            "mon 09:00-18:00",
            "1-5 09:00",
            "1-5 09:00-18:00 extra",
        ] {
            let message = config_error(parse_day(spec));
            assert!(
                message.starts_with(&format!("--day {spec:?}: ")),
                "{message}"
            );
            assert!(message.contains("1-5 09:00-13:00"), "{message}");
        }
    }

    #[test]
    fn the_request_carries_every_interval_and_holiday_as_typed() {
        let request = business_hours_request(
            "acme",
            "Europe/Moscow",
            &["1-5 09:00-13:00,14:00-18:00".into(), "6 10:00-14:00".into()],
            &["2026-12-31".into()],
        )
        .expect("valid");
        assert_eq!(request.account_id, "acme");
        assert_eq!(request.time_zone, "Europe/Moscow");
        assert_eq!(request.days.len(), 11);
        assert_eq!(
            request.days[10],
            pb::BusinessDay {
                weekday: 6,
                open: "10:00".into(),
                close: "14:00".into(),
            }
        );
        assert_eq!(request.holidays, ["2026-12-31"]);
    }

    #[test]
    fn bad_times_dates_and_zones_name_the_flag_and_value_at_fault() {
        let days = |d: &[&str]| d.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let cases: &[(&[&str], &[&str], &str, &str)] = &[
            (
                &["1-5 09:00-18:00", "6 9am-14:00"],
                &[],
                "UTC",
                "--day \"6 9am-14:00\": ",
            ),
            (&["1 18:00-09:00"], &[], "UTC", "--day \"1 18:00-09:00\": "),
            (&["1 09:00-25:00"], &[], "UTC", "--day \"1 09:00-25:00\": "),
            (
                &["1 09:00-18:00"],
                &["2026-12-31", "2026-02-30"],
                "UTC",
                "--holiday \"2026-02-30\": ",
            ),
            (
                &["1 09:00-18:00"],
                &[],
                "Mars/Olympus",
                "--tz \"Mars/Olympus\": ",
            ),
        ];
        for (day_values, holidays, zone, prefix) in cases {
            let message = config_error(business_hours_request(
                "acme",
                zone,
                &days(day_values),
                &days(holidays),
            ));
            assert!(message.starts_with(prefix), "{message}");
        }
    }

    #[test]
    fn next_business_morning_is_the_first_opening_of_the_next_business_day() {
        let mut hours = business_hours_request(
            "acme",
            "Europe/Moscow",
            &["1-5 09:00-13:00,14:00-18:00".into()],
            &["2026-11-30".into()],
        )
        .expect("valid");
        // Friday 2026-11-27 20:00 Moscow; Monday the 30th is a holiday: Tuesday 09:00.
        let friday_evening = utc("2026-11-27T17:00:00Z");
        assert_eq!(
            next_business_morning(&hours, friday_evening).ok(),
            Some(utc("2026-12-01T06:00:00Z"))
        );
        // Open now (Thursday 10:00 Moscow): not the reopening after lunch, Friday 09:00.
        let thursday_morning = utc("2026-11-26T07:00:00Z");
        assert_eq!(
            next_business_morning(&hours, thursday_morning).ok(),
            Some(utc("2026-11-27T06:00:00Z"))
        );
        hours.time_zone = "Nowhere/Land".into();
        assert!(matches!(
            next_business_morning(&hours, friday_evening),
            Err(CliError::Protocol(_))
        ));
    }
}
