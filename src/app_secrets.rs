//! The app's client-secret lifecycle (CONTRACT §7): Amazon's notifications
//! (a new secret, a coming expiry), the state `GET /v1/app/status` shows,
//! asking Amazon to rotate, and the warnings ahead of an expiry.
//!
//! The secrets themselves (which to send, which worked) are
//! [`AppCredentials`]'s; this module changes what is stored and tells every
//! instance (`NOTIFY`), which then reloads. No value of a secret is ever
//! logged, answered or stored in clear.

use crate::amazon::lwa::GrantlessScope;
use crate::amazon::spapi::{SpApi, SpApiError};
use crate::api_keys::ApiPrincipal;
use crate::broker::app_credentials::{fingerprint, seal_context, KnownSecret, SecretSource};
use crate::broker::{AppCredentials, TokenBroker, TokenError};
use crate::db::app_secrets::{self, ExpiryWarning};
use crate::db::audit::{self, AuditTarget};
use crate::db::notify::{self, Change};
use crate::domain::EventType;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

pub const NEW_SECRET: &str = "APPLICATION_OAUTH_CLIENT_NEW_SECRET";
pub const SECRET_EXPIRY: &str = "APPLICATION_OAUTH_CLIENT_SECRET_EXPIRY";
/// The longest client secret taken from a notification (LWA's are ~80 characters).
const MAX_SECRET_CHARS: usize = 512;

/// What a notification did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A new secret, stored; every instance uses it within seconds.
    SecretStored { secret_id: Uuid },
    /// An expiry recorded on the secret in use.
    ExpiryRecorded { secret_id: Uuid },
    /// This notification (or this secret) was taken before: nothing changed.
    AlreadyKnown,
    /// Another notification type: nothing to do.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("the notification is for another LWA client id than this app's")]
    OtherClient,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    notification_type: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    notification_metadata: Option<Metadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    notification_id: Option<String>,
}

/// `payload.applicationOAuthClientNewSecret`. Deliberately not `Debug`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSecret {
    client_id: String,
    new_client_secret: SecretString,
    #[serde(default)]
    new_client_secret_expiry_time: Option<String>,
    #[serde(default)]
    old_client_secret_expiry_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretExpiry {
    client_id: String,
    client_secret_expiry_time: String,
    #[serde(default)]
    client_secret_expiry_reason: Option<String>,
}

fn time_field(raw: &str, what: &'static str) -> Result<OffsetDateTime, NotificationError> {
    OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| NotificationError::Malformed(what))
}

fn optional_time(
    raw: Option<&str>,
    what: &'static str,
) -> Result<Option<OffsetDateTime>, NotificationError> {
    raw.map(|raw| time_field(raw, what)).transpose()
}

/// A notification as Amazon delivers it, checked: everything that can be
/// known from its bytes alone (no database, no credentials). Fuzzed
/// (`fuzz/fuzz_targets/notification_body.rs`). Deliberately not `Debug`: a
/// new secret's value is inside.
pub enum Notification {
    NewSecret {
        client_id: String,
        secret: SecretString,
        new_expiry: Option<OffsetDateTime>,
        old_expiry: Option<OffsetDateTime>,
        notification_id: Option<String>,
    },
    SecretExpiry {
        client_id: String,
        expires_at: OffsetDateTime,
        /// Amazon's reason, kept only when it is short printable text.
        reason: Option<String>,
        notification_id: Option<String>,
    },
    /// A type sp-broker does not act on; its name only when it looks like one.
    Other { notification_type: Option<String> },
}

