//! The health sweep (CONTRACT §5): finds revoked and expiring authorizations
//! before a downstream call fails.
//!
//! A pass first sends the `connection.expiring` notices owed (30 and 7 days
//! before an authorization ends, once each per authorization; no call to
//! Amazon), then refreshes every active connection not refreshed for
//! `SP_BROKER_SWEEP_STALE_AFTER_SECONDS`, through the broker's single-flight
//! refresh, so a revoked one becomes `needs_reauth` (and is announced) by
//! the sweep rather than by a seller's failed import.
//!
//! Instances share the work and the budget through PostgreSQL: connections
//! are claimed in batches with `FOR UPDATE SKIP LOCKED` (a plain statement,
//! so it works behind PgBouncer in transaction mode), the claim lasting the
//! pass, and every refresh first takes a slot from one pacer row that spaces
//! all instances' sweep calls at least 1/rate apart (a little more, at
//! random: the jitter), so no one-second window ever holds more than the
//! rate. While the breaker is open or the app's credentials are rejected the
//! pass waits instead of spending the budget on calls that cannot work.

use crate::broker::{SweepOutcome, TokenBroker};
use crate::clock::Clock;
use crate::config::SweepConfig;
use crate::db::connections;
use crate::domain::EventType;
use crate::events;
use rand::Rng;
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Connections claimed at a time, at most: about two seconds of the rate
/// budget (so that instances share a pass rather than one hoarding it).
const BATCH: i64 = 50;
/// Sweep refreshes of one instance in flight at once, at most.
const MOST_IN_FLIGHT: usize = 128;
/// Expiry notices written per transaction.
const EXPIRY_BATCH: i64 = 100;
/// A pass gives up waiting for Amazon to be callable again after this long.
const LONGEST_PAUSE: Duration = Duration::from_secs(600);

/// What a pass did, as `sp-broker sweep` prints it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PassCounts {
    /// Connections the pass claimed for a refresh.
    pub due: u64,
    pub refreshed: u64,
    pub needs_reauth: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl PassCounts {
    /// Counts one connection's outcome; its name, for the metric.
    fn count(&mut self, outcome: SweepOutcome) -> &'static str {
        let (count, name) = match outcome {
            SweepOutcome::Refreshed => (&mut self.refreshed, "refreshed"),
            SweepOutcome::NeedsReauth => (&mut self.needs_reauth, "needs_reauth"),
            SweepOutcome::Failed => (&mut self.failed, "failed"),
            SweepOutcome::Skipped => (&mut self.skipped, "skipped"),
        };
        *count += 1;
        name
    }
}

pub struct Sweep {
    db: PgPool,
    clock: Arc<dyn Clock>,
    broker: Arc<TokenBroker>,
    config: SweepConfig,
}

impl Sweep {
    pub fn new(
        db: PgPool,
        clock: Arc<dyn Clock>,
        broker: Arc<TokenBroker>,
        config: SweepConfig,
    ) -> Self {
        Sweep {
            db,
            clock,
            broker,
            config,
        }
    }

    /// One pass: the expiry notices, then the refreshes of what is due.
    pub async fn pass(&self) -> Result<PassCounts, sqlx::Error> {
        self.pass_until(None).await
    }

    /// A pass that ends at a batch boundary once `stop` says so: the batch
    /// claimed is refreshed, no other is claimed (what is left is the next
    /// pass's, on this instance or another).
    async fn pass_until(
        &self,
        stop: Option<&tokio::sync::watch::Receiver<bool>>,
    ) -> Result<PassCounts, sqlx::Error> {
        self.send_expiry_notices().await?;
        let mut counts = PassCounts::default();
        loop {
            if stop.is_some_and(|stop| *stop.borrow()) {
                tracing::info!(
                    ?counts,
                    "health sweep pass stopped at a batch boundary: shutting down"
                );
                return Ok(counts);
            }
            let now = self.clock.now();
            let stale_before = now - self.config.stale_after;
            let claim_until = now + self.claim_length();
            let due = connections::claim_sweep_due(
                &self.db,
                stale_before,
                now,
                claim_until,
                self.batch(),
            )
            .await?;
            tracing::debug!(claimed = due.len(), "sweep claimed connections");
            if due.is_empty() {
                break;
            }
            self.refresh_all(due, &mut counts).await?;
        }
        crate::metrics::sweep_pass_done(self.clock.now().unix_timestamp());
        tracing::info!(?counts, "health sweep pass done");
        Ok(counts)
    }

