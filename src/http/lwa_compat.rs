//! `POST /auth/o2/token`: Login with Amazon's token protocol (CONTRACT §9),
//! so that SP-API SDKs work unchanged: their LWA endpoint becomes this URL,
//! their refresh token a connection id, their client secret an API key.
//!
//! Below the HTTP shapes it is the access-token route: the same
//! [`TokenBroker::access_token`] (cache, single flight, fallbacks, audit,
//! usage counts) and the same grantless path. Only the envelope differs:
//! a form in, LWA's JSON out, LWA's error codes.
//!
//! Choices where the contract is silent (README, "Using an SP-API SDK"):
//! - a JSON body is read like the form (Amazon's Java and C# SDKs post
//!   JSON to LWA, the others a form);
//! - a parameter given twice, or a secret both in the form and as HTTP
//!   Basic, is `invalid_request` (RFC 6749 §3.2, §2.3);
//! - the app's own credentials rejected by Amazon answer 503
//!   `temporarily_unavailable` (the seller's authorization is fine and the
//!   caller can do nothing but retry later), with `Retry-After`;
//! - a key over its own Amazon-call budget answers 429 `rate_limited`.

use crate::amazon::lwa::GrantlessScope;
use crate::api_keys::{ApiPrincipal, AuthError, Scope};
use crate::broker::{IssuedToken, TokenBroker, TokenError};
use crate::http::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use secrecy::ExposeSecret;
use std::sync::Arc;
use time::Duration;
use uuid::Uuid;

/// The largest body read: an LWA request is a few hundred bytes.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// What the access-token route gives by default: at least 300 s left.
const MIN_TTL: Duration = Duration::seconds(300);

/// An LWA error answer: `{"error","error_description"}`.
#[derive(Debug)]
pub struct LwaError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after_seconds: Option<u64>,
    /// Basic credentials were refused: say so (RFC 6749 §5.2).
    basic_challenge: bool,
}

impl LwaError {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<String>,
    ) -> Self {
        LwaError {
            status,
            error,
            description: description.into(),
            retry_after_seconds: None,
            basic_challenge: false,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        LwaError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client() -> Self {
        LwaError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed: send an sp-broker API key as client_secret (or as the password of HTTP Basic).",
        )
    }

    fn unauthorized_client(scope: Scope) -> Self {
        LwaError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            format!(
                "This API key lacks the `{}` scope needed for this grant.",
                scope.as_str()
            ),
        )
    }

    fn invalid_grant() -> Self {
        LwaError::new(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "No usable connection with this id for this API key: it does not exist, needs reauthorization or was disconnected. The seller can reconnect in Settings → Connections.",
        )
    }

    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds.max(1));
        self
    }

    fn unavailable(description: &str, retry_after_seconds: u64) -> Self {
        let mut error = LwaError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            description,
        );
        error.retry_after_seconds = Some(retry_after_seconds.max(1));
        error
    }

    /// The code, for metrics.
    pub fn code(&self) -> &'static str {
        self.error
    }
}

impl axum::response::IntoResponse for LwaError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
        });
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.basic_challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sp-broker\""),
            );
        }
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The request's parameters, each at most once.
#[derive(Debug, Default)]
pub struct LwaForm {
    pub grant_type: Option<String>,
    pub refresh_token: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scope: Option<String>,
}

