//! The refresh engine under concurrency, across instances, and when a seller
//! revokes: one refresh per connection however many callers ask at once (in
//! one process and across several sp-broker servers on one database), other
//! connections never wait for it, a refresh finished by another instance is
//! reused rather than repeated, tokens survive a restart, and `invalid_grant`
//! turns a connection `needs_reauth` for good (no further call to Amazon).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::token_support::*;
use serde_json::json;
use sp_broker::crypto::Purpose;
use std::time::{Duration, Instant};
use uuid::Uuid;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer};

const OLD: &str = "Atza|cached-old-token";
const NEW: &str = "Atza|the-one-new-token";
const REFRESH: &str = "Atzr|seeded-refresh-token";

/// LWA answering refresh grants with `NEW` after `delay`, expecting exactly one.
async fn slow_lwa_expecting_one(delay: Duration) -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(lwa_tokens(NEW, REFRESH, 3600).set_delay(delay))
        .expect(1)
        .mount(&mock)
        .await;
    mock
}

#[tokio::test]
async fn two_hundred_concurrent_requests_make_exactly_one_refresh() {
    let mock = slow_lwa_expecting_one(SHORT).await;
    let app = spawn_with_lwa(&mock).await;
    // 100 s left: not good enough for the default min_ttl of 300.
    let id = app
        .seed_connection("acme", "A1CONCURRENT", REFRESH, OLD, secs(100))
        .await;
    let key = app.api_key(Some("acme"), &[]).await;
    let client = reqwest::Client::new();

    let answers = futures::future::join_all(
        (0..200).map(|_| access_token_at(&client, &app.base, &key, id, json!({}))),
    )
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            answer.access_token(),
            NEW,
            "every caller gets the new token"
        );
        assert!(answer.body.get("refresh_error").is_none());
        assert_eq!(answer.header("cache-control"), Some("no-store"));
    }
    assert_eq!(
        refresh_requests(&mock).await,
        1,
        "exactly one refresh reached the token endpoint"
    );
    mock.verify().await;

    // Every token issued is counted for this key and connection.
    app.services.jobs().flush_usage_once().await.unwrap();
    let mut issued = 0i64;
    for _ in 0..40 {
        issued = sqlx::query_scalar(
            "select coalesce(sum(count), 0)::int8 from token_issue_count where connection_id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if issued == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(issued, 200);
}

#[tokio::test]
async fn two_servers_on_one_database_make_exactly_one_refresh() {
    let mock = slow_lwa_expecting_one(SHORT).await;
    let url = lwa_url(&mock);
    let edit = move |s: &mut sp_broker::config::Settings| s.lwa_token_url = Some(url.clone());
    let a = TestApp::spawn_with(edit.clone()).await;
    let b = TestApp::spawn_on(a.db.clone(), edit).await;
    assert_ne!(a.base, b.base, "two ports");
    let id = a
        .seed_connection("acme", "A1TWOSERVERS", REFRESH, OLD, secs(100))
        .await;
    let key = a.api_key(None, &[]).await;
    let client = reqwest::Client::new();

    let requests = (0..200).map(|i| {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        access_token_at(&client, base, &key, id, json!({}))
    });
    let answers = futures::future::join_all(requests).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.access_token(), NEW);
        assert!(answer.body.get("refresh_error").is_none());
    }
    assert_eq!(
        refresh_requests(&mock).await,
        1,
        "exactly one refresh across both servers"
    );
    mock.verify().await;
}

