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
use crate::metrics::TokenSource;
use breaker::CircuitBreaker;
use dashmap::DashMap;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// Below this, a cached token is not handed out when a refresh has failed.
pub const MIN_FALLBACK_TTL: Duration = Duration::seconds(60);
pub const FORCE_REFRESH_WINDOW: Duration = Duration::seconds(30);
/// Re-read a cached connection's row after this long (seconds of the app's
/// clock, either way) even without a notification.
const RECHECK_AFTER_SECONDS: u64 = 30;
/// Longer than the worst refresh (3 attempts of 5 s plus backoff).
const LEASE_DURATION: Duration = Duration::seconds(20);
const LEASE_POLL: std::time::Duration = std::time::Duration::from_millis(50);
const MAX_RETRIES: u32 = 2;
const RETRY_BASE_MS: u64 = 250;
/// After an `invalid_client`, refreshes fail fast for this long (no storm of
/// rejected calls against Amazon).
const CLIENT_REJECTED_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

/// Maps read on every request: sharded, so the two cores rarely meet on one
/// lock, and hashed with foldhash (seeded per process), which is several times
/// cheaper than SipHash for a 16-byte id.
type FastMap<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

/// A cached access token. Shared (`Arc`), never copied, on the hot path.
pub struct CachedToken {
    pub access_token: SecretString,
    pub expires_at: OffsetDateTime,
    /// The part of the API's answer that is the same every time this token is
    /// handed out, rendered by the API layer the first time (see
    /// [`IssuedToken::answer_prefix`]): encoding a ~400-byte token on every
    /// cache hit was most of the answer's cost.
    answer_prefix: OnceLock<Box<[u8]>>,
}

impl CachedToken {
    pub fn new(access_token: SecretString, expires_at: OffsetDateTime) -> Self {
        CachedToken {
            access_token,
            expires_at,
            answer_prefix: OnceLock::new(),
        }
    }
}

/// What the broker knows about one connection.
#[derive(Clone)]
pub struct Snapshot {
    pub tenant_id: Uuid,
    pub selling_partner_id: String,
    pub region: Region,
    pub status: String,
    /// `status == "active"`, kept apart so a cache hit does not read the string.
    pub active: bool,
    pub status_reason: Option<String>,
    pub token: Option<Arc<CachedToken>>,
    pub cooldown_until: Option<OffsetDateTime>,
    pub refresh_failures: i32,
    /// When the row was read, in Unix seconds of the app's clock.
    loaded_at: i64,
}

struct Entry {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Single flight within this process.
    refresh: tokio::sync::Mutex<()>,
    /// Tokens issued from this entry since the last flush, per API key id.
    /// Kept here, not in a map of its own, so counting a cache hit touches
    /// only memory the hit has just read.
    usage: Mutex<Usage>,
}

/// Counts per API key; the first key inline (most connections are used by
/// one service), more in a list.
#[derive(Default)]
struct Usage {
    first: Option<(Uuid, u64)>,
    more: Vec<(Uuid, u64)>,
}

impl Usage {
    fn count(&mut self, key_id: Uuid) {
        match &mut self.first {
            Some((key, issued)) if *key == key_id => *issued += 1,
            None => self.first = Some((key_id, 1)),
            Some(_) => match self.more.iter_mut().find(|(key, _)| *key == key_id) {
                Some((_, issued)) => *issued += 1,
                None => self.more.push((key_id, 1)),
            },
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = (Uuid, u64)> + '_ {
        self.first.take().into_iter().chain(self.more.drain(..))
    }
}

impl Entry {
    fn new(snapshot: Snapshot) -> Self {
        Entry {
            snapshot: RwLock::new(Arc::new(snapshot)),
            refresh: tokio::sync::Mutex::new(()),
            usage: Mutex::new(Usage::default()),
        }
    }

    fn count_use(&self, key_id: Uuid) {
        if let Ok(mut usage) = self.usage.lock() {
            usage.count(key_id);
        }
    }

