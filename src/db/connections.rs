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

/// What the token broker needs to know about a connection.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenStateRow {
    pub tenant_id: Uuid,
    pub selling_partner_id: String,
    pub region: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub access_token_sealed: Option<Vec<u8>>,
    pub access_token_expires_at: Option<OffsetDateTime>,
    pub refresh_cooldown_until: Option<OffsetDateTime>,
    pub refresh_failures: i32,
}

const TOKEN_STATE: &str = "tenant_id, selling_partner_id, region, status, status_reason, \
    access_token_sealed, access_token_expires_at, refresh_cooldown_until, refresh_failures";

#[tracing::instrument(skip_all)]
pub async fn find_token_state(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<TokenStateRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {TOKEN_STATE} from connection where id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Claims the refresh lease if it is free (or expired) and returns the sealed
/// refresh token. Holds no database connection while Amazon is called: the
/// lease is a row value, not a lock. `None` when another instance holds it,
/// the token changed since `seen_expires_at` was read, or the connection is no
/// longer active.
#[tracing::instrument(skip_all)]
pub async fn claim_refresh_lease(
    db: impl PgExecutor<'_>,
    id: Uuid,
    owner: Uuid,
    now: OffsetDateTime,
    until: OffsetDateTime,
    seen_expires_at: Option<OffsetDateTime>,
) -> Result<Option<Option<Vec<u8>>>, sqlx::Error> {
    // The token must still be the one the caller read: if another instance
    // refreshed in between, the claim fails and the caller re-reads it.
    sqlx::query_scalar(
        "update connection set refresh_lease_owner = $2, refresh_lease_until = $4
         where id = $1 and status = 'active'
           and access_token_expires_at is not distinct from $5
           and (refresh_lease_until is null or refresh_lease_until <= $3 or refresh_lease_owner = $2)
         returning refresh_token_sealed",
    )
    .bind(id)
    .bind(owner)
    .bind(now)
    .bind(until)
    .bind(seen_expires_at)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn release_refresh_lease(
    db: impl PgExecutor<'_>,
    id: Uuid,
    owner: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update connection set refresh_lease_owner = null, refresh_lease_until = null
         where id = $1 and refresh_lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .execute(db)
    .await?;
    Ok(())
}

pub struct Refreshed<'a> {
    pub id: Uuid,
    pub owner: Uuid,
    pub access_token_sealed: &'a [u8],
    pub access_token_expires_at: OffsetDateTime,
    /// Only when Amazon sent a different refresh token.
    pub refresh_token_sealed: Option<&'a [u8]>,
    pub now: OffsetDateTime,
}

/// Writes a refreshed token back, only while the lease is still ours and the
/// connection still active. Returns false otherwise.
#[tracing::instrument(skip_all)]
pub async fn store_refreshed(
    db: impl PgExecutor<'_>,
    r: Refreshed<'_>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "update connection set
             access_token_sealed = $3, access_token_expires_at = $4,
             refresh_token_sealed = coalesce($5, refresh_token_sealed),
             last_refresh_at = $6, last_error_code = null, last_error_message = null, last_error_at = null,
             refresh_failures = 0, refresh_cooldown_until = null,
             refresh_lease_owner = null, refresh_lease_until = null, updated_at = $6
         where id = $1 and refresh_lease_owner = $2 and status = 'active'",
    )
    .bind(r.id)
    .bind(r.owner)
    .bind(r.access_token_sealed)
    .bind(r.access_token_expires_at)
    .bind(r.refresh_token_sealed)
    .bind(r.now)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Amazon said `invalid_grant`: the connection needs the seller to reauthorize.
/// Returns false when it was no longer active.
#[tracing::instrument(skip_all)]
pub async fn mark_needs_reauth(
    db: impl PgExecutor<'_>,
    id: Uuid,
    reason: &str,
    error_message: &str,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "update connection set
             status = 'needs_reauth', status_reason = $2, status_changed_at = $4,
             access_token_sealed = null, access_token_expires_at = null,
             last_error_code = 'invalid_grant', last_error_message = $3, last_error_at = $4,
             refresh_lease_owner = null, refresh_lease_until = null, refresh_cooldown_until = null,
             updated_at = $4
         where id = $1 and status = 'active'",
    )
    .bind(id)
    .bind(reason)
    .bind(error_message)
    .bind(now)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// A passing failure: records the error, starts the cooldown, frees the lease.
#[tracing::instrument(skip_all)]
pub async fn record_refresh_failure(
    db: impl PgExecutor<'_>,
    id: Uuid,
    owner: Uuid,
    code: &str,
    message: &str,
    cooldown_until: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update connection set
             last_error_code = $3, last_error_message = $4, last_error_at = $6,
             refresh_failures = refresh_failures + case when $5::timestamptz is null then 0 else 1 end,
             refresh_cooldown_until = coalesce($5, refresh_cooldown_until),
             refresh_lease_owner = null, refresh_lease_until = null, updated_at = $6
         where id = $1 and (refresh_lease_owner = $2 or refresh_lease_owner is null)",
    )
    .bind(id)
    .bind(owner)
    .bind(code)
    .bind(message)
    .bind(cooldown_until)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// `force_refresh` is honoured at most once per `window` per connection, across
/// instances. `Err(seconds)` says when it may be asked again.
#[tracing::instrument(skip_all)]
pub async fn claim_force_refresh(
    db: impl PgExecutor<'_> + Copy,
    id: Uuid,
    now: OffsetDateTime,
    window: time::Duration,
) -> Result<Result<(), i64>, sqlx::Error> {
    let claimed = sqlx::query(
        "update connection set force_refresh_at = $2
         where id = $1 and (force_refresh_at is null or force_refresh_at <= $3)",
    )
    .bind(id)
    .bind(now)
    .bind(now - window)
    .execute(db)
    .await?
    .rows_affected();
    if claimed == 1 {
        return Ok(Ok(()));
    }
    let last: Option<OffsetDateTime> =
        sqlx::query_scalar("select force_refresh_at from connection where id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?
            .flatten();
    let retry = last
        .map(|at| (at + window - now).whole_seconds().max(1))
        .unwrap_or(1);
    Ok(Err(retry))
}

#[tracing::instrument(skip_all)]
pub async fn insert_refresh_event(
    db: impl PgExecutor<'_>,
    id: Uuid,
    at: OffsetDateTime,
    outcome: &str,
    latency_ms: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("insert into refresh_event (connection_id, at, outcome, latency_ms) values ($1, $2, $3, $4)")
        .bind(id)
        .bind(at)
        .bind(outcome)
        .bind(latency_ms)
        .execute(db)
        .await?;
    Ok(())
}

/// Connections of a tenant (or all tenants), filtered, in creation order,
/// after the cursor `(created_at, id)`.
#[tracing::instrument(skip_all)]
pub async fn list_page(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    status: Option<&str>,
    selling_partner_id: Option<&str>,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ConnectionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from connection
         where tenant_id = $1
           and ($2::text is null or status = $2)
           and ($3::text is null or selling_partner_id = $3)
           and ($4::timestamptz is null or (created_at, id) > ($4, $5))
         order by created_at, id limit $6"
    ))
    .bind(tenant_id)
    .bind(status)
    .bind(selling_partner_id)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id).unwrap_or_else(Uuid::nil))
    .bind(limit)
    .fetch_all(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<ConnectionRow>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from connection where id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Tells every instance that a connection changed (they drop their cached copy).
pub async fn notify_changed(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    crate::notify::send(db, &crate::notify::Change::Connection(id)).await
}