impl Notification {
    /// The LWA client id it is for (`None` for a type not acted on).
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Notification::NewSecret { client_id, .. }
            | Notification::SecretExpiry { client_id, .. } => Some(client_id),
            Notification::Other { .. } => None,
        }
    }

    pub fn parse(body: &[u8]) -> Result<Notification, NotificationError> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(|_| {
            NotificationError::Malformed(
                "the body is not an Amazon notification (JSON with `notificationType` and `payload`)",
            )
        })?;
        let notification_id = envelope
            .notification_metadata
            .and_then(|m| m.notification_id)
            .filter(|id| !id.is_empty());
        if let Some(id) = &notification_id {
            if crate::domain::check_text(id, 200).is_err() {
                return Err(NotificationError::Malformed(
                    "`notificationMetadata.notificationId` must be printable text of at most 200 characters",
                ));
            }
        }
        let payload = |name: &str| envelope.payload.get(name).cloned().unwrap_or(Value::Null);
        match envelope.notification_type.as_str() {
            NEW_SECRET => {
                let new: NewSecret = serde_json::from_value(payload("applicationOAuthClientNewSecret"))
                    .map_err(|_| NotificationError::Malformed("`payload.applicationOAuthClientNewSecret` needs `clientId` and `newClientSecret` (strings)"))?;
                let value = new.new_client_secret.expose_secret();
                if value.trim().is_empty()
                    || value.trim() != value
                    || value.chars().count() > MAX_SECRET_CHARS
                    || value.chars().any(char::is_control)
                {
                    return Err(NotificationError::Malformed(
                        "`newClientSecret` must be printable text of at most 512 characters",
                    ));
                }
                Ok(Notification::NewSecret {
                    new_expiry: optional_time(
                        new.new_client_secret_expiry_time.as_deref(),
                        "`newClientSecretExpiryTime` must be an RFC 3339 time",
                    )?,
                    old_expiry: optional_time(
                        new.old_client_secret_expiry_time.as_deref(),
                        "`oldClientSecretExpiryTime` must be an RFC 3339 time",
                    )?,
                    client_id: new.client_id,
                    secret: new.new_client_secret,
                    notification_id,
                })
            }
            SECRET_EXPIRY => {
                let expiry: SecretExpiry = serde_json::from_value(payload("applicationOAuthClientSecretExpiry"))
                    .map_err(|_| NotificationError::Malformed("`payload.applicationOAuthClientSecretExpiry` needs `clientId` and `clientSecretExpiryTime` (strings)"))?;
                Ok(Notification::SecretExpiry {
                    expires_at: time_field(
                        &expiry.client_secret_expiry_time,
                        "`clientSecretExpiryTime` must be an RFC 3339 time",
                    )?,
                    reason: expiry
                        .client_secret_expiry_reason
                        .filter(|r| crate::domain::check_text(r, 100).is_ok()),
                    client_id: expiry.client_id,
                    notification_id,
                })
            }
            other => {
                // Its payload is not ours to log; its type only when it looks like one.
                let looks_like_a_type = !other.is_empty()
                    && other.len() <= 64
                    && other.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
                Ok(Notification::Other {
                    notification_type: looks_like_a_type.then(|| other.to_owned()),
                })
            }
        }
    }
}

/// Takes one notification as Amazon delivers it on the app's SQS queue.
pub async fn receive(
    credentials: &AppCredentials,
    body: &[u8],
) -> Result<Received, NotificationError> {
    let notification = Notification::parse(body)?;
    if notification
        .client_id()
        .is_some_and(|id| id != credentials.client_id())
    {
        return Err(NotificationError::OtherClient);
    }
    match notification {
        Notification::NewSecret {
            secret,
            new_expiry,
            old_expiry,
            notification_id,
            ..
        } => {
            store_new_secret(
                credentials,
                &secret,
                new_expiry,
                old_expiry,
                notification_id.as_deref(),
            )
            .await
        }
        Notification::SecretExpiry {
            expires_at,
            reason,
            notification_id,
            ..
        } => {
            record_expiry(
                credentials,
                expires_at,
                reason.as_deref(),
                notification_id.as_deref(),
            )
            .await
        }
        Notification::Other { notification_type } => {
            tracing::info!(
                notification_type = notification_type.as_deref().unwrap_or("(unrecognised)"),
                "app notification of a type sp-broker does not act on: ignored"
            );
            Ok(Received::Ignored)
        }
    }
}

