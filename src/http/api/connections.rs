//! `/v1/tenants/{slug}/connections`, `/v1/connections/{id}`, and the
//! Connection as the API shows it (CONTRACT §3). Never a token.

use super::{ApiError, Caller};
use crate::api_keys::Scope;
use crate::connections::Connections;
use crate::db::connections::ConnectionRow;
use crate::db::tenants::Tenant;
use crate::domain::ConnectionStatus;
use crate::tenants::Tenants;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 200;

pub use crate::connections::{ConnectionJson, LastError};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `active`, `needs_reauth` or `disconnected`.
    pub status: Option<String>,
    /// At most 64 characters, no control characters.
    #[param(max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub selling_partner_id: Option<String>,
    /// 1–200, default 50.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
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
    tenants: &Tenants,
    caller: &Caller,
    slug: &str,
) -> Result<Tenant, ApiError> {
    match tenants.find_by_slug(slug).await? {
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
    State(connections): State<Arc<Connections>>,
    State(tenants): State<Arc<Tenants>>,
    caller: Caller,
    Path(slug): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<ConnectionPage>, ApiError> {
    caller.require(Scope::ConnectionsRead)?;
    let limit = super::page_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<ConnectionStatus>().map_err(|_| {
            ApiError::invalid_request("`status` must be active, needs_reauth or disconnected")
        })?),
    };
    let after =
        match query.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                ApiError::invalid_request("`cursor` is not a cursor this API gave")
            })?),
        };
    let tenant = visible_tenant(&tenants, &caller, &slug).await?;
    let spid = query
        .selling_partner_id
        .as_deref()
        .filter(|s| !s.is_empty());
    if spid.is_some_and(|s| s.len() > 64 || s.chars().any(char::is_control)) {
        return Err(ApiError::invalid_request(
            "`selling_partner_id` must be at most 64 characters, without control characters",
        ));
    }
    let page = connections
        .page(tenant.id, status, spid, after, limit)
        .await?;
    Ok(Json(ConnectionPage {
        items: page
            .rows
            .into_iter()
            .map(|r| ConnectionJson::new(r, &tenant.slug))
            .collect(),
        next_cursor: page.next.map(|(at, id)| encode_cursor(at, id)),
    }))
}

/// The connection, if this key may see it; else 404 (another tenant's
/// connection looks exactly like a missing one).
async fn visible_connection(
    connections: &Connections,
    caller: &Caller,
    id: &str,
) -> Result<(ConnectionRow, Tenant), ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::connection_not_found())?;
    connections
        .find(id)
        .await?
        .filter(|(row, _)| caller.0.can_see_tenant(row.tenant_id))
        .ok_or_else(ApiError::connection_not_found)
}

/// One connection. Scope: `connections:read`.
#[utoipa::path(get, path = "/v1/connections/{id}", tag = "connections",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ConnectionJson), (status = 404, description = "connection_not_found")),
    security(("api_key" = ["connections:read"])))]
pub async fn get_connection(
    State(connections): State<Arc<Connections>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ConnectionJson>, ApiError> {
    caller.require(Scope::ConnectionsRead)?;
    let (row, tenant) = visible_connection(&connections, &caller, &id).await?;
    Ok(Json(ConnectionJson::new(row, &tenant.slug)))
}

/// Erases the stored tokens; status becomes `disconnected`. Scope: `connections:manage`.
#[utoipa::path(delete, path = "/v1/connections/{id}", tag = "connections",
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, description = "connection_not_found")),
    security(("api_key" = ["connections:manage"])))]
pub async fn delete_connection(
    State(connections): State<Arc<Connections>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::ConnectionsManage)?;
    let (row, _) = visible_connection(&connections, &caller, &id).await?;
    connections
        .disconnect(row.tenant_id, row.id, &caller.0.actor())
        .await?
        .ok_or_else(ApiError::connection_not_found)?;
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
