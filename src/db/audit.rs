//! The audit log: who did what to which connection, and when. Never a token.

use serde_json::Value;
use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, Default)]
pub struct AuditTarget {
    pub tenant_id: Option<Uuid>,
    pub connection_id: Option<Uuid>,
}

#[tracing::instrument(skip_all, fields(action))]
pub async fn record(
    db: impl PgExecutor<'_>,
    at: OffsetDateTime,
    actor: &str,
    action: &str,
    target: AuditTarget,
    detail: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into audit_event (at, actor, action, tenant_id, connection_id, detail)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(target.tenant_id)
    .bind(target.connection_id)
    .bind(detail)
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
pub struct AuditEvent {
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub connection_id: Option<Uuid>,
    pub detail: Value,
}

#[tracing::instrument(skip_all)]
pub async fn list_for_connection(
    db: impl PgExecutor<'_>,
    connection_id: Uuid,
) -> Result<Vec<AuditEvent>, sqlx::Error> {
    sqlx::query_as(
        "select at, actor, action, connection_id, detail from audit_event
         where connection_id = $1 order by id",
    )
    .bind(connection_id)
    .fetch_all(db)
    .await
}

/// An audit entry with its tenant's slug, for the dashboard's log.
#[derive(Debug, sqlx::FromRow)]
pub struct AuditLine {
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub tenant: Option<String>,
    pub connection_id: Option<Uuid>,
    pub detail: Value,
}

/// The newest entries, optionally of one tenant (by slug) and one connection.
#[tracing::instrument(skip_all)]
pub async fn list_recent(
    db: impl PgExecutor<'_>,
    tenant_slug: Option<&str>,
    connection_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<AuditLine>, sqlx::Error> {
    sqlx::query_as(
        "select a.at, a.actor, a.action, t.slug as tenant, a.connection_id, a.detail
         from audit_event a left join tenant t on t.id = a.tenant_id
         where ($1::text is null or a.tenant_id = (select id from tenant where slug = $1))
           and ($2::uuid is null or a.connection_id = $2)
         order by a.id desc limit $3",
    )
    .bind(tenant_slug)
    .bind(connection_id)
    .bind(limit)
    .fetch_all(db)
    .await
}
