//! Connections: one seller's authorization in one region, held by one tenant.
//! Sealed columns hold crypto.rs envelopes bound to (tenant, row); this module
//! stores and returns them but never opens them.
//!
//! Every write a refresh makes is fenced (SECURITY.md): it names the lease
//! claim it holds and the grant version it started from, and lands only while
//! both are still the row's.

use crate::amazon::marketplaces::{AccountType, Region};
use crate::config::AmazonMode;
use crate::domain::{ConnectionStatus, Health};
use sqlx::{PgExecutor, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

/// The columns of [`ConnectionRow`]; `at` is the parameter holding the time
/// health is judged at.
fn columns(at: &str) -> String {
    format!(
        "id, tenant_id, selling_partner_id, account_type, region, marketplace_id, \
         store_name, marketplace_ids, status, status_reason, status_changed_at, authorized_at, \
         authorization_expires_at, last_refresh_at, last_error_code, last_error_message, last_error_at, \
         created_at, updated_at, \
         connection_health(status, last_error_code, authorization_expires_at, {at}) as health"
    )
}

/// A connection as stored, without its sealed secrets.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectionRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub selling_partner_id: String,
    pub account_type: AccountType,
    pub region: Region,
    pub marketplace_id: String,
    pub store_name: Option<String>,
    pub marketplace_ids: Option<Vec<String>>,
    pub status: ConnectionStatus,
    pub status_reason: Option<String>,
    pub status_changed_at: OffsetDateTime,
    pub authorized_at: Option<OffsetDateTime>,
    pub authorization_expires_at: Option<OffsetDateTime>,
    pub last_refresh_at: Option<OffsetDateTime>,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub last_error_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub health: Health,
}

#[tracing::instrument(skip_all)]
pub async fn list_for_tenant(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    now: OffsetDateTime,
) -> Result<Vec<ConnectionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {} from connection where tenant_id = $1 order by created_at, id",
        columns("$2")
    ))
    .bind(tenant_id)
    .bind(now)
    .fetch_all(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn find_for_tenant(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
    now: OffsetDateTime,
) -> Result<Option<ConnectionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {} from connection where tenant_id = $1 and id = $2",
        columns("$3")
    ))
    .bind(tenant_id)
    .bind(id)
    .bind(now)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn find(
    db: impl PgExecutor<'_>,
    id: Uuid,
    now: OffsetDateTime,
) -> Result<Option<ConnectionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {} from connection where id = $1",
        columns("$2")
    ))
    .bind(id)
    .bind(now)
    .fetch_optional(db)
    .await
}

/// The connection's health now, locking its row until the transaction ends:
/// read before a change, so that the change's health event is judged against
/// what it replaced.
#[tracing::instrument(skip_all)]
pub async fn health_for_update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    now: OffsetDateTime,
) -> Result<Option<Health>, sqlx::Error> {
    sqlx::query_scalar(
        "select connection_health(status, last_error_code, authorization_expires_at, $2)
         from connection where id = $1 for update",
    )
    .bind(id)
    .bind(now)
    .fetch_optional(db)
    .await
}

/// A page of a tenant's connections, filtered, in creation order, after the
/// cursor `(created_at, id)`.
pub struct PageQuery<'a> {
    pub tenant_id: Uuid,
    pub status: Option<ConnectionStatus>,
    pub selling_partner_id: Option<&'a str>,
    pub after: Option<(OffsetDateTime, Uuid)>,
    pub limit: i64,
    pub now: OffsetDateTime,
}

#[tracing::instrument(skip_all)]
pub async fn list_page(
    db: impl PgExecutor<'_>,
    q: PageQuery<'_>,
) -> Result<Vec<ConnectionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {} from connection
         where tenant_id = $1
           and ($2::text is null or status = $2)
           and ($3::text is null or selling_partner_id = $3)
           and ($4::timestamptz is null or (created_at, id) > ($4, $5))
         order by created_at, id limit $6",
        columns("$7")
    ))
    .bind(q.tenant_id)
    .bind(q.status)
    .bind(q.selling_partner_id)
    .bind(q.after.map(|(at, _)| at))
    .bind(q.after.map(|(_, id)| id).unwrap_or_else(Uuid::nil))
    .bind(q.limit)
    .bind(q.now)
    .fetch_all(db)
    .await
}

