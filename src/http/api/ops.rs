//! `GET /v1/ops/summary`: connection counts by status and health, the app's
//! credential state, and refresh outcomes over the last hour and day.

use super::{ApiError, Caller};
use crate::api_keys::Scope;
use crate::app::AppState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::BTreeMap;
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
pub struct AppCredentials {
    /// How many client secrets are configured (current, and previous if set).
    pub configured_secrets: usize,
    /// `current` or `previous`: the secret that last worked.
    pub secret_in_use: Option<&'static str>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_worked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_rejected_at: Option<OffsetDateTime>,
    /// `ok`, `rejected` (the last call was refused) or `unknown` (no call yet on this instance).
    pub state: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpsSummary {
    pub connections_by_status: BTreeMap<String, i64>,
    pub connections_by_health: BTreeMap<String, i64>,
    pub app_credentials: AppCredentials,
    pub refreshes_last_hour: RefreshOutcomes,
    pub refreshes_last_day: RefreshOutcomes,
}

pub const HEALTH_SQL: &str = "case
    when status = 'needs_reauth' then 'failing'
    when status = 'active' and last_error_code = 'amazon_unavailable' then 'degraded'
    when status = 'active' and authorized_at + interval '365 days' - $1 <= interval '30 days' then 'expiring'
    else 'ok' end";

async fn refresh_outcomes(
    db: &PgPool,
    since: OffsetDateTime,
) -> Result<RefreshOutcomes, sqlx::Error> {
    let rows: Vec<(String, i64, Option<f64>)> = sqlx::query_as(
        "select outcome, count(*), avg(latency_ms)::float8 from refresh_event where at > $1 group by outcome",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    let total: i64 = rows.iter().map(|r| r.1).sum();
    let mean_latency_ms = (total > 0).then(|| {
        rows.iter()
            .map(|r| r.2.unwrap_or(0.0) * r.1 as f64)
            .sum::<f64>()
            / total as f64
    });
    Ok(RefreshOutcomes {
        outcomes: rows.into_iter().map(|r| (r.0, r.1)).collect(),
        mean_latency_ms,
    })
}

pub async fn build_summary(state: &AppState) -> Result<OpsSummary, sqlx::Error> {
    let now = state.now();
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("select status, count(*) from connection group by status")
            .fetch_all(&state.db)
            .await?;
    let by_health: Vec<(String, i64)> = sqlx::query_as(&format!(
        "select {HEALTH_SQL} as health, count(*) from connection group by 1"
    ))
    .bind(now)
    .fetch_all(&state.db)
    .await?;
    let mut connections_by_status: BTreeMap<String, i64> =
        ["active", "needs_reauth", "disconnected"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
    connections_by_status.extend(by_status);
    let mut connections_by_health: BTreeMap<String, i64> =
        ["ok", "degraded", "expiring", "failing"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
    connections_by_health.extend(by_health);
    let creds = state.broker.app_credentials();
    let rejected_last = match (creds.last_ok_at, creds.last_rejected_at) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(ok), Some(rejected)) => rejected > ok,
    };
    Ok(OpsSummary {
        connections_by_status,
        connections_by_health,
        app_credentials: AppCredentials {
            configured_secrets: state.config.lwa_client_secrets.len(),
            secret_in_use: creds.last_ok_secret_index.map(|i| {
                if i == 0 {
                    "current"
                } else {
                    "previous"
                }
            }),
            last_worked_at: creds.last_ok_at,
            last_rejected_at: creds.last_rejected_at,
            state: if rejected_last {
                "rejected"
            } else if creds.last_ok_at.is_some() {
                "ok"
            } else {
                "unknown"
            },
        },
        refreshes_last_hour: refresh_outcomes(&state.db, now - Duration::hours(1)).await?,
        refreshes_last_day: refresh_outcomes(&state.db, now - Duration::days(1)).await?,
    })
}

/// Operator summary. Scope: `tenants:admin`.
#[utoipa::path(get, path = "/v1/ops/summary", tag = "ops",
    responses((status = 200, body = OpsSummary)), security(("api_key" = ["tenants:admin"])))]
pub async fn summary(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<OpsSummary>, ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    Ok(Json(build_summary(&state).await?))
}
