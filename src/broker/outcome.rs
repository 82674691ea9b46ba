//! Settling a refresh: what each answer of Amazon does to the connection,
//! every write fenced by the lease claim and the grant version.
//!
//! - A token: a rotated refresh token is swapped in first (compare-and-swap
//!   on the ciphertext it was read as, retried, whoever holds the lease now),
//!   then the access token is written back. Fenced out, the token still goes
//!   to the callers waiting; the row keeps what the newer writer left.
//! - `invalid_grant`: through the fuse (`fuse.rs`): `needs_reauth`, or, when
//!   the fuse has tripped, an app-wide alarm and no seller blamed.
//! - `invalid_client` on every secret: the app-wide hold; the connection's
//!   row is not touched.
//! - A passing failure: the error, the failure count and a cooldown.

use super::cache::{CachedToken, Entry, Failing, Snapshot};
use super::fuse::FuseDecision;
use super::lease::LeaseGuard;
use super::refresh::Outcome;
use super::retry::Attempted;
use super::{seal_context, TokenBroker};
use crate::amazon::lwa::{LwaError, Tokens};
use crate::crypto::Purpose;
use crate::db::connections::{self, Fence, Refreshed};
use crate::db::notify::{self, Change};
use crate::error::Error;
use crate::events;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// A passing failure's cooldown: 10 s, doubling to 60 s.
pub fn cooldown(failures: u32) -> Duration {
    Duration::seconds((5i64 << failures.clamp(1, 4)).min(60))
}

/// What a refresh holds while it settles.
pub struct Settling {
    pub guard: LeaseGuard,
    /// The connection as the refresh claimed it.
    pub snapshot: Arc<Snapshot>,
    pub refresh_sealed: Vec<u8>,
    pub refresh_token: SecretString,
}

pub async fn settle(
    broker: &Arc<TokenBroker>,
    entry: &Arc<Entry>,
    settling: Settling,
    attempted: Attempted,
) -> Result<Outcome, Error> {
    let id = settling.guard.fence().id;
    let latency_ms = attempted.latency_ms;
    match attempted.result {
        Ok(tokens) => {
            if let Err(e) = broker
                .credentials
                .worked(tokens.secret_id, &tokens.refused_first)
                .await
            {
                tracing::warn!(error = %e, "could not record that the app's credentials work");
            }
            broker.fuse.note_refresh_worked(broker).await;
            record_event(broker, id, "ok", latency_ms).await;
            stored(broker, entry, settling, tokens, attempted.started_at).await
        }
        Err(LwaError::InvalidGrant { .. }) => {
            let fence = settling.guard.fence();
            let decision = broker
                .fuse
                .invalid_grant(broker, fence, settling.snapshot.tenant_id, latency_ms)
                .await?;
            settling.guard.settled();
            match decision {
                FuseDecision::MarkedNeedsReauth => {
                    broker.cache.forget(id);
                    tracing::warn!(connection = %id, "refresh token refused (invalid_grant): connection needs reauthorization");
                    Ok(Outcome::Reauthorization {
                        status: crate::domain::ConnectionStatus::NeedsReauth,
                        reason: Some("revoked_or_expired".into()),
                    })
                }
                FuseDecision::Fused => Ok(Outcome::AppCredentialsRejected),
                FuseDecision::FencedOut => superseded(broker, entry, id, None).await,
            }
        }
        Err(LwaError::ClientRejected { .. }) => {
            // The app's credentials are at fault, never the seller: the
            // connection's row keeps its status and shows no error.
            settling.guard.release().await;
            record_event(broker, id, "app_credentials_rejected", latency_ms).await;
            broker.credentials.rejected(&attempted.tried).await?;
            Ok(Outcome::AppCredentialsRejected)
        }
        Err(error @ (LwaError::Refused { .. } | LwaError::Unavailable(_))) => {
            let message = match &error {
                LwaError::Refused { error, .. } => {
                    format!("Amazon's token endpoint refused the refresh request ({error})")
                }
                LwaError::Unavailable(reason) => format!(
                    "Amazon's token endpoint was unavailable ({})",
                    reason.as_str()
                ),
                _ => error.to_string(),
            };
            failed(broker, entry, settling, &message, latency_ms).await
        }
    }
}

