//! `/v1/tenants/{slug}/connections`, `/v1/connections/{id}`.

use super::{ApiError, Caller};
use crate::api_keys::Scope;
use crate::app::AppState;
use crate::connections::ConnectionJson;
use crate::db::audit::{self, AuditTarget};
use crate::db::{connections, tenants};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 200;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `active`, `needs_reauth` or `disconnected`.
    pub status: Option<String>,
    pub selling_partner_id: Option<String>,
    /// 1–200, default 50.
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionPage {
    pub items: Vec<ConnectionJson>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

fn encode_cursor(at: OffsetDateTime, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.unix_timestamp_nanos()))
}

fn decode_cursor(cursor: &str) -> Option<(OffsetDateTime, Uuid)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (nanos, id) = raw.split_once('|')?;
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
    Some((at, Uuid::parse_str(id).ok()?))
}

/// The tenant named in the path, if this key may see it (else 404 `tenant_not_found`).
pub async fn visible_tenant(
    state: &AppState,
    caller: &Caller,
    slug: &str,
) -> Result<tenants::Tenant, ApiError> {
    match tenants::find_tenant_by_slug(&state.db, slug).await? {
        Some(t) if caller.0.can_see_tenant(t.id) => Ok(t),
        _ => Err(ApiError::tenant_not_found()),
    }
}

/// Lists a tenant's connections. Scope: `connections:read`.
#[utoipa::path(get, path = "/v1/tenants/{slug}/connections", tag = "connections",
    params(("slug" = String, Path, description = "tenant slug"), ListQuery),
    responses((status = 200, body = ConnectionPage), (status = 404, description = "tenant_not_found"), (status = 422, description = "invalid_request")),
    security(("api_key" = ["connections:read"])))]
pub async fn list_connections(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<ConnectionPage>, ApiError> {
    caller.require(Scope::ConnectionsRead)?;
    let limit = match query.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::invalid_request("`limit` must be an integer from 1 to 200"))?,
    };
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s @ ("active" | "needs_reauth" | "disconnected")) => Some(s),
        Some(_) => {
            return Err(ApiError::invalid_request(
                "`status` must be active, needs_reauth or disconnected",
            ))
        }
    };
    let after =
        match query.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                ApiError::invalid_request("`cursor` is not a cursor this API gave")
            })?),
        };
    let tenant = visible_tenant(&state, &caller, &slug).await?;
    let spid = query
        .selling_partner_id
        .as_deref()
        .filter(|s| !s.is_empty());
    let mut rows =
        connections::list_page(&state.db, tenant.id, status, spid, after, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.created_at, r.id))
    } else {
        None
    };
    let now = state.now();
    Ok(Json(ConnectionPage {
        items: rows
            .into_iter()
            .map(|r| ConnectionJson::new(r, &tenant.slug, now))
            .collect(),
        next_cursor,
    }))
}

/// The connection, if this key may see it; else 404 (another tenant's
/// connection looks exactly like a missing one).
async fn visible_connection(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(connections::ConnectionRow, tenants::Tenant), ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::connection_not_found())?;
    let row = connections::find(&state.db, id)
        .await?
        .filter(|r| caller.0.can_see_tenant(r.tenant_id))
        .ok_or_else(ApiError::connection_not_found)?;
    let tenant = tenants::find_tenant(&state.db, row.tenant_id)
        .await?
        .ok_or_else(ApiError::connection_not_found)?;
    Ok((row, tenant))
}

/// One connection. Scope: `connections:read`.
#[utoipa::path(get, path = "/v1/connections/{id}", tag = "connections",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ConnectionJson), (status = 404, description = "connection_not_found")),
    security(("api_key" = ["connections:read"])))]
pub async fn get_connection(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ConnectionJson>, ApiError> {
    caller.require(Scope::ConnectionsRead)?;
    let (row, tenant) = visible_connection(&state, &caller, &id).await?;
    Ok(Json(ConnectionJson::new(row, &tenant.slug, state.now())))
}

/// Erases the stored tokens; status becomes `disconnected`. Scope: `connections:manage`.
#[utoipa::path(delete, path = "/v1/connections/{id}", tag = "connections",
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, description = "connection_not_found")),
    security(("api_key" = ["connections:manage"])))]
pub async fn delete_connection(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::ConnectionsManage)?;
    let (row, _) = visible_connection(&state, &caller, &id).await?;
    let now = state.now();
    let mut tx = state.db.begin().await?;
    connections::disconnect(&mut *tx, row.tenant_id, row.id, now).await?;
    audit::record(
        &mut *tx,
        now,
        &caller.0.actor(),
        "connection.disconnected",
        AuditTarget {
            tenant_id: Some(row.tenant_id),
            connection_id: Some(row.id),
        },
        serde_json::json!({ "previous_status": row.status }),
    )
    .await?;
    connections::notify_changed(&mut *tx, row.id).await?;
    tx.commit().await?;
    state.broker.forget(row.id);
    tracing::info!(connection = %row.id, "connection disconnected through the API; stored tokens erased");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_790_000_000_123_456_789)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let id = Uuid::new_v4();
        assert_eq!(decode_cursor(&encode_cursor(at, id)), Some((at, id)));
        assert_eq!(decode_cursor("not a cursor"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("1|x")), None);
    }
}
