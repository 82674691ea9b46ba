//! Connections: one seller's authorization in one region, held by one tenant.
//! Sealed columns hold crypto.rs envelopes bound to (tenant, row); this module
//! stores and returns them but never opens them.

use sqlx::{PgExecutor, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

pub const COLUMNS: &str =
    "id, tenant_id, selling_partner_id, account_type, region, marketplace_id, \
    store_name, marketplace_ids, status, status_reason, status_changed_at, authorized_at, \
    last_refresh_at, last_error_code, last_error_message, last_error_at, created_at, updated_at, \
    access_token_expires_at";

/// A connection as stored, without its sealed secrets.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectionRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub selling_partner_id: String,
    pub account_type: String,
    pub region: String,
    pub marketplace_id: String,
    pub store_name: Option<String>,
    pub marketplace_ids: Option<Vec<String>>,
    pub status: String,
    pub status_reason: Option<String>,
    pub status_changed_at: OffsetDateTime,
    pub authorized_at: Option<OffsetDateTime>,
    pub last_refresh_at: Option<OffsetDateTime>,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub last_error_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub access_token_expires_at: Option<OffsetDateTime>,
}

#[tracing::instrument(skip_all)]
pub async fn list_for_tenant(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Vec<ConnectionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from connection where tenant_id = $1 order by created_at, id"
    ))
    .bind(tenant_id)
    .fetch_all(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn find_for_tenant(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<ConnectionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from connection where tenant_id = $1 and id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Locks the connection keyed by (tenant, selling partner, region), creating an
/// empty `disconnected` one if there is none. Returns its id and whether it is new.
#[tracing::instrument(skip_all)]
pub async fn lock_or_create(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
    selling_partner_id: &str,
    region: &str,
    account_type: &str,
    marketplace_id: &str,
    now: OffsetDateTime,
) -> Result<(Uuid, bool), sqlx::Error> {
    sqlx::query_as(
        "insert into connection (id, tenant_id, selling_partner_id, account_type, region, marketplace_id,
             status, status_changed_at, created_at, updated_at)
         values ($1, $2, $3, $4, $5, $6, 'disconnected', $7, $7, $7)
         on conflict (tenant_id, selling_partner_id, region) do update set updated_at = excluded.updated_at
         returning id, (xmax = 0) as inserted",
    )
    .bind(Uuid::new_v4())
    .bind(tenant_id)
    .bind(selling_partner_id)
    .bind(account_type)
    .bind(region)
    .bind(marketplace_id)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
}

pub struct Authorized<'a> {
    pub id: Uuid,
    pub account_type: &'a str,
    pub marketplace_id: &'a str,
    pub refresh_token_sealed: &'a [u8],
    pub access_token_sealed: &'a [u8],
    pub access_token_expires_at: OffsetDateTime,
    pub now: OffsetDateTime,
}

/// Stores a new authorization: the refresh token replaced atomically, status
/// `active`, `authorized_at` now, errors cleared.
#[tracing::instrument(skip_all)]
pub async fn store_authorization(
    tx: &mut Transaction<'_, Postgres>,
    a: Authorized<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update connection set
             account_type = $2, marketplace_id = $3,
             refresh_token_sealed = $4, access_token_sealed = $5, access_token_expires_at = $6,
             status_changed_at = case when status = 'active' then status_changed_at else $7 end,
             status = 'active', status_reason = null,
             authorized_at = $7, last_refresh_at = $7,
             last_error_code = null, last_error_message = null, last_error_at = null,
             updated_at = $7
         where id = $1",
    )
    .bind(a.id)
    .bind(a.account_type)
    .bind(a.marketplace_id)
    .bind(a.refresh_token_sealed)
    .bind(a.access_token_sealed)
    .bind(a.access_token_expires_at)
    .bind(a.now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Erases the stored tokens and marks the connection `disconnected`.
/// Returns false when the tenant has no such connection.
#[tracing::instrument(skip_all)]
pub async fn disconnect(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "update connection set
             refresh_token_sealed = null, access_token_sealed = null, access_token_expires_at = null,
             status_changed_at = case when status = 'disconnected' then status_changed_at else $3 end,
             status = 'disconnected', status_reason = 'disconnected on request', updated_at = $3
         where tenant_id = $1 and id = $2",
    )
    .bind(tenant_id)
    .bind(id)
    .bind(now)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// The verified details of a seller account (from marketplaceParticipations).
#[tracing::instrument(skip_all)]
pub async fn update_verified_details(
    db: impl PgExecutor<'_>,
    id: Uuid,
    store_name: Option<&str>,
    marketplace_ids: &[String],
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update connection set store_name = coalesce($2, store_name), marketplace_ids = $3, updated_at = $4
         where id = $1",
    )
    .bind(id)
    .bind(store_name)
    .bind(marketplace_ids)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}
