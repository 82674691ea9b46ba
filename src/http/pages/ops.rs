//! `GET /ops`: the operator dashboard (a session from `sp-broker ops-link`).
//! Counts by status and health, the connections that need attention and why,
//! refresh outcomes and LWA latency, the app's credential state.

use super::{check_origin, current_auth, render, BrowserAuth, PageError};
use crate::domain::{ConnectionStatus, Health};
use crate::http::pages::connections::{human_time, CsrfForm};
use crate::http::AppState;
use crate::ops_summary::RefreshOutcomes;
use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Redirect, Response};
use axum::Form;
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
    status: ConnectionStatus,
    health: Health,
    status_reason: Option<String>,
    last_error_message: Option<String>,
    status_changed_at: OffsetDateTime,
    last_error_at: Option<OffsetDateTime>,
    authorized_at: Option<OffsetDateTime>,
    authorization_expires_at: Option<OffsetDateTime>,
}

pub struct Attention {
    id: Uuid,
    tenant: String,
    selling_partner_id: String,
    region: String,
    status: &'static str,
    health: &'static str,
    reason: String,
    since: String,
}

/// One client secret on the dashboard (never its value).
pub struct SecretLine {
    id: String,
    source: &'static str,
    created: String,
    expires: String,
    days_left: String,
    last_worked: String,
    last_rejected: String,
    in_use: bool,
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
    secrets: Vec<SecretLine>,
    /// When the secret in use expires within 30 days.
    secret_banner: Option<String>,
    secret_days_left: i64,
    last_worked: String,
    last_rejected: String,
    refresh_windows: Vec<RefreshWindow>,
    attention: Vec<Attention>,
    /// The filters as given, for the form.
    filter_tenant: String,
    filter_status: String,
    filter_health: String,
    /// Each choice of the status and health lists, and whether it is the one given.
    status_options: Vec<(&'static str, bool)>,
    health_options: Vec<(&'static str, bool)>,
    filter_q: String,
    /// The next page's query string, when there is one.
    next_page: Option<String>,
    fuse_tripped: bool,
    fuse_since: String,
    webhooks_configured: bool,
    webhooks_pending: i64,
    webhooks_retrying: i64,
    webhooks_failed: i64,
    webhooks_last_error: String,
    csrf_token: String,
    /// Server-rendered SVG (see `charts`): numbers and fixed labels only.
    refresh_chart: super::charts::Svg,
    latency_chart: super::charts::Svg,
    consent_chart: super::charts::Svg,
    audit: Vec<AuditRow>,
    filter_audit_tenant: String,
    filter_audit_connection: String,
}

/// An audit log line on the dashboard.
pub struct AuditRow {
    at: String,
    actor: String,
    action: String,
    tenant: String,
    connection_id: Option<Uuid>,
    detail: String,
}

/// Audit entries shown on the dashboard.
const AUDIT_SHOWN: i64 = 50;

/// Connections listed per page.
const PAGE: i64 = 50;

/// `/ops` filters, as the form sends them (every field optional).
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct OpsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// A health, `all`, or (empty) the connections that need attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// A selling partner id, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// The keyset cursor of the next page: `{unix nanos}.{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// The audit log's filters: a tenant slug and a connection id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_connection: Option<String>,
}

/// The filters, checked.
struct Filters {
    tenant: Option<String>,
    status: Option<ConnectionStatus>,
    /// `None`: every health but ok; `Some(None)`: all.
    health: Option<Option<Health>>,
    selling_partner_id: Option<String>,
    after: Option<(OffsetDateTime, Uuid)>,
    audit_tenant: Option<String>,
    audit_connection: Option<Uuid>,
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl OpsQuery {
    fn filters(&self) -> Result<Filters, PageError> {
        let bad = |what: &str| {
            PageError::new(
                StatusCode::BAD_REQUEST,
                "Unknown filter",
                format!("{what} Go back to the dashboard and pick from the lists."),
            )
        };
        let status = match given(&self.status) {
            None => None,
            Some(s) => Some(s.parse().map_err(|_| {
                bad("That status is not one of active, needs_reauth or disconnected.")
            })?),
        };
        let health = match given(&self.health) {
            None => None,
            Some("all") => Some(None),
            Some(h) => Some(Some(h.parse().map_err(|_| {
                bad("That health is not one of ok, degraded, expiring or failing.")
            })?)),
        };
        let after = match given(&self.after) {
            None => None,
            Some(raw) => Some(
                decode_after(raw)
                    .ok_or_else(|| bad("That page link is not one this dashboard made."))?,
            ),
        };
        let audit_connection = match given(&self.audit_connection) {
            None => None,
            Some(raw) => Some(
                raw.parse()
                    .map_err(|_| bad("That connection id is not a connection id."))?,
            ),
        };
        // Text that PostgreSQL would refuse (NUL) or no id holds.
        for text in [&self.tenant, &self.q, &self.audit_tenant] {
            if given(text).is_some_and(|t| t.len() > 200 || t.chars().any(char::is_control)) {
                return Err(bad("That search holds control characters or is too long."));
            }
        }
        Ok(Filters {
            audit_tenant: given(&self.audit_tenant).map(str::to_owned),
            audit_connection,
            tenant: given(&self.tenant).map(str::to_owned),
            status,
            health,
            selling_partner_id: given(&self.q).map(str::to_owned),
            after,
        })
    }

    /// The same filters from `after` on: the next page's query string.
    fn next(&self, after: (OffsetDateTime, Uuid)) -> String {
        let next = OpsQuery {
            after: Some(format!("{}.{}", after.0.unix_timestamp_nanos(), after.1)),
            tenant: given(&self.tenant).map(str::to_owned),
            status: given(&self.status).map(str::to_owned),
            health: given(&self.health).map(str::to_owned),
            q: given(&self.q).map(str::to_owned),
            audit_tenant: given(&self.audit_tenant).map(str::to_owned),
            audit_connection: given(&self.audit_connection).map(str::to_owned),
        };
        serde_urlencoded::to_string(&next).unwrap_or_default()
    }
}

fn decode_after(raw: &str) -> Option<(OffsetDateTime, Uuid)> {
    let (nanos, id) = raw.split_once('.')?;
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
    Some((at, id.parse().ok()?))
}

/// A page of the list, newest status change first, and the next page's
/// cursor when there is one.
async fn attention(
    state: &AppState,
    now: OffsetDateTime,
    filters: &Filters,
) -> Result<(Vec<Attention>, Option<(OffsetDateTime, Uuid)>), sqlx::Error> {
    let (any_health, health) = match filters.health {
        None => (false, None),
        Some(None) => (true, None),
        Some(Some(h)) => (false, Some(h)),
    };
    let mut rows: Vec<AttentionRow> = sqlx::query_as(
        "select * from (
             select c.id, t.slug as tenant, c.selling_partner_id, c.region, c.status,
                    connection_health(c.status, c.last_error_code, c.authorization_expires_at, $1) as health,
                    c.status_reason, c.last_error_message, c.status_changed_at, c.last_error_at,
                    c.authorized_at, c.authorization_expires_at
             from connection c join tenant t on t.id = c.tenant_id
             where ($2::text is null or c.tenant_id = (select id from tenant where slug = $2))
               and ($3::text is null or c.status = $3)
               and ($4::text is null or c.selling_partner_id = $4)
               and ($5::timestamptz is null or (c.status_changed_at, c.id) < ($5, $6))
         ) c
         where case when $7 then true when $8::text is null then health <> 'ok' else health = $8 end
         order by status_changed_at desc, id desc
         limit $9",
    )
    .bind(now)
    .bind(&filters.tenant)
    .bind(filters.status)
    .bind(&filters.selling_partner_id)
    .bind(filters.after.map(|a| a.0))
    .bind(filters.after.map(|a| a.1))
    .bind(any_health)
    .bind(health)
    .bind(PAGE + 1)
    .fetch_all(&state.db)
    .await?;
    let next = (rows.len() as i64 > PAGE).then(|| {
        rows.truncate(PAGE as usize);
        rows.last().map(|r| (r.status_changed_at, r.id))
    });
    Ok((
        rows.into_iter()
            .map(|r| {
                let (reason, since) = match (r.status, r.health) {
                    (ConnectionStatus::Disconnected, _) => (
                        "disconnected on request".to_owned(),
                        Some(r.status_changed_at),
                    ),
                    (_, health) => match health {
                        Health::Failing => (
                            r.last_error_message
                                .or(r.status_reason)
                                .unwrap_or_else(|| "needs reauthorization".into()),
                            Some(r.status_changed_at),
                        ),
                        Health::Degraded => (
                            r.last_error_message
                                .unwrap_or_else(|| "last refresh failed".into()),
                            r.last_error_at,
                        ),
                        Health::Expiring => (
                            format!(
                                "authorization ends {}: the seller must reconnect",
                                human_time(r.authorization_expires_at)
                            ),
                            r.authorized_at,
                        ),
                        Health::Ok => ("—".to_owned(), Some(r.status_changed_at)),
                    },
                };
                Attention {
                    id: r.id,
                    tenant: r.tenant,
                    selling_partner_id: r.selling_partner_id,
                    region: r.region,
                    status: r.status.as_str(),
                    health: r.health.as_str(),
                    reason,
                    since: human_time(since),
                }
            })
            .collect(),
        next.flatten(),
    ))
}

/// The operator signed in to this browser, if any.
async fn operator(state: &AppState, session: &Session) -> Result<BrowserAuth, PageError> {
    let auth = current_auth(state, session).await?;
    auth.filter(|a| a.tenant_id.is_none()).ok_or_else(|| {
        PageError::new(
            StatusCode::UNAUTHORIZED,
            "Operators only",
            "Open this dashboard with a link from `sp-broker ops-link`.",
        )
    })
}

/// `GET /ops`
pub async fn ops_page(
    State(state): State<AppState>,
    session: Session,
    query: Result<axum::extract::Query<OpsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let auth = operator(&state, &session).await?;
    let axum::extract::Query(query) = query.map_err(|_| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            "Unknown filter",
            "This dashboard address has parameters it does not know.",
        )
    })?;
    let filters = query.filters()?;
    let now = state.now();
    let ((attention, next), summary, last_day, audit) = tokio::try_join!(
        attention(&state, now, &filters),
        state.summaries.summary(),
        state.summaries.last_day(),
        crate::db::audit::list_recent(
            &state.db,
            filters.audit_tenant.as_deref(),
            filters.audit_connection,
            AUDIT_SHOWN,
        ),
    )?;
    let audit = audit
        .into_iter()
        .map(|a| AuditRow {
            at: human_time(Some(a.at)),
            actor: a.actor,
            action: a.action,
            tenant: a.tenant.unwrap_or_else(|| "—".to_owned()),
            connection_id: a.connection_id,
            detail: a.detail.to_string(),
        })
        .collect();
    let (app_state, app_message) = match summary.app_credentials.state {
        "rejected" => ("rejected", "Amazon REJECTED every client secret of the app. Refreshes are held app-wide (one probe at a time) until a secret works: rotate or fix SP_BROKER_LWA_CLIENT_SECRET. Sellers' statuses are not touched."),
        "ok" => ("ok", "Amazon accepted the app's client secret the last time it was used."),
        _ => ("unknown", "No call with the app's client secret has been made yet."),
    };
    let app = crate::app_secrets::status(state.broker.credentials());
    let days_left = |at: Option<time::OffsetDateTime>| at.map(|at| (at - now).whole_days());
    let in_use_days = app
        .secrets
        .iter()
        .find(|s| s.in_use)
        .and_then(|s| days_left(s.expires_at));
    let secret_banner = in_use_days.filter(|days| *days < 30).map(|days| {
        format!(
            "The app's client secret in use expires in {days} day{}: rotate it now (the button below, or `sp-broker app rotate-secret`). Amazon refuses an expired secret, and then every seller's refresh fails at once.",
            if days == 1 { "" } else { "s" }
        )
    });
    let secrets = app
        .secrets
        .iter()
        .map(|s| SecretLine {
            id: s.id.to_string(),
            source: s.source.as_str(),
            created: human_time(Some(s.created_at)),
            expires: human_time(s.expires_at),
            days_left: match days_left(s.expires_at) {
                Some(days) if days < 0 => "expired".to_owned(),
                Some(days) => days.to_string(),
                None => "—".to_owned(),
            },
            last_worked: human_time(s.last_worked_at),
            last_rejected: human_time(s.last_rejected_at),
            in_use: s.in_use,
        })
        .collect();
    render(&OpsPage {
        operator: auth.user_id.clone(),
        generated_at: human_time(Some(now)),
        secrets,
        secret_banner,
        secret_days_left: in_use_days.unwrap_or(i64::MAX),
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
        attention,
        filter_tenant: given(&query.tenant).unwrap_or_default().to_owned(),
        filter_status: given(&query.status).unwrap_or_default().to_owned(),
        filter_health: given(&query.health).unwrap_or_default().to_owned(),
        filter_q: given(&query.q).unwrap_or_default().to_owned(),
        status_options: ["active", "needs_reauth", "disconnected"]
            .map(|s| (s, given(&query.status) == Some(s)))
            .to_vec(),
        health_options: ["failing", "degraded", "expiring", "ok", "all"]
            .map(|h| (h, given(&query.health) == Some(h)))
            .to_vec(),
        next_page: next.map(|after| query.next(after)),
        fuse_tripped: summary.invalid_grant_fuse.tripped,
        fuse_since: human_time(summary.invalid_grant_fuse.tripped_at),
        webhooks_configured: summary.webhook_deliveries.configured,
        webhooks_pending: summary.webhook_deliveries.pending,
        webhooks_retrying: summary.webhook_deliveries.retrying,
        webhooks_failed: summary.webhook_deliveries.failed,
        webhooks_last_error: match &summary.webhook_deliveries.last_error {
            Some(error) => format!(
                "{error} ({})",
                human_time(summary.webhook_deliveries.last_error_at)
            ),
            None => "None".to_owned(),
        },
        csrf_token: auth.csrf_token,
        refresh_chart: super::charts::refresh_outcomes(&last_day.hours),
        latency_chart: super::charts::lwa_latency(&last_day.hours),
        consent_chart: super::charts::consent_funnel(&last_day.consent),
        audit,
        filter_audit_tenant: given(&query.audit_tenant).unwrap_or_default().to_owned(),
        filter_audit_connection: given(&query.audit_connection)
            .unwrap_or_default()
            .to_owned(),
    })
}

