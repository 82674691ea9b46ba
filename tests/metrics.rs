//! `/metrics` speaks Prometheus text with `sp_broker_` names and counts what happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use secrecy::ExposeSecret;

#[tokio::test]
async fn metrics_count_connections_tokens_and_lwa_calls() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u1").await;
    assert_eq!(
        browser
            .connect_through("ATVPDKIKX0DER", "A1METRICS")
            .await
            .status(),
        303
    );
    let id = connection_rows(&browser.page().await)[0].0.clone();
    let key = sp_broker::cli::create_api_key(&app.state, "svc", None, &[], "test")
        .await
        .unwrap();
    let token = reqwest::Client::new()
        .post(app.url(&format!("/v1/connections/{id}/access-token")))
        .bearer_auth(key.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);

    let response = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert!(
        text.contains("sp_broker_connections{status=\"active\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sp_broker_connections_by_health{health=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sp_broker_access_tokens_issued_total{source=\"cache\"}"),
        "{text}"
    );
    assert!(
        text.contains("sp_broker_lwa_requests_total{grant=\"authorization_code\",outcome=\"ok\"}"),
        "{text}"
    );
    assert!(text.contains("sp_broker_http_requests_total{route=\"/v1/connections/{id}/access-token\",status=\"2xx\"}"), "{text}");
    // Every metric is ours, and no secret is in it.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("sp_broker_"), "{line}");
    }
    assert!(!text.contains("Atza|") && !text.contains("Atzr|"));
}