async fn stored(
    broker: &Arc<TokenBroker>,
    entry: &Arc<Entry>,
    settling: Settling,
    tokens: Tokens,
    started_at: OffsetDateTime,
) -> Result<Outcome, Error> {
    let fence = settling.guard.fence();
    let snapshot = &settling.snapshot;
    let tenant = snapshot.tenant_id.to_string();
    let row = fence.id.to_string();
    // Counted from when the attempt that got it started, not when it arrived.
    let expires_at = started_at + tokens.lifetime();
    let access_sealed = broker.keys.seal_str(
        seal_context(Purpose::AccessToken, &tenant, &row),
        &tokens.access_token,
    );
    // Amazon does not rotate refresh tokens, but a new one must never be lost.
    if let Some(rotated) = tokens
        .refresh_token
        .as_ref()
        .filter(|t| t.expose_secret() != settling.refresh_token.expose_secret())
    {
        store_rotated_refresh_token(
            broker,
            fence.id,
            fence.grant_version,
            &settling.refresh_sealed,
            &settling.refresh_token,
            rotated,
        )
        .await;
    }
    let now = broker.clock.now();
    let written = write_refreshed(
        broker,
        fence,
        Refreshed {
            access_token_sealed: &access_sealed,
            access_token_expires_at: expires_at,
            now,
        },
    )
    .await;
    let fresh_token = CachedToken {
        secret: tokens.access_token,
        expires_at,
        generation: -1,
    };
    match written {
        Ok(Some(generation)) => {
            settling.guard.settled();
            let fresh = Arc::new(Snapshot {
                token_generation: generation,
                token: Some(CachedToken {
                    generation,
                    ..fresh_token
                }),
                failing: None,
                loaded_at: now.unix_timestamp(),
                ..snapshot.copy_facts()
            });
            entry.store(Arc::clone(&fresh));
            broker.tell_others(fence.id).await;
            tracing::info!(connection = %fence.id, "access token refreshed");
            Ok(Outcome::Token(fresh))
        }
        Ok(None) => {
            // The lease ran out and another refresh moved on, or the
            // connection was reconnected or disconnected meanwhile.
            settling.guard.settled();
            superseded(broker, entry, fence.id, Some(fresh_token)).await
        }
        Err(e) => {
            // The token is good; callers get it, the row keeps the old one
            // (the guard releases the lease).
            tracing::warn!(connection = %fence.id, error = %e, "could not store a refreshed access token");
            Ok(Outcome::Token(Arc::new(Snapshot {
                token: Some(fresh_token),
                loaded_at: i64::MIN,
                ..snapshot.copy_facts()
            })))
        }
    }
}

/// Stores the refreshed token (fenced) and, in the same transaction, a
/// `connection.recovered` when failed refreshes had degraded the connection.
/// `None` when fenced out.
async fn write_refreshed(
    broker: &TokenBroker,
    fence: Fence,
    refreshed: Refreshed<'_>,
) -> Result<Option<i64>, sqlx::Error> {
    let now = refreshed.now;
    let mut tx = broker.db.begin().await?;
    let Some(before) = connections::health_for_update(&mut *tx, fence.id, now).await? else {
        return Ok(None);
    };
    let Some(generation) = connections::store_refreshed(&mut *tx, fence, refreshed).await? else {
        return Ok(None);
    };
    events::record_health_change(&mut tx, fence.id, before, now).await?;
    tx.commit().await?;
    Ok(Some(generation))
}

