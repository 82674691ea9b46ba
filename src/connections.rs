//! Connections as the rest of the product sees them: reading them (with
//! their health, judged by the app's clock) and the one home of Disconnect,
//! for the page and the API alike.

use crate::amazon::marketplaces::{AccountType, Region};
use crate::broker::TokenBroker;
use crate::clock::Clock;
use crate::db::audit::{self, AuditTarget};
use crate::db::connections::{self, ConnectionRow, PageQuery};
use crate::db::notify::{self, Change};
use crate::db::tenants::{self, Tenant};
use crate::domain::{ConnectionStatus, EventType, Health};
use crate::events;
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

pub struct Connections {
    db: PgPool,
    clock: Arc<dyn Clock>,
    broker: Arc<TokenBroker>,
}

/// What Disconnect did.
pub struct Disconnected {
    pub selling_partner_id: String,
    pub previous_status: ConnectionStatus,
}

/// A page of connections and the cursor of the next.
pub struct Page {
    pub rows: Vec<ConnectionRow>,
    pub next: Option<(OffsetDateTime, Uuid)>,
}

impl Connections {
    pub fn new(db: PgPool, clock: Arc<dyn Clock>, broker: Arc<TokenBroker>) -> Self {
        Connections { db, clock, broker }
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// A connection with its tenant.
    pub async fn find(&self, id: Uuid) -> Result<Option<(ConnectionRow, Tenant)>, sqlx::Error> {
        let Some(row) = connections::find(&self.db, id, self.now()).await? else {
            return Ok(None);
        };
        Ok(tenants::find_tenant(&self.db, row.tenant_id)
            .await?
            .map(|tenant| (row, tenant)))
    }

    pub async fn find_for_tenant(
        &self,
        tenant_id: Uuid,
        id: Uuid,
    ) -> Result<Option<ConnectionRow>, sqlx::Error> {
        connections::find_for_tenant(&self.db, tenant_id, id, self.now()).await
    }

    pub async fn list_for_tenant(
        &self,
        tenant_id: Uuid,
    ) -> Result<Vec<ConnectionRow>, sqlx::Error> {
        connections::list_for_tenant(&self.db, tenant_id, self.now()).await
    }

    /// Up to `limit` connections after the cursor, and the next cursor.
    pub async fn page(
        &self,
        tenant_id: Uuid,
        status: Option<ConnectionStatus>,
        selling_partner_id: Option<&str>,
        after: Option<(OffsetDateTime, Uuid)>,
        limit: i64,
    ) -> Result<Page, sqlx::Error> {
        let mut rows = connections::list_page(
            &self.db,
            PageQuery {
                tenant_id,
                status,
                selling_partner_id,
                after,
                limit: limit + 1,
                now: self.now(),
            },
        )
        .await?;
        let next = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| (r.created_at, r.id))
        } else {
            None
        };
        Ok(Page { rows, next })
    }

    /// Erases the stored tokens, marks the connection `disconnected`, audits
    /// it and tells every instance. `None` when the tenant has no such connection.
    pub async fn disconnect(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        actor: &str,
    ) -> Result<Option<Disconnected>, sqlx::Error> {
        let now = self.now();
        let mut tx = self.db.begin().await?;
        let Some(row) = connections::find_for_tenant(&mut *tx, tenant_id, id, now).await? else {
            return Ok(None);
        };
        let Some(previous_status) = connections::disconnect(&mut tx, tenant_id, id, now).await?
        else {
            return Ok(None);
        };
        audit::record(
            &mut *tx,
            now,
            actor,
            "connection.disconnected",
            AuditTarget {
                tenant_id: Some(tenant_id),
                connection_id: Some(id),
            },
            serde_json::json!({ "previous_status": previous_status }),
        )
        .await?;
        events::record_connection_event(
            &mut tx,
            EventType::ConnectionDisconnected,
            id,
            events::Details {
                previous_status: Some(previous_status),
                ..events::Details::default()
            },
            now,
        )
        .await?;
        notify::send(&mut *tx, &Change::connection(id)).await?;
        tx.commit().await?;
        self.broker.forget(id);
        tracing::info!(connection = %id, "connection disconnected; stored tokens erased");
        Ok(Some(Disconnected {
            selling_partner_id: row.selling_partner_id,
            previous_status,
        }))
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastError {
    pub code: String,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A connection as the API, the events and the webhooks show it (CONTRACT §3).
/// Never a token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionJson {
    pub id: Uuid,
    /// The tenant's slug.
    pub tenant: String,
    pub selling_partner_id: String,
    pub account_type: AccountType,
    pub region: Region,
    pub marketplace_id: String,
    pub store_name: Option<String>,
    pub marketplace_ids: Option<Vec<String>>,
    pub status: ConnectionStatus,
    pub status_reason: Option<String>,
    pub health: Health,
    #[serde(with = "time::serde::rfc3339::option")]
    pub authorized_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub authorization_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_refresh_at: Option<OffsetDateTime>,
    pub last_error: Option<LastError>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl ConnectionJson {
    pub fn new(row: ConnectionRow, tenant_slug: &str) -> Self {
        let last_error = match (
            row.last_error_code,
            row.last_error_message,
            row.last_error_at,
        ) {
            (Some(code), Some(message), Some(at)) => Some(LastError {
                code,
                message,
                at: utc(at),
            }),
            _ => None,
        };
        ConnectionJson {
            id: row.id,
            tenant: tenant_slug.to_owned(),
            selling_partner_id: row.selling_partner_id,
            account_type: row.account_type,
            region: row.region,
            marketplace_id: row.marketplace_id,
            store_name: row.store_name,
            marketplace_ids: row.marketplace_ids,
            status: row.status,
            status_reason: row.status_reason,
            health: row.health,
            authorized_at: row.authorized_at.map(utc),
            authorization_expires_at: row.authorization_expires_at.map(utc),
            last_refresh_at: row.last_refresh_at.map(utc),
            last_error,
            created_at: utc(row.created_at),
            updated_at: utc(row.updated_at),
        }
    }
}

fn utc(at: OffsetDateTime) -> OffsetDateTime {
    at.to_offset(time::UtcOffset::UTC)
}
