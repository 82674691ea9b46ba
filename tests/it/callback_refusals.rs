//! Amazon's redirect back (`GET /oauth/amazon/callback`) when something is
//! wrong (CONTRACT §4.3–4.4, SECURITY.md "OAuth flow"): each refusal is a
//! readable page offering to start again, stores nothing, and a bad `state`
//! causes no call at all to the token endpoint. The code is exchanged once,
//! never retried, even when Amazon times out or the URL is replayed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::flow_support::*;
use std::time::{Duration, Instant};
use wiremock::ResponseTemplate;

#[tokio::test]
async fn missing_parameters_are_refused_without_calling_amazon() {
    let mock = token_double().await;
    let app = spawn_with_token_double(&mock).await;
    let browser = app.signed_in_browser("acme", "u").await;
    let full = callback_url(&browser, US, "A1SELLER").await;

    for name in ["state", "selling_partner_id", "spapi_oauth_code"] {
        let missing = browser
            .client
            .get(without_param(&full, name))
            .send()
            .await
            .unwrap();
        assert_refusal_page(missing, 400, &format!("without {name}")).await;
        let empty = browser
            .client
            .get(with_param(&full, name, ""))
            .send()
            .await
            .unwrap();
        assert_refusal_page(empty, 400, &format!("with an empty {name}")).await;
    }
    let bare = browser
        .client
        .get(app.url("/oauth/amazon/callback"))
        .send()
        .await
        .unwrap();
    assert_refusal_page(bare, 400, "no parameters at all").await;

    assert_eq!(
        token_requests(&mock).await,
        0,
        "no call to the token endpoint"
    );
    assert_eq!(connection_count(&app).await, 0, "nothing stored");
}

#[tokio::test]
async fn unknown_state_is_refused_without_calling_amazon() {
    let mock = token_double().await;
    let app = spawn_with_token_double(&mock).await;
    let browser = app.signed_in_browser("acme", "u").await;
    let full = callback_url(&browser, US, "A1SELLER").await;

    for forged in [
        "x",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "' or 1=1 --",
    ] {
        let response = browser
            .client
            .get(with_param(&full, "state", forged))
            .send()
            .await
            .unwrap();
        assert_refusal_page(response, 400, &format!("state {forged}")).await;
    }
    assert_eq!(
        token_requests(&mock).await,
        0,
        "no call to the token endpoint"
    );
    assert_eq!(connection_count(&app).await, 0, "nothing stored");
}

#[tokio::test]
async fn replayed_callback_is_refused_and_the_code_exchanged_once() {
    let mock = token_double().await;
    let app = spawn_with_token_double(&mock).await;
    let browser = app.signed_in_browser("acme", "u").await;
    let url = callback_url(&browser, US, "A1SELLER").await;

    let first = browser.client.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 303);
    assert_eq!(token_requests(&mock).await, 1);
    let before = stored_connections(&app).await;
    assert_eq!(before.len(), 1);

    let replay = browser.client.get(&url).send().await.unwrap();
    assert_refusal_page(replay, 400, "replayed state").await;
    assert_eq!(
        token_requests(&mock).await,
        1,
        "the replay made no exchange"
    );
    assert_eq!(
        stored_connections(&app).await,
        before,
        "the replay changed nothing stored"
    );
}

#[tokio::test]
async fn expired_state_is_refused_without_calling_amazon() {
    let mock = token_double().await;
    let app = spawn_with_token_double(&mock).await;
    let browser = app.signed_in_browser("acme", "u").await;
    let url = callback_url(&browser, US, "A1SELLER").await;

    app.clock.advance(time::Duration::minutes(16));
    let response = browser.client.get(&url).send().await.unwrap();
    assert_refusal_page(response, 400, "state older than 15 minutes").await;
    assert_eq!(
        token_requests(&mock).await,
        0,
        "no call to the token endpoint"
    );
    assert_eq!(connection_count(&app).await, 0, "nothing stored");
}