/// Records a passing failure (fenced) and, in the same transaction, a
/// `connection.degraded` when this failure degrades the connection. False
/// when fenced out.
async fn write_failure(
    broker: &TokenBroker,
    fence: Fence,
    message: &str,
    cooldown_until: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let mut tx = broker.db.begin().await?;
    let Some(before) = connections::health_for_update(&mut *tx, fence.id, now).await? else {
        return Ok(false);
    };
    if !connections::record_refresh_failure(
        &mut *tx,
        fence,
        "amazon_unavailable",
        message,
        cooldown_until,
        now,
    )
    .await?
    {
        return Ok(false);
    }
    events::record_health_change(&mut tx, fence.id, before, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// The refresh's write was fenced out: the row as the newer writer left it.
/// A token this refresh got still goes to its callers if the row has none
/// better and is still active.
async fn superseded(
    broker: &Arc<TokenBroker>,
    entry: &Arc<Entry>,
    id: Uuid,
    ours: Option<CachedToken>,
) -> Result<Outcome, Error> {
    let Some((row, _)) = broker.load(id).await? else {
        broker.cache.forget(id);
        return Ok(Outcome::NotFound);
    };
    let row = Arc::new(row);
    entry.store(Arc::clone(&row));
    if row.status != crate::domain::ConnectionStatus::Active {
        return Ok(Outcome::Reauthorization {
            status: row.status,
            reason: row.status_reason.clone(),
        });
    }
    let now = broker.clock.now();
    let theirs_left = row.token.as_ref().map(|t| t.left(now));
    match ours {
        Some(ours) if theirs_left.is_none_or(|left| left < ours.left(now)) => {
            Ok(Outcome::Token(Arc::new(Snapshot {
                token: Some(ours),
                loaded_at: i64::MIN,
                ..row.copy_facts()
            })))
        }
        _ if theirs_left.is_some_and(|left| left > Duration::ZERO) => Ok(Outcome::Token(row)),
        _ => Ok(Outcome::Unavailable {
            retry_after_seconds: 1,
        }),
    }
}

async fn failed(
    broker: &Arc<TokenBroker>,
    entry: &Arc<Entry>,
    settling: Settling,
    message: &str,
    latency_ms: i32,
) -> Result<Outcome, Error> {
    let fence = settling.guard.fence();
    let snapshot = &settling.snapshot;
    let failures = snapshot.refresh_failures().max(0) as u32 + 1;
    let wait = cooldown(failures);
    let now = broker.clock.now();
    let recorded = write_failure(broker, fence, message, now + wait, now).await?;
    settling.guard.settled();
    record_event(broker, fence.id, "amazon_unavailable", latency_ms).await;
    if recorded {
        entry.store(Arc::new(Snapshot {
            failing: Some(Box::new(Failing {
                failures: failures as i32,
                cooldown_until: Some(now + wait),
            })),
            token: snapshot.token.as_ref().map(CachedToken::copy),
            // Only the cooldown is new: a snapshot invalidated meanwhile (it
            // holds no token) stays due for a re-read, so the still-good token
            // in the row is not hidden from the next request.
            loaded_at: snapshot.loaded_at,
            ..snapshot.copy_facts()
        }));
        broker.tell_others(fence.id).await;
    }
    Ok(Outcome::Unavailable {
        retry_after_seconds: wait.whole_seconds().max(1) as u64,
    })
}

/// Swaps a refresh token Amazon rotated into the row. Retried (a database
/// error, or a ciphertext re-sealed by `keys rotate` meanwhile) and, if it
/// still cannot land, left to a background task that keeps trying: a new
/// refresh token is never dropped. A reconnect meanwhile wins (its grant is
/// newer).
async fn store_rotated_refresh_token(
    broker: &Arc<TokenBroker>,
    id: Uuid,
    grant_version: i64,
    read_as: &[u8],
    old: &SecretString,
    new: &SecretString,
) {
    let mut expected = read_as.to_vec();
    for attempt in 0..8u32 {
        match swap_once(broker, id, grant_version, &expected, old, new).await {
            Ok(Swap::Done) => {
                tracing::info!(connection = %id, "Amazon rotated the refresh token: stored");
                return;
            }
            Ok(Swap::Superseded) => return,
            Ok(Swap::ResealedAs(current)) => expected = current,
            Err(e) => {
                tracing::warn!(connection = %id, error = %e, attempt, "could not store a rotated refresh token yet");
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(5))).await;
            }
        }
    }
    tracing::error!(connection = %id, "a rotated refresh token could not be stored after retries; still trying in the background");
    let (broker, old, new) = (Arc::clone(broker), old.clone(), new.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            match swap_once(&broker, id, grant_version, &expected, &old, &new).await {
                Ok(Swap::Done | Swap::Superseded) => return,
                Ok(Swap::ResealedAs(current)) => expected = current,
                Err(_) => {}
            }
        }
    });
}

enum Swap {
    Done,
    /// A newer authorization (or a disconnect) replaced the grant: nothing to store.
    Superseded,
    /// The same old token, sealed anew (key rotation): swap against this.
    ResealedAs(Vec<u8>),
}

async fn swap_once(
    broker: &TokenBroker,
    id: Uuid,
    grant_version: i64,
    expected: &[u8],
    old: &SecretString,
    new: &SecretString,
) -> Result<Swap, Error> {
    let Some(stored) = connections::find_refresh_token(&broker.db, id).await? else {
        return Ok(Swap::Superseded);
    };
    if stored.grant_version != grant_version {
        return Ok(Swap::Superseded);
    }
    let current = stored.refresh_token_sealed;
    let tenant = stored.tenant_id.to_string();
    let row = id.to_string();
    let context = seal_context(Purpose::RefreshToken, &tenant, &row);
    let Some(current) = current else {
        return Ok(Swap::Superseded);
    };
    if current != expected {
        let opened = broker.keys.open_str(context, &current)?;
        if opened.expose_secret() == new.expose_secret() {
            return Ok(Swap::Done);
        }
        if opened.expose_secret() != old.expose_secret() {
            return Ok(Swap::Superseded);
        }
        return Ok(Swap::ResealedAs(current));
    }
    let sealed = broker.keys.seal_str(context, new);
    if connections::swap_refresh_token(&broker.db, id, grant_version, expected, &sealed).await? {
        Ok(Swap::Done)
    } else {
        // Changed between the read and the swap: look again.
        Ok(Swap::ResealedAs(expected.to_vec()))
    }
}

pub async fn record_event(broker: &TokenBroker, id: Uuid, outcome: &str, latency_ms: i32) {
    let now = broker.clock.now();
    if let Err(e) =
        connections::insert_refresh_event(&broker.db, id, now, outcome, latency_ms).await
    {
        tracing::warn!(error = %e, "could not record a refresh outcome");
    }
}

/// Sends the change to every other instance (they drop their copy).
pub async fn tell(broker: &TokenBroker, id: Uuid) {
    let change = Change::Connection {
        id,
        sender: broker.instance_id,
    };
    if let Err(e) = notify::send(&broker.db, &change).await {
        tracing::warn!(connection = %id, error = %e, "could not notify other instances");
    }
}
