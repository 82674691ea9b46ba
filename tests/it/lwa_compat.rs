//! `POST /auth/o2/token`, the Login-with-Amazon-compatible endpoint (CONTRACT
//! §9), over plain HTTP: both grants, both ways of sending the client
//! secret, and every refusal in LWA's own shape. Amazon is a wiremock double
//! (or the sandbox) so the calls reaching it can be counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::token_support::*;
use base64::Engine;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;
use wiremock::ResponseTemplate;

const CACHED: &str = "Atza|cached-for-the-sdk";
const FRESH: &str = "Atza|fresh-for-the-sdk";
const REFRESH: &str = "Atzr|never-leaves-the-broker";

/// POSTs `form` to the LWA-compatible endpoint, as an SDK does.
async fn lwa(app: &TestApp, form: &[(&str, &str)]) -> Answer {
    Answer::read(
        reqwest::Client::new()
            .post(app.url("/auth/o2/token"))
            .form(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn lwa_basic(app: &TestApp, client_id: &str, secret: &str, form: &[(&str, &str)]) -> Answer {
    Answer::read(
        reqwest::Client::new()
            .post(app.url("/auth/o2/token"))
            .basic_auth(client_id, Some(secret))
            .form(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn lwa_raw(app: &TestApp, content_type: Option<&str>, body: &'static str) -> Answer {
    let mut request = reqwest::Client::new()
        .post(app.url("/auth/o2/token"))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    Answer::read(request.send().await.unwrap()).await
}

/// An LWA error: status, `error`, a description, `no-store`; no other member.
fn assert_lwa_error(answer: &Answer, status: u16, error: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.body["error"], error, "{answer:?}");
    assert!(
        answer.body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{answer:?}"
    );
    let keys: BTreeSet<&str> = answer
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["error", "error_description"]));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert!(answer
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
}

fn assert_token_answer(answer: &Answer, token: &str) {
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let keys: BTreeSet<&str> = answer
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["access_token", "token_type", "expires_in"]),
        "LWA's shape, never a refresh token"
    );
    assert_eq!(answer.body["access_token"], token);
    assert_eq!(answer.body["token_type"], "bearer");
    assert!(answer.body["expires_in"].as_i64().unwrap() > 300);
    assert!(!answer.text.contains("Atzr|"));
}

#[tokio::test]
async fn the_refresh_grant_answers_the_access_token_routes_token_with_form_json_or_basic_credentials(
) {
    let mock = lwa_answering_refresh(lwa_tokens(FRESH, REFRESH, 3600)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1SDK", REFRESH, CACHED, secs(2000))
        .await
        .to_string();
    let key = app.api_key(Some("acme"), &[]).await;
    let public_id = key.split('_').nth(1).unwrap_or("any").to_owned();

    let form = lwa(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &id),
            ("client_id", "amzn1.application-oa2-client.whatever"),
            ("client_secret", &key),
        ],
    )
    .await;
    assert_token_answer(&form, CACHED);
    let basic = lwa_basic(
        &app,
        &public_id,
        &key,
        &[("grant_type", "refresh_token"), ("refresh_token", &id)],
    )
    .await;
    assert_token_answer(&basic, CACHED);
    // Amazon's Java and C# SDKs post JSON.
    let json = Answer::read(
        reqwest::Client::new()
            .post(app.url("/auth/o2/token"))
            .json(&serde_json::json!({
                "grant_type": "refresh_token", "refresh_token": id,
                "client_id": "x", "client_secret": key,
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_token_answer(&json, CACHED);
    assert_eq!(refresh_requests(&mock).await, 0, "all from the cache");

    // The same token as the JSON route's, and the same usage counts.
    let route = access_token(&app, &key, id.parse().unwrap(), serde_json::json!({})).await;
    assert_eq!(route.access_token(), CACHED);
    app.services.jobs().flush_usage_once().await.unwrap();
    let issued: i64 =
        sqlx::query_scalar("select coalesce(sum(count), 0)::int8 from token_issue_count")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        issued, 4,
        "three SDK answers and one JSON answer counted alike"
    );

    // Under 300 s left: refreshed, like the route's default min_ttl.
    app.clock.advance(time::Duration::seconds(1800));
    let refreshed = lwa(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &id),
            ("client_secret", &key),
        ],
    )
    .await;
    assert_token_answer(&refreshed, FRESH);
    assert_eq!(refresh_requests(&mock).await, 1);
}

#[tokio::test]
async fn refusals_are_lwas_codes_and_a_foreign_connection_looks_like_an_unknown_one() {
    let mock = lwa_answering_refresh(lwa_tokens(FRESH, REFRESH, 3600)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1REFUSE", REFRESH, CACHED, secs(2000))
        .await
        .to_string();
    let theirs = app
        .seed_connection(
            "other",
            "A1THEIRS",
            "Atzr|theirs",
            "Atza|theirs",
            secs(2000),
        )
        .await
        .to_string();
    let key = app.api_key(Some("acme"), &[]).await;
    let grant = |id: &str, secret: &str| {
        vec![
            ("grant_type".to_owned(), "refresh_token".to_owned()),
            ("refresh_token".to_owned(), id.to_owned()),
            ("client_secret".to_owned(), secret.to_owned()),
        ]
    };
    let send = |form: Vec<(String, String)>| {
        let url = app.url("/auth/o2/token");
        async move {
            Answer::read(
                reqwest::Client::new()
                    .post(url)
                    .form(&form)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };

    // Client authentication.
    let wrong = format!("{key}x");
    assert_lwa_error(&send(grant(&id, &wrong)).await, 401, "invalid_client");
    assert_lwa_error(&send(grant(&id, "not-a-key")).await, 401, "invalid_client");
    let missing = lwa(
        &app,
        &[("grant_type", "refresh_token"), ("refresh_token", &id)],
    )
    .await;
    assert_lwa_error(&missing, 401, "invalid_client");
    let basic = lwa_basic(
        &app,
        "x",
        &wrong,
        &[("grant_type", "refresh_token"), ("refresh_token", &id)],
    )
    .await;
    assert_lwa_error(&basic, 401, "invalid_client");
    assert!(basic
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Basic")));
    let revoked = app.api_key(Some("acme"), &[]).await;
    let public_id = revoked.split('_').nth(1).unwrap().to_owned();
    assert!(app
        .services
        .api_keys
        .revoke(&public_id, "test")
        .await
        .unwrap());
    assert_lwa_error(&send(grant(&id, &revoked)).await, 401, "invalid_client");
    let no_tokens = app.api_key(Some("acme"), &["connections:read"]).await;
    assert_lwa_error(
        &send(grant(&id, &no_tokens)).await,
        400,
        "unauthorized_client",
    );

    // Grants that do not exist for this key: indistinguishable.
    let foreign = send(grant(&theirs, &key)).await;
    assert_lwa_error(&foreign, 400, "invalid_grant");
    let unknown = send(grant(&Uuid::new_v4().to_string(), &key)).await;
    assert_lwa_error(&unknown, 400, "invalid_grant");
    assert_eq!(foreign.body, unknown.body);
    assert_lwa_error(
        &send(grant("Atzr|a-real-looking-refresh-token", &key)).await,
        400,
        "invalid_grant",
    );

    // A connection that needs reauthorization, then a disconnected one.
    sqlx::query("update connection set status = 'needs_reauth', status_reason = 'invalid_grant' where id = $1")
        .bind(id.parse::<Uuid>().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    app.services.broker.forget(id.parse().unwrap());
    let reauth = send(grant(&id, &key)).await;
    assert_lwa_error(&reauth, 400, "invalid_grant");
    assert!(reauth.body["error_description"]
        .as_str()
        .unwrap()
        .contains("Settings → Connections"));
    let tenant = app.find_tenant("acme").await.unwrap();
    app.services
        .connections
        .disconnect(tenant.id, id.parse().unwrap(), "test")
        .await
        .unwrap();
    assert_lwa_error(&send(grant(&id, &key)).await, 400, "invalid_grant");

    // Malformed requests.
    assert_lwa_error(
        &lwa(&app, &[("refresh_token", &theirs), ("client_secret", &key)]).await,
        400,
        "invalid_request",
    );
    assert_lwa_error(
        &lwa(
            &app,
            &[
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("client_secret", &key),
            ],
        )
        .await,
        400,
        "unsupported_grant_type",
    );
    assert_lwa_error(
        &lwa(
            &app,
            &[("grant_type", "refresh_token"), ("client_secret", &key)],
        )
        .await,
        400,
        "invalid_request",
    );
    assert_lwa_error(
        &lwa_raw(
            &app,
            Some("application/x-www-form-urlencoded"),
            "grant_type=refresh_token&grant_type=refresh_token",
        )
        .await,
        400,
        "invalid_request",
    );
    assert_lwa_error(
        &lwa_raw(
            &app,
            Some("application/x-www-form-urlencoded"),
            "grant_type=refresh%00_token",
        )
        .await,
        400,
        "invalid_request",
    );
    assert_lwa_error(
        &lwa_raw(&app, Some("application/json"), "{not json").await,
        400,
        "invalid_request",
    );
    assert_lwa_error(
        &lwa_raw(&app, Some("text/plain"), "grant_type=refresh_token").await,
        400,
        "invalid_request",
    );
    assert_lwa_error(&lwa_raw(&app, None, "").await, 400, "invalid_request");
    let both = lwa_basic(
        &app,
        "x",
        &key,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &theirs),
            ("client_secret", &key),
        ],
    )
    .await;
    assert_lwa_error(&both, 400, "invalid_request");
    let huge = Answer::read(
        reqwest::Client::new()
            .post(app.url("/auth/o2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=refresh_token&pad={}",
                "a".repeat(64 * 1024)
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_lwa_error(&huge, 400, "invalid_request");
    assert_eq!(
        refresh_requests(&mock).await,
        0,
        "no refusal reached Amazon"
    );
}

#[tokio::test]
async fn amazon_down_with_nothing_cached_is_503_temporarily_unavailable_with_retry_after() {
    let mock = lwa_answering_refresh(ResponseTemplate::new(503)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1DOWN", REFRESH, CACHED, secs(-10))
        .await
        .to_string();
    let key = app.api_key(Some("acme"), &[]).await;
    let answer = lwa(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &id),
            ("client_secret", &key),
        ],
    )
    .await;
    assert_lwa_error(&answer, 503, "temporarily_unavailable");
    assert!(answer.retry_after() >= 1);
    // The connection is not blamed.
    let status: String = sqlx::query_scalar("select status from connection where id = $1")
        .bind(id.parse::<Uuid>().unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "active");
}

#[tokio::test]
async fn client_credentials_give_the_grantless_token_to_an_admin_key_only() {
    let app = TestApp::spawn().await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    for scope in [
        "sellingpartnerapi::notifications",
        "sellingpartnerapi::client_credential:rotation",
    ] {
        let answer = lwa(
            &app,
            &[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("client_secret", &admin),
            ],
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let keys: BTreeSet<&str> = answer
            .body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["access_token", "token_type", "expires_in", "scope"])
        );
        assert_eq!(answer.body["scope"], scope);
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        // The sandbox knows the token it issued.
        assert!(!answer.access_token().is_empty());
    }
    let lesser = app
        .api_key(None, &["tokens:issue", "connections:read"])
        .await;
    let refused = lwa(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "sellingpartnerapi::notifications"),
            ("client_secret", &lesser),
        ],
    )
    .await;
    assert_lwa_error(&refused, 400, "unauthorized_client");
    let unknown = lwa(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "sellingpartnerapi::everything"),
            ("client_secret", &admin),
        ],
    )
    .await;
    assert_lwa_error(&unknown, 400, "invalid_scope");
    let missing = lwa(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_secret", &admin),
        ],
    )
    .await;
    assert_lwa_error(&missing, 400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sdk_requests_for_an_expired_token_make_one_call_to_amazon() {
    let mock = lwa_answering_refresh(
        lwa_tokens(FRESH, REFRESH, 3600).set_delay(Duration::from_millis(300)),
    )
    .await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1CROWD", REFRESH, CACHED, secs(10))
        .await
        .to_string();
    let key = app.api_key(Some("acme"), &[]).await;
    let client = reqwest::Client::new();
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("sdk:{key}"));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let request = client.post(app.url("/auth/o2/token")).form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", id.as_str()),
        ]);
        // Half send Basic, half the form.
        let request = if i % 2 == 0 {
            request.header("authorization", format!("Basic {encoded}"))
        } else {
            client.post(app.url("/auth/o2/token")).form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", id.as_str()),
                ("client_secret", key.as_str()),
            ])
        };
        tasks.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (
                status,
                body["access_token"].as_str().unwrap_or_default().to_owned(),
            )
        }));
    }
    for task in tasks {
        let (status, token) = task.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(token, FRESH);
    }
    assert_eq!(
        refresh_requests(&mock).await,
        1,
        "one refresh for 200 callers"
    );
}