/// Another instance finishes a refresh between this instance's read of the
/// connection and its claim of the refresh lease. The claim must notice (the
/// re-read the issue asks for) and serve the other instance's token, not
/// call Amazon a second time. The window is stretched deterministically by
/// holding a row lock, as the other instance's write does while it commits.
#[tokio::test]
async fn a_refresh_finished_by_another_instance_meanwhile_is_reused() {
    let mock = MockServer::start().await;
    on_refresh(&mock, lwa_tokens("Atza|second-refresh", REFRESH, 3600)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1RACE", REFRESH, OLD, secs(100))
        .await;
    let tenant_id: Uuid = sqlx::query_scalar("select tenant_id from connection where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let key = app.api_key(None, &[]).await;

    // "The other instance" starts writing its refreshed token.
    let mut other = app.pool.begin().await.unwrap();
    sqlx::query("select 1 from connection where id = $1 for update")
        .bind(id)
        .execute(&mut *other)
        .await
        .unwrap();
    let base = app.base.clone();
    let caller_key = key.clone();
    let request = tokio::spawn(async move {
        access_token_at(&reqwest::Client::new(), &base, &caller_key, id, json!({})).await
    });
    // Wait until this instance has read the stale row and waits on the row lock.
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if waiting > 0 || started.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tenant = tenant_id.to_string();
    let row = id.to_string();
    let sealed = app.services.keys.seal_str(
        connection_seal_context(Purpose::AccessToken, &tenant, &row),
        &secrecy::SecretString::from("Atza|other-instance".to_owned()),
    );
    let now = app.now();
    sqlx::query(
        "update connection set access_token_sealed = $2, access_token_expires_at = $3,
             last_refresh_at = $4, refresh_lease_token = null, refresh_lease_until = null,
             token_generation = token_generation + 1,
             updated_at = $4
         where id = $1",
    )
    .bind(id)
    .bind(&sealed)
    .bind(now + secs(3600))
    .bind(now)
    .execute(&mut *other)
    .await
    .unwrap();
    other.commit().await.unwrap();

    let answer = request.await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        refresh_requests(&mock).await,
        0,
        "the connection was refreshed a second time although another instance had just refreshed it"
    );
    assert_eq!(answer.access_token(), "Atza|other-instance");
}

#[tokio::test]
async fn a_slow_refresh_does_not_block_other_connections() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("refresh_token=Atzr-slow"))
        .respond_with(
            lwa_tokens("Atza-slow-new", "Atzr-slow", 3600).set_delay(Duration::from_secs(3)),
        )
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("refresh_token=Atzr-fast"))
        .respond_with(lwa_tokens("Atza-fast-new", "Atzr-fast", 3600))
        .mount(&mock)
        .await;
    let app = spawn_with_lwa(&mock).await;
    let slow = app
        .seed_connection("acme", "A1SLOW", "Atzr-slow", "Atza-slow-old", secs(100))
        .await;
    let fast = app
        .seed_connection("acme", "A1FAST", "Atzr-fast", "Atza-fast-old", secs(100))
        .await;
    let cached = app
        .seed_connection("acme", "A1CACHED", "Atzr-cached", "Atza-cached", secs(3000))
        .await;
    let key = app.api_key(None, &[]).await;

    let base = app.base.clone();
    let slow_key = key.clone();
    let slow_request = tokio::spawn(async move {
        access_token_at(&reqwest::Client::new(), &base, &slow_key, slow, json!({})).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let cached_answer = access_token(&app, &key, cached, json!({})).await;
    let fast_answer = access_token(&app, &key, fast, json!({})).await;
    let elapsed = started.elapsed();
    assert_eq!(cached_answer.access_token(), "Atza-cached");
    assert_eq!(fast_answer.access_token(), "Atza-fast-new");
    assert!(
        elapsed < Duration::from_secs(1),
        "other connections waited {elapsed:?} for a slow refresh"
    );
    assert!(
        !slow_request.is_finished(),
        "the slow refresh is still going"
    );
    // The slow caller holds a token with 100 s left: after about 2 s it stops
    // waiting and gets that one, saying why; the refresh goes on detached.
    let slow_answer = slow_request.await.unwrap();
    assert_eq!(slow_answer.access_token(), "Atza-slow-old");
    assert_eq!(slow_answer.body["refresh_error"], "amazon_unavailable");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = access_token(&app, &key, slow, json!({})).await;
    assert_eq!(after.access_token(), "Atza-slow-new");
    assert_eq!(after.body.get("refresh_error"), None);
}

#[tokio::test]
async fn tokens_survive_a_restart_without_calling_amazon_again() {
    let mock = slow_lwa_expecting_one(Duration::from_millis(10)).await;
    let url = lwa_url(&mock);
    let edit = move |s: &mut sp_broker::config::Settings| s.lwa_token_url = Some(url.clone());
    let first = TestApp::spawn_with(edit.clone()).await;
    let id = first
        .seed_connection("acme", "A1RESTART", REFRESH, OLD, secs(100))
        .await;
    let key = first.api_key(None, &[]).await;
    assert_eq!(
        access_token(&first, &key, id, json!({}))
            .await
            .access_token(),
        NEW
    );
    let db = first.db.clone();
    drop(first);

    // A new process: empty memory cache, same database.
    let restarted = TestApp::spawn_on(db, edit).await;
    let answer = access_token(&restarted, &key, id, json!({})).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.access_token(), NEW, "served from PostgreSQL");
    assert_eq!(refresh_requests(&mock).await, 1);
    // And the stored access token is sealed, not in clear.
    assert!(!restarted.database_dump().await.contains(NEW));
    mock.verify().await;
}

