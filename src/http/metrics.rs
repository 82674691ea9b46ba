//! `GET /metrics`: Prometheus text. Counters and histograms come from the
//! process's recorder (`crate::metrics`); connection counts by status and
//! health and the app's credential state are read from PostgreSQL at scrape
//! time, so every instance reports the same, whole-fleet figures for them.

use crate::ops_summary::Summaries;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn metrics_handler(State(summaries): State<Arc<Summaries>>) -> Response {
    let Some(handle) = crate::metrics::install() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        )
            .into_response();
    };
    match summaries.summary().await {
        Ok(summary) => {
            for (status, count) in &summary.connections_by_status {
                metrics::gauge!("sp_broker_connections", "status" => status.clone())
                    .set(*count as f64);
            }
            for (health, count) in &summary.connections_by_health {
                metrics::gauge!("sp_broker_connections_by_health", "health" => health.clone())
                    .set(*count as f64);
            }
            let rejected = if summary.app_credentials.state == "rejected" {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("sp_broker_app_credentials_rejected").set(rejected);
            if let Some(left) = summary.app_credentials.secret_seconds_left {
                metrics::gauge!("sp_broker_app_secret_expiry_seconds").set(left as f64);
            }
            let fused = if summary.invalid_grant_fuse.tripped {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("sp_broker_invalid_grant_fuse_tripped").set(fused);
            let deliveries = &summary.webhook_deliveries;
            metrics::gauge!("sp_broker_webhook_outbox_pending").set(deliveries.pending as f64);
            metrics::gauge!("sp_broker_webhook_outbox_retrying").set(deliveries.retrying as f64);
            metrics::gauge!("sp_broker_webhook_outbox_failed").set(deliveries.failed as f64);
            metrics::gauge!("sp_broker_database_up").set(1.0);
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: database unavailable");
            metrics::gauge!("sp_broker_database_up").set(0.0);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
