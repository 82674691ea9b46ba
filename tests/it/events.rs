//! Events and webhooks (CONTRACT §8): the outbox written with each change,
//! Standard Webhooks delivery (verified here by an implementation written
//! from the specification, not by the product's signing code), retries with
//! the same `webhook-id`, order per connection, restarts, and the feed.

use crate::common::*;
use crate::token_support::*;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// Two secrets (a rotation in progress): every delivery carries a signature by each.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLDER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// A webhook receiver on 127.0.0.1: answers the statuses it is given in
/// turn (then 200), and keeps every request.
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Delivery>>>,
}

async fn receiver(mut statuses: Vec<u16>) -> Receiver {
    statuses.reverse();
    let script = Arc::new(Mutex::new(statuses));
    let received: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let kept = Arc::clone(&received);
    let handler = move |headers: HeaderMap, body: String| {
        let (script, kept) = (Arc::clone(&script), Arc::clone(&kept));
        async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            kept.lock().unwrap().push(Delivery {
                id: header("webhook-id"),
                timestamp: header("webhook-timestamp"),
                signature: header("webhook-signature"),
                body,
            });
            let status = script.lock().unwrap().pop().unwrap_or(200);
            StatusCode::from_u16(status).unwrap()
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let router = axum::Router::new().route("/hooks", axum::routing::post(handler));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Receiver { url, received }
}

impl Receiver {
    fn deliveries(&self) -> Vec<Delivery> {
        self.received.lock().unwrap().clone()
    }
}

/// Standard Webhooks, from the specification: `v1,` + base64(HMAC-SHA256 of
/// `{id}.{timestamp}.{body}`, keyed with the base64-decoded part of `whsec_…`).
fn signed_by(secret: &str, d: &Delivery) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", d.id, d.timestamp, d.body).as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    d.signature.split(' ').any(|s| s == expected)
}

async fn app_delivering_to(url: &str) -> TestApp {
    let url = url.to_owned();
    TestApp::spawn_with(move |s| {
        s.webhook_url = Some(url);
        s.webhook_secret = Some(format!("{SECRET},{OLDER_SECRET}"));
    })
    .await
}

/// Delivery rounds, moving the app's clock past each retry's wait, until
/// the receiver has `count` requests (the background deliverer runs too).
async fn deliver_until(app: &TestApp, receiver: &Receiver, count: usize) {
    let webhooks = app.services.webhooks.clone().expect("webhooks configured");
    for _ in 0..200 {
        if receiver.deliveries().len() >= count {
            return;
        }
        webhooks.deliver_due().await.unwrap();
        app.clock.advance(time::Duration::seconds(6));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "{} deliveries, expected {count}",
        receiver.deliveries().len()
    );
}

fn body(d: &Delivery) -> Value {
    serde_json::from_str(&d.body).unwrap()
}

