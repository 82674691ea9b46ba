//! The sandbox Amazon: a simulated Seller Central consent page, LWA token
//! endpoint and the SP-API calls sp-broker makes, served under `/sandbox` in
//! sandbox mode only. It speaks Amazon's protocol (parameters, error shapes,
//! single-use 5-minute codes) so the real HTTP code paths run against it.
//!
//! Its own state (codes, grants, access tokens) lives in `sandbox_*` tables,
//! hashed like every other credential, so a restart does not log sellers out.

pub mod client_secrets;
pub mod token;

use crate::clock::Clock;
use crate::config::Config;
use crate::http::pages::{render, PageError};
use crate::secrets;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use time::{Duration, OffsetDateTime};

pub const CODE_LIFETIME: Duration = Duration::minutes(5);
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::hours(1);
/// The selling partner id the consent page suggests: stable, so reconnecting
/// from the sandbox reaches the same connection.
pub const DEMO_SELLING_PARTNER_ID: &str = "A1SANDBOXSELLER";

/// The simulated Amazon's own handles: its database tables, its clock, and
/// the one app it knows (sp-broker's identifiers and redirect URI).
pub struct Sandbox {
    db: sqlx::PgPool,
    clock: std::sync::Arc<dyn Clock>,
    app_id: String,
    client_id: String,
    /// The app's first secrets (seeded into `sandbox_client_secret` once).
    client_secrets: Vec<secrecy::SecretString>,
    secrets_seeded: tokio::sync::OnceCell<()>,
    redirect_uri: String,
    /// Where the rotation's notification is delivered (sp-broker itself).
    credentials: std::sync::Arc<crate::broker::AppCredentials>,
}

impl Sandbox {
    pub fn new(
        db: sqlx::PgPool,
        clock: std::sync::Arc<dyn Clock>,
        config: &Config,
        credentials: std::sync::Arc<crate::broker::AppCredentials>,
    ) -> Self {
        Sandbox {
            db,
            clock,
            app_id: config.app_id.clone(),
            client_id: config.lwa_client_id.clone(),
            client_secrets: config.lwa_client_secrets.clone(),
            secrets_seeded: tokio::sync::OnceCell::new(),
            redirect_uri: config.redirect_uri(),
            credentials,
        }
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }
}

type SandboxState = State<std::sync::Arc<Sandbox>>;

/// The sandbox's routes, to be nested under `/sandbox`.
pub fn router<S>(sandbox: std::sync::Arc<Sandbox>) -> Router<S> {
    Router::new()
        .route("/", get(home))
        .route("/apps/authorize/consent", get(consent_page))
        .route("/apps/authorize/confirm", post(confirm))
        .route("/apps/authorize/cancelled", get(cancelled))
        .route("/auth/o2/token", post(token::token_endpoint))
        .route(
            "/sellers/v1/marketplaceParticipations",
            get(marketplace_participations),
        )
        .route(
            "/tokens/2021-03-01/restrictedDataToken",
            post(restricted_data_token),
        )
        .route("/revoke", post(revoke))
        .route(
            "/applications/2023-11-30/clientSecret",
            post(client_secrets::rotate),
        )
        .with_state(sandbox)
}

#[derive(Template)]
#[template(path = "sandbox_consent.html")]
struct ConsentPage<'a> {
    app_name: &'a str,
    application_id: &'a str,
    redirect_uri: &'a str,
    state: &'a str,
    selling_partner_id: &'a str,
}

fn amazon_error(code: &str, message: &str) -> PageError {
    PageError::new(
        StatusCode::BAD_REQUEST,
        format!("We're sorry! ({code})"),
        message.to_owned(),
    )
}

/// Where Amazon would send the seller after Confirm: the state and
/// redirect URI to carry. The Login URI flow arrives with `amazon_state`.
fn consent_target<'a>(
    state: &Sandbox,
    params: &'a HashMap<String, String>,
) -> Result<(&'a str, &'a str), PageError> {
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if get("amazon_state").is_none() && get("application_id") != Some(state.app_id.as_str()) {
        return Err(amazon_error(
            "MD1000",
            "The application id is missing or not a registered application.",
        ));
    }
    let redirect_uri = get("redirect_uri").unwrap_or_default();
    // The only registered redirect URI is sp-broker's own callback.
    if !redirect_uri.is_empty() && redirect_uri != state.redirect_uri {
        return Err(amazon_error(
            "MD5101",
            "The redirect_uri is not one of the application's registered redirect URIs.",
        ));
    }
    let oauth_state =
        get("state").ok_or_else(|| amazon_error("MD9100", "The state parameter is missing."))?;
    Ok((oauth_state, redirect_uri))
}