impl LwaForm {
    fn set(&mut self, name: &str, value: String) -> Result<(), LwaError> {
        let slot = match name {
            "grant_type" => &mut self.grant_type,
            "refresh_token" => &mut self.refresh_token,
            "client_id" => &mut self.client_id,
            "client_secret" => &mut self.client_secret,
            "scope" => &mut self.scope,
            // LWA ignores what it does not know (SDKs send e.g. redirect_uri).
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err(LwaError::invalid_request(format!(
                "The parameter {name} is given more than once."
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(LwaError::invalid_request(format!(
                "The parameter {name} holds control characters."
            )));
        }
        *slot = Some(value).filter(|v| !v.is_empty());
        Ok(())
    }

    /// Parses a form (`application/x-www-form-urlencoded`) or, when the
    /// content type says JSON, an object of strings.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<LwaForm, LwaError> {
        let mut form = LwaForm::default();
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        match media.as_deref() {
            Some("application/json") => {
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(body)
                        .map_err(|_| LwaError::invalid_request("The body is not a JSON object."))?;
                for (name, value) in object {
                    match value {
                        serde_json::Value::String(s) => form.set(&name, s)?,
                        serde_json::Value::Null => {}
                        _ => {
                            return Err(LwaError::invalid_request(format!(
                                "The parameter {name} must be a string."
                            )))
                        }
                    }
                }
            }
            Some("application/x-www-form-urlencoded") | None => {
                if std::str::from_utf8(body).is_err() {
                    return Err(LwaError::invalid_request("The body is not UTF-8."));
                }
                for (name, value) in url::form_urlencoded::parse(body) {
                    form.set(&name, value.into_owned())?;
                }
            }
            Some(_) => {
                return Err(LwaError::invalid_request(
                    "Send the parameters as application/x-www-form-urlencoded.",
                ))
            }
        }
        Ok(form)
    }
}

/// The API key presented: the form's `client_secret` or HTTP Basic's
/// password (each part form-urlencoded, RFC 6749 §2.3.1), not both.
pub fn presented_secret(headers: &HeaderMap, form: &LwaForm) -> Result<String, LwaError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let refused = || {
                let mut error = LwaError::invalid_client();
                error.basic_challenge = true;
                error
            };
            let value = value.to_str().map_err(|_| refused())?;
            let encoded = value
                .strip_prefix("Basic ")
                .or_else(|| value.strip_prefix("basic "))
                .ok_or_else(refused)?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| refused())?;
            let decoded = String::from_utf8(decoded).map_err(|_| refused())?;
            let (_, secret) = decoded.split_once(':').ok_or_else(refused)?;
            let secret: String = url::form_urlencoded::parse(format!("s={secret}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            Some(secret)
        }
    };
    match (basic, &form.client_secret) {
        (Some(_), Some(_)) => Err(LwaError::invalid_request(
            "Send the client secret once: in the form or as HTTP Basic, not both.",
        )),
        (Some(secret), None) => Ok(secret),
        (None, Some(secret)) => Ok(secret.clone()),
        (None, None) => Err(LwaError::invalid_client()),
    }
}

/// The request's parameters, as the OpenAPI document shows them.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LwaTokenRequest {
    /// `refresh_token` or `client_credentials`.
    #[schema(example = "refresh_token")]
    grant_type: String,
    /// For `refresh_token`: the connection id (not Amazon's refresh token).
    #[schema(format = Uuid)]
    refresh_token: Option<String>,
    /// Any value (or the API key's public id); ignored.
    client_id: Option<String>,
    /// An sp-broker API key, unless sent as the password of HTTP Basic.
    client_secret: Option<String>,
    /// For `client_credentials`: `sellingpartnerapi::notifications` or
    /// `sellingpartnerapi::client_credential:rotation`.
    scope: Option<String>,
}

/// LWA's token answer. Never a refresh token.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LwaTokenAnswer {
    access_token: String,
    #[schema(example = "bearer")]
    token_type: String,
    expires_in: i64,
    /// Only for `client_credentials`.
    scope: Option<String>,
}

/// LWA's error answer.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LwaErrorAnswer {
    /// `invalid_request`, `invalid_client`, `invalid_grant`,
    /// `unauthorized_client`, `unsupported_grant_type`, `invalid_scope`,
    /// `rate_limited`, `temporarily_unavailable` or `server_error`.
    error: String,
    error_description: String,
}

/// Login with Amazon's token protocol, for SP-API SDKs (CONTRACT §9): the
/// refresh token is a connection id, the client secret an API key (in the
/// form, or as HTTP Basic). JSON bodies are read too.
#[utoipa::path(post, path = "/auth/o2/token", tag = "tokens",
    request_body(content = LwaTokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, body = LwaTokenAnswer),
        (status = 400, body = LwaErrorAnswer, description = "invalid_request, invalid_grant, unauthorized_client, unsupported_grant_type or invalid_scope"),
        (status = 401, body = LwaErrorAnswer, description = "invalid_client"),
        (status = 429, body = LwaErrorAnswer, description = "rate_limited"),
        (status = 500, body = LwaErrorAnswer, description = "server_error"),
        (status = 503, body = LwaErrorAnswer, description = "temporarily_unavailable")),
    security((), ("lwa_basic" = [])))]
