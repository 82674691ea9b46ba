//! Which API key obtained tokens for which connection, counted per day.

use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

#[tracing::instrument(skip_all)]
pub async fn add_token_issues(
    db: impl PgExecutor<'_>,
    api_key_id: Uuid,
    connection_id: Uuid,
    count: i64,
    at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into token_issue_count (api_key_id, connection_id, day, count, last_at)
         values ($1, $2, ($4 at time zone 'utc')::date, $3, $4)
         on conflict (api_key_id, connection_id, day)
         do update set count = token_issue_count.count + excluded.count, last_at = excluded.last_at",
    )
    .bind(api_key_id)
    .bind(connection_id)
    .bind(count)
    .bind(at)
    .execute(db)
    .await?;
    Ok(())
}
