//! Tenants: the platform's customer accounts.

use serde::Serialize;
use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Tenant {
    #[serde(skip)]
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    #[serde(skip)]
    pub last_marketplace_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `^[a-z0-9][a-z0-9-]{1,62}$`
pub fn is_valid_slug(slug: &str) -> bool {
    let bytes = slug.as_bytes();
    (2..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[tracing::instrument(skip_all)]
pub async fn insert_tenant(
    db: impl PgExecutor<'_>,
    slug: &str,
    name: &str,
    now: OffsetDateTime,
) -> Result<Tenant, sqlx::Error> {
    sqlx::query_as(
        "insert into tenant (id, slug, name, created_at) values ($1, $2, $3, $4)
         returning id, slug, name, last_marketplace_id, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(slug)
    .bind(name)
    .bind(now)
    .fetch_one(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn find_tenant_by_slug(
    db: impl PgExecutor<'_>,
    slug: &str,
) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as(
        "select id, slug, name, last_marketplace_id, created_at from tenant where slug = $1",
    )
    .bind(slug)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn find_tenant(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as(
        "select id, slug, name, last_marketplace_id, created_at from tenant where id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn list_tenants(db: impl PgExecutor<'_>) -> Result<Vec<Tenant>, sqlx::Error> {
    sqlx::query_as(
        "select id, slug, name, last_marketplace_id, created_at from tenant order by slug",
    )
    .fetch_all(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn update_last_marketplace(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    marketplace_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("update tenant set last_marketplace_id = $2 where id = $1")
        .bind(tenant_id)
        .bind(marketplace_id)
        .execute(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_valid_slug;

    #[test]
    fn slugs() {
        for good in ["demo", "a1", "acme-eu", "0x", &"a".repeat(63)] {
            assert!(is_valid_slug(good), "{good}");
        }
        for bad in ["", "a", "-a", "Acme", "a_b", "a b", "é1", &"a".repeat(64)] {
            assert!(!is_valid_slug(bad), "{bad}");
        }
    }
}
