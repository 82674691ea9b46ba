//! Access tokens, Restricted Data Tokens and grantless tokens. Every answer
//! carries `Cache-Control: no-store`.

use super::{parse_body, ApiBody, ApiError, Caller};
use crate::amazon::spapi::{self, RestrictedResource, SpApiError};
use crate::api_keys::Scope;
use crate::app::AppState;
use crate::broker::{IssuedToken, TokenError};
use crate::error::Error;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
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

/// An LWA access token for one connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessToken<'a> {
    #[serde(flatten)]
    pub token: TokenFields<'a>,
    /// Seconds left when the token was handed out.
    pub expires_in: i64,
    /// `amazon_unavailable` when a refresh failed and a still-valid cached token is returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_error: Option<&'static str>,
}

/// The fields of an [`AccessToken`] that stay the same while a token is cached.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenFields<'a> {
    pub access_token: &'a str,
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub connection_id: Uuid,
    pub selling_partner_id: &'a str,
    pub region: &'static str,
    /// The SP-API base URL to call for this connection.
    pub spapi_endpoint: &'a str,
}

fn no_store(body: impl Serialize) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// An [`AccessToken`] answer. Its [`TokenFields`] are encoded once per cached
/// token (the ~400-byte token is most of the answer) and reused; each answer
/// adds `expires_in` and `refresh_error`. The result is the JSON of
/// [`AccessToken`] (tested below).
fn access_token_response(
    state: &AppState,
    connection_id: Uuid,
    issued: &IssuedToken,
) -> Result<Response, ApiError> {
    let prefix = issued
        .answer_prefix(|issued| {
            answer_prefix(&TokenFields {
                access_token: issued.access_token().expose_secret(),
                token_type: "bearer",
                expires_at: issued.expires_at().to_offset(time::UtcOffset::UTC),
                connection_id,
                selling_partner_id: issued.selling_partner_id(),
                region: issued.region().as_str(),
                spapi_endpoint: state.config.spapi_endpoint(issued.region()),
            })
        })
        .map_err(Error::from)?;
    let body =
        answer_body(prefix, issued.expires_in(), issued.refresh_error).map_err(Error::from)?;
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    // Room for the headers every response gets on the way out, so the map
    // is not grown twice.
    headers.reserve(RESPONSE_HEADERS);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Content type, cache control, the security headers and the request id.
const RESPONSE_HEADERS: usize = 10;

/// `fields` as a JSON object left open for more fields.
fn answer_prefix(fields: &TokenFields<'_>) -> Result<Box<[u8]>, serde_json::Error> {
    let mut encoded = serde_json::to_vec(fields)?;
    // serde_json ends an object with `}`; the answer's own fields follow.
    encoded.pop();
    Ok(encoded.into_boxed_slice())
}

fn answer_body(
    prefix: &[u8],
    expires_in: i64,
    refresh_error: Option<&'static str>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut body = Vec::with_capacity(prefix.len() + 64);
    body.extend_from_slice(prefix);
    body.extend_from_slice(b",\"expires_in\":");
    serde_json::to_writer(&mut body, &expires_in)?;
    if let Some(reason) = refresh_error {
        body.extend_from_slice(b",\"refresh_error\":");
        serde_json::to_writer(&mut body, reason)?;
    }
    body.push(b'}');
    Ok(body)
}

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
        )
        .await
        .map_err(|e| token_error(&state, e))?;
    access_token_response(&state, connection_id, &issued)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fields(access_token: &str, selling_partner_id: &str) -> TokenFields<'static> {
        TokenFields {
            access_token: Box::leak(access_token.into()),
            token_type: "bearer",
            expires_at: time::macros::datetime!(2026-11-28 12:30:00.5 UTC),
            connection_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            selling_partner_id: Box::leak(selling_partner_id.into()),
            region: "eu",
            spapi_endpoint: "https://sellingpartnerapi-eu.amazon.com",
        }
    }

    #[test]
    fn the_fast_answer_is_the_json_of_access_token() {
        for (token, seller, refresh_error) in [
            ("Atza|IwEBIA-plain_token", "A1SELLER", None),
            (
                "Atza|with \"quotes\", \\ and \u{e9}\u{1f600}\n",
                "A1\"odd</script>",
                None,
            ),
            ("Atza|fallback", "A2SELLER", Some("amazon_unavailable")),
        ] {
            let prefix = answer_prefix(&fields(token, seller)).unwrap();
            let fast = answer_body(&prefix, 1234, refresh_error).unwrap();
            let fast: serde_json::Value = serde_json::from_slice(&fast).unwrap();
            let reference = serde_json::to_value(AccessToken {
                token: fields(token, seller),
                expires_in: 1234,
                refresh_error,
            })
            .unwrap();
            assert_eq!(fast, reference);
            assert_eq!(fast["access_token"], token);
            assert_eq!(fast["expires_at"], "2026-11-28T12:30:00.5Z");
            assert_eq!(fast.get("refresh_error").is_some(), refresh_error.is_some());
        }
    }
}
