//! Every state-changing form (Connect, Reconnect, Disconnect) needs this
//! session's CSRF token and, when an `Origin` header is sent, sp-broker's own
//! origin: otherwise 403 and nothing changes (CONTRACT §2, SECURITY.md
//! "Sessions and forms").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::flow_support::*;

/// What a refused form must leave exactly as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    connections: Vec<StoredConnection>,
    pending_authorizations: i64,
    last_marketplace: Option<String>,
    audit_events: i64,
}

async fn snapshot(app: &TestApp) -> Snapshot {
    Snapshot {
        connections: stored_connections(app).await,
        pending_authorizations: oauth_state_count(app).await,
        last_marketplace: sqlx::query_scalar(
            "select last_marketplace_id from tenant where slug = 'acme'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap(),
        audit_events: count(app, "audit_event").await,
    }
}

/// How a forged form is sent.
enum Forgery<'a> {
    NoToken,
    Token(&'a str),
    ForeignOrigin(&'a str),
    /// The right token, with these headers.
    Headers(&'a [(&'a str, &'a str)]),
}

async fn post(
    browser: &Browser,
    path: &str,
    forgery: &Forgery<'_>,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut form: Vec<(&str, &str)> = extra.to_vec();
    let mut request = browser.client.post(format!("{}{path}", browser.base));
    match forgery {
        Forgery::NoToken => {}
        Forgery::Token(token) => form.push(("csrf_token", token)),
        Forgery::ForeignOrigin(origin) => {
            form.push(("csrf_token", &browser.csrf));
            request = request.header("origin", *origin);
        }
        Forgery::Headers(headers) => {
            form.push(("csrf_token", &browser.csrf));
            for (name, value) in *headers {
                request = request.header(*name, *value);
            }
        }
    }
    request.form(&form).send().await.unwrap()
}

#[tokio::test]
async fn forged_forms_are_refused_with_403_and_change_nothing() {
    let app = TestApp::spawn().await;
    let victim = app.signed_in_browser("acme", "victim").await;
    let callback = victim.connect_through(US, "A1SELLER").await;
    assert_eq!(callback.status(), 303);
    let id = connection_rows(&victim.page().await)[0].0.clone();
    // The attacker has a session of their own, in the same tenant.
    let attacker = app.signed_in_browser("acme", "attacker").await;
    assert_ne!(attacker.csrf, victim.csrf);
    let before = snapshot(&app).await;
    assert_eq!(before.pending_authorizations, 0);

    let reconnect = format!("/settings/connections/{id}/reconnect");
    let disconnect = format!("/settings/connections/{id}/disconnect");
    let connect_fields = [("marketplace_id", GERMANY), ("account_type", "vendor")];
    let actions: [(&str, &[(&str, &str)]); 3] = [
        ("/settings/connections/connect", &connect_fields),
        (&reconnect, &[]),
        (&disconnect, &[]),
    ];
    let wrong_length = format!("{}x", victim.csrf);
    let forgeries = [
        ("no csrf_token", Forgery::NoToken),
        ("an empty csrf_token", Forgery::Token("")),
        ("another session's token", Forgery::Token(&attacker.csrf)),
        (
            "a token with a character added",
            Forgery::Token(&wrong_length),
        ),
        (
            "a foreign Origin",
            Forgery::ForeignOrigin("https://evil.example"),
        ),
        ("Origin: null", Forgery::ForeignOrigin("null")),
        (
            "Origin: null from another site",
            Forgery::Headers(&[("origin", "null"), ("sec-fetch-site", "cross-site")]),
        ),
        (
            "a foreign Origin claiming same-origin",
            Forgery::Headers(&[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "same-origin"),
            ]),
        ),
        (
            "a look-alike Origin",
            Forgery::ForeignOrigin(&format!("{}.evil.example", app.base)),
        ),
    ];
    for (path, fields) in actions {
        for (what, forgery) in &forgeries {
            let response = post(&victim, path, forgery, fields).await;
            assert_eq!(response.status(), 403, "POST {path} with {what}");
            assert_eq!(
                header(&response, "location"),
                None,
                "POST {path} with {what}"
            );
            assert!(header(&response, "content-type")
                .unwrap()
                .starts_with("text/html"));
            assert_eq!(
                snapshot(&app).await,
                before,
                "POST {path} with {what} changed something"
            );
        }
    }
    let page = victim.page().await;
    assert_eq!(
        connection_rows(&page),
        vec![(id.clone(), "A1SELLER".to_owned(), "active".to_owned())]
    );

    // The real forms, with and without sp-broker's own Origin, do work.
    let own_origin = post(
        &victim,
        "/settings/connections/connect",
        &Forgery::ForeignOrigin(&app.base),
        &connect_fields,
    )
    .await;
    assert_eq!(own_origin.status(), 303, "own Origin is accepted");
    // What a real browser sends under Referrer-Policy: no-referrer.
    let null_same_origin = post(
        &victim,
        "/settings/connections/connect",
        &Forgery::Headers(&[("origin", "null"), ("sec-fetch-site", "same-origin")]),
        &connect_fields,
    )
    .await;
    assert_eq!(
        null_same_origin.status(),
        303,
        "Origin: null from our own page is accepted"
    );
    let reconnect = victim.post_action(&id, "reconnect").await;
    assert_eq!(reconnect.status(), 303);
    assert_eq!(oauth_state_count(&app).await, 3);
    let disconnect = victim.post_action(&id, "disconnect").await;
    assert_eq!(disconnect.status(), 303);
    assert_eq!(stored_connection(&app, &id).await.status, "disconnected");
}

#[tokio::test]
async fn a_form_without_a_session_is_refused() {
    let app = TestApp::spawn().await;
    let response = app
        .browser()
        .post(app.url("/settings/connections/connect"))
        .form(&[
            ("csrf_token", "anything"),
            ("marketplace_id", US),
            ("account_type", "seller"),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        response.status() == 401 || response.status() == 403,
        "got {}",
        response.status()
    );
    assert_eq!(header(&response, "location"), None);
    assert_eq!(oauth_state_count(&app).await, 0);
}

#[tokio::test]
async fn no_get_changes_anything() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    let callback = browser.connect_through(US, "A1SELLER").await;
    assert_eq!(callback.status(), 303);
    let id = connection_rows(&browser.page().await)[0].0.clone();
    let before = snapshot(&app).await;
    for path in [
        "/settings/connections/connect?marketplace_id=ATVPDKIKX0DER&account_type=seller".to_owned(),
        format!("/settings/connections/{id}/reconnect"),
        format!("/settings/connections/{id}/disconnect"),
        format!(
            "/settings/connections/{id}/disconnect?csrf_token={}",
            browser.csrf
        ),
    ] {
        let response = browser.client.get(app.url(&path)).send().await.unwrap();
        assert!(
            response.status().is_client_error(),
            "GET {path}: {}",
            response.status()
        );
        assert_eq!(snapshot(&app).await, before, "GET {path} changed something");
    }
}
