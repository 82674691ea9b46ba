//! Events (CONTRACT §8): what a downstream service may act on, written to the
//! outbox in the same transaction as the change, and the feed that lists them
//! (`GET /v1/events`). Webhook delivery is `webhooks.rs`.
//!
//! An event's body is rendered once, when it is written, from the row as the
//! change left it: every delivery attempt and the feed carry the same bytes.

use crate::connections::ConnectionJson;
use crate::db::events::{self, FeedEvent, NewEvent};
use crate::db::{connections, tenants};
use crate::domain::{ConnectionStatus, EventType};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

/// Events are listed for 30 days, then deleted.
pub const KEPT_FOR: time::Duration = time::Duration::days(30);

/// A connection event's extras beside the connection itself.
#[derive(Default, Serialize)]
pub struct Details<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<ConnectionStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Body<'a, D: Serialize> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: EventType,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    data: D,
}

#[derive(Serialize)]
struct ConnectionData<'a> {
    connection: ConnectionJson,
    #[serde(flatten)]
    details: Details<'a>,
}

/// Writes a connection event in the caller's transaction, from the row as
/// that transaction sees it. Nothing is written for a row that does not exist.
pub async fn record_connection_event(
    tx: &mut PgConnection,
    event_type: EventType,
    connection_id: Uuid,
    details: Details<'_>,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let Some(row) = connections::find(&mut *tx, connection_id, now).await? else {
        return Ok(());
    };
    let Some(tenant) = tenants::find_tenant(&mut *tx, row.tenant_id).await? else {
        return Ok(());
    };
    let tenant_id = row.tenant_id;
    let id = new_event_id();
    let created_at = now.to_offset(time::UtcOffset::UTC);
    let body = Body {
        id: &id,
        event_type,
        created_at,
        data: ConnectionData {
            connection: ConnectionJson::new(row, &tenant.slug),
            details,
        },
    };
    let body = serde_json::to_string(&body).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    events::insert(
        &mut *tx,
        &NewEvent {
            id: &id,
            event_type,
            tenant_id: Some(tenant_id),
            connection_id: Some(connection_id),
            body: &body,
            created_at,
        },
    )
    .await
}

fn new_event_id() -> String {
    format!("evt_{}", Uuid::new_v4().simple())
}

/// The event feed.
#[derive(Clone)]
pub struct Events {
    db: PgPool,
}

/// A page of the feed: events as their stored bodies, and the cursor to
/// poll with next. A feed has no last page: the cursor is always given (the
/// last event listed, or the one asked with when nothing is new), so that a
/// poller resumes where it stopped.
pub struct FeedPage {
    pub items: Vec<FeedEvent>,
    pub next_cursor: i64,
}

impl Events {
    pub fn new(db: PgPool) -> Self {
        Events { db }
    }

    /// Events after the cursor `after`, oldest first: only `tenant_id`'s
    /// when given (a tenant key), every event otherwise (a platform key).
    pub async fn page(
        &self,
        tenant_id: Option<Uuid>,
        after: i64,
        limit: i64,
    ) -> Result<FeedPage, sqlx::Error> {
        let items = events::page(&self.db, tenant_id, after, limit).await?;
        let next_cursor = items.last().map_or(after, |e| e.seq);
        Ok(FeedPage { items, next_cursor })
    }
}
