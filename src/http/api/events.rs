//! `GET /v1/events`: the event feed (CONTRACT §8), the same events the
//! webhooks carry, oldest first, for a service without a public URL.

use super::{ApiError, Caller};
use crate::api_keys::Scope;
use crate::events::Events;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// `next_cursor` of the previous page; omitted: from the oldest kept event.
    pub after: Option<String>,
    /// 1–500, default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
}

/// A page of the feed.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// Events as the webhooks deliver them: `{"id","type","created_at","data"}`.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Box<RawValue>>,
    /// Pass as `after` to poll for what comes next. Always given: the last
    /// event listed, or the cursor asked with when nothing is new.
    pub next_cursor: String,
}

/// The event feed: a tenant key sees its tenant's events, a platform key
/// every event. Scope: `connections:read`.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = EventPage), (status = 422, description = "invalid_request")),
    security(("api_key" = ["connections:read"])))]
pub async fn list_events(
    State(events): State<Arc<Events>>,
    caller: Caller,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    caller.require(Scope::ConnectionsRead)?;
    let limit = super::page_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = match query.after.as_deref() {
        None | Some("") => 0,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|after| *after >= 0)
            .ok_or_else(|| ApiError::invalid_request("`after` is not a cursor this API gave"))?,
    };
    let page = events.page(caller.0.tenant_id, after, limit).await?;
    let mut items = Vec::with_capacity(page.items.len());
    for event in page.items {
        items.push(RawValue::from_string(event.body).map_err(crate::error::Error::Json)?);
    }
    Ok(Json(EventPage {
        items,
        next_cursor: page.next_cursor.to_string(),
    }))
}