#[tokio::test]
async fn webhooks_are_signed_retried_with_one_id_and_ordered_and_the_feed_lists_the_same() {
    let hooks = receiver(vec![500, 500]).await;
    let app = app_delivering_to(&hooks.url).await;
    let id = app
        .seed_connection("acme", "A1EVENTS", "Atzr|r", "Atza|a", secs(3600))
        .await;
    let manager = app.api_key(Some("acme"), &["connections:manage"]).await;
    let deleted = call(
        &reqwest::Client::new(),
        reqwest::Method::DELETE,
        &app.url(&format!("/v1/connections/{id}")),
        Some(&manager),
        None,
    )
    .await;
    assert_eq!(deleted.status, 204, "{deleted:?}");

    deliver_until(&app, &hooks, 4).await;
    let deliveries = hooks.deliveries();
    assert_eq!(deliveries.len(), 4, "no attempt was made twice");
    for d in &deliveries {
        assert!(signed_by(SECRET, d), "signed with the first secret: {d:?}");
        assert!(signed_by(OLDER_SECRET, d), "and with the older one");
        assert!(!signed_by("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", d));
    }
    // Two failures, then delivered: three attempts with one id; only then
    // the connection's next event.
    let first = &deliveries[0];
    assert!(first.id.starts_with("evt_"));
    assert!(deliveries[..3]
        .iter()
        .all(|d| d.id == first.id && d.body == first.body));
    assert_eq!(body(first)["type"], "connection.connected");
    assert_eq!(body(first)["id"], first.id);
    assert_eq!(body(first)["data"]["connection"]["id"], id.to_string());
    assert_eq!(body(first)["data"]["connection"]["status"], "active");
    let second = &deliveries[3];
    assert_ne!(second.id, first.id);
    assert_eq!(body(second)["type"], "connection.disconnected");
    assert_eq!(body(second)["data"]["previous_status"], "active");
    assert_eq!(body(second)["data"]["connection"]["status"], "disconnected");
    for d in &deliveries {
        assert!(
            !d.body.contains("Atza|") && !d.body.contains("Atzr|"),
            "never a token"
        );
    }

    // The feed: the same events, in order, a page at a time.
    let reader = app.api_key(Some("acme"), &["connections:read"]).await;
    let page = get(&app, "/v1/events?limit=1", &reader).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(page.body["items"][0], body(first));
    let cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
    let next = get(&app, &format!("/v1/events?limit=1&after={cursor}"), &reader).await;
    assert_eq!(next.body["items"][0], body(second));
    let cursor = next.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = get(&app, &format!("/v1/events?after={cursor}"), &reader).await;
    assert_eq!(rest.body["items"], Value::Array(vec![]));
    assert_eq!(
        rest.body["next_cursor"], cursor,
        "a poller resumes where it stopped"
    );
    let bad = get(&app, "/v1/events?after=nonsense", &reader).await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["code"], "invalid_request");

    // Another tenant's key sees none of it; a platform key sees all.
    app.create_tenant("other").await;
    let other = app.api_key(Some("other"), &["connections:read"]).await;
    let none = get(&app, "/v1/events", &other).await;
    assert_eq!(none.body["items"], Value::Array(vec![]));
    let platform = app.api_key(None, &["connections:read"]).await;
    let all = get(&app, "/v1/events", &platform).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_event_pending_across_a_restart_is_still_delivered() {
    let down = receiver(vec![503; 100]).await;
    let first = app_delivering_to(&down.url).await;
    let id = first
        .seed_connection("acme", "A1RESTART", "Atzr|r", "Atza|a", secs(3600))
        .await;
    deliver_until(&first, &down, 1).await;
    // The operator sees it waiting, and why.
    let admin = first.api_key(None, &["tenants:admin"]).await;
    let summary = get(&first, "/v1/ops/summary", &admin).await;
    let deliveries = &summary.body["webhook_deliveries"];
    assert_eq!(deliveries["configured"], true, "{summary:?}");
    assert_eq!(
        (
            deliveries["pending"].as_i64(),
            deliveries["retrying"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(deliveries["last_error"], "the receiver answered 503");
    let metrics = first.metrics_text().await;
    assert!(
        metrics.contains("sp_broker_webhook_outbox_retrying 1"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"sp_broker_webhook_attempts_total{outcome="failed"}"#));
    let db = Arc::clone(&first.db);
    drop(first);

    let up = receiver(vec![]).await;
    let url = up.url.clone();
    let second = TestApp::spawn_on(db, move |s| {
        s.webhook_url = Some(url);
        s.webhook_secret = Some(SECRET.to_owned());
    })
    .await;
    deliver_until(&second, &up, 1).await;
    let delivered = &up.deliveries()[0];
    assert_eq!(
        delivered.id,
        down.deliveries()[0].id,
        "the same event, the same id"
    );
    assert_eq!(body(delivered)["data"]["connection"]["id"], id.to_string());
    assert!(signed_by(SECRET, delivered));
    // The receiver has it before the sender records the answer (and the
    // instance's own delivery loop may be the one that sent it): wait.
    let mut state = String::new();
    for _ in 0..100 {
        state = sqlx::query_scalar("select delivery_state from event")
            .fetch_one(&second.pool)
            .await
            .unwrap();
        if state == "delivered" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state, "delivered");
}

#[tokio::test]
async fn a_needs_reauth_is_announced_with_its_reason() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u1").await;
    assert_eq!(
        browser
            .connect_through("ATVPDKIKX0DER", "A1REVOKED")
            .await
            .status(),
        303
    );
    let id = connection_rows(&browser.page().await)[0].0.clone();
    let sandbox = app.services.sandbox.clone().expect("sandbox mode");
    sandbox.revoke_seller("A1REVOKED").await.unwrap();
    let key = app
        .api_key(Some("acme"), &["tokens:issue", "connections:read"])
        .await;
    let answer = post(
        &app,
        &format!("/v1/connections/{id}/access-token"),
        &key,
        serde_json::json!({"force_refresh": true}),
    )
    .await;
    assert_eq!(answer.status, 409, "{answer:?}");
    let feed = get(&app, "/v1/events", &key).await;
    let types: Vec<&str> = feed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["connection.connected", "connection.needs_reauth"]);
    let event = &feed.body["items"][1];
    assert_eq!(event["data"]["connection"]["status"], "needs_reauth");
    assert_eq!(event["data"]["previous_status"], "active");
    assert!(event["data"]["reason"]
        .as_str()
        .unwrap()
        .contains("invalid_grant"));
}

#[tokio::test]
async fn an_event_older_than_three_days_is_given_up_unsent() {
    let hooks = receiver(vec![]).await;
    let app = app_delivering_to(&hooks.url).await;
    app.seed_connection("acme", "A1LATE", "Atzr|r", "Atza|a", secs(3600))
        .await;
    // Nothing delivered it for three days (say no URL was configured).
    app.clock
        .advance(time::Duration::days(3) + time::Duration::seconds(1));
    let webhooks = app.services.webhooks.clone().unwrap();
    let mut given_up = 0;
    for _ in 0..20 {
        given_up += webhooks.deliver_due().await.unwrap().given_up;
        let state: String = sqlx::query_scalar("select delivery_state from event")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if state == "failed" {
            break;
        }
    }
    let (state, error): (String, String) =
        sqlx::query_as("select delivery_state, last_error from event")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(state, "failed");
    assert!(error.contains("3 days"), "{error}");
    assert!(given_up <= 1);
    assert!(hooks.deliveries().is_empty(), "never sent");
}

#[tokio::test]
async fn failed_refreshes_degrade_once_and_a_good_one_recovers_with_the_gap() {
    let mock = lwa_answering_refresh(wiremock::ResponseTemplate::new(500)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1BROWNOUT", "Atzr|r", "Atza|old", secs(100))
        .await;
    let key = app
        .api_key(None, &["tokens:issue", "connections:read"])
        .await;
    let min_ttl = serde_json::json!({"min_ttl_seconds": 3000});
    // A failed refresh, then a request in its cooldown: degraded is announced once.
    for body in [serde_json::json!({}), min_ttl.clone()] {
        let answer = access_token(&app, &key, id, body).await;
        assert_eq!(
            answer.body["refresh_error"], "amazon_unavailable",
            "{answer:?}"
        );
    }
    app.clock.advance(secs(61));
    mock.reset().await;
    on_refresh(&mock, lwa_tokens("Atza|new", "Atzr|r", 3600)).await;
    let answer = access_token(&app, &key, id, min_ttl).await;
    assert_eq!(answer.access_token(), "Atza|new", "{answer:?}");

    let feed = get(&app, "/v1/events", &key).await;
    let items = feed.body["items"].as_array().unwrap();
    let types: Vec<&str> = items.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "connection.connected",
            "connection.degraded",
            "connection.recovered"
        ]
    );
    assert_eq!(
        items[1]["data"]["connection"]["last_error"]["code"],
        "amazon_unavailable"
    );
    assert_eq!(items[2]["data"]["gap"]["from"], items[1]["created_at"]);
    assert_eq!(items[2]["data"]["gap"]["to"], items[2]["created_at"]);
    assert_eq!(items[2]["data"]["connection"]["health"], "ok");
}

#[tokio::test]
async fn the_apps_rejected_credentials_are_announced_once_and_their_recovery_with_the_gap() {
    let mock = lwa_answering_refresh(invalid_client()).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1APPFAULT", "Atzr|r", "Atza|old", secs(10))
        .await;
    let issuer = app.api_key(None, &[]).await;
    for _ in 0..2 {
        let answer = access_token(&app, &issuer, id, serde_json::json!({})).await;
        assert_problem(&answer, 502, "app_credentials_rejected");
    }
    mock.reset().await;
    on_refresh(&mock, lwa_tokens("Atza|new", "Atzr|r", 3600)).await;
    app.clock.advance(secs(31)); // the first hold lapses: one probe goes out
    let answer = access_token(&app, &issuer, id, serde_json::json!({})).await;
    assert_eq!(answer.access_token(), "Atza|new", "{answer:?}");

    let platform = app.api_key(None, &["connections:read"]).await;
    let feed = get(&app, "/v1/events", &platform).await;
    let app_events: Vec<&Value> = feed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("app."))
        .collect();
    let types: Vec<&str> = app_events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["app.credentials_rejected", "app.credentials_recovered"]
    );
    assert!(app_events[0]["data"]["reason"]
        .as_str()
        .unwrap()
        .contains("not the sellers'"));
    let gap = &app_events[1]["data"]["gap"];
    assert_eq!(gap["from"], app_events[0]["created_at"]);
    assert_eq!(gap["to"], app_events[1]["created_at"]);
    // No seller was blamed, and a tenant's key sees none of the app's events.
    assert_eq!(connection(&app, &platform, id).await["status"], "active");
    let tenant = app.api_key(Some("acme"), &["connections:read"]).await;
    let theirs = get(&app, "/v1/events", &tenant).await;
    assert!(theirs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| !e["type"].as_str().unwrap().starts_with("app.")));
}