/// Where a new authorization goes.
pub struct AuthorizationKey<'a> {
    pub tenant_id: Uuid,
    pub selling_partner_id: &'a str,
    pub region: Region,
    pub account_type: AccountType,
    pub marketplace_id: &'a str,
}

/// Locks the connection keyed by (tenant, selling partner, region), creating an
/// empty `disconnected` one if there is none. Returns its id and whether it is new.
#[tracing::instrument(skip_all)]
pub async fn lock_or_create(
    tx: &mut Transaction<'_, Postgres>,
    key: &AuthorizationKey<'_>,
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
    .bind(key.tenant_id)
    .bind(key.selling_partner_id)
    .bind(key.account_type)
    .bind(key.region)
    .bind(key.marketplace_id)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
}

pub struct Authorized<'a> {
    pub id: Uuid,
    pub account_type: AccountType,
    pub marketplace_id: &'a str,
    pub refresh_token_sealed: &'a [u8],
    pub access_token_sealed: &'a [u8],
    pub access_token_expires_at: OffsetDateTime,
    pub authorization_expires_at: OffsetDateTime,
    pub mode: AmazonMode,
    pub client_id: &'a str,
    pub now: OffsetDateTime,
}

/// Stores a new authorization: the refresh token replaced atomically, status
/// `active`, `authorized_at` now, errors cleared; a new grant version, so any
/// refresh still running for the old one writes nothing, and the lease, the
/// cooldown and the failure count start afresh.
#[tracing::instrument(skip_all)]
pub async fn store_authorization(
    tx: &mut Transaction<'_, Postgres>,
    a: Authorized<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update connection set
             account_type = $2, marketplace_id = $3,
             refresh_token_sealed = $4, access_token_sealed = $5, access_token_expires_at = $6,
             token_generation = token_generation + 1, grant_version = grant_version + 1,
             refresh_lease_token = null, refresh_lease_until = null,
             refresh_cooldown_until = null, refresh_failures = 0,
             status_changed_at = case when status = 'active' then status_changed_at else $10 end,
             status = 'active', status_reason = null,
             authorized_at = $10, authorization_expires_at = $7, last_refresh_at = $10,
             authorized_mode = $8, authorized_client_id = $9,
             last_error_code = null, last_error_message = null, last_error_at = null,
             expiry_notices = 0, sweep_claimed_until = null,
             updated_at = $10
         where id = $1",
    )
    .bind(a.id)
    .bind(a.account_type)
    .bind(a.marketplace_id)
    .bind(a.refresh_token_sealed)
    .bind(a.access_token_sealed)
    .bind(a.access_token_expires_at)
    .bind(a.authorization_expires_at)
    .bind(a.mode.as_str())
    .bind(a.client_id)
    .bind(a.now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Erases the stored tokens and marks the connection `disconnected` (a new
/// grant version: a refresh in flight writes nothing back). Returns the status
/// it had, or `None` when the tenant has no such connection.
#[tracing::instrument(skip_all)]
pub async fn disconnect(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
    id: Uuid,
    now: OffsetDateTime,
) -> Result<Option<ConnectionStatus>, sqlx::Error> {
    let previous: Option<ConnectionStatus> = sqlx::query_scalar(
        "select status from connection where tenant_id = $1 and id = $2 for update",
    )
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    if previous.is_none() {
        return Ok(None);
    }
    sqlx::query(
        "update connection set
             refresh_token_sealed = null, access_token_sealed = null, access_token_expires_at = null,
             token_generation = token_generation + 1, grant_version = grant_version + 1,
             refresh_lease_token = null, refresh_lease_until = null,
             status_changed_at = case when status = 'disconnected' then status_changed_at else $3 end,
             status = 'disconnected', status_reason = 'disconnected on request', updated_at = $3
         where tenant_id = $1 and id = $2",
    )
    .bind(tenant_id)
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(previous)
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
        "update connection set store_name = coalesce($2, store_name), marketplace_ids = $3,
             last_error_code = case when last_error_code = 'verification_failed' then null else last_error_code end,
             last_error_message = case when last_error_code = 'verification_failed' then null else last_error_message end,
             last_error_at = case when last_error_code = 'verification_failed' then null else last_error_at end,
             updated_at = $4
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

/// The seller verification failed: the connection stays `active` and its
/// health becomes `degraded` (the health rule reads `verification_failed`).
#[tracing::instrument(skip_all)]
pub async fn record_verification_failure(
    db: impl PgExecutor<'_>,
    id: Uuid,
    message: &str,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update connection set last_error_code = 'verification_failed', last_error_message = $2,
             last_error_at = $3, updated_at = $3
         where id = $1 and status = 'active'",
    )
    .bind(id)
    .bind(message)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// What the token broker needs to know about a connection.
#[derive(Clone, sqlx::FromRow)]
pub struct TokenStateRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub selling_partner_id: String,
    pub region: Region,
    pub status: ConnectionStatus,
    pub status_reason: Option<String>,
    pub grant_version: i64,
    pub token_generation: i64,
    pub access_token_sealed: Option<Vec<u8>>,
    pub access_token_expires_at: Option<OffsetDateTime>,
    pub refresh_cooldown_until: Option<OffsetDateTime>,
    pub refresh_failures: i32,
    /// Another claim holds the refresh lease (judged by PostgreSQL's clock).
    pub lease_busy: bool,
}

/// The token state of each of `ids` that exists, in no particular order
/// (`id` says which is which): one statement for a batch of cache misses.
#[tracing::instrument(skip_all)]
pub async fn find_token_states(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<TokenStateRow>, sqlx::Error> {
    sqlx::query_as(
        "select id, tenant_id, selling_partner_id, region, status, status_reason, grant_version,
                token_generation, access_token_sealed, access_token_expires_at,
                refresh_cooldown_until, refresh_failures,
                coalesce(refresh_lease_until > now(), false) as lease_busy
         from connection where id = any($1)",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// The result of trying to claim a connection's refresh lease.
pub enum LeaseClaim {
    /// Ours until the lease runs out; the sealed refresh token to use.
    Claimed { refresh_token_sealed: Vec<u8> },
    /// Claimed, but the row holds no refresh token (it cannot be refreshed).
    ClaimedWithoutRefreshToken,
    /// Another claim holds it, or the row moved on (new token, new grant,
    /// no longer active): read it again.
    NotClaimed,
}

/// Claims the refresh lease if it is free (or run out, by PostgreSQL's clock)
/// and the row is still the one the caller read: same grant, same token,
/// active. Holds no database connection while Amazon is called: the lease is
/// a row value, not a lock.
#[tracing::instrument(skip_all)]
pub async fn claim_refresh_lease(
    db: impl PgExecutor<'_>,
    id: Uuid,
    claim: Uuid,
    grant_version: i64,
    seen_generation: i64,
    lease: std::time::Duration,
) -> Result<LeaseClaim, sqlx::Error> {
    let claimed: Option<Option<Vec<u8>>> = sqlx::query_scalar(
        "update connection set refresh_lease_token = $2,
             refresh_lease_until = now() + make_interval(secs => $5)
         where id = $1 and status = 'active' and grant_version = $3 and token_generation = $4
           and (refresh_lease_until is null or refresh_lease_until <= now())
         returning refresh_token_sealed",
    )
    .bind(id)
    .bind(claim)
    .bind(grant_version)
    .bind(seen_generation)
    .bind(lease.as_secs_f64())
    .fetch_optional(db)
    .await?;
    Ok(match claimed {
        Some(Some(sealed)) => LeaseClaim::Claimed {
            refresh_token_sealed: sealed,
        },
        Some(None) => LeaseClaim::ClaimedWithoutRefreshToken,
        None => LeaseClaim::NotClaimed,
    })
}

/// Gives the lease back, if it is still this claim's.
#[tracing::instrument(skip_all)]
pub async fn release_refresh_lease(
    db: impl PgExecutor<'_>,
    id: Uuid,
    claim: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update connection set refresh_lease_token = null, refresh_lease_until = null
         where id = $1 and refresh_lease_token = $2",
    )
    .bind(id)
    .bind(claim)
    .execute(db)
    .await?;
    Ok(())
}

/// Which write a refresh holds the right to make.
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    pub id: Uuid,
    pub claim: Uuid,
    pub grant_version: i64,
}

pub struct Refreshed<'a> {
    pub access_token_sealed: &'a [u8],
    pub access_token_expires_at: OffsetDateTime,
    pub now: OffsetDateTime,
}

/// Writes a refreshed access token back and releases the lease, only while the
/// fence holds. Returns the new token generation, or `None` when fenced out.
#[tracing::instrument(skip_all)]
pub async fn store_refreshed(
    db: impl PgExecutor<'_>,
    fence: Fence,
    r: Refreshed<'_>,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "update connection set
             access_token_sealed = $4, access_token_expires_at = $5,
             token_generation = token_generation + 1,
             last_refresh_at = $6,
             -- a refresh clears a refresh's error, not a failed verification
             last_error_code = case when last_error_code = 'verification_failed' then last_error_code end,
             last_error_message = case when last_error_code = 'verification_failed' then last_error_message end,
             last_error_at = case when last_error_code = 'verification_failed' then last_error_at end,
             refresh_failures = 0, refresh_cooldown_until = null,
             refresh_lease_token = null, refresh_lease_until = null, updated_at = $6
         where id = $1 and refresh_lease_token = $2 and grant_version = $3 and status = 'active'
         returning token_generation",
    )
    .bind(fence.id)
    .bind(fence.claim)
    .bind(fence.grant_version)
    .bind(r.access_token_sealed)
    .bind(r.access_token_expires_at)
    .bind(r.now)
    .fetch_optional(db)
    .await
}

/// Replaces the stored refresh token by compare-and-swap on the ciphertext it
/// was read as, whoever holds the lease: a refresh token Amazon rotated must
/// not be lost. Returns false when the row holds another ciphertext (or
/// another grant) by now.
#[tracing::instrument(skip_all)]
pub async fn swap_refresh_token(
    db: impl PgExecutor<'_>,
    id: Uuid,
    grant_version: i64,
    expected_sealed: &[u8],
    new_sealed: &[u8],
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "update connection set refresh_token_sealed = $4
         where id = $1 and grant_version = $2 and refresh_token_sealed = $3",
    )
    .bind(id)
    .bind(grant_version)
    .bind(expected_sealed)
    .bind(new_sealed)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// A connection's sealed refresh token as stored now.
#[derive(sqlx::FromRow)]
pub struct StoredRefreshToken {
    pub tenant_id: Uuid,
    pub grant_version: i64,
    pub refresh_token_sealed: Option<Vec<u8>>,
}

/// The sealed refresh token as stored now, with its grant version.
#[tracing::instrument(skip_all)]
pub async fn find_refresh_token(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<StoredRefreshToken>, sqlx::Error> {
    sqlx::query_as(
        "select tenant_id, grant_version, refresh_token_sealed from connection where id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Amazon said `invalid_grant`: the connection needs the seller to
/// reauthorize. Fenced; returns false when fenced out.
#[tracing::instrument(skip_all)]
pub async fn mark_needs_reauth(
    db: impl PgExecutor<'_>,
    fence: Fence,
    reason: &str,
    error_message: &str,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "update connection set
             status = 'needs_reauth', status_reason = $4, status_changed_at = $6,
             access_token_sealed = null, access_token_expires_at = null,
             token_generation = token_generation + 1,
             last_error_code = 'invalid_grant', last_error_message = $5, last_error_at = $6,
             refresh_lease_token = null, refresh_lease_until = null, refresh_cooldown_until = null,
             updated_at = $6
         where id = $1 and refresh_lease_token = $2 and grant_version = $3 and status = 'active'",
    )
    .bind(fence.id)
    .bind(fence.claim)
    .bind(fence.grant_version)
    .bind(reason)
    .bind(error_message)
    .bind(now)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// A passing failure: records the error, counts it, starts the cooldown and
/// releases the lease. Fenced; returns false when fenced out.
#[tracing::instrument(skip_all)]
pub async fn record_refresh_failure(
    db: impl PgExecutor<'_>,
    fence: Fence,
    code: &str,
    message: &str,
    cooldown_until: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "update connection set
             last_error_code = $4, last_error_message = $5, last_error_at = $7,
             refresh_failures = refresh_failures + 1, refresh_cooldown_until = $6,
             refresh_lease_token = null, refresh_lease_until = null, updated_at = $7
         where id = $1 and refresh_lease_token = $2 and grant_version = $3",
    )
    .bind(fence.id)
    .bind(fence.claim)
    .bind(fence.grant_version)
    .bind(code)
    .bind(message)
    .bind(cooldown_until)
    .bind(now)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Whether a `force_refresh` may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForceRefresh {
    Granted,
    /// Asked within the window already; may be asked again after this many seconds.
    TooSoon {
        retry_after_seconds: u64,
    },
}

/// `force_refresh` is honoured at most once per `window` per connection,
/// across instances; one statement.
#[tracing::instrument(skip_all)]
pub async fn claim_force_refresh(
    db: impl PgExecutor<'_>,
    id: Uuid,
    now: OffsetDateTime,
    window: time::Duration,
) -> Result<ForceRefresh, sqlx::Error> {
    // The update claims the window; when it does not, the CTE's row says
    // since when it is taken.
    let last: Option<(bool, Option<OffsetDateTime>)> = sqlx::query_as(
        "with claimed as (
             update connection set force_refresh_at = $2
             where id = $1 and (force_refresh_at is null or force_refresh_at <= $3)
             returning id
         )
         select exists (select 1 from claimed), (select force_refresh_at from connection where id = $1)",
    )
    .bind(id)
    .bind(now)
    .bind(now - window)
    .fetch_optional(db)
    .await?;
    Ok(match last {
        Some((true, _)) => ForceRefresh::Granted,
        Some((false, at)) => ForceRefresh::TooSoon {
            retry_after_seconds: at
                .map(|at| (at + window - now).whole_seconds().max(1) as u64)
                .unwrap_or(1),
        },
        None => ForceRefresh::TooSoon {
            retry_after_seconds: 1,
        },
    })
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

#[tracing::instrument(skip_all)]
pub async fn delete_refresh_events_before(
    db: impl PgExecutor<'_>,
    before: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("delete from refresh_event where at < $1")
        .bind(before)
        .execute(db)
        .await?
        .rows_affected())
}

/// Which Amazon (mode, LWA client id) the stored authorizations belong to,
/// with how many hold a refresh token. Rows not stamped yet are left out.
#[tracing::instrument(skip_all)]
pub async fn authorized_amazons(
    db: impl PgExecutor<'_>,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "select authorized_mode, authorized_client_id, count(*) from connection
         where refresh_token_sealed is not null and authorized_mode is not null
         group by 1, 2 order by 3 desc",
    )
    .fetch_all(db)
    .await
}

/// Stamps authorizations stored before connections recorded their Amazon.
#[tracing::instrument(skip_all)]
pub async fn stamp_unstamped_authorizations(
    db: impl PgExecutor<'_>,
    mode: AmazonMode,
    client_id: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "update connection set authorized_mode = $1, authorized_client_id = $2
         where authorized_mode is null and refresh_token_sealed is not null",
    )
    .bind(mode.as_str())
    .bind(client_id)
    .execute(db)
    .await?
    .rows_affected())
}

