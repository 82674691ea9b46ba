//! `/metrics` speaks Prometheus text with `sp_broker_` names and counts what happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
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
    let key = app
        .services
        .api_keys
        .create("svc", None, &[], "test")
        .await
        .unwrap();
    let token = reqwest::Client::new()
        .post(app.url(&format!("/v1/connections/{id}/access-token")))
        .bearer_auth(key.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);
    // Two more hits, and three refusals (an unknown connection), on the same route.
    let client = reqwest::Client::new();
    for connection in [id.as_str(), id.as_str()]
        .into_iter()
        .chain([uuid::Uuid::nil().to_string().as_str(); 3])
    {
        let answer = client
            .post(app.url(&format!("/v1/connections/{connection}/access-token")))
            .bearer_auth(key.expose_secret())
            .send()
            .await
            .unwrap();
        assert!(matches!(answer.status().as_u16(), 200 | 404));
    }

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
    // Counted per route template and status class, whichever worker served them.
    let route = "route=\"/v1/connections/{id}/access-token\"";
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    assert_eq!(
        value(&format!(
            "sp_broker_http_requests_total{{{route},status=\"2xx\"}}"
        )),
        3.0
    );
    assert_eq!(
        value(&format!(
            "sp_broker_http_requests_total{{{route},status=\"4xx\"}}"
        )),
        3.0
    );
    assert_eq!(
        value(&format!(
            "sp_broker_http_request_duration_seconds_count{{{route}}}"
        )),
        6.0
    );
    assert!(
        text.contains("sp_broker_access_tokens_issued_total{source=\"cache\"} 3"),
        "{text}"
    );
    // Every metric is ours, and no secret is in it.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("sp_broker_"), "{line}");
    }
    assert!(!text.contains("Atza|") && !text.contains("Atzr|"));
}

/// `/metrics` read by a Prometheus text-format parser (`prometheus-parse`),
/// not by string matching.
async fn scrape(app: &TestApp) -> prometheus_parse::Scrape {
    let text = app.metrics_text().await;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

/// The value of the series `name` with exactly these labels (0 if absent).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain value"),
        })
        .sum()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_by_what_happened() {
    let app = TestApp::spawn().await;
    let before = scrape(&app).await;
    assert!(!before.samples.is_empty());
    let browser = app.signed_in_browser("acme", "u1").await;
    assert_eq!(
        browser
            .connect_through("ATVPDKIKX0DER", "A1PARSED")
            .await
            .status(),
        303
    );
    let id = connection_rows(&browser.page().await)[0].0.clone();
    let key = app.api_key(None, &[]).await;
    let client = reqwest::Client::new();
    for _ in 0..4 {
        let answer = client
            .post(app.url(&format!("/v1/connections/{id}/access-token")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    // Through the LWA-compatible endpoint: one token, one refused key.
    for (secret, status) in [(key.clone(), 200), (format!("{key}x"), 401)] {
        let answer = client
            .post(app.url("/auth/o2/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", id.as_str()),
                ("client_secret", secret.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status);
    }
    app.clock.advance(time::Duration::seconds(86_400 + 60));
    let swept = app.services.sweep.pass().await.unwrap();
    assert_eq!(swept.refreshed, 1);

    let after = scrape(&app).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    for step in ["started", "returned", "connected"] {
        assert_eq!(
            moved("sp_broker_consent_attempts_total", &[("step", step)]),
            1.0,
            "{step}"
        );
    }
    assert_eq!(
        moved("sp_broker_consent_attempts_total", &[("step", "failed")]),
        0.0
    );
    assert_eq!(
        moved(
            "sp_broker_access_tokens_issued_total",
            &[("source", "cache")]
        ),
        5.0,
        "four from the JSON route, one from /auth/o2/token"
    );
    for outcome in ["ok", "invalid_client"] {
        assert_eq!(
            moved(
                "sp_broker_lwa_compatible_requests_total",
                &[("grant", "refresh_token"), ("outcome", outcome)]
            ),
            1.0,
            "{outcome}"
        );
    }
    assert_eq!(
        moved(
            "sp_broker_sweep_connections_total",
            &[("outcome", "refreshed")]
        ),
        1.0
    );
    assert_eq!(moved("sp_broker_sweep_passes_total", &[]), 1.0);
    assert_eq!(
        moved(
            "sp_broker_lwa_requests_total",
            &[("grant", "refresh_token"), ("outcome", "ok")]
        ),
        1.0,
        "the sweep's refresh"
    );
    // (Per-route HTTP counts are checked above by their lines: this parser
    // splits label values at braces, and route templates have them.)
    assert_eq!(
        sample(&after, "sp_broker_connections", &[("status", "active")]),
        1.0
    );
}
