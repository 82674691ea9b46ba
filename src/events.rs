//! Events (CONTRACT §8): what a downstream service may act on, written to the
//! outbox in the same transaction as the change, and the feed that lists them
//! (`GET /v1/events`). Webhook delivery is `webhooks.rs`.
//!
//! An event's body is rendered once, when it is written, from the row as the
//! change left it: every delivery attempt and the feed carry the same bytes.

use crate::connections::ConnectionJson;
use crate::db::connections::ConnectionRow;
use crate::db::events::{self, FeedEvent, NewEvent};
use crate::db::{connections, tenants};
use crate::domain::{ConnectionStatus, EventType, Health};
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
    /// `connection.recovered`: the degraded period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap: Option<Gap>,
}

#[derive(Serialize)]
pub struct Gap {
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
}

impl Gap {
    pub fn new(from: OffsetDateTime, to: OffsetDateTime) -> Gap {
        Gap {
            from: in_utc_micros(from),
            to: in_utc_micros(to),
        }
    }
}

/// Writes an event about the app itself (`app.*`) in the caller's
/// transaction: no tenant's, so only platform keys list it.
pub async fn record_app_event(
    tx: &mut PgConnection,
    event_type: EventType,
    data: serde_json::Value,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    write_event(tx, event_type, None, data, now).await
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
    insert_connection_event(tx, event_type, row, details, now).await
}

/// After a change made in `tx` to a connection whose health was `before`:
/// `connection.degraded` when it became degraded, `connection.recovered`
/// (with the gap since it was announced degraded) when it stopped being so
/// while still active. Nothing otherwise.
pub async fn record_health_change(
    tx: &mut PgConnection,
    connection_id: Uuid,
    before: Health,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let Some(row) = connections::find(&mut *tx, connection_id, now).await? else {
        return Ok(());
    };
    let (was, is) = (before == Health::Degraded, row.health == Health::Degraded);
    if !was && is {
        let reason = row.last_error_message.clone();
        let details = Details {
            reason: reason.as_deref(),
            ..Details::default()
        };
        insert_connection_event(tx, EventType::ConnectionDegraded, row, details, now).await
    } else if was && !is && row.status == ConnectionStatus::Active {
        let since = events::last_of_type(&mut *tx, connection_id, EventType::ConnectionDegraded)
            .await?
            .or(row.last_error_at)
            .unwrap_or(now);
        let details = Details {
            gap: Some(Gap::new(since, now)),
            ..Details::default()
        };
        insert_connection_event(tx, EventType::ConnectionRecovered, row, details, now).await
    } else {
        Ok(())
    }
}

async fn insert_connection_event(
    tx: &mut PgConnection,
    event_type: EventType,
    row: ConnectionRow,
    details: Details<'_>,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let Some(tenant) = tenants::find_tenant(&mut *tx, row.tenant_id).await? else {
        return Ok(());
    };
    let owner = Some((row.tenant_id, row.id));
    let data = ConnectionData {
        connection: ConnectionJson::new(row, &tenant.slug),
        details,
    };
    write_event(tx, event_type, owner, data, now).await
}

/// Renders the event's body once and writes it to the outbox; `owner` is
/// the (tenant, connection) of a connection event.
async fn write_event(
    tx: &mut PgConnection,
    event_type: EventType,
    owner: Option<(Uuid, Uuid)>,
    data: impl Serialize,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let id = new_event_id();
    let created_at = in_utc_micros(now);
    let body = Body {
        id: &id,
        event_type,
        created_at,
        data,
    };
    let body = serde_json::to_string(&body).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    events::insert(
        &mut *tx,
        &NewEvent {
            id: &id,
            event_type,
            tenant_id: owner.map(|(tenant, _)| tenant),
            connection_id: owner.map(|(_, connection)| connection),
            body: &body,
            created_at,
        },
    )
    .await
}

/// At PostgreSQL's precision, so that a time in a body and the same time
/// read back from a column agree.
fn in_utc_micros(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.replace_nanosecond(at.nanosecond() / 1_000 * 1_000)
        .unwrap_or(at)
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