pub async fn token(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let client =
        crate::http::client_address(&headers, &parts.extensions, &state.config.trusted_proxies);
    use axum::response::IntoResponse;
    let grant_label = |form: Option<&LwaForm>| match form.and_then(|f| f.grant_type.as_deref()) {
        Some("refresh_token") => "refresh_token",
        Some("client_credentials") => "client_credentials",
        _ => "other",
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            crate::metrics::lwa_compatible("other", "invalid_request");
            return LwaError::invalid_request(format!(
                "The body could not be read or is larger than {} KiB.",
                MAX_BODY_BYTES / 1024
            ))
            .into_response();
        }
    };
    let form = LwaForm::parse(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        &body,
    );
    let grant = grant_label(form.as_ref().ok());
    let answer = match form {
        Ok(form) => answer(&state, &headers, client, form).await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(response) => {
            crate::metrics::lwa_compatible(grant, "ok");
            response
        }
        Err(error) => {
            crate::metrics::lwa_compatible(grant, error.code());
            error.into_response()
        }
    }
}

async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    client: Option<std::net::IpAddr>,
    form: LwaForm,
) -> Result<Response, LwaError> {
    let grant_type = form
        .grant_type
        .as_deref()
        .ok_or_else(|| LwaError::invalid_request("The request is missing grant_type."))?;
    if !matches!(grant_type, "refresh_token" | "client_credentials") {
        return Err(LwaError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be refresh_token or client_credentials.",
        ));
    }
    let secret = presented_secret(headers, &form)?;
    let principal = match state.api_keys.verify_from(&secret, client).await {
        Ok(principal) => principal,
        Err(AuthError::Throttled {
            retry_after_seconds,
        }) => {
            return Err(LwaError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many failed authentications from this address; wait and try again.",
            )
            .retry_after(retry_after_seconds))
        }
        Err(AuthError::Unauthenticated) => {
            tracing::info!("LWA-compatible request refused: missing, unknown or revoked key");
            let mut error = LwaError::invalid_client();
            error.basic_challenge = headers.contains_key(header::AUTHORIZATION);
            return Err(error);
        }
        Err(AuthError::Database(e)) => return Err(database_error(&e)),
    };
    let broker = &state.token_routes.broker;
    if grant_type == "refresh_token" {
        refresh_token_grant(broker, &principal, form.refresh_token.as_deref()).await
    } else {
        client_credentials_grant(state, broker, &principal, form.scope.as_deref()).await
    }
}

async fn refresh_token_grant(
    broker: &Arc<TokenBroker>,
    principal: &ApiPrincipal,
    refresh_token: Option<&str>,
) -> Result<Response, LwaError> {
    if !principal.has_scope(Scope::TokensIssue) {
        return Err(LwaError::unauthorized_client(Scope::TokensIssue));
    }
    let refresh_token = refresh_token
        .ok_or_else(|| LwaError::invalid_request("The request is missing refresh_token."))?;
    // Anything that is not a connection id is a grant that does not exist.
    let connection_id: Uuid = refresh_token
        .trim()
        .parse()
        .map_err(|_| LwaError::invalid_grant())?;
    let issued = broker
        .access_token(principal, connection_id, MIN_TTL, false)
        .await
        .map_err(token_error)?;
    crate::metrics::token_issued(issued.source);
    Ok(access_token_answer(&issued))
}

async fn client_credentials_grant(
    state: &AppState,
    broker: &Arc<TokenBroker>,
    principal: &ApiPrincipal,
    scope: Option<&str>,
) -> Result<Response, LwaError> {
    if !principal.has_scope(Scope::TenantsAdmin) {
        return Err(LwaError::unauthorized_client(Scope::TenantsAdmin));
    }
    let scope = scope.ok_or_else(|| LwaError::invalid_request("The request is missing scope."))?;
    let scope: GrantlessScope = scope.trim().parse().map_err(|_| {
        LwaError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope must be sellingpartnerapi::notifications or sellingpartnerapi::client_credential:rotation.",
        )
    })?;
    let token = broker
        .grantless_token(principal, scope)
        .await
        .map_err(token_error)?;
    let expires_in = (token.expires_at - state.now()).whole_seconds().max(0);
    let body = serde_json::json!({
        "access_token": token.secret.expose_secret(),
        "token_type": "bearer",
        "expires_in": expires_in,
        "scope": scope.as_str(),
    });
    Ok(json_answer(body.to_string().into_bytes()))
}

