//! Prometheus metrics (`GET /metrics`), names prefixed `sp_broker_`.
//!
//! Counters and histograms go through the `metrics` facade, which is global by
//! design; the recorder is installed once per process. The handler that
//! renders them (with gauges read from PostgreSQL at scrape time) is in
//! `http/metrics.rs`.

use crate::broker::TokenSource;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the recorder (once per process) and returns its handle.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// A token handed out. The counters are looked up once, not per token: this
/// runs on every cache hit.
pub fn token_issued(source: TokenSource) {
    static ISSUED: LazyLock<[Counter; 4]> = LazyLock::new(|| {
        ["cache", "refreshed", "joined", "fallback"].map(
            |source| metrics::counter!("sp_broker_access_tokens_issued_total", "source" => source),
        )
    });
    let index = match source {
        TokenSource::Cache => 0,
        TokenSource::Refreshed => 1,
        TokenSource::Joined => 2,
        TokenSource::Fallback => 3,
    };
    ISSUED[index].increment(1);
}

/// A token request refused, by the contract's error code.
/// A request to the LWA-compatible endpoint (`POST /auth/o2/token`): its
/// grant (`refresh_token`, `client_credentials`, `other`) and outcome (`ok`
/// or LWA's error code).
pub fn lwa_compatible(grant: &'static str, outcome: &'static str) {
    metrics::counter!("sp_broker_lwa_compatible_requests_total", "grant" => grant, "outcome" => outcome)
        .increment(1);
}

/// An API key looked up in PostgreSQL (not served from memory).
pub fn api_key_lookup() {
    metrics::counter!("sp_broker_api_key_lookups_total").increment(1);
}

/// A failed authentication: `refused` (401) or `throttled` (429, no query).
pub fn auth_failure(outcome: &'static str) {
    metrics::counter!("sp_broker_auth_failures_total", "outcome" => outcome).increment(1);
}

pub fn token_refused(code: &'static str) {
    metrics::counter!("sp_broker_access_token_errors_total", "code" => code).increment(1);
}

/// Whether the change listener is listening.
pub fn listener_connected(connected: bool) {
    metrics::gauge!("sp_broker_change_listener_connected").set(if connected { 1.0 } else { 0.0 });
}

pub fn listener_reconnect() {
    metrics::counter!("sp_broker_change_listener_reconnects_total").increment(1);
}

/// Seconds since the listener last heard its own heartbeat.
pub fn listener_heartbeat_age(seconds: f64) {
    metrics::gauge!("sp_broker_change_listener_heartbeat_age_seconds").set(seconds);
}

/// One call to LWA's token endpoint (retries count separately).
pub fn lwa_call(grant: &'static str, outcome: &'static str, seconds: f64) {
    metrics::counter!("sp_broker_lwa_requests_total", "grant" => grant, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("sp_broker_lwa_request_duration_seconds", "grant" => grant).record(seconds);
}

/// One route's request metrics, looked up in the registry once per thread
/// instead of once per request (that lookup built a label string and hashed
/// the key: ~0.4 µs of every request in BENCHMARKS.md's profile).
struct RouteMetrics {
    /// Requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx (registered on first use).
    requests: [Option<Counter>; 5],
    duration: Histogram,
}

thread_local! {
    static ROUTE_METRICS: RefCell<HashMap<Box<str>, RouteMetrics, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One request served: `route` is the route template (bounded cardinality).
pub fn http_request(route: &str, status: u16, seconds: f64) {
    let class = usize::from(status / 100).clamp(1, 5) - 1;
    ROUTE_METRICS.with_borrow_mut(|routes| {
        if !routes.contains_key(route) {
            let duration = metrics::histogram!(
                "sp_broker_http_request_duration_seconds", "route" => route.to_owned()
            );
            routes.insert(
                route.into(),
                RouteMetrics {
                    requests: Default::default(),
                    duration,
                },
            );
        }
        let Some(metrics) = routes.get_mut(route) else {
            return;
        };
        metrics.requests[class]
            .get_or_insert_with(|| {
                metrics::counter!(
                    "sp_broker_http_requests_total",
                    "route" => route.to_owned(),
                    "status" => STATUS_CLASSES[class]
                )
            })
            .increment(1);
        metrics.duration.record(seconds);
    });
}

/// One connection the health sweep dealt with, by outcome.
pub fn sweep_connection(outcome: &'static str) {
    metrics::counter!("sp_broker_sweep_connections_total", "outcome" => outcome).increment(1);
}

/// A sweep pass ended (Unix seconds).
pub fn sweep_pass_done(at_unix: i64) {
    metrics::counter!("sp_broker_sweep_passes_total").increment(1);
    metrics::gauge!("sp_broker_sweep_last_pass_timestamp_seconds").set(at_unix as f64);
}

/// One webhook delivery attempt, by outcome (delivered, failed, given_up).
pub fn webhook_attempt(outcome: &'static str) {
    metrics::counter!("sp_broker_webhook_attempts_total", "outcome" => outcome).increment(1);
}

/// A consent attempt's step: started (sent to Amazon), returned (Amazon's
/// callback arrived), then connected or failed.
pub fn consent(step: &'static str) {
    metrics::counter!("sp_broker_consent_attempts_total", "step" => step).increment(1);
}
