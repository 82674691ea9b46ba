//! API keys for internal services: `spb_{public id}_{secret}` with 256 random
//! bits of secret, stored as SHA-256 of the secret (a slow hash adds nothing
//! for a 256-bit random value), looked up by the public id and compared in
//! constant time.
//!
//! Verified keys are cached in memory so the token hot path needs no database
//! round trip. Revocation reaches every instance at once through PostgreSQL
//! NOTIFY (see `notify.rs`); a cached entry is also re-read after
//! [`CACHE_RECHECK`] in case a notification was missed.
//!
//! [`ApiKeys`] is also the one home of creating, listing and revoking keys
//! (the CLI, tests and the benchmark all come here). Never logs a key's
//! secret part.

use crate::clock::Clock;
use crate::db::api_keys::{self, ApiKeyRow};
use crate::db::audit::{self, AuditTarget};
use crate::db::notify::{self, Change};
use crate::domain::{text_field, InvalidInput};
use crate::secrets;
use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const PREFIX: &str = "spb_";
const PUBLIC_ID_LEN: usize = 16;
pub const CACHE_RECHECK: Duration = Duration::from_secs(30);
/// `last_used_at` is written at most this often per key (seconds).
const LAST_USED_GRANULARITY_SECONDS: u64 = 60;
/// Calls to Amazon (refreshes, RDTs, grantless tokens) one key may cause per
/// minute on one instance; cache hits are not counted.
pub const AMAZON_CALLS_PER_MINUTE: f64 = 600.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    ConnectionsRead,
    TokensIssue,
    ConnectionsManage,
    TenantsAdmin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::ConnectionsRead,
        Scope::TokensIssue,
        Scope::ConnectionsManage,
        Scope::TenantsAdmin,
    ];
    pub const DEFAULT: [Scope; 2] = [Scope::ConnectionsRead, Scope::TokensIssue];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ConnectionsRead => "connections:read",
            Scope::TokensIssue => "tokens:issue",
            Scope::ConnectionsManage => "connections:manage",
            Scope::TenantsAdmin => "tenants:admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// Who is calling: the key's identity, tenant binding and scopes.
#[derive(Debug, Clone)]
pub struct ApiPrincipal {
    pub key_id: Uuid,
    pub public_id: String,
    /// `None` for a platform key (every tenant).
    pub tenant_id: Option<Uuid>,
    pub scopes: Vec<Scope>,
    pub budget: Arc<Mutex<Budget>>,
}

impl ApiPrincipal {
    /// An operator acting through the CLI or the ops dashboard (no API
    /// key): platform-wide, `tenants:admin`, with a key's Amazon budget.
    pub fn operator(actor: &str) -> Self {
        ApiPrincipal {
            key_id: Uuid::nil(),
            public_id: actor.to_owned(),
            tenant_id: None,
            scopes: vec![Scope::TenantsAdmin],
            budget: Arc::new(Mutex::new(Budget::default())),
        }
    }

    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn can_see_tenant(&self, tenant_id: Uuid) -> bool {
        self.tenant_id.is_none_or(|own| own == tenant_id)
    }

    pub fn actor(&self) -> String {
        format!("api_key:{}", self.public_id)
    }

    /// Takes one call to Amazon from the key's budget; `Err(retry_after)` when spent.
    pub fn spend_amazon_call(&self) -> Result<(), Duration> {
        match self.budget.lock() {
            Ok(mut budget) => budget.take(),
            Err(_) => Ok(()),
        }
    }
}

/// A token bucket refilled at [`AMAZON_CALLS_PER_MINUTE`].
#[derive(Debug)]
pub struct Budget {
    tokens: f64,
    updated: Instant,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            tokens: AMAZON_CALLS_PER_MINUTE,
            updated: Instant::now(),
        }
    }
}

impl Budget {
    fn take(&mut self) -> Result<(), Duration> {
        let per_second = AMAZON_CALLS_PER_MINUTE / 60.0;
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.updated).as_secs_f64() * per_second)
            .min(AMAZON_CALLS_PER_MINUTE);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / per_second).ceil(),
            ))
        }
    }
}

/// A newly created key: shown once.
pub struct NewKey {
    pub id: Uuid,
    pub public_id: String,
    pub secret: SecretString,
}

