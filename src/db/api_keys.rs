//! API keys: stored as a public id plus the SHA-256 of the secret part.

use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub public_id: String,
    pub secret_hash: Vec<u8>,
    pub name: String,
    pub tenant_id: Option<Uuid>,
    pub tenant_slug: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

const SELECT: &str = "select k.id, k.public_id, k.secret_hash, k.name, k.tenant_id, t.slug as tenant_slug, \
    k.scopes, k.created_at, k.last_used_at, k.revoked_at from api_key k left join tenant t on t.id = k.tenant_id";

pub struct NewApiKey<'a> {
    pub id: Uuid,
    pub public_id: &'a str,
    pub secret_hash: &'a [u8],
    pub name: &'a str,
    pub tenant_id: Option<Uuid>,
    pub scopes: &'a [String],
    pub now: OffsetDateTime,
}

#[tracing::instrument(skip_all)]
pub async fn insert_api_key(
    db: impl PgExecutor<'_>,
    key: NewApiKey<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into api_key (id, public_id, secret_hash, name, tenant_id, scopes, created_at)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(key.id)
    .bind(key.public_id)
    .bind(key.secret_hash)
    .bind(key.name)
    .bind(key.tenant_id)
    .bind(key.scopes)
    .bind(key.now)
    .execute(db)
    .await?;
    Ok(())
}

/// The active (unrevoked) key with this public id.
#[tracing::instrument(skip_all)]
pub async fn find_active_by_public_id(
    db: impl PgExecutor<'_>,
    public_id: &str,
) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT} where k.public_id = $1 and k.revoked_at is null"
    ))
    .bind(public_id)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn list_api_keys(
    db: impl PgExecutor<'_>,
    tenant_id: Option<Uuid>,
) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT} where ($1::uuid is null or k.tenant_id = $1) order by k.created_at, k.id"
    ))
    .bind(tenant_id)
    .fetch_all(db)
    .await
}

/// Revokes by id or public id; returns the public id when something was revoked.
#[tracing::instrument(skip_all)]
pub async fn revoke_api_key(
    db: impl PgExecutor<'_>,
    id_or_public_id: &str,
    now: OffsetDateTime,
) -> Result<Option<(Uuid, String, Option<Uuid>)>, sqlx::Error> {
    let id = Uuid::parse_str(id_or_public_id).ok();
    sqlx::query_as(
        "update api_key set revoked_at = $3
         where (id = $1 or public_id = $2) and revoked_at is null
         returning id, public_id, tenant_id",
    )
    .bind(id)
    .bind(id_or_public_id)
    .bind(now)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn touch_last_used(
    db: impl PgExecutor<'_>,
    id: Uuid,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query("update api_key set last_used_at = $2 where id = $1 and (last_used_at is null or last_used_at < $2)")
        .bind(id)
        .bind(now)
        .execute(db)
        .await?;
    Ok(())
}
