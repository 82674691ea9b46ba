//! Webhook delivery (CONTRACT §8), following Standard Webhooks: each event
//! is POSTed with `webhook-id` (the event id, the same on every attempt),
//! `webhook-timestamp` and `webhook-signature` (one `v1,` signature per
//! configured secret), signed by the `standardwebhooks` crate rather than by
//! HMAC framing of our own.
//!
//! At least once and in order per connection: an event is claimed only when
//! it is its connection's oldest pending one (`db::events::claim_due`, with
//! `SKIP LOCKED`, so several instances never make the same attempt), and it
//! stays pending across restarts until a 2xx answer. Failures are retried
//! from 5 s, doubling up to an hour, with jitter, for 3 days; then the event
//! is marked failed (shown on `/ops`) and the connection's next events go on.

use crate::clock::Clock;
use crate::config::WebhookConfig;
use crate::db::events::{self, Attempt, DueEvent};
use rand::Rng;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use url::Url;
use uuid::Uuid;

/// A receiver must answer within this.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Events claimed per round.
const BATCH: i64 = 32;
/// A claim outlasts an attempt (its timeout) with room to record it.
const CLAIM: time::Duration = time::Duration::seconds(30);
const FIRST_RETRY: time::Duration = time::Duration::seconds(5);
const LONGEST_RETRY: time::Duration = time::Duration::hours(1);
/// After this long an event that was never delivered is given up.
pub const GIVE_UP_AFTER: time::Duration = time::Duration::days(3);

#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    #[error("a webhook secret cannot be used: {0}")]
    Secret(standardwebhooks::WebhookError),
    #[error("the HTTP client cannot be built: {0}")]
    Client(reqwest::Error),
}

pub struct Webhooks {
    db: PgPool,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    url: Url,
    signers: Vec<standardwebhooks::Webhook>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub delivered: usize,
    pub failed_attempts: usize,
    pub given_up: usize,
}

