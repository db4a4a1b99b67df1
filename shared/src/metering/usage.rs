//! Reading usage back: windows, resolutions and the series the usage API
//! returns.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::period::BillingPeriod;
use super::tenants::{Tenant, TenantStore};
use super::types::{Invalid, TenantId};
use crate::store::StoreError;

/// Tokens of one feature in one minute, as stored by the rollup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteUsage {
    pub minute: DateTime<Utc>,
    pub feature: String,
    pub tokens: u64,
}

/// A tenant's usage in one billing period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeriodUsage {
    pub tokens: u64,
    pub events: u64,
    /// `(feature, tokens, events)`, by feature name.
    pub features: Vec<(String, u64, u64)>,
}

/// Reading what the rollup counted (DynamoDB in production).
#[async_trait::async_trait]
pub trait UsageReader: Send + Sync {
    /// The tokens counted for `tenant` in `period` (its key), read
    /// consistently (the rollup checks quota thresholds right after its
    /// own writes).
    async fn period_total(&self, tenant: &TenantId, period: &str) -> Result<u64, StoreError>;

    /// Usage of `tenant` in the period starting on `period` (its key).
    async fn period_usage(
        &self,
        tenant: &TenantId,
        period: &str,
    ) -> Result<PeriodUsage, StoreError>;

    /// Per-minute usage of `tenant` in `[from, to)`.
    async fn minutes(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MinuteUsage>, StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageWindow {
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "7d")]
    Week,
    Period,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    Minute,
    Hour,
    Day,
}

impl UsageWindow {
    pub const ALLOWED: &'static str = "1h, 24h, 7d, period";

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        match value {
            "1h" => Ok(Self::Hour),
            "24h" => Ok(Self::Day),
            "7d" => Ok(Self::Week),
            "period" => Ok(Self::Period),
            _ => Err(Invalid(format!("window must be one of {}", Self::ALLOWED))),
        }
    }

    /// The resolution used when none is asked for.
    pub fn default_resolution(self) -> Resolution {
        match self {
            Self::Hour => Resolution::Minute,
            Self::Day | Self::Week => Resolution::Hour,
            Self::Period => Resolution::Day,
        }
    }
}

