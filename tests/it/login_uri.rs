//! The app's OAuth Login URI, `GET /oauth/amazon/login` (CONTRACT §2, §4.2):
//! where Amazon's Appstore and "Re-authorize" start. Only for a signed-in
//! browser; `amazon_callback_uri` must be Amazon's own (or the configured
//! override origin), anything else is refused with 400 and no redirect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::flow_support::*;
use sp_broker::db::login_tokens::LoginKind;

fn login_uri(app: &TestApp, callback_uri: &str, amazon_state: &str, spid: &str) -> String {
    let mut url = url::Url::parse(&app.url("/oauth/amazon/login")).unwrap();
    url.query_pairs_mut()
        .append_pair("amazon_callback_uri", callback_uri)
        .append_pair("amazon_state", amazon_state)
        .append_pair("selling_partner_id", spid);
    url.to_string()
}

/// Checks the 302 to `callback_uri` with redirect_uri, amazon_state and state
/// added; returns the Location.
fn assert_login_redirect(
    response: &reqwest::Response,
    app: &TestApp,
    callback_uri: &str,
    amazon_state: &str,
    draft: bool,
) -> String {
    assert_eq!(response.status(), 302);
    let target = location(response);
    assert!(
        target.starts_with(&format!("{callback_uri}?")),
        "{target} goes to {callback_uri}"
    );
    let names: Vec<String> = query_pairs(&target).into_iter().map(|(k, _)| k).collect();
    let mut expected = vec!["redirect_uri", "amazon_state", "state"];
    if draft {
        expected.push("version");
    }
    assert_eq!(names, expected, "{target}");
    assert_eq!(
        query_param(&target, "redirect_uri").unwrap(),
        app.url("/oauth/amazon/callback")
    );
    assert_eq!(query_param(&target, "amazon_state").unwrap(), amazon_state);
    assert!(query_param(&target, "state").unwrap().len() >= 22);
    if draft {
        assert_eq!(query_param(&target, "version").unwrap(), "beta");
    }
    target
}

#[tokio::test]
async fn without_a_session_the_login_uri_explains_where_to_start() {
    let app = TestApp::spawn().await;
    let url = login_uri(
        &app,
        &app.url("/sandbox/apps/authorize/consent"),
        "amz-state",
        "A1SELLER",
    );
    let response = app.browser().get(url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(header(&response, "location"), None);
    assert!(header(&response, "content-type")
        .unwrap()
        .starts_with("text/html"));
    let body = response.text().await.unwrap();
    assert!(body.contains("<h1>"), "{body}");
    assert_eq!(oauth_state_count(&app).await, 0);
}

#[tokio::test]
async fn sandbox_login_uri_redirects_to_amazon_and_completes_the_connection() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let callback_uri = app.url("/sandbox/apps/authorize/consent");
    let response = browser
        .client
        .get(login_uri(&app, &callback_uri, "amz-state-42", "A1APPSTORE"))
        .send()
        .await
        .unwrap();
    let target = assert_login_redirect(&response, &app, &callback_uri, "amz-state-42", false);

    // The pending authorization is a Login URI one remembering the seller given.
    let (flow, expected): (String, Option<String>) =
        sqlx::query_as("select flow, expected_selling_partner_id from oauth_state")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(flow, "login_uri");
    assert_eq!(expected.as_deref(), Some("A1APPSTORE"));

    // Amazon's page, Confirm, back to the callback: connected.
    let callback_url = browser.consent(&target, "A1APPSTORE").await;
    assert_eq!(
        query_param(&callback_url, "state"),
        query_param(&target, "state")
    );
    let callback = browser.client.get(callback_url).send().await.unwrap();
    assert_eq!(callback.status(), 303);
    assert_eq!(location(&callback), "/settings/connections");
    let page = browser.page().await;
    assert_eq!(rows_for(&page, "A1APPSTORE").len(), 1);
    assert_eq!(rows_for(&page, "A1APPSTORE")[0].2, "active");
    assert!(status_message(&page).is_some_and(|m| m.starts_with("Connected")));
}

