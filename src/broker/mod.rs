//! The token broker: the product's hot path. Hands out LWA access tokens per
//! connection from memory (`cache.rs`), and when one will not do, refreshes
//! once per connection however many callers ask, in this process and across
//! instances (`refresh.rs`, `lease.rs`), settling Amazon's answer with
//! fenced writes (`outcome.rs`, `fuse.rs`). Calls to Amazon are retried and
//! watched by a breaker (`retry.rs`, `breaker.rs`) and gated by the app's
//! credentials (`app_credentials.rs`). Grantless tokens and Restricted Data
//! Tokens are in `grantless.rs` and `restricted.rs`.
//!
//! Before any query, a request that cannot lead to a call to Amazon now (the
//! breaker is open, the app's credentials are held rejected, the connection
//! is cooling down) is answered from memory: a token with a minute left, or
//! an error.
//!
//! Never hands out, logs or returns a refresh token; never returns an expired
//! access token. Built with exactly its handles; knows nothing of HTTP.

pub mod app_credentials;
mod breaker;
mod cache;
mod fuse;
mod grantless;
mod lease;
mod loader;
mod outcome;
mod refresh;
mod restricted;
mod retry;

pub use app_credentials::{AppCredentials, HoldState};
pub use cache::{CachedToken, UsageCounts};
pub use grantless::GrantlessToken;
pub use lease::LEASE;
pub use restricted::{RdtError, RestrictedDataToken};

use crate::amazon::lwa::LwaClient;
use crate::amazon::marketplaces::Region;
use crate::api_keys::ApiPrincipal;
use crate::clock::Clock;
use crate::crypto::{KeyRing, Purpose, SealContext};
use crate::db::connections;
use crate::domain::ConnectionStatus;
use crate::error::Error;
use breaker::CircuitBreaker;
use cache::{Cache, Entry, FastMap, Snapshot};
use compact_str::CompactString;
use refresh::{Outcome, Plan};
use sqlx::PgPool;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use tokio::sync::Notify;
use uuid::Uuid;

/// Below this, a cached token is not handed out when a refresh has failed.
pub const MIN_FALLBACK_TTL: Duration = Duration::seconds(60);
pub const FORCE_REFRESH_WINDOW: Duration = Duration::seconds(30);
/// How long a caller holding a token with [`MIN_FALLBACK_TTL`] left waits
/// for a refresh before it takes that token instead.
pub const FALLBACK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a still-valid cached token is handed out in place of a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshError {
    /// Amazon's token endpoint failed for a passing reason (or is slow).
    AmazonUnavailable,
    /// The app's client credentials are held rejected.
    AppCredentialsRejected,
}

impl RefreshError {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshError::AmazonUnavailable => "amazon_unavailable",
            RefreshError::AppCredentialsRejected => "app_credentials_rejected",
        }
    }
}

/// Where a handed-out token came from (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Cache,
    /// This request started the refresh that got it.
    Refreshed,
    /// This request waited for a refresh another request started.
    Joined,
    /// A still-valid cached token after a refresh failed or took too long.
    Fallback,
}

/// What the health sweep's refresh of one connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOutcome {
    /// Amazon accepted the authorization: a new access token is stored.
    Refreshed,
    /// Amazon said `invalid_grant`: the connection now needs the seller.
    NeedsReauth,
    /// A passing failure (or the app's credentials): tried again next pass.
    Failed,
    /// Nothing to do now: gone, no longer active, or cooling down.
    Skipped,
}

/// The sweep asks for a token this long-lived, which no cached or stored
/// token is: so its refresh always asks Amazon, which is the point.
const SWEEP_MIN_TTL: Duration = Duration::days(1);

/// A token handed to a caller, with the connection it belongs to; shares
/// the cached snapshot, so handing one out copies nothing.
pub struct IssuedToken {
    snapshot: Arc<Snapshot>,
    pub connection_id: Uuid,
    issued_at: OffsetDateTime,
    pub refresh_error: Option<RefreshError>,
    pub source: TokenSource,
}

impl IssuedToken {
    /// `snapshot` must hold a token (every constructor below checks).
    fn new(
        snapshot: Arc<Snapshot>,
        connection_id: Uuid,
        issued_at: OffsetDateTime,
        source: TokenSource,
        refresh_error: Option<RefreshError>,
    ) -> Option<Self> {
        snapshot.token.as_ref()?;
        Some(IssuedToken {
            snapshot,
            connection_id,
            issued_at,
            refresh_error,
            source,
        })
    }

