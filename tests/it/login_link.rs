//! One-time login links and the browser session they start (CONTRACT §2,
//! SECURITY.md "Sessions and forms"): single use, 10 minutes, a fresh
//! server-generated session id, and a cookie that is HttpOnly, SameSite=Lax,
//! Path=/, without Domain, Secure under https.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::flow_support::*;
use sp_broker::http::SESSION_COOKIE;

/// The session cookie a response sets: (value, attributes lowercased).
fn session_cookie(response: &reqwest::Response) -> Option<(String, Vec<String>)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(&format!("{SESSION_COOKIE}=")))
        .map(|c| {
            let mut parts = c.split(';').map(|p| p.trim().to_owned());
            let value = parts.next().unwrap()[SESSION_COOKIE.len() + 1..].to_owned();
            (value, parts.map(|p| p.to_lowercase()).collect())
        })
}

async fn page_status(app: &TestApp, client: &reqwest::Client) -> u16 {
    client
        .get(app.url("/settings/connections"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A client without a cookie store, sending exactly the cookie given.
async fn page_status_with_cookie(app: &TestApp, session_id: &str) -> u16 {
    reqwest::Client::new()
        .get(app.url("/settings/connections"))
        .header("cookie", format!("{SESSION_COOKIE}={session_id}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_login_link_works_once() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let link = app.login_link("acme", "u").await;

    let first = app.browser();
    let login = first.get(&link).send().await.unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(location(&login), "/settings/connections");
    assert!(session_cookie(&login).is_some(), "a session starts");
    assert_eq!(page_status(&app, &first).await, 200);

    let second = app.browser();
    let again = second.get(&link).send().await.unwrap();
    assert!(
        session_cookie(&again).is_none(),
        "no session for a used link"
    );
    let body = assert_status_html(again, 400).await;
    assert!(body.contains("<h1>"));
    assert_eq!(page_status(&app, &second).await, 401);
    // The first browser stays signed in.
    assert_eq!(page_status(&app, &first).await, 200);
}

async fn assert_status_html(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(header(&response, "location"), None);
    assert!(header(&response, "content-type")
        .unwrap()
        .starts_with("text/html"));
    response.text().await.unwrap()
}

#[tokio::test]
async fn an_expired_login_link_is_refused() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let link = app.login_link("acme", "u").await;
    app.clock.advance(time::Duration::minutes(11));
    let client = app.browser();
    let response = client.get(&link).send().await.unwrap();
    assert!(session_cookie(&response).is_none());
    assert_status_html(response, 400).await;
    assert_eq!(page_status(&app, &client).await, 401);
}

#[tokio::test]
async fn a_login_link_still_works_just_inside_10_minutes() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let link = app.login_link("acme", "u").await;
    app.clock.advance(time::Duration::minutes(9));
    let client = app.browser();
    assert_eq!(client.get(&link).send().await.unwrap().status(), 303);
    assert_eq!(page_status(&app, &client).await, 200);
}

#[tokio::test]
async fn an_unknown_login_token_is_refused() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let client = app.browser();
    for token in ["nope", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let response = client
            .get(app.url(&format!("/login/{token}")))
            .send()
            .await
            .unwrap();
        assert_status_html(response, 400).await;
    }
    assert_eq!(page_status(&app, &client).await, 401);
}

#[tokio::test]
async fn the_page_without_a_session_says_to_open_it_from_the_app() {
    let app = TestApp::spawn().await;
    let response = app
        .browser()
        .get(app.url("/settings/connections"))
        .send()
        .await
        .unwrap();
    let body = assert_status_html(response, 401).await;
    assert!(body.contains("<h1>"), "{body}");
    assert!(body.contains("app"), "{body}");
}

#[tokio::test]
async fn the_session_cookie_is_httponly_lax_path_root_without_domain() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let link = app.login_link("acme", "u").await;
    let login = app.browser().get(&link).send().await.unwrap();
    let (value, attributes) = session_cookie(&login).expect("a session cookie");
    assert!(value.len() >= 22, "≥ 128-bit session id: {value}");
    assert!(
        attributes.contains(&"httponly".to_owned()),
        "{attributes:?}"
    );
    assert!(
        attributes.contains(&"samesite=lax".to_owned()),
        "{attributes:?}"
    );
    assert!(attributes.contains(&"path=/".to_owned()), "{attributes:?}");
    assert!(
        !attributes.iter().any(|a| a.starts_with("domain")),
        "{attributes:?}"
    );
    assert!(
        !attributes.contains(&"secure".to_owned()),
        "not Secure on plain http: {attributes:?}"
    );
}

#[tokio::test]
async fn the_session_cookie_is_secure_under_https() {
    let app = TestApp::spawn_with(|s| s.public_url = "https://broker.example.com".into()).await;
    app.create_tenant("acme").await;
    let link = app.login_link("acme", "u").await;
    let path = link
        .strip_prefix("https://broker.example.com")
        .expect("login links start with the public URL");
    let login = app.browser().get(app.url(path)).send().await.unwrap();
    assert_eq!(login.status(), 303);
    let (_, attributes) = session_cookie(&login).expect("a session cookie");
    assert!(attributes.contains(&"secure".to_owned()), "{attributes:?}");
    assert!(
        attributes.contains(&"httponly".to_owned()),
        "{attributes:?}"
    );
    assert!(
        attributes.contains(&"samesite=lax".to_owned()),
        "{attributes:?}"
    );
}

#[tokio::test]
async fn signing_in_again_rotates_the_session_id() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let client = app.browser();
    let first = client
        .get(app.login_link("acme", "u").await)
        .send()
        .await
        .unwrap();
    let (old, _) = session_cookie(&first).unwrap();
    let second = client
        .get(app.login_link("acme", "u").await)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 303);
    let (new, _) = session_cookie(&second).expect("a new session cookie on login");
    assert_ne!(old, new, "the session id changes at login");
    assert_eq!(page_status_with_cookie(&app, &new).await, 200);
    assert_eq!(
        page_status_with_cookie(&app, &old).await,
        401,
        "the old session id no longer signs in"
    );
}

