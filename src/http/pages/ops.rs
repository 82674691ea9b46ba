//! `GET /ops`: the operator dashboard (a session from `sp-broker ops-link`).
//! Counts by status and health, the connections that need attention and why,
//! refresh outcomes and LWA latency, the app's credential state.

use super::{current_auth, render, PageError};
use crate::app::AppState;
use crate::http::api::ops::{build_summary, RefreshOutcomes, HEALTH_SQL};
use crate::http::pages::connections::human_time;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use time::OffsetDateTime;
use tower_sessions::Session;
use uuid::Uuid;

pub struct RefreshWindow {
    label: &'static str,
    ok: i64,
    invalid_grant: i64,
    rejected: i64,
    unavailable: i64,
    latency: String,
}

fn window(label: &'static str, r: &RefreshOutcomes) -> RefreshWindow {
    let get = |k: &str| r.outcomes.get(k).copied().unwrap_or(0);
    RefreshWindow {
        label,
        ok: get("ok"),
        invalid_grant: get("invalid_grant"),
        rejected: get("app_credentials_rejected"),
        unavailable: get("amazon_unavailable"),
        latency: r
            .mean_latency_ms
            .map(|ms| format!("{ms:.0} ms"))
            .unwrap_or_else(|| "—".into()),
    }
}

#[derive(sqlx::FromRow)]
struct AttentionRow {
    id: Uuid,
    tenant: String,
    selling_partner_id: String,
    region: String,
    health: String,
    status_reason: Option<String>,
    last_error_message: Option<String>,
    status_changed_at: OffsetDateTime,
    last_error_at: Option<OffsetDateTime>,
    authorized_at: Option<OffsetDateTime>,
}

pub struct Attention {
    id: Uuid,
    tenant: String,
    selling_partner_id: String,
    region: String,
    health: String,
    reason: String,
    since: String,
}

#[derive(Template)]
#[template(path = "ops.html")]
struct OpsPage {
    operator: String,
    generated_at: String,
    by_status: Vec<(String, i64)>,
    by_health: Vec<(String, i64)>,
    app_state: &'static str,
    app_message: &'static str,
    configured_secrets: usize,
    last_worked: String,
    last_rejected: String,
    refresh_windows: Vec<RefreshWindow>,
    attention: Vec<Attention>,
}

async fn attention(state: &AppState, now: OffsetDateTime) -> Result<Vec<Attention>, sqlx::Error> {
    let rows: Vec<AttentionRow> = sqlx::query_as(&format!(
        "select c.id, t.slug as tenant, c.selling_partner_id, c.region, {HEALTH_SQL} as health,
                c.status_reason, c.last_error_message, c.status_changed_at, c.last_error_at, c.authorized_at
         from connection c join tenant t on t.id = c.tenant_id
         where c.status = 'needs_reauth'
            or (c.status = 'active' and (c.last_error_code = 'amazon_unavailable'
                or c.authorized_at + interval '365 days' - $1 <= interval '30 days'))
         order by c.status_changed_at desc limit 500"
    ))
    .bind(now)
    .fetch_all(&state.db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let (reason, since) = match r.health.as_str() {
                "failing" => (
                    r.last_error_message
                        .or(r.status_reason)
                        .unwrap_or_else(|| "needs reauthorization".into()),
                    Some(r.status_changed_at),
                ),
                "degraded" => (
                    r.last_error_message
                        .unwrap_or_else(|| "last refresh failed".into()),
                    r.last_error_at,
                ),
                _ => {
                    let ends = r
                        .authorized_at
                        .map(|at| at + crate::connections::AUTHORIZATION_LIFETIME);
                    (
                        format!(
                            "authorization ends {}: the seller must reconnect",
                            human_time(ends)
                        ),
                        r.authorized_at,
                    )
                }
            };
            Attention {
                id: r.id,
                tenant: r.tenant,
                selling_partner_id: r.selling_partner_id,
                region: r.region,
                health: r.health,
                reason,
                since: human_time(since),
            }
        })
        .collect())
}

/// `GET /ops`
pub async fn ops_page(
    State(state): State<AppState>,
    session: Session,
) -> Result<Response, PageError> {
    let auth = current_auth(&state, &session).await?;
    let Some(auth) = auth.filter(|a| a.tenant_id.is_none()) else {
        return Err(PageError::new(
            StatusCode::UNAUTHORIZED,
            "Operators only",
            "Open this dashboard with a link from `sp-broker ops-link`.",
        ));
    };
    let now = state.now();
    let summary = build_summary(&state).await?;
    let (app_state, app_message) = match summary.app_credentials.state {
        "rejected" => ("rejected", "Amazon REJECTED the app's client secret the last time it was used. Rotate or fix SP_BROKER_LWA_CLIENT_SECRET: no seller can get fresh tokens until then."),
        "ok" => ("ok", "Amazon accepted the app's client secret the last time it was used."),
        _ => ("unknown", "This instance has not called Amazon with the app's client secret yet."),
    };
    render(&OpsPage {
        operator: auth.user_id,
        generated_at: human_time(Some(now)),
        by_status: summary.connections_by_status.into_iter().collect(),
        by_health: summary.connections_by_health.into_iter().collect(),
        app_state,
        app_message,
        configured_secrets: summary.app_credentials.configured_secrets,
        last_worked: human_time(summary.app_credentials.last_worked_at),
        last_rejected: human_time(summary.app_credentials.last_rejected_at),
        refresh_windows: vec![
            window("last hour", &summary.refreshes_last_hour),
            window("last day", &summary.refreshes_last_day),
        ],
        attention: attention(&state, now).await?,
    })
}
