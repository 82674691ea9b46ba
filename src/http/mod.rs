//! HTTP: the router, security headers on every response, request logging
//! (method, route template, status, latency, request id; never a query string
//! or an `Authorization` header), health and readiness.

pub mod api;
pub mod listener;
pub mod lwa_compat;
pub mod metrics;
pub mod oauth;
pub mod pages;
mod rejections;
mod state;

pub use state::AppState;

use crate::config::Config;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::time::Instant;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, SessionManagerLayer};
use tracing::Instrument;

pub const SESSION_COOKIE: &str = "sp_broker_session";

/// Headers set on every response (HTML pages, errors and API alike).
pub struct SecurityHeaders {
    csp: HeaderValue,
    hsts: Option<HeaderValue>,
}

impl SecurityHeaders {
    pub fn new(config: &Config) -> Self {
        // form-action must allow the redirect that follows the Connect form:
        // browsers check redirect targets of a form submission too.
        let mut form_action = String::from("'self'");
        for origin in crate::amazon::consent::consent_origins(config) {
            form_action.push(' ');
            form_action.push_str(&origin);
        }
        let csp = format!(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; \
             frame-ancestors 'none'; base-uri 'none'"
        );
        SecurityHeaders {
            csp: HeaderValue::from_str(&csp)
                .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
            hsts: config
                .is_https
                .then(|| HeaderValue::from_static("max-age=31536000; includeSubDomains")),
        }
    }
}

async fn security_headers(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, state.headers.csp.clone());
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if let Some(hsts) = &state.headers.hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    response
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One span and one log line per request. The path is the route template
/// (`/login/{token}`), so no token or query string ever reaches a log.
async fn log_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("(unmatched)", MatchedPath::as_str);
    let method = request.method().clone();
    // A v4 id from the thread-local generator: no system call per request.
    let request_id = uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string();
    let span = tracing::info_span!("request", id = %request_id, %method, route = %route);
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let latency_us = elapsed.as_micros() as u64;
    crate::metrics::http_request(route, status, elapsed.as_secs_f64());
    span.in_scope(|| tracing::info!(status, latency_us, "request served"));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    match crate::db::migrations_applied(&state.db).await {
        Ok(true) => (StatusCode::OK, "ready").into_response(),
        Ok(false) => (StatusCode::SERVICE_UNAVAILABLE, "migrations pending").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response(),
    }
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../templates/app.css"),
    )
}

pub fn router(state: AppState, sandbox: Option<std::sync::Arc<crate::sandbox::Sandbox>>) -> Router {
    let sessions =
        SessionManagerLayer::new(crate::db::sessions::PgSessionStore::new(state.db.clone()))
            .with_name(SESSION_COOKIE)
            .with_http_only(true)
            .with_same_site(SameSite::Lax)
            .with_secure(state.config.is_https)
            .with_path("/")
            .with_expiry(Expiry::OnInactivity(pages::SESSION_IDLE_TIMEOUT));

    let browser = Router::new()
        .route("/login/{token}", get(pages::login))
        .route("/logout", post(pages::logout))
        .route("/signed-out", get(pages::signed_out))
        .route(
            "/settings/connections",
            get(pages::connections::connections_page),
        )
        .route("/settings/connections/connect", post(oauth::connect_post))
        .route(
            "/settings/connections/{id}/reconnect",
            post(oauth::reconnect_post),
        )
        .route(
            "/settings/connections/{id}/disconnect",
            post(pages::connections::disconnect_post),
        )
        .route("/oauth/amazon/callback", get(oauth::callback))
        .route("/oauth/amazon/login", get(oauth::login_uri))
        .route("/ops", get(pages::ops::ops_page))
        .route("/ops/fuse/clear", post(pages::ops::clear_fuse_post))
        .route(
            "/ops/app/rotate-secret",
            post(pages::ops::rotate_secret_post),
        )
        .route(
            "/ops/connections/{id}",
            get(pages::ops::ops_connection_page),
        )
        .layer(sessions);

    let mut router = Router::new()
        .merge(browser)
        .merge(api::router())
        .route("/auth/o2/token", post(lwa_compat::token))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics_handler))
        .route("/static/app.css", get(stylesheet));
    if let Some(sandbox) = sandbox {
        router = router.nest("/sandbox", crate::sandbox::router(sandbox));
    }
    router
        .fallback(pages::not_found)
        // Forms and every other extractor; the API's and the LWA endpoint's
        // own readers keep the same limit.
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .layer(middleware::from_fn(rejections::render_rejections))
        .layer(middleware::from_fn(log_requests))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
}

/// The client's address as a handler extracts it (see [`client_address`]).
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl axum::extract::FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(client_address(
            &parts.headers,
            &parts.extensions,
            &state.config.trusted_proxies,
        )))
    }
}

/// The client's address (CONTRACT §10): the socket's peer, or, when the
/// peer is one of `SP_BROKER_TRUSTED_PROXIES`, the nearest address in
/// `X-Forwarded-For` that is not a trusted proxy itself. `None` only when
/// the request did not come through the listener (unit tests).
pub fn client_address(
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?
        .0
        .ip();
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return Some(client);
        };
        for hop in value.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else {
                return Some(client);
            };
            client = ip;
            if !is_trusted(&ip) {
                return Some(client);
            }
        }
    }
    Some(client)
}

#[cfg(test)]
mod client_address_tests {
    use super::client_address;
    use axum::extract::ConnectInfo;
    use axum::http::{Extensions, HeaderMap, HeaderValue};
    use std::net::SocketAddr;

    fn from(peer: &str, forwarded: Option<&str>, trusted: &[&str]) -> Option<String> {
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo(peer.parse::<SocketAddr>().ok()?));
        let mut headers = HeaderMap::new();
        if let Some(f) = forwarded {
            headers.insert("x-forwarded-for", HeaderValue::from_str(f).ok()?);
        }
        let trusted: Vec<ipnet::IpNet> = trusted.iter().filter_map(|t| t.parse().ok()).collect();
        client_address(&headers, &extensions, &trusted).map(|ip| ip.to_string())
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let spoofed = Some("198.51.100.7, 10.0.0.1");
        assert_eq!(
            from("203.0.113.5:9", spoofed, &[]).as_deref(),
            Some("203.0.113.5")
        );
        assert_eq!(
            from("10.0.0.2:9", spoofed, &["10.0.0.0/8"]).as_deref(),
            Some("198.51.100.7")
        );
        assert_eq!(
            from("10.0.0.2:9", Some("garbage"), &["10.0.0.0/8"]).as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            from("10.0.0.2:9", None, &["10.0.0.0/8"]).as_deref(),
            Some("10.0.0.2")
        );
    }
}