#[tokio::test]
async fn a_session_id_the_server_did_not_issue_is_never_adopted() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let planted = "AAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(page_status_with_cookie(&app, planted).await, 401);

    // A login in a browser carrying a planted cookie gets a fresh id.
    let login = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.login_link("acme", "u").await)
        .header("cookie", format!("{SESSION_COOKIE}={planted}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let (issued, _) = session_cookie(&login).expect("a session cookie");
    assert_ne!(issued, planted);
    assert_eq!(page_status_with_cookie(&app, planted).await, 401);
    assert_eq!(page_status_with_cookie(&app, &issued).await, 200);
}

#[tokio::test]
async fn sessions_are_stored_only_as_hashes() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let link = app.login_link("acme", "u").await;
    let token = link.rsplit('/').next().unwrap().to_owned();
    let login = app.browser().get(&link).send().await.unwrap();
    let (session_id, _) = session_cookie(&login).unwrap();
    let dump = app.database_dump().await;
    assert!(!dump.contains(&token), "login token stored in clear");
    assert!(!dump.contains(&session_id), "session id stored in clear");
}

#[tokio::test]
async fn a_session_ends_after_its_absolute_lifetime_however_active() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    // Active every hour (well inside the idle timeout) for 11 hours: still in.
    for _ in 0..11 {
        app.clock.advance(time::Duration::hours(1));
        assert_eq!(page_status(&app, &browser.client).await, 200);
    }
    app.clock.advance(time::Duration::hours(2));
    assert_eq!(
        page_status(&app, &browser.client).await,
        401,
        "signed out 12 hours after signing in"
    );
    // And its forms no longer work either.
    let connect = browser.connect(US, "seller").await;
    assert_eq!(connect.status(), 401);
    assert_eq!(oauth_state_count(&app).await, 0);
}

#[tokio::test]
async fn an_idle_session_that_expired_in_the_store_is_not_used() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    assert_eq!(page_status(&app, &browser.client).await, 200);
    sqlx::query("update browser_session set expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(page_status(&app, &browser.client).await, 401);
}
