//! askama escaping stays on (SECURITY.md "Sessions and forms"): values that
//! reach a page from a tenant's name or from a request come out escaped, and
//! no template turns escaping off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::flow_support::*;

const CORPUS: &[&str] = &[
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "'><svg onload=alert(1)>",
    "javascript:alert(1)//</a><a href=\"",
];

fn assert_escaped(body: &str, what: &str) {
    for raw in [
        "<script>alert",
        "<img src=x",
        "<svg onload",
        "</a><a href=\"\"",
    ] {
        assert!(!body.contains(raw), "{what}: {raw} came out unescaped");
    }
}

#[tokio::test]
async fn a_tenant_name_is_escaped_on_the_page() {
    let app = TestApp::spawn().await;
    for (i, name) in CORPUS.iter().enumerate() {
        let slug = format!("tenant-{i}");
        app.services
            .tenants
            .create(&slug, Some(name))
            .await
            .unwrap();
        let browser = app.signed_in_browser(&slug, "u").await;
        let page = browser.page().await;
        assert_escaped(&page, name);
        assert!(page.contains("&lt;") || page.contains("&quot;") || page.contains("&#"));
    }
}

#[tokio::test]
async fn request_values_are_escaped_on_the_sandbox_consent_page() {
    let app = TestApp::spawn().await;
    for value in CORPUS {
        let mut url = url::Url::parse(&app.url("/sandbox/apps/authorize/consent")).unwrap();
        url.query_pairs_mut()
            .append_pair("application_id", sp_broker::config::SANDBOX_APP_ID)
            .append_pair("state", value)
            .append_pair("selling_partner_id", value)
            .append_pair("redirect_uri", &app.url("/oauth/amazon/callback"));
        let response = app.browser().get(url.as_str()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_escaped(&response.text().await.unwrap(), value);
    }
}

#[tokio::test]
async fn error_pages_do_not_reflect_the_request() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u").await;
    for value in CORPUS {
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        for path in [
            format!("/{encoded}"),
            format!("/login/{encoded}"),
            format!(
                "/oauth/amazon/callback?state={encoded}&selling_partner_id=A1&spapi_oauth_code=x"
            ),
            format!("/oauth/amazon/login?amazon_callback_uri={encoded}&amazon_state={encoded}"),
        ] {
            let response = browser.client.get(app.url(&path)).send().await.unwrap();
            assert!(response.status().is_client_error(), "{path}");
            assert_escaped(&response.text().await.unwrap(), &path);
        }
        let response = browser.connect(value, value).await;
        assert_eq!(response.status(), 400);
        assert_escaped(&response.text().await.unwrap(), "connect form");
    }
    assert_eq!(oauth_state_count(&app).await, 0);
}

#[test]
fn no_template_turns_escaping_off() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("html") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(!squeezed.contains("|safe"), "{} uses |safe", path.display());
        assert!(
            !squeezed.contains("{%autoescape") && !squeezed.contains("escape=\"none\""),
            "{} turns escaping off",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 3, "templates found");
}

#[tokio::test]
async fn values_on_the_ops_pages_are_escaped() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for (i, value) in CORPUS.iter().enumerate() {
        let slug = format!("ops-xss-{i}");
        app.services
            .tenants
            .create(&slug, Some(value))
            .await
            .unwrap();
        ids.push(
            app.seed_connection(&slug, value, "Atzr|r", "Atza|a", time::Duration::hours(1))
                .await,
        );
    }
    let ops = crate::ops_dashboard::operator(&app).await;
    let mut pages = vec![app.url("/ops?health=all")];
    for value in CORPUS {
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        pages.push(app.url(&format!("/ops?health=all&q={encoded}")));
        pages.push(app.url(&format!("/ops?audit_tenant={encoded}")));
    }
    for id in &ids {
        pages.push(app.url(&format!("/ops/connections/{id}")));
    }
    for page in pages {
        let response = ops.get(&page).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(status == 200 || status == 400, "{page}: {status}");
        assert_escaped(&body, &page);
    }
    // The seeded values are on the dashboard, escaped, not dropped.
    let listed = ops
        .get(app.url("/ops?health=all"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains("&#60;/script&#62;"),
        "the values are shown, escaped"
    );
}

#[tokio::test]
async fn values_on_the_sandbox_home_page_are_escaped() {
    let app = TestApp::spawn().await;
    let home = app.browser().get(app.url("/sandbox")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    for value in CORPUS {
        // Its message names the seller revoked, as the form sent it.
        let response = app
            .browser()
            .post(app.url("/sandbox/revoke"))
            .header("origin", &app.base)
            .form(&[("selling_partner_id", *value)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let page = response.text().await.unwrap();
        assert!(page.contains("Revoked 0 authorization(s) of"), "{page}");
        assert_escaped(&page, value);
    }
}
