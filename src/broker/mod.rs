//! The token broker: the product's hot path. Hands out LWA access tokens per
//! connection from an in-memory cache; refreshes once per connection no matter
//! how many callers ask at the same moment, in this process (a per-connection
//! async mutex) and across instances (a lease in the connection row, claimed
//! with a conditional UPDATE, so no database connection is held while Amazon
//! answers). Tokens it obtains are sealed into PostgreSQL too, so a restart or
//! another instance does not call Amazon again.
//!
//! Never hands out, logs or returns a refresh token; never returns an expired
//! access token.

mod breaker;

use crate::amazon::lwa::{Grant, LwaError};
use crate::amazon::marketplaces::Region;
use crate::api_keys::ApiPrincipal;
use crate::app::AppState;
use crate::crypto::{Purpose, SealContext};
use crate::db::audit::{self, AuditTarget};
use crate::db::connections::{self, TokenStateRow};
use crate::error::Error;
use breaker::CircuitBreaker;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// Below this, a cached token is not handed out when a refresh has failed.
pub const MIN_FALLBACK_TTL: Duration = Duration::seconds(60);
pub const FORCE_REFRESH_WINDOW: Duration = Duration::seconds(30);
/// Re-read a cached connection's row after this long even without a notification.
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(30);
/// Longer than the worst refresh (3 attempts of 5 s plus backoff).
const LEASE_DURATION: Duration = Duration::seconds(20);
const LEASE_POLL: std::time::Duration = std::time::Duration::from_millis(50);
const MAX_RETRIES: u32 = 2;
const RETRY_BASE_MS: u64 = 250;
/// After an `invalid_client`, refreshes fail fast for this long (no storm of
/// rejected calls against Amazon).
const CLIENT_REJECTED_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

/// A cached access token.
#[derive(Clone)]
pub struct CachedToken {
    pub access_token: SecretString,
    pub expires_at: OffsetDateTime,
}

/// What the broker knows about one connection.
#[derive(Clone)]
pub struct Snapshot {
    pub tenant_id: Uuid,
    pub selling_partner_id: String,
    pub region: Region,
    pub status: String,
    pub status_reason: Option<String>,
    pub token: Option<CachedToken>,
    pub cooldown_until: Option<OffsetDateTime>,
    pub refresh_failures: i32,
    loaded_at: Instant,
}

struct Entry {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Single flight within this process.
    refresh: tokio::sync::Mutex<()>,
}

