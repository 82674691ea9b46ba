//! The slow path: one refresh per connection at a time, in this process and
//! across instances, run detached from the request that started it.
//!
//! The first caller that needs a new token spawns the refresh as its own
//! task and every other caller of this process joins it ([`InFlight`]); a
//! caller that hangs up changes nothing, the task finishes, stores what it
//! got and releases its lease. Across instances the lease (`lease.rs`) makes
//! the same promise: the loser waits for the winner's result (woken by its
//! `NOTIFY`, or backing off), then reads it from the row.

use super::cache::{Entry, Snapshot};
use super::lease::{lease_backoff, LeaseGuard, LEASE};
use super::{outcome, TokenBroker};
use crate::amazon::lwa::LwaError;
use crate::crypto::Purpose;
use crate::db::connections::{self, Fence, LeaseClaim};
use crate::domain::ConnectionStatus;
use crate::error::Error;
use std::sync::Arc;
use std::time::Instant;
use time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// A refresh running in this process: resolves to its [`Outcome`] once.
pub type InFlight = watch::Receiver<Option<Arc<Outcome>>>;

/// What a refresh ends with, shared by every caller that waited for it.
pub enum Outcome {
    /// The connection as it is now, with a token newer than the one the
    /// refresh started from (or, without `force`, one good enough for it).
    Token(Arc<Snapshot>),
    Reauthorization {
        status: ConnectionStatus,
        reason: Option<Box<str>>,
    },
    NotFound,
    /// The app's credentials are held rejected, or the `invalid_grant` fuse
    /// has tripped: the app, not the seller, is at fault.
    AppCredentialsRejected,
    /// A passing failure (or a refresh that could not start in time); a
    /// caller holding a token with a minute left gets it.
    Unavailable {
        retry_after_seconds: u64,
    },
    /// Logged by the task with this incident id.
    Internal {
        incident: Uuid,
    },
}

/// What the refresh is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub connection_id: Uuid,
    /// The token the caller saw (and, with `force`, was told is rejected).
    pub seen_generation: i64,
    pub grant_version: i64,
    pub min_ttl: Duration,
    pub force: bool,
}

/// Joins the refresh running for `entry`, or starts one.
pub fn join_or_start(
    broker: &Arc<TokenBroker>,
    entry: &Arc<Entry>,
    plan: Plan,
) -> (InFlight, bool) {
    let mut state = entry.state();
    if let Some(running) = state.inflight.as_ref() {
        // Still running: no result yet and the task is alive.
        if running.borrow().is_none() && running.has_changed().is_ok() {
            return (running.clone(), false);
        }
    }
    let (done, running) = watch::channel(None);
    state.inflight = Some(running.clone());
    drop(state);
    let broker = Arc::clone(broker);
    let entry = Arc::clone(entry);
    tokio::spawn(async move {
        let outcome = match refresh(&broker, &entry, plan).await {
            Ok(outcome) => outcome,
            Err(error) => {
                let incident = Uuid::new_v4();
                tracing::error!(%incident, connection = %plan.connection_id, error = %error, "refresh failed");
                Outcome::Internal { incident }
            }
        };
        let _ = done.send(Some(Arc::new(outcome)));
        let mut state = entry.state();
        if state
            .inflight
            .as_ref()
            .is_some_and(|r| r.same_channel(&done.subscribe()))
        {
            state.inflight = None;
        }
    });
    (running, true)
}

/// Waits for a refresh's outcome.
pub async fn outcome_of(mut running: InFlight) -> Arc<Outcome> {
    match running.wait_for(Option::is_some).await {
        Ok(value) => value.clone().unwrap_or_else(|| Arc::new(lost())),
        Err(_) => Arc::new(lost()),
    }
}

/// The task ended without a word (it panicked): logged by the runtime.
fn lost() -> Outcome {
    Outcome::Internal {
        incident: Uuid::nil(),
    }
}