#[tokio::test]
async fn two_instances_delivering_at_once_never_make_the_same_attempt() {
    let hooks = receiver(vec![]).await;
    let first = app_delivering_to(&hooks.url).await;
    let url = hooks.url.clone();
    let second = TestApp::spawn_on(Arc::clone(&first.db), move |s| {
        s.webhook_url = Some(url);
        s.webhook_secret = Some(format!("{SECRET},{OLDER_SECRET}"));
    })
    .await;
    for i in 0..20 {
        first
            .seed_connection(
                "acme",
                &format!("A1PAIR{i}"),
                "Atzr|r",
                "Atza|a",
                secs(3600),
            )
            .await;
    }
    let (a, b) = (
        first.services.webhooks.clone().unwrap(),
        second.services.webhooks.clone().unwrap(),
    );
    for _ in 0..50 {
        if hooks.deliveries().len() >= 20 {
            break;
        }
        let (x, y) = tokio::join!(a.deliver_due(), b.deliver_due());
        x.unwrap();
        y.unwrap();
    }
    let mut ids: Vec<String> = hooks.deliveries().into_iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), 20, "every event delivered, none twice: {ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "no event was sent by both instances");
    let pending: i64 =
        sqlx::query_scalar("select count(*) from event where delivery_state <> 'delivered'")
            .fetch_one(&first.pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);
}

