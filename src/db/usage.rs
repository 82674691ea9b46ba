//! Which API key obtained tokens for which connection, counted per day.

use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

/// Adds many counts in one statement (one round trip, one commit). The pairs
/// must be distinct; callers pass them sorted so that two instances flushing
/// at once lock rows in the same order.
#[tracing::instrument(skip_all)]
pub async fn add_token_issues(
    db: impl PgExecutor<'_>,
    api_key_ids: &[Uuid],
    connection_ids: &[Uuid],
    counts: &[i64],
    at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into token_issue_count (api_key_id, connection_id, day, count, last_at)
         select k, c, ($4 at time zone 'utc')::date, n, $4
         from unnest($1::uuid[], $2::uuid[], $3::bigint[]) as t(k, c, n)
         on conflict (api_key_id, connection_id, day)
         do update set count = token_issue_count.count + excluded.count, last_at = excluded.last_at",
    )
    .bind(api_key_ids)
    .bind(connection_ids)
    .bind(counts)
    .bind(at)
    .execute(db)
    .await?;
    Ok(())
}