#[tokio::test]
async fn state_is_still_good_just_inside_15_minutes() {
    let mock = token_double().await;
    let app = spawn_with_token_double(&mock).await;
    let browser = app.signed_in_browser("acme", "u").await;
    let url = callback_url(&browser, US, "A1SELLER").await;

    app.clock.advance(time::Duration::minutes(14));
    let response = browser.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(token_requests(&mock).await, 1);
    assert_eq!(connection_count(&app).await, 1);
}

#[tokio::test]
async fn state_from_another_browser_session_is_refused_without_calling_amazon() {
    let mock = token_double().await;
    let app = spawn_with_token_double(&mock).await;
    let alice = app.signed_in_browser("acme", "alice").await;
    let url = callback_url(&alice, US, "A1ALICESELLER").await;

    // Another user of the same tenant, a user of another tenant, and a
    // browser with no session at all open Alice's callback URL.
    let bob = app.signed_in_browser("acme", "bob").await;
    let mallory = app.signed_in_browser("other-tenant", "mallory").await;
    let anonymous = app.browser();
    for (who, client) in [
        ("same tenant, other session", &bob.client),
        ("other tenant", &mallory.client),
        ("no session", &anonymous),
    ] {
        let response = client.get(&url).send().await.unwrap();
        assert_refusal_page(response, 400, who).await;
    }
    // The same user in a second browser session is someone else too.
    let alice_elsewhere = app.signed_in_browser("acme", "alice").await;
    let response = alice_elsewhere.client.get(&url).send().await.unwrap();
    assert_refusal_page(response, 400, "same user, other session").await;

    assert_eq!(
        token_requests(&mock).await,
        0,
        "no call to the token endpoint"
    );
    assert_eq!(connection_count(&app).await, 0, "nothing stored");
    assert!(connection_rows(&bob.page().await).is_empty());
    assert!(connection_rows(&mallory.page().await).is_empty());
}

#[tokio::test]
async fn a_code_the_sandbox_refuses_answers_502_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let url = callback_url(&browser, US, "A1SELLER").await;
    let code = query_param(&url, "spapi_oauth_code").unwrap();

    // Someone else spends the code first (codes are single use).
    let spent = reqwest::Client::new()
        .post(app.url("/sandbox/auth/o2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", &app.url("/oauth/amazon/callback")),
            ("client_id", sp_broker::config::SANDBOX_CLIENT_ID),
            ("client_secret", sp_broker::config::SANDBOX_CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(spent.status(), 200, "the sandbox exchanges a fresh code");

    let response = browser.client.get(&url).send().await.unwrap();
    let page = assert_refusal_page(response, 502, "code refused by Amazon").await;
    assert!(page.contains("Amazon"), "{page}");
    assert_eq!(connection_count(&app).await, 0, "nothing stored");
    let page = browser.page().await;
    assert!(connection_rows(&page).is_empty());
}

#[tokio::test]
async fn token_endpoint_failures_answer_502_after_exactly_one_request() {
    let mock = token_double_answering(invalid_grant_answer()).await;
    let app = spawn_with_token_double(&mock).await;
    let browser = app.signed_in_browser("acme", "u").await;

    let failures: Vec<(&str, ResponseTemplate)> = vec![
        ("invalid_grant", invalid_grant_answer()),
        (
            "invalid_client",
            ResponseTemplate::new(401).set_body_json(serde_json::json!({
                "error": "invalid_client", "error_description": "Client authentication failed"
            })),
        ),
        (
            "server error",
            ResponseTemplate::new(500).set_body_string("<html>oops</html>"),
        ),
        ("throttled", ResponseTemplate::new(429)),
        (
            "garbage",
            ResponseTemplate::new(200).set_body_string("not json"),
        ),
        (
            "no refresh token",
            ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": "Atza|x", "token_type": "bearer", "expires_in": 3600
            })),
        ),
    ];
    for (what, answer) in failures {
        mock.reset().await;
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .respond_with(answer)
            .mount(&mock)
            .await;
        let url = callback_url(&browser, US, "A1SELLER").await;
        let response = browser.client.get(&url).send().await.unwrap();
        assert_refusal_page(response, 502, what).await;
        assert_eq!(
            token_requests(&mock).await,
            1,
            "{what}: exactly one request"
        );
        assert_eq!(connection_count(&app).await, 0, "{what}: nothing stored");
    }
}