    /// Refreshes the claimed connections, each at its pacer slot, several at
    /// once: the pacer spaces the calls' starts, and with Amazon's latency
    /// (a few hundred ms) one call at a time could not reach the rate. The
    /// refreshes in flight are waited for even when taking a slot fails.
    async fn refresh_all(
        &self,
        due: Vec<uuid::Uuid>,
        counts: &mut PassCounts,
    ) -> Result<(), sqlx::Error> {
        let mut in_flight = tokio::task::JoinSet::new();
        let finish = |done: Result<SweepOutcome, tokio::task::JoinError>,
                      counts: &mut PassCounts| {
            let outcome = done.unwrap_or(SweepOutcome::Failed);
            crate::metrics::sweep_connection(counts.count(outcome));
        };
        let mut result = Ok(());
        for id in due {
            counts.due += 1;
            while in_flight.len() >= self.in_flight_limit() {
                if let Some(done) = in_flight.join_next().await {
                    finish(done, counts);
                }
            }
            if !self.wait_until_amazon_callable().await {
                finish(Ok(SweepOutcome::Skipped), counts);
                continue;
            }
            let wait = match connections::take_sweep_slot(&self.db, self.spacing()).await {
                Ok(wait) => wait,
                Err(e) => {
                    // Claimed and not refreshed: the next pass finds it due again.
                    result = Err(e);
                    break;
                }
            };
            let broker = self.broker.clone();
            in_flight.spawn(async move {
                tokio::time::sleep(wait).await;
                broker.sweep_refresh(id).await
            });
        }
        while let Some(done) = in_flight.join_next().await {
            finish(done, counts);
        }
        result
    }

    /// Refreshes in flight at once: half a second of the budget (Amazon
    /// answers within that), at least one.
    fn in_flight_limit(&self) -> usize {
        ((self.config.rate / 2.0).ceil() as usize).clamp(1, MOST_IN_FLIGHT)
    }

    fn batch(&self) -> i64 {
        ((self.config.rate * 2.0).ceil() as i64).clamp(1, BATCH)
    }

    /// A claim lasts the pass (so no instance sweeps a connection twice in one
    /// interval), at least an hour when passes are only run by hand.
    fn claim_length(&self) -> time::Duration {
        let seconds = self.config.interval.map_or(3600, |i| i.as_secs()).max(3600);
        time::Duration::seconds(seconds as i64)
    }

    /// The gap between two sweep calls of any instance: 1/rate, plus up to a
    /// quarter more at random (never less, so the rate holds in every window).
    fn spacing(&self) -> Duration {
        let base = 1.0 / self.config.rate;
        let jitter = rand::thread_rng().gen_range(1.05..1.3);
        Duration::from_secs_f64(base * jitter)
    }

    /// False when Amazon stayed uncallable (breaker, app credentials) too long.
    async fn wait_until_amazon_callable(&self) -> bool {
        let started = std::time::Instant::now();
        while self.broker.amazon_gated() {
            if started.elapsed() > LONGEST_PAUSE {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        true
    }

    /// `connection.expiring`, 30 and 7 days ahead, once each per authorization.
    async fn send_expiry_notices(&self) -> Result<(), sqlx::Error> {
        loop {
            let now = self.clock.now();
            let mut tx = self.db.begin().await?;
            let owed = connections::lock_expiry_due(&mut *tx, now, EXPIRY_BATCH).await?;
            if owed.is_empty() {
                return Ok(());
            }
            for (id, level) in owed {
                connections::set_expiry_notices(&mut *tx, id, level).await?;
                let reason = if level == 2 {
                    "the authorization ends within 7 days"
                } else {
                    "the authorization ends within 30 days"
                };
                events::record_connection_event(
                    &mut tx,
                    EventType::ConnectionExpiring,
                    id,
                    events::Details {
                        reason: Some(reason),
                        ..events::Details::default()
                    },
                    now,
                )
                .await?;
            }
            tx.commit().await?;
        }
    }

    /// Passes until stopped, every interval, the first after a random part of
    /// it (instances started together do not all sweep at once).
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(interval) = self.config.interval else {
            return;
        };
        let mut wait = interval.mul_f64(rand::thread_rng().gen_range(0.05..0.5));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.pass_until(Some(&stop)).await {
                tracing::warn!(error = %e, "health sweep pass failed");
            }
            if *stop.borrow() {
                return;
            }
            wait = interval;
        }
    }
}