/// An operator's form post: signed in as an operator, from our origin, with
/// the session's CSRF token.
async fn operator_form(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    form: &CsrfForm,
) -> Result<BrowserAuth, PageError> {
    let auth = operator(state, session).await?;
    check_origin(state, headers)?;
    if !crate::secrets::constant_time_eq(&form.csrf_token, &auth.csrf_token) {
        return Err(PageError::forbidden());
    }
    Ok(auth)
}

/// `POST /ops/fuse/clear`: an operator ends a tripped `invalid_grant` fuse.
pub async fn clear_fuse_post(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    let auth = operator_form(&state, &session, &headers, &form).await?;
    state
        .summaries
        .clear_fuse(&format!("operator:{}", auth.user_id))
        .await?;
    Ok(axum::response::IntoResponse::into_response(Redirect::to(
        "/ops",
    )))
}

/// `POST /ops/app/rotate-secret`: asks Amazon for a new client secret.
pub async fn rotate_secret_post(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    let auth = operator_form(&state, &session, &headers, &form).await?;
    let actor = format!("operator:{}", auth.user_id);
    let caller = crate::api_keys::ApiPrincipal::operator(&actor);
    crate::app_secrets::request_rotation(&state.broker, &state.spapi, &caller, &actor)
        .await
        .map_err(|e| {
            PageError::new(
                StatusCode::BAD_GATEWAY,
                "The rotation was not requested",
                format!("Nothing changed: {e}. The secrets in use keep working; try again, or run `sp-broker app rotate-secret`."),
            )
        })?;
    Ok(axum::response::IntoResponse::into_response(Redirect::to(
        "/ops",
    )))
}

