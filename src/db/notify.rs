//! Change notifications over PostgreSQL `NOTIFY`: when a connection changes
//! (new token, new status, disconnect), an API key is revoked or the app-wide
//! state changes, every instance is told at once (`notify.rs` listens).

use sqlx::PgExecutor;
use uuid::Uuid;

pub const CHANNEL: &str = "sp_broker_changes";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A connection's row changed; `sender` is the broker instance that wrote
    /// it (nil for writes outside the broker), so it can skip its own news.
    Connection {
        id: Uuid,
        sender: Uuid,
    },
    ApiKey(String),
    /// The app-wide state (the `invalid_client` hold, the fuse) changed.
    App,
    /// A listener's own heartbeat, to prove it still hears the channel.
    Heartbeat(Uuid),
}

impl Change {
    pub fn connection(id: Uuid) -> Change {
        Change::Connection {
            id,
            sender: Uuid::nil(),
        }
    }

    fn payload(&self) -> String {
        match self {
            Change::Connection { id, sender } => format!("connection:{id}:{sender}"),
            Change::ApiKey(public_id) => format!("api_key:{public_id}"),
            Change::App => "app:".to_owned(),
            Change::Heartbeat(listener) => format!("heartbeat:{listener}"),
        }
    }

    pub fn parse(payload: &str) -> Option<Change> {
        let (kind, value) = payload.split_once(':')?;
        match kind {
            "connection" => {
                let (id, sender) = value.split_once(':')?;
                Some(Change::Connection {
                    id: Uuid::parse_str(id).ok()?,
                    sender: Uuid::parse_str(sender).ok()?,
                })
            }
            "api_key" => Some(Change::ApiKey(value.to_owned())),
            "app" => Some(Change::App),
            "heartbeat" => Uuid::parse_str(value).ok().map(Change::Heartbeat),
            _ => None,
        }
    }
}

/// Sends a change notification; inside a transaction it goes out at commit.
pub async fn send(db: impl PgExecutor<'_>, change: &Change) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(change.payload())
        .execute(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let id = Uuid::new_v4();
        for change in [
            Change::connection(id),
            Change::Connection {
                id,
                sender: Uuid::new_v4(),
            },
            Change::ApiKey("abc".into()),
            Change::App,
            Change::Heartbeat(id),
        ] {
            assert_eq!(Change::parse(&change.payload()), Some(change));
        }
        assert_eq!(Change::parse("nonsense"), None);
        assert_eq!(Change::parse("connection:not-a-uuid:x"), None);
    }
}
