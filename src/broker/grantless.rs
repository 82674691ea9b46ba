//! Grantless (client credentials) tokens, cached per scope until a minute
//! before they expire, one request to Amazon at a time.
//!
//! A grantless refusal (`invalid_scope`, `unauthorized_client`, …) answers
//! that call alone: the app may lack that one grantless permission, which
//! says nothing about its refresh grants. Only `invalid_client` on every
//! secret starts the app-wide hold.

use super::app_credentials::Gate;
use super::retry::REFRESH_DEADLINE;
use super::{TokenBroker, TokenError, MIN_FALLBACK_TTL};
use crate::amazon::lwa::{Grant, GrantlessScope, LwaError};
use crate::api_keys::ApiPrincipal;
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;

/// A grantless token. Deliberately not `Debug`.
pub struct GrantlessToken {
    pub secret: SecretString,
    pub expires_at: OffsetDateTime,
    pub scope: GrantlessScope,
}

#[derive(Default)]
pub struct Grantless {
    /// The lock makes the refresh of each scope single-flight.
    cache: tokio::sync::Mutex<HashMap<GrantlessScope, Arc<GrantlessToken>>>,
}

impl TokenBroker {
    pub async fn grantless_token(
        &self,
        caller: &ApiPrincipal,
        scope: GrantlessScope,
    ) -> Result<Arc<GrantlessToken>, TokenError> {
        let mut cache = self.grantless.cache.lock().await;
        let now = self.clock.now();
        if let Some(token) = cache
            .get(&scope)
            .filter(|t| t.expires_at - now >= MIN_FALLBACK_TTL)
        {
            return Ok(Arc::clone(token));
        }
        if let Some(open_for) = self.breaker.open_for() {
            return Err(TokenError::AmazonUnavailable {
                retry_after_seconds: open_for.as_secs().max(1),
            });
        }
        let _probe = match self.credentials.gate().await? {
            Gate::Held { .. } => return Err(TokenError::AppCredentialsRejected),
            Gate::Probe(probe) => Some(probe),
            Gate::Open => None,
        };
        if let Err(retry) = caller.spend_amazon_call() {
            return Err(TokenError::budget_spent(retry));
        }
        let started_at = self.clock.now();
        let started = Instant::now();
        let secrets = self.credentials.secrets_in_order();
        let secrets = secrets.candidates();
        let result = self
            .lwa
            .request(
                &Grant::ClientCredentials { scope },
                &secrets,
                started + REFRESH_DEADLINE,
            )
            .await;
        crate::metrics::lwa_call(
            "client_credentials",
            super::retry::outcome_label(&result),
            started.elapsed().as_secs_f64(),
        );
        match result {
            Ok(tokens) => {
                self.breaker.record_success();
                self.credentials
                    .worked(tokens.secret_id, &tokens.refused_first)
                    .await?;
                let token = Arc::new(GrantlessToken {
                    expires_at: started_at + tokens.lifetime(),
                    secret: tokens.access_token,
                    scope,
                });
                cache.insert(scope, Arc::clone(&token));
                Ok(token)
            }
            Err(LwaError::Unavailable(reason)) => {
                self.breaker.record_failure();
                tracing::warn!(reason = reason.as_str(), "grantless token: LWA unavailable");
                Err(TokenError::AmazonUnavailable {
                    retry_after_seconds: 5,
                })
            }
            Err(LwaError::ClientRejected { error }) if error == "invalid_client" => {
                self.breaker.record_success();
                let tried: Vec<_> = secrets.iter().map(|(id, _)| *id).collect();
                self.credentials.rejected(&tried).await?;
                Err(TokenError::AppCredentialsRejected)
            }
            Err(LwaError::ClientRejected { error } | LwaError::Refused { error, .. }) => {
                self.breaker.record_success();
                tracing::warn!(%error, scope = scope.as_str(), "grantless token refused: this scope only; the app's other credentials are unaffected");
                Err(TokenError::GrantRefused { error })
            }
            Err(LwaError::InvalidGrant { .. }) => {
                self.breaker.record_success();
                Err(TokenError::GrantRefused {
                    error: "invalid_grant".into(),
                })
            }
        }
    }
}
