//! The cross-instance listener: hears the change notifications of
//! `db/notify.rs` and drops the cached copies they name (connections, API
//! keys) or reloads the app-wide state.
//!
//! A listener that stopped hearing is worse than none: it keeps stale
//! entries alive. So it sends itself a heartbeat through the channel every
//! [`HEARTBEAT_EVERY`]; when one does not come back within
//! [`SILENT_AFTER`], or the connection drops, it listens again on a new
//! connection and clears every cache only *after* it listens (nothing can
//! change unheard in between). Metrics show whether it hears.

use crate::api_keys::ApiKeys;
use crate::broker::TokenBroker;
use crate::db::notify::{self, Change, CHANNEL};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
pub const SILENT_AFTER: Duration = Duration::from_secs(30);

pub struct ChangeListener {
    db: PgPool,
    broker: Arc<TokenBroker>,
    api_keys: Arc<ApiKeys>,
    id: Uuid,
}

impl ChangeListener {
    pub fn new(db: PgPool, broker: Arc<TokenBroker>, api_keys: Arc<ApiKeys>) -> Self {
        ChangeListener {
            db,
            broker,
            api_keys,
            id: Uuid::new_v4(),
        }
    }

    /// Listens until `stop` fires, listening again after every failure.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            match self.listen().await {
                Ok(listener) => {
                    // The age first: "connected" is never shown without it.
                    crate::metrics::listener_heartbeat_age(0.0);
                    crate::metrics::listener_connected(true);
                    self.hear(listener, &mut stop).await;
                    crate::metrics::listener_connected(false);
                    crate::metrics::listener_reconnect();
                }
                Err(e) => tracing::warn!(error = %e, "change listener cannot listen"),
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// A new listening connection; then every cache is cleared, since
    /// anything may have changed while nobody listened.
    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.db).await?;
        listener.listen(CHANNEL).await?;
        self.broker.clear();
        self.api_keys.clear();
        if let Err(e) = self.broker.app_state_changed().await {
            tracing::warn!(error = %e, "could not read the app-wide state");
        }
        Ok(listener)
    }

    async fn hear(&self, mut listener: PgListener, stop: &mut watch::Receiver<bool>) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = heartbeat.tick() => {
                    let silent = last_heard.elapsed();
                    crate::metrics::listener_heartbeat_age(silent.as_secs_f64());
                    if silent > SILENT_AFTER {
                        tracing::warn!(silent_s = silent.as_secs(), "change listener hears nothing: listening again");
                        return;
                    }
                    if let Err(e) = notify::send(&self.db, &Change::Heartbeat(self.id)).await {
                        tracing::warn!(error = %e, "could not send the change listener's heartbeat");
                    }
                }
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        if let Some(change) = Change::parse(notification.payload()) {
                            if change == Change::Heartbeat(self.id) {
                                last_heard = Instant::now();
                                crate::metrics::listener_heartbeat_age(0.0);
                            } else {
                                self.apply(change).await;
                            }
                        }
                    }
                    // The connection dropped: listen again on a new one, then clear.
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "change listener failed");
                        return;
                    }
                }
            }
        }
    }

    async fn apply(&self, change: Change) {
        match change {
            Change::Connection { id, sender } => {
                if sender != self.broker.instance_id() {
                    self.broker.changed_elsewhere(id);
                }
            }
            Change::ApiKey(public_id) => self.api_keys.forget(&public_id),
            Change::App => {
                if let Err(e) = self.broker.app_state_changed().await {
                    tracing::warn!(error = %e, "could not read the app-wide state");
                }
            }
            Change::Heartbeat(_) => {}
        }
    }
}
