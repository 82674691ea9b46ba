//! The health sweep (CONTRACT §5): revoked authorizations found without any
//! token request, expiry notices once each, the work and the rate budget
//! shared by instances through PostgreSQL.

use crate::common::*;
use crate::token_support::*;
use axum::extract::State;
use axum::Form;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const A_DAY_AND_A_BIT: i64 = 86_400 + 60;

async fn event_types(app: &TestApp) -> Vec<String> {
    let key = app.api_key(None, &["connections:read"]).await;
    let feed = get(app, "/v1/events?limit=500", &key).await;
    feed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn after_a_sandbox_revoke_one_pass_marks_needs_reauth_and_a_healthy_one_stays_active() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u1").await;
    for seller in ["A1HEALTHY", "A1REVOKED"] {
        assert_eq!(
            browser
                .connect_through("ATVPDKIKX0DER", seller)
                .await
                .status(),
            303
        );
    }
    let sandbox = app.services.sandbox.clone().unwrap();
    sandbox.revoke_seller("A1REVOKED").await.unwrap();
    app.clock.advance(secs(A_DAY_AND_A_BIT));

    let counts = app.services.sweep.pass().await.unwrap();
    assert_eq!(
        (counts.due, counts.refreshed, counts.needs_reauth),
        (2, 1, 1),
        "{counts:?}"
    );
    // (The browser's session has run out meanwhile: the API says.)
    let key = app.api_key(None, &["connections:read"]).await;
    let listed = get(&app, "/v1/tenants/acme/connections", &key).await;
    let statuses: HashMap<String, String> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["selling_partner_id"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(statuses["A1HEALTHY"], "active");
    assert_eq!(statuses["A1REVOKED"], "needs_reauth");
    let types = event_types(&app).await;
    assert_eq!(
        types
            .iter()
            .filter(|t| *t == "connection.needs_reauth")
            .count(),
        1,
        "{types:?}"
    );

    // Nothing is due again within the pass's claim, nor once refreshed.
    let again = app.services.sweep.pass().await.unwrap();
    assert_eq!(again.due, 0, "{again:?}");
}

/// Each refresh the double received: when, and with which refresh token.
type Calls = Arc<Mutex<Vec<(Instant, String)>>>;

/// An LWA double answering every refresh, keeping when each arrived.
async fn timed_lwa() -> (String, Calls) {
    let calls: Calls = Arc::default();
    async fn token(
        State(calls): State<Calls>,
        Form(form): Form<HashMap<String, String>>,
    ) -> axum::Json<Value> {
        let refresh_token = form.get("refresh_token").cloned().unwrap_or_default();
        calls
            .lock()
            .unwrap()
            .push((Instant::now(), refresh_token.clone()));
        axum::Json(serde_json::json!({
            "access_token": format!("Atza|swept-{}", uuid::Uuid::new_v4()),
            "token_type": "bearer",
            "expires_in": 3600,
            "refresh_token": refresh_token,
        }))
    }
    let router = axum::Router::new()
        .route("/auth/o2/token", axum::routing::post(token))
        .with_state(Arc::clone(&calls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth/o2/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, calls)
}

#[tokio::test]
async fn two_instances_sweeping_at_once_refresh_each_due_connection_once_within_the_rate() {
    let (lwa, calls) = timed_lwa().await;
    let settings = move |s: &mut sp_broker::config::Settings| {
        s.lwa_token_url = Some(lwa.clone());
        s.sweep_rate = "5".into();
    };
    let first = TestApp::spawn_with(settings.clone()).await;
    let second = TestApp::spawn_on(Arc::clone(&first.db), settings).await;
    for i in 0..12 {
        first
            .seed_connection(
                "acme",
                &format!("A1DUE{i}"),
                &format!("Atzr|due-{i}"),
                "Atza|old",
                secs(3600),
            )
            .await;
    }
    first.clock.advance(secs(A_DAY_AND_A_BIT));
    second.clock.advance(secs(A_DAY_AND_A_BIT));

    let (a, b) = tokio::join!(first.services.sweep.pass(), second.services.sweep.pass());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.due + b.due, 12, "{a:?} {b:?}");
    assert_eq!(a.refreshed + b.refreshed, 12, "{a:?} {b:?}");
    assert!(
        a.due > 0 && b.due > 0,
        "both instances took part: {a:?} {b:?}"
    );

    let calls = calls.lock().unwrap().clone();
    let mut swept: Vec<&str> = calls.iter().map(|(_, token)| token.as_str()).collect();
    swept.sort();
    let mut expected: Vec<String> = (0..12).map(|i| format!("Atzr|due-{i}")).collect();
    expected.sort();
    assert_eq!(
        swept, expected,
        "each due connection refreshed exactly once"
    );
    // No one-second window, wherever it starts, holds more than the rate.
    for (start, _) in &calls {
        let in_window = calls
            .iter()
            .filter(|(at, _)| *at >= *start && at.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(in_window <= 5, "{in_window} sweep calls within one second");
    }
    let span = calls.last().unwrap().0.duration_since(calls[0].0);
    assert!(
        span >= Duration::from_millis(2000),
        "12 calls at 5/s take over 2 s: {span:?}"
    );
}

#[tokio::test]
async fn an_expiring_authorization_is_announced_at_30_and_7_days_once_each_and_a_reconnect_resets_it(
) {
    let mock = lwa_answering_refresh(lwa_tokens("Atza|fresh", "Atzr|r", 3600)).await;
    let app = spawn_with_lwa(&mock).await;
    let seed = || app.seed_connection("acme", "A1AGING", "Atzr|r", "Atza|a", secs(3600));
    let id = seed().await;
    let expiring =
        |types: Vec<String>| types.iter().filter(|t| *t == "connection.expiring").count();
    let key = app.api_key(None, &["connections:read"]).await;

    app.clock.advance(time::Duration::days(340));
    app.services.sweep.pass().await.unwrap();
    assert_eq!(expiring(event_types(&app).await), 1);
    assert_eq!(connection(&app, &key, id).await["health"], "expiring");
    // The seller's page says it, with the date, under a banner.
    let page = app.signed_in_browser("acme", "u1").await.page().await;
    assert!(page.contains(r#"data-health="expiring""#), "{page}");
    assert!(
        page.contains("reconnect before then to keep imports running"),
        "{page}"
    );
    assert!(
        page.contains("One of your Amazon connections needs you"),
        "{page}"
    );
    app.services.sweep.pass().await.unwrap();
    assert_eq!(expiring(event_types(&app).await), 1, "once per notice");

    app.clock.advance(time::Duration::days(18));
    app.services.sweep.pass().await.unwrap();
    app.services.sweep.pass().await.unwrap();
    assert_eq!(
        expiring(event_types(&app).await),
        2,
        "and once more at 7 days"
    );
    let feed = get(&app, "/v1/events?limit=500", &key).await;
    let last = feed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|e| e["type"] == "connection.expiring")
        .unwrap()
        .clone();
    assert!(last["data"]["reason"].as_str().unwrap().contains("7 days"));
    assert_eq!(last["data"]["connection"]["id"], id.to_string());

    // A reconnect is a new authorization: a year again, notices again.
    assert_eq!(seed().await, id);
    app.services.sweep.pass().await.unwrap();
    assert_eq!(
        expiring(event_types(&app).await),
        2,
        "nothing owed right after"
    );
    assert_eq!(connection(&app, &key, id).await["health"], "ok");
    let page = app.signed_in_browser("acme", "u2").await.page().await;
    assert!(
        !page.contains(r#"role="alert""#),
        "no banner once reconnected"
    );
    app.clock.advance(time::Duration::days(340));
    app.services.sweep.pass().await.unwrap();
    assert_eq!(expiring(event_types(&app).await), 3);
}

#[tokio::test]
async fn a_shutdown_stops_the_sweep_at_a_batch_boundary_with_every_claimed_connection_refreshed() {
    // Amazon takes 400 ms a refresh; the pacer allows 4 a second: a batch
    // (2 s of the rate) is still in flight when the shutdown comes.
    let lwa = lwa_answering_refresh(
        lwa_tokens("Atza|swept", "Atzr|r", 3600).set_delay(Duration::from_millis(400)),
    )
    .await;
    let url = lwa_url(&lwa);
    let app = TestApp::spawn_with(move |s| {
        s.lwa_token_url = Some(url);
        s.sweep_interval_seconds = "1".into();
        s.sweep_rate = "4".into();
    })
    .await;
    for i in 0..30 {
        app.seed_connection(
            "acme",
            &format!("A1STOP{i}"),
            "Atzr|r",
            "Atza|a",
            secs(3600),
        )
        .await;
    }
    let seeded_at = app.now();
    app.clock.advance(secs(A_DAY_AND_A_BIT));
    let started = Instant::now();
    while refresh_requests(&lwa).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sweep never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let db = Arc::clone(&app.db);
    drop(app); // the shutdown signal

    // Wait until Amazon hears nothing more for a while.
    let mut heard = refresh_requests(&lwa).await;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = refresh_requests(&lwa).await;
        if now == heard {
            break;
        }
        heard = now;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the sweep never stopped"
        );
    }
    let (claimed, refreshed): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where sweep_claimed_until is not null),
                count(*) filter (where last_refresh_at > $1)
         from connection",
    )
    .bind(seeded_at)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        claimed > 0 && claimed < 30,
        "stopped before the pass ended: {claimed} claimed"
    );
    assert_eq!(
        (claimed, refreshed, heard as i64),
        (claimed, claimed, claimed),
        "every connection claimed was refreshed, once, and no other"
    );
}