impl Resolution {
    pub const ALLOWED: &'static str = "minute, hour, day";

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        match value {
            "minute" => Ok(Self::Minute),
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            _ => Err(Invalid(format!(
                "resolution must be one of {}",
                Self::ALLOWED
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    fn step(self) -> TimeDelta {
        match self {
            Self::Minute => TimeDelta::minutes(1),
            Self::Hour => TimeDelta::hours(1),
            Self::Day => TimeDelta::days(1),
        }
    }
}

/// At most this many points per series: per-minute data over a week would be
/// 10,080, so long windows need a coarser resolution.
pub const MAX_POINTS: i64 = 1440;

/// How long per-minute usage is kept (the rollup's TTL on it; windows up
/// to a billing period need it): a range cannot start earlier than this
/// before now.
pub const MINUTE_RETENTION: TimeDelta = TimeDelta::days(62);

/// What a usage series covers: a window ending now, or any `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSpan {
    Window(UsageWindow),
    Range {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

impl UsageSpan {
    /// A `[from, to)` range, checked: `from` before `to`, and not before
    /// the oldest per-minute usage kept at `now`.
    pub fn range(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Self, Invalid> {
        if from >= to {
            return Err(Invalid("from must be before to".to_owned()));
        }
        if from < now - MINUTE_RETENTION {
            return Err(Invalid(format!(
                "from may be at most {} days ago: per-minute usage is kept that long",
                MINUTE_RETENTION.num_days()
            )));
        }
        Ok(Self::Range { from, to })
    }

    /// The resolution used when none is asked for.
    pub fn default_resolution(self) -> Resolution {
        match self {
            Self::Window(window) => window.default_resolution(),
            Self::Range { from, to } if to - from <= TimeDelta::hours(6) => Resolution::Minute,
            Self::Range { from, to } if to - from <= TimeDelta::days(14) => Resolution::Hour,
            Self::Range { .. } => Resolution::Day,
        }
    }
}

/// The `[from, to)` range a span covers at `now`, aligned to `resolution`.
pub fn range(
    span: UsageSpan,
    resolution: Resolution,
    now: DateTime<Utc>,
    period: &BillingPeriod,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Invalid> {
    let step = resolution.step();
    let align = |t: DateTime<Utc>| t.duration_trunc(step).unwrap_or(t);
    let (from, to) = match span {
        UsageSpan::Range { from, to } => {
            let end = align(to);
            (align(from), if end < to { end + step } else { end })
        }
        UsageSpan::Window(window) => {
            let to = align(now) + step;
            let from = match window {
                UsageWindow::Hour => to - TimeDelta::hours(1),
                UsageWindow::Day => to - TimeDelta::hours(24),
                UsageWindow::Week => to - TimeDelta::days(7),
                UsageWindow::Period => period.start,
            };
            (from, to)
        }
    };
    if (to - from).num_seconds() / step.num_seconds() > MAX_POINTS {
        return Err(Invalid(format!(
            "that window at {} resolution exceeds {MAX_POINTS} points; use a coarser resolution",
            resolution.name()
        )));
    }
    Ok((from, to))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsagePoint {
    pub ts: DateTime<Utc>,
    pub tokens: u64,
}

/// Sums `minutes` into buckets of `resolution` over `[from, to)`, every
/// bucket present (zero when nothing was used), oldest first.
pub fn series(
    minutes: &[MinuteUsage],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    resolution: Resolution,
) -> Vec<UsagePoint> {
    let step = resolution.step();
    let start = from.duration_trunc(step).unwrap_or(from);
    let mut buckets: BTreeMap<DateTime<Utc>, u64> = BTreeMap::new();
    let mut at = start;
    while at < to {
        buckets.insert(at, 0);
        at += step;
    }
    for m in minutes.iter().filter(|m| m.minute >= from && m.minute < to) {
        let bucket = m.minute.duration_trunc(step).unwrap_or(m.minute).max(start);
        *buckets.entry(bucket).or_default() += m.tokens;
    }
    buckets
        .into_iter()
        .map(|(ts, tokens)| UsagePoint { ts, tokens })
        .collect()
}

/// One feature's series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeatureSeries {
    pub feature: String,
    pub tokens: u64,
    pub points: Vec<UsagePoint>,
}

/// [`series`] per feature (by name), each over the whole range.
pub fn series_by_feature(
    minutes: &[MinuteUsage],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    resolution: Resolution,
) -> Vec<FeatureSeries> {
    let mut by_feature: BTreeMap<&str, Vec<MinuteUsage>> = BTreeMap::new();
    for m in minutes.iter().filter(|m| m.minute >= from && m.minute < to) {
        by_feature.entry(&m.feature).or_default().push(m.clone());
    }
    by_feature
        .into_iter()
        .map(|(feature, minutes)| FeatureSeries {
            feature: feature.to_owned(),
            tokens: minutes.iter().map(|m| m.tokens).sum(),
            points: series(&minutes, from, to, resolution),
        })
        .collect()
}

/// What `GET /usage/{tenant}` shows: this period's totals (by feature) and
/// a series over a span, in all and (when asked) per feature.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    /// The tenant's monthly quota.
    pub quota: u64,
    pub period: BillingPeriod,
    pub totals: PeriodUsage,
    pub span: UsageSpan,
    /// The aligned range the series covers.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub resolution: Resolution,
    pub series: Vec<UsagePoint>,
    pub by_feature: Option<Vec<FeatureSeries>>,
}

impl UsageReport {
    pub fn remaining(&self) -> u64 {
        self.quota.saturating_sub(self.totals.tokens)
    }

    pub fn percent(&self) -> f64 {
        quota_percent(self.totals.tokens, self.quota)
    }
}

/// Why a usage report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The window and resolution ask for too many points.
    #[error("{}", .0.0)]
    TooManyPoints(Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a usage report is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery {
    pub span: UsageSpan,
    /// The size of each point (defaults to the span's own).
    pub resolution: Option<Resolution>,
    /// A series per feature besides the total one.
    pub by_feature: bool,
}

/// `tenant`'s usage report at `now`.
pub async fn report(
    reader: &dyn UsageReader,
    tenant: &Tenant,
    query: UsageQuery,
    now: DateTime<Utc>,
) -> Result<UsageReport, ReportError> {
    let resolution = query
        .resolution
        .unwrap_or_else(|| query.span.default_resolution());
    let period = BillingPeriod::containing(now, tenant.billing_day);
    let (from, to) =
        range(query.span, resolution, now, &period).map_err(ReportError::TooManyPoints)?;
    let period_key = period.key();
    let (totals, minutes) = tokio::try_join!(
        reader.period_usage(&tenant.id, &period_key),
        reader.minutes(&tenant.id, from, to),
    )?;
    Ok(UsageReport {
        quota: tenant.monthly_quota,
        period,
        totals,
        span: query.span,
        from,
        to,
        resolution,
        series: series(&minutes, from, to, resolution),
        by_feature: query
            .by_feature
            .then(|| series_by_feature(&minutes, from, to, resolution)),
    })
}

/// One tenant's line on the admin dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodTotal {
    pub tenant: Tenant,
    pub period: BillingPeriod,
    pub tokens: u64,
}

impl PeriodTotal {
    pub fn percent(&self) -> f64 {
        quota_percent(self.tokens, self.tenant.monthly_quota)
    }
}

/// Tenants listed for the dashboard, at most (pages of 100).
pub const DASHBOARD_TENANTS: usize = 1000;

/// Every tenant's tokens in its current period (up to
/// [`DASHBOARD_TENANTS`]), by name.
pub async fn period_totals(
    tenants: &dyn TenantStore,
    reader: &dyn UsageReader,
    now: DateTime<Utc>,
) -> Result<Vec<PeriodTotal>, StoreError> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = tenants.list(100, cursor.as_deref()).await?;
        all.extend(page.tenants);
        cursor = page.next;
        if cursor.is_none() || all.len() >= DASHBOARD_TENANTS {
            break;
        }
    }
    let reads = futures_util::stream::iter(all.into_iter().map(|tenant| async move {
        let period = BillingPeriod::containing(now, tenant.billing_day);
        let tokens = reader.period_total(&tenant.id, &period.key()).await?;
        Ok::<_, StoreError>(PeriodTotal {
            tenant,
            period,
            tokens,
        })
    }));
    // A few reads in flight at a time: fast, without a burst per tenant.
    let mut rows: Vec<PeriodTotal> = reads.buffered(8).try_collect().await?;
    rows.sort_by(|a, b| a.tenant.name.cmp(&b.tenant.name));
    Ok(rows)
}

/// Percent of `quota` used, two decimals (a zero quota counts as fully used
/// as soon as anything is).
pub fn quota_percent(used: u64, quota: u64) -> f64 {
    if quota == 0 {
        return if used == 0 { 0.0 } else { 100.0 };
    }
    (used as f64 / quota as f64 * 10_000.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::types::BillingDay;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn minute(ts: &str, feature: &str, tokens: u64) -> MinuteUsage {
        MinuteUsage {
            minute: at(ts),
            feature: feature.into(),
            tokens,
        }
    }

    fn period() -> BillingPeriod {
        BillingPeriod::containing(
            at("2026-11-22T10:30:00Z"),
            BillingDay::try_from(15).unwrap(),
        )
    }

    #[test]
    fn parses_windows_and_resolutions_and_names_the_allowed_values() {
        assert_eq!(UsageWindow::parse("7d"), Ok(UsageWindow::Week));
        assert_eq!(Resolution::parse("hour"), Ok(Resolution::Hour));
        assert_eq!(
            UsageWindow::parse("2d").unwrap_err().0,
            "window must be one of 1h, 24h, 7d, period"
        );
        assert!(Resolution::parse("second").is_err());
    }

    #[test]
    fn hour_window_at_minute_resolution_has_60_points_ending_now() {
        let (from, to) = range(
            UsageSpan::Window(UsageWindow::Hour),
            Resolution::Minute,
            at("2026-11-22T10:30:20Z"),
            &period(),
        )
        .unwrap();
        assert_eq!(
            (from, to),
            (at("2026-11-22T09:31:00Z"), at("2026-11-22T10:31:00Z"))
        );
        assert_eq!(series(&[], from, to, Resolution::Minute).len(), 60);
    }

    #[test]
    fn period_window_starts_at_the_period_start() {
        let (from, to) = range(
            UsageSpan::Window(UsageWindow::Period),
            Resolution::Day,
            at("2026-11-22T10:30:00Z"),
            &period(),
        )
        .unwrap();
        assert_eq!(
            (from, to),
            (at("2026-11-15T00:00:00Z"), at("2026-11-23T00:00:00Z"))
        );
        assert_eq!(series(&[], from, to, Resolution::Day).len(), 8);
    }

    #[test]
    fn too_many_points_is_an_error() {
        assert!(
            range(
                UsageSpan::Window(UsageWindow::Week),
                Resolution::Minute,
                at("2026-11-22T10:30:00Z"),
                &period()
            )
            .is_err()
        );
        assert!(
            range(
                UsageSpan::Window(UsageWindow::Day),
                Resolution::Minute,
                at("2026-11-22T10:30:00Z"),
                &period()
            )
            .is_ok()
        );
    }

    #[test]
    fn series_sums_features_into_buckets_and_fills_gaps() {
        let minutes = [
            minute("2026-11-22T09:05:00Z", "chat", 10),
            minute("2026-11-22T09:59:00Z", "search", 5),
            minute("2026-11-22T11:00:00Z", "chat", 1),
            minute("2026-11-22T13:00:00Z", "chat", 99),
        ];
        let points = series(
            &minutes,
            at("2026-11-22T09:00:00Z"),
            at("2026-11-22T12:00:00Z"),
            Resolution::Hour,
        );
        let tokens: Vec<u64> = points.iter().map(|p| p.tokens).collect();
        assert_eq!(tokens, [15, 0, 1]);
        assert_eq!(points[0].ts, at("2026-11-22T09:00:00Z"));
    }

    #[test]
    fn a_range_is_aligned_outward_and_checked() {
        let now = at("2026-11-22T10:30:00Z");
        let span =
            UsageSpan::range(at("2026-11-22T09:10:00Z"), at("2026-11-22T10:05:00Z"), now).unwrap();
        assert_eq!(span.default_resolution(), Resolution::Minute);
        assert_eq!(
            range(span, Resolution::Hour, now, &period()).unwrap(),
            (at("2026-11-22T09:00:00Z"), at("2026-11-22T11:00:00Z"))
        );
        let backwards =
            UsageSpan::range(at("2026-11-22T10:00:00Z"), at("2026-11-22T09:00:00Z"), now);
        assert_eq!(backwards.unwrap_err().0, "from must be before to");
        let too_old = UsageSpan::range(at("2026-09-01T00:00:00Z"), now, now);
        assert!(too_old.unwrap_err().0.contains("62 days"));
        let long = UsageSpan::range(at("2026-10-01T00:00:00Z"), now, now).unwrap();
        assert_eq!(long.default_resolution(), Resolution::Day);
    }

    #[test]
    fn series_by_feature_splits_the_total() {
        let minutes = [
            minute("2026-11-22T09:05:00Z", "chat", 10),
            minute("2026-11-22T09:59:00Z", "search", 5),
            minute("2026-11-22T11:00:00Z", "chat", 1),
        ];
        let (from, to) = (at("2026-11-22T09:00:00Z"), at("2026-11-22T12:00:00Z"));
        let groups = series_by_feature(&minutes, from, to, Resolution::Hour);
        let shape: Vec<(&str, u64, Vec<u64>)> = groups
            .iter()
            .map(|g| {
                (
                    g.feature.as_str(),
                    g.tokens,
                    g.points.iter().map(|p| p.tokens).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [("chat", 11, vec![10, 0, 1]), ("search", 5, vec![5, 0, 0])]
        );
    }

    #[test]
    fn quota_percent_rounds_to_two_decimals() {
        assert_eq!(quota_percent(1, 3), 33.33);
        assert_eq!(quota_percent(800, 1000), 80.0);
        assert_eq!(quota_percent(1500, 1000), 150.0);
        assert_eq!(quota_percent(0, 0), 0.0);
    }
}