#[tokio::test]
async fn amazon_timing_out_answers_502_and_the_exchange_is_never_retried() {
    let mock = token_double_answering(
        tokens_answer("Atzr|late", "Atza|late").set_delay(Duration::from_secs(7)),
    )
    .await;
    let app = spawn_with_token_double(&mock).await;
    let browser = app.signed_in_browser("acme", "u").await;
    let url = callback_url(&browser, US, "A1SELLER").await;

    let started = Instant::now();
    let response = browser.client.get(&url).send().await.unwrap();
    let waited = started.elapsed();
    assert_refusal_page(response, 502, "token endpoint timed out").await;
    assert!(
        waited < Duration::from_secs(7),
        "gave up after about 5 s, not {waited:?}"
    );
    // Give a retry, if there were one, time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(token_requests(&mock).await, 1, "exactly one request");
    assert_eq!(connection_count(&app).await, 0, "nothing stored");

    // Reloading the page does not spend the code a second time either.
    let reload = browser.client.get(&url).send().await.unwrap();
    assert_refusal_page(reload, 400, "reload after the timeout").await;
    assert_eq!(token_requests(&mock).await, 1, "still exactly one request");
}

#[tokio::test]
async fn concurrent_replays_make_one_exchange_and_one_connection() {
    let mock = token_double_answering(
        tokens_answer("Atzr|once", "Atza|once").set_delay(Duration::from_millis(300)),
    )
    .await;
    let app = spawn_with_token_double(&mock).await;
    let browser = app.signed_in_browser("acme", "u").await;
    let url = callback_url(&browser, US, "A1SELLER").await;

    let responses = futures::future::join_all(
        (0..5).map(|_| async { browser.client.get(&url).send().await.unwrap() }),
    )
    .await;
    let mut statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, vec![303, 400, 400, 400, 400]);
    assert_eq!(token_requests(&mock).await, 1, "one exchange");
    assert_eq!(connection_count(&app).await, 1, "one connection row");
    let rows = connection_rows(&browser.page().await);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, "active");
}

#[tokio::test]
async fn concurrent_replays_across_two_instances_make_one_exchange() {
    let mock = token_double_answering(
        tokens_answer("Atzr|once", "Atza|once").set_delay(Duration::from_millis(300)),
    )
    .await;
    let first = spawn_with_token_double(&mock).await;
    let token_url = token_url(&mock);
    let second =
        TestApp::spawn_on(first.db.clone(), move |s| s.lwa_token_url = Some(token_url)).await;
    let browser = first.signed_in_browser("acme", "u").await;
    let url = callback_url(&browser, US, "A1SELLER").await;
    // Sessions live in PostgreSQL: the same cookie works on either instance
    // (the cookie jar sends it to both, as they share the host).
    let on_second = url.replacen(&first.base, &second.base, 1);
    assert_eq!(
        browser
            .client
            .get(second.url("/settings/connections"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let responses = futures::future::join_all((0..6).map(|i| {
        let target = if i % 2 == 0 { &url } else { &on_second };
        let client = &browser.client;
        async move { client.get(target).send().await.unwrap() }
    }))
    .await;
    let mut statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, vec![303, 400, 400, 400, 400, 400]);
    assert_eq!(token_requests(&mock).await, 1, "one exchange across both");
    assert_eq!(connection_count(&first).await, 1, "one connection row");
}
