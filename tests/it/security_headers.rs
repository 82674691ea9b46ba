//! The security headers of SECURITY.md on every HTML response, error pages
//! included, with a CSP whose `form-action` still lets the Connect form's
//! redirect reach Amazon's consent page.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::flow_support::*;
use sp_broker::amazon::marketplaces::MARKETPLACES;
use std::collections::HashMap;

/// The CSP's directives: name → sources.
fn csp_directives(csp: &str) -> HashMap<String, Vec<String>> {
    csp.split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let mut words = d.split_whitespace().map(str::to_owned);
            (words.next().unwrap(), words.collect())
        })
        .collect()
}

/// Checks the headers every response carries; returns the CSP's directives.
fn assert_security_headers(
    response: &reqwest::Response,
    what: &str,
) -> HashMap<String, Vec<String>> {
    let csp = header(response, "content-security-policy")
        .unwrap_or_else(|| panic!("{what}: a Content-Security-Policy"));
    let directives = csp_directives(&csp);
    for (name, sources) in [
        ("default-src", vec!["'none'"]),
        ("style-src", vec!["'self'"]),
        ("img-src", vec!["'self'"]),
        ("frame-ancestors", vec!["'none'"]),
        ("base-uri", vec!["'none'"]),
    ] {
        assert_eq!(
            directives
                .get(name)
                .map(|v| v.iter().map(String::as_str).collect::<Vec<_>>()),
            Some(sources),
            "{what}: {name} in {csp}"
        );
    }
    let form_action = directives
        .get("form-action")
        .unwrap_or_else(|| panic!("{what}: form-action in {csp}"));
    assert!(form_action.contains(&"'self'".to_owned()), "{what}: {csp}");
    assert!(!csp.contains("unsafe"), "{what}: {csp}");
    assert!(
        !directives.contains_key("script-src"),
        "{what}: no scripts: {csp}"
    );
    assert_eq!(
        header(response, "referrer-policy").as_deref(),
        Some("no-referrer"),
        "{what}"
    );
    assert_eq!(
        header(response, "x-content-type-options").as_deref(),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        header(response, "x-frame-options").as_deref(),
        Some("DENY"),
        "{what}"
    );
    directives
}

fn assert_html(response: &reqwest::Response, what: &str) {
    let content_type = header(response, "content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/html"),
        "{what}: {content_type}"
    );
}

