//! Browser sessions for tower-sessions, kept in PostgreSQL so they survive
//! restarts and are shared by every instance. The session id is stored only as
//! its SHA-256 hash: reading the table gives no session to ride.

use async_trait::async_trait;
use sqlx::PgPool;
use std::collections::HashMap;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

#[derive(Clone, Debug)]
pub struct PgSessionStore {
    db: PgPool,
}

impl PgSessionStore {
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }

    pub async fn delete_expired(&self, now: OffsetDateTime) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query("delete from browser_session where expires_at <= $1")
                .bind(now)
                .execute(&self.db)
                .await?
                .rows_affected(),
        )
    }
}

fn id_hash(id: &Id) -> Vec<u8> {
    crate::secrets::sha256(&id.to_string())
}

fn backend(e: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

#[async_trait]
impl SessionStore for PgSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // A fresh random id colliding is astronomically unlikely; never adopt one.
        loop {
            let data = serde_json::to_value(&record.data).map_err(backend)?;
            let inserted = sqlx::query(
                "insert into browser_session (id_hash, data, expires_at) values ($1, $2, $3)
                 on conflict (id_hash) do nothing",
            )
            .bind(id_hash(&record.id))
            .bind(data)
            .bind(record.expiry_date)
            .execute(&self.db)
            .await
            .map_err(backend)?
            .rows_affected();
            if inserted == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_value(&record.data).map_err(backend)?;
        sqlx::query(
            "insert into browser_session (id_hash, data, expires_at) values ($1, $2, $3)
             on conflict (id_hash) do update set data = excluded.data, expires_at = excluded.expires_at",
        )
        .bind(id_hash(&record.id))
        .bind(data)
        .bind(record.expiry_date)
        .execute(&self.db)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let row: Option<(serde_json::Value, OffsetDateTime)> = sqlx::query_as(
            "select data, expires_at from browser_session where id_hash = $1 and expires_at > now()",
        )
        .bind(id_hash(session_id))
        .fetch_optional(&self.db)
        .await
        .map_err(backend)?;
        match row {
            None => Ok(None),
            Some((data, expiry_date)) => {
                let data: HashMap<String, serde_json::Value> =
                    serde_json::from_value(data).map_err(backend)?;
                Ok(Some(Record {
                    id: *session_id,
                    data,
                    expiry_date,
                }))
            }
        }
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        sqlx::query("delete from browser_session where id_hash = $1")
            .bind(id_hash(session_id))
            .execute(&self.db)
            .await
            .map_err(backend)?;
        Ok(())
    }
}
