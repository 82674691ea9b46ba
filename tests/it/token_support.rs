//! Helpers shared by the token API, refresh engine and API route tests: calls
//! to the `/v1` API with their answers read once, problem+json checks, and a
//! Login with Amazon token endpoint played by wiremock (so faults and the
//! number of requests reaching it can be controlled and counted).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A refresh token whose value must never leave the broker.
pub const CANARY_REFRESH: &str = "Atzr|CANARY-REFRESH-7f3a";

/// One HTTP answer, read once.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            text,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// `Retry-After` as whole seconds (it must be one).
    pub fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .unwrap_or_else(|| panic!("Retry-After missing: {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After is not a number of seconds: {self:?}"))
    }

    /// Every header name and value, for "nothing secret anywhere" checks.
    pub fn headers_text(&self) -> String {
        self.headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect()
    }

    pub fn access_token(&self) -> &str {
        self.body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {self:?}"))
    }
}

/// Checks an RFC 9457 problem answer: status, `code`, content type, and the
/// members every problem has. Returns the body.
pub fn assert_problem(answer: &Answer, status: u16, code: &str) -> Value {
    assert_eq!(answer.status, status, "status of {answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "content type of {answer:?}"
    );
    let body = &answer.body;
    assert_eq!(body["code"], code, "code of {answer:?}");
    assert_eq!(body["status"], status, "status member of {answer:?}");
    for member in ["type", "title", "detail"] {
        assert!(
            body[member].as_str().is_some_and(|s| !s.is_empty()),
            "problem member `{member}` missing in {answer:?}"
        );
    }
    body.clone()
}

pub async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = client.request(method, url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    Answer::read(request.send().await.unwrap()).await
}

pub async fn get(app: &TestApp, path: &str, key: &str) -> Answer {
    call(
        &reqwest::Client::new(),
        reqwest::Method::GET,
        &app.url(path),
        Some(key),
        None,
    )
    .await
}

pub async fn post(app: &TestApp, path: &str, key: &str, body: Value) -> Answer {
    call(
        &reqwest::Client::new(),
        reqwest::Method::POST,
        &app.url(path),
        Some(key),
        Some(body),
    )
    .await
}

/// `POST {base}/v1/connections/{id}/access-token`.
pub async fn access_token_at(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    id: Uuid,
    body: Value,
) -> Answer {
    call(
        client,
        reqwest::Method::POST,
        &format!("{base}/v1/connections/{id}/access-token"),
        Some(key),
        Some(body),
    )
    .await
}

pub async fn access_token(app: &TestApp, key: &str, id: Uuid, body: Value) -> Answer {
    access_token_at(&reqwest::Client::new(), &app.base, key, id, body).await
}

/// LWA's success answer.
pub fn lwa_tokens(access_token: &str, refresh_token: &str, expires_in: i64) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("cache-control", "no-store")
        .set_body_json(json!({
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "bearer",
            "expires_in": expires_in,
        }))
}

/// LWA's JSON error answer.
pub fn lwa_error(status: u16, error: &str, description: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"error": error, "error_description": description}))
}

pub fn invalid_grant_for_refresh() -> ResponseTemplate {
    lwa_error(
        400,
        "invalid_grant",
        "The request has an invalid grant parameter : refresh_token. User may have revoked or didn't grant the permission.",
    )
}

pub fn invalid_client() -> ResponseTemplate {
    lwa_error(401, "invalid_client", "Client authentication failed")
}

/// Mounts `template` as the answer to every refresh grant.
pub async fn on_refresh(mock: &MockServer, template: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(template)
        .mount(mock)
        .await;
}

/// A token endpoint double answering every refresh grant with `template`.
pub async fn lwa_answering_refresh(template: ResponseTemplate) -> MockServer {
    let mock = MockServer::start().await;
    on_refresh(&mock, template).await;
    mock
}

pub fn lwa_url(mock: &MockServer) -> String {
    format!("{}/auth/o2/token", mock.uri())
}

/// The app (sandbox mode otherwise) with LWA played by `mock`.
pub async fn spawn_with_lwa(mock: &MockServer) -> TestApp {
    let url = lwa_url(mock);
    TestApp::spawn_with(move |s| s.lwa_token_url = Some(url)).await
}

/// The form bodies of the refresh grants `mock` received.
pub async fn refresh_forms(mock: &MockServer) -> Vec<Vec<(String, String)>> {
    mock.received_requests()
        .await
        .expect("request recording is on")
        .iter()
        .filter(|r| r.url.path() == "/auth/o2/token")
        .map(|r| {
            url::form_urlencoded::parse(&r.body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect::<Vec<_>>()
        })
        .filter(|form| {
            form.iter()
                .any(|(k, v)| k == "grant_type" && v == "refresh_token")
        })
        .collect()
}

/// How many refresh grants reached `mock`.
pub async fn refresh_requests(mock: &MockServer) -> usize {
    refresh_forms(mock).await.len()
}

/// How many refresh grants for `refresh_token` reached `mock`.
pub async fn refresh_requests_for(mock: &MockServer, refresh_token: &str) -> usize {
    refresh_forms(mock)
        .await
        .iter()
        .filter(|form| {
            form.iter()
                .any(|(k, v)| k == "refresh_token" && v == refresh_token)
        })
        .count()
}

/// `time::Duration` in seconds, for seeding.
pub fn secs(seconds: i64) -> time::Duration {
    time::Duration::seconds(seconds)
}

pub const SHORT: Duration = Duration::from_millis(300);

/// The connection as `GET /v1/connections/{id}` shows it.
pub async fn connection(app: &TestApp, key: &str, id: Uuid) -> Value {
    let answer = get(app, &format!("/v1/connections/{id}"), key).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body
}

/// How many audit events with `action` concern connection `id`.
pub async fn audit_count(app: &TestApp, action: &str, id: Option<Uuid>) -> i64 {
    sqlx::query_scalar(
        "select count(*) from audit_event where action = $1 and ($2::uuid is null or connection_id = $2)",
    )
    .bind(action)
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}
