//! The app's own LWA credentials: which client secret to send, and the
//! app-wide `invalid_client` hold (SECURITY.md).
//!
//! The hold starts only when every secret was refused with `invalid_client`
//! (or, on a refresh, `unauthorized_client`); it lasts 30 s, doubling to
//! 5 min while Amazon keeps refusing; when it lapses exactly one call (the
//! probe, claimed in PostgreSQL) goes to Amazon; it ends at once, on every
//! instance, when a secret works. It lives in PostgreSQL (`app_state`) so
//! every instance shares it, mirrored in memory so a held request costs no
//! query. Never logs a secret.

use crate::clock::Clock;
use crate::crypto::{KeyRing, Purpose, SealContext};
use crate::db::{self, app_secrets, app_state, notify::Change};
use crate::domain::EventType;
use arc_swap::ArcSwap;
use secrecy::SecretString;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub const FIRST_HOLD: Duration = Duration::seconds(30);
pub const MAX_HOLD: Duration = Duration::minutes(5);
/// How long a probe may take before another instance may probe instead.
const PROBE_LEASE: Duration = Duration::seconds(30);
/// `credentials_last_ok_at` is written at most this often while all is well.
const OK_WRITE_EVERY_SECONDS: i64 = 60;

/// What the hold says about calling Amazon now.
pub enum Gate {
    Open,
    /// The hold lapsed and this caller is the one probe; dropping the guard
    /// lets this instance probe again later.
    Probe(ProbeGuard),
    /// Held: the app's credentials were rejected; try again after this long.
    Held {
        retry_after: Duration,
    },
}

pub struct ProbeGuard(Arc<AtomicBool>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The hold as this instance last saw it.
#[derive(Debug, Clone, Default)]
pub struct HoldState {
    pub rejected_since: Option<OffsetDateTime>,
    pub hold_until: Option<OffsetDateTime>,
    pub last_ok_at: Option<OffsetDateTime>,
    pub last_rejected_at: Option<OffsetDateTime>,
}

impl HoldState {
    fn from_row(row: &app_state::AppRow) -> Self {
        HoldState {
            rejected_since: row.credentials_rejected_since,
            hold_until: row.credentials_hold_until,
            last_ok_at: row.credentials_last_ok_at,
            last_rejected_at: row.credentials_last_rejected_at,
        }
    }

    pub fn is_rejected(&self) -> bool {
        self.rejected_since.is_some()
    }
}

/// Where a client secret came from (`GET /v1/app/status`'s `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    Environment,
    EnvironmentPrevious,
    Notification,
}

impl SecretSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretSource::Environment => "environment",
            SecretSource::EnvironmentPrevious => "environment_previous",
            SecretSource::Notification => "notification",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "environment" => Some(SecretSource::Environment),
            "environment_previous" => Some(SecretSource::EnvironmentPrevious),
            "notification" => Some(SecretSource::Notification),
            _ => None,
        }
    }
}

/// A client secret this instance can send, with what is known about it.
/// Deliberately not `Debug`.
#[derive(Clone)]
pub struct KnownSecret {
    pub id: Uuid,
    pub source: SecretSource,
    value: SecretString,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub expiry_reason: Option<String>,
    pub last_worked_at: Option<OffsetDateTime>,
    pub last_rejected_at: Option<OffsetDateTime>,
}

impl KnownSecret {
    /// Refused since it last worked (or refused and never worked).
    pub fn known_rejected(&self) -> bool {
        self.last_rejected_at
            .is_some_and(|rejected| self.last_worked_at.is_none_or(|worked| rejected > worked))
    }