#[tokio::test]
async fn every_html_response_carries_the_security_headers() {
    // The token endpoint is unreachable, so a callback ends on the 502 page.
    let app =
        TestApp::spawn_with(|s| s.lwa_token_url = Some("http://127.0.0.1:9/auth/o2/token".into()))
            .await;
    let anonymous = app.browser();
    let browser = app.signed_in_browser("acme", "u").await;
    let mut responses: Vec<(String, u16, reqwest::Response)> = Vec::new();

    let mut get = |what: &str, status: u16, response: reqwest::Response| {
        responses.push((what.to_owned(), status, response));
    };
    get(
        "the page",
        200,
        browser
            .client
            .get(app.url("/settings/connections"))
            .send()
            .await
            .unwrap(),
    );
    get(
        "401: the page without a session",
        401,
        anonymous
            .get(app.url("/settings/connections"))
            .send()
            .await
            .unwrap(),
    );
    get(
        "404: an unknown path",
        404,
        anonymous
            .get(app.url("/no/such/page"))
            .send()
            .await
            .unwrap(),
    );
    get(
        "400: an unknown login link",
        400,
        anonymous
            .get(app.url("/login/unknown"))
            .send()
            .await
            .unwrap(),
    );
    get(
        "403: a form without its CSRF token",
        403,
        browser
            .client
            .post(app.url("/settings/connections/connect"))
            .form(&[("marketplace_id", US), ("account_type", "seller")])
            .send()
            .await
            .unwrap(),
    );
    get(
        "400: a callback without parameters",
        400,
        browser
            .client
            .get(app.url("/oauth/amazon/callback"))
            .send()
            .await
            .unwrap(),
    );
    get(
        "400: a Login URI with a hostile callback",
        400,
        browser
            .client
            .get(app.url("/oauth/amazon/login?amazon_callback_uri=https%3A%2F%2Fevil.example%2F&amazon_state=x"))
            .send()
            .await
            .unwrap(),
    );
    get(
        "401: the Login URI without a session",
        401,
        anonymous
            .get(app.url("/oauth/amazon/login"))
            .send()
            .await
            .unwrap(),
    );
    let connect = browser.connect(US, "seller").await;
    let consent_url = location(&connect);
    get(
        "the sandbox consent page",
        200,
        browser.client.get(&consent_url).send().await.unwrap(),
    );
    let callback_url = browser.consent(&consent_url, "A1SELLER").await;
    get(
        "502: the exchange failed",
        502,
        browser.client.get(&callback_url).send().await.unwrap(),
    );
    get(
        "404: another tenant's or no connection",
        404,
        browser
            .client
            .post(app.url("/settings/connections/00000000-0000-0000-0000-000000000000/disconnect"))
            .form(&[("csrf_token", browser.csrf.as_str())])
            .send()
            .await
            .unwrap(),
    );

    // A 500: the database loses a table under the app.
    sqlx::query("alter table connection rename to connection_moved_away")
        .execute(&app.pool)
        .await
        .unwrap();
    let failing = browser
        .client
        .get(app.url("/settings/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(failing.status(), 500);
    assert_html(&failing, "500");
    assert_security_headers(&failing, "500");
    let body = failing.text().await.unwrap();
    assert!(body.contains("<h1>"), "{body}");
    assert!(
        !body.contains("connection_moved_away") && !body.contains("relation"),
        "the 500 page does not leak the database error: {body}"
    );

    for (what, status, response) in &responses {
        assert_eq!(response.status(), *status, "{what}");
        assert_html(response, what);
        let directives = assert_security_headers(response, what);
        // The sandbox consent origin is the broker's own: 'self' covers it.
        assert!(directives["form-action"].contains(&"'self'".to_owned()));
        assert_eq!(
            header(response, "strict-transport-security"),
            None,
            "{what}: no HSTS on plain http"
        );
    }

    // Redirects carry them too.
    let connect = browser.connect(US, "seller").await;
    assert_eq!(connect.status(), 303);
    assert_security_headers(&connect, "the Connect redirect");
}

#[tokio::test]
async fn live_csp_lets_every_consent_redirect_through() {
    let app = TestApp::spawn_with(live).await;
    let browser = app.signed_in_browser("acme", "u").await;
    let page = browser
        .client
        .get(app.url("/settings/connections"))
        .send()
        .await
        .unwrap();
    let directives = assert_security_headers(&page, "the page");
    let form_action = directives["form-action"].clone();

    // Every marketplace and account type: the Connect redirect's origin is allowed.
    for marketplace in MARKETPLACES {
        for account_type in ["seller", "vendor"] {
            let connect = browser.connect(marketplace.id, account_type).await;
            assert_eq!(connect.status(), 303);
            let target = url::Url::parse(&location(&connect)).unwrap();
            let origin = target.origin().ascii_serialization();
            assert!(
                form_action.contains(&origin),
                "{} {account_type}: {origin} missing from form-action {form_action:?}",
                marketplace.id
            );
        }
    }
    for origin in [
        "https://sellercentral.amazon.com",
        "https://sellercentral-europe.amazon.com",
        "https://vendorcentral.amazon.com",
        "https://vendorcentral.amazon.de",
        "https://sellercentral.amazon.co.jp",
    ] {
        assert!(form_action.contains(&origin.to_owned()), "{origin}");
    }

    // And the 404 page in live mode.
    let missing = browser
        .client
        .get(app.url("/sandbox"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_html(&missing, "404");
    let directives = assert_security_headers(&missing, "404");
    assert_eq!(directives["form-action"], form_action);
}

#[tokio::test]
async fn hsts_under_https() {
    let app = TestApp::spawn_with(|s| s.public_url = "https://broker.example.com".into()).await;
    for path in ["/settings/connections", "/no/such/page"] {
        let response = app.browser().get(app.url(path)).send().await.unwrap();
        let hsts = header(&response, "strict-transport-security")
            .unwrap_or_else(|| panic!("{path}: HSTS under https"));
        assert!(hsts.contains("max-age="), "{hsts}");
        let max_age: u64 = hsts
            .split(';')
            .find_map(|p| p.trim().strip_prefix("max-age="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(max_age >= 15_552_000, "at least 180 days: {hsts}");
        assert_security_headers(&response, path);
    }
}