impl Webhooks {
    pub fn new(
        db: PgPool,
        clock: Arc<dyn Clock>,
        config: &WebhookConfig,
    ) -> Result<Self, WebhookSetupError> {
        let signers = config
            .secrets
            .iter()
            .map(|secret| standardwebhooks::Webhook::new(secret.expose_secret()))
            .collect::<Result<_, _>>()
            .map_err(WebhookSetupError::Secret)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(ANSWER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sp-broker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(WebhookSetupError::Client)?;
        Ok(Webhooks {
            db,
            clock,
            http,
            url: config.url.clone(),
            signers,
        })
    }

    /// Claims the events due now and makes one attempt at each, at once
    /// (they belong to different connections).
    pub async fn deliver_due(&self) -> Result<Round, sqlx::Error> {
        let claim = Uuid::new_v4();
        let now = self.clock.now();
        let due = events::claim_due(&self.db, claim, now, now + CLAIM, BATCH).await?;
        let attempts = due.iter().map(|event| self.attempt(event, claim));
        let mut round = Round::default();
        for outcome in futures_util::future::join_all(attempts).await {
            let (count, name) = match outcome? {
                Sent::Delivered => (&mut round.delivered, "delivered"),
                Sent::Failed => (&mut round.failed_attempts, "failed"),
                Sent::GivenUp => (&mut round.given_up, "given_up"),
            };
            *count += 1;
            crate::metrics::webhook_attempt(name);
        }
        Ok(round)
    }

    async fn attempt(&self, event: &DueEvent, claim: Uuid) -> Result<Sent, sqlx::Error> {
        // Older than the retry window (made while no URL was configured, or
        // by an instance that stopped for days): given up unsent.
        let now = self.clock.now();
        if now - event.created_at >= GIVE_UP_AFTER {
            let error = "not delivered within 3 days of the event";
            events::record_attempt(
                &self.db,
                event.seq,
                claim,
                now,
                Attempt::Failed {
                    status: None,
                    error,
                    next_at: now,
                    give_up: true,
                },
            )
            .await?;
            return Ok(Sent::GivenUp);
        }
        let answer = self.post(event).await;
        let now = self.clock.now();
        let (attempt, sent) = match answer {
            Ok(status) if (200..300).contains(&status) => (
                Attempt::Delivered {
                    status: i32::from(status),
                },
                Sent::Delivered,
            ),
            other => {
                let (status, error) = match &other {
                    Ok(status) => (
                        Some(i32::from(*status)),
                        format!("the receiver answered {status}"),
                    ),
                    Err(e) => (None, e.clone()),
                };
                let give_up = now - event.created_at >= GIVE_UP_AFTER;
                let next_at = now + retry_delay(event.attempts + 1);
                tracing::warn!(event = %event.id, attempts = event.attempts + 1, give_up, error = %error, "webhook delivery failed");
                events::record_attempt(
                    &self.db,
                    event.seq,
                    claim,
                    now,
                    Attempt::Failed {
                        status,
                        error: &error,
                        next_at,
                        give_up,
                    },
                )
                .await?;
                return Ok(if give_up { Sent::GivenUp } else { Sent::Failed });
            }
        };
        events::record_attempt(&self.db, event.seq, claim, now, attempt).await?;
        Ok(sent)
    }

    /// One POST: the answer's status, or what went wrong, in words without
    /// the URL's query (which may carry a receiver's token).
    async fn post(&self, event: &DueEvent) -> Result<u16, String> {
        let timestamp = self.clock.now().unix_timestamp();
        let mut signatures = Vec::with_capacity(self.signers.len());
        for signer in &self.signers {
            let signature = signer
                .sign(&event.id, timestamp, event.body.as_bytes())
                .map_err(|e| format!("cannot sign: {e}"))?;
            signatures.push(signature);
        }
        let sent = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(event.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) if e.is_timeout() => {
                Err(format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()))
            }
            Err(e) if e.is_connect() => Err("cannot connect to the receiver".to_owned()),
            Err(_) => Err("the request to the receiver failed".to_owned()),
        }
    }

    /// Delivers until stopped: a round every second, at once again after a
    /// round that had work.
    /// Delivers rounds until stopped; a round under way is finished first.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let busy = match self.deliver_due().await {
                Ok(round) => round != Round::default(),
                Err(e) => {
                    tracing::warn!(error = %e, "webhook delivery round failed");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

enum Sent {
    Delivered,
    Failed,
    GivenUp,
}

/// Before attempt `n + 1`, after `n` failed: 5 s doubling up to an hour, less
/// up to a fifth at random (so a receiver coming back is not hit by every
/// retry at once).
pub fn retry_delay(failed: i32) -> time::Duration {
    let doublings = failed.clamp(1, 30) - 1;
    let full = FIRST_RETRY
        .checked_mul(1i32 << doublings.min(20))
        .map_or(LONGEST_RETRY, |d| d.min(LONGEST_RETRY));
    let jitter = rand::thread_rng().gen_range(0.8..=1.0);
    full * jitter
}

/// `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> String {
    use base64::Engine as _;
    let key: [u8; 32] = rand::thread_rng().gen();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_five_seconds_and_stay_within_an_hour() {
        let first = retry_delay(1);
        assert!(first >= time::Duration::seconds(4) && first <= FIRST_RETRY);
        let third = retry_delay(3);
        assert!(third >= time::Duration::seconds(16) && third <= time::Duration::seconds(20));
        for failed in [12, 30, i32::MAX] {
            let late = retry_delay(failed);
            assert!(late <= LONGEST_RETRY && late >= LONGEST_RETRY * 0.8);
        }
    }

    #[test]
    fn a_new_secret_is_accepted_by_the_configuration_check() {
        let secret = new_secret();
        assert!(crate::config::check_webhook_secret(&secret).is_ok());
        assert_ne!(secret, new_secret());
    }
}
