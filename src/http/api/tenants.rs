//! `/v1/tenants` and login links.

use super::connections::visible_tenant;
use super::{parse_body, ApiBody, ApiError, Caller};
use crate::api_keys::Scope;
use crate::db::login_tokens::LoginKind;
use crate::db::tenants;
use crate::login_links::{LinkRequest, LoginLinkError, LoginLinks};
use crate::tenants::{CreateTenantError, Tenants};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
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
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{1,62}$")]
    pub slug: String,
    /// Defaults to the slug (also when empty); no control characters, no
    /// space at either end.
    #[schema(
        max_length = 200,
        pattern = "^(?:[^\\s\\u0000-\\u001f\\u007f-\\u009f](?:[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f])?)?$"
    )]
    pub name: Option<String>,
}

/// Every tenant. Scope: `tenants:admin`.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = TenantList)), security(("api_key" = ["tenants:admin"])))]
pub async fn list_tenants(
    State(tenants): State<Arc<Tenants>>,
    caller: Caller,
) -> Result<Json<TenantList>, ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    let items = tenants
        .list()
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
    State(tenants): State<Arc<Tenants>>,
    caller: Caller,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<TenantJson>), ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    let request: CreateTenant = parse_body(&body)?;
    match tenants.create(&request.slug, request.name.as_deref()).await {
        Ok(t) => {
            tracing::info!(tenant = %t.slug, actor = %caller.0.actor(), "tenant created through the API");
            Ok((StatusCode::CREATED, Json(t.into())))
        }
        Err(CreateTenantError::Invalid(invalid)) => Err(invalid.into()),
        Err(CreateTenantError::Exists) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant_exists",
            "Tenant exists",
            "A tenant with this slug already exists.",
        )),
        Err(CreateTenantError::Database(e)) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLoginLink {
    /// The embedding app's id for the signed-in user; no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\s\\u0000-\\u001f\\u007f-\\u009f](?:[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f])?$"
    )]
    pub user_id: String,
    #[schema(
        min_length = 1,
        max_length = 320,
        pattern = "^[^\\s\\u0000-\\u001f\\u007f-\\u009f](?:[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f])?$"
    )]
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
    State(tenants): State<Arc<Tenants>>,
    State(login_links): State<Arc<LoginLinks>>,
    caller: Caller,
    Path(slug): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<LoginLink>), ApiError> {
    caller.require(Scope::ConnectionsManage)?;
    let request: CreateLoginLink = parse_body(&body)?;
    let tenant = visible_tenant(&tenants, &caller, &slug).await?;
    let link = login_links
        .create(LinkRequest {
            kind: LoginKind::Tenant,
            tenant_id: Some(tenant.id),
            user_id: &request.user_id,
            email: request.email.as_deref(),
            return_to: request.return_to.as_deref(),
        })
        .await
        .map_err(|e| match e {
            LoginLinkError::Invalid(invalid) => ApiError::from(invalid),
            LoginLinkError::Database(e) => e.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(LoginLink {
            url: link.url,
            expires_at: link.expires_at,
        }),
    ))
}
