//! `/v1/app/*`: the app's own client secrets (CONTRACT §7). The work is in
//! `app_secrets.rs`; these handlers parse, call and answer. No answer ever
//! holds a secret's value.

use super::tokens::token_error;
use super::{ApiBody, ApiError, Caller};
use crate::amazon::spapi::SpApi;
use crate::api_keys::Scope;
use crate::app_secrets::{self, AppStatus, NotificationError, Received, RotationRequestError};
use crate::broker::TokenBroker;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

/// What `POST /v1/app/notifications` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationAnswer {
    /// `stored` (a new secret), `expiry_recorded`, `already_known` (nothing
    /// changed) or `ignored` (a type sp-broker does not act on, 202).
    pub result: &'static str,
    /// The secret stored or whose expiry was recorded.
    pub secret_id: Option<Uuid>,
}

impl From<NotificationError> for ApiError {
    fn from(error: NotificationError) -> Self {
        match error {
            NotificationError::Malformed(detail) => ApiError::invalid_request(detail),
            NotificationError::OtherClient => ApiError::invalid_request(
                "the notification is for another LWA client id than this app's",
            ),
            NotificationError::Database(e) => e.into(),
        }
    }
}

/// Takes an Amazon notification as delivered on the app's SQS queue.
/// Scope: `tenants:admin`.
#[utoipa::path(post, path = "/v1/app/notifications", tag = "app",
    request_body(content = Object, description = "An Amazon notification: `notificationType`, `payload`, `notificationMetadata.notificationId`"),
    responses((status = 200, body = NotificationAnswer, description = "stored, expiry_recorded or already_known"),
        (status = 202, body = NotificationAnswer, description = "another notification type: ignored"),
        (status = 401, description = "unauthenticated"), (status = 403, description = "insufficient_scope"),
        (status = 422, description = "invalid_request: malformed, or for another client id")),
    security(("api_key" = ["tenants:admin"])))]
pub async fn notifications(
    State(broker): State<Arc<TokenBroker>>,
    caller: Caller,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    let received = app_secrets::receive(broker.credentials(), &body).await?;
    let (status, result, secret_id) = match received {
        Received::SecretStored { secret_id } => (StatusCode::OK, "stored", Some(secret_id)),
        Received::ExpiryRecorded { secret_id } => {
            (StatusCode::OK, "expiry_recorded", Some(secret_id))
        }
        Received::AlreadyKnown => (StatusCode::OK, "already_known", None),
        Received::Ignored => (StatusCode::ACCEPTED, "ignored", None),
    };
    Ok((status, Json(NotificationAnswer { result, secret_id })).into_response())
}

/// The app's client secrets: which is in use, expiry, last worked and
/// refused. Scope: `tenants:admin`.
#[utoipa::path(get, path = "/v1/app/status", tag = "app",
    responses((status = 200, body = AppStatus), (status = 401, description = "unauthenticated"),
        (status = 403, description = "insufficient_scope")),
    security(("api_key" = ["tenants:admin"])))]
pub async fn status(
    State(broker): State<Arc<TokenBroker>>,
    caller: Caller,
) -> Result<Json<AppStatus>, ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    Ok(Json(app_secrets::status(broker.credentials())))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotationAnswer {
    /// `requested`: Amazon accepted; the new secret arrives as a notification.
    pub status: &'static str,
}

impl From<RotationRequestError> for ApiError {
    fn from(error: RotationRequestError) -> Self {
        match error {
            RotationRequestError::Token(e) => token_error("", e),
            RotationRequestError::Refused(e) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "spapi_refused",
                "Amazon refused the rotation",
                format!(
                    "The Application Management API refused to rotate the client secret ({e})."
                ),
            ),
            RotationRequestError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "amazon_unavailable",
                "Amazon unavailable",
                "The Application Management API could not be reached; nothing changed.",
            )
            .retry_after(5),
            RotationRequestError::Database(e) => e.into(),
        }
    }
}

/// Asks Amazon for a new client secret. Scope: `tenants:admin`.
#[utoipa::path(post, path = "/v1/app/rotate-secret", tag = "app",
    responses((status = 202, body = RotationAnswer), (status = 401, description = "unauthenticated"),
        (status = 403, description = "insufficient_scope"),
        (status = 502, description = "spapi_refused or app_credentials_rejected"),
        (status = 503, description = "amazon_unavailable")),
    security(("api_key" = ["tenants:admin"])))]
pub async fn rotate_secret(
    State(broker): State<Arc<TokenBroker>>,
    State(spapi): State<Arc<SpApi>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    let actor = caller.0.actor();
    app_secrets::request_rotation(&broker, &spapi, &caller.0, &actor).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RotationAnswer {
            status: "requested",
        }),
    )
        .into_response())
}
