//! Every rejection in our own shape (CONTRACT §10): framework refusals as
//! problem+json under `/v1`, LWA's shape on `/auth/o2/token`, the HTML page
//! with the full header set elsewhere; a page POST without a valid CSRF
//! token is 403 whatever its body; NUL and control characters are 422;
//! `POST /logout` ends the session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::token_support::*;
use serde_json::json;

fn assert_page(response: &reqwest::Response, status: u16) {
    assert_eq!(response.status().as_u16(), status);
    let headers = response.headers();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{headers:?}"
    );
    for name in [
        "content-security-policy",
        "x-frame-options",
        "x-content-type-options",
        "referrer-policy",
    ] {
        assert!(headers.contains_key(name), "{name} missing: {headers:?}");
    }
}

#[tokio::test]
async fn framework_rejections_under_v1_are_problem_json() {
    let app = TestApp::spawn().await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let client = reqwest::Client::new();
    let tenants = || async {
        get(&app, "/v1/tenants", &admin).await.body["items"]
            .as_array()
            .map(Vec::len)
            .unwrap_or_default()
    };
    let before = tenants().await;

    let put = Answer::read(
        client
            .put(app.url("/v1/tenants"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let problem = assert_problem(&put, 405, "method_not_allowed");
    assert!(problem["detail"].as_str().unwrap().contains("Allow"));
    assert!(put.header("allow").unwrap().contains("POST"));

    let text = Answer::read(
        client
            .post(app.url("/v1/tenants"))
            .bearer_auth(&admin)
            .header("content-type", "text/plain")
            .body(r#"{"slug":"plain-text"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_problem(&text, 415, "invalid_request");

    let huge = Answer::read(
        client
            .post(app.url("/v1/tenants"))
            .bearer_auth(&admin)
            .json(&json!({"slug": "huge", "name": "x".repeat(100 * 1024)}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(huge.status / 100, 4, "{}", huge.text);
    assert!(huge
        .header("content-type")
        .unwrap()
        .starts_with("application/problem+json"));

    let bad_utf8 = Answer::read(
        client
            .get(app.url("/v1/connections/%FF%FE"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bad_utf8.status / 100, 4);
    assert!(
        bad_utf8
            .header("content-type")
            .unwrap()
            .starts_with("application/problem+json"),
        "{}",
        bad_utf8.text
    );

    let bad_query = Answer::read(
        client
            .get(app.url("/v1/tenants/acme/connections?limit=%FF"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        bad_query
            .header("content-type")
            .unwrap()
            .starts_with("application/problem+json"),
        "{}",
        bad_query.text
    );
    assert_eq!(tenants().await, before, "nothing was created");
}

#[tokio::test]
async fn the_lwa_endpoint_refuses_in_lwas_shape_and_pages_with_the_html_page() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let get_token = Answer::read(client.get(app.url("/auth/o2/token")).send().await.unwrap()).await;
    assert_eq!(get_token.status, 405);
    assert_eq!(get_token.body["error"], "invalid_request");
    assert!(get_token.body["error_description"].is_string());
    let oversized = Answer::read(
        client
            .post(app.url("/auth/o2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=refresh_token&refresh_token={}",
                "x".repeat(100 * 1024)
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(oversized.status, 400);
    assert_eq!(oversized.body["error"], "invalid_request");

    let delete_page = client
        .delete(app.url("/settings/connections"))
        .send()
        .await
        .unwrap();
    assert_page(&delete_page, 405);
    let unknown = client.get(app.url("/no/such/page")).send().await.unwrap();
    assert_page(&unknown, 404);
    let bad_path = client
        .get(app.url("/ops/connections/%FF"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_path.status().as_u16() / 100, 4);
    assert!(bad_path.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
}

#[tokio::test]
async fn a_page_post_without_a_valid_csrf_token_is_403_whatever_its_body() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let connect = format!("{}/settings/connections/connect", app.base);
    let empty = browser.client.post(&connect).send().await.unwrap();
    assert_page(&empty, 403);
    let json = browser
        .client
        .post(&connect)
        .header("content-type", "application/json")
        .body(r#"{"csrf_token":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_page(&json, 403);
    let huge = browser
        .client
        .post(&connect)
        .form(&[
            ("csrf_token", browser.csrf.as_str()),
            ("marketplace_id", &"x".repeat(100 * 1024)),
        ])
        .send()
        .await
        .unwrap();
    assert_page(&huge, 403);
    let garbage = browser
        .client
        .post(&connect)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![0xff, 0xfe, b'=', 0xfd])
        .send()
        .await
        .unwrap();
    assert_page(&garbage, 403);
    assert_eq!(oauth_state_count(&app).await, 0, "nothing was started");
}

async fn oauth_state_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from oauth_state")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn nul_and_control_characters_are_refused_with_422_and_a_clear_cli_message() {
    let app = TestApp::spawn().await;
    let admin = app
        .api_key(None, &["tenants:admin", "connections:manage"])
        .await;
    app.create_tenant("acme").await;
    for body in [
        json!({"slug": "nul-name", "name": "a\u{0}b"}),
        json!({"slug": "bell-name", "name": "a\u{7}b"}),
    ] {
        let answer = post(&app, "/v1/tenants", &admin, body).await;
        assert_problem(&answer, 422, "invalid_request");
    }
    for body in [
        json!({"user_id": "u\u{0}1"}),
        json!({"user_id": "u1", "email": "a\u{0}@example.com"}),
        json!({"user_id": "u\u{1b}[31m"}),
    ] {
        let answer = post(&app, "/v1/tenants/acme/login-links", &admin, body).await;
        assert_problem(&answer, 422, "invalid_request");
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sp-broker"))
        .args(["tenant", "create", "nul-cli", "--name", "a\u{7}b"])
        .env("DATABASE_URL", app.db.url())
        .env("SP_BROKER_LOG", "warn")
        .env("SP_BROKER_ENCRYPTION_KEYS", TEST_KEY)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("control character") || stderr.contains("NAME"),
        "{stderr}"
    );
    let count: i64 = sqlx::query_scalar("select count(*) from tenant")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1, "nothing stored");
}

#[tokio::test]
async fn logout_ends_the_session_and_needs_its_csrf_token() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let sessions = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from browser_session")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let page = browser.page().await;
    assert!(page.contains("action=\"/logout\""), "a Sign out button");
    let forged = browser
        .client
        .post(app.url("/logout"))
        .form(&[("csrf_token", "forged")])
        .send()
        .await
        .unwrap();
    assert_page(&forged, 403);
    assert_eq!(sessions().await, 1, "the session is kept");
    let out = browser
        .client
        .post(app.url("/logout"))
        .form(&[("csrf_token", browser.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(location(&out), "/signed-out");
    assert_eq!(sessions().await, 0, "its row is deleted");
    let signed_out = browser
        .client
        .get(app.url("/signed-out"))
        .send()
        .await
        .unwrap();
    assert_page(&signed_out, 200);
    let after = browser
        .client
        .get(app.url("/settings/connections"))
        .send()
        .await
        .unwrap();
    assert_ne!(after.status(), 200, "no longer signed in");
}