    /// Moves this entry's counts into `into`, keyed by (key id, connection id).
    fn take_usage(&self, connection_id: Uuid, into: &mut HashMap<(Uuid, Uuid), u64>) {
        let Ok(mut usage) = self.usage.lock() else {
            return;
        };
        for (key_id, issued) in usage.drain() {
            *into.entry((key_id, connection_id)).or_insert(0) += issued;
        }
    }
}

/// A token handed to a caller, with the connection it belongs to. Both are
/// shared with the cache, so handing one out copies nothing.
pub struct IssuedToken {
    token: Arc<CachedToken>,
    connection: Arc<Snapshot>,
    issued_at: OffsetDateTime,
    /// Set when a refresh failed for a passing reason and a still-valid cached
    /// token is returned instead.
    pub refresh_error: Option<&'static str>,
}

impl IssuedToken {
    pub fn access_token(&self) -> &SecretString {
        &self.token.access_token
    }

    /// The constant part of an answer with this token: `render`ed once per
    /// token, then shared by every answer. `render` may only use this token
    /// and its connection (they never change for a cached token).
    pub fn answer_prefix<E>(
        &self,
        render: impl FnOnce(&Self) -> Result<Box<[u8]>, E>,
    ) -> Result<&[u8], E> {
        if let Some(prefix) = self.token.answer_prefix.get() {
            return Ok(prefix);
        }
        let rendered = render(self)?;
        Ok(self.token.answer_prefix.get_or_init(|| rendered))
    }

    pub fn expires_at(&self) -> OffsetDateTime {
        self.token.expires_at
    }

    /// The token's lifetime left, in whole seconds, when it was handed out.
    pub fn expires_in(&self) -> i64 {
        (self.token.expires_at - self.issued_at)
            .whole_seconds()
            .max(0)
    }

    pub fn selling_partner_id(&self) -> &str {
        &self.connection.selling_partner_id
    }

