//! The app's client secrets as stored (`app_secret`): what sp-broker learnt
//! about each (expiry, when it last worked or was refused) and, for secrets
//! that came by notification, the value sealed. Never a value in clear.

use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretRow {
    pub id: Uuid,
    pub fingerprint: Vec<u8>,
    pub source: String,
    pub secret_sealed: Option<Vec<u8>>,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub expiry_reason: Option<String>,
    pub last_worked_at: Option<OffsetDateTime>,
    pub last_rejected_at: Option<OffsetDateTime>,
}

const COLUMNS: &str =
    "id, fingerprint, source, secret_sealed, created_at, expires_at, expiry_reason, \
    last_worked_at, last_rejected_at";

/// Makes sure an environment secret has its row (the first source seen stays).
#[tracing::instrument(skip_all)]
pub async fn register_environment(
    db: impl PgExecutor<'_>,
    fingerprint: &[u8],
    source: &str,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into app_secret (id, fingerprint, source, created_at) values ($1, $2, $3, $4)
         on conflict (fingerprint) do update set source = excluded.source
         where app_secret.source <> 'notification' and app_secret.source <> excluded.source",
    )
    .bind(Uuid::new_v4())
    .bind(fingerprint)
    .bind(source)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<SecretRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from app_secret order by created_at, id"
    ))
    .fetch_all(db)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn exists(db: impl PgExecutor<'_>, fingerprint: &[u8]) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from app_secret where fingerprint = $1)")
        .bind(fingerprint)
        .fetch_one(db)
        .await
}

/// A secret from a notification, sealed by the caller for row `id`; false
/// when the same value is stored already (a concurrent delivery).
#[tracing::instrument(skip_all)]
pub async fn insert_notified(
    db: &mut PgConnection,
    id: Uuid,
    fingerprint: &[u8],
    sealed: &[u8],
    now: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "insert into app_secret (id, fingerprint, source, secret_sealed, created_at, expires_at)
         values ($1, $2, 'notification', $3, $4, $5)
         on conflict (fingerprint) do nothing",
    )
    .bind(id)
    .bind(fingerprint)
    .bind(sealed)
    .bind(now)
    .bind(expires_at)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// A stored secret from a notification that is not among `tried`, not
/// expired and not refused since it last worked.
#[tracing::instrument(skip_all)]
pub async fn untried_notified_secret(
    db: impl PgExecutor<'_>,
    tried: &[Uuid],
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from app_secret
             where source = 'notification' and id <> all($1)
               and (expires_at is null or expires_at > $2)
               and (last_rejected_at is null or last_rejected_at < last_worked_at))",
    )
    .bind(tried)
    .bind(now)
    .fetch_one(db)
    .await
}

/// Never lengthens a recorded expiry (an older notification arriving late).
#[tracing::instrument(skip_all)]
pub async fn set_expiry(
    db: &mut PgConnection,
    id: Uuid,
    expires_at: OffsetDateTime,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update app_secret set expires_at = $2, expiry_reason = coalesce($3, expiry_reason),
             warned_30_days_at = case when expires_at is distinct from $2 then null else warned_30_days_at end,
             warned_7_days_at = case when expires_at is distinct from $2 then null else warned_7_days_at end
         where id = $1 and (expires_at is null or expires_at >= $2)",
    )
    .bind(id)
    .bind(expires_at)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn record_worked(
    db: impl PgExecutor<'_>,
    id: Uuid,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update app_secret set last_worked_at = greatest(last_worked_at, $2) where id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn record_rejected(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update app_secret set last_rejected_at = greatest(last_rejected_at, $2) where id = any($1)",
    )
    .bind(ids)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// Records a notification as taken; false when it was already.
#[tracing::instrument(skip_all)]
pub async fn claim_notification(
    db: &mut PgConnection,
    notification_id: &str,
    notification_type: &str,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "insert into app_notification (notification_id, notification_type, received_at)
         values ($1, $2, $3) on conflict do nothing",
    )
    .bind(notification_id)
    .bind(notification_type)
    .bind(now)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Which advance warning of a secret's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryWarning {
    ThirtyDays,
    SevenDays,
}

impl ExpiryWarning {
    pub fn days(self) -> i64 {
        match self {
            ExpiryWarning::ThirtyDays => 30,
            ExpiryWarning::SevenDays => 7,
        }
    }
}

/// Marks the warning as given for that expiry; true for the one caller
/// (on any instance) that should emit it. The seven-day warning also
/// stands for the thirty-day one when both are due at once.
#[tracing::instrument(skip_all)]
pub async fn claim_expiry_warning(
    db: &mut PgConnection,
    id: Uuid,
    warning: ExpiryWarning,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let sql = match warning {
        ExpiryWarning::ThirtyDays => {
            "update app_secret set warned_30_days_at = $2
             where id = $1 and warned_30_days_at is null and warned_7_days_at is null"
        }
        ExpiryWarning::SevenDays => {
            "update app_secret set warned_7_days_at = $2, warned_30_days_at = coalesce(warned_30_days_at, $2)
             where id = $1 and warned_7_days_at is null"
        }
    };
    Ok(sqlx::query(sql)
        .bind(id)
        .bind(now)
        .execute(db)
        .await?
        .rows_affected()
        == 1)
}
