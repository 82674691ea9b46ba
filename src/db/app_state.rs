//! App-wide state every instance shares (one row): the `invalid_client` hold
//! and the `invalid_grant` fuse.

use sqlx::{PgExecutor, Postgres, Transaction};
use time::OffsetDateTime;

#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct AppRow {
    pub credentials_rejected_since: Option<OffsetDateTime>,
    pub credentials_hold_until: Option<OffsetDateTime>,
    pub credentials_hold_seconds: Option<i32>,
    pub credentials_last_ok_at: Option<OffsetDateTime>,
    pub credentials_last_rejected_at: Option<OffsetDateTime>,
    pub fuse_tripped_at: Option<OffsetDateTime>,
    pub fuse_cleared_at: Option<OffsetDateTime>,
    pub fuse_cleared_by: Option<String>,
}

const COLUMNS: &str = "credentials_rejected_since, credentials_hold_until, credentials_hold_seconds, \
    credentials_last_ok_at, credentials_last_rejected_at, fuse_tripped_at, fuse_cleared_at, fuse_cleared_by";

#[tracing::instrument(skip_all)]
pub async fn find(db: impl PgExecutor<'_>) -> Result<AppRow, sqlx::Error> {
    Ok(
        sqlx::query_as(&format!("select {COLUMNS} from app_state where id = 1"))
            .fetch_optional(db)
            .await?
            .unwrap_or_default(),
    )
}

/// Every client secret was rejected: starts the hold, or doubles it (from
/// `first_hold` up to `max_hold` seconds). Returns the new state.
#[tracing::instrument(skip_all)]
pub async fn record_credentials_rejected(
    db: impl PgExecutor<'_>,
    now: OffsetDateTime,
    first_hold_seconds: i32,
    max_hold_seconds: i32,
) -> Result<AppRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "update app_state set
             credentials_rejected_since = coalesce(credentials_rejected_since, $1),
             credentials_hold_seconds = case when credentials_rejected_since is null then $2
                 else least(coalesce(credentials_hold_seconds, $2) * 2, $3) end,
             credentials_hold_until = $1 + make_interval(secs => case when credentials_rejected_since is null then $2
                 else least(coalesce(credentials_hold_seconds, $2) * 2, $3) end),
             credentials_probe_until = null,
             credentials_last_rejected_at = $1
         where id = 1
         returning {COLUMNS}"
    ))
    .bind(now)
    .bind(first_hold_seconds)
    .bind(max_hold_seconds)
    .fetch_one(db)
    .await
}

/// A secret worked: ends the hold. Returns since when the app's credentials
/// had been rejected, when they were.
#[tracing::instrument(skip_all)]
pub async fn record_credentials_ok(
    db: impl PgExecutor<'_>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    let rejected_since: Option<Option<OffsetDateTime>> = sqlx::query_scalar(
        "update app_state a set
             credentials_rejected_since = null, credentials_hold_until = null,
             credentials_hold_seconds = null, credentials_probe_until = null,
             credentials_last_ok_at = greatest(a.credentials_last_ok_at, $1)
         from (select credentials_rejected_since from app_state where id = 1 for update) before
         where a.id = 1
         returning before.credentials_rejected_since",
    )
    .bind(now)
    .fetch_optional(db)
    .await?;
    Ok(rejected_since.flatten())
}

/// A new secret was stored: a hold ends now (the next call is the probe,
/// with the new secret first); `rejected_since` stays until one works.
#[tracing::instrument(skip_all)]
pub async fn lift_hold(db: impl PgExecutor<'_>, now: OffsetDateTime) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update app_state set credentials_hold_until = least(credentials_hold_until, $1),
             credentials_probe_until = null
         where id = 1 and credentials_rejected_since is not null",
    )
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// The hold has lapsed: lets exactly one caller, on any instance, probe
/// Amazon (until `probe_until`, when another may). True for the winner.
#[tracing::instrument(skip_all)]
pub async fn claim_credentials_probe(
    db: impl PgExecutor<'_>,
    now: OffsetDateTime,
    probe_until: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "update app_state set credentials_probe_until = $2
         where id = 1 and credentials_rejected_since is not null
           and credentials_hold_until <= $1
           and (credentials_probe_until is null or credentials_probe_until <= $1)",
    )
    .bind(now)
    .bind(probe_until)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Locks the row for the rest of the transaction (the fuse's decisions are
/// made one at a time, across instances).
#[tracing::instrument(skip_all)]
pub async fn lock(tx: &mut Transaction<'_, Postgres>) -> Result<AppRow, sqlx::Error> {
    Ok(sqlx::query_as(&format!(
        "select {COLUMNS} from app_state where id = 1 for update"
    ))
    .fetch_optional(&mut **tx)
    .await?
    .unwrap_or_default())
}

/// Refresh outcomes since `since`: distinct connections refused with
/// `invalid_grant`, `invalid_grant` answers, all answers.
#[tracing::instrument(skip_all)]
pub async fn refresh_window(
    tx: &mut Transaction<'_, Postgres>,
    since: OffsetDateTime,
) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "select count(distinct connection_id) filter (where outcome = 'invalid_grant'),
                count(*) filter (where outcome = 'invalid_grant'),
                count(*)
         from refresh_event where at > $1",
    )
    .bind(since)
    .fetch_one(&mut **tx)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn trip_fuse(
    tx: &mut Transaction<'_, Postgres>,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update app_state set fuse_tripped_at = $1 where id = 1 and fuse_tripped_at is null",
    )
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends a tripped fuse. Returns true when it was tripped.
#[tracing::instrument(skip_all)]
pub async fn clear_fuse(
    db: impl PgExecutor<'_>,
    now: OffsetDateTime,
    by: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "update app_state set fuse_tripped_at = null, fuse_cleared_at = $1, fuse_cleared_by = $2
         where id = 1 and fuse_tripped_at is not null",
    )
    .bind(now)
    .bind(by)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}
