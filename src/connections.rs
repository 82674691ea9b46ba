//! Connections as the rest of the product sees them: reading them (with
//! their health, judged by the app's clock) and the one home of Disconnect,
//! for the page and the API alike.

use crate::broker::TokenBroker;
use crate::clock::Clock;
use crate::db::audit::{self, AuditTarget};
use crate::db::connections::{self, ConnectionRow, PageQuery};
use crate::db::notify::{self, Change};
use crate::db::tenants::{self, Tenant};
use crate::domain::ConnectionStatus;
use sqlx::PgPool;
use std::sync::Arc;
use time::OffsetDateTime;
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
