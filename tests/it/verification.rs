//! Verification after connect and reconnect (CONTRACT §5): the seller's
//! marketplaces are read with `getMarketplaceParticipations`; a failure
//! leaves the connection `active` and `degraded` with a plain-language
//! `last_error`, and the next successful verification clears it.

use crate::common::*;
use crate::token_support::*;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const PARTICIPATIONS: &str = "/sellers/v1/marketplaceParticipations";

async fn shown(app: &TestApp, id: &str) -> Value {
    let admin = app
        .api_key(None, &["connections:read", "tenants:admin"])
        .await;
    let answer = get(app, &format!("/v1/connections/{id}"), &admin).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body
}

#[tokio::test]
async fn a_sandbox_connection_is_verified_with_its_marketplaces() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u1").await;
    let callback = browser.connect_through("ATVPDKIKX0DER", "A1VERIFIED").await;
    assert_eq!(callback.status(), 303);
    let id = connection_rows(&browser.page().await)[0].0.clone();
    let connection = shown(&app, &id).await;
    let marketplaces = connection["marketplace_ids"].as_array().expect("verified");
    assert!(
        marketplaces.iter().any(|m| m == "ATVPDKIKX0DER"),
        "{connection}"
    );
    assert_eq!(connection["health"], "ok");
    assert_eq!(connection["last_error"], Value::Null);
}

#[tokio::test]
async fn a_failed_verification_degrades_the_connection_until_one_succeeds() {
    let spapi = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(PARTICIPATIONS))
        .respond_with(
            ResponseTemplate::new(403).set_body_json(json!({"errors": [{"code": "Unauthorized"}]})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&spapi)
        .await;
    Mock::given(method("GET"))
        .and(path(PARTICIPATIONS))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"payload": [
            {"marketplace": {"id": "ATVPDKIKX0DER"}, "participation": {"isParticipating": true}, "storeName": "Acme Goods"}
        ]})))
        .mount(&spapi)
        .await;
    let url = spapi.uri();
    let app = TestApp::spawn_with(move |s| s.spapi_url = Some(url)).await;
    let browser = app.signed_in_browser("acme", "u1").await;
    let callback = browser.connect_through("ATVPDKIKX0DER", "A1NOROLE").await;
    assert_eq!(callback.status(), 303);
    let page = browser.page().await;
    let rows = connection_rows(&page);
    assert_eq!(
        rows[0].2, "active",
        "verification does not change the status"
    );
    let id = rows[0].0.clone();

    let connection = shown(&app, &id).await;
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["health"], "degraded", "{connection}");
    assert_eq!(connection["last_error"]["code"], "verification_failed");
    let message = connection["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("role") && message.contains("region"),
        "{message}"
    );
    assert_eq!(connection["marketplace_ids"], Value::Null);
    assert!(page.contains("lacks a role"), "the seller's row says why");
    assert!(
        page.contains("would not show this account"),
        "and what it means"
    );
    assert!(page.contains("needs you"), "under a banner");

    // A refresh does not hide it.
    sqlx::query("update connection set access_token_expires_at = now() + interval '10 seconds' where id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    app.services.broker.forget(id.parse().unwrap());
    let key = app.api_key(None, &[]).await;
    let token = access_token(&app, &key, id.parse().unwrap(), json!({})).await;
    assert_eq!(token.status, 200, "{token:?}");
    assert_eq!(shown(&app, &id).await["health"], "degraded");

    // Reconnecting verifies again; this time it works and clears the error.
    let reconnect = browser.post_action(&id, "reconnect").await;
    assert_eq!(reconnect.status(), 303);
    let callback = browser.consent(&location(&reconnect), "A1NOROLE").await;
    assert_eq!(
        browser.client.get(callback).send().await.unwrap().status(),
        303
    );
    let connection = shown(&app, &id).await;
    assert_eq!(connection["health"], "ok", "{connection}");
    assert_eq!(connection["last_error"], Value::Null);
    assert_eq!(connection["store_name"], "Acme Goods");
    assert_eq!(connection["marketplace_ids"], json!(["ATVPDKIKX0DER"]));
    let page = browser.page().await;
    assert!(
        page.contains("<dd>United States</dd>"),
        "the marketplaces found, by name"
    );
    assert!(!page.contains(r#"role="alert""#));

    // Announced: degraded once (the refresh in between changed nothing),
    // then recovered with the gap.
    let feed = get(&app, "/v1/events", &shown_key(&app).await).await;
    let items = feed.body["items"].as_array().unwrap();
    let types: Vec<&str> = items.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "connection.connected",
            "connection.degraded",
            "connection.reconnected",
            "connection.recovered"
        ]
    );
    let degraded = &items[1];
    assert!(degraded["data"]["reason"]
        .as_str()
        .unwrap()
        .contains("role"));
    assert_eq!(degraded["data"]["connection"]["health"], "degraded");
    let gap = &items[3]["data"]["gap"];
    assert_eq!(gap["from"], degraded["created_at"], "{gap}");
    assert!(gap["to"].as_str().unwrap() >= gap["from"].as_str().unwrap());
    assert_eq!(items[3]["data"]["connection"]["health"], "ok");
}

async fn shown_key(app: &TestApp) -> String {
    app.api_key(None, &["connections:read"]).await
}