#[tokio::test]
async fn login_uri_state_is_bound_to_the_session_that_started_it() {
    let mock = token_double().await;
    let app = spawn_with_token_double(&mock).await;
    let alice = app.signed_in_browser("acme", "alice").await;
    let callback_uri = app.url("/sandbox/apps/authorize/consent");
    let response = alice
        .client
        .get(login_uri(&app, &callback_uri, "amz", "A1SELLER"))
        .send()
        .await
        .unwrap();
    let target = assert_login_redirect(&response, &app, &callback_uri, "amz", false);
    let callback_url = alice.consent(&target, "A1SELLER").await;

    let bob = app.signed_in_browser("acme", "bob").await;
    let refused = bob.client.get(&callback_url).send().await.unwrap();
    assert_refusal_page(refused, 400, "another session's Login URI state").await;
    assert_eq!(token_requests(&mock).await, 0);
    assert_eq!(connection_count(&app).await, 0);
}

#[tokio::test]
async fn draft_login_uri_adds_version_beta() {
    let app = TestApp::spawn_with(|s| s.app_draft = "true".into()).await;
    let browser = app.signed_in_browser("acme", "u").await;
    let callback_uri = app.url("/sandbox/apps/authorize/consent");
    let response = browser
        .client
        .get(login_uri(&app, &callback_uri, "s", "A1SELLER"))
        .send()
        .await
        .unwrap();
    assert_login_redirect(&response, &app, &callback_uri, "s", true);
}

#[tokio::test]
async fn the_embedding_app_can_hand_the_user_over_with_a_login_link() {
    // CONTRACT §4.2: the app sends the user through a login link whose
    // return_to is the Login URI, query included.
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("acme").await;
    let callback_uri = app.url("/sandbox/apps/authorize/consent");
    let login_uri = login_uri(&app, &callback_uri, "amz-handover", "A1HANDOVER");
    let return_to = login_uri.strip_prefix(&app.base).unwrap();
    let link = app
        .services
        .login_links
        .create(sp_broker::login_links::LinkRequest {
            kind: LoginKind::Tenant,
            tenant_id: Some(tenant.id),
            user_id: "u",
            email: None,
            return_to: Some(return_to),
        })
        .await
        .unwrap()
        .url;
    let client = app.browser();
    let login = client.get(&link).send().await.unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(location(&login), return_to);
    let response = client.get(app.url(return_to)).send().await.unwrap();
    assert_login_redirect(&response, &app, &callback_uri, "amz-handover", false);
}

#[tokio::test]
async fn live_login_uri_accepts_amazons_own_callback_uri() {
    let app = TestApp::spawn_with(live).await;
    let browser = app.signed_in_browser("acme", "u").await;
    for callback_uri in [
        "https://sellercentral.amazon.com/apps/authorize/confirm/amzn1.sp.solution.x",
        "https://sellercentral-europe.amazon.com/apps/authorize/confirm",
        "https://vendorcentral.amazon.de/apps/authorize/confirm",
        "https://www.amazon.de/apps/authorize/confirm",
    ] {
        let response = browser
            .client
            .get(login_uri(&app, callback_uri, "st", "A1SELLER"))
            .send()
            .await
            .unwrap();
        assert_login_redirect(&response, &app, callback_uri, "st", false);
    }
    // Authorizations are regional: the pending ones carry the callback host's region.
    let mut regions: Vec<String> =
        sqlx::query_scalar("select region from oauth_state order by region")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    regions.sort();
    assert_eq!(regions, vec!["eu", "eu", "eu", "na"]);
}