impl NewKey {
    pub fn generate() -> NewKey {
        let public = secrets::random_token(12);
        let public_id: String = public
            .expose_secret()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .chain(std::iter::repeat('x'))
            .take(PUBLIC_ID_LEN)
            .collect::<String>()
            .to_ascii_lowercase();
        NewKey {
            id: Uuid::new_v4(),
            public_id,
            secret: secrets::random_token(32),
        }
    }

    /// The full key as the caller will send it.
    pub fn token(&self) -> SecretString {
        SecretString::from(format!(
            "{PREFIX}{}_{}",
            self.public_id,
            self.secret.expose_secret()
        ))
    }

    pub fn secret_hash(&self) -> Vec<u8> {
        secrets::sha256_secret(&self.secret)
    }
}

/// Splits `spb_{public}_{secret}`.
fn split_key(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    if rest.len() <= PUBLIC_ID_LEN + 1 || !rest.is_char_boundary(PUBLIC_ID_LEN) {
        return None;
    }
    let (public_id, secret) = rest.split_at(PUBLIC_ID_LEN);
    let secret = secret.strip_prefix('_')?;
    (public_id.bytes().all(|b| b.is_ascii_alphanumeric()) && secret.len() <= 128)
        .then_some((public_id, secret))
}

struct CachedKey {
    secret_hash: Vec<u8>,
    principal: Arc<ApiPrincipal>,
    loaded: Instant,
    /// When this instance last started a `last_used_at` write, in
    /// [`uptime_seconds`] + 1 (0: never). Shared with the entry that replaces
    /// this one on a re-read. An atomic: every request reads it, one a minute
    /// swaps it.
    last_used_written: Arc<AtomicU64>,
}

/// Seconds since this process first asked, on the monotonic clock.
fn uptime_seconds(at: Instant) -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    at.saturating_duration_since(*START).as_secs()
}

pub struct ApiKeys {
    db: PgPool,
    clock: Arc<dyn Clock>,
    entries: DashMap<String, CachedKey, foldhash::fast::RandomState>,
    /// Bumped by every forget: see [`ApiKeys::verify`].
    forgotten: AtomicU64,
    /// Failed authentication per client address (shared with login links).
    throttle: Arc<crate::throttle::FailedAuthThrottle>,
    /// Key ids refused a moment ago: refused again without a query.
    refused: crate::throttle::RefusedKeyIds,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

pub const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing, unknown or revoked API key")]
    Unauthenticated,
    /// Too many failures from this client address (CONTRACT §10).
    #[error("too many failed authentications from this address")]
    Throttled { retry_after_seconds: u64 },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn principal_from(row: &ApiKeyRow) -> ApiPrincipal {
    ApiPrincipal {
        key_id: row.id,
        public_id: row.public_id.clone(),
        tenant_id: row.tenant_id,
        scopes: row.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        budget: Arc::new(Mutex::new(Budget::default())),
    }
}

impl ApiKeys {
    pub fn new(db: PgPool, clock: Arc<dyn Clock>) -> Self {
        ApiKeys {
            db,
            clock,
            entries: DashMap::default(),
            forgotten: AtomicU64::new(0),
            throttle: Arc::default(),
            refused: crate::throttle::RefusedKeyIds::default(),
        }
    }

    /// The failed-authentication throttle, shared with the login links.
    pub fn throttle(&self) -> &Arc<crate::throttle::FailedAuthThrottle> {
        &self.throttle
    }

    /// Verifies a presented key, with no client address to throttle.
    pub async fn verify(&self, presented: &str) -> Result<Arc<ApiPrincipal>, AuthError> {
        self.verify_from(presented, None).await
    }

