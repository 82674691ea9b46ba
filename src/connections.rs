//! The Connection as the API shows it (CONTRACT §3), and its health, derived
//! from what is stored. Never contains a token.

use crate::amazon::marketplaces::Region;
use crate::db::connections::ConnectionRow;
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;
use uuid::Uuid;

/// Amazon asks sellers to re-authorize public apps every 365 days.
pub const AUTHORIZATION_LIFETIME: Duration = Duration::days(365);
/// Authorizations ending within this are `expiring`.
pub const EXPIRING_WITHIN: Duration = Duration::days(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    Degraded,
    Expiring,
    Failing,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Expiring => "expiring",
            Health::Failing => "failing",
        }
    }
}

/// `failing` for needs_reauth; `degraded` when the last refresh failed for a
/// passing reason; `expiring` when the authorization ends within 30 days;
/// else `ok` (a disconnected connection is not unhealthy: it is off on purpose).
pub fn health(row: &ConnectionRow, now: OffsetDateTime) -> Health {
    match row.status.as_str() {
        "needs_reauth" => Health::Failing,
        "active" => {
            if row.last_error_code.as_deref() == Some("amazon_unavailable") {
                Health::Degraded
            } else if row
                .authorized_at
                .is_some_and(|at| at + AUTHORIZATION_LIFETIME - now <= EXPIRING_WITHIN)
            {
                Health::Expiring
            } else {
                Health::Ok
            }
        }
        _ => Health::Ok,
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastError {
    pub code: String,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A connection as the API returns it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionJson {
    pub id: Uuid,
    /// The tenant's slug.
    pub tenant: String,
    pub selling_partner_id: String,
    #[schema(example = "seller")]
    pub account_type: String,
    #[schema(example = "na")]
    pub region: String,
    pub marketplace_id: String,
    pub store_name: Option<String>,
    pub marketplace_ids: Option<Vec<String>>,
    #[schema(example = "active")]
    pub status: String,
    pub status_reason: Option<String>,
    pub health: Health,
    #[serde(with = "time::serde::rfc3339::option")]
    pub authorized_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub authorization_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_refresh_at: Option<OffsetDateTime>,
    pub last_error: Option<LastError>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl ConnectionJson {
    pub fn new(row: ConnectionRow, tenant_slug: &str, now: OffsetDateTime) -> Self {
        let health = health(&row, now);
        let last_error = match (
            row.last_error_code,
            row.last_error_message,
            row.last_error_at,
        ) {
            (Some(code), Some(message), Some(at)) => Some(LastError { code, message, at }),
            _ => None,
        };
        let utc = |t: OffsetDateTime| t.to_offset(time::UtcOffset::UTC);
        ConnectionJson {
            id: row.id,
            tenant: tenant_slug.to_owned(),
            selling_partner_id: row.selling_partner_id,
            account_type: row.account_type,
            region: row
                .region
                .parse::<Region>()
                .map(|r| r.as_str().to_owned())
                .unwrap_or(row.region),
            marketplace_id: row.marketplace_id,
            store_name: row.store_name,
            marketplace_ids: row.marketplace_ids,
            status: row.status,
            status_reason: row.status_reason,
            health,
            authorized_at: row.authorized_at.map(utc),
            authorization_expires_at: row.authorized_at.map(|at| utc(at + AUTHORIZATION_LIFETIME)),
            last_refresh_at: row.last_refresh_at.map(utc),
            last_error,
            created_at: utc(row.created_at),
            updated_at: utc(row.updated_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        status: &str,
        authorized_days_ago: i64,
        last_error: Option<&str>,
        now: OffsetDateTime,
    ) -> ConnectionRow {
        ConnectionRow {
            id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            selling_partner_id: "A1".into(),
            account_type: "seller".into(),
            region: "na".into(),
            marketplace_id: "ATVPDKIKX0DER".into(),
            store_name: None,
            marketplace_ids: None,
            status: status.into(),
            status_reason: None,
            status_changed_at: now,
            authorized_at: Some(now - Duration::days(authorized_days_ago)),
            last_refresh_at: None,
            last_error_code: last_error.map(str::to_owned),
            last_error_message: last_error.map(str::to_owned),
            last_error_at: last_error.map(|_| now),
            created_at: now,
            updated_at: now,
            access_token_expires_at: None,
        }
    }

    #[test]
    fn health_follows_status_errors_and_the_365_day_rule() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(health(&row("active", 10, None, now), now), Health::Ok);
        assert_eq!(health(&row("active", 334, None, now), now), Health::Ok);
        assert_eq!(
            health(&row("active", 336, None, now), now),
            Health::Expiring
        );
        assert_eq!(
            health(&row("active", 10, Some("amazon_unavailable"), now), now),
            Health::Degraded
        );
        assert_eq!(
            health(&row("needs_reauth", 10, Some("invalid_grant"), now), now),
            Health::Failing
        );
        assert_eq!(health(&row("disconnected", 10, None, now), now), Health::Ok);
        let json = ConnectionJson::new(row("active", 1, None, now), "t", now);
        assert_eq!(
            json.authorization_expires_at
                .zip(json.authorized_at)
                .map(|(e, a)| e - a),
            Some(Duration::days(365))
        );
    }
}
