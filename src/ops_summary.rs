//! The operator's summary (`GET /v1/ops/summary`, `/ops`, `/metrics`):
//! connections by status and health, the app's credential state, the
//! `invalid_grant` fuse, and refresh outcomes over the last hour and day.
//! One home, so the API, the dashboard and the metrics say the same.

use crate::broker::app_credentials::SecretSource;
use crate::broker::AppCredentials;
use crate::clock::Clock;
use crate::db::app_state;
use crate::domain::{ConnectionStatus, Health};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct RefreshOutcomes {
    /// Count per outcome: ok, invalid_grant, app_credentials_rejected, amazon_unavailable.
    pub outcomes: BTreeMap<String, i64>,
    /// Mean LWA latency of the refreshes in the window, in milliseconds.
    pub mean_latency_ms: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppCredentialsState {
    /// How many client secrets are configured (current, and previous if set).
    pub configured_secrets: usize,
    /// The secret sent first, once one has worked: `current` or `previous`
    /// (the environment's) or `notification` (learnt from Amazon).
    pub secret_in_use: Option<&'static str>,
    /// When the secret in use expires, when known.
    #[serde(with = "time::serde::rfc3339::option")]
    pub secret_expires_at: Option<OffsetDateTime>,
    /// The same as seconds from now, by the injected clock (for `/metrics`).
    #[serde(skip)]
    pub secret_seconds_left: Option<i64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_worked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_rejected_at: Option<OffsetDateTime>,
    /// `ok`, `rejected` (every secret was refused; refreshes are held) or
    /// `unknown` (no call has been made yet).
    pub state: &'static str,
    /// Since when every secret has been refused, while they are.
    #[serde(with = "time::serde::rfc3339::option")]
    pub rejected_since: Option<OffsetDateTime>,
    /// Until when refreshes are held (then one probe goes to Amazon).
    #[serde(with = "time::serde::rfc3339::option")]
    pub hold_until: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FuseState {
    /// True while the `invalid_grant` fuse holds (CONTRACT §10).
    pub tripped: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub tripped_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub cleared_at: Option<OffsetDateTime>,
    pub cleared_by: Option<String>,
}

/// Webhook deliveries (CONTRACT §8). Events are kept whether or not a
/// webhook URL is configured (the feed lists them), so without one
/// `pending` counts events no webhook will carry.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveries {
    /// Whether this instance delivers (a webhook URL is configured).
    pub configured: bool,
    pub pending: i64,
    /// Pending after at least one failed attempt.
    pub retrying: i64,
    /// Given up after 3 days.
    pub failed: i64,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_error_at: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpsSummary {
    pub connections_by_status: BTreeMap<String, i64>,
    pub connections_by_health: BTreeMap<String, i64>,
    pub app_credentials: AppCredentialsState,
    pub invalid_grant_fuse: FuseState,
    pub refreshes_last_hour: RefreshOutcomes,
    pub refreshes_last_day: RefreshOutcomes,
    pub webhook_deliveries: WebhookDeliveries,
}

/// How many hours the dashboard's charts cover.
pub const HOURS: usize = 24;

/// Refreshes that ended in one hour.
#[derive(Debug, Default, Clone, Copy)]
pub struct HourOfRefreshes {
    pub ok: i64,
    pub invalid_grant: i64,
    pub app_credentials_rejected: i64,
    pub amazon_unavailable: i64,
    /// LWA's latency (p50, p99) in milliseconds, when there was a refresh.
    pub latency_ms: Option<(f64, f64)>,
}

pub struct LastDay {
    /// Oldest hour first; the last one ends now.
    pub hours: Vec<HourOfRefreshes>,
    /// By region (na, eu, fe), regions without an attempt left out.
    pub consent: Vec<crate::db::consent_attempts::Funnel>,
}

/// How long the dashboard's charts are served from memory.
pub const LAST_DAY_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Summaries {
    db: PgPool,
    last_day: std::sync::Mutex<Option<(std::time::Instant, Arc<LastDay>)>>,
    clock: Arc<dyn Clock>,
    credentials: Arc<AppCredentials>,
    webhooks_configured: bool,
}

impl Summaries {
    pub fn new(
        db: PgPool,
        clock: Arc<dyn Clock>,
        credentials: Arc<AppCredentials>,
        webhooks_configured: bool,
    ) -> Self {
        Summaries {
            db,
            last_day: std::sync::Mutex::new(None),
            clock,
            credentials,
            webhooks_configured,
        }
    }

    pub async fn summary(&self) -> Result<OpsSummary, sqlx::Error> {
        let now = self.clock.now();
        // Independent reads, each on its own pooled connection: at 100,000
        // connections the counts and the outbox's backlog take tens of ms each.
        let (counts, (refreshes_last_hour, refreshes_last_day), shared, deliveries) = tokio::try_join!(
            sqlx::query_as::<_, (ConnectionStatus, Health, i64)>(
                "select status, connection_health(status, last_error_code, authorization_expires_at, $1), count(*)
                 from connection group by 1, 2",
            )
            .bind(now)
            .fetch_all(&self.db),
            self.refresh_outcomes(now),
            app_state::find(&self.db),
            crate::db::events::delivery_counts(&self.db),
        )?;
        let mut by_status: BTreeMap<String, i64> = ConnectionStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect();
        let mut by_health: BTreeMap<String, i64> = Health::ALL
            .iter()
            .map(|h| (h.as_str().to_owned(), 0))
            .collect();
        for (status, health, n) in counts {
            *by_status.entry(status.as_str().to_owned()).or_default() += n;
            *by_health.entry(health.as_str().to_owned()).or_default() += n;
        }
        let hold = self.credentials.state();
        let in_use = self.credentials.secret_in_use();
        let state = if shared.credentials_rejected_since.is_some() {
            "rejected"
        } else if shared.credentials_last_ok_at.is_some() || hold.last_ok_at.is_some() {
            "ok"
        } else {
            "unknown"
        };
        Ok(OpsSummary {
            connections_by_status: by_status,
            connections_by_health: by_health,
            app_credentials: AppCredentialsState {
                configured_secrets: self.credentials.configured_secrets(),
                secret_in_use: in_use
                    .as_ref()
                    .filter(|_| {
                        shared.credentials_last_ok_at.is_some() || hold.last_ok_at.is_some()
                    })
                    .map(|s| match s.source {
                        SecretSource::Environment => "current",
                        SecretSource::EnvironmentPrevious => "previous",
                        SecretSource::Notification => "notification",
                    }),
                secret_expires_at: in_use.as_ref().and_then(|s| s.expires_at),
                secret_seconds_left: in_use
                    .as_ref()
                    .and_then(|s| s.expires_at)
                    .map(|at| (at - self.clock.now()).whole_seconds()),
                last_worked_at: shared.credentials_last_ok_at.or(hold.last_ok_at),
                last_rejected_at: shared.credentials_last_rejected_at,
                state,
                rejected_since: shared.credentials_rejected_since,
                hold_until: shared.credentials_hold_until,
            },
            invalid_grant_fuse: FuseState {
                tripped: shared.fuse_tripped_at.is_some(),
                tripped_at: shared.fuse_tripped_at,
                cleared_at: shared.fuse_cleared_at,
                cleared_by: shared.fuse_cleared_by,
            },
            refreshes_last_hour,
            refreshes_last_day,
            webhook_deliveries: WebhookDeliveries {
                configured: self.webhooks_configured,
                pending: deliveries.pending,
                retrying: deliveries.retrying,
                failed: deliveries.failed,
                last_error: deliveries.last_error,
                last_error_at: deliveries.last_error_at,
            },
        })
    }

    /// Refresh outcomes of the last hour and the last day, in one scan.
    async fn refresh_outcomes(
        &self,
        now: OffsetDateTime,
    ) -> Result<(RefreshOutcomes, RefreshOutcomes), sqlx::Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            outcome: String,
            hour_count: i64,
            hour_latency_ms: i64,
            day_count: i64,
            day_latency_ms: i64,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "select outcome,
                    count(*) filter (where at > $1 - interval '1 hour') as hour_count,
                    coalesce(sum(latency_ms) filter (where at > $1 - interval '1 hour'), 0)::int8 as hour_latency_ms,
                    count(*) as day_count, coalesce(sum(latency_ms), 0)::int8 as day_latency_ms
             from refresh_event where at > $1 - interval '1 day' group by outcome",
        )
        .bind(now)
        .fetch_all(&self.db)
        .await?;
        let window = |pick: fn(&Row) -> (i64, i64)| {
            let (count, latency) = rows
                .iter()
                .map(pick)
                .fold((0, 0), |(n, l), (dn, dl)| (n + dn, l + dl));
            RefreshOutcomes {
                outcomes: rows
                    .iter()
                    .map(|r| (r.outcome.clone(), pick(r).0))
                    .filter(|(_, n)| *n > 0)
                    .collect(),
                mean_latency_ms: (count > 0).then(|| latency as f64 / count as f64),
            }
        };
        Ok((
            window(|r| (r.hour_count, r.hour_latency_ms)),
            window(|r| (r.day_count, r.day_latency_ms)),
        ))
    }

    /// The dashboard's 24 hours, at most [`LAST_DAY_KEPT`] old: hourly
    /// charts do not change visibly within a minute, and at 100,000
    /// refreshes a day their percentiles cost PostgreSQL ~100 ms.
    pub async fn last_day(&self) -> Result<Arc<LastDay>, sqlx::Error> {
        let now = std::time::Instant::now();
        if let Some((at, day)) = &*self.last_day.lock().unwrap_or_else(|p| p.into_inner()) {
            if now.duration_since(*at) < LAST_DAY_KEPT {
                return Ok(Arc::clone(day));
            }
        }
        let day = Arc::new(self.read_last_day().await?);
        *self.last_day.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, Arc::clone(&day)));
        Ok(day)
    }

    /// Refreshes per hour by outcome with LWA's p50/p99, and the consent
    /// funnel by region, read now.
    pub async fn read_last_day(&self) -> Result<LastDay, sqlx::Error> {
        let now = self.clock.now();
        let since = now - Duration::hours(HOURS as i64);
        // Hour 0 is the oldest, HOURS - 1 the one ending now.
        let counts = sqlx::query_as::<_, (i32, String, i64)>(
            "select ($3 - 1 - floor(extract(epoch from ($1 - at)) / 3600))::int4 as hour, outcome, count(*)
             from refresh_event where at > $2 and at <= $1 group by 1, 2",
        )
        .bind(now)
        .bind(since)
        .bind(HOURS as i32)
        .fetch_all(&self.db);
        let latencies = sqlx::query_as::<_, (i32, f64, f64)>(
            "select ($3 - 1 - floor(extract(epoch from ($1 - at)) / 3600))::int4 as hour,
                    percentile_cont(0.5) within group (order by latency_ms),
                    percentile_cont(0.99) within group (order by latency_ms)
             from refresh_event where at > $2 and at <= $1 group by 1",
        )
        .bind(now)
        .bind(since)
        .bind(HOURS as i32)
        .fetch_all(&self.db);
        let (counts, latencies, mut consent) = tokio::try_join!(
            counts,
            latencies,
            crate::db::consent_attempts::funnel(&self.db, since, now)
        )?;
        let mut hours = vec![HourOfRefreshes::default(); HOURS];
        for (hour, outcome, n) in counts {
            let Some(h) = usize::try_from(hour).ok().and_then(|i| hours.get_mut(i)) else {
                continue;
            };
            match outcome.as_str() {
                "ok" => h.ok += n,
                "invalid_grant" => h.invalid_grant += n,
                "app_credentials_rejected" => h.app_credentials_rejected += n,
                _ => h.amazon_unavailable += n,
            }
        }
        for (hour, p50, p99) in latencies {
            if let Some(h) = usize::try_from(hour).ok().and_then(|i| hours.get_mut(i)) {
                h.latency_ms = Some((p50, p99));
            }
        }
        consent.sort_by_key(|f| match f.region.as_str() {
            "na" => 0,
            "eu" => 1,
            _ => 2,
        });
        Ok(LastDay { hours, consent })
    }

    /// An operator ends a tripped `invalid_grant` fuse. True when it was tripped.
    pub async fn clear_fuse(&self, operator: &str) -> Result<bool, sqlx::Error> {
        let cleared = app_state::clear_fuse(&self.db, self.clock.now(), operator).await?;
        if cleared {
            crate::db::notify::send(&self.db, &crate::db::notify::Change::App).await?;
            crate::db::audit::record(
                &self.db,
                self.clock.now(),
                operator,
                "app.fuse_cleared",
                crate::db::audit::AuditTarget::default(),
                serde_json::json!({}),
            )
            .await?;
        }
        Ok(cleared)
    }
}
