//! The whole authorization flow over real HTTP (CONTRACT §2, §4; issue 2):
//! login link → Settings → Connections → Connect → Amazon's consent URL →
//! sandbox consent → callback → the connection, active, with its refresh
//! token stored only sealed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::flow_support::*;
use secrecy::ExposeSecret;
use sp_broker::config::SANDBOX_APP_ID;
use sp_broker::crypto::{Purpose, SealContext};

/// Checks a consent URL: `{central}/apps/authorize/consent` with exactly
/// `application_id`, `state`, `redirect_uri` (and `version=beta` when `draft`).
/// Returns the state.
fn assert_consent_url(url: &str, central: &str, app_id: &str, base: &str, draft: bool) -> String {
    let prefix = format!("{central}/apps/authorize/consent?");
    assert!(url.starts_with(&prefix), "{url} should start with {prefix}");
    let pairs = query_pairs(url);
    let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let mut expected = vec!["application_id", "state", "redirect_uri"];
    if draft {
        expected.push("version");
    }
    assert_eq!(names, expected, "consent URL parameters of {url}");
    assert_eq!(query_param(url, "application_id").unwrap(), app_id);
    assert_eq!(
        query_param(url, "redirect_uri").unwrap(),
        format!("{base}/oauth/amazon/callback")
    );
    if draft {
        assert_eq!(query_param(url, "version").unwrap(), "beta");
    }
    let state = query_param(url, "state").unwrap();
    // ≥ 128 random bits: at least 22 base64url characters.
    assert!(state.len() >= 22, "state too short: {state}");
    assert!(
        state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "state is URL-safe: {state}"
    );
    state
}