/// Claims the lease (or waits for whoever holds it), then calls Amazon and
/// settles the outcome.
async fn refresh(
    broker: &Arc<TokenBroker>,
    entry: &Arc<Entry>,
    mut plan: Plan,
) -> Result<Outcome, Error> {
    let id = plan.connection_id;
    let claim = Uuid::new_v4();
    let give_up_at = Instant::now() + LEASE + LEASE / 2;
    let mut waits = 0;
    let (snapshot, refresh_sealed) = loop {
        let claimed = connections::claim_refresh_lease(
            &broker.db,
            id,
            claim,
            plan.grant_version,
            plan.seen_generation,
            LEASE,
        )
        .await?;
        match claimed {
            LeaseClaim::Claimed {
                refresh_token_sealed,
            } => break (entry.snapshot(), refresh_token_sealed),
            LeaseClaim::ClaimedWithoutRefreshToken => {
                LeaseGuard::new(broker.db.clone(), fence(&plan, claim))
                    .release()
                    .await;
                return Ok(Outcome::Reauthorization {
                    status: ConnectionStatus::NeedsReauth,
                    reason: Some("no refresh token is stored".into()),
                });
            }
            LeaseClaim::NotClaimed => {}
        }
        // Another refresh holds the lease, or the row moved on: read it.
        let Some((row, lease_busy)) = broker.load(id).await? else {
            broker.cache.forget(id);
            return Ok(Outcome::NotFound);
        };
        let row = Arc::new(row);
        entry.store(Arc::clone(&row));
        if row.status != ConnectionStatus::Active {
            return Ok(Outcome::Reauthorization {
                status: row.status,
                reason: row.status_reason.clone(),
            });
        }
        let now = broker.clock.now();
        if let Some(token) = row.token.as_ref() {
            let newer = token.generation != plan.seen_generation;
            if newer && token.is_good_for(now, Duration::ZERO) {
                return Ok(Outcome::Token(row));
            }
            if !plan.force && token.is_good_for(now, plan.min_ttl) {
                return Ok(Outcome::Token(row));
            }
        }
        if let Some(left) = row.cooling_down_for(now) {
            return Ok(Outcome::Unavailable {
                retry_after_seconds: left.whole_seconds().max(1) as u64,
            });
        }
        if row.grant_version != plan.grant_version || row.token_generation != plan.seen_generation {
            // Reconnected, or another refresh stored a token that will not
            // do: claim against the row as it is now.
            plan.grant_version = row.grant_version;
            plan.seen_generation = row.token_generation;
            continue;
        }
        if !lease_busy {
            continue;
        }
        if Instant::now() >= give_up_at {
            return Ok(Outcome::Unavailable {
                retry_after_seconds: 5,
            });
        }
        broker.wait_for_lease(id, lease_backoff(waits)).await;
        waits += 1;
    };

    let guard = LeaseGuard::new(broker.db.clone(), fence(&plan, claim));
    // Checked again now that the lease is ours: they may have changed while
    // this task waited.
    let _probe = match broker.gate_calls().await? {
        Ok(probe) => probe,
        Err(blocked) => {
            guard.release().await;
            return Ok(blocked);
        }
    };
    let tenant = snapshot.tenant_id.to_string();
    let row = id.to_string();
    let refresh_token = broker
        .keys
        .open_str(
            super::seal_context(Purpose::RefreshToken, &tenant, &row),
            &refresh_sealed,
        )
        .map_err(Error::from)?;
    let secrets = broker.credentials.secrets_in_order();
    let attempted = super::retry::refresh_with_retries(
        &broker.lwa,
        &secrets.candidates(),
        &broker.breaker,
        broker.clock.as_ref(),
        &refresh_token,
    )
    .await;
    if let Err(LwaError::Unavailable(reason)) = &attempted.result {
        tracing::warn!(connection = %id, reason = reason.as_str(), "refresh failed for a passing reason");
    }
    outcome::settle(
        broker,
        entry,
        outcome::Settling {
            guard,
            snapshot,
            refresh_sealed,
            refresh_token,
        },
        attempted,
    )
    .await
}

fn fence(plan: &Plan, claim: Uuid) -> Fence {
    Fence {
        id: plan.connection_id,
        claim,
        grant_version: plan.grant_version,
    }
}