    pub fn expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The secrets to try for one call, best first, from one snapshot.
pub struct OrderedSecrets {
    list: Arc<Vec<KnownSecret>>,
    order: Vec<usize>,
}

impl OrderedSecrets {
    /// What `LwaClient::request` takes.
    pub fn candidates(&self) -> Vec<(Uuid, &SecretString)> {
        self.order
            .iter()
            .map(|&i| (self.list[i].id, &self.list[i].value))
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &KnownSecret> {
        self.order.iter().map(|&i| &self.list[i])
    }

    pub fn first(&self) -> Option<&KnownSecret> {
        self.iter().next()
    }
}

/// The order secrets are tried in: unexpired before expired (an expired one
/// is tried only once every unexpired one was refused: Amazon is the judge,
/// and a wrong recorded expiry must not cut the app off), those not refused
/// since they last worked before refused ones, newest first (the one learnt
/// last, the environment's current before its previous one).
fn ordered(list: Arc<Vec<KnownSecret>>, now: OffsetDateTime) -> OrderedSecrets {
    let mut order: Vec<usize> = (0..list.len()).collect();
    order.sort_by_key(|&i| {
        let secret = &list[i];
        (
            secret.expired(now),
            secret.known_rejected(),
            std::cmp::Reverse(secret.created_at),
            secret.source == SecretSource::EnvironmentPrevious,
        )
    });
    OrderedSecrets { list, order }
}

pub struct AppCredentials {
    db: PgPool,
    clock: Arc<dyn Clock>,
    keys: Arc<KeyRing>,
    client_id: String,
    /// The environment's secrets: current, then previous.
    environment: Vec<SecretString>,
    /// Every secret this instance can send; replaced whole on each change.
    secrets: ArcSwap<Vec<KnownSecret>>,
    hold: Mutex<HoldState>,
    probing: Arc<AtomicBool>,
    last_ok_written: AtomicI64,
    /// The environment's secrets have their rows (written once per process).
    environment_registered: AtomicBool,
}

impl AppCredentials {
    pub fn new(
        db: PgPool,
        clock: Arc<dyn Clock>,
        keys: Arc<KeyRing>,
        client_id: String,
        environment: Vec<SecretString>,
    ) -> Self {
        let now = clock.now();
        // Until the first `reload` reads the database: the environment alone.
        let secrets = environment
            .iter()
            .enumerate()
            .map(|(i, value)| KnownSecret {
                id: Uuid::new_v4(),
                source: environment_source(i),
                value: value.clone(),
                created_at: now,
                expires_at: None,
                expiry_reason: None,
                last_worked_at: None,
                last_rejected_at: None,
            })
            .collect();
        AppCredentials {
            db,
            clock,
            keys,
            client_id,
            environment,
            secrets: ArcSwap::from_pointee(secrets),
            hold: Mutex::new(HoldState::default()),
            probing: Arc::new(AtomicBool::new(false)),
            last_ok_written: AtomicI64::new(i64::MIN),
            environment_registered: AtomicBool::new(false),
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub(crate) fn db(&self) -> &PgPool {
        &self.db
    }

    pub(crate) fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub(crate) fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub fn configured_secrets(&self) -> usize {
        self.secrets.load().len()
    }

    /// The secrets to try, best first.
    pub fn secrets_in_order(&self) -> OrderedSecrets {
        ordered(self.secrets.load_full(), self.clock.now())
    }

    /// Every secret this instance holds, expired ones too, newest first.
    pub fn all_secrets_newest_first(&self) -> Vec<KnownSecret> {
        let mut all = Vec::clone(&self.secrets.load());
        all.sort_by_key(|s| {
            (
                std::cmp::Reverse(s.created_at),
                s.source == SecretSource::EnvironmentPrevious,
            )
        });
        all
    }

    /// The secret sent first right now.
    pub fn secret_in_use(&self) -> Option<KnownSecret> {
        self.secrets_in_order().first().cloned()
    }

    pub fn state(&self) -> HoldState {
        self.hold.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Memory only while held or open; one query when the hold has lapsed
    /// and this instance is not probing already.
    pub async fn gate(&self) -> Result<Gate, sqlx::Error> {
        let now = self.clock.now();
        let (rejected, hold_until) = {
            let state = self.state();
            (state.is_rejected(), state.hold_until)
        };
        if !rejected {
            return Ok(Gate::Open);
        }
        if let Some(until) = hold_until.filter(|until| *until > now) {
            return Ok(Gate::Held {
                retry_after: until - now,
            });
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return Ok(Gate::Held {
                retry_after: Duration::seconds(1),
            });
        }
        let guard = ProbeGuard(Arc::clone(&self.probing));
        if app_state::claim_credentials_probe(&self.db, now, now + PROBE_LEASE).await? {
            tracing::info!("app credentials held rejected: this call is the probe");
            Ok(Gate::Probe(guard))
        } else {
            // Another instance probes (or the hold was renewed meanwhile).
            self.reload().await?;
            Ok(Gate::Held {
                retry_after: Duration::seconds(1),
            })
        }
    }

    /// Held right now, by memory alone (for fail-fast checks before a query).
    pub fn is_held(&self) -> Option<Duration> {
        let now = self.clock.now();
        let state = self.state();
        if !state.is_rejected() {
            return None;
        }
        Some(
            state
                .hold_until
                .map(|until| until - now)
                .filter(|left| *left > Duration::ZERO)
                .unwrap_or(Duration::ZERO),
        )
    }

    /// Every secret was refused: starts or extends the hold, everywhere.
    pub async fn rejected(&self, tried: &[Uuid]) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        self.mark(tried, |secret| secret.last_rejected_at = Some(now));
        let mut tx = self.db.begin().await?;
        let before = app_state::lock(&mut tx).await?;
        app_secrets::record_rejected(&mut *tx, tried, now).await?;
        if app_secrets::untried_notified_secret(&mut *tx, tried, now).await? {
            // A secret stored since this call took its list: no hold, the
            // next call sends it.
            tx.commit().await?;
            self.reload().await?;
            return Ok(());
        }
        let row = app_state::record_credentials_rejected(
            &mut *tx,
            now,
            FIRST_HOLD.whole_seconds() as i32,
            MAX_HOLD.whole_seconds() as i32,
        )
        .await?;
        if before.credentials_rejected_since.is_none() {
            crate::events::record_app_event(
                &mut tx,
                EventType::AppCredentialsRejected,
                serde_json::json!({
                    "reason": "Amazon answered invalid_client or unauthorized_client to every configured client secret: the app's credentials, not the sellers', need attention",
                    "configured_secrets": tried.len(),
                }),
                now,
            )
            .await?;
        }
        db::notify::send(&mut *tx, &Change::App).await?;
        tx.commit().await?;
        self.set(HoldState::from_row(&row));
        tracing::error!(
            hold_seconds = row.credentials_hold_seconds.unwrap_or_default(),
            "LWA rejected every configured client secret: the app's credentials need attention; \
             refreshes are held app-wide (sellers' statuses are not touched)"
        );
        Ok(())
    }

    /// A secret worked (after `refused_first` were refused, if any): it is
    /// sent first from now on, here at once and on every instance once the
    /// change is written; ends a hold at once, on every instance.
    pub async fn worked(&self, secret: Uuid, refused_first: &[Uuid]) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let unix = now.unix_timestamp();
        let known = self.secrets.load();
        let was_known_rejected = known.iter().any(|s| s.id == secret && s.known_rejected());
        let first_success = known
            .iter()
            .any(|s| s.id == secret && s.last_worked_at.is_none());
        let newly_refused: Vec<Uuid> = known
            .iter()
            .filter(|s| refused_first.contains(&s.id) && !s.known_rejected())
            .map(|s| s.id)
            .collect();
        drop(known);
        let order_changed = was_known_rejected || first_success || !newly_refused.is_empty();
        let was_rejected = self.state().is_rejected();
        let last = self.last_ok_written.load(Ordering::Relaxed);
        if !was_rejected && !order_changed && unix.saturating_sub(last) < OK_WRITE_EVERY_SECONDS {
            return Ok(());
        }
        self.last_ok_written.store(unix, Ordering::Relaxed);
        self.mark(&[secret], |s| s.last_worked_at = Some(now));
        self.mark(&newly_refused, |s| s.last_rejected_at = Some(now));
        if let Ok(mut state) = self.hold.lock() {
            state.rejected_since = None;
            state.hold_until = None;
            state.last_ok_at = Some(now);
        }
        let mut tx = self.db.begin().await?;
        app_secrets::record_worked(&mut *tx, secret, now).await?;
        if !newly_refused.is_empty() {
            app_secrets::record_rejected(&mut *tx, &newly_refused, now).await?;
            tracing::warn!(
                refused = newly_refused.len(),
                "a client secret was refused and an older one worked: the older one is sent first from now on"
            );
        }
        let recovered_since = app_state::record_credentials_ok(&mut *tx, now).await?;
        if let Some(since) = recovered_since {
            crate::events::record_app_event(
                &mut tx,
                EventType::AppCredentialsRecovered,
                serde_json::json!({ "gap": crate::events::Gap::new(since, now) }),
                now,
            )
            .await?;
        }
        if recovered_since.is_some() || order_changed {
            db::notify::send(&mut *tx, &Change::App).await?;
        }
        tx.commit().await?;
        if recovered_since.is_some() {
            tracing::warn!("a client secret works again: the app-wide hold has ended");
        }
        Ok(())
    }

    /// Changes this instance's copy of some secrets at once (the database
    /// is written by the caller; other instances reload on its notice).
    fn mark(&self, ids: &[Uuid], change: impl Fn(&mut KnownSecret)) {
        if ids.is_empty() {
            return;
        }
        self.secrets.rcu(|list| {
            let mut list = Vec::clone(list);
            for secret in list.iter_mut().filter(|s| ids.contains(&s.id)) {
                change(secret);
            }
            list
        });
    }

    /// Reads the shared state again (a notification, or the listener
    /// reconnected): the hold, and every secret with what is known of it.
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let row = app_state::find(&self.db).await?;
        self.set(HoldState::from_row(&row));
        self.reload_secrets().await
    }