/// `{"access_token","token_type","expires_in"}`, written straight into its
/// buffer as the access-token route writes its answer (the hot path).
fn access_token_answer(issued: &IssuedToken) -> Response {
    let mut body = Vec::with_capacity(issued.access_token().len() + 64);
    body.extend_from_slice(b"{\"access_token\":");
    crate::http::api::tokens::write_json_str(&mut body, issued.access_token());
    body.extend_from_slice(b",\"token_type\":\"bearer\",\"expires_in\":");
    body.extend_from_slice(itoa::Buffer::new().format(issued.expires_in()).as_bytes());
    body.push(b'}');
    json_answer(body)
}

fn json_answer(body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.reserve(10);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn database_error(error: &sqlx::Error) -> LwaError {
    let incident = Uuid::new_v4();
    tracing::error!(%incident, error = %error, "LWA-compatible request failed: database");
    if crate::db::is_unavailable(error) {
        LwaError::unavailable(
            &format!(
                "The broker's database is not answering; try again shortly (incident {incident})."
            ),
            2,
        )
    } else {
        LwaError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("Something went wrong on our side (incident {incident})."),
        )
    }
}

/// The broker's refusals in LWA's words.
fn token_error(error: TokenError) -> LwaError {
    crate::metrics::token_refused(crate::http::api::tokens::token_error_code(&error));
    match error {
        TokenError::NotFound | TokenError::Reauthorization { .. } => LwaError::invalid_grant(),
        TokenError::RateLimited {
            retry_after_seconds,
            detail,
        } => {
            let mut error = LwaError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail);
            error.retry_after_seconds = Some(retry_after_seconds.max(1));
            error
        }
        TokenError::AppCredentialsRejected => LwaError::unavailable(
            "Amazon rejected the app's own LWA credentials; the seller's authorization is not affected and an operator has been alerted.",
            30,
        ),
        TokenError::AmazonUnavailable {
            retry_after_seconds,
        } => LwaError::unavailable(
            "Amazon's token endpoint did not answer usefully and no cached token is good enough.",
            retry_after_seconds,
        ),
        TokenError::GrantRefused { error } => LwaError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!("Login with Amazon refused this grantless token request ({error}): the app may not be registered for this scope."),
        ),
        TokenError::Internal(e) => match &e {
            crate::error::Error::Database(db) => database_error(db),
            _ => {
                let incident = Uuid::new_v4();
                tracing::error!(%incident, error = %e, "LWA-compatible request failed");
                LwaError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    format!("Something went wrong on our side (incident {incident})."),
                )
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_form_and_a_json_body_read_alike() {
        let form = LwaForm::parse(
            Some("application/x-www-form-urlencoded"),
            b"grant_type=refresh_token&refresh_token=abc&client_id=x&client_secret=k%2By&redirect_uri=z",
        )
        .unwrap();
        let json = LwaForm::parse(
            Some("application/json; charset=utf-8"),
            br#"{"grant_type":"refresh_token","refresh_token":"abc","client_id":"x","client_secret":"k+y"}"#,
        )
        .unwrap();
        for f in [form, json] {
            assert_eq!(f.grant_type.as_deref(), Some("refresh_token"));
            assert_eq!(f.refresh_token.as_deref(), Some("abc"));
            assert_eq!(f.client_secret.as_deref(), Some("k+y"));
        }
    }

    #[test]
    fn twice_the_same_parameter_or_a_control_character_is_invalid_request() {
        for body in [
            &b"grant_type=refresh_token&grant_type=client_credentials"[..],
            b"refresh_token=a%00b",
            b"\xff\xfe",
        ] {
            let error = LwaForm::parse(None, body).unwrap_err();
            assert_eq!(error.code(), "invalid_request");
        }
        assert_eq!(
            LwaForm::parse(Some("text/xml"), b"<a/>")
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        assert_eq!(
            LwaForm::parse(Some("application/json"), b"[1]")
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }

    #[test]
    fn basic_credentials_are_form_decoded_and_never_combined_with_the_form() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("client:spb_x%2By");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        assert_eq!(
            presented_secret(&headers, &LwaForm::default()).unwrap(),
            "spb_x+y"
        );
        let with_form = LwaForm {
            client_secret: Some("other".into()),
            ..LwaForm::default()
        };
        assert_eq!(
            presented_secret(&headers, &with_form).unwrap_err().code(),
            "invalid_request"
        );
        assert_eq!(
            presented_secret(&HeaderMap::new(), &LwaForm::default())
                .unwrap_err()
                .code(),
            "invalid_client"
        );
    }
}
