//! The app's own client secret (CONTRACT §7): Amazon's notifications, the
//! newest secret that works, its fallback to older ones, and the sandbox's
//! whole rotation cycle under load on two instances with zero failed
//! token requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::token_support::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer};

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// Amazon's `APPLICATION_OAUTH_CLIENT_NEW_SECRET`, as the SQS message body.
pub fn new_secret_notification(
    client_id: &str,
    secret: &str,
    notification_id: &str,
    new_expiry: time::OffsetDateTime,
    old_expiry: time::OffsetDateTime,
) -> Value {
    json!({
        "notificationVersion": "1.0",
        "notificationType": "APPLICATION_OAUTH_CLIENT_NEW_SECRET",
        "payloadVersion": "2023-05-10",
        "eventTime": rfc3339(old_expiry),
        "payload": {"applicationOAuthClientNewSecret": {
            "clientId": client_id,
            "newClientSecret": secret,
            "newClientSecretExpiryTime": rfc3339(new_expiry),
            "oldClientSecretExpiryTime": rfc3339(old_expiry),
        }},
        "notificationMetadata": {
            "applicationId": "amzn1.sp.solution.test",
            "subscriptionId": "subscription-1",
            "publishTime": rfc3339(old_expiry),
            "notificationId": notification_id,
        },
    })
}

fn client_id(app: &TestApp) -> String {
    app.services.config.lwa_client_id.clone()
}

async fn status(app: &TestApp, admin: &str) -> Value {
    let answer = get(app, "/v1/app/status", admin).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.body
}

