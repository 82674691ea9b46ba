//! The sandbox Amazon's side of the app's client secrets: which it accepts
//! (the configured ones until a rotation gives them 7 more days of the
//! sandbox's clock, then the rotated-in ones for 180 days), and the
//! Application Management API's rotation, which delivers Amazon's
//! `APPLICATION_OAUTH_CLIENT_NEW_SECRET` notification to sp-broker the way
//! the app's SQS queue would: later, not in the answer.

use super::{Sandbox, SandboxState};
use crate::amazon::lwa::GrantlessScope;
use crate::secrets;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::Duration;

/// How long Amazon keeps the old secret working after a rotation.
pub const OLD_SECRET_OVERLAP: Duration = Duration::days(7);
/// How long a new secret lives (Amazon's rotation period).
pub const SECRET_LIFETIME: Duration = Duration::days(180);
/// How long after the rotation the notification arrives.
const DELIVERY_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

impl Sandbox {
    /// The configured secrets are the app's first ones (never shortened here).
    async fn seed_secrets(&self) -> Result<(), sqlx::Error> {
        self.secrets_seeded
            .get_or_try_init(|| async {
                for secret in &self.client_secrets {
                    sqlx::query(
                        "insert into sandbox_client_secret (secret_hash, created_at) values ($1, $2)
                         on conflict do nothing",
                    )
                    .bind(secrets::sha256_secret(secret))
                    .bind(self.now())
                    .execute(&self.db)
                    .await?;
                }
                Ok::<(), sqlx::Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Whether LWA accepts this client secret now; counts the attempt.
    pub(super) async fn accepts_secret(&self, presented: &str) -> Result<bool, sqlx::Error> {
        self.seed_secrets().await?;
        let accepted: Option<bool> = sqlx::query_scalar(
            "update sandbox_client_secret set
                 accepted = accepted + (expires_at is null or expires_at > $2)::int,
                 refused = refused + (expires_at is not null and expires_at <= $2)::int
             where secret_hash = $1
             returning expires_at is null or expires_at > $2",
        )
        .bind(secrets::sha256(presented))
        .bind(self.now())
        .fetch_optional(&self.db)
        .await?;
        Ok(accepted.unwrap_or(false))
    }
}

fn spapi_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errors": [{"code": code, "message": message, "details": ""}]})),
    )
        .into_response()
}

/// `POST /sandbox/applications/2023-11-30/clientSecret`: a grantless token
/// of the rotation scope in `x-amz-access-token`; 204.
pub async fn rotate(State(state): SandboxState, headers: HeaderMap) -> Response {
    let Some(token) = headers
        .get("x-amz-access-token")
        .and_then(|v| v.to_str().ok())
    else {
        return spapi_error(
            StatusCode::FORBIDDEN,
            "Unauthorized",
            "Access to requested resource is denied.",
        );
    };
    let now = state.now();
    let scope_ok: Option<bool> = match sqlx::query_scalar(
        "select scope is not distinct from $2 and expires_at > $3
         from sandbox_access_token where token_hash = $1",
    )
    .bind(secrets::sha256(token))
    .bind(GrantlessScope::ClientCredentialRotation.as_str())
    .bind(now)
    .fetch_optional(&state.db)
    .await
    {
        Ok(found) => found,
        Err(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "sandbox database error").into_response()
        }
    };
    if scope_ok != Some(true) {
        return spapi_error(
            StatusCode::FORBIDDEN,
            "Unauthorized",
            "Access to requested resource is denied.",
        );
    }
    let new_secret = format!(
        "amzn1.oa2-cs.v1.sbx{}",
        secrets::random_token(32).expose_secret()
    );
    let old_expiry = now + OLD_SECRET_OVERLAP;
    let new_expiry = now + SECRET_LIFETIME;
    let stored: Result<(), sqlx::Error> = async {
        state.seed_secrets().await?;
        let mut tx = state.db.begin().await?;
        sqlx::query(
            "update sandbox_client_secret set expires_at = $1
             where expires_at is null or expires_at > $1",
        )
        .bind(old_expiry)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into sandbox_client_secret (secret_hash, created_at, expires_at) values ($1, $2, $3)",
        )
        .bind(secrets::sha256(&new_secret))
        .bind(now)
        .bind(new_expiry)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
    .await;
    if stored.is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "sandbox database error").into_response();
    }
    let time = |at: time::OffsetDateTime| at.format(&Rfc3339).unwrap_or_default();
    let notification = json!({
        "notificationVersion": "1.0",
        "notificationType": crate::app_secrets::NEW_SECRET,
        "payloadVersion": "2023-05-10",
        "eventTime": time(now),
        "payload": {"applicationOAuthClientNewSecret": {
            "clientId": state.client_id,
            "newClientSecret": new_secret,
            "newClientSecretExpiryTime": time(new_expiry),
            "oldClientSecretExpiryTime": time(old_expiry),
        }},
        "notificationMetadata": {
            "applicationId": state.app_id,
            "subscriptionId": "sandbox-subscription",
            "publishTime": time(now),
            "notificationId": uuid::Uuid::new_v4().to_string(),
        },
    });
    let credentials = std::sync::Arc::clone(&state.credentials);
    tokio::spawn(async move {
        let body = notification.to_string();
        // As SQS would: delivered again until taken (a few times here).
        for attempt in 1..=5u32 {
            tokio::time::sleep(DELIVERY_DELAY * attempt).await;
            match crate::app_secrets::receive(&credentials, body.as_bytes()).await {
                Ok(_) => {
                    tracing::info!("sandbox: delivered the new-secret notification");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "sandbox: the new-secret notification was not taken")
                }
            }
        }
    });
    StatusCode::NO_CONTENT.into_response()
}
