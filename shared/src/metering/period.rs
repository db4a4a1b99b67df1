//! Billing periods: from a tenant's billing day of one month (00:00 UTC) to
//! the same day of the next, end exclusive. Billing days stop at 28, so the
//! day exists in every month and there are no month-end special cases.

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use super::types::BillingDay;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct BillingPeriod {
    pub start: DateTime<Utc>,
    /// Exclusive: the start of the next period.
    pub end: DateTime<Utc>,
}

impl BillingPeriod {
    /// The period that contains `at`.
    pub fn containing(at: DateTime<Utc>, day: BillingDay) -> Self {
        let this_month = first_instant(at.year(), at.month(), day);
        let start = if this_month <= at {
            this_month
        } else {
            this_month - Months::new(1)
        };
        Self {
            start,
            end: start + Months::new(1),
        }
    }

    /// Stable key of the period in storage: its start date.
    pub fn key(&self) -> String {
        self.start.format("%Y-%m-%d").to_string()
    }
}

fn first_instant(year: i32, month: u32, day: BillingDay) -> DateTime<Utc> {
    let date = NaiveDate::from_ymd_opt(year, month, u32::from(day.get()))
        .expect("billing days 1..=28 exist in every month");
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn period(now: &str, day: u8) -> (String, String) {
        let p = BillingPeriod::containing(at(now), BillingDay::try_from(day).unwrap());
        (p.start.to_rfc3339(), p.end.to_rfc3339())
    }

    #[test]
    fn starts_on_the_billing_day_and_ends_on_it_next_month() {
        assert_eq!(
            period("2026-11-22T10:00:00Z", 15),
            (
                "2026-11-15T00:00:00+00:00".into(),
                "2026-12-15T00:00:00+00:00".into()
            )
        );
    }

    #[test]
    fn before_the_billing_day_belongs_to_the_previous_period() {
        assert_eq!(
            period("2026-11-14T23:59:59Z", 15),
            (
                "2026-10-15T00:00:00+00:00".into(),
                "2026-11-15T00:00:00+00:00".into()
            )
        );
    }

    #[test]
    fn the_first_instant_of_the_billing_day_opens_a_new_period() {
        assert_eq!(
            period("2026-11-15T00:00:00Z", 15).0,
            "2026-11-15T00:00:00+00:00"
        );
    }

    #[test]
    fn billing_day_28_across_february_in_a_leap_year() {
        assert_eq!(
            period("2028-02-29T12:00:00Z", 28),
            (
                "2028-02-28T00:00:00+00:00".into(),
                "2028-03-28T00:00:00+00:00".into()
            )
        );
        assert_eq!(
            period("2028-02-27T12:00:00Z", 28),
            (
                "2028-01-28T00:00:00+00:00".into(),
                "2028-02-28T00:00:00+00:00".into()
            )
        );
    }

    #[test]
    fn billing_day_28_in_a_common_february() {
        assert_eq!(
            period("2027-03-01T00:00:00Z", 28),
            (
                "2027-02-28T00:00:00+00:00".into(),
                "2027-03-28T00:00:00+00:00".into()
            )
        );
    }

    #[test]
    fn month_ends_and_year_boundaries() {
        assert_eq!(
            period("2026-12-31T23:59:59Z", 1),
            (
                "2026-12-01T00:00:00+00:00".into(),
                "2027-01-01T00:00:00+00:00".into()
            )
        );
        assert_eq!(
            period("2027-01-05T00:00:00Z", 10),
            (
                "2026-12-10T00:00:00+00:00".into(),
                "2027-01-10T00:00:00+00:00".into()
            )
        );
        assert_eq!(
            period("2026-10-31T12:00:00Z", 28),
            (
                "2026-10-28T00:00:00+00:00".into(),
                "2026-11-28T00:00:00+00:00".into()
            )
        );
    }

    #[test]
    fn key_is_the_start_date() {
        let p =
            BillingPeriod::containing(at("2026-11-22T10:00:00Z"), BillingDay::try_from(3).unwrap());
        assert_eq!(p.key(), "2026-11-03");
    }
}
