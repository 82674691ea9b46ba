//! Pending authorizations, keyed by the hash of their `state` value, bound to the
//! browser session that started them. Consumed atomically on first use.

use crate::amazon::marketplaces::{AccountType, Region};
use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingAuthorization {
    pub tenant_id: Uuid,
    pub user_id: String,
    pub flow: String,
    pub marketplace_id: String,
    pub account_type: AccountType,
    pub region: Region,
    pub redirect_uri: String,
    pub reconnect_connection_id: Option<Uuid>,
    pub expected_selling_partner_id: Option<String>,
    pub expires_at: OffsetDateTime,
}

pub struct NewPendingAuthorization<'a> {
    pub state_hash: &'a [u8],
    pub session_binding: &'a [u8],
    pub tenant_id: Uuid,
    pub user_id: &'a str,
    pub flow: &'a str,
    pub marketplace_id: &'a str,
    pub account_type: AccountType,
    pub region: Region,
    pub redirect_uri: &'a str,
    pub reconnect_connection_id: Option<Uuid>,
    pub expected_selling_partner_id: Option<&'a str>,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

#[tracing::instrument(skip_all)]
pub async fn insert_pending(
    db: impl PgExecutor<'_>,
    p: NewPendingAuthorization<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into oauth_state (state_hash, session_binding, tenant_id, user_id, flow, marketplace_id,
             account_type, region, redirect_uri, reconnect_connection_id, expected_selling_partner_id,
             created_at, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(p.state_hash)
    .bind(p.session_binding)
    .bind(p.tenant_id)
    .bind(p.user_id)
    .bind(p.flow)
    .bind(p.marketplace_id)
    .bind(p.account_type)
    .bind(p.region)
    .bind(p.redirect_uri)
    .bind(p.reconnect_connection_id)
    .bind(p.expected_selling_partner_id)
    .bind(p.now)
    .bind(p.expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Atomically takes the pending authorization if it exists, is unexpired and
/// belongs to this browser session. Only one of many concurrent callers wins.
#[tracing::instrument(skip_all)]
pub async fn consume_pending(
    db: impl PgExecutor<'_>,
    state_hash: &[u8],
    session_binding: &[u8],
    now: OffsetDateTime,
) -> Result<Option<PendingAuthorization>, sqlx::Error> {
    sqlx::query_as(
        "delete from oauth_state
         where state_hash = $1 and session_binding = $2 and expires_at > $3
         returning tenant_id, user_id, flow, marketplace_id, account_type, region, redirect_uri,
                   reconnect_connection_id, expected_selling_partner_id, expires_at",
    )
    .bind(state_hash)
    .bind(session_binding)
    .bind(now)
    .fetch_optional(db)
    .await
}

/// Why a state could not be consumed, for the page that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateProblem {
    UnknownOrUsed,
    Expired,
    OtherSession,
}

#[tracing::instrument(skip_all)]
pub async fn diagnose(
    db: impl PgExecutor<'_>,
    state_hash: &[u8],
    session_binding: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<StateProblem, sqlx::Error> {
    let row: Option<(Vec<u8>, OffsetDateTime)> =
        sqlx::query_as("select session_binding, expires_at from oauth_state where state_hash = $1")
            .bind(state_hash)
            .fetch_optional(db)
            .await?;
    Ok(match row {
        None => StateProblem::UnknownOrUsed,
        Some((binding, _)) if Some(binding.as_slice()) != session_binding => {
            StateProblem::OtherSession
        }
        Some((_, expires_at)) if expires_at <= now => StateProblem::Expired,
        Some(_) => StateProblem::UnknownOrUsed,
    })
}

#[tracing::instrument(skip_all)]
pub async fn delete_expired(
    db: impl PgExecutor<'_>,
    now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("delete from oauth_state where expires_at <= $1")
            .bind(now)
            .execute(db)
            .await?
            .rows_affected(),
    )
}