#[tokio::test]
async fn whole_flow_connects_a_seller_and_stores_no_plaintext_secret() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;

    // Login link → a session, 303 to the page.
    let client = app.browser();
    let link = app.login_link("acme", "user-1").await;
    let login = client.get(&link).send().await.unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(location(&login), "/settings/connections");

    // The page: the connect form exactly as the contract names it.
    let page = client
        .get(app.url("/settings/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"<form method="post" action="/settings/connections/connect""#));
    assert!(page.contains(r#"<select name="marketplace_id">"#));
    assert!(page.contains(r#"<select name="account_type">"#));
    assert!(page.contains("Connect Amazon account"));
    assert!(connection_rows(&page).is_empty());
    let csrf = extract_attr(&page, "name=\"csrf_token\" value=\"").expect("csrf token");
    let browser = Browser {
        client: client.clone(),
        base: app.base.clone(),
        csrf,
    };

    // Connect → 303 to the consent URL with exactly the right parameters.
    let connect = browser.connect(US, "seller").await;
    assert_eq!(connect.status(), 303);
    assert_eq!(
        header(&connect, "cache-control").as_deref(),
        Some("no-store")
    );
    let consent_url = location(&connect);
    let state = assert_consent_url(
        &consent_url,
        &format!("{}/sandbox", app.base),
        SANDBOX_APP_ID,
        &app.base,
        false,
    );
    assert_eq!(
        oauth_state_count(&app).await,
        1,
        "one pending authorization"
    );

    // The sandbox consent page, clearly the sandbox.
    let consent_page = client.get(&consent_url).send().await.unwrap();
    assert_eq!(consent_page.status(), 200);
    let consent_page = consent_page.text().await.unwrap();
    assert!(consent_page.contains("sp-broker sandbox"));
    assert!(consent_page.contains("Confirm"));

    // Confirm → Amazon's redirect back with state, selling partner id and code.
    let callback_url = browser.consent(&consent_url, "A1FLOWSELLER").await;
    assert!(
        callback_url.starts_with(&format!("{}/oauth/amazon/callback?", app.base)),
        "{callback_url}"
    );
    assert_eq!(query_param(&callback_url, "state").unwrap(), state);
    assert_eq!(
        query_param(&callback_url, "selling_partner_id").unwrap(),
        "A1FLOWSELLER"
    );
    let code = query_param(&callback_url, "spapi_oauth_code").expect("a code");

    // Callback → 303 to the page, with no code or state in the URL.
    let callback = client.get(&callback_url).send().await.unwrap();
    assert_eq!(callback.status(), 303);
    assert_eq!(location(&callback), "/settings/connections");
    assert_eq!(
        header(&callback, "cache-control").as_deref(),
        Some("no-store")
    );
    assert_eq!(
        header(&callback, "referrer-policy").as_deref(),
        Some("no-referrer")
    );

    // The page shows the connection, active, and says what happened.
    let page = browser.page().await;
    let rows = connection_rows(&page);
    assert_eq!(rows.len(), 1, "{page}");
    assert_eq!(rows[0].1, "A1FLOWSELLER");
    assert_eq!(rows[0].2, "active");
    assert!(page.contains(&format!("data-connection-id=\"{}\"", rows[0].0)));
    let message = status_message(&page).expect("a role=status message");
    assert!(message.starts_with("Connected"), "{message}");
    assert!(message.contains("A1FLOWSELLER"), "{message}");
    assert!(!page.contains(&code) && !page.contains(&state));

    // Stored: active, authorized now, refresh token sealed; the state is spent.
    let stored = stored_connection(&app, &rows[0].0).await;
    assert_eq!(stored.status, "active");
    assert_eq!(stored.region, "na");
    assert!(stored.authorized_at.is_some());
    assert!(stored.refresh_token_sealed.is_some());
    assert_eq!(oauth_state_count(&app).await, 0, "the state was consumed");

    // No token, code or state anywhere in the database in plaintext. The
    // sandbox's refresh tokens start with Atzr| and its access tokens Atza|.
    let dump = app.database_dump().await;
    for secret in ["Atzr|", "Atza|", code.as_str(), state.as_str()] {
        assert!(!dump.contains(secret), "{secret} is stored in plaintext");
    }
    if let Some(pg_dump) = pg_dump(&app).await {
        assert!(pg_dump.contains("refresh_token_sealed"), "a real dump");
        for secret in ["Atzr|", "Atza|", code.as_str(), state.as_str()] {
            assert!(!pg_dump.contains(secret), "{secret} in pg_dump");
            assert!(
                !pg_dump.contains(&bytea_hex(secret)),
                "{secret} in a bytea column of pg_dump"
            );
        }
    }
}

#[tokio::test]
async fn exchange_sends_lwas_form_once_and_the_token_is_stored_sealed() {
    const REFRESH: &str = "Atzr|CANARY-REFRESH-3b8e0f1c9d2a";
    const ACCESS: &str = "Atza|CANARY-ACCESS-77aa01d4e5f6";
    let mock = token_double_answering(tokens_answer(REFRESH, ACCESS)).await;
    let app = spawn_with_token_double(&mock).await;
    let browser = app.signed_in_browser("acme", "user-1").await;

    let callback_url = callback_url(&browser, US, "A1DOUBLESELLER").await;
    let code = query_param(&callback_url, "spapi_oauth_code").unwrap();
    let callback = browser.client.get(&callback_url).send().await.unwrap();
    assert_eq!(callback.status(), 303);

    // Exactly one request, with exactly LWA's authorization_code form.
    let forms = token_request_forms(&mock).await;
    assert_eq!(forms.len(), 1, "one code exchange");
    let mut form = forms[0].clone();
    form.sort();
    let mut expected = vec![
        (
            "client_id".to_owned(),
            sp_broker::config::SANDBOX_CLIENT_ID.to_owned(),
        ),
        (
            "client_secret".to_owned(),
            sp_broker::config::SANDBOX_CLIENT_SECRET.to_owned(),
        ),
        ("code".to_owned(), code.clone()),
        ("grant_type".to_owned(), "authorization_code".to_owned()),
        (
            "redirect_uri".to_owned(),
            format!("{}/oauth/amazon/callback", app.base),
        ),
    ];
    expected.sort();
    assert_eq!(form, expected);

    // The refresh token is stored sealed, bound to its tenant and row, and is
    // nowhere in the database in clear.
    let rows = connection_rows(&browser.page().await);
    assert_eq!(rows.len(), 1);
    let stored = stored_connection(&app, &rows[0].0).await;
    let sealed = stored.refresh_token_sealed.expect("refresh token stored");
    let tenant = stored.tenant_id.to_string();
    let row = stored.id.to_string();
    let opened = app
        .services
        .keys
        .open_str(
            SealContext {
                purpose: Purpose::RefreshToken,
                tenant: &tenant,
                row: &row,
            },
            &sealed,
        )
        .expect("the stored refresh token opens in its own context");
    assert_eq!(opened.expose_secret(), REFRESH);
    let dump = app.database_dump().await;
    for secret in [REFRESH, ACCESS, "CANARY", code.as_str()] {
        assert!(!dump.contains(secret), "{secret} is stored in plaintext");
    }
    if let Some(pg_dump) = pg_dump(&app).await {
        assert!(pg_dump.contains("refresh_token_sealed"), "a real dump");
        for secret in [REFRESH, ACCESS, "CANARY", code.as_str()] {
            assert!(!pg_dump.contains(secret), "{secret} in pg_dump");
            assert!(
                !pg_dump.contains(&bytea_hex(secret)),
                "{secret} in a bytea column of pg_dump"
            );
        }
    }
}

#[tokio::test]
async fn consent_url_carries_version_beta_only_for_a_draft_app() {
    let published = TestApp::spawn().await;
    let browser = published.signed_in_browser("acme", "u").await;
    let connect = browser.connect(US, "seller").await;
    assert_eq!(connect.status(), 303);
    let url = location(&connect);
    assert_consent_url(
        &url,
        &format!("{}/sandbox", published.base),
        SANDBOX_APP_ID,
        &published.base,
        false,
    );
    assert!(!url.contains("version"), "{url}");

    let draft = TestApp::spawn_with(|s| s.app_draft = "true".into()).await;
    let browser = draft.signed_in_browser("acme", "u").await;
    let connect = browser.connect(US, "seller").await;
    assert_eq!(connect.status(), 303);
    assert_consent_url(
        &location(&connect),
        &format!("{}/sandbox", draft.base),
        SANDBOX_APP_ID,
        &draft.base,
        true,
    );

    // In draft too, the whole flow still completes through the sandbox.
    let callback = browser.connect_through(US, "A1DRAFTSELLER").await;
    assert_eq!(callback.status(), 303);
    let rows = connection_rows(&browser.page().await);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, "active");
}

#[tokio::test]
async fn live_consent_urls_go_to_the_marketplaces_own_central_host() {
    let app = TestApp::spawn_with(live).await;
    let browser = app.signed_in_browser("acme", "u").await;
    for (marketplace, account_type, central) in [
        (US, "seller", "https://sellercentral.amazon.com"),
        (US, "vendor", "https://vendorcentral.amazon.com"),
        (GERMANY, "seller", "https://sellercentral-europe.amazon.com"),
        (GERMANY, "vendor", "https://vendorcentral.amazon.de"),
        (JAPAN, "seller", "https://sellercentral.amazon.co.jp"),
    ] {
        let connect = browser.connect(marketplace, account_type).await;
        assert_eq!(connect.status(), 303, "{marketplace} {account_type}");
        assert_consent_url(&location(&connect), central, LIVE_APP_ID, &app.base, false);
    }
    // Each Connect made its own pending authorization with its own state.
    assert_eq!(oauth_state_count(&app).await, 5);
    let states: std::collections::HashSet<Vec<u8>> =
        sqlx::query_scalar("select state_hash from oauth_state")
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(states.len(), 5);

    // The tenant's last choice is preselected next time.
    let page = browser.page().await;
    assert!(
        page.contains(&format!("<option value=\"{JAPAN}\" selected>")),
        "last marketplace preselected"
    );

    // The simulated Amazon exists only in sandbox mode.
    let sandbox = browser
        .client
        .get(app.url("/sandbox/apps/authorize/consent"))
        .send()
        .await
        .unwrap();
    assert_eq!(sandbox.status(), 404);
}

#[tokio::test]
async fn live_draft_app_adds_version_beta() {
    let app = TestApp::spawn_with(|s| {
        live(s);
        s.app_draft = "true".into();
    })
    .await;
    let browser = app.signed_in_browser("acme", "u").await;
    let connect = browser.connect(GERMANY, "seller").await;
    assert_eq!(connect.status(), 303);
    assert_consent_url(
        &location(&connect),
        "https://sellercentral-europe.amazon.com",
        LIVE_APP_ID,
        &app.base,
        true,
    );
}

#[tokio::test]
async fn an_eu_connection_is_stored_in_the_eu_region() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let callback = browser.connect_through(GERMANY, "A1EUSELLER").await;
    assert_eq!(callback.status(), 303);
    let page = browser.page().await;
    let rows = connection_rows(&page);
    assert_eq!(rows.len(), 1);
    let stored = stored_connection(&app, &rows[0].0).await;
    assert_eq!(stored.region, "eu");
    assert_eq!(stored.marketplace_id, GERMANY);
    assert_eq!(stored.status, "active");
    assert!(page.contains("Europe"));
}

#[tokio::test]
async fn unknown_marketplace_or_account_type_is_refused() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let bad_marketplace = browser.connect("NOTAMARKETPLACE", "seller").await;
    assert_refusal_page(bad_marketplace, 400, "unknown marketplace").await;
    let bad_type = browser.connect(US, "wholesaler").await;
    assert_refusal_page(bad_type, 400, "unknown account type").await;
    assert_eq!(oauth_state_count(&app).await, 0);
}

#[tokio::test]
async fn a_vendor_connection_is_stored_as_a_vendor() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let connect = browser.connect(GERMANY, "vendor").await;
    assert_eq!(connect.status(), 303);
    let callback_url = browser.consent(&location(&connect), "A1VENDOR").await;
    let callback = browser.client.get(callback_url).send().await.unwrap();
    assert_eq!(callback.status(), 303);
    let page = browser.page().await;
    let rows = rows_for(&page, "A1VENDOR");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, "active");
    let stored = stored_connection(&app, &rows[0].0).await;
    assert_eq!(stored.account_type, "vendor");
    assert_eq!(stored.region, "eu");
    assert!(page.contains("Vendor"));
}
