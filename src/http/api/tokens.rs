//! Access tokens, Restricted Data Tokens and grantless tokens. Every answer
//! carries `Cache-Control: no-store`.

use super::{parse_body, ApiBody, ApiError, Caller};
use crate::amazon::spapi::{self, RestrictedResource, SpApiError};
use crate::api_keys::Scope;
use crate::app::AppState;
use crate::broker::{IssuedToken, TokenError};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessTokenRequest {
    /// 0–3000, default 300: a cached token is returned only with at least this many seconds left.
    pub min_ttl_seconds: Option<i64>,
    /// Discard the cached token (Amazon rejected it) and obtain a new one; once per 30 s per connection.
    pub force_refresh: Option<bool>,
}

/// An LWA access token for one connection. Borrows from the cache: answering
/// copies the token only into the response body.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessToken<'a> {
    #[schema(value_type = String)]
    pub access_token: &'a RawValue,
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    /// RFC 3339, UTC.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: &'a str,
    pub expires_in: i64,
    pub connection_id: Uuid,
    pub selling_partner_id: &'a str,
    pub region: &'static str,
    /// The SP-API base URL to call for this connection.
    pub spapi_endpoint: &'a str,
    /// `amazon_unavailable` when a refresh failed and a still-valid cached token is returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_error: Option<&'static str>,
}

fn no_store(body: impl Serialize) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// An access-token answer, encoded into a buffer sized for it up front, with
/// room in its header map for the headers every response gets on the way out.
fn access_token_response(body: &AccessToken<'_>) -> Result<Response, ApiError> {
    let mut buffer = Vec::with_capacity(ACCESS_TOKEN_BODY_OVERHEAD + body.access_token.get().len());
    serde_json::to_writer(&mut buffer, body).map_err(crate::error::Error::from)?;
    let mut response = Response::new(Body::from(buffer));
    let headers = response.headers_mut();
    headers.reserve(RESPONSE_HEADERS);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Everything in an access-token answer but the token, with room to spare.
const ACCESS_TOKEN_BODY_OVERHEAD: usize = 512;
/// Content type, cache control, the security headers and the request id.
const RESPONSE_HEADERS: usize = 10;

pub fn token_error(state: &AppState, error: TokenError) -> ApiError {
    match error {
        TokenError::NotFound => ApiError::connection_not_found(),
        TokenError::Reauthorization { status, status_reason } => ApiError::new(
            StatusCode::CONFLICT,
            "reauthorization_required",
            "Reauthorization required",
            "The seller must reconnect this Amazon account in Settings → Connections.",
        )
        .with("connection_status", status)
        .with("status_reason", status_reason)
        .with("reconnect_url", format!("{}/settings/connections", state.config.public_url)),
        TokenError::RateLimited { retry_after_seconds, detail } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Rate limited", detail).retry_after(retry_after_seconds)
        }
        TokenError::AppCredentialsRejected => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "app_credentials_rejected",
            "App credentials rejected",
            "Amazon rejected the app's LWA client credentials (every configured secret). The sellers' authorizations are not affected; an operator must fix the app's client secret.",
        ),
        TokenError::AmazonUnavailable { retry_after_seconds } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "amazon_unavailable",
            "Amazon unavailable",
            "Amazon's token endpoint did not answer usefully and no cached token is good enough.",
        )
        .retry_after(retry_after_seconds),
        TokenError::Internal(e) => e.into(),
    }
}

fn parse_connection_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::connection_not_found())
}

/// A fresh or cached access token. Scope: `tokens:issue`.
#[utoipa::path(post, path = "/v1/connections/{id}/access-token", tag = "tokens", request_body = AccessTokenRequest,
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = AccessToken),
        (status = 401, description = "unauthenticated"), (status = 403, description = "insufficient_scope"),
        (status = 404, description = "connection_not_found"), (status = 409, description = "reauthorization_required"),
        (status = 422, description = "invalid_request"), (status = 429, description = "rate_limited"),
        (status = 502, description = "app_credentials_rejected"), (status = 503, description = "amazon_unavailable")),
    security(("api_key" = ["tokens:issue"])))]
pub async fn access_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    caller.require(Scope::TokensIssue)?;
    let request: AccessTokenRequest = parse_body(&body)?;
    let min_ttl = request.min_ttl_seconds.unwrap_or(300);
    if !(0..=3000).contains(&min_ttl) {
        return Err(ApiError::invalid_request(
            "`min_ttl_seconds` must be from 0 to 3000",
        ));
    }
    let connection_id = parse_connection_id(&id)?;
    let issued = state
        .broker
        .access_token(
            &state,
            &caller.0,
            connection_id,
            Duration::seconds(min_ttl),
            request.force_refresh.unwrap_or(false),
            state.now(),
        )
        .await
        .map_err(|e| token_error(&state, e))?;
    access_token_response(&access_token_json(&state, connection_id, &issued))
}