/// Standard Webhooks' reference library for Python, from PyPI.
const STANDARD_WEBHOOKS: &str = "standardwebhooks==1.1.0";

#[tokio::test]
async fn a_published_standard_webhooks_library_verifies_every_delivery_under_each_secret() {
    let Some(venv) = tokio::task::spawn_blocking(|| {
        crate::python_support::venv_with("webhooks-venv", &[STANDARD_WEBHOOKS])
    })
    .await
    .unwrap() else {
        return;
    };
    let hooks = receiver(vec![]).await;
    let app = app_delivering_to(&hooks.url).await;
    let key = app.api_key(None, &["connections:manage"]).await;
    let id = app
        .seed_connection("acme", "A1VERIFY", "Atzr|r", "Atza|a", secs(3600))
        .await;
    let gone = call(
        &reqwest::Client::new(),
        reqwest::Method::DELETE,
        &app.url(&format!("/v1/connections/{id}")),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(gone.status, 204, "{gone:?}");
    deliver_until(&app, &hooks, 2).await;
    let deliveries: Vec<Value> = hooks
        .deliveries()
        .iter()
        .map(|d| json!({"id": d.id, "timestamp": d.timestamp, "signature": d.signature, "body": d.body}))
        .collect();
    let file = std::env::temp_dir().join(format!("spb-deliveries-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, serde_json::to_vec(&deliveries).unwrap()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhooks/verify.py");
    let out = std::process::Command::new(venv.join("bin/python"))
        .arg(script)
        .arg(&file)
        .args([SECRET, OLDER_SECRET])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = deliveries.len();
    assert_eq!(
        printed.trim(),
        format!("verified {} refused {}", n * 2, n * 2 * 3)
    );
}
