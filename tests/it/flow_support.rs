//! Helpers shared by the authorization-flow tests (kept apart from
//! `tests/common` so the browser test's harness stays untouched): a Login with
//! Amazon token endpoint test double (wiremock), database counters, and checks
//! for the pages the broker answers with.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use serde_json::json;
use sp_broker::config::Settings;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const US: &str = "ATVPDKIKX0DER";
pub const GERMANY: &str = "A1PA6795UKMFR9";
pub const JAPAN: &str = "A1VC38T7YXB528";

pub const LIVE_APP_ID: &str = "amzn1.sp.solution.test-live-app";
pub const LIVE_CLIENT_ID: &str = "amzn1.application-oa2-client.test-live";

/// A live-mode configuration (real Amazon hosts), as a `spawn_with` edit.
/// Nothing in the tests that use it follows a redirect to Amazon.
pub fn live(s: &mut Settings) {
    s.amazon = Some("live".into());
    s.app_id = Some(LIVE_APP_ID.into());
    s.lwa_client_id = Some(LIVE_CLIENT_ID.into());
    s.lwa_client_secret = Some("live-test-secret".into());
}

/// A token endpoint double answering every request with `tokens`.
pub async fn token_double_answering(template: ResponseTemplate) -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .respond_with(template)
        .mount(&mock)
        .await;
    mock
}

/// LWA's success answer to a code exchange.
pub fn tokens_answer(refresh_token: &str, access_token: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": access_token,
        "refresh_token": refresh_token,
        "token_type": "bearer",
        "expires_in": 3600,
    }))
}

/// LWA's answer to a code it does not accept.
pub fn invalid_grant_answer() -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(json!({
        "error": "invalid_grant",
        "error_description": "The request has an invalid grant parameter : code",
    }))
}

/// A token endpoint double that hands out fixed tokens for any code.
pub async fn token_double() -> MockServer {
    token_double_answering(tokens_answer(
        "Atzr|double-refresh-token",
        "Atza|double-access-token",
    ))
    .await
}

pub fn token_url(mock: &MockServer) -> String {
    format!("{}/auth/o2/token", mock.uri())
}

/// The sandbox (consent page, SP-API) with the token endpoint replaced by `mock`.
pub async fn spawn_with_token_double(mock: &MockServer) -> TestApp {
    let url = token_url(mock);
    TestApp::spawn_with(move |s| s.lwa_token_url = Some(url)).await
}

/// How many requests reached the token endpoint double.
pub async fn token_requests(mock: &MockServer) -> usize {
    mock.received_requests()
        .await
        .expect("request recording is on")
        .iter()
        .filter(|r| r.url.path() == "/auth/o2/token")
        .count()
}

/// The form fields of every request the token endpoint double received.
pub async fn token_request_forms(mock: &MockServer) -> Vec<Vec<(String, String)>> {
    mock.received_requests()
        .await
        .expect("request recording is on")
        .iter()
        .filter(|r| r.url.path() == "/auth/o2/token")
        .map(|r| {
            url::form_urlencoded::parse(&r.body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .collect()
}

pub async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

pub async fn connection_count(app: &TestApp) -> i64 {
    count(app, "connection").await
}

pub async fn oauth_state_count(app: &TestApp) -> i64 {
    count(app, "oauth_state").await
}

/// A connection as stored: what a refused request must leave exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredConnection {
    pub id: uuid::Uuid,
    pub tenant_id: uuid::Uuid,
    pub selling_partner_id: String,
    pub status: String,
    pub region: String,
    pub account_type: String,
    pub marketplace_id: String,
    pub refresh_token_sealed: Option<Vec<u8>>,
    pub access_token_sealed: Option<Vec<u8>>,
    pub authorized_at: Option<time::OffsetDateTime>,
    pub updated_at: time::OffsetDateTime,
}

pub async fn stored_connections(app: &TestApp) -> Vec<StoredConnection> {
    sqlx::query_as(
        "select id, tenant_id, selling_partner_id, status, region, account_type, marketplace_id,
                refresh_token_sealed, access_token_sealed, authorized_at, updated_at
         from connection order by created_at, id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

pub async fn stored_connection(app: &TestApp, id: &str) -> StoredConnection {
    let id = uuid::Uuid::parse_str(id).unwrap();
    stored_connections(app)
        .await
        .into_iter()
        .find(|c| c.id == id)
        .expect("the connection is stored")
}

/// Connect → sandbox consent (Confirm as `selling_partner_id`); returns the URL
/// Amazon sends the browser back to, without opening it.
pub async fn callback_url(
    browser: &Browser,
    marketplace_id: &str,
    selling_partner_id: &str,
) -> String {
    let connect = browser.connect(marketplace_id, "seller").await;
    assert_eq!(connect.status(), 303, "connect answers 303 to Amazon");
    browser
        .consent(&location(&connect), selling_partner_id)
        .await
}

/// The same URL with one query parameter replaced (or added).
pub fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for (k, v) in &pairs {
            query.append_pair(k, v);
        }
        query.append_pair(name, value);
    }
    parsed.to_string()
}

/// The same URL without one query parameter.
pub fn without_param(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.to_string()
}

/// Every query parameter of a URL, in order.
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Checks a refusal: the status, an HTML page (no redirect) that says what
/// happened and links to start again. Returns the page.
pub async fn assert_refusal_page(response: reqwest::Response, status: u16, what: &str) -> String {
    assert_eq!(response.status(), status, "{what}: status");
    assert_eq!(header(&response, "location"), None, "{what}: no redirect");
    let content_type = header(&response, "content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/html"),
        "{what}: an HTML page, got {content_type}"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("<h1>"), "{what}: a titled page: {body}");
    assert!(
        body.contains("href=\"/settings/connections\""),
        "{what}: a link to start again from the Connections page: {body}"
    );
    assert!(
        body.to_lowercase().contains("again"),
        "{what}: offers to start again: {body}"
    );
    body
}

/// The text of the `role="status"` element, if the page has one.
pub fn status_message(html: &str) -> Option<String> {
    let start = html.find("role=\"status\"")?;
    let open_end = html[start..].find('>')? + start + 1;
    let close = html[open_end..].find('<')? + open_end;
    Some(
        html[open_end..close]
            .replace("&#x27;", "'")
            .replace("&#39;", "'")
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .trim()
            .to_owned(),
    )
}

/// Rows of the Connections page with the given selling partner id.
pub fn rows_for(html: &str, selling_partner_id: &str) -> Vec<(String, String, String)> {
    connection_rows(html)
        .into_iter()
        .filter(|(_, spid, _)| spid == selling_partner_id)
        .collect()
}

/// `pg_dump` of the test's database (schema and data, bytea in hex), or
/// `None` when pg_dump is not installed.
pub async fn pg_dump(app: &TestApp) -> Option<String> {
    let database: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| sp_broker::config::DEFAULT_DATABASE_URL.to_owned());
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&format!("/{database}"));
    let output = std::process::Command::new("pg_dump")
        .arg("--no-owner")
        .arg(url.as_str())
        .output();
    match output {
        Ok(output) => {
            assert!(
                output.status.success(),
                "pg_dump failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            Some(String::from_utf8(output.stdout).unwrap())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("pg_dump is not installed: checking the column dump only");
            None
        }
        Err(e) => panic!("pg_dump: {e}"),
    }
}

/// `value` as PostgreSQL's hex bytea output writes it.
pub fn bytea_hex(value: &str) -> String {
    value.bytes().map(|b| format!("{b:02x}")).collect()
}