fn access_token_json<'a>(
    state: &'a AppState,
    connection_id: Uuid,
    issued: &'a IssuedToken,
) -> AccessToken<'a> {
    AccessToken {
        access_token: issued.access_token_json(),
        token_type: "bearer",
        expires_in: issued.expires_in(),
        expires_at: issued.expires_at_rfc3339(),
        connection_id,
        selling_partner_id: issued.selling_partner_id(),
        region: issued.region().as_str(),
        spapi_endpoint: state.config.spapi_endpoint(issued.region()),
        refresh_error: issued.refresh_error,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestrictedResourceJson {
    /// GET, PUT, POST, DELETE or PATCH.
    pub method: String,
    /// An SP-API path, e.g. `/orders/v0/orders`.
    pub path: String,
    pub data_elements: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RdtRequest {
    /// 1 to 50 resources.
    pub restricted_resources: Vec<RestrictedResourceJson>,
    pub target_application: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RdtAnswer {
    pub restricted_data_token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub expires_in: i64,
}

fn spapi_error(error: SpApiError) -> ApiError {
    match error {
        SpApiError::Throttled => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "amazon_unavailable", "Amazon unavailable",
            "SP-API throttled the Tokens API call (429).").retry_after(1),
        SpApiError::Unavailable => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "amazon_unavailable", "Amazon unavailable",
            "SP-API could not be reached or answered garbage.").retry_after(2),
        SpApiError::Unauthorized => ApiError::new(StatusCode::BAD_GATEWAY, "spapi_refused", "SP-API refused",
            "SP-API refused the connection's access token for the Tokens API (403); the app may lack the role for these data elements."),
        SpApiError::Status(code) => ApiError::new(StatusCode::BAD_GATEWAY, "spapi_refused", "SP-API refused",
            format!("SP-API answered {code} to the Tokens API call.")),
    }
}

/// A Restricted Data Token through the SP-API Tokens API in the connection's
/// region. Scope: `tokens:issue`.
#[utoipa::path(post, path = "/v1/connections/{id}/restricted-data-token", tag = "tokens", request_body = RdtRequest,
    params(("id" = Uuid, Path)),
    responses((status = 200, body = RdtAnswer), (status = 404, description = "connection_not_found"),
        (status = 409, description = "reauthorization_required"), (status = 422, description = "invalid_request"),
        (status = 502, description = "spapi_refused or app_credentials_rejected"), (status = 503, description = "amazon_unavailable")),
    security(("api_key" = ["tokens:issue"])))]
pub async fn restricted_data_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    caller.require(Scope::TokensIssue)?;
    let request: RdtRequest = parse_body(&body)?;
    if request.restricted_resources.is_empty() || request.restricted_resources.len() > 50 {
        return Err(ApiError::invalid_request(
            "`restricted_resources` must hold 1 to 50 resources",
        ));
    }
    let mut resources = Vec::with_capacity(request.restricted_resources.len());
    for (i, r) in request.restricted_resources.into_iter().enumerate() {
        if !matches!(
            r.method.as_str(),
            "GET" | "PUT" | "POST" | "DELETE" | "PATCH"
        ) {
            return Err(ApiError::invalid_request(format!(
                "`restricted_resources[{i}].method` must be GET, PUT, POST, DELETE or PATCH"
            )));
        }
        if !r.path.starts_with('/') || r.path.len() > 1024 {
            return Err(ApiError::invalid_request(format!(
                "`restricted_resources[{i}].path` must be an SP-API path starting with /"
            )));
        }
        resources.push(RestrictedResource {
            method: r.method,
            path: r.path,
            data_elements: r.data_elements,
        });
    }
    let connection_id = parse_connection_id(&id)?;
    let issued = state
        .broker
        .access_token(
            &state,
            &caller.0,
            connection_id,
            Duration::seconds(60),
            false,
            state.now(),
        )
        .await
        .map_err(|e| token_error(&state, e))?;
    caller.0.spend_amazon_call().map_err(|retry| {
        token_error(
            &state,
            TokenError::RateLimited {
                retry_after_seconds: retry.as_secs().max(1),
                detail: "this API key's budget of calls to Amazon is spent",
            },
        )
    })?;
    let (token, expires_in) = spapi::restricted_data_token(
        &state.http,
        state.config.spapi_endpoint(issued.region()),
        issued.access_token(),
        &resources,
        request.target_application.as_deref(),
    )
    .await
    .map_err(spapi_error)?;
    let now = state.now();
    Ok(no_store(RdtAnswer {
        restricted_data_token: token.expose_secret().to_owned(),
        expires_at: (now + Duration::seconds(expires_in)).to_offset(time::UtcOffset::UTC),
        expires_in,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantlessRequest {
    /// `sellingpartnerapi::notifications` or `sellingpartnerapi::client_credential:rotation`.
    pub scope: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GrantlessToken {
    pub access_token: String,
    pub token_type: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub expires_in: i64,
    pub scope: String,
}

/// A grantless (client credentials) token. Scope: `tenants:admin`.
#[utoipa::path(post, path = "/v1/grantless-token", tag = "tokens", request_body = GrantlessRequest,
    responses((status = 200, body = GrantlessToken), (status = 422, description = "invalid_request"),
        (status = 502, description = "app_credentials_rejected"), (status = 503, description = "amazon_unavailable")),
    security(("api_key" = ["tenants:admin"])))]
pub async fn grantless_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    let request: GrantlessRequest = parse_body(&body)?;
    if !crate::amazon::lwa::GRANTLESS_SCOPES.contains(&request.scope.as_str()) {
        return Err(ApiError::invalid_request(
            "`scope` must be sellingpartnerapi::notifications or sellingpartnerapi::client_credential:rotation",
        ));
    }
    let token = state
        .broker
        .grantless_token(&state, &caller.0, &request.scope)
        .await
        .map_err(|e| token_error(&state, e))?;
    let now = state.now();
    Ok(no_store(GrantlessToken {
        access_token: token.access_token.expose_secret().to_owned(),
        token_type: "bearer",
        expires_in: (token.expires_at - now).whole_seconds().max(0),
        expires_at: token.expires_at.to_offset(time::UtcOffset::UTC),
        scope: request.scope,
    }))
}