fn in_use(status: &Value) -> &Value {
    status["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["in_use"] == true)
        .expect("a secret in use")
}

fn client_secrets_sent(forms: &[Vec<(String, String)>]) -> Vec<String> {
    forms
        .iter()
        .filter_map(|form| {
            form.iter()
                .find(|(k, _)| k == "client_secret")
                .map(|(_, v)| v.clone())
        })
        .collect()
}

async fn statuses(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("select status from connection order by id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_newer_secret_is_sent_first_and_when_refused_the_older_works_and_is_remembered() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("client_secret=from-amazon-stale"))
        .respond_with(invalid_client())
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("client_secret=env-secret"))
        .respond_with(lwa_tokens("Atza|fresh", "Atzr|seeded", 3600))
        .mount(&mock)
        .await;
    let url = lwa_url(&mock);
    let app = TestApp::spawn_with(|s| {
        s.lwa_token_url = Some(url);
        s.lwa_client_secret = Some("env-secret".into());
    })
    .await;
    let id = app
        .seed_connection("acme", "A1STALE", "Atzr|seeded", "Atza|old", secs(3600))
        .await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let key = app.api_key(Some("acme"), &[]).await;
    let now = app.now();
    let stored = post(
        &app,
        "/v1/app/notifications",
        &admin,
        new_secret_notification(
            &client_id(&app),
            "from-amazon-stale",
            "n-stale",
            now + time::Duration::days(180),
            now + time::Duration::days(7),
        ),
    )
    .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    assert_eq!(stored.body["result"], "stored");
    let before = status(&app, &admin).await;
    assert_eq!(before["secrets"].as_array().unwrap().len(), 2);
    assert_eq!(in_use(&before)["source"], "notification", "{before}");

    // The newest is sent first; refused, the environment's is tried and works.
    let answer = access_token(&app, &key, id, json!({"force_refresh": true})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.access_token(), "Atza|fresh");
    assert_eq!(
        client_secrets_sent(&refresh_forms(&mock).await),
        ["from-amazon-stale", "env-secret"]
    );
    // Remembered: the next refresh sends the one that worked, alone
    // (after force_refresh's 30 s per connection).
    app.clock.advance(time::Duration::seconds(31));
    let answer = access_token(&app, &key, id, json!({"force_refresh": true})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        client_secrets_sent(&refresh_forms(&mock).await),
        ["from-amazon-stale", "env-secret", "env-secret"]
    );
    let after = status(&app, &admin).await;
    assert_eq!(after["state"], "ok");
    assert_eq!(in_use(&after)["source"], "environment", "{after}");
    let refused = after["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "notification")
        .unwrap();
    assert!(refused["last_rejected_at"].is_string(), "{after}");
    // Remembered in PostgreSQL, so a second instance sends the good one first.
    let second = TestApp::spawn_on(app.db.clone(), |s| {
        s.lwa_token_url = Some(lwa_url(&mock));
        s.lwa_client_secret = Some("env-secret".into());
    })
    .await;
    second.clock.advance(time::Duration::seconds(62));
    let answer = access_token(&second, &key, id, json!({"force_refresh": true})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        client_secrets_sent(&refresh_forms(&mock).await)[3..],
        ["env-secret"]
    );
    // Neither secret changed any seller's status, and no app-wide alarm.
    assert_eq!(statuses(&app).await, ["active"]);
    let alarms: i64 =
        sqlx::query_scalar("select count(*) from event where type like 'app.credentials_%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(alarms, 0);
}

#[tokio::test]
async fn every_secret_refused_changes_no_sellers_status_and_the_newer_works_once_amazon_takes_it() {
    let mock = MockServer::start().await;
    // Amazon refuses the environment's old secret, and knows the new one.
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("client_secret=env-expired"))
        .respond_with(invalid_client())
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("client_secret=from-amazon-new"))
        .respond_with(lwa_tokens("Atza|new", "Atzr|seeded", 3600))
        .mount(&mock)
        .await;
    let url = lwa_url(&mock);
    let app = TestApp::spawn_with(|s| {
        s.lwa_token_url = Some(url);
        s.lwa_client_secret = Some("env-expired".into());
    })
    .await;
    let id = app
        .seed_connection("acme", "A1EXPIRED", "Atzr|seeded", "Atza|old", secs(60))
        .await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let key = app.api_key(Some("acme"), &[]).await;
    let refused = access_token(&app, &key, id, json!({})).await;
    assert_problem(&refused, 502, "app_credentials_rejected");
    assert_eq!(status(&app, &admin).await["state"], "rejected");
    assert_eq!(statuses(&app).await, ["active"]);

    let now = app.now();
    let stored = post(
        &app,
        "/v1/app/notifications",
        &admin,
        new_secret_notification(
            &client_id(&app),
            "from-amazon-new",
            "n-new",
            now + time::Duration::days(180),
            now + time::Duration::days(7),
        ),
    )
    .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    // A stored secret ends the hold at once: the next call sends it first.
    let answer = access_token(&app, &key, id, json!({})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        client_secrets_sent(&refresh_forms(&mock).await)
            .last()
            .unwrap(),
        "from-amazon-new"
    );
    assert_eq!(status(&app, &admin).await["state"], "ok");
    assert_eq!(statuses(&app).await, ["active"]);
}

#[tokio::test]
async fn notifications_are_taken_once_checked_and_shown_by_app_status() {
    let app = TestApp::spawn().await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let lesser = app.api_key(None, &["connections:read"]).await;
    let now = app.now();
    let notification = new_secret_notification(
        &client_id(&app),
        "amzn1.oa2-cs.v1.notified-secret",
        "n-1",
        now + time::Duration::days(180),
        now + time::Duration::days(7),
    );
    let refused = post(&app, "/v1/app/notifications", &lesser, notification.clone()).await;
    assert_problem(&refused, 403, "insufficient_scope");

    let first = post(&app, "/v1/app/notifications", &admin, notification.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["result"], "stored");
    let after_first = status(&app, &admin).await;
    assert_eq!(after_first["secrets"].as_array().unwrap().len(), 2);
    // The same notification again: nothing changes.
    let again = post(&app, "/v1/app/notifications", &admin, notification.clone()).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["result"], "already_known");
    // The same secret under another notification id: nothing changes either.
    let mut renamed = notification.clone();
    renamed["notificationMetadata"]["notificationId"] = json!("n-1-redelivered");
    let again = post(&app, "/v1/app/notifications", &admin, renamed).await;
    assert_eq!(again.body["result"], "already_known");
    assert_eq!(status(&app, &admin).await, after_first);
    let environment = after_first["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "environment")
        .unwrap();
    let recorded_expiry =
        time::OffsetDateTime::parse(environment["expires_at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(
        (recorded_expiry - (now + time::Duration::days(7))).abs() < time::Duration::seconds(1),
        "the replaced secret's expiry is recorded: {environment}"
    );
    assert_eq!(environment["expiry_reason"], "ROTATED");

    // Another client id, malformed JSON, a missing secret: 422, nothing stored.
    let mut other = notification.clone();
    other["payload"]["applicationOAuthClientNewSecret"]["clientId"] =
        json!("amzn1.application-oa2-client.someone-else");
    other["payload"]["applicationOAuthClientNewSecret"]["newClientSecret"] = json!("other-app");
    other["notificationMetadata"]["notificationId"] = json!("n-other");
    assert_problem(
        &post(&app, "/v1/app/notifications", &admin, other).await,
        422,
        "invalid_request",
    );
    let malformed = Answer::read(
        reqwest::Client::new()
            .post(app.url("/v1/app/notifications"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body("{\"notificationType\": \"APPLICATION_OAUTH_CLIENT_NEW_SECRET\", ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_problem(&malformed, 422, "invalid_request");
    let mut missing = notification.clone();
    missing["payload"]["applicationOAuthClientNewSecret"]
        .as_object_mut()
        .unwrap()
        .remove("newClientSecret");
    missing["notificationMetadata"]["notificationId"] = json!("n-missing");
    assert_problem(
        &post(&app, "/v1/app/notifications", &admin, missing).await,
        422,
        "invalid_request",
    );
    let mut bad_time = notification.clone();
    bad_time["payload"]["applicationOAuthClientNewSecret"]["newClientSecret"] = json!("x-2");
    bad_time["payload"]["applicationOAuthClientNewSecret"]["newClientSecretExpiryTime"] =
        json!("next tuesday");
    bad_time["notificationMetadata"]["notificationId"] = json!("n-bad-time");
    assert_problem(
        &post(&app, "/v1/app/notifications", &admin, bad_time).await,
        422,
        "invalid_request",
    );
    assert_eq!(status(&app, &admin).await, after_first);

    // An unknown type: 202, nothing changes.
    let unknown = post(
        &app,
        "/v1/app/notifications",
        &admin,
        json!({"notificationType": "ANY_OFFER_CHANGED", "payload": {"anything": 1},
               "notificationMetadata": {"notificationId": "n-offer"}}),
    )
    .await;
    assert_eq!(unknown.status, 202, "{}", unknown.text);
    assert_eq!(unknown.body["result"], "ignored");

    // A secret-expiry notice: recorded on the secret in use, shown by `app status`.
    let expires = now + time::Duration::days(20);
    let notice = json!({
        "notificationVersion": "1.0",
        "notificationType": "APPLICATION_OAUTH_CLIENT_SECRET_EXPIRY",
        "payloadVersion": "2023-05-10",
        "payload": {"applicationOAuthClientSecretExpiry": {
            "clientId": client_id(&app),
            "clientSecretExpiryTime": rfc3339(expires),
            "clientSecretExpiryReason": "PERIODIC_ROTATION",
        }},
        "notificationMetadata": {"notificationId": "n-expiry"},
    });
    let recorded = post(&app, "/v1/app/notifications", &admin, notice.clone()).await;
    assert_eq!(recorded.status, 200, "{}", recorded.text);
    assert_eq!(recorded.body["result"], "expiry_recorded");
    let again = post(&app, "/v1/app/notifications", &admin, notice).await;
    assert_eq!(again.body["result"], "already_known");
    let shown = status(&app, &admin).await;
    let in_use = in_use(&shown);
    assert_eq!(in_use["source"], "notification");
    assert_eq!(in_use["expiry_reason"], "PERIODIC_ROTATION");
    assert!(in_use["expires_at"]
        .as_str()
        .unwrap()
        .starts_with(&rfc3339(expires)[..16]));

    // `sp-broker app status` prints the same JSON.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sp-broker"))
        .args(["app", "status"])
        .env("DATABASE_URL", app.db.url())
        .env("SP_BROKER_LOG", "warn")
        .env("SP_BROKER_ENCRYPTION_KEYS", TEST_KEY)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["secrets"], shown["secrets"]);
    assert_eq!(printed["client_id"], shown["client_id"]);

    // The dashboard shows the same, with days left and a banner under 30.
    let ops = crate::ops_dashboard::operator(&app).await;
    let page = ops
        .get(app.url("/ops"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("data-secret-expiring=\"19\"")
            || page.contains("data-secret-expiring=\"20\""),
        "{page}"
    );
    assert!(page.contains("data-in-use=\"true\""));
    assert!(page.contains("action=\"/ops/app/rotate-secret\""));
}

#[tokio::test]
async fn the_dashboards_rotate_button_needs_its_csrf_token_and_brings_a_new_secret() {
    let app = TestApp::spawn().await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let ops = crate::ops_dashboard::operator(&app).await;
    let page = ops
        .get(app.url("/ops"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("data-secret-expiring"),
        "no banner without a known expiry"
    );
    let csrf = extract_attr(&page, "name=\"csrf_token\" value=\"").unwrap();
    let forged = ops
        .post(app.url("/ops/app/rotate-secret"))
        .header("origin", app.base.clone())
        .form(&[("csrf_token", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(
        status(&app, &admin).await["secrets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let rotated = ops
        .post(app.url("/ops/app/rotate-secret"))
        .header("origin", app.base.clone())
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 303);
    let mut shown = Value::Null;
    for _ in 0..100 {
        shown = status(&app, &admin).await;
        if shown["secrets"].as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(in_use(&shown)["source"], "notification", "{shown}");
    let page = ops
        .get(app.url("/ops"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("data-secret-source=\"notification\" data-days-left=\"179\""),
        "{page}"
    );
    assert!(page.contains("app.secret_rotation_requested"));
}

#[tokio::test]
async fn the_secret_in_use_warns_thirty_and_seven_days_ahead_once_each() {
    let app = TestApp::spawn().await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let now = app.now();
    let notice = json!({
        "notificationType": "APPLICATION_OAUTH_CLIENT_SECRET_EXPIRY",
        "payload": {"applicationOAuthClientSecretExpiry": {
            "clientId": client_id(&app),
            "clientSecretExpiryTime": rfc3339(now + time::Duration::days(40)),
            "clientSecretExpiryReason": "PERIODIC_ROTATION",
        }},
        "notificationMetadata": {"notificationId": "n-40"},
    });
    assert_eq!(
        post(&app, "/v1/app/notifications", &admin, notice)
            .await
            .status,
        200
    );
    let warnings = || async {
        let bodies: Vec<String> = sqlx::query_scalar(
            "select body from event where type = 'app.secret_expiring' order by seq",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        bodies
            .iter()
            .map(|b| serde_json::from_str::<Value>(b).unwrap()["data"].clone())
            .collect::<Vec<_>>()
    };
    let credentials = app.services.broker.credentials();
    sp_broker::app_secrets::warn_if_expiring(credentials)
        .await
        .unwrap();
    assert!(warnings().await.is_empty(), "40 days ahead: no warning yet");
    app.clock.advance(time::Duration::days(11));
    sp_broker::app_secrets::warn_if_expiring(credentials)
        .await
        .unwrap();
    sp_broker::app_secrets::warn_if_expiring(credentials)
        .await
        .unwrap();
    assert_eq!(warnings().await.len(), 1);
    assert_eq!(warnings().await[0]["warning_days"], 30);
    app.clock.advance(time::Duration::days(23));
    sp_broker::app_secrets::warn_if_expiring(credentials)
        .await
        .unwrap();
    sp_broker::app_secrets::warn_if_expiring(credentials)
        .await
        .unwrap();
    let given = warnings().await;
    assert_eq!(given.len(), 2);
    assert_eq!(given[1]["warning_days"], 7);
    assert_eq!(
        given[1]["days_left"], 5,
        "6 days less the seconds since the notice"
    );
    // The metric says how long is left.
    let metrics = app.metrics_text().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sp_broker_app_secret_expiry_seconds"))
        .expect("the expiry metric");
    let seconds: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
    assert!((5.0 * 86400.0..7.0 * 86400.0).contains(&seconds), "{line}");
}

/// The sandbox's whole cycle, on two instances, under a steady stream of
/// token requests whose tokens keep running out (the clocks jump an hour
/// every 200 ms, so every connection is refreshed again and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_rotation_under_load_on_two_instances_fails_no_token_request() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_on(a.db.clone(), |_| {}).await;
    let browser = a.signed_in_browser("acme", "u").await;
    for seller in ["A1ROTATEA", "A1ROTATEB", "A1ROTATEC"] {
        assert_eq!(
            browser
                .connect_through("ATVPDKIKX0DER", seller)
                .await
                .status(),
            303
        );
    }
    let ids: Vec<String> = connection_rows(&browser.page().await)
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(ids.len(), 3);
    let key = a.api_key(Some("acme"), &[]).await;
    let admin = a.api_key(None, &["tenants:admin"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for worker in 0..4 {
        let base = if worker % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let (stop, served, failures, ids, key) = (
            stop.clone(),
            served.clone(),
            failures.clone(),
            ids.clone(),
            key.clone(),
        );
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                let id = &ids[n % ids.len()];
                n += 1;
                let response = client
                    .post(format!("{base}/v1/connections/{id}/access-token"))
                    .bearer_auth(&key)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                if status == 200 {
                    served.fetch_add(1, Ordering::Relaxed);
                } else {
                    let text = response.text().await.unwrap_or_default();
                    failures.lock().unwrap().push(format!("{status} {text}"));
                }
            }
        }));
    }
    let ticking = Arc::new(AtomicBool::new(true));
    let ticker = {
        let (clock_a, clock_b, ticking) = (a.clock.clone(), b.clock.clone(), ticking.clone());
        tokio::spawn(async move {
            while ticking.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                clock_a.advance(time::Duration::minutes(61));
                clock_b.advance(time::Duration::minutes(61));
            }
        })
    };
    let refreshes = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from refresh_event where outcome = 'ok'")
            .fetch_one(&a.pool)
            .await
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Rotate: Amazon (the sandbox) makes a new secret and notifies sp-broker.
    let rotated = post(&a, "/v1/app/rotate-secret", &admin, json!({})).await;
    assert_eq!(rotated.status, 202, "{}", rotated.text);
    let mut switched = false;
    for _ in 0..100 {
        let on_b = status(&b, &admin).await;
        if in_use(&on_b)["source"] == "notification" {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(switched, "instance b uses the new secret within 5 s");
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The old secret expires at the sandbox (7 days of its clock).
    a.clock.advance(time::Duration::days(8));
    b.clock.advance(time::Duration::days(8));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old_uses = || async {
        sqlx::query_scalar::<_, i64>(
            "select accepted + refused from sandbox_client_secret
             where expires_at is not null and expires_at < (select max(expires_at) from sandbox_client_secret)",
        )
        .fetch_one(&a.pool)
        .await
        .unwrap()
    };
    let new_accepted = || async {
        sqlx::query_scalar::<_, i64>(
            "select accepted from sandbox_client_secret
             where expires_at = (select max(expires_at) from sandbox_client_secret)",
        )
        .fetch_one(&a.pool)
        .await
        .unwrap()
    };
    let old_at_expiry = old_uses().await;
    let new_at_expiry = new_accepted().await;
    let refreshes_at_expiry = refreshes().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ticking.store(false, Ordering::Relaxed);
    ticker.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    let served = served.load(Ordering::Relaxed);
    let total_refreshes = refreshes().await;
    println!(
        "rotation under load: {served} token requests served, {} failed, {total_refreshes} refreshes ({} after the old secret expired)",
        failures.len(),
        total_refreshes - refreshes_at_expiry
    );
    assert!(failures.is_empty(), "failed token requests: {failures:?}");
    assert!(served > 100, "{served} requests");
    assert!(
        total_refreshes - refreshes_at_expiry >= 6,
        "refreshes kept happening after the expiry"
    );
    assert_eq!(
        old_uses().await,
        old_at_expiry,
        "after its expiry the old secret is never sent"
    );
    assert!(new_accepted().await > new_at_expiry);
    for app in [&a, &b] {
        let shown = status(app, &admin).await;
        assert_eq!(in_use(&shown)["source"], "notification");
        assert_eq!(shown["state"], "ok");
    }
    assert_eq!(statuses(&a).await, ["active", "active", "active"]);
}

#[tokio::test]
async fn sp_broker_app_rotate_secret_asks_the_sandbox_which_delivers_the_new_secret() {
    let app = TestApp::spawn().await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    // Off the runtime: the CLI calls this test's server (its sandbox).
    let (database_url, base) = (app.db.url(), app.base.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sp-broker"))
            .args(["app", "rotate-secret"])
            .env("DATABASE_URL", database_url)
            .env("SP_BROKER_PUBLIC_URL", base)
            .env("SP_BROKER_LOG", "warn")
            .env("SP_BROKER_ENCRYPTION_KEYS", TEST_KEY)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["status"], "requested");
    let mut shown = Value::Null;
    for _ in 0..100 {
        shown = status(&app, &admin).await;
        if shown["secrets"].as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(in_use(&shown)["source"], "notification", "{shown}");
    let audit: i64 = sqlx::query_scalar(
        "select count(*) from audit_event where action = 'app.secret_rotation_requested' and actor = 'cli'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audit, 1);
}