#[tokio::test]
async fn a_seller_revoked_in_the_sandbox_makes_the_connection_needs_reauth() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "user-1").await;
    let callback = browser.connect_through("ATVPDKIKX0DER", "A1REVOKEME").await;
    assert_eq!(callback.status(), 303);
    let rows = connection_rows(&browser.page().await);
    assert_eq!(rows.len(), 1);
    let id: Uuid = rows[0].0.parse().unwrap();
    let key = app
        .api_key(None, &["tokens:issue", "connections:read"])
        .await;
    let refresh_events = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from refresh_event where connection_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };

    // The code exchange's access token is cached: no call to Amazon.
    let first = access_token(&app, &key, id, json!({})).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(refresh_events().await, 0);

    // The seller revokes the app (Manage Your Apps), in the sandbox.
    let revoke = browser
        .client
        .post(app.url("/sandbox/revoke"))
        .form(&[("selling_partner_id", "A1REVOKEME")])
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    let revoked_grants: i64 = sqlx::query_scalar(
        "select count(*) from sandbox_grant where selling_partner_id = 'A1REVOKEME' and revoked_at is not null",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(revoked_grants, 1);

    // The next refresh (59 minutes later the cached token has a minute left).
    app.clock.advance(time::Duration::minutes(59));
    let answer = access_token(&app, &key, id, json!({})).await;
    let body = assert_problem(&answer, 409, "reauthorization_required");
    assert_eq!(body["connection_status"], "needs_reauth");
    assert!(body["status_reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(
        body["reconnect_url"],
        format!("{}/settings/connections", app.base)
    );

    let shown = connection(&app, &key, id).await;
    assert_eq!(shown["status"], "needs_reauth");
    assert_eq!(shown["health"], "failing");
    assert_eq!(shown["last_error"]["code"], "invalid_grant");
    assert!(shown["status_reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(
        audit_count(&app, "connection.needs_reauth", Some(id)).await,
        1
    );
    let outcome: String =
        sqlx::query_scalar("select outcome from refresh_event where connection_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "invalid_grant");

    // From then on: 409, and no further refresh is attempted.
    for body in [
        json!({}),
        json!({"force_refresh": true}),
        json!({"min_ttl_seconds": 0}),
    ] {
        let later = access_token(&app, &key, id, body).await;
        assert_problem(&later, 409, "reauthorization_required");
    }
    assert_eq!(refresh_events().await, 1, "no refresh after needs_reauth");
    assert_eq!(connection_rows(&browser.page().await)[0].2, "needs_reauth");
}

#[tokio::test]
async fn after_invalid_grant_no_request_reaches_the_token_endpoint() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(invalid_grant_for_refresh().set_delay(Duration::from_millis(200)))
        .expect(1)
        .mount(&mock)
        .await;
    let url = lwa_url(&mock);
    let edit = move |s: &mut sp_broker::config::Settings| s.lwa_token_url = Some(url.clone());
    let a = TestApp::spawn_with(edit.clone()).await;
    let b = TestApp::spawn_on(a.db.clone(), edit).await;
    let id = a
        .seed_connection("acme", "A1GRANTLESS", REFRESH, OLD, secs(100))
        .await;
    let key = a.api_key(None, &[]).await;
    let client = reqwest::Client::new();

    // Twenty callers at the moment Amazon says invalid_grant: all get 409.
    let answers = futures::future::join_all((0..20).map(|i| {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        access_token_at(&client, base, &key, id, json!({}))
    }))
    .await;
    for answer in &answers {
        assert_problem(answer, 409, "reauthorization_required");
        assert_eq!(answer.body["connection_status"], "needs_reauth");
        assert!(!answer.text.contains(OLD));
    }
    // Later requests, forced or not, on either instance, make no call.
    for app in [&a, &b] {
        for body in [
            json!({}),
            json!({"force_refresh": true}),
            json!({"min_ttl_seconds": 0}),
        ] {
            assert_problem(
                &access_token(app, &key, id, body).await,
                409,
                "reauthorization_required",
            );
        }
    }
    a.clock.advance(time::Duration::hours(2));
    assert_problem(
        &access_token(&a, &key, id, json!({})).await,
        409,
        "reauthorization_required",
    );
    assert_eq!(refresh_requests(&mock).await, 1);
    assert_eq!(
        audit_count(&a, "connection.needs_reauth", Some(id)).await,
        1
    );
    mock.verify().await;
}
