//! Per-key check values: a known plaintext sealed under each key id, so start-up
//! can tell, before serving, whether the configured keys open what is stored.

use crate::crypto::{KeyRing, Purpose, SealContext};
use sqlx::PgPool;
use time::OffsetDateTime;

const CHECK_PLAINTEXT: &[u8] = b"sp-broker key check";

fn context(key_id: &str) -> SealContext<'_> {
    SealContext {
        purpose: Purpose::KeyCheck,
        tenant: "",
        row: key_id,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error(
        "the configured key `{0}` is not the key of that id that sealed stored secrets \
         (its check value does not open); refusing to start"
    )]
    WrongKey(String),
    #[error(
        "stored secrets are sealed under key id(s) {0} that SP_BROKER_ENCRYPTION_KEYS does not \
         contain; add them (after the active key) or run `keys rotate` with them first; refusing to start"
    )]
    MissingKeys(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Fails closed if a configured key does not match its check value, or if sealed
/// values exist under a key id that is not configured. Records a check value for
/// configured keys that have none yet.
pub async fn verify_key_ring(
    db: &PgPool,
    keys: &KeyRing,
    now: OffsetDateTime,
) -> Result<(), KeyCheckError> {
    let stored = stored_checks(db).await?;
    check_configured_keys(keys, &stored)?;
    let in_use = key_ids_in_use(db).await?;
    let missing: Vec<String> = in_use
        .into_iter()
        .filter(|id| !keys.has_key(id))
        .map(|id| format!("`{id}`"))
        .collect();
    if !missing.is_empty() {
        return Err(KeyCheckError::MissingKeys(missing.join(", ")));
    }
    let mut inserted_any = false;
    for key_id in keys.key_ids() {
        if !stored.iter().any(|(id, _)| id == key_id) {
            if let Ok(sealed) = keys.seal_with_key_id(key_id, context(key_id), CHECK_PLAINTEXT) {
                sqlx::query(
                    "insert into encryption_key_check (key_id, check_sealed, created_at)
                     values ($1, $2, $3) on conflict (key_id) do nothing",
                )
                .bind(key_id)
                .bind(sealed)
                .bind(now)
                .execute(db)
                .await?;
                inserted_any = true;
            }
        }
    }
    if inserted_any {
        // Another instance starting at the same moment with another key of
        // the same id may have inserted first: what is stored now decides.
        check_configured_keys(keys, &stored_checks(db).await?)?;
    }
    Ok(())
}

async fn stored_checks(db: &PgPool) -> Result<Vec<(String, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as("select key_id, check_sealed from encryption_key_check")
        .fetch_all(db)
        .await
}

fn check_configured_keys(
    keys: &KeyRing,
    stored: &[(String, Vec<u8>)],
) -> Result<(), KeyCheckError> {
    for (key_id, sealed) in stored {
        if keys.has_key(key_id) && keys.open(context(key_id), sealed).is_err() {
            return Err(KeyCheckError::WrongKey(key_id.clone()));
        }
    }
    Ok(())
}

/// Key ids that seal at least one stored secret (the envelope names its key id
/// in bytes 2.. after a length byte).
pub async fn key_ids_in_use(db: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select distinct convert_from(substring(v from 3 for get_byte(v, 1)), 'UTF8') from (
             select refresh_token_sealed as v from connection where refresh_token_sealed is not null
             union all
             select access_token_sealed from connection where access_token_sealed is not null
         ) sealed",
    )
    .fetch_all(db)
    .await
}
