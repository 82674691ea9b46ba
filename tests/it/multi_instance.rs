//! Several brokers on one database: a revoked API key or a disconnected
//! connection stops working on every instance at once (LISTEN/NOTIFY), even
//! though each instance serves keys and tokens from memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use secrecy::ExposeSecret;
use std::time::Duration;

async fn access_token_status(client: &reqwest::Client, base: &str, key: &str, id: &str) -> u16 {
    client
        .post(format!("{base}/v1/connections/{id}/access-token"))
        .bearer_auth(key)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until `expected` (the notification travels through PostgreSQL), at most 2 s.
async fn eventually(expected: u16, mut probe: impl AsyncFnMut() -> u16) -> u16 {
    let mut last = 0;
    for _ in 0..40 {
        last = probe().await;
        if last == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test]
async fn revocation_and_disconnect_reach_every_instance() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_on(a.db.clone(), |_| {}).await;
    let browser = a.signed_in_browser("acme", "u1").await;
    assert_eq!(
        browser
            .connect_through("ATVPDKIKX0DER", "A1MULTI")
            .await
            .status(),
        303
    );
    let id = connection_rows(&browser.page().await)[0].0.clone();

    let key = a
        .services
        .api_keys
        .create("svc", None, &[], "test")
        .await
        .unwrap();
    let key = key.expose_secret().to_owned();
    let client = reqwest::Client::new();
    // Both instances now hold the key and the connection in memory.
    assert_eq!(access_token_status(&client, &a.base, &key, &id).await, 200);
    assert_eq!(access_token_status(&client, &b.base, &key, &id).await, 200);

    // Disconnect through instance A's page: B stops handing out the token.
    let disconnect = browser.post_action(&id, "disconnect").await;
    assert_eq!(disconnect.status(), 303);
    let status = eventually(409, async || {
        access_token_status(&client, &b.base, &key, &id).await
    })
    .await;
    assert_eq!(
        status, 409,
        "instance B still served a disconnected connection"
    );

    // Revoke the key (as `sp-broker api-key revoke` does): both instances refuse it.
    let public_id = key.split('_').nth(1).unwrap().to_owned();
    a.services
        .api_keys
        .revoke(&public_id, "test")
        .await
        .unwrap();
    for base in [&a.base, &b.base] {
        let status = eventually(401, async || {
            access_token_status(&client, base, &key, &id).await
        })
        .await;
        assert_eq!(status, 401, "{base} still accepted a revoked key");
    }
}