    async fn reload_secrets(&self) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let environment: Vec<(Vec<u8>, &SecretString)> = self
            .environment
            .iter()
            .map(|value| (fingerprint(value), value))
            .collect();
        if !self.environment_registered.load(Ordering::Acquire) {
            for (i, (print, _)) in environment.iter().enumerate() {
                app_secrets::register_environment(
                    &self.db,
                    print,
                    environment_source(i).as_str(),
                    now,
                )
                .await?;
            }
            self.environment_registered.store(true, Ordering::Release);
        }
        let mut list = Vec::new();
        for row in app_secrets::list(&self.db).await? {
            let value = match &row.secret_sealed {
                Some(sealed) => match self
                    .keys
                    .open_str(seal_context(&row.id.to_string()), sealed)
                {
                    Ok(value) => value,
                    Err(e) => {
                        tracing::error!(secret_id = %row.id, error = %e, "a stored client secret cannot be opened: left out");
                        continue;
                    }
                },
                // An environment secret: sendable only where the environment holds it.
                None => match environment
                    .iter()
                    .find(|(print, _)| *print == row.fingerprint)
                {
                    Some((_, value)) => SecretString::clone(value),
                    None => continue,
                },
            };
            list.push(KnownSecret {
                id: row.id,
                source: SecretSource::parse(&row.source).unwrap_or(SecretSource::Notification),
                value,
                created_at: row.created_at,
                expires_at: row.expires_at,
                expiry_reason: row.expiry_reason,
                last_worked_at: row.last_worked_at,
                last_rejected_at: row.last_rejected_at,
            });
        }
        self.secrets.store(Arc::new(list));
        Ok(())
    }

