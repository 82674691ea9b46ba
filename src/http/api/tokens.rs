//! Access tokens, Restricted Data Tokens and grantless tokens. Every answer
//! carries `Cache-Control: no-store`.
//!
//! The access-token answer is the hot path: it is written straight into its
//! buffer ([`write_access_token`]), with the parts that never change (each
//! region's SP-API endpoint, JSON-encoded) prepared once at start, and held
//! equal to the serde JSON of [`AccessToken`] by a test. Nothing is cached
//! per token here: the broker holds each token once.

use super::{parse_body, ApiBody, ApiError, Caller};
use crate::amazon::lwa::GrantlessScope;
use crate::amazon::marketplaces::Region;
use crate::amazon::spapi::{RestrictedResource, SpApi, SpApiError};
use crate::api_keys::Scope;
use crate::broker::{IssuedToken, RdtError, TokenBroker, TokenError};
use crate::clock::Clock;
use crate::config::Config;
use axum::body::Body;
use axum::extract::{FromRef, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;
use uuid::Uuid;

/// What the token routes use: the broker, SP-API, and the answer's constant parts.
pub struct TokenRoutes {
    pub broker: Arc<TokenBroker>,
    pub spapi: Arc<SpApi>,
    clock: Arc<dyn Clock>,
    /// Each region's `spapi_endpoint`, as a JSON string (quotes included).
    endpoints: [Box<[u8]>; 3],
    reconnect_url: String,
}

impl TokenRoutes {
    pub fn new(
        broker: Arc<TokenBroker>,
        spapi: Arc<SpApi>,
        clock: Arc<dyn Clock>,
        config: &Config,
    ) -> Self {
        let endpoint = |region: Region| {
            serde_json::to_vec(config.spapi_endpoint(region))
                .unwrap_or_else(|_| b"\"\"".to_vec())
                .into_boxed_slice()
        };
        TokenRoutes {
            broker,
            spapi,
            clock,
            endpoints: [
                endpoint(Region::Na),
                endpoint(Region::Eu),
                endpoint(Region::Fe),
            ],
            reconnect_url: format!("{}/settings/connections", config.public_url),
        }
    }

    fn endpoint_json(&self, region: Region) -> &[u8] {
        match region {
            Region::Na => &self.endpoints[0],
            Region::Eu => &self.endpoints[1],
            Region::Fe => &self.endpoints[2],
        }
    }
}

impl FromRef<crate::http::AppState> for Arc<TokenRoutes> {
    fn from_ref(state: &crate::http::AppState) -> Self {
        Arc::clone(&state.token_routes)
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessTokenRequest {
    /// 0–3000, default 300: a cached token is returned only with at least this many seconds left.
    #[schema(minimum = 0, maximum = 3000)]
    pub min_ttl_seconds: Option<i64>,
    /// Discard the cached token (Amazon rejected it) and obtain a new one; once per 30 s per connection.
    pub force_refresh: Option<bool>,
}

/// An LWA access token for one connection. (Holds a token: not `Debug`.)
#[derive(Serialize, ToSchema)]
pub struct AccessToken<'a> {
    pub access_token: &'a str,
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub connection_id: Uuid,
    pub selling_partner_id: &'a str,
    pub region: Region,
    /// The SP-API base URL to call for this connection.
    pub spapi_endpoint: &'a str,
    /// Seconds left when the token was handed out.
    pub expires_in: i64,
    /// Set when a refresh failed (`amazon_unavailable`) or the app's
    /// credentials are held rejected (`app_credentials_rejected`) and a
    /// still-valid cached token, with at least 60 s left, is returned instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_error: Option<&'static str>,
}

/// Content type, cache control, the security headers and the request id.
const RESPONSE_HEADERS: usize = 10;

fn no_store(body: impl Serialize) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// The JSON of [`AccessToken`] for `issued`, written into `out`.
fn write_access_token(out: &mut Vec<u8>, issued: &IssuedToken, endpoint_json: &[u8]) {
    out.extend_from_slice(b"{\"access_token\":");
    write_json_str(out, issued.access_token());
    out.extend_from_slice(b",\"token_type\":\"bearer\",\"expires_at\":\"");
    write_rfc3339(out, issued.expires_at());
    out.extend_from_slice(b"\",\"connection_id\":\"");
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.extend_from_slice(
        issued
            .connection_id
            .hyphenated()
            .encode_lower(&mut id)
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"selling_partner_id\":");
    write_json_str(out, issued.selling_partner_id());
    out.extend_from_slice(b",\"region\":\"");
    out.extend_from_slice(issued.region().as_str().as_bytes());
    out.extend_from_slice(b"\",\"spapi_endpoint\":");
    out.extend_from_slice(endpoint_json);
    out.extend_from_slice(b",\"expires_in\":");
    out.extend_from_slice(itoa::Buffer::new().format(issued.expires_in()).as_bytes());
    if let Some(reason) = issued.refresh_error {
        out.extend_from_slice(b",\"refresh_error\":\"");
        out.extend_from_slice(reason.as_str().as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
}

/// A JSON string. LWA tokens and selling partner ids never need escaping, so
/// that is checked in one pass the compiler vectorises (a fold without an early
/// exit: `all` stops at the first miss and so is compiled byte by byte); serde
/// does the rest.
pub(crate) fn write_json_str(out: &mut Vec<u8>, value: &str) {
    let plain = value.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\') & (b != 0x7f)
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// RFC 3339 in UTC, as `time::serde::rfc3339` writes it (fraction only when
/// there is one, without trailing zeros).
fn write_rfc3339(out: &mut Vec<u8>, at: OffsetDateTime) {
    let at = at.to_offset(time::UtcOffset::UTC);
    let year = at.year().clamp(0, 9999) as u16;
    push_two(out, (year / 100) as u8);
    push_two(out, (year % 100) as u8);
    out.push(b'-');
    push_two(out, u8::from(at.month()));
    out.push(b'-');
    push_two(out, at.day());
    out.push(b'T');
    push_two(out, at.hour());
    out.push(b':');
    push_two(out, at.minute());
    out.push(b':');
    push_two(out, at.second());
    let nanos = at.nanosecond();
    if nanos > 0 {
        let mut fraction = [b'0'; 9];
        let mut v = nanos;
        for slot in fraction.iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        let len = fraction
            .iter()
            .rposition(|d| *d != b'0')
            .map_or(0, |i| i + 1);
        out.push(b'.');
        out.extend_from_slice(&fraction[..len]);
    }
    out.push(b'Z');
}

fn push_two(out: &mut Vec<u8>, value: u8) {
    out.push(b'0' + value / 10);
    out.push(b'0' + value % 10);
}

fn access_token_response(routes: &TokenRoutes, issued: &IssuedToken) -> Response {
    let mut body = Vec::with_capacity(issued.access_token().len() + 320);
    write_access_token(&mut body, issued, routes.endpoint_json(issued.region()));
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
    response
}

/// The contract's code for a token error (problem+json and metrics alike).
pub fn token_error_code(error: &TokenError) -> &'static str {
    match error {
        TokenError::NotFound => "connection_not_found",
        TokenError::Reauthorization { .. } => "reauthorization_required",
        TokenError::RateLimited { .. } => "rate_limited",
        TokenError::AppCredentialsRejected => "app_credentials_rejected",
        TokenError::AmazonUnavailable { .. } => "amazon_unavailable",
        TokenError::GrantRefused { .. } => "spapi_refused",
        TokenError::Internal(_) => "internal_error",
    }
}

pub fn token_error(reconnect_url: &str, error: TokenError) -> ApiError {
    crate::metrics::token_refused(token_error_code(&error));
    match error {
        TokenError::NotFound => ApiError::connection_not_found(),
        TokenError::Reauthorization { status, status_reason } => ApiError::new(
            StatusCode::CONFLICT,
            "reauthorization_required",
            "Reauthorization required",
            "The seller must reconnect this Amazon account in Settings → Connections.",
        )
        .with("connection_status", status.as_str())
        .with("status_reason", status_reason)
        .with("reconnect_url", reconnect_url),
        TokenError::RateLimited { retry_after_seconds, detail } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Rate limited", detail).retry_after(retry_after_seconds)
        }
        TokenError::AppCredentialsRejected => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "app_credentials_rejected",
            "App credentials rejected",
            "Amazon rejected the app's LWA client credentials (every configured secret), or refused most sellers' refresh tokens at once. The sellers' authorizations are not affected; an operator must fix the app's configuration.",
        ),
        TokenError::AmazonUnavailable { retry_after_seconds } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "amazon_unavailable",
            "Amazon unavailable",
            "Amazon's token endpoint did not answer usefully and no cached token is good enough.",
        )
        .retry_after(retry_after_seconds),
        TokenError::GrantRefused { error } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "spapi_refused",
            "Amazon refused the grant",
            format!("Login with Amazon refused this grantless token request ({error}): the app may not be registered for this scope. Nothing else is affected."),
        ),
        TokenError::Internal(e) => e.into(),
    }
}