/// A refresh or an audit entry, as the connection page lists them.
pub struct HistoryLine {
    at: String,
    what: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "ops_connection.html")]
struct OpsConnectionPage {
    operator: String,
    c: crate::connections::ConnectionJson,
    authorized_at: String,
    authorization_expires_at: String,
    last_refresh_at: String,
    last_error: String,
    marketplaces: String,
    refreshes: Vec<HistoryLine>,
    audit: Vec<HistoryLine>,
}

/// How many refreshes the connection page lists.
const REFRESHES_SHOWN: i64 = 50;

/// `GET /ops/connections/{id}`: one connection for an operator, with its
/// refresh history and audit entries. Never a token.
pub async fn ops_connection_page(
    State(state): State<AppState>,
    session: Session,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, PageError> {
    let auth = operator(&state, &session).await?;
    let not_found = || {
        PageError::new(
            StatusCode::NOT_FOUND,
            "No such connection",
            "There is no connection with this id.",
        )
    };
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let (row, tenant) = state.connections.find(id).await?.ok_or_else(not_found)?;
    let refreshes = crate::db::connections::recent_refreshes(&state.db, id, REFRESHES_SHOWN)
        .await?
        .into_iter()
        .map(|r| HistoryLine {
            at: human_time(Some(r.at)),
            what: r.outcome,
            detail: format!("{} ms at LWA", r.latency_ms),
        })
        .collect();
    let audit = crate::db::audit::list_for_connection(&state.db, id)
        .await?
        .into_iter()
        .rev()
        .map(|a| HistoryLine {
            at: human_time(Some(a.at)),
            what: a.action,
            detail: format!("by {}: {}", a.actor, a.detail),
        })
        .collect();
    let c = crate::connections::ConnectionJson::new(row, &tenant.slug);
    let last_error = match &c.last_error {
        Some(e) => format!("{}: {} ({})", e.code, e.message, human_time(Some(e.at))),
        None => "None".to_owned(),
    };
    let marketplaces = c
        .marketplace_ids
        .as_ref()
        .map_or_else(|| "Not verified yet".to_owned(), |ids| ids.join(", "));
    render(&OpsConnectionPage {
        operator: auth.user_id.clone(),
        authorized_at: human_time(c.authorized_at),
        authorization_expires_at: human_time(c.authorization_expires_at),
        last_refresh_at: human_time(c.last_refresh_at),
        last_error,
        marketplaces,
        c,
        refreshes,
        audit,
    })
}