    fn set(&self, fresh: HoldState) {
        if let Ok(mut state) = self.hold.lock() {
            *state = fresh;
        }
    }
}

fn environment_source(index: usize) -> SecretSource {
    if index == 0 {
        SecretSource::Environment
    } else {
        SecretSource::EnvironmentPrevious
    }
}

/// What finds a secret's row again; it never leaves the database.
pub(crate) fn fingerprint(value: &SecretString) -> Vec<u8> {
    crate::secrets::sha256_secret(value)
}

/// A stored secret is sealed for its own row and nothing else.
pub(crate) fn seal_context(row: &str) -> SealContext<'_> {
    SealContext {
        purpose: Purpose::ClientSecret,
        tenant: "",
        row,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use time::macros::datetime;

    fn secret(value: &str, source: SecretSource, created_at: OffsetDateTime) -> KnownSecret {
        KnownSecret {
            id: Uuid::new_v4(),
            source,
            value: SecretString::from(value),
            created_at,
            expires_at: None,
            expiry_reason: None,
            last_worked_at: None,
            last_rejected_at: None,
        }
    }

    fn values(list: Vec<KnownSecret>, now: OffsetDateTime) -> Vec<String> {
        ordered(Arc::new(list), now)
            .iter()
            .map(|s| s.value.expose_secret().to_owned())
            .collect()
    }

    #[test]
    fn the_newest_is_tried_first_then_older_ones_and_a_refused_one_last() {
        let day1 = datetime!(2026-12-01 00:00 UTC);
        let day2 = datetime!(2026-12-02 00:00 UTC);
        let now = datetime!(2026-12-03 00:00 UTC);
        let env = secret("env", SecretSource::Environment, day1);
        let previous = secret("previous", SecretSource::EnvironmentPrevious, day1);
        let mut notified = secret("notified", SecretSource::Notification, day2);
        assert_eq!(
            values(vec![previous.clone(), env.clone(), notified.clone()], now),
            ["notified", "env", "previous"]
        );
        // Refused since it last worked: tried after the others.
        notified.last_worked_at = Some(day2);
        notified.last_rejected_at = Some(now);
        assert_eq!(
            values(vec![env.clone(), notified.clone(), previous.clone()], now),
            ["env", "previous", "notified"]
        );
        // Worked again since: first again.
        notified.last_worked_at = Some(now + Duration::seconds(1));
        assert_eq!(
            values(vec![env.clone(), notified.clone()], now),
            ["notified", "env"]
        );
    }

    #[test]
    fn an_expired_secret_is_tried_only_after_every_unexpired_one() {
        let now = datetime!(2026-12-03 00:00 UTC);
        let mut old = secret("old", SecretSource::Notification, now - Duration::days(1));
        old.expires_at = Some(now - Duration::seconds(1));
        let mut new = secret("new", SecretSource::Notification, now - Duration::days(8));
        assert_eq!(values(vec![old.clone(), new.clone()], now), ["new", "old"]);
        new.last_rejected_at = Some(now);
        assert_eq!(values(vec![old.clone(), new], now), ["new", "old"]);
        assert_eq!(values(vec![old], now), ["old"]);
    }
}
