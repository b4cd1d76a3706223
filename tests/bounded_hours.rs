//! Business hours are bounded: intervals and holidays per SetBusinessHours request are
//! capped (INVALID_ARGUMENT naming the field), and a business-hours item whose next
//! opening lies beyond the scheduling horizon is refused instead of being scheduled
//! years ahead. Real server, real gRPC.

mod common;

use common::*;
use sendlater::pb;
use tonic::Code;

const HOUR: i64 = 3_600_000;

fn day(weekday: i32, open: &str, close: &str) -> pb::BusinessDay {
    pb::BusinessDay {
        weekday,
        open: open.into(),
        close: close.into(),
    }
}

fn hours(days: Vec<pb::BusinessDay>, holidays: Vec<String>) -> pb::BusinessHours {
    pb::BusinessHours {
        account_id: "acme".into(),
        time_zone: "UTC".into(),
        days,
        holidays,
    }
}

#[tokio::test]
async fn more_than_100_intervals_is_invalid_argument_naming_days() {
    let t = TestServer::start().await;
    // 101 one-minute intervals on Mondays, none touching.
    let many: Vec<_> = (0..101)
        .map(|i| {
            let open = i * 2;
            let f = |m: i32| format!("{:02}:{:02}", m / 60, m % 60);
            day(1, &f(open), &f(open + 1))
        })
        .collect();
    let r = t
        .client
        .clone()
        .set_business_hours(hours(many.clone(), vec![]))
        .await;
    assert_status(r, Code::InvalidArgument, "days: ");
    let r = t
        .client
        .clone()
        .set_business_hours(hours(many[..100].to_vec(), vec![]))
        .await;
    assert!(r.is_ok(), "100 intervals are fine: {r:?}");
}

#[tokio::test]
async fn more_than_1000_holidays_is_invalid_argument_naming_holidays() {
    let t = TestServer::start().await;
    let start = chrono::NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
    let dates: Vec<String> = (0..1001)
        .map(|i| {
            (start + chrono::Days::new(i))
                .format("%Y-%m-%d")
                .to_string()
        })
        .collect();
    let r = t
        .client
        .clone()
        .set_business_hours(hours(vec![day(1, "09:00", "17:00")], dates.clone()))
        .await;
    assert_status(r, Code::InvalidArgument, "holidays: ");
    let r = t
        .client
        .clone()
        .set_business_hours(hours(
            vec![day(1, "09:00", "17:00")],
            dates[..1000].to_vec(),
        ))
        .await;
    assert!(r.is_ok(), "1000 holidays are fine: {r:?}");
}

#[tokio::test]
async fn a_next_opening_beyond_the_horizon_is_refused_not_scheduled_years_ahead() {
    let t = TestServer::start_with(|c| c.limits.max_horizon_days = 365).await;
    // Open Mondays only, and the next 60 Mondays (over a year) are holidays.
    let first_monday = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
    let mondays: Vec<String> = (0..60)
        .map(|w| {
            (first_monday + chrono::Days::new(7 * w))
                .format("%Y-%m-%d")
                .to_string()
        })
        .collect();
    t.client
        .clone()
        .set_business_hours(hours(vec![day(1, "09:00", "17:00")], mondays))
        .await
        .expect("hours set");
    let mut req = email_reply("acme", "T1", T0 + HOUR);
    req.delivery_window = pb::DeliveryWindow::BusinessHours as i32;
    let r = t.client.clone().schedule_message(req).await;
    assert_status(r, Code::FailedPrecondition, "delivery_window: ");
}
