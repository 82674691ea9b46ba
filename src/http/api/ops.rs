//! `GET /v1/ops/summary` (the summary itself is built in `ops_summary.rs`).

use super::{ApiError, Caller};
use crate::api_keys::Scope;
use crate::ops_summary::{OpsSummary, Summaries};
use axum::extract::State;
use axum::Json;
use std::sync::Arc;

/// Operator summary. Scope: `tenants:admin`.
#[utoipa::path(get, path = "/v1/ops/summary", tag = "ops",
    responses((status = 200, body = OpsSummary)), security(("api_key" = ["tenants:admin"])))]
pub async fn summary(
    State(summaries): State<Arc<Summaries>>,
    caller: Caller,
) -> Result<Json<OpsSummary>, ApiError> {
    caller.require(Scope::TenantsAdmin)?;
    Ok(Json(summaries.summary().await?))
}