    pub fn region(&self) -> Region {
        self.connection.region
    }
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
    entries: FastMap<Uuid, Arc<Entry>>,
    breaker: CircuitBreaker,
    app_credentials: Mutex<AppCredentialState>,
    retired: Mutex<Retired>,
    /// Grantless tokens by scope; the lock makes their refresh single-flight.
    grantless: tokio::sync::Mutex<HashMap<String, Arc<CachedToken>>>,
}

impl Default for TokenBroker {
    fn default() -> Self {
        TokenBroker {
            instance_id: Uuid::new_v4(),
            entries: FastMap::default(),
            breaker: CircuitBreaker::default(),
            app_credentials: Mutex::new(AppCredentialState::default()),
            retired: Mutex::new(Retired::default()),
            grantless: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

/// What is left of entries dropped from the cache.
#[derive(Default)]
struct Retired {
    /// Dropped entries a request may still hold, and count a token on.
    entries: Vec<(Uuid, Arc<Entry>)>,
    /// Counts of dropped entries, for the next flush.
    counts: HashMap<(Uuid, Uuid), u64>,
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
    token: Option<&Arc<CachedToken>>,
    now: OffsetDateTime,
    min_ttl: Duration,
) -> Option<&Arc<CachedToken>> {
    token.filter(|t| {
        let left = remaining(t, now);
        left >= min_ttl && left > Duration::ZERO
    })
}

impl TokenBroker {
    pub fn forget(&self, connection_id: Uuid) {
        if let Some(removed) = self.entries.remove(&connection_id) {
            if let Ok(mut retired) = self.retired.lock() {
                retired.entries.push(removed);
            }
        }
    }

    pub fn clear(&self) {
        let ids: Vec<Uuid> = self.entries.iter().map(|e| *e.key()).collect();
        for id in ids {
            self.forget(id);
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
        self.release_retired();
        let mut taken = self
            .retired
            .lock()
            .map(|mut retired| std::mem::take(&mut retired.counts))
            .unwrap_or_default();
        for entry in self.entries.iter() {
            entry.value().take_usage(*entry.key(), &mut taken);
        }
        taken
    }

    /// Lets go of dropped entries that no request holds any more (none can
    /// reach them again: they are out of the map), keeping their counts for
    /// the next flush. Run every few seconds, so that a disconnected
    /// connection's token does not stay in memory until the next flush.
    pub fn release_retired(&self) {
        let Ok(mut retired) = self.retired.lock() else {
            return;
        };
        let Retired { entries, counts } = &mut *retired;
        entries.retain(|(id, entry)| {
            // Checked before draining: a count made meanwhile is drained now
            // or next time.
            let still_held = Arc::strong_count(entry) > 1;
            entry.take_usage(*id, counts);
            still_held
        });
    }

    fn cached_entry(&self, connection_id: Uuid) -> Option<Arc<Entry>> {
        self.entries
            .get(&connection_id)
            .map(|e| Arc::clone(e.value()))
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
        now: OffsetDateTime,
    ) -> Result<Option<Arc<Entry>>, Error> {
        if let Some(entry) = self.cached_entry(connection_id) {
            let now = now.unix_timestamp();
            let fresh = entry
                .snapshot
                .read()
                .map(|s| s.loaded_at.abs_diff(now) < RECHECK_AFTER_SECONDS)
                .unwrap_or(false);
            if fresh {
                return Ok(Some(entry));
            }
            let Some(snapshot) = self.load_snapshot(state, connection_id).await? else {
                self.forget(connection_id);
                return Ok(None);
            };
            store_snapshot(&entry, Arc::new(snapshot));
            return Ok(Some(entry));
        }
        let Some(snapshot) = self.load_snapshot(state, connection_id).await? else {
            return Ok(None);
        };
        let entry = Arc::new(Entry::new(snapshot));
        Ok(Some(Arc::clone(
            self.entries.entry(connection_id).or_insert(entry).value(),
        )))
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
        let now = state.now();
        let entry = self
            .entry(state, connection_id, now)
            .await?
            .ok_or(TokenError::NotFound)?;
        let snapshot = read_snapshot(&entry)?;
        if !caller.can_see_tenant(snapshot.tenant_id) {
            return Err(TokenError::NotFound);
        }
        if !snapshot.active {
            return Err(TokenError::Reauthorization {
                status: snapshot.status.clone(),
                status_reason: snapshot.status_reason.clone(),
            });
        }
        if !force_refresh {
            if let Some(token) = good_enough(snapshot.token.as_ref(), now, min_ttl) {
                entry.count_use(caller.key_id);
                crate::metrics::token_issued(TokenSource::Cache);
                return Ok(issued(&snapshot, token, None, now));
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
            entry.count_use(caller.key_id);
            crate::metrics::token_issued(if token.refresh_error.is_some() {
                TokenSource::Fallback
            } else {
                TokenSource::Refreshed
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
            let now = state.now();
            if Some(token.expires_at) != seen_expires_at && remaining(token, now) > Duration::ZERO {
                return Ok(issued(&current, token, None, now));
            }
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(25);
        loop {
            // Another caller here, or another instance, may have refreshed meanwhile.
            let snapshot = match self.load_snapshot(state, connection_id).await? {
                Some(s) => Arc::new(s),
                None => {
                    self.forget(connection_id);
                    return Err(TokenError::NotFound);
                }
            };
            store_snapshot(entry, Arc::clone(&snapshot));
            if !snapshot.active {
                return Err(TokenError::Reauthorization {
                    status: snapshot.status.clone(),
                    status_reason: snapshot.status_reason.clone(),
                });
            }
            let now = state.now();
            if let Some(token) = snapshot.token.as_ref() {
                let is_newer = Some(token.expires_at) != seen_expires_at;
                if is_newer && remaining(token, now) > Duration::ZERO {
                    return Ok(issued(&snapshot, token, None, now));
                }
                if !force_refresh {
                    if let Some(token) = good_enough(Some(token), now, min_ttl) {
                        return Ok(issued(&snapshot, token, None, now));
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
        snapshot: &Arc<Snapshot>,
        refresh_sealed: Option<Vec<u8>>,
        fallback: Option<Arc<CachedToken>>,
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
                        if !s.active {
                            let error = TokenError::Reauthorization {
                                status: s.status.clone(),
                                status_reason: s.status_reason.clone(),
                            };
                            store_snapshot(entry, Arc::new(s));
                            return Err(error);
                        }
                    }
                }
                let token = Arc::new(CachedToken::new(tokens.access_token, expires_at));
                let fresh = Arc::new(Snapshot {
                    token: Some(Arc::clone(&token)),
                    cooldown_until: None,
                    refresh_failures: 0,
                    loaded_at: now.unix_timestamp(),
                    ..Snapshot::clone(snapshot)
                });
                store_snapshot(entry, Arc::clone(&fresh));
                let _ = connections::notify_changed(&state.db, connection_id).await;
                tracing::info!(connection = %connection_id, latency_ms, "access token refreshed");
                Ok(issued(&fresh, &token, None, now))
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
                let cooled = Snapshot {
                    cooldown_until: Some(now + cooldown),
                    refresh_failures: failures as i32,
                    loaded_at: now.unix_timestamp(),
                    ..Snapshot::clone(snapshot)
                };
                store_snapshot(entry, Arc::new(cooled));
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
    ) -> Result<Arc<CachedToken>, TokenError> {
        let mut cache = self.grantless.lock().await;
        let now = state.now();
        if let Some(token) = good_enough(cache.get(scope), now, MIN_FALLBACK_TTL) {
            return Ok(Arc::clone(token));
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
                let token = Arc::new(CachedToken::new(
                    tokens.access_token,
                    now + Duration::seconds(tokens.expires_in),
                ));
                cache.insert(scope.to_owned(), Arc::clone(&token));
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

fn store_snapshot(entry: &Entry, snapshot: Arc<Snapshot>) {
    if let Ok(mut s) = entry.snapshot.write() {
        *s = snapshot;
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
        (Some(sealed), Some(expires_at)) => Some(Arc::new(CachedToken::new(
            state
                .keys
                .open_str(seal_context(Purpose::AccessToken, &tenant, &id), sealed)?,
            expires_at,
        ))),
        _ => None,
    };
    Ok(Snapshot {
        tenant_id: row.tenant_id,
        selling_partner_id: row.selling_partner_id,
        region: row.region.parse().unwrap_or(Region::Na),
        active: row.status == "active",
        status: row.status,
        status_reason: row.status_reason,
        token,
        cooldown_until: row.refresh_cooldown_until,
        refresh_failures: row.refresh_failures,
        loaded_at: state.now().unix_timestamp(),
    })
}

fn issued(
    snapshot: &Arc<Snapshot>,
    token: &Arc<CachedToken>,
    refresh_error: Option<&'static str>,
    at: OffsetDateTime,
) -> IssuedToken {
    IssuedToken {
        token: Arc::clone(token),
        connection: Arc::clone(snapshot),
        issued_at: at,
        refresh_error,
    }
}

/// After a passing failure: the cached token if it still has a minute, else 503.
fn fall_back(
    snapshot: &Arc<Snapshot>,
    fallback: Option<Arc<CachedToken>>,
    now: OffsetDateTime,
    retry_after_seconds: u64,
) -> Result<IssuedToken, TokenError> {
    match good_enough(fallback.as_ref(), now, MIN_FALLBACK_TTL) {
        Some(token) => Ok(issued(snapshot, token, Some("amazon_unavailable"), now)),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn active_snapshot() -> Snapshot {
        Snapshot {
            tenant_id: Uuid::from_u128(1),
            selling_partner_id: "A1SELLER".into(),
            region: Region::Na,
            status: "active".into(),
            active: true,
            status_reason: None,
            token: None,
            cooldown_until: None,
            refresh_failures: 0,
            loaded_at: 0,
        }
    }

    #[test]
    fn a_dropped_entry_keeps_its_counts_and_is_let_go_once_nobody_holds_it() {
        let broker = TokenBroker::default();
        let (connection, key) = (Uuid::from_u128(7), Uuid::from_u128(8));
        let entry = Arc::new(Entry::new(active_snapshot()));
        broker.entries.insert(connection, Arc::clone(&entry));
        entry.count_use(key);
        // Dropped (a NOTIFY, say) while a request still holds the entry...
        broker.forget(connection);
        broker.release_retired();
        // ...which then hands out one more token.
        entry.count_use(key);
        assert_eq!(broker.retired.lock().unwrap().entries.len(), 1);
        drop(entry);
        broker.release_retired();
        assert!(broker.retired.lock().unwrap().entries.is_empty());
        assert_eq!(broker.take_usage(), HashMap::from([((key, connection), 2)]));
        assert!(broker.take_usage().is_empty());
    }

    #[test]
    fn usage_counts_each_key_and_drains_to_zero() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut usage = Usage::default();
        for key in [a, b, a, c, b, a] {
            usage.count(key);
        }
        let mut drained: Vec<_> = usage.drain().collect();
        drained.sort();
        assert_eq!(drained, vec![(a, 3), (b, 2), (c, 1)]);
        assert_eq!(usage.drain().count(), 0);
        usage.count(c);
        assert_eq!(usage.drain().collect::<Vec<_>>(), vec![(c, 1)]);
    }
}
