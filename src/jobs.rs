//! Background work of each instance: flushing token-issue counts to the audit
//! tables, draining metrics histograms, and deleting expired one-time values and sessions. Each job has a
//! `run_once` for tests; [`run`] loops until stopped and flushes on the way out.

use crate::app::AppState;
use crate::db::{login_tokens, oauth_states, sessions::PgSessionStore, usage};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// Each flush upserts one row per busy (key, connection) pair, however many
/// tokens it counts: with 10,000 busy connections a flush every 5 s kept
/// PostgreSQL at ~2,000 upserts a second and put a burst of its CPU into
/// request latency. Counts wait at most this long (and are flushed at shutdown).
const FLUSH_EVERY: Duration = Duration::from_secs(30);
/// Histogram samples wait in memory until drained into their buckets.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);
const CLEAN_EVERY: Duration = Duration::from_secs(300);

/// Writes the token-issue counts gathered in memory since the last flush.
pub async fn flush_usage_once(state: &AppState) -> Result<(), sqlx::Error> {
    let counts = state.broker.take_usage();
    if counts.is_empty() {
        return Ok(());
    }
    let now = state.now();
    // One statement per few thousand pairs, not one per pair: with thousands
    // of busy connections a per-pair flush costs PostgreSQL more than the
    // token requests it counts.
    let mut pairs: Vec<_> = counts.into_iter().collect();
    pairs.sort_unstable_by_key(|(pair, _)| *pair);
    for chunk in pairs.chunks(5000) {
        let key_ids: Vec<Uuid> = chunk.iter().map(|((key, _), _)| *key).collect();
        let connection_ids: Vec<Uuid> = chunk
            .iter()
            .map(|((_, connection), _)| *connection)
            .collect();
        let issued: Vec<i64> = chunk.iter().map(|(_, n)| *n as i64).collect();
        usage::add_token_issues(&state.db, &key_ids, &connection_ids, &issued, now).await?;
    }
    Ok(())
}

/// Deletes expired login tokens, OAuth states and sessions.
pub async fn clean_up_once(state: &AppState) -> Result<(), sqlx::Error> {
    let now = state.now();
    login_tokens::delete_expired(&state.db, now).await?;
    oauth_states::delete_expired(&state.db, now).await?;
    PgSessionStore::new(state.db.clone())
        .delete_expired(now)
        .await?;
    Ok(())
}

pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut upkeep = tokio::time::interval(METRICS_UPKEEP_EVERY);
    let mut clean = tokio::time::interval(CLEAN_EVERY);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = flush.tick() => {
                if let Err(e) = flush_usage_once(&state).await {
                    tracing::warn!(error = %e, "could not flush token-issue counts");
                }
            }
            _ = upkeep.tick() => {
                // Without this, histogram samples grow until the next scrape.
                if let Some(handle) = crate::metrics::install() {
                    handle.run_upkeep();
                }
                // Dropped cache entries (and their tokens) go within seconds.
                state.broker.release_retired();
            }
            _ = clean.tick() => {
                if let Err(e) = clean_up_once(&state).await {
                    tracing::warn!(error = %e, "clean-up failed");
                }
            }
        }
    }
    if let Err(e) = flush_usage_once(&state).await {
        tracing::warn!(error = %e, "could not flush token-issue counts at shutdown");
    }
}
