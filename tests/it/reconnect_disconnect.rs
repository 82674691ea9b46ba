//! Reconnect and Disconnect from Settings → Connections (CONTRACT §2, §4.3):
//! a reconnect renews the same connection; one that comes back as another
//! Amazon account stores that account as its own connection and says so;
//! Disconnect erases the stored tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::flow_support::*;

/// Connects `selling_partner_id` through the sandbox; returns its connection id.
async fn connected(browser: &Browser, selling_partner_id: &str) -> String {
    let callback = browser.connect_through(US, selling_partner_id).await;
    assert_eq!(callback.status(), 303);
    let page = browser.page().await;
    let rows = rows_for(&page, selling_partner_id);
    assert_eq!(rows.len(), 1, "{page}");
    assert_eq!(rows[0].2, "active");
    rows[0].0.clone()
}

/// Reconnect → sandbox consent as `selling_partner_id` → callback.
async fn reconnect_as(browser: &Browser, id: &str, selling_partner_id: &str) -> reqwest::Response {
    let reconnect = browser.post_action(id, "reconnect").await;
    assert_eq!(reconnect.status(), 303, "reconnect answers 303 to Amazon");
    let callback_url = browser
        .consent(&location(&reconnect), selling_partner_id)
        .await;
    browser.client.get(callback_url).send().await.unwrap()
}

#[tokio::test]
async fn reconnect_renews_the_same_connection() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let id = connected(&browser, "A1SELLER").await;
    let before = stored_connection(&app, &id).await;

    app.clock.advance(time::Duration::minutes(5));
    let callback = reconnect_as(&browser, &id, "A1SELLER").await;
    assert_eq!(callback.status(), 303);
    assert_eq!(location(&callback), "/settings/connections");

    let page = browser.page().await;
    let rows = connection_rows(&page);
    assert_eq!(
        rows,
        vec![(id.clone(), "A1SELLER".to_owned(), "active".to_owned())]
    );
    let message = status_message(&page).expect("a role=status message");
    assert!(message.starts_with("Reconnected"), "{message}");

    let after = stored_connection(&app, &id).await;
    assert_eq!(connection_count(&app).await, 1, "still one row");
    assert_eq!(after.status, "active");
    assert!(
        after.authorized_at > before.authorized_at,
        "authorized_at renewed"
    );
    assert_ne!(
        after.refresh_token_sealed, before.refresh_token_sealed,
        "the new refresh token replaced the old one"
    );
}

#[tokio::test]
async fn reconnect_as_another_account_stores_its_own_connection_and_says_so() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let id = connected(&browser, "A1ORIGINAL").await;
    let original = stored_connection(&app, &id).await;

    app.clock.advance(time::Duration::minutes(5));
    let callback = reconnect_as(&browser, &id, "A2SOMEONEELSE").await;
    assert_eq!(callback.status(), 303);

    let page = browser.page().await;
    let message = status_message(&page).expect("a role=status message");
    assert!(
        message.contains("A2SOMEONEELSE") && message.contains("not A1ORIGINAL"),
        "the message says which account came back, and that it is not the one reconnected: {message}"
    );
    assert_eq!(connection_count(&app).await, 2);
    let rows = connection_rows(&page);
    assert_eq!(rows.len(), 2, "{page}");
    assert!(rows.contains(&(id.clone(), "A1ORIGINAL".to_owned(), "active".to_owned())));
    let other = rows_for(&page, "A2SOMEONEELSE");
    assert_eq!(other.len(), 1);
    assert_ne!(other[0].0, id, "its own connection");
    assert_eq!(other[0].2, "active");

    // The original is untouched: same token, same authorization time.
    assert_eq!(stored_connection(&app, &id).await, original);
}

#[tokio::test]
async fn disconnect_erases_the_stored_tokens() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let id = connected(&browser, "A1SELLER").await;
    let before = stored_connection(&app, &id).await;
    assert!(before.refresh_token_sealed.is_some());
    assert!(before.access_token_sealed.is_some());

    let disconnect = browser.post_action(&id, "disconnect").await;
    assert_eq!(disconnect.status(), 303);
    assert_eq!(location(&disconnect), "/settings/connections");

    let page = browser.page().await;
    assert_eq!(
        connection_rows(&page),
        vec![(id.clone(), "A1SELLER".to_owned(), "disconnected".to_owned())]
    );
    assert!(status_message(&page).is_some_and(|m| m.starts_with("Disconnected")));

    let after = stored_connection(&app, &id).await;
    assert_eq!(after.status, "disconnected");
    assert_eq!(after.refresh_token_sealed, None, "refresh token erased");
    assert_eq!(after.access_token_sealed, None, "access token erased");
    let (refresh, access): (Option<Vec<u8>>, Option<Vec<u8>>) = sqlx::query_as(
        "select refresh_token_sealed, access_token_sealed from connection where id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(refresh.is_none() && access.is_none());

    // Reconnecting a disconnected account brings the same connection back.
    let callback = reconnect_as(&browser, &id, "A1SELLER").await;
    assert_eq!(callback.status(), 303);
    let page = browser.page().await;
    assert_eq!(
        connection_rows(&page),
        vec![(id.clone(), "A1SELLER".to_owned(), "active".to_owned())]
    );
    assert!(stored_connection(&app, &id)
        .await
        .refresh_token_sealed
        .is_some());
}

#[tokio::test]
async fn another_tenants_connection_cannot_be_reconnected_or_disconnected() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in_browser("acme", "u").await;
    let id = connected(&owner, "A1SELLER").await;
    let before = stored_connection(&app, &id).await;

    let stranger = app.signed_in_browser("other-tenant", "x").await;
    for action in ["reconnect", "disconnect"] {
        let response = stranger.post_action(&id, action).await;
        assert_eq!(
            response.status(),
            404,
            "{action} of another tenant's connection"
        );
        assert_eq!(header(&response, "location"), None);
    }
    assert_eq!(stored_connection(&app, &id).await, before);
    assert_eq!(oauth_state_count(&app).await, 0, "no pending authorization");
}
