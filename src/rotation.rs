//! Key rotation: re-seals every stored secret under the active key, in small
//! batches, each batch one transaction with its rows locked (`FOR UPDATE SKIP
//! LOCKED`), so it can run while brokers serve and can be killed and rerun at
//! any point: a row is rewritten only once its new ciphertext is ready, and an
//! old key keeps opening what it sealed until the row is rewritten.
//!
//! Run it once every instance has the new key first in
//! `SP_BROKER_ENCRYPTION_KEYS` (otherwise an instance still sealing with the
//! old key keeps writing values under it; a rerun picks those up).

use crate::crypto::{CryptoError, KeyRing, Purpose, SealContext};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::BTreeMap;
use uuid::Uuid;

const BATCH: i64 = 200;

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A stored value that is no envelope this build can read, or that the
    /// configured keys cannot open: rotation stops at it rather than skip it
    /// (or select it again for ever).
    #[error("connection {connection}: its {column} cannot be re-sealed: {reason}")]
    Unreadable {
        connection: Uuid,
        column: &'static str,
        reason: CryptoError,
    },
    #[error("app client secret {secret}: it cannot be re-sealed: {reason}")]
    UnreadableAppSecret { secret: Uuid, reason: CryptoError },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Serialize)]
pub struct RotationSummary {
    pub active_key_id: String,
    pub rows_rewritten: u64,
    pub values_resealed: u64,
    /// Sealed values still under another key (rows locked by a refresh right now); rerun.
    pub remaining: u64,
}

#[derive(sqlx::FromRow)]
struct SealedRow {
    id: Uuid,
    tenant_id: Uuid,
    refresh_token_sealed: Option<Vec<u8>>,
    access_token_sealed: Option<Vec<u8>>,
}

/// The value re-sealed under the active key, or `None` when it needs nothing
/// (absent, or sealed under the active key already).
fn resealed(
    keys: &KeyRing,
    purpose: Purpose,
    row: &SealedRow,
    sealed: &Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, RotationError> {
    let Some(value) = sealed.as_deref() else {
        return Ok(None);
    };
    let column = match purpose {
        Purpose::RefreshToken => "refresh token",
        _ => "access token",
    };
    let unreadable = |reason| RotationError::Unreadable {
        connection: row.id,
        column,
        reason,
    };
    if KeyRing::key_id_of(value).map_err(unreadable)? == keys.active_key_id() {
        return Ok(None);
    }
    let tenant = row.tenant_id.to_string();
    let id = row.id.to_string();
    let context = SealContext {
        purpose,
        tenant: &tenant,
        row: &id,
    };
    let plaintext = keys.open(context, value).map_err(unreadable)?;
    Ok(Some(keys.seal(context, &plaintext)))
}

/// Re-seals all stored secrets under the active key.
pub async fn rotate(db: &PgPool, keys: &KeyRing) -> Result<RotationSummary, RotationError> {
    let active = keys.active_key_id().to_owned();
    let prefix = active_prefix(&active);
    let mut rows_rewritten = 0;
    let mut values_resealed = 0;
    loop {
        let mut tx = db.begin().await?;
        let batch: Vec<SealedRow> = sqlx::query_as(
            "select id, tenant_id, refresh_token_sealed, access_token_sealed from connection
             where (refresh_token_sealed is not null and substring(refresh_token_sealed from 1 for $1) <> $2)
                or (access_token_sealed is not null and substring(access_token_sealed from 1 for $1) <> $2)
             order by id limit $3 for update skip locked",
        )
        .bind(prefix.len() as i32)
        .bind(&prefix)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if batch.is_empty() {
            break;
        }
        for row in &batch {
            let refresh = resealed(keys, Purpose::RefreshToken, row, &row.refresh_token_sealed)?;
            let access = resealed(keys, Purpose::AccessToken, row, &row.access_token_sealed)?;
            values_resealed += u64::from(refresh.is_some()) + u64::from(access.is_some());
            sqlx::query(
                "update connection set refresh_token_sealed = coalesce($2, refresh_token_sealed),
                     access_token_sealed = coalesce($3, access_token_sealed)
                 where id = $1",
            )
            .bind(row.id)
            .bind(refresh)
            .bind(access)
            .execute(&mut *tx)
            .await?;
            rows_rewritten += 1;
        }
        tx.commit().await?;
    }
    let (rows, values) = rotate_app_secrets(db, keys, &prefix).await?;
    rows_rewritten += rows;
    values_resealed += values;
    let remaining = sealed_counts(db)
        .await?
        .into_iter()
        .filter(|(id, _)| *id != active)
        .map(|(_, n)| n as u64)
        .sum();
    Ok(RotationSummary {
        active_key_id: active,
        rows_rewritten,
        values_resealed,
        remaining,
    })
}

/// The app's client secrets learnt from notifications (a handful of rows).
async fn rotate_app_secrets(
    db: &PgPool,
    keys: &KeyRing,
    prefix: &[u8],
) -> Result<(u64, u64), RotationError> {
    let mut tx = db.begin().await?;
    let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "select id, secret_sealed from app_secret
         where secret_sealed is not null and substring(secret_sealed from 1 for $1) <> $2
         for update skip locked",
    )
    .bind(prefix.len() as i32)
    .bind(prefix)
    .fetch_all(&mut *tx)
    .await?;
    for (id, sealed) in &rows {
        let row = id.to_string();
        let context = crate::broker::app_credentials::seal_context(&row);
        let unreadable = |reason| RotationError::UnreadableAppSecret {
            secret: *id,
            reason,
        };
        let plaintext = keys.open(context, sealed).map_err(unreadable)?;
        sqlx::query("update app_secret set secret_sealed = $2 where id = $1")
            .bind(id)
            .bind(keys.seal(context, &plaintext))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok((rows.len() as u64, rows.len() as u64))
}

/// The envelope's first bytes for the active key: version, id length, id.
fn active_prefix(key_id: &str) -> Vec<u8> {
    let mut prefix = vec![1u8, key_id.len() as u8];
    prefix.extend_from_slice(key_id.as_bytes());
    prefix
}

/// How many sealed values each key id protects.
pub async fn sealed_counts(db: &PgPool) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select convert_from(substring(v from 3 for get_byte(v, 1)), 'UTF8') as key_id, count(*) from (
             select refresh_token_sealed as v from connection where refresh_token_sealed is not null
             union all
             select access_token_sealed from connection where access_token_sealed is not null
             union all
             select secret_sealed from app_secret where secret_sealed is not null
         ) sealed group by 1",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}