/// A token handed to a caller.
pub struct IssuedToken {
    pub access_token: SecretString,
    pub expires_at: OffsetDateTime,
    pub selling_partner_id: String,
    pub region: Region,
    /// Set when a refresh failed for a passing reason and a still-valid cached
    /// token is returned instead.
    pub refresh_error: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no such connection")]
    NotFound,
    #[error("the connection needs reauthorization")]
    Reauthorization {
        status: String,
        status_reason: Option<String>,
    },
    #[error("rate limited")]
    RateLimited {
        retry_after_seconds: u64,
        detail: &'static str,
    },
    #[error("Amazon rejected the app's client credentials")]
    AppCredentialsRejected,
    #[error("Amazon's token endpoint is unavailable")]
    AmazonUnavailable { retry_after_seconds: u64 },
    #[error(transparent)]
    Internal(#[from] Error),
}

impl From<sqlx::Error> for TokenError {
    fn from(e: sqlx::Error) -> Self {
        TokenError::Internal(e.into())
    }
}

/// What the app's own credentials have been doing (for ops).
#[derive(Debug, Clone, Default)]
pub struct AppCredentialState {
    pub last_ok_at: Option<OffsetDateTime>,
    pub last_ok_secret_index: Option<usize>,
    pub last_rejected_at: Option<OffsetDateTime>,
    rejected_hold_until: Option<Instant>,
}

pub struct TokenBroker {
    /// This instance's identity as a lease owner.
    instance_id: Uuid,
    entries: RwLock<HashMap<Uuid, Arc<Entry>>>,
    breaker: CircuitBreaker,
    app_credentials: Mutex<AppCredentialState>,
    usage: Mutex<HashMap<(Uuid, Uuid), u64>>,
    /// Grantless tokens by scope; the lock makes their refresh single-flight.
    grantless: tokio::sync::Mutex<HashMap<String, CachedToken>>,
}

impl Default for TokenBroker {
    fn default() -> Self {
        TokenBroker {
            instance_id: Uuid::new_v4(),
            entries: RwLock::new(HashMap::new()),
            breaker: CircuitBreaker::default(),
            app_credentials: Mutex::new(AppCredentialState::default()),
            usage: Mutex::new(HashMap::new()),
            grantless: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

fn seal_context<'a>(purpose: Purpose, tenant: &'a str, row: &'a str) -> SealContext<'a> {
    SealContext {
        purpose,
        tenant,
        row,
    }
}

fn remaining(token: &CachedToken, now: OffsetDateTime) -> Duration {
    token.expires_at - now
}

/// A token good for the caller, if `token` is one: unexpired and with at least
/// `min_ttl` left.
fn good_enough(
    token: Option<&CachedToken>,
    now: OffsetDateTime,
    min_ttl: Duration,
) -> Option<CachedToken> {
    token
        .filter(|t| remaining(t, now) >= min_ttl && remaining(t, now) > Duration::ZERO)
        .cloned()
}

impl TokenBroker {
    pub fn forget(&self, connection_id: Uuid) {
        if let Ok(mut map) = self.entries.write() {
            map.remove(&connection_id);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut map) = self.entries.write() {
            map.clear();
        }
    }

    pub fn app_credentials(&self) -> AppCredentialState {
        self.app_credentials
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Counts taken since the last call (key id, connection id) → tokens issued.
    pub fn take_usage(&self) -> HashMap<(Uuid, Uuid), u64> {
        self.usage
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default()
    }

    fn count_use(&self, key_id: Uuid, connection_id: Uuid) {
        if let Ok(mut usage) = self.usage.lock() {
            *usage.entry((key_id, connection_id)).or_insert(0) += 1;
        }
    }

    fn cached_entry(&self, connection_id: Uuid) -> Option<Arc<Entry>> {
        self.entries.read().ok()?.get(&connection_id).cloned()
    }

    /// Reads the connection's row into a fresh snapshot (opening its sealed token).
    async fn load_snapshot(
        &self,
        state: &AppState,
        connection_id: Uuid,
    ) -> Result<Option<Snapshot>, Error> {
        let Some(row) = connections::find_token_state(&state.db, connection_id).await? else {
            return Ok(None);
        };
        Ok(Some(snapshot_from_row(state, connection_id, row)?))
    }

    /// The entry for a connection, loading (or re-reading) it when needed.
    async fn entry(
        &self,
        state: &AppState,
        connection_id: Uuid,
    ) -> Result<Option<Arc<Entry>>, Error> {
        if let Some(entry) = self.cached_entry(connection_id) {
            let fresh = entry
                .snapshot
                .read()
                .map(|s| s.loaded_at.elapsed() < RECHECK_AFTER)
                .unwrap_or(false);
            if fresh {
                return Ok(Some(entry));
            }
            let Some(snapshot) = self.load_snapshot(state, connection_id).await? else {
                self.forget(connection_id);
                return Ok(None);
            };
            store_snapshot(&entry, snapshot);
            return Ok(Some(entry));
        }
        let Some(snapshot) = self.load_snapshot(state, connection_id).await? else {
            return Ok(None);
        };
        let entry = Arc::new(Entry {
            snapshot: RwLock::new(Arc::new(snapshot)),
            refresh: tokio::sync::Mutex::new(()),
        });
        let mut map = self.entries.write().map_err(|_| Error::Poisoned)?;
        Ok(Some(map.entry(connection_id).or_insert(entry).clone()))
    }

    /// `POST /v1/connections/{id}/access-token`.
    pub async fn access_token(
        &self,
        state: &AppState,
        caller: &ApiPrincipal,
        connection_id: Uuid,
        min_ttl: Duration,
        force_refresh: bool,
    ) -> Result<IssuedToken, TokenError> {
        let entry = self
            .entry(state, connection_id)
            .await?
            .ok_or(TokenError::NotFound)?;
        let snapshot = read_snapshot(&entry)?;
        if !caller.can_see_tenant(snapshot.tenant_id) {
            return Err(TokenError::NotFound);
        }
        if snapshot.status != "active" {
            return Err(TokenError::Reauthorization {
                status: snapshot.status.clone(),
                status_reason: snapshot.status_reason.clone(),
            });
        }
        let now = state.now();
        if !force_refresh {
            if let Some(token) = good_enough(snapshot.token.as_ref(), now, min_ttl) {
                self.count_use(caller.key_id, connection_id);
                crate::metrics::token_issued("cache");
                return Ok(issued(&snapshot, token, None));
            }
        } else if let Err(retry) =
            connections::claim_force_refresh(&state.db, connection_id, now, FORCE_REFRESH_WINDOW)
                .await?
        {
            return Err(TokenError::RateLimited {
                retry_after_seconds: retry as u64,
                detail: "force_refresh was already used for this connection in the last 30 seconds",
            });
        }
        let seen = snapshot.token.as_ref().map(|t| t.expires_at);
        let result = self
            .refresh(
                state,
                caller,
                connection_id,
                &entry,
                seen,
                min_ttl,
                force_refresh,
            )
            .await;
        if let Ok(token) = &result {
            self.count_use(caller.key_id, connection_id);
            crate::metrics::token_issued(if token.refresh_error.is_some() {
                "fallback"
            } else {
                "refreshed"
            });
        }
        result
    }

    /// The slow path: one refresh per connection, however many callers wait.
    #[allow(clippy::too_many_arguments)]
    async fn refresh(
        &self,
        state: &AppState,
        caller: &ApiPrincipal,
        connection_id: Uuid,
        entry: &Arc<Entry>,
        seen_expires_at: Option<OffsetDateTime>,
        min_ttl: Duration,
        force_refresh: bool,
    ) -> Result<IssuedToken, TokenError> {
        let _single_flight = entry.refresh.lock().await;
        // Most waiters find the token the caller before them just obtained.
        let current = read_snapshot(entry)?;
        if let Some(token) = current.token.as_ref() {
            if Some(token.expires_at) != seen_expires_at
                && remaining(token, state.now()) > Duration::ZERO
            {
                return Ok(issued(&current, token.clone(), None));
            }
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(25);
        loop {
            // Another caller here, or another instance, may have refreshed meanwhile.
            let snapshot = match self.load_snapshot(state, connection_id).await? {
                Some(s) => s,
                None => {
                    self.forget(connection_id);
                    return Err(TokenError::NotFound);
                }
            };
            store_snapshot(entry, snapshot.clone());
            if snapshot.status != "active" {
                return Err(TokenError::Reauthorization {
                    status: snapshot.status,
                    status_reason: snapshot.status_reason,
                });
            }
            let now = state.now();
            if let Some(token) = snapshot.token.as_ref() {
                let is_newer = Some(token.expires_at) != seen_expires_at;
                if is_newer && remaining(token, now) > Duration::ZERO {
                    return Ok(issued(&snapshot, token.clone(), None));
                }
                if !force_refresh {
                    if let Some(token) = good_enough(Some(token), now, min_ttl) {
                        return Ok(issued(&snapshot, token, None));
                    }
                }
            }
            // The token we may fall back on if Amazon fails: never the one a
            // caller reported rejected (force_refresh discards it).
            let fallback = if force_refresh {
                None
            } else {
                snapshot.token.clone()
            };

            if let Some(until) = snapshot.cooldown_until.filter(|u| *u > now) {
                return fall_back(
                    &snapshot,
                    fallback,
                    now,
                    (until - now).whole_seconds().max(1) as u64,
                );
            }
            let Some(refresh_sealed) = connections::claim_refresh_lease(
                &state.db,
                connection_id,
                self.instance_id,
                now,
                now + LEASE_DURATION,
                snapshot.token.as_ref().map(|t| t.expires_at),
            )
            .await?
            else {
                if Instant::now() >= deadline {
                    return fall_back(&snapshot, fallback, now, 5);
                }
                tokio::time::sleep(LEASE_POLL).await;
                continue;
            };
            return self
                .refresh_with_lease(
                    state,
                    caller,
                    connection_id,
                    entry,
                    &snapshot,
                    refresh_sealed,
                    fallback,
                )
                .await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn refresh_with_lease(
        &self,
        state: &AppState,
        caller: &ApiPrincipal,
        connection_id: Uuid,
        entry: &Arc<Entry>,
        snapshot: &Snapshot,
        refresh_sealed: Option<Vec<u8>>,
        fallback: Option<CachedToken>,
    ) -> Result<IssuedToken, TokenError> {
        let owner = self.instance_id;
        let release = || connections::release_refresh_lease(&state.db, connection_id, owner);
        let now = state.now();
        let tenant = snapshot.tenant_id.to_string();
        let row = connection_id.to_string();

        let Some(refresh_sealed) = refresh_sealed else {
            release().await?;
            return Err(TokenError::Reauthorization {
                status: "needs_reauth".into(),
                status_reason: Some("no refresh token is stored".into()),
            });
        };
        let refresh_token = state
            .keys
            .open_str(
                seal_context(Purpose::RefreshToken, &tenant, &row),
                &refresh_sealed,
            )
            .map_err(Error::from)?;

        if self.client_rejected_recently() {
            release().await?;
            return Err(TokenError::AppCredentialsRejected);
        }
        if let Some(retry_after) = self.breaker.open_for() {
            release().await?;
            return fall_back(snapshot, fallback, now, retry_after.as_secs().max(1));
        }
        if let Err(retry) = caller.spend_amazon_call() {
            release().await?;
            return Err(TokenError::RateLimited {
                retry_after_seconds: retry.as_secs().max(1),
                detail: "this API key's budget of calls to Amazon is spent",
            });
        }

        let started = Instant::now();
        let result = self.call_lwa_with_retries(state, &refresh_token).await;
        let latency_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
        let now = state.now();

        match result {
            Ok(tokens) => {
                self.breaker.record_success();
                self.note_app_credentials_ok(now, tokens.secret_index);
                let expires_at = now + Duration::seconds(tokens.expires_in);
                let access_sealed = state.keys.seal_str(
                    seal_context(Purpose::AccessToken, &tenant, &row),
                    &tokens.access_token,
                );
                // Amazon does not rotate refresh tokens, but store a new one if it comes.
                let new_refresh_sealed = tokens
                    .refresh_token
                    .as_ref()
                    .filter(|t| t.expose_secret() != refresh_token.expose_secret())
                    .map(|t| {
                        state
                            .keys
                            .seal_str(seal_context(Purpose::RefreshToken, &tenant, &row), t)
                    });
                let stored = connections::store_refreshed(
                    &state.db,
                    connections::Refreshed {
                        id: connection_id,
                        owner,
                        access_token_sealed: &access_sealed,
                        access_token_expires_at: expires_at,
                        refresh_token_sealed: new_refresh_sealed.as_deref(),
                        now,
                    },
                )
                .await?;
                record_event(state, connection_id, now, "ok", latency_ms).await;
                if !stored {
                    // Disconnected meanwhile, or our lease expired: re-read before answering.
                    if let Some(s) = self.load_snapshot(state, connection_id).await? {
                        if s.status != "active" {
                            store_snapshot(entry, s.clone());
                            return Err(TokenError::Reauthorization {
                                status: s.status,
                                status_reason: s.status_reason,
                            });
                        }
                    }
                }
                let token = CachedToken {
                    access_token: tokens.access_token,
                    expires_at,
                };
                let mut fresh = snapshot.clone();
                fresh.token = Some(token.clone());
                fresh.cooldown_until = None;
                fresh.refresh_failures = 0;
                fresh.loaded_at = Instant::now();
                store_snapshot(entry, fresh.clone());
                let _ = connections::notify_changed(&state.db, connection_id).await;
                tracing::info!(connection = %connection_id, latency_ms, "access token refreshed");
                Ok(issued(&fresh, token, None))
            }
            Err(LwaError::InvalidGrant { .. }) => {
                self.breaker.record_success();
                let reason = "Amazon refused the refresh token (invalid_grant): the seller revoked the app's authorization or it expired";
                let mut tx = state.db.begin().await?;
                let changed = connections::mark_needs_reauth(
                    &mut *tx,
                    connection_id,
                    "revoked_or_expired",
                    reason,
                    now,
                )
                .await?;
                if changed {
                    audit::record(
                        &mut *tx,
                        now,
                        "system:token-refresh",
                        "connection.needs_reauth",
                        AuditTarget { tenant_id: Some(snapshot.tenant_id), connection_id: Some(connection_id) },
                        serde_json::json!({"reason": "invalid_grant", "requested_by": caller.actor()}),
                    )
                    .await?;
                    connections::notify_changed(&mut *tx, connection_id).await?;
                }
                tx.commit().await?;
                record_event(state, connection_id, now, "invalid_grant", latency_ms).await;
                self.forget(connection_id);
                tracing::warn!(connection = %connection_id, "refresh token refused (invalid_grant): connection needs reauthorization");
                Err(TokenError::Reauthorization {
                    status: "needs_reauth".into(),
                    status_reason: Some("revoked_or_expired".into()),
                })
            }
            Err(LwaError::ClientRejected { .. } | LwaError::Refused { .. }) => {
                self.breaker.record_success();
                self.note_app_credentials_rejected(now);
                // The app's credentials are at fault, never the seller: the
                // connection row keeps its status and shows no error.
                release().await?;
                record_event(
                    state,
                    connection_id,
                    now,
                    "app_credentials_rejected",
                    latency_ms,
                )
                .await;
                tracing::error!(connection = %connection_id, "LWA rejected every configured client secret: app credentials need attention");
                Err(TokenError::AppCredentialsRejected)
            }
            Err(LwaError::Unavailable(reason)) => {
                let failures = snapshot.refresh_failures.max(0) as u32 + 1;
                let cooldown = Duration::seconds((5i64 << failures.min(4)).min(60));
                connections::record_refresh_failure(
                    &state.db,
                    connection_id,
                    owner,
                    "amazon_unavailable",
                    &format!(
                        "Amazon's token endpoint was unavailable ({})",
                        reason.as_str()
                    ),
                    Some(now + cooldown),
                    now,
                )
                .await?;
                record_event(state, connection_id, now, "amazon_unavailable", latency_ms).await;
                let mut cooled = snapshot.clone();
                cooled.cooldown_until = Some(now + cooldown);
                cooled.refresh_failures = failures as i32;
                cooled.loaded_at = Instant::now();
                store_snapshot(entry, cooled);
                tracing::warn!(connection = %connection_id, reason = reason.as_str(), "refresh failed for a passing reason");
                fall_back(snapshot, fallback, now, cooldown.whole_seconds() as u64)
            }
        }
    }

    /// Up to two retries with full jitter, for passing failures only.
    async fn call_lwa_with_retries(
        &self,
        state: &AppState,
        refresh_token: &SecretString,
    ) -> Result<crate::amazon::lwa::Tokens, LwaError> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let result = state
                .lwa
                .request(
                    &Grant::RefreshToken(refresh_token),
                    &state.config.lwa_client_secrets,
                )
                .await;
            crate::metrics::lwa_call(
                "refresh_token",
                outcome_label(&result),
                started.elapsed().as_secs_f64(),
            );
            match result {
                Err(e) if e.is_passing() => {
                    self.breaker.record_failure();
                    if attempt >= MAX_RETRIES || self.breaker.open_for().is_some() {
                        return Err(e);
                    }
                    attempt += 1;
                    let cap = RETRY_BASE_MS << attempt;
                    let wait = rand::thread_rng().gen_range(0..=cap);
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                other => return other,
            }
        }
    }

    /// A grantless (client credentials) token for `scope`, cached until a
    /// minute before it expires.
    pub async fn grantless_token(
        &self,
        state: &AppState,
        caller: &ApiPrincipal,
        scope: &str,
    ) -> Result<CachedToken, TokenError> {
        let mut cache = self.grantless.lock().await;
        let now = state.now();
        if let Some(token) = good_enough(cache.get(scope), now, MIN_FALLBACK_TTL) {
            return Ok(token);
        }
        if self.client_rejected_recently() {
            return Err(TokenError::AppCredentialsRejected);
        }
        if let Err(retry) = caller.spend_amazon_call() {
            return Err(TokenError::RateLimited {
                retry_after_seconds: retry.as_secs().max(1),
                detail: "this API key's budget of calls to Amazon is spent",
            });
        }
        match state
            .lwa
            .request(
                &Grant::ClientCredentials { scope },
                &state.config.lwa_client_secrets,
            )
            .await
        {
            Ok(tokens) => {
                self.note_app_credentials_ok(now, tokens.secret_index);
                let token = CachedToken {
                    access_token: tokens.access_token,
                    expires_at: now + Duration::seconds(tokens.expires_in),
                };
                cache.insert(scope.to_owned(), token.clone());
                Ok(token)
            }
            Err(LwaError::Unavailable(reason)) => {
                tracing::warn!(reason = reason.as_str(), "grantless token: LWA unavailable");
                Err(TokenError::AmazonUnavailable {
                    retry_after_seconds: 5,
                })
            }
            Err(e) => {
                self.note_app_credentials_rejected(now);
                tracing::error!(error = %e, "grantless token refused: app credentials need attention");
                Err(TokenError::AppCredentialsRejected)
            }
        }
    }

    fn client_rejected_recently(&self) -> bool {
        self.app_credentials
            .lock()
            .ok()
            .and_then(|s| s.rejected_hold_until)
            .is_some_and(|until| Instant::now() < until)
    }

    pub fn note_app_credentials_ok(&self, now: OffsetDateTime, secret_index: usize) {
        if let Ok(mut s) = self.app_credentials.lock() {
            s.last_ok_at = Some(now);
            s.last_ok_secret_index = Some(secret_index);
            s.rejected_hold_until = None;
        }
    }

    pub fn note_app_credentials_rejected(&self, now: OffsetDateTime) {
        if let Ok(mut s) = self.app_credentials.lock() {
            s.last_rejected_at = Some(now);
            s.rejected_hold_until = Some(Instant::now() + CLIENT_REJECTED_HOLD);
        }
    }
}

fn outcome_label<T>(result: &Result<T, LwaError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(LwaError::InvalidGrant { .. }) => "invalid_grant",
        Err(LwaError::ClientRejected { .. }) => "app_credentials_rejected",
        Err(LwaError::Refused { .. }) => "refused",
        Err(LwaError::Unavailable(_)) => "amazon_unavailable",
    }
}

fn read_snapshot(entry: &Entry) -> Result<Arc<Snapshot>, Error> {
    entry
        .snapshot
        .read()
        .map(|s| s.clone())
        .map_err(|_| Error::Poisoned)
}

fn store_snapshot(entry: &Entry, snapshot: Snapshot) {
    if let Ok(mut s) = entry.snapshot.write() {
        *s = Arc::new(snapshot);
    }
}

fn snapshot_from_row(
    state: &AppState,
    connection_id: Uuid,
    row: TokenStateRow,
) -> Result<Snapshot, Error> {
    let tenant = row.tenant_id.to_string();
    let id = connection_id.to_string();
    let token = match (&row.access_token_sealed, row.access_token_expires_at) {
        (Some(sealed), Some(expires_at)) => Some(CachedToken {
            access_token: state
                .keys
                .open_str(seal_context(Purpose::AccessToken, &tenant, &id), sealed)?,
            expires_at,
        }),
        _ => None,
    };
    Ok(Snapshot {
        tenant_id: row.tenant_id,
        selling_partner_id: row.selling_partner_id,
        region: row.region.parse().unwrap_or(Region::Na),
        status: row.status,
        status_reason: row.status_reason,
        token,
        cooldown_until: row.refresh_cooldown_until,
        refresh_failures: row.refresh_failures,
        loaded_at: Instant::now(),
    })
}

fn issued(
    snapshot: &Snapshot,
    token: CachedToken,
    refresh_error: Option<&'static str>,
) -> IssuedToken {
    IssuedToken {
        access_token: token.access_token,
        expires_at: token.expires_at,
        selling_partner_id: snapshot.selling_partner_id.clone(),
        region: snapshot.region,
        refresh_error,
    }
}

/// After a passing failure: the cached token if it still has a minute, else 503.
fn fall_back(
    snapshot: &Snapshot,
    fallback: Option<CachedToken>,
    now: OffsetDateTime,
    retry_after_seconds: u64,
) -> Result<IssuedToken, TokenError> {
    match good_enough(fallback.as_ref(), now, MIN_FALLBACK_TTL) {
        Some(token) => Ok(issued(snapshot, token, Some("amazon_unavailable"))),
        None => Err(TokenError::AmazonUnavailable {
            retry_after_seconds: retry_after_seconds.max(1),
        }),
    }
}

async fn record_event(
    state: &AppState,
    connection_id: Uuid,
    at: OffsetDateTime,
    outcome: &str,
    latency_ms: i32,
) {
    if let Err(e) =
        connections::insert_refresh_event(&state.db, connection_id, at, outcome, latency_ms).await
    {
        tracing::warn!(error = %e, "could not record refresh outcome");
    }
}
