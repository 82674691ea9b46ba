//! Consent attempts, for the ops dashboard's funnel: started (sent to
//! Amazon), returned (a callback came back), connected or failed, and
//! abandoned (no callback within the state's 15 minutes).

use crate::amazon::marketplaces::Region;
use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

#[tracing::instrument(skip_all)]
pub async fn record_start(
    db: impl PgExecutor<'_>,
    state_hash: &[u8],
    tenant_id: Uuid,
    region: Region,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into consent_attempt (state_hash, tenant_id, region, started_at)
         values ($1, $2, $3, $4) on conflict do nothing",
    )
    .bind(state_hash)
    .bind(tenant_id)
    .bind(region)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// A callback for this state came back; the first outcome stays (a replayed
/// callback does not turn a connected attempt into a failed one).
#[tracing::instrument(skip_all)]
pub async fn record_return(
    db: impl PgExecutor<'_>,
    state_hash: &[u8],
    connected: bool,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update consent_attempt set returned_at = $2, outcome = $3
         where state_hash = $1 and outcome is null",
    )
    .bind(state_hash)
    .bind(now)
    .bind(if connected { "connected" } else { "failed" })
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, Default, Clone, sqlx::FromRow)]
pub struct Funnel {
    pub region: String,
    pub started: i64,
    pub returned: i64,
    pub connected: i64,
    pub failed: i64,
    pub abandoned: i64,
}

/// Attempts started since `since`, by region. Abandoned: no callback, and
/// the 15 minutes its state lives have passed.
#[tracing::instrument(skip_all)]
pub async fn funnel(
    db: impl PgExecutor<'_>,
    since: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Vec<Funnel>, sqlx::Error> {
    sqlx::query_as(
        "select region, count(*) as started, count(returned_at) as returned,
                count(*) filter (where outcome = 'connected') as connected,
                count(*) filter (where outcome = 'failed') as failed,
                count(*) filter (where returned_at is null and started_at <= $2 - interval '15 minutes') as abandoned
         from consent_attempt where started_at > $1
         group by region",
    )
    .bind(since)
    .bind(now)
    .fetch_all(db)
    .await
}

pub async fn delete_before(
    db: impl PgExecutor<'_>,
    before: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("delete from consent_attempt where started_at < $1")
            .bind(before)
            .execute(db)
            .await?
            .rows_affected(),
    )
}
