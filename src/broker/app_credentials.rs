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
use crate::db::{self, app_state, notify::Change};
use crate::domain::EventType;
use secrecy::SecretString;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

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

pub struct AppCredentials {
    db: PgPool,
    clock: Arc<dyn Clock>,
    secrets: Vec<SecretString>,
    /// The index of the secret that last worked: sent first.
    preferred: AtomicUsize,
    hold: Mutex<HoldState>,
    probing: Arc<AtomicBool>,
    last_ok_written: AtomicI64,
}

impl AppCredentials {
    pub fn new(db: PgPool, clock: Arc<dyn Clock>, secrets: Vec<SecretString>) -> Self {
        AppCredentials {
            db,
            clock,
            secrets,
            preferred: AtomicUsize::new(0),
            hold: Mutex::new(HoldState::default()),
            probing: Arc::new(AtomicBool::new(false)),
            last_ok_written: AtomicI64::new(i64::MIN),
        }
    }

    pub fn configured_secrets(&self) -> usize {
        self.secrets.len()
    }

    /// The index of the secret that last worked, if one has.
    pub fn secret_in_use(&self) -> Option<usize> {
        let state = self.state();
        state
            .last_ok_at
            .is_some()
            .then(|| self.preferred.load(Ordering::Relaxed))
    }

    /// The secrets to try, the one that last worked first.
    pub fn secrets_in_order(&self) -> Vec<(usize, &SecretString)> {
        let preferred = self.preferred.load(Ordering::Relaxed);
        let mut ordered: Vec<(usize, &SecretString)> = self.secrets.iter().enumerate().collect();
        if preferred < ordered.len() {
            ordered.swap(0, preferred);
            ordered[1..].sort_by_key(|(index, _)| *index);
        }
        ordered
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
    pub async fn rejected(&self) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let before = app_state::lock(&mut tx).await?;
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
                    "configured_secrets": self.secrets.len(),
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

    /// A secret worked: remembered first for the next call; ends a hold at
    /// once, on every instance.
    pub async fn worked(&self, secret_index: usize) -> Result<(), sqlx::Error> {
        self.preferred.store(secret_index, Ordering::Relaxed);
        let now = self.clock.now();
        let was_rejected = self.state().is_rejected();
        let unix = now.unix_timestamp();
        let last = self.last_ok_written.load(Ordering::Relaxed);
        if !was_rejected && unix.saturating_sub(last) < OK_WRITE_EVERY_SECONDS {
            return Ok(());
        }
        self.last_ok_written.store(unix, Ordering::Relaxed);
        if let Ok(mut state) = self.hold.lock() {
            state.rejected_since = None;
            state.hold_until = None;
            state.last_ok_at = Some(now);
        }
        let mut tx = self.db.begin().await?;
        if let Some(since) = app_state::record_credentials_ok(&mut *tx, now).await? {
            crate::events::record_app_event(
                &mut tx,
                EventType::AppCredentialsRecovered,
                serde_json::json!({ "gap": crate::events::Gap::new(since, now) }),
                now,
            )
            .await?;
            db::notify::send(&mut *tx, &Change::App).await?;
            tx.commit().await?;
            tracing::warn!("a client secret works again: the app-wide hold has ended");
        } else {
            tx.commit().await?;
        }
        Ok(())
    }

    /// Reads the shared state again (a notification, or the listener reconnected).
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let row = app_state::find(&self.db).await?;
        self.set(HoldState::from_row(&row));
        Ok(())
    }

    fn set(&self, fresh: HoldState) {
        if let Ok(mut state) = self.hold.lock() {
            *state = fresh;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[tokio::test]
    async fn the_secret_that_worked_is_sent_first_then_the_others_in_order() {
        let Ok(db) = PgPool::connect_lazy("postgres://unused") else {
            return;
        };
        let credentials = AppCredentials::new(
            db,
            Arc::new(crate::clock::SystemClock),
            ["a", "b", "c"].map(SecretString::from).to_vec(),
        );
        let order = |c: &AppCredentials| {
            c.secrets_in_order()
                .into_iter()
                .map(|(i, s)| (i, s.expose_secret().to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            order(&credentials),
            vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]
        );
        credentials.preferred.store(2, Ordering::Relaxed);
        assert_eq!(
            order(&credentials),
            vec![(2, "c".into()), (0, "a".into()), (1, "b".into())]
        );
    }
}
