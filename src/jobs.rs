//! Background work of each instance: flushing token-issue counts, draining
//! metrics histograms, and deleting what has run out (one-time values,
//! sessions, refresh history older than 30 days). Each job has a `*_once`
//! for tests; [`Jobs::run`] loops until stopped and flushes on the way out.

use crate::broker::TokenBroker;
use crate::clock::Clock;
use crate::db::{connections, login_tokens, oauth_states, sessions::PgSessionStore, usage};
use sqlx::PgPool;
use std::sync::Arc;
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
/// How often the client secret's coming expiry is looked at (`app.secret_expiring`).
const SECRET_EXPIRY_EVERY: Duration = Duration::from_secs(60);
/// Refresh history (the ops dashboard's charts and the fuse's window) is kept this long.
pub const REFRESH_HISTORY: time::Duration = time::Duration::days(30);

pub struct Jobs {
    db: PgPool,
    clock: Arc<dyn Clock>,
    broker: Arc<TokenBroker>,
}

impl Jobs {
    pub fn new(db: PgPool, clock: Arc<dyn Clock>, broker: Arc<TokenBroker>) -> Self {
        Jobs { db, clock, broker }
    }

    /// Writes the token-issue counts gathered in memory since the last flush;
    /// counts it could not write are kept for the next.
    pub async fn flush_usage_once(&self) -> Result<(), sqlx::Error> {
        let pairs = self.broker.take_usage();
        if pairs.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        // One statement per few thousand pairs, not one per pair: with
        // thousands of busy connections a per-pair flush costs PostgreSQL more
        // than the token requests it counts.
        // In the order of the pairs (as every instance writes them), so that
        // two flushes cannot deadlock.
        let mut chunks = pairs.chunks(5000);
        while let Some(chunk) = chunks.next() {
            let key_ids: Vec<Uuid> = chunk.iter().map(|((key, _), _)| *key).collect();
            let connection_ids: Vec<Uuid> = chunk
                .iter()
                .map(|((_, connection), _)| *connection)
                .collect();
            let issued: Vec<i64> = chunk.iter().map(|(_, n)| *n as i64).collect();
            if let Err(e) =
                usage::add_token_issues(&self.db, &key_ids, &connection_ids, &issued, now).await
            {
                let unwritten = chunk.iter().chain(chunks.flatten()).copied().collect();
                self.broker.restore_usage(unwritten);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes expired login tokens, OAuth states, sessions and old refresh history.
    pub async fn clean_up_once(&self) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        login_tokens::delete_expired(&self.db, now).await?;
        oauth_states::delete_expired(&self.db, now).await?;
        PgSessionStore::new(self.db.clone())
            .delete_expired(now)
            .await?;
        connections::delete_refresh_events_before(&self.db, now - REFRESH_HISTORY).await?;
        crate::db::events::delete_before(&self.db, now - crate::events::KEPT_FOR).await?;
        crate::db::consent_attempts::delete_before(&self.db, now - time::Duration::days(2)).await?;
        Ok(())
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut upkeep = tokio::time::interval(METRICS_UPKEEP_EVERY);
        let mut clean = tokio::time::interval(CLEAN_EVERY);
        let mut secret_expiry = tokio::time::interval(SECRET_EXPIRY_EVERY);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = flush.tick() => {
                    if let Err(e) = self.flush_usage_once().await {
                        tracing::warn!(error = %e, "could not flush token-issue counts");
                    }
                }
                _ = upkeep.tick() => {
                    // Without this, histogram samples grow until the next scrape.
                    if let Some(handle) = crate::metrics::install() {
                        handle.run_upkeep();
                    }
                    // Dropped cache entries (and their tokens) go within seconds.
                    self.broker.release_retired();
                }
                _ = secret_expiry.tick() => {
                    if let Err(e) = crate::app_secrets::warn_if_expiring(self.broker.credentials()).await {
                        tracing::warn!(error = %e, "could not check the client secret's expiry");
                    }
                }
                _ = clean.tick() => {
                    if let Err(e) = self.clean_up_once().await {
                        tracing::warn!(error = %e, "clean-up failed");
                    }
                }
            }
        }
        if let Err(e) = self.flush_usage_once().await {
            tracing::warn!(error = %e, "could not flush token-issue counts at shutdown");
        }
    }
}