/// Values for `amazon_callback_uri` that must never be followed.
fn hostile_callback_uris(base: &str) -> Vec<String> {
    let port = base.rsplit(':').next().unwrap();
    let mut hostile: Vec<String> = [
        "https://evil.example/apps/authorize/confirm",
        "https://evil.example/sellercentral.amazon.com",
        "//evil.example",
        "//evil.example/apps/authorize/confirm",
        "/apps/authorize/confirm",
        "https://sellercentral.amazon.com.evil.example/",
        "https://amazon.com.evil.example/",
        "https://evilamazon.com/x",
        "https://x@evil.example",
        "https://x@evil.example/apps/authorize/confirm",
        "https://sellercentral.amazon.com@evil.example/",
        "https://x@sellercentral.amazon.com/x",
        "javascript:alert(1)",
        "JavaScript:alert(document.cookie)",
        "data:text/html,<script>alert(1)</script>",
        "http://sellercentral.amazon.com/",
        "http://sellercentral.amazon.com/apps/authorize/confirm",
        "https:\\\\evil.example",
        "https://sellercentral.amazon.com\\@evil.example/",
        "https://sellercentral.amazon.com\\.evil.example/",
        "/\\evil.example",
        "https://SellerCentral.Amazon.com/x",
        "https://SELLERCENTRAL.AMAZON.COM/x",
        "https://sellercentral%2eamazon%2ecom/x",
        "https://sellercentral%2Eamazon%2Ecom/x",
        "https://sellercentral.amazon.com%2eevil.example/x",
        "https://sellercentral.amazon.com:8443/x",
        "https://sellercentral.amazon.com:443/x",
        "https://sellercentral.amazon.com./x",
        "https://sellercentral.amazon.com\t.evil.example/x",
        " https://sellercentral.amazon.com/x",
        "https://",
        "",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    // Look-alikes of the sandbox override origin.
    hostile.extend([
        format!("http://127.0.0.1:{port}.evil.example/sandbox/apps/authorize/consent"),
        format!("http://evil@127.0.0.1:{port}/sandbox/apps/authorize/consent"),
        format!("http://127.0.0.1:{port}@evil.example/sandbox/apps/authorize/consent"),
        format!("https://127.0.0.1:{port}/sandbox/apps/authorize/consent"),
        format!("http://127.0.0.1:1{port}/sandbox/apps/authorize/consent"),
        format!("http://localhost:{port}/sandbox/apps/authorize/consent"),
    ]);
    hostile
}

async fn assert_all_refused(app: &TestApp) {
    let browser = app.signed_in_browser("acme", "u").await;
    for hostile in hostile_callback_uris(&app.base) {
        let response = browser
            .client
            .get(login_uri(app, &hostile, "st", "A1SELLER"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{hostile:?} must be refused");
        assert_eq!(
            header(&response, "location"),
            None,
            "{hostile:?}: no redirect"
        );
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("evil.example"),
            "{hostile:?}: the page does not echo the link"
        );
    }
    // amazon_callback_uri given twice: no way to sneak a second value past the check.
    let mut url = url::Url::parse(&app.url("/oauth/amazon/login")).unwrap();
    url.query_pairs_mut()
        .append_pair("amazon_callback_uri", "https://evil.example/")
        .append_pair(
            "amazon_callback_uri",
            "https://sellercentral.amazon.com/apps/authorize/confirm",
        )
        .append_pair("amazon_state", "st");
    let response = browser.client.get(url.as_str()).send().await.unwrap();
    let target = header(&response, "location").unwrap_or_default();
    assert!(
        !target.contains("evil.example"),
        "a repeated parameter must not redirect to {target}"
    );
    assert_eq!(
        oauth_state_count(app).await,
        i64::from(response.status() == 302),
        "no pending authorization for a refused link"
    );
}

#[tokio::test]
async fn hostile_callback_uris_are_refused_in_live_mode() {
    let app = TestApp::spawn_with(live).await;
    assert_all_refused(&app).await;
}

#[tokio::test]
async fn hostile_callback_uris_are_refused_in_sandbox_mode() {
    let app = TestApp::spawn().await;
    assert_all_refused(&app).await;
}