/// Claims up to `limit` connections due for the health sweep: active, with a
/// refresh token, last refreshed (or authorized) before `stale_before`, and
/// not claimed by another pass. Skips rows another transaction holds; the
/// claim lasts until `claim_until`, so each due connection is swept once per
/// pass whichever instance runs it.
#[tracing::instrument(skip_all)]
pub async fn claim_sweep_due(
    db: impl PgExecutor<'_>,
    stale_before: OffsetDateTime,
    now: OffsetDateTime,
    claim_until: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        // A materialized CTE, not `where id in (select … limit …)`: the planner
        // may run such a subquery more than once, and with SKIP LOCKED each run
        // finds other rows, so more than `limit` would be claimed.
        "with due as materialized (
             select id from connection
             where status = 'active' and refresh_token_sealed is not null
               and coalesce(last_refresh_at, authorized_at) < $1
               and (sweep_claimed_until is null or sweep_claimed_until <= $2)
             order by coalesce(last_refresh_at, authorized_at)
             limit $4
             for update skip locked)
         update connection set sweep_claimed_until = $3
         from due where connection.id = due.id
         returning connection.id",
    )
    .bind(stale_before)
    .bind(now)
    .bind(claim_until)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Active connections owed a `connection.expiring` notice (30 and 7 days
/// before the authorization ends), locked for the caller's transaction; with
/// the notice level each is owed (1 or 2).
#[tracing::instrument(skip_all)]
pub async fn lock_expiry_due(
    db: impl PgExecutor<'_>,
    now: OffsetDateTime,
    limit: i64,
) -> Result<Vec<(Uuid, i16)>, sqlx::Error> {
    sqlx::query_as(
        "select id, case when authorization_expires_at <= $1 + interval '7 days' then 2 else 1 end::smallint
         from connection
         where status = 'active' and authorization_expires_at is not null
           and ((expiry_notices < 1 and authorization_expires_at <= $1 + interval '30 days')
             or (expiry_notices < 2 and authorization_expires_at <= $1 + interval '7 days'))
         order by authorization_expires_at
         limit $2
         for update skip locked",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn set_expiry_notices(
    db: impl PgExecutor<'_>,
    id: Uuid,
    level: i16,
) -> Result<(), sqlx::Error> {
    sqlx::query("update connection set expiry_notices = $2 where id = $1")
        .bind(id)
        .bind(level)
        .execute(db)
        .await?;
    Ok(())
}

/// Takes the next sweep slot from the shared pacer, moving it on by
/// `spacing`: how long to wait before making the call (zero when the slot
/// is now). Measured on PostgreSQL's clock, shared by every instance.
#[tracing::instrument(skip_all)]
pub async fn take_sweep_slot(
    db: impl PgExecutor<'_>,
    spacing: std::time::Duration,
) -> Result<std::time::Duration, sqlx::Error> {
    let wait: f64 = sqlx::query_scalar(
        "update sweep_pacer set next_at = greatest(next_at, clock_timestamp()) + make_interval(secs => $1)
         where id = 1
         returning greatest(0, extract(epoch from (next_at - make_interval(secs => $1) - clock_timestamp())))::float8",
    )
    .bind(spacing.as_secs_f64())
    .fetch_one(db)
    .await?;
    Ok(std::time::Duration::from_secs_f64(wait.clamp(0.0, 3600.0)))
}

/// One refresh as the history keeps it (30 days).
#[derive(Debug, sqlx::FromRow)]
pub struct RefreshEvent {
    pub at: OffsetDateTime,
    pub outcome: String,
    pub latency_ms: i32,
}

/// A connection's latest refreshes, newest first.
#[tracing::instrument(skip_all)]
pub async fn recent_refreshes(
    db: impl PgExecutor<'_>,
    id: Uuid,
    limit: i64,
) -> Result<Vec<RefreshEvent>, sqlx::Error> {
    sqlx::query_as(
        "select at, outcome, latency_ms from refresh_event
         where connection_id = $1 order by at desc, id desc limit $2",
    )
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await
}