    /// Verifies a presented key from `client`. Memory only on a recent cache
    /// hit, which is served even while `client` is throttled; otherwise a
    /// throttled client gets [`AuthError::Throttled`] and a key id refused a
    /// moment ago is refused again, both without a query. Every failure
    /// counts toward `client`'s throttle.
    pub async fn verify_from(
        &self,
        presented: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<Arc<ApiPrincipal>, AuthError> {
        let parsed = split_key(presented).map(|(id, secret)| (id, secrets::sha256(secret)));
        let cached = parsed
            .as_ref()
            .and_then(|(id, hash)| self.verify_cached(id, hash));
        if let Some(Ok(principal)) = cached {
            return Ok(principal);
        }
        if let Some(client) = client {
            if let Err(retry) = self.throttle.check(client) {
                crate::metrics::auth_failure("throttled");
                return Err(AuthError::Throttled {
                    retry_after_seconds: retry.as_secs().max(1),
                });
            }
        }
        let verified = match (parsed, cached) {
            (Some((public_id, hash)), None) if !self.refused.contains(public_id) => {
                self.verify_stored(public_id, &hash).await
            }
            _ => Err(AuthError::Unauthenticated),
        };
        if let Err(AuthError::Unauthenticated) = &verified {
            crate::metrics::auth_failure("refused");
            if let Some(client) = client {
                self.throttle.failed(client);
            }
        }
        verified
    }

    /// The key looked up in PostgreSQL, then cached.
    async fn verify_stored(
        &self,
        public_id: &str,
        presented_hash: &[u8],
    ) -> Result<Arc<ApiPrincipal>, AuthError> {
        // Forgetting bumps the epoch: an entry read before a revocation that
        // landed meanwhile is not cached.
        let epoch = self.forgotten.load(Ordering::Acquire);
        crate::metrics::api_key_lookup();
        let Some(row) = api_keys::find_active_by_public_id(&self.db, public_id).await? else {
            self.forget(public_id);
            self.refused.insert(public_id);
            return Err(AuthError::Unauthenticated);
        };
        use subtle::ConstantTimeEq;
        if !bool::from(row.secret_hash.as_slice().ct_eq(presented_hash)) {
            return Err(AuthError::Unauthenticated);
        }
        // A re-read keeps the key's Amazon-call budget and last write time.
        let previous = self.entries.get(public_id).map(|e| {
            (
                Arc::clone(&e.principal.budget),
                Arc::clone(&e.last_used_written),
            )
        });
        let mut principal = principal_from(&row);
        let last_used_written = match previous {
            Some((budget, written)) => {
                principal.budget = budget;
                written
            }
            None => Arc::default(),
        };
        let principal = Arc::new(principal);
        let cached = CachedKey {
            secret_hash: row.secret_hash,
            principal: Arc::clone(&principal),
            loaded: Instant::now(),
            last_used_written,
        };
        // Judged by the row just read, not by what the map holds by now
        // (another request may have replaced or dropped the entry meanwhile).
        note_use(&self.db, &cached, Instant::now(), self.clock.as_ref());
        if self.forgotten.load(Ordering::Acquire) == epoch {
            self.entries.insert(public_id.to_owned(), cached);
        }
        Ok(principal)
    }

    /// The answer from the cache, or `None` when the key must be (re-)read.
    fn verify_cached(
        &self,
        public_id: &str,
        presented_hash: &[u8],
    ) -> Option<Result<Arc<ApiPrincipal>, AuthError>> {
        let entry = self.entries.get(public_id)?;
        let at = Instant::now();
        if at.saturating_duration_since(entry.loaded) >= CACHE_RECHECK {
            return None;
        }
        use subtle::ConstantTimeEq;
        if !bool::from(entry.secret_hash.as_slice().ct_eq(presented_hash)) {
            return Some(Err(AuthError::Unauthenticated));
        }
        note_use(&self.db, &entry, at, self.clock.as_ref());
        Some(Ok(Arc::clone(&entry.principal)))
    }

    /// Drops a key from the cache (revoked here or on another instance).
    pub fn forget(&self, public_id: &str) {
        self.forgotten.fetch_add(1, Ordering::AcqRel);
        self.entries.remove(public_id);
    }

    pub fn clear(&self) {
        self.forgotten.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    /// Creates a key (an empty `scopes` gives the default ones) and audits
    /// it; returns the key itself, shown once.
    pub async fn create(
        &self,
        name: &str,
        tenant_id: Option<Uuid>,
        scopes: &[String],
        actor: &str,
    ) -> Result<SecretString, CreateKeyError> {
        let name = text_field("name", name, MAX_NAME_CHARS)?;
        let mut parsed: Vec<Scope> = Vec::new();
        for raw in scopes {
            let scope = Scope::parse(raw).ok_or_else(|| {
                InvalidInput::new(
                    "scope",
                    "must be connections:read, tokens:issue, connections:manage or tenants:admin",
                )
            })?;
            if !parsed.contains(&scope) {
                parsed.push(scope);
            }
        }
        if parsed.is_empty() {
            parsed.extend(Scope::DEFAULT);
        }
        if tenant_id.is_some() && parsed.contains(&Scope::TenantsAdmin) {
            return Err(InvalidInput::new(
                "scope",
                "tenants:admin exists only on platform keys (no tenant)",
            )
            .into());
        }
        let scope_names: Vec<String> = parsed.iter().map(|s| s.as_str().to_owned()).collect();
        let key = NewKey::generate();
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        api_keys::insert_api_key(
            &mut *tx,
            api_keys::NewApiKey {
                id: key.id,
                public_id: &key.public_id,
                secret_hash: &key.secret_hash(),
                name,
                tenant_id,
                scopes: &scope_names,
                now,
            },
        )
        .await?;
        audit::record(
            &mut *tx,
            now,
            actor,
            "api_key.created",
            AuditTarget {
                tenant_id,
                connection_id: None,
            },
            serde_json::json!({"api_key_id": key.id, "public_id": key.public_id, "name": name, "scopes": scope_names}),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(public_id = %key.public_id, "API key created");
        Ok(key.token())
    }

    /// Revokes a key by id or public id, everywhere at once (NOTIFY), and
    /// audits it. False when there is no such active key.
    pub async fn revoke(&self, id_or_public_id: &str, actor: &str) -> Result<bool, sqlx::Error> {
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let Some((key_id, public_id, tenant_id)) =
            api_keys::revoke_api_key(&mut *tx, id_or_public_id, now).await?
        else {
            return Ok(false);
        };
        audit::record(
            &mut *tx,
            now,
            actor,
            "api_key.revoked",
            AuditTarget {
                tenant_id,
                connection_id: None,
            },
            serde_json::json!({"api_key_id": key_id, "public_id": public_id}),
        )
        .await?;
        notify::send(&mut *tx, &Change::ApiKey(public_id.clone())).await?;
        tx.commit().await?;
        self.forget(&public_id);
        tracing::info!(public_id = %public_id, "API key revoked");
        Ok(true)
    }

    pub async fn list(&self, tenant_id: Option<Uuid>) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
        api_keys::list_api_keys(&self.db, tenant_id).await
    }
}

/// Writes `last_used_at` at most once a minute per key, off the request path.
fn note_use(db: &PgPool, entry: &CachedKey, at: Instant, clock: &dyn Clock) {
    let stamp = uptime_seconds(at) + 1;
    let written = entry.last_used_written.load(Ordering::Relaxed);
    if written != 0 && stamp.saturating_sub(written) < LAST_USED_GRANULARITY_SECONDS {
        return;
    }
    // Only the request that wins the swap writes.
    if entry
        .last_used_written
        .compare_exchange(written, stamp, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let now = clock.now();
    let db = db.clone();
    let id = entry.principal.key_id;
    tokio::spawn(async move {
        if let Err(e) = api_keys::touch_last_used(&db, id, now).await {
            tracing::warn!(error = %e, "could not record API key use");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_prefix_public_id_and_256_bit_secret() {
        let key = NewKey::generate();
        let token = key.token();
        let token = token.expose_secret();
        assert!(token.starts_with("spb_"));
        let (public_id, secret) = split_key(token).unwrap_or_default();
        assert_eq!(public_id, key.public_id);
        assert_eq!(secret.len(), 43); // 32 bytes, base64url
        assert_ne!(NewKey::generate().public_id, key.public_id);
    }

    #[test]
    fn malformed_keys_do_not_split() {
        for bad in [
            "",
            "spb_",
            "spb_short_x",
            "xyz_0123456789abcdef_secret",
            "spb_0123456789abcdef-secret",
            "spb_0123456789abcdé_secret",
        ] {
            assert!(split_key(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn budget_runs_out_and_says_when_to_retry() {
        let mut budget = Budget::default();
        for _ in 0..AMAZON_CALLS_PER_MINUTE as usize {
            assert!(budget.take().is_ok());
        }
        let retry = budget.take().err().unwrap_or_default();
        assert!(retry >= Duration::from_secs(1));
    }
}