fn parse_connection_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::connection_not_found())
}

/// A fresh or cached access token. Scope: `tokens:issue`.
#[utoipa::path(post, path = "/v1/connections/{id}/access-token", tag = "tokens", request_body = Option<AccessTokenRequest>,
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = AccessToken),
        (status = 401, description = "unauthenticated"), (status = 403, description = "insufficient_scope"),
        (status = 404, description = "connection_not_found"), (status = 409, description = "reauthorization_required"),
        (status = 422, description = "invalid_request"), (status = 429, description = "rate_limited"),
        (status = 502, description = "app_credentials_rejected"), (status = 503, description = "amazon_unavailable")),
    security(("api_key" = ["tokens:issue"])))]
pub async fn access_token(
    State(routes): State<Arc<TokenRoutes>>,
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
    let issued = routes
        .broker
        .access_token(
            &caller.0,
            connection_id,
            Duration::seconds(min_ttl),
            request.force_refresh.unwrap_or(false),
        )
        .await
        .map_err(|e| token_error(&routes.reconnect_url, e))?;
    crate::metrics::token_issued(issued.source);
    Ok(access_token_response(&routes, &issued))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestrictedResourceJson {
    /// GET, PUT, POST, DELETE or PATCH.
    #[schema(pattern = "^(GET|PUT|POST|DELETE|PATCH)$")]
    pub method: String,
    /// An SP-API path, e.g. `/orders/v0/orders`.
    #[schema(max_length = 1024)]
    pub path: String,
    pub data_elements: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RdtRequest {
    /// 1 to 50 resources.
    #[schema(min_items = 1, max_items = 50)]
    pub restricted_resources: Vec<RestrictedResourceJson>,
    pub target_application: Option<String>,
}

/// A Restricted Data Token. (Holds a token: not `Debug`.)
#[derive(Serialize, ToSchema)]
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

fn restricted_resources(request: RdtRequest) -> Result<Vec<RestrictedResource>, ApiError> {
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
        if !r.path.starts_with('/') || r.path.len() > 1024 || r.path.chars().any(char::is_control) {
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
    Ok(resources)
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
    State(routes): State<Arc<TokenRoutes>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    caller.require(Scope::TokensIssue)?;
    let mut request: RdtRequest = parse_body(&body)?;
    let target_application = request.target_application.take();
    let resources = restricted_resources(request)?;
    let connection_id = parse_connection_id(&id)?;
    let rdt = routes
        .broker
        .restricted_data_token(
            &routes.spapi,
            &caller.0,
            connection_id,
            &resources,
            target_application.as_deref(),
        )
        .await
        .map_err(|e| match e {
            RdtError::Token(e) => token_error(&routes.reconnect_url, e),
            RdtError::SpApi(e) => spapi_error(e),
        })?;
    Ok(no_store(RdtAnswer {
        restricted_data_token: rdt.secret.expose_secret().to_owned(),
        expires_at: rdt.expires_at.to_offset(time::UtcOffset::UTC),
        expires_in: rdt.expires_in,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantlessRequest {
    pub scope: GrantlessScope,
}

/// A grantless token. (Holds a token: not `Debug`.)
#[derive(Serialize, ToSchema)]
pub struct GrantlessAnswer {
    pub access_token: String,
    pub token_type: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub expires_in: i64,
    pub scope: GrantlessScope,
}

/// A grantless (client credentials) token. Scope: `tenants:admin`.
#[utoipa::path(post, path = "/v1/grantless-token", tag = "tokens", request_body = GrantlessRequest,
    responses((status = 200, body = GrantlessAnswer), (status = 422, description = "invalid_request"),
        (status = 502, description = "app_credentials_rejected or spapi_refused"), (status = 503, description = "amazon_unavailable")),
    security(("api_key" = ["tenants:admin"])))]
pub async fn grantless_token(
    State(routes): State<Arc<TokenRoutes>>,
    caller: Caller,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    let request: GrantlessRequest = parse_body(&body).map_err(|_| {
        ApiError::invalid_request(
            "`scope` must be sellingpartnerapi::notifications or sellingpartnerapi::client_credential:rotation",
        )
    })?;
    let token = routes
        .broker
        .grantless_token(&caller.0, request.scope)
        .await
        .map_err(|e| token_error(&routes.reconnect_url, e))?;
    let now = routes.clock.now();
    Ok(no_store(GrantlessAnswer {
        access_token: token.secret.expose_secret().to_owned(),
        token_type: "bearer",
        expires_in: (token.expires_at - now).whole_seconds().max(0),
        expires_at: token.expires_at.to_offset(time::UtcOffset::UTC),
        scope: token.scope,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_fast_answer_is_the_json_of_access_token() {
        for (token, seller, at, refresh_error) in [
            (
                "Atza|IwEBIA-plain_token",
                "A1SELLER",
                time::macros::datetime!(2026-11-28 12:30:00.5 UTC),
                None,
            ),
            (
                "Atza|with \"quotes\", \\ and \u{e9}\u{1f600}\n\u{7f}",
                "A1\"odd</script>",
                time::macros::datetime!(2026-01-02 03:04:05 UTC),
                None,
            ),
            (
                "Atza|fallback",
                "A2SELLER",
                time::macros::datetime!(2026-12-31 23:59:59.000123 +02:00),
                Some(crate::broker::RefreshError::AmazonUnavailable),
            ),
        ] {
            let issued = crate::broker::IssuedToken::for_test(token, seller, at, refresh_error);
            let mut fast = Vec::new();
            write_access_token(
                &mut fast,
                &issued,
                b"\"https://sellingpartnerapi-eu.amazon.com\"",
            );
            let fast: serde_json::Value = serde_json::from_slice(&fast).unwrap();
            let reference = serde_json::to_value(AccessToken {
                access_token: token,
                token_type: "bearer",
                expires_at: at.to_offset(time::UtcOffset::UTC),
                connection_id: issued.connection_id,
                selling_partner_id: seller,
                region: Region::Eu,
                spapi_endpoint: "https://sellingpartnerapi-eu.amazon.com",
                expires_in: issued.expires_in(),
                refresh_error: refresh_error.map(|r| r.as_str()),
            })
            .unwrap();
            assert_eq!(fast, reference);
            assert_eq!(fast["access_token"], token);
        }
    }
}