/// `GET /sandbox/apps/authorize/consent`
async fn consent_page(
    State(state): SandboxState,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let (oauth_state, redirect_uri) = consent_target(&state, &params)?;
    let suggested = params
        .get("selling_partner_id")
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .unwrap_or(DEMO_SELLING_PARTNER_ID);
    render(&ConsentPage {
        app_name: "your sp-broker app",
        application_id: &state.app_id,
        redirect_uri: if redirect_uri.is_empty() {
            ""
        } else {
            redirect_uri
        },
        state: oauth_state,
        selling_partner_id: suggested,
    })
}

#[derive(Debug, Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    selling_partner_id: String,
}

/// `POST /sandbox/apps/authorize/confirm`: issues a single-use 5-minute code and
/// sends the browser back to the app, as Amazon does.
/// The sandbox's own forms are not to be posted from other sites (Amazon has
/// its own CSRF defences; these are the sandbox's).
fn refuse_cross_site(headers: &HeaderMap) -> Result<(), PageError> {
    let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if matches!(site, Some(b"cross-site" | b"same-site")) {
        return Err(amazon_error(
            "MD9300",
            "This form must be sent from the sandbox's own page.",
        ));
    }
    Ok(())
}

async fn confirm(
    State(state): SandboxState,
    headers: HeaderMap,
    Form(form): Form<ConfirmForm>,
) -> Result<Response, PageError> {
    refuse_cross_site(&headers)?;
    let spid = form.selling_partner_id.trim();
    if spid.is_empty() || spid.len() > 64 || !spid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(amazon_error(
            "MD9200",
            "Enter a selling partner id of letters and digits.",
        ));
    }
    if form.state.is_empty() {
        return Err(amazon_error("MD9100", "The state parameter is missing."));
    }
    let redirect_uri = if form.redirect_uri.is_empty() {
        state.redirect_uri.clone()
    } else {
        form.redirect_uri.clone()
    };
    if redirect_uri != state.redirect_uri {
        return Err(amazon_error(
            "MD5101",
            "The redirect_uri is not one of the application's registered redirect URIs.",
        ));
    }
    let code = format!("ANsbx{}", secrets::random_token(24).expose_secret());
    sqlx::query(
        "insert into sandbox_authorization_code (code_hash, selling_partner_id, client_id, redirect_uri, expires_at)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(secrets::sha256(&code))
    .bind(spid)
    .bind(&state.client_id)
    .bind(&redirect_uri)
    .bind(state.now() + CODE_LIFETIME)
    .execute(&state.db)
    .await?;
    let mut target =
        url::Url::parse(&redirect_uri).map_err(|_| amazon_error("MD5101", "Bad redirect_uri."))?;
    target
        .query_pairs_mut()
        .append_pair("state", &form.state)
        .append_pair("selling_partner_id", spid)
        .append_pair("spapi_oauth_code", &code);
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, target.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response())
}

async fn cancelled() -> PageError {
    PageError::new(
        StatusCode::OK,
        "Authorization cancelled",
        "You did not authorize the application. As on Amazon, nothing is sent back to it; you can close this page.",
    )
}

#[derive(Template)]
#[template(path = "sandbox_home.html")]
struct HomePage {
    message: Option<String>,
    sellers: Vec<SellerRow>,
}

#[derive(sqlx::FromRow)]
struct SellerRow {
    selling_partner_id: String,
    grants: i64,
    revoked: i64,
}

async fn sellers(state: &Sandbox) -> Result<Vec<SellerRow>, sqlx::Error> {
    sqlx::query_as(
        "select selling_partner_id, count(*) as grants, count(revoked_at) as revoked
         from sandbox_grant group by selling_partner_id order by selling_partner_id",
    )
    .fetch_all(&state.db)
    .await
}

/// `GET /sandbox`: the sandbox sellers, with a control to revoke each.
async fn home(State(state): SandboxState) -> Result<Response, PageError> {
    render(&HomePage {
        message: None,
        sellers: sellers(&state).await?,
    })
}

#[derive(Debug, Deserialize)]
struct RevokeForm {
    #[serde(default)]
    selling_partner_id: String,
}

