//! One-time login tokens (10 minutes, single use), stored only as hashes.

use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

crate::domain::text_enum! {
    /// Whom a login link signs in: a tenant's user, or an operator.
    pub enum LoginKind ("login kind (tenant or ops)") {
        Tenant => "tenant",
        Ops => "ops",
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct LoginToken {
    pub kind: LoginKind,
    pub tenant_id: Option<Uuid>,
    pub user_id: String,
    pub email: Option<String>,
    pub return_to: Option<String>,
    pub expires_at: OffsetDateTime,
}

pub struct NewLoginToken<'a> {
    pub token_hash: &'a [u8],
    pub kind: LoginKind,
    pub tenant_id: Option<Uuid>,
    pub user_id: &'a str,
    pub email: Option<&'a str>,
    pub return_to: Option<&'a str>,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

#[tracing::instrument(skip_all)]
pub async fn insert_login_token(
    db: impl PgExecutor<'_>,
    token: NewLoginToken<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into login_token (token_hash, kind, tenant_id, user_id, email, return_to, created_at, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(token.token_hash)
    .bind(token.kind)
    .bind(token.tenant_id)
    .bind(token.user_id)
    .bind(token.email)
    .bind(token.return_to)
    .bind(token.now)
    .bind(token.expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes the token and returns it: whatever happens next, it is used.
#[tracing::instrument(skip_all)]
pub async fn consume_login_token(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<LoginToken>, sqlx::Error> {
    sqlx::query_as(
        "delete from login_token where token_hash = $1
         returning kind, tenant_id, user_id, email, return_to, expires_at",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn delete_expired(
    db: impl PgExecutor<'_>,
    now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("delete from login_token where expires_at <= $1")
            .bind(now)
            .execute(db)
            .await?
            .rows_affected(),
    )
}