async fn store_new_secret(
    credentials: &AppCredentials,
    secret: &SecretString,
    new_expiry: Option<OffsetDateTime>,
    old_expiry: Option<OffsetDateTime>,
    notification_id: Option<&str>,
) -> Result<Received, NotificationError> {
    let now = credentials.now();
    let print = fingerprint(secret);
    // The secret it replaces: the one sent first until now.
    let replaced = credentials.secret_in_use().map(|s| s.id);
    let mut tx = credentials.db().begin().await?;
    if let Some(id) = notification_id {
        if !app_secrets::claim_notification(&mut tx, id, NEW_SECRET, now).await? {
            return Ok(Received::AlreadyKnown);
        }
    }
    if app_secrets::exists(&mut *tx, &print).await? {
        tx.commit().await?;
        return Ok(Received::AlreadyKnown);
    }
    let id = Uuid::new_v4();
    let row = id.to_string();
    let sealed = credentials.keys().seal_str(seal_context(&row), secret);
    if !app_secrets::insert_notified(&mut tx, id, &print, &sealed, now, new_expiry).await? {
        return Ok(Received::AlreadyKnown);
    }
    crate::db::app_state::lift_hold(&mut *tx, now).await?;
    if let (Some(replaced), Some(old_expiry)) = (replaced, old_expiry) {
        app_secrets::set_expiry(&mut tx, replaced, old_expiry, Some("ROTATED")).await?;
    }
    audit::record(
        &mut *tx,
        now,
        "amazon:notification",
        "app.secret_added",
        AuditTarget::default(),
        json!({
            "secret_id": id,
            "expires_at": new_expiry.map(rfc3339),
            "replaces": replaced,
            "replaced_expires_at": old_expiry.map(rfc3339),
            "notification_id": notification_id,
        }),
    )
    .await?;
    notify::send(&mut *tx, &Change::App).await?;
    tx.commit().await?;
    credentials.reload().await?;
    tracing::warn!(secret_id = %id, "a new client secret arrived from Amazon: it is sent first from now on");
    Ok(Received::SecretStored { secret_id: id })
}

async fn record_expiry(
    credentials: &AppCredentials,
    expires_at: OffsetDateTime,
    reason: Option<&str>,
    notification_id: Option<&str>,
) -> Result<Received, NotificationError> {
    let Some(in_use) = credentials.secret_in_use() else {
        return Err(NotificationError::Malformed(
            "no client secret is configured to record the expiry on",
        ));
    };
    let now = credentials.now();
    let mut tx = credentials.db().begin().await?;
    if let Some(id) = notification_id {
        if !app_secrets::claim_notification(&mut tx, id, SECRET_EXPIRY, now).await? {
            return Ok(Received::AlreadyKnown);
        }
    }
    if in_use.expires_at == Some(expires_at)
        && (reason.is_none() || in_use.expiry_reason.as_deref() == reason)
    {
        tx.commit().await?;
        return Ok(Received::AlreadyKnown);
    }
    app_secrets::set_expiry(&mut tx, in_use.id, expires_at, reason).await?;
    audit::record(
        &mut *tx,
        now,
        "amazon:notification",
        "app.secret_expiry_recorded",
        AuditTarget::default(),
        json!({
            "secret_id": in_use.id,
            "expires_at": rfc3339(expires_at),
            "reason": reason,
            "notification_id": notification_id,
        }),
    )
    .await?;
    notify::send(&mut *tx, &Change::App).await?;
    tx.commit().await?;
    credentials.reload().await?;
    tracing::warn!(secret_id = %in_use.id, days_left = (expires_at - now).whole_days(), "Amazon says the client secret in use expires: rotate it");
    Ok(Received::ExpiryRecorded {
        secret_id: in_use.id,
    })
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// One secret in `GET /v1/app/status`: never its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretState {
    pub id: Uuid,
    /// `environment`, `environment_previous` or `notification`.
    #[schema(value_type = String)]
    pub source: SecretSource,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Amazon's reason for the expiry (`PERIODIC_ROTATION`), or `ROTATED`
    /// when a newer secret replaced this one.
    pub expiry_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_worked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_rejected_at: Option<OffsetDateTime>,
    /// The one sent first now.
    pub in_use: bool,
}

/// `GET /v1/app/status` and `sp-broker app status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppStatus {
    pub client_id: String,
    /// `ok`, `rejected` (every secret refused) or `unknown` (none tried yet).
    pub state: &'static str,
    #[serde(with = "time::serde::rfc3339::option")]
    pub rejected_since: Option<OffsetDateTime>,
    /// Newest first, expired ones included (they are not sent).
    pub secrets: Vec<SecretState>,
}