/// `POST /sandbox/revoke`: the seller revokes the app (Manage Your Apps).
/// Every refresh token of that seller answers `invalid_grant` from now on.
async fn revoke(
    State(state): SandboxState,
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> Result<Response, PageError> {
    refuse_cross_site(&headers)?;
    let revoked = state.revoke_seller(&form.selling_partner_id).await?;
    let message = format!(
        "Revoked {revoked} authorization(s) of {}.",
        form.selling_partner_id
    );
    render(&HomePage {
        message: Some(message),
        sellers: sellers(&state).await?,
    })
}

impl Sandbox {
    /// The seller revokes every authorization of the app (Manage Your Apps).
    pub async fn revoke_seller(&self, selling_partner_id: &str) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query("update sandbox_grant set revoked_at = $2 where selling_partner_id = $1 and revoked_at is null")
            .bind(selling_partner_id)
            .bind(self.now())
            .execute(&self.db)
            .await?
            .rows_affected())
    }
}

/// SP-API's answer to a missing, expired or unknown access token.
pub fn spapi_unauthorized(details: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"errors": [{
            "code": "Unauthorized",
            "message": "Access to requested resource is denied.",
            "details": details,
        }]})),
    )
        .into_response()
}

/// Checks `x-amz-access-token`; returns the seller it was issued for.
pub async fn seller_of_access_token(
    state: &Sandbox,
    headers: &HeaderMap,
) -> Result<Option<String>, Response> {
    let Some(token) = headers
        .get("x-amz-access-token")
        .and_then(|v| v.to_str().ok())
    else {
        return Err(spapi_unauthorized(
            "The access token you provided is revoked, malformed or invalid.",
        ));
    };
    let row: Option<(Option<String>, OffsetDateTime)> = sqlx::query_as(
        "select selling_partner_id, expires_at from sandbox_access_token where token_hash = $1",
    )
    .bind(secrets::sha256(token))
    .fetch_optional(&state.db)
    .await
    .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "sandbox database error").into_response())?;
    match row {
        None => Err(spapi_unauthorized(
            "The access token you provided is revoked, malformed or invalid.",
        )),
        Some((_, expires_at)) if expires_at <= state.now() => Err(spapi_unauthorized(
            "The access token you provided has expired.",
        )),
        Some((seller, _)) => Ok(seller),
    }
}

/// `GET /sandbox/sellers/v1/marketplaceParticipations`
async fn marketplace_participations(State(state): SandboxState, headers: HeaderMap) -> Response {
    let seller = match seller_of_access_token(&state, &headers).await {
        Ok(Some(seller)) => seller,
        Ok(None) => {
            return spapi_unauthorized(
                "The access token you provided is revoked, malformed or invalid.",
            )
        }
        Err(response) => return response,
    };
    let store = format!("Sandbox Store {seller}");
    let entry = |id: &str,
                 name: &str,
                 country: &str,
                 currency: &str,
                 language: &str,
                 domain: &str| {
        json!({
            "marketplace": {"id": id, "name": name, "countryCode": country, "defaultCurrencyCode": currency,
                            "defaultLanguageCode": language, "domainName": domain},
            "participation": {"isParticipating": true, "hasSuspendedListings": false},
            "storeName": store,
        })
    };
    Json(json!({"payload": [
        entry("ATVPDKIKX0DER", "Amazon.com", "US", "USD", "en_US", "www.amazon.com"),
        entry("A2EUQ1WTGCTBG2", "Amazon.ca", "CA", "CAD", "en_CA", "www.amazon.ca"),
    ]}))
    .into_response()
}

/// `POST /sandbox/tokens/2021-03-01/restrictedDataToken`
async fn restricted_data_token(
    State(state): SandboxState,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match seller_of_access_token(&state, &headers).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return spapi_unauthorized(
                "The access token you provided is revoked, malformed or invalid.",
            )
        }
        Err(response) => return response,
    }
    let resources = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("restrictedResources")
                .and_then(|r| r.as_array())
                .map(Vec::len)
        });
    if !matches!(resources, Some(1..=50)) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": [{"code": "InvalidInput", "message": "restrictedResources must hold 1 to 50 resources"}]})),
        )
            .into_response();
    }
    let token = format!("Atz.sprdt|sbx{}", secrets::random_token(48).expose_secret());
    Json(json!({"restrictedDataToken": token, "expiresIn": 3600})).into_response()
}
