//! The REST API for internal services (`/v1`), authenticated by API key.
//! Errors are RFC 9457 problem details with a machine-readable `code`; nothing
//! in an answer ever echoes a secret. Handlers are thin: parse, call, answer.

pub mod app;
pub mod connections;
pub mod events;
pub mod openapi;
pub mod ops;
pub mod tenants;
pub mod tokens;

use crate::api_keys::{ApiPrincipal, AuthError, Scope};
use crate::domain::InvalidInput;
use crate::error::Error;
use crate::http::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// A problem+json answer.
#[derive(Debug)]
pub struct ApiError(Box<Problem>);

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extra: Map<String, Value>,
    pub retry_after_seconds: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError(Box::new(Problem {
            status,
            code,
            title,
            detail: detail.into(),
            extra: Map::new(),
            retry_after_seconds: None,
        }))
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after_seconds = Some(seconds.max(1));
        self
    }

    pub fn code(&self) -> &'static str {
        self.0.code
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn unauthenticated() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Unauthenticated",
            "Send a valid API key as `Authorization: Bearer <key>`.",
        )
    }

    pub fn insufficient_scope(scope: Scope) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "Insufficient scope",
            format!("This API key lacks the `{}` scope.", scope.as_str()),
        )
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "Invalid request",
            detail,
        )
    }

    pub fn connection_not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "connection_not_found",
            "Connection not found",
            "No such connection for this API key.",
        )
    }

    pub fn tenant_not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "tenant_not_found",
            "Tenant not found",
            "No such tenant for this API key.",
        )
    }
}

/// A `limit` query parameter: `default` when absent, otherwise an integer
/// from 1 to `max` (as the OpenAPI document says), or a 422 naming the field.
pub fn page_limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| {
                ApiError::invalid_request(format!("`limit` must be an integer from 1 to {max}"))
            }),
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let incident = uuid::Uuid::new_v4().to_string();
        if matches!(&error, Error::Database(e) if crate::db::is_unavailable(e)) {
            tracing::error!(%incident, error = %error, "database unavailable");
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "Service unavailable",
                format!("The broker's database is not answering; try again shortly (incident {incident})."))
                .retry_after(2);
        }
        tracing::error!(%incident, error = %error, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal error",
            format!("Something went wrong on our side (incident {incident})."),
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Error::from(error).into()
    }
}

impl From<InvalidInput> for ApiError {
    fn from(invalid: InvalidInput) -> Self {
        ApiError::invalid_request(invalid.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = *self.0;
        let mut body = Map::new();
        body.insert(
            "type".into(),
            json!(format!("urn:sp-broker:problem:{}", problem.code)),
        );
        body.insert("title".into(), json!(problem.title));
        body.insert("status".into(), json!(problem.status.as_u16()));
        body.insert("detail".into(), json!(problem.detail));
        body.insert("code".into(), json!(problem.code));
        body.extend(problem.extra);
        let mut response = (problem.status, Json(Value::Object(body))).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if problem.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = problem.retry_after_seconds {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// The authenticated caller of an API route.
pub struct Caller(pub Arc<ApiPrincipal>);

impl Caller {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::insufficient_scope(scope))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(ApiError::unauthenticated)?;
        let client = crate::http::client_address(
            &parts.headers,
            &parts.extensions,
            &state.config.trusted_proxies,
        );
        match state.api_keys.verify_from(presented, client).await {
            Ok(principal) => Ok(Caller(principal)),
            Err(AuthError::Unauthenticated) => {
                tracing::info!("API request refused: missing, unknown or revoked key");
                Err(ApiError::unauthenticated())
            }
            Err(AuthError::Throttled {
                retry_after_seconds,
            }) => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Rate limited",
                "Too many failed authentications from this address; wait and try again.",
            )
            .retry_after(retry_after_seconds)),
            Err(AuthError::Database(e)) => Err(e.into()),
        }
    }
}

/// The largest request body the API reads; its bodies are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A request body of at most [`MAX_BODY_BYTES`], read without boxing it
/// behind a limit layer (the `Bytes` extractor does, on every request). A
/// larger or unreadable body is a problem+json answer, not plain text.
pub struct ApiBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let too_large = || {
            ApiError::invalid_request(format!(
                "the body could not be read or is larger than {} KiB",
                MAX_BODY_BYTES / 1024
            ))
        };
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim())
            .is_some_and(|media| {
                media.eq_ignore_ascii_case("application/json")
                    || (media.len() > 5
                        && media.is_char_boundary(media.len() - 5)
                        && media[media.len() - 5..].eq_ignore_ascii_case("+json"))
            });
        let body = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| too_large())?;
        // A body is JSON, said so (CONTRACT §10); an empty one needs no type.
        if !is_json && !body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "Unsupported content type",
                "Send the body as application/json.",
            ));
        }
        Ok(ApiBody(body))
    }
}

/// Parses a JSON body (an empty body is `{}`); a problem names the field.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let bytes: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    // Every body is an object (serde would also build a struct from an array).
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_request("the body must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let reason = if inner.is_syntax() || inner.is_eof() {
            "the body is not valid JSON".to_owned()
        } else if path == "." {
            // serde names unknown or missing fields in its message; it holds no values.
            inner
                .to_string()
                .split(" at line")
                .next()
                .unwrap_or("invalid body")
                .to_owned()
        } else if inner.to_string().starts_with("unknown field") {
            format!("`{path}` is not a field of this request")
        } else {
            format!("`{path}` is missing or of the wrong type")
        };
        ApiError::invalid_request(reason)
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/tenants",
            get(tenants::list_tenants).post(tenants::create_tenant),
        )
        .route(
            "/v1/tenants/{slug}/login-links",
            post(tenants::create_login_link),
        )
        .route(
            "/v1/tenants/{slug}/connections",
            get(connections::list_connections),
        )
        .route(
            "/v1/connections/{id}",
            get(connections::get_connection).delete(connections::delete_connection),
        )
        .route(
            "/v1/connections/{id}/access-token",
            post(tokens::access_token),
        )
        .route(
            "/v1/connections/{id}/restricted-data-token",
            post(tokens::restricted_data_token),
        )
        .route("/v1/grantless-token", post(tokens::grantless_token))
        .route("/v1/ops/summary", get(ops::summary))
        .route("/v1/app/notifications", post(app::notifications))
        .route("/v1/app/status", get(app::status))
        .route("/v1/app/rotate-secret", post(app::rotate_secret))
        .route("/v1/events", get(events::list_events))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/v1/{*rest}", axum::routing::any(api_not_found))
}

async fn api_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "Not found",
        "No such API route.",
    )
}
