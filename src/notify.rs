//! Cross-instance cache invalidation over PostgreSQL LISTEN/NOTIFY: when a
//! connection changes (new token, new status, disconnect) or an API key is
//! revoked, every instance drops its in-memory copy at once. If the listening
//! connection drops, caches are cleared on reconnect (and entries are re-read
//! after a short time anyway), so a missed notification cannot keep a revoked
//! key or a disconnected connection alive.

use crate::app::AppState;
use sqlx::postgres::PgListener;
use sqlx::PgExecutor;
use std::time::Duration;
use uuid::Uuid;

pub const CHANNEL: &str = "sp_broker_changes";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Connection(Uuid),
    ApiKey(String),
}

impl Change {
    fn payload(&self) -> String {
        match self {
            Change::Connection(id) => format!("connection:{id}"),
            Change::ApiKey(public_id) => format!("api_key:{public_id}"),
        }
    }

    fn parse(payload: &str) -> Option<Change> {
        let (kind, value) = payload.split_once(':')?;
        match kind {
            "connection" => Uuid::parse_str(value).ok().map(Change::Connection),
            "api_key" => Some(Change::ApiKey(value.to_owned())),
            _ => None,
        }
    }
}

pub async fn send(db: impl PgExecutor<'_>, change: &Change) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(change.payload())
        .execute(db)
        .await?;
    Ok(())
}

fn apply(state: &AppState, change: Change) {
    match change {
        Change::Connection(id) => state.broker.forget(id),
        Change::ApiKey(public_id) => state.api_keys.forget(&public_id),
    }
}

/// Listens until `stop` fires, reconnecting after failures.
pub async fn listen(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        match PgListener::connect_with(&state.db).await {
            Ok(mut listener) => {
                if listener.listen(CHANNEL).await.is_ok() {
                    // Anything may have changed while we were not listening.
                    state.broker.clear();
                    state.api_keys.clear();
                    loop {
                        tokio::select! {
                            _ = stop.changed() => return,
                            received = listener.try_recv() => match received {
                                Ok(Some(n)) => {
                                    if let Some(change) = Change::parse(n.payload()) {
                                        apply(&state, change);
                                    }
                                }
                                // The connection dropped: sqlx reconnects on the next call.
                                Ok(None) => {
                                    state.broker.clear();
                                    state.api_keys.clear();
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "change listener failed");
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "change listener cannot connect"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let id = Uuid::new_v4();
        for change in [Change::Connection(id), Change::ApiKey("abc".into())] {
            assert_eq!(Change::parse(&change.payload()), Some(change));
        }
        assert_eq!(Change::parse("nonsense"), None);
    }
}
