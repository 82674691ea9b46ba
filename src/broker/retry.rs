//! Calling LWA's refresh grant: up to two retries with full jitter, for
//! passing failures only, all within [`REFRESH_DEADLINE`], and the circuit
//! breaker counting what happened (`breaker.rs`).

use super::breaker::CircuitBreaker;
use crate::amazon::lwa::{Grant, LwaClient, LwaError, Tokens};
use crate::clock::Clock;
use rand::Rng;
use secrecy::SecretString;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The calls to Amazon of one refresh (every attempt, every secret, every
/// pause between attempts) end by this long after the first began: a call
/// still running then is cut off (`LwaClient::request` takes the deadline).
pub const REFRESH_DEADLINE: Duration = Duration::from_secs(20);
pub const MAX_RETRIES: u32 = 2;
const RETRY_BASE_MS: u64 = 250;

/// What a refresh attempt came to, and when the attempt that answered
/// started (a token's lifetime counts from then).
pub struct Attempted {
    pub result: Result<Tokens, LwaError>,
    pub started_at: OffsetDateTime,
    pub latency_ms: i32,
    /// The client secrets it could have sent (all were refused when the
    /// result is `ClientRejected`).
    pub tried: Vec<uuid::Uuid>,
}

pub async fn refresh_with_retries(
    lwa: &LwaClient,
    secrets: &[(uuid::Uuid, &SecretString)],
    breaker: &CircuitBreaker,
    clock: &dyn Clock,
    refresh_token: &SecretString,
) -> Attempted {
    let first = Instant::now();
    let deadline = first + REFRESH_DEADLINE;
    let mut attempt = 0;
    loop {
        let started_at = clock.now();
        let started = Instant::now();
        let result = lwa
            .request(&Grant::RefreshToken(refresh_token), secrets, deadline)
            .await;
        crate::metrics::lwa_call(
            "refresh_token",
            outcome_label(&result),
            started.elapsed().as_secs_f64(),
        );
        let latency_ms = first.elapsed().as_millis().min(i32::MAX as u128) as i32;
        match result {
            Err(e) if e.is_passing() => {
                breaker.record_failure();
                if attempt >= MAX_RETRIES || breaker.open_for().is_some() {
                    return Attempted {
                        result: Err(e),
                        started_at,
                        latency_ms,
                        tried: secrets.iter().map(|(id, _)| *id).collect(),
                    };
                }
                attempt += 1;
                let cap = RETRY_BASE_MS << attempt;
                let wait = Duration::from_millis(rand::thread_rng().gen_range(0..=cap));
                if Instant::now() + wait >= deadline {
                    return Attempted {
                        result: Err(e),
                        started_at,
                        latency_ms,
                        tried: secrets.iter().map(|(id, _)| *id).collect(),
                    };
                }
                tokio::time::sleep(wait).await;
            }
            other => {
                // Amazon answered (yes or no): the endpoint is up.
                breaker.record_success();
                return Attempted {
                    result: other,
                    started_at,
                    latency_ms,
                    tried: secrets.iter().map(|(id, _)| *id).collect(),
                };
            }
        }
    }
}

pub fn outcome_label<T>(result: &Result<T, LwaError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(LwaError::InvalidGrant { .. }) => "invalid_grant",
        Err(LwaError::ClientRejected { .. }) => "app_credentials_rejected",
        Err(LwaError::Refused { .. }) => "refused",
        Err(LwaError::Unavailable(_)) => "amazon_unavailable",
    }
}
