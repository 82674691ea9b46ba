//! `/v1/tenants` and login links.

use super::connections::visible_tenant;
use super::{parse_body, ApiBody, ApiError, Caller};
use crate::amazon::consent;
use crate::api_keys::Scope;
use crate::app::AppState;
use crate::db::login_tokens::LoginKind;
use crate::db::{self, tenants};
use crate::http::pages;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantJson {
    pub slug: String,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<tenants::Tenant> for TenantJson {
    fn from(t: tenants::Tenant) -> Self {
        TenantJson {
            slug: t.slug,
            name: t.name,
            created_at: t.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub items: Vec<TenantJson>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// `^[a-z0-9][a-z0-9-]{1,62}$`
    pub slug: String,
    pub name: Option<String>,
}

/// Every tenant. Scope: `tenants:admin`.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = TenantList)), security(("api_key" = ["tenants:admin"])))]
pub async fn list_tenants(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TenantList>, ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    let items = tenants::list_tenants(&state.db)
        .await?
        .into_iter()
        .map(TenantJson::from)
        .collect();
    Ok(Json(TenantList { items }))
}

/// Creates a tenant. Scope: `tenants:admin`.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant,
    responses((status = 201, body = TenantJson), (status = 409, description = "tenant_exists"), (status = 422, description = "invalid_request")),
    security(("api_key" = ["tenants:admin"])))]
pub async fn create_tenant(
    State(state): State<AppState>,
    caller: Caller,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<TenantJson>), ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    let request: CreateTenant = parse_body(&body)?;
    if !tenants::is_valid_slug(&request.slug) {
        return Err(ApiError::invalid_request(
            "`slug` must match ^[a-z0-9][a-z0-9-]{1,62}$",
        ));
    }
    let name = request
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(&request.slug);
    if name.len() > 200 {
        return Err(ApiError::invalid_request(
            "`name` must be at most 200 characters",
        ));
    }
    match tenants::insert_tenant(&state.db, &request.slug, name, state.now()).await {
        Ok(t) => {
            tracing::info!(tenant = %t.slug, actor = %caller.0.actor(), "tenant created");
            Ok((StatusCode::CREATED, Json(t.into())))
        }
        Err(e) if db::is_unique_violation(&e) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant_exists",
            "Tenant exists",
            "A tenant with this slug already exists.",
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLoginLink {
    /// The embedding app's id for the signed-in user.
    pub user_id: String,
    pub email: Option<String>,
    /// A path on this broker to land on (e.g. the Login URI with its query).
    pub return_to: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginLink {
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A one-time link (10 minutes) that signs the user in to the tenant's
/// Settings → Connections. Scope: `connections:manage`.
#[utoipa::path(post, path = "/v1/tenants/{slug}/login-links", tag = "tenants", request_body = CreateLoginLink,
    params(("slug" = String, Path)),
    responses((status = 201, body = LoginLink), (status = 404, description = "tenant_not_found"), (status = 422, description = "invalid_request")),
    security(("api_key" = ["connections:manage"])))]
pub async fn create_login_link(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<LoginLink>), ApiError> {
    caller.require(Scope::ConnectionsManage)?;
    let request: CreateLoginLink = parse_body(&body)?;
    let user_id = request.user_id.trim();
    if user_id.is_empty() || user_id.len() > 200 {
        return Err(ApiError::invalid_request(
            "`user_id` must be 1 to 200 characters",
        ));
    }
    if request
        .email
        .as_ref()
        .is_some_and(|e| e.len() > 320 || !e.contains('@'))
    {
        return Err(ApiError::invalid_request("`email` is not an email address"));
    }
    let return_to = match request.return_to.as_deref() {
        None => None,
        Some(raw) => Some(
            consent::validate_return_to(&state.config, raw).ok_or_else(|| {
                ApiError::invalid_request("`return_to` must be a path on this broker (same origin)")
            })?,
        ),
    };
    let tenant = visible_tenant(&state, &caller, &slug).await?;
    let (url, expires_at) = pages::create_login_link(
        &state,
        LoginKind::Tenant,
        Some(tenant.id),
        user_id,
        request.email.as_deref(),
        return_to.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(LoginLink { url, expires_at })))
}