/// As this instance knows it (kept current by `NOTIFY`; the CLI reloads first).
pub fn status(credentials: &AppCredentials) -> AppStatus {
    let hold = credentials.state();
    let ordered = credentials.secrets_in_order();
    let in_use = ordered.first().map(|s| s.id);
    let secrets: Vec<KnownSecret> = credentials.all_secrets_newest_first();
    let any_worked = secrets.iter().any(|s| s.last_worked_at.is_some());
    let state = if hold.is_rejected() {
        "rejected"
    } else if hold.last_ok_at.is_some() || any_worked {
        "ok"
    } else {
        "unknown"
    };
    AppStatus {
        client_id: credentials.client_id().to_owned(),
        state,
        rejected_since: hold.rejected_since,
        secrets: secrets
            .into_iter()
            .map(|s| SecretState {
                id: s.id,
                source: s.source,
                created_at: s.created_at,
                expires_at: s.expires_at,
                expiry_reason: s.expiry_reason,
                last_worked_at: s.last_worked_at,
                last_rejected_at: s.last_rejected_at,
                in_use: Some(s.id) == in_use,
            })
            .collect(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotationRequestError {
    /// No grantless token with the rotation scope (held credentials, Amazon
    /// down, the scope refused).
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("Amazon refused the rotation: {0}")]
    Refused(SpApiError),
    #[error("Amazon could not be reached")]
    Unavailable,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Asks Amazon for a new client secret (`POST /applications/2023-11-30/clientSecret`
/// on the NA endpoint, with a grantless token of the rotation scope). The
/// new secret arrives later, as the notification [`receive`] takes.
pub async fn request_rotation(
    broker: &TokenBroker,
    spapi: &SpApi,
    caller: &ApiPrincipal,
    actor: &str,
) -> Result<(), RotationRequestError> {
    let token = broker
        .grantless_token(caller, GrantlessScope::ClientCredentialRotation)
        .await?;
    match spapi.rotate_client_secret(&token.secret).await {
        Ok(()) => {}
        Err(SpApiError::Unavailable | SpApiError::Throttled) => {
            return Err(RotationRequestError::Unavailable)
        }
        Err(refused) => return Err(RotationRequestError::Refused(refused)),
    }
    // Amazon has rotated: a failed audit write must not read as "nothing
    // changed" (a second request would rotate again).
    let credentials = broker.credentials();
    if let Err(e) = audit::record(
        credentials.db(),
        credentials.now(),
        actor,
        "app.secret_rotation_requested",
        AuditTarget::default(),
        json!({}),
    )
    .await
    {
        tracing::error!(error = %e, "the rotation was requested but its audit entry could not be written");
    }
    tracing::warn!(%actor, "client-secret rotation requested: Amazon sends the new secret as a notification");
    Ok(())
}

/// `app.secret_expiring` 30 and 7 days before the secret in use expires,
/// once each (across instances).
pub async fn warn_if_expiring(credentials: &AppCredentials) -> Result<(), sqlx::Error> {
    let Some(in_use) = credentials.secret_in_use() else {
        return Ok(());
    };
    let Some(expires_at) = in_use.expires_at else {
        return Ok(());
    };
    let now = credentials.now();
    let left = expires_at - now;
    let warning = if left <= time::Duration::days(7) {
        ExpiryWarning::SevenDays
    } else if left <= time::Duration::days(30) {
        ExpiryWarning::ThirtyDays
    } else {
        return Ok(());
    };
    if left <= time::Duration::ZERO {
        return Ok(());
    }
    let mut tx = credentials.db().begin().await?;
    if app_secrets::claim_expiry_warning(&mut tx, in_use.id, warning, now).await? {
        crate::events::record_app_event(
            &mut tx,
            EventType::AppSecretExpiring,
            json!({
                "secret": {"id": in_use.id, "source": in_use.source, "expires_at": rfc3339(expires_at)},
                "days_left": left.whole_days(),
                "warning_days": warning.days(),
                "action": "rotate the client secret: `sp-broker app rotate-secret`, or Rotate on /ops",
            }),
            now,
        )
        .await?;
        tracing::warn!(
            days_left = left.whole_days(),
            "the client secret in use expires soon: rotate it"
        );
    }
    tx.commit().await?;
    Ok(())
}