    pub fn access_token(&self) -> &str {
        self.snapshot.token.as_ref().map_or("", CachedToken::expose)
    }

    pub fn expires_at(&self) -> OffsetDateTime {
        self.snapshot
            .token
            .as_ref()
            .map_or(self.issued_at, |t| t.expires_at)
    }

    /// The token's lifetime left, in whole seconds, when it was handed out.
    pub fn expires_in(&self) -> i64 {
        (self.expires_at() - self.issued_at).whole_seconds().max(0)
    }

    pub fn selling_partner_id(&self) -> &str {
        &self.snapshot.selling_partner_id
    }

    pub fn region(&self) -> Region {
        self.snapshot.region
    }

    /// An issued token with these values, for tests of what renders it.
    #[doc(hidden)]
    pub fn for_test(
        token: &str,
        selling_partner_id: &str,
        expires_at: OffsetDateTime,
        refresh_error: Option<RefreshError>,
    ) -> IssuedToken {
        IssuedToken {
            snapshot: Arc::new(Snapshot {
                tenant_id: Uuid::nil(),
                selling_partner_id: selling_partner_id.into(),
                region: Region::Eu,
                status: ConnectionStatus::Active,
                status_reason: None,
                grant_version: 1,
                token_generation: 1,
                token: Some(CachedToken {
                    secret: token.into(),
                    expires_at,
                    generation: 1,
                }),
                failing: None,
                loaded_at: 0,
            }),
            connection_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            issued_at: expires_at - Duration::seconds(1234),
            refresh_error,
            source: TokenSource::Cache,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no such connection")]
    NotFound,
    #[error("the connection needs reauthorization")]
    Reauthorization {
        status: ConnectionStatus,
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
    /// Amazon refused a grantless request (`invalid_scope`, …): that request only.
    #[error("Amazon refused the grant request ({error})")]
    GrantRefused { error: String },
    #[error(transparent)]
    Internal(#[from] Error),
}

impl TokenError {
    pub fn budget_spent(retry: std::time::Duration) -> Self {
        TokenError::RateLimited {
            retry_after_seconds: retry.as_secs().max(1),
            detail: "this API key's budget of calls to Amazon is spent",
        }
    }
}

impl From<sqlx::Error> for TokenError {
    fn from(e: sqlx::Error) -> Self {
        TokenError::Internal(e.into())
    }
}

/// What the broker is built with.
pub struct BrokerHandles {
    pub db: PgPool,
    pub keys: Arc<KeyRing>,
    pub lwa: LwaClient,
    pub clock: Arc<dyn Clock>,
    pub credentials: Arc<AppCredentials>,
}

pub struct TokenBroker {
    db: PgPool,
    keys: Arc<KeyRing>,
    lwa: LwaClient,
    clock: Arc<dyn Clock>,
    credentials: Arc<AppCredentials>,
    /// Names this broker in the notifications it sends, so it can skip its own.
    instance_id: Uuid,
    cache: Cache,
    rows: loader::RowLoader,
    breaker: CircuitBreaker,
    fuse: fuse::Fuse,
    grantless: grantless::Grantless,
    /// Refreshes waiting for another instance's lease, woken by its notification.
    lease_waiters: FastMap<Uuid, Arc<Notify>>,
}

fn seal_context<'a>(purpose: Purpose, tenant: &'a str, row: &'a str) -> SealContext<'a> {
    SealContext {
        purpose,
        tenant,
        row,
    }
}

impl TokenBroker {
    pub fn new(handles: BrokerHandles) -> Arc<Self> {
        Arc::new(TokenBroker {
            rows: loader::RowLoader::new(handles.db.clone()),
            db: handles.db,
            keys: handles.keys,
            lwa: handles.lwa,
            clock: handles.clock,
            credentials: handles.credentials,
            instance_id: Uuid::new_v4(),
            cache: Cache::default(),
            breaker: CircuitBreaker::default(),
            fuse: fuse::Fuse::default(),
            grantless: grantless::Grantless::default(),
            lease_waiters: FastMap::default(),
        })
    }

    pub fn instance_id(&self) -> Uuid {
        self.instance_id
    }

    pub fn credentials(&self) -> &Arc<AppCredentials> {
        &self.credentials
    }

    /// How many connections are cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Drops a connection's cached copy (it changed here).
    pub fn forget(&self, connection_id: Uuid) {
        self.cache.forget(connection_id);
    }

    /// Another instance (or a write outside the broker) changed the row.
    pub fn changed_elsewhere(&self, connection_id: Uuid) {
        self.cache.invalidate(connection_id);
        if let Some(waiters) = self.lease_waiters.get(&connection_id) {
            waiters.notify_waiters();
        }
    }

    /// Forgets everything (the notification channel was lost for a while).
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// The app-wide state changed: read it again.
    pub async fn app_state_changed(&self) -> Result<(), sqlx::Error> {
        self.credentials.reload().await?;
        let row = crate::db::app_state::find(&self.db).await?;
        self.fuse.set_known(row.fuse_tripped_at.is_some());
        Ok(())
    }

    /// Counts taken since the last call (key id, connection id) → tokens issued.
    pub fn take_usage(&self) -> UsageCounts {
        self.cache.take_usage()
    }

    pub fn restore_usage(&self, counts: UsageCounts) {
        self.cache.restore_usage(counts);
    }

    pub fn release_retired(&self) {
        self.cache.release_retired();
    }

    /// Whether calls to Amazon are held back now (the breaker is open, or the
    /// app's credentials are rejected): the sweep waits meanwhile.
    pub fn amazon_gated(&self) -> bool {
        self.breaker.open_for().is_some()
            || self
                .credentials
                .is_held()
                .is_some_and(|left| left > Duration::ZERO)
    }

    /// The health sweep's refresh of one connection (CONTRACT §5): the same
    /// single-flight, fenced refresh as the token API (joined if one is
    /// running), counted against no API key.
    pub async fn sweep_refresh(self: &Arc<Self>, connection_id: Uuid) -> SweepOutcome {
        let now = self.clock.now();
        let (entry, snapshot) = match self.entry(connection_id, now).await {
            Ok(found) => found,
            Err(TokenError::NotFound) => return SweepOutcome::Skipped,
            Err(e) => {
                tracing::warn!(connection = %connection_id, error = %e, "sweep could not read a connection");
                return SweepOutcome::Failed;
            }
        };
        if snapshot.status != ConnectionStatus::Active
            || snapshot.cooling_down_for(now).is_some()
            || self.amazon_gated()
        {
            return SweepOutcome::Skipped;
        }
        let plan = Plan {
            connection_id,
            seen_generation: snapshot
                .token
                .as_ref()
                .map_or(snapshot.token_generation, |t| t.generation),
            grant_version: snapshot.grant_version,
            min_ttl: SWEEP_MIN_TTL,
            force: false,
        };
        let (running, _) = refresh::join_or_start(self, &entry, plan);
        match &*refresh::outcome_of(running).await {
            Outcome::Token(_) => SweepOutcome::Refreshed,
            Outcome::Reauthorization {
                status: ConnectionStatus::NeedsReauth,
                ..
            } => SweepOutcome::NeedsReauth,
            Outcome::Reauthorization { .. } | Outcome::NotFound => SweepOutcome::Skipped,
            _ => SweepOutcome::Failed,
        }
    }

    /// An access token for a connection (`POST /v1/connections/{id}/access-token`
    /// and the LWA-compatible endpoint alike).
    pub async fn access_token(
        self: &Arc<Self>,
        caller: &ApiPrincipal,
        connection_id: Uuid,
        min_ttl: Duration,
        force_refresh: bool,
    ) -> Result<IssuedToken, TokenError> {
        let now = self.clock.now();
        let (entry, snapshot) = self.entry(connection_id, now).await?;
        if !caller.can_see_tenant(snapshot.tenant_id) {
            return Err(TokenError::NotFound);
        }
        if snapshot.status != ConnectionStatus::Active {
            return Err(TokenError::Reauthorization {
                status: snapshot.status,
                status_reason: snapshot.status_reason.as_deref().map(str::to_owned),
            });
        }
        if !force_refresh && snapshot.token_good_for(now, min_ttl).is_some() {
            entry.count_use(caller.key_id);
            return IssuedToken::new(snapshot, connection_id, now, TokenSource::Cache, None)
                .ok_or(TokenError::NotFound);
        }
        let issued = self
            .refreshed_token(
                caller,
                &entry,
                snapshot,
                connection_id,
                min_ttl,
                force_refresh,
            )
            .await?;
        entry.count_use(caller.key_id);
        Ok(issued)
    }

    /// The miss path: fail fast from memory, else join or start a refresh.
    async fn refreshed_token(
        self: &Arc<Self>,
        caller: &ApiPrincipal,
        entry: &Arc<Entry>,
        snapshot: Arc<Snapshot>,
        connection_id: Uuid,
        min_ttl: Duration,
        force_refresh: bool,
    ) -> Result<IssuedToken, TokenError> {
        let now = self.clock.now();
        // The token a failure may fall back on: never one a caller reported
        // rejected (force_refresh discards it).
        let fallback = (!force_refresh && snapshot.token_good_for(now, MIN_FALLBACK_TTL).is_some())
            .then(|| Arc::clone(&snapshot));
        let fall_back = |why: RefreshError, error: TokenError| match &fallback {
            Some(s) => IssuedToken::new(
                Arc::clone(s),
                connection_id,
                self.clock.now(),
                TokenSource::Fallback,
                Some(why),
            )
            .ok_or(error),
            None => Err(error),
        };

        if let Some(open_for) = self.breaker.open_for() {
            return fall_back(
                RefreshError::AmazonUnavailable,
                TokenError::AmazonUnavailable {
                    retry_after_seconds: open_for.as_secs().max(1),
                },
            );
        }
        if let Some(left) = self.credentials.is_held().filter(|l| *l > Duration::ZERO) {
            tracing::debug!(hold_left_s = left.whole_seconds(), "app credentials held");
            return fall_back(
                RefreshError::AppCredentialsRejected,
                TokenError::AppCredentialsRejected,
            );
        }
        if let Some(left) = snapshot.cooling_down_for(now) {
            return fall_back(
                RefreshError::AmazonUnavailable,
                TokenError::AmazonUnavailable {
                    retry_after_seconds: left.whole_seconds().max(1) as u64,
                },
            );
        }
        if force_refresh {
            if let connections::ForceRefresh::TooSoon {
                retry_after_seconds,
            } =
                connections::claim_force_refresh(&self.db, connection_id, now, FORCE_REFRESH_WINDOW)
                    .await?
            {
                return Err(TokenError::RateLimited {
                    retry_after_seconds,
                    detail:
                        "force_refresh was already used for this connection in the last 30 seconds",
                });
            }
        }
        if let Err(retry) = caller.spend_amazon_call() {
            return Err(TokenError::budget_spent(retry));
        }

        let seen_generation = snapshot
            .token
            .as_ref()
            .map_or(snapshot.token_generation, |t| t.generation);
        let plan = Plan {
            connection_id,
            seen_generation,
            grant_version: snapshot.grant_version,
            min_ttl,
            force: force_refresh,
        };
        let (running, started) = refresh::join_or_start(self, entry, plan);
        let outcome = match &fallback {
            Some(_) => {
                match tokio::time::timeout(FALLBACK_PATIENCE, refresh::outcome_of(running)).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        return fall_back(
                            RefreshError::AmazonUnavailable,
                            TokenError::AmazonUnavailable {
                                retry_after_seconds: 1,
                            },
                        )
                    }
                }
            }
            None => refresh::outcome_of(running).await,
        };
        let source = if started {
            TokenSource::Refreshed
        } else {
            TokenSource::Joined
        };
        match &*outcome {
            Outcome::Token(fresh) => {
                let now = self.clock.now();
                let usable = fresh.token.as_ref().is_some_and(|t| {
                    (t.generation != seen_generation || !force_refresh)
                        && t.is_good_for(now, Duration::ZERO)
                });
                if usable {
                    IssuedToken::new(Arc::clone(fresh), connection_id, now, source, None).ok_or(
                        TokenError::AmazonUnavailable {
                            retry_after_seconds: 1,
                        },
                    )
                } else {
                    fall_back(
                        RefreshError::AmazonUnavailable,
                        TokenError::AmazonUnavailable {
                            retry_after_seconds: 1,
                        },
                    )
                }
            }
            Outcome::Reauthorization { status, reason } => Err(TokenError::Reauthorization {
                status: *status,
                status_reason: reason.as_deref().map(str::to_owned),
            }),
            Outcome::NotFound => Err(TokenError::NotFound),
            Outcome::AppCredentialsRejected => fall_back(
                RefreshError::AppCredentialsRejected,
                TokenError::AppCredentialsRejected,
            ),
            Outcome::Unavailable {
                retry_after_seconds,
            } => fall_back(
                RefreshError::AmazonUnavailable,
                TokenError::AmazonUnavailable {
                    retry_after_seconds: *retry_after_seconds,
                },
            ),
            Outcome::Internal { incident } => Err(TokenError::Internal(Error::Refresh {
                incident: *incident,
            })),
        }
    }

    /// The cached entry, loading it (or reading it again) when needed.
    async fn entry(
        &self,
        connection_id: Uuid,
        now: OffsetDateTime,
    ) -> Result<(Arc<Entry>, Arc<Snapshot>), TokenError> {
        // The snapshot checked fresh here is the one the request goes on with:
        // the entry may be invalidated meanwhile (a notification, the
        // listener clearing the cache), and its next snapshot holds no token.
        if let Some(entry) = self.cache.get(connection_id) {
            let snapshot = entry.snapshot();
            if snapshot.is_fresh(now) {
                return Ok((entry, snapshot));
            }
            let Some((snapshot, _)) = self.load(connection_id).await? else {
                self.cache.forget(connection_id);
                return Err(TokenError::NotFound);
            };
            let snapshot = Arc::new(snapshot);
            entry.store(Arc::clone(&snapshot));
            return Ok((entry, snapshot));
        }
        let Some((snapshot, _)) = self.load(connection_id).await? else {
            return Err(TokenError::NotFound);
        };
        let entry = self.cache.insert(connection_id, Entry::new(snapshot));
        let snapshot = entry.snapshot();
        Ok((entry, snapshot))
    }

    /// Reads the connection's row into a fresh snapshot (opening its sealed
    /// token), with whether another claim holds its refresh lease.
    async fn load(&self, connection_id: Uuid) -> Result<Option<(Snapshot, bool)>, Error> {
        let Some(row) = self.rows.load(connection_id).await? else {
            return Ok(None);
        };
        let token = match (&row.access_token_sealed, row.access_token_expires_at) {
            (Some(sealed), Some(expires_at)) => {
                let tenant = row.tenant_id.to_string();
                let id = connection_id.to_string();
                Some(CachedToken {
                    secret: self
                        .keys
                        .open_str(seal_context(Purpose::AccessToken, &tenant, &id), sealed)?,
                    expires_at,
                    generation: row.token_generation,
                })
            }
            _ => None,
        };
        let lease_busy = row.lease_busy;
        Ok(Some((
            Snapshot {
                tenant_id: row.tenant_id,
                selling_partner_id: CompactString::new(&row.selling_partner_id),
                region: row.region,
                status: row.status,
                status_reason: row.status_reason.map(String::into_boxed_str),
                grant_version: row.grant_version,
                token_generation: row.token_generation,
                token,
                failing: cache::Failing::from_row(row.refresh_failures, row.refresh_cooldown_until),
                loaded_at: self.clock.now().unix_timestamp(),
            },
            lease_busy,
        )))
    }

    /// Whether a call to Amazon may go out now: `Ok(probe guard)` or the
    /// outcome that answers instead.
    async fn gate_calls(
        &self,
    ) -> Result<Result<Option<app_credentials::ProbeGuard>, Outcome>, Error> {
        if let Some(open_for) = self.breaker.open_for() {
            return Ok(Err(Outcome::Unavailable {
                retry_after_seconds: open_for.as_secs().max(1),
            }));
        }
        Ok(match self.credentials.gate().await? {
            app_credentials::Gate::Open => Ok(None),
            app_credentials::Gate::Probe(probe) => Ok(Some(probe)),
            app_credentials::Gate::Held { .. } => Err(Outcome::AppCredentialsRejected),
        })
    }

    /// Waits until another instance's notification about this connection, or `at_most`.
    async fn wait_for_lease(&self, connection_id: Uuid, at_most: std::time::Duration) {
        let waiters = Arc::clone(
            self.lease_waiters
                .entry(connection_id)
                .or_insert_with(|| Arc::new(Notify::new()))
                .value(),
        );
        let _ = tokio::time::timeout(at_most, waiters.notified()).await;
        // The map's copy and ours: nobody else waits.
        self.lease_waiters
            .remove_if(&connection_id, |_, w| Arc::strong_count(w) <= 2);
    }

    async fn tell_others(&self, connection_id: Uuid) {
        outcome::tell(self, connection_id).await;
    }
}
