//! The event outbox (CONTRACT §8): events as written, the feed, and the
//! webhook deliveries' bookkeeping. Each event's body is stored as the exact
//! bytes every delivery and the feed carry.

use crate::domain::EventType;
use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

pub struct NewEvent<'a> {
    pub id: &'a str,
    pub event_type: EventType,
    pub tenant_id: Option<Uuid>,
    pub connection_id: Option<Uuid>,
    pub body: &'a str,
    pub created_at: OffsetDateTime,
}

#[tracing::instrument(skip_all)]
pub async fn insert(db: impl PgExecutor<'_>, e: &NewEvent<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into event (id, type, tenant_id, connection_id, body, created_at, next_attempt_at)
         values ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(e.id)
    .bind(e.event_type)
    .bind(e.tenant_id)
    .bind(e.connection_id)
    .bind(e.body)
    .bind(e.created_at)
    .execute(db)
    .await?;
    Ok(())
}

/// When the connection's latest event of this type was written.
#[tracing::instrument(skip_all)]
pub async fn last_of_type(
    db: impl PgExecutor<'_>,
    connection_id: Uuid,
    event_type: EventType,
) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    sqlx::query_scalar(
        "select created_at from event where connection_id = $1 and type = $2
         order by seq desc limit 1",
    )
    .bind(connection_id)
    .bind(event_type)
    .fetch_optional(db)
    .await
}

/// An event as the feed lists it.
#[derive(sqlx::FromRow)]
pub struct FeedEvent {
    pub seq: i64,
    pub body: String,
}

/// Events after `after` (a `seq`), oldest first; only `tenant_id`'s when given.
#[tracing::instrument(skip_all)]
pub async fn page(
    db: impl PgExecutor<'_>,
    tenant_id: Option<Uuid>,
    after: i64,
    limit: i64,
) -> Result<Vec<FeedEvent>, sqlx::Error> {
    sqlx::query_as(
        "select seq, body from event
         where seq > $1 and ($2::uuid is null or tenant_id = $2)
         order by seq limit $3",
    )
    .bind(after)
    .bind(tenant_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// An event claimed for one delivery attempt.
#[derive(sqlx::FromRow)]
pub struct DueEvent {
    pub seq: i64,
    pub id: String,
    pub body: String,
    pub attempts: i32,
    pub created_at: OffsetDateTime,
}

/// Claims up to `limit` events due for an attempt, at most the oldest pending
/// one of each connection (in order per connection), skipping those another
/// instance holds: each attempt is made by one instance only.
#[tracing::instrument(skip_all)]
pub async fn claim_due(
    db: impl PgExecutor<'_>,
    claim: Uuid,
    now: OffsetDateTime,
    hold_until: OffsetDateTime,
    limit: i64,
) -> Result<Vec<DueEvent>, sqlx::Error> {
    sqlx::query_as(
        "with due as materialized (
             select e.seq from event e
             where e.delivery_state = 'pending' and e.next_attempt_at <= $2
               and (e.claimed_until is null or e.claimed_until < $2)
               and not exists (
                   select 1 from event earlier
                   where earlier.connection_id = e.connection_id
                     and earlier.delivery_state = 'pending' and earlier.seq < e.seq)
             order by e.seq
             limit $4
             for update skip locked
         )
         update event set claim_token = $1, claimed_until = $3
         from due where event.seq = due.seq
         returning event.seq, event.id, event.body, event.attempts, event.created_at",
    )
    .bind(claim)
    .bind(now)
    .bind(hold_until)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// How one attempt went.
pub enum Attempt<'a> {
    Delivered {
        status: i32,
    },
    /// Try again at `next_at`, or give up (`failed`) when `give_up`.
    Failed {
        status: Option<i32>,
        error: &'a str,
        next_at: OffsetDateTime,
        give_up: bool,
    },
}

/// Records an attempt, only while the claim is still this one's.
#[tracing::instrument(skip_all)]
pub async fn record_attempt(
    db: impl PgExecutor<'_>,
    seq: i64,
    claim: Uuid,
    now: OffsetDateTime,
    attempt: Attempt<'_>,
) -> Result<(), sqlx::Error> {
    let (state, status, error, next_at) = match attempt {
        Attempt::Delivered { status } => ("delivered", Some(status), None, now),
        Attempt::Failed {
            status,
            error,
            next_at,
            give_up,
        } => (
            if give_up { "failed" } else { "pending" },
            status,
            Some(error),
            next_at,
        ),
    };
    sqlx::query(
        "update event set delivery_state = $3, attempts = attempts + 1, last_attempt_at = $4,
             last_status = $5, last_error = $6, next_attempt_at = $7,
             delivered_at = case when $3 = 'delivered' then $4 end,
             claim_token = null, claimed_until = null
         where seq = $1 and claim_token = $2",
    )
    .bind(seq)
    .bind(claim)
    .bind(state)
    .bind(now)
    .bind(status)
    .bind(error)
    .bind(next_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Deliveries at a glance, for `/ops`, the summary and the metrics.
#[derive(Debug, Default, sqlx::FromRow)]
pub struct DeliveryCounts {
    pub pending: i64,
    /// Pending after at least one failed attempt.
    pub retrying: i64,
    pub failed: i64,
    /// The latest failed attempt's error, and when.
    pub last_error: Option<String>,
    pub last_error_at: Option<OffsetDateTime>,
}

#[tracing::instrument(skip_all)]
pub async fn delivery_counts(db: impl PgExecutor<'_>) -> Result<DeliveryCounts, sqlx::Error> {
    sqlx::query_as(
        "select count(*) filter (where delivery_state = 'pending') as pending,
                count(*) filter (where delivery_state = 'pending' and attempts > 0) as retrying,
                count(*) filter (where delivery_state = 'failed') as failed,
                (select last_error from event where last_error is not null
                 order by last_attempt_at desc limit 1) as last_error,
                (select max(last_attempt_at) from event where last_error is not null) as last_error_at
         from event where delivery_state <> 'delivered'",
    )
    .fetch_one(db)
    .await
}

/// Events are kept 30 days (CONTRACT §8).
#[tracing::instrument(skip_all)]
pub async fn delete_before(
    db: impl PgExecutor<'_>,
    cutoff: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("delete from event where created_at < $1")
        .bind(cutoff)
        .execute(db)
        .await?
        .rows_affected())
}
