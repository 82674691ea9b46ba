//! The ops dashboard: operators only; shows which connections need attention and why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use secrecy::ExposeSecret;

#[tokio::test]
async fn dashboard_lists_a_revoked_connection_for_operators_only() {
    let app = TestApp::spawn().await;
    let seller = app.signed_in_browser("acme", "u1").await;
    assert_eq!(
        seller
            .connect_through("ATVPDKIKX0DER", "A1REVOKED")
            .await
            .status(),
        303
    );
    let id = connection_rows(&seller.page().await)[0].0.clone();

    // The seller revokes the app in (sandbox) Seller Central; the next refresh finds out.
    app.services
        .sandbox
        .as_ref()
        .unwrap()
        .revoke_seller("A1REVOKED")
        .await
        .unwrap();
    app.clock.advance(time::Duration::minutes(59));
    let key = app
        .services
        .api_keys
        .create("svc", None, &[], "test")
        .await
        .unwrap();
    let answer = reqwest::Client::new()
        .post(app.url(&format!("/v1/connections/{id}/access-token")))
        .bearer_auth(key.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 409);

    // A tenant session is not an operator session.
    let page = seller.client.get(app.url("/ops")).send().await.unwrap();
    assert_eq!(page.status(), 401);

    let operator = operator(&app).await;
    let page = operator.get(app.url("/ops")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let row = html
        .split(&format!("data-connection-id=\"{id}\""))
        .nth(1)
        .expect("the revoked connection is listed");
    assert!(row.starts_with(" data-health=\"failing\""), "{row}");
    assert!(row.contains("acme") && row.contains("A1REVOKED"));
    assert!(row.contains("invalid_grant"), "the reason is shown: {row}");
    // The refresh outcome was counted.
    assert!(
        html.contains("<td>last hour</td><td>0</td><td>1</td>"),
        "{html}"
    );

    // The connection's own page: its fields, its refresh history, its audit
    // entries, never a token; linked from the list; operators only.
    assert!(html.contains(&format!("href=\"/ops/connections/{id}\"")));
    let page = operator
        .get(app.url(&format!("/ops/connections/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"data-status="needs_reauth""#), "{html}");
    let history = html
        .split("data-refreshes")
        .nth(1)
        .expect("a refresh history");
    assert!(history.contains("<td>invalid_grant</td>"), "{history}");
    let audit = html.split("data-audit").nth(1).expect("an audit log");
    assert!(
        audit.contains("connection.needs_reauth") && audit.contains("connection.connected"),
        "{audit}"
    );
    assert!(
        !html.contains("Atza|") && !html.contains("Atzr|"),
        "never a token"
    );
    let unknown = operator
        .get(app.url(&format!("/ops/connections/{}", uuid::Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let garbage = operator
        .get(app.url("/ops/connections/not-an-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 404);
    let as_seller = seller
        .client
        .get(app.url(&format!("/ops/connections/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(as_seller.status(), 401);
}

/// A browser signed in as an operator.
async fn operator(app: &TestApp) -> reqwest::Client {
    let link = app
        .services
        .login_links
        .create(sp_broker::login_links::LinkRequest {
            kind: sp_broker::db::login_tokens::LoginKind::Ops,
            tenant_id: None,
            user_id: "op1",
            email: None,
            return_to: None,
        })
        .await
        .unwrap()
        .url;
    let client = app.browser();
    let login = client.get(&link).send().await.unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(location(&login), "/ops");
    client
}

/// The connection ids listed on an /ops page, and its next-page link.
fn listed(html: &str) -> (Vec<String>, Option<String>) {
    let ids = html
        .split("<tr data-connection-id=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect();
    let next = html
        .split("<a rel=\"next\" href=\"")
        .nth(1)
        // As a browser reads the attribute (askama writes `&` as `&#38;`).
        .map(|rest| {
            rest.split('"')
                .next()
                .unwrap()
                .replace("&#38;", "&")
                .replace("&amp;", "&")
        });
    (ids, next)
}

#[tokio::test]
async fn the_dashboard_filters_searches_and_pages_by_keyset() {
    let app = TestApp::spawn().await;
    let mut bulk = Vec::new();
    for i in 0..55 {
        let id = app
            .seed_connection(
                "bulk",
                &format!("A1BULK{i}"),
                "Atzr|r",
                "Atza|a",
                time::Duration::hours(1),
            )
            .await;
        bulk.push(id.to_string());
    }
    let other = app
        .seed_connection(
            "acme",
            "A1OTHER",
            "Atzr|r",
            "Atza|a",
            time::Duration::hours(1),
        )
        .await;
    let client = operator(&app).await;
    let page = |path: String| {
        let client = client.clone();
        let url = app.url(&path);
        async move {
            let response = client.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };

    // By default only what needs attention: every connection here is healthy.
    let (status, html) = page("/ops".into()).await;
    assert_eq!(status, 200);
    assert!(listed(&html).0.is_empty(), "{html}");
    assert!(html.contains("No connection matches"));

    // One tenant, every health: 50, then the 5 left, each once.
    let (_, html) = page("/ops?tenant=bulk&health=all".into()).await;
    let (first, next) = listed(&html);
    assert_eq!(first.len(), 50);
    let next = next.expect("a next page");
    assert!(
        next.contains("tenant=bulk") && next.contains("health=all"),
        "{next}"
    );
    let (status, html) = page(next.clone()).await;
    assert_eq!(status, 200, "{next}: {html}");
    let (second, last) = listed(&html);
    assert_eq!(second.len(), 5);
    assert!(last.is_none());
    let mut seen: Vec<String> = first.into_iter().chain(second).collect();
    seen.sort();
    let mut expected = bulk.clone();
    expected.sort();
    assert_eq!(
        seen, expected,
        "every connection of the tenant once, no other"
    );

    // Search by selling partner id; status filter; another tenant.
    let (_, html) = page("/ops?health=all&q=A1BULK7".into()).await;
    assert_eq!(listed(&html).0, vec![bulk[7].clone()]);
    let (_, html) = page("/ops?health=all&tenant=acme&status=active".into()).await;
    assert_eq!(listed(&html).0, vec![other.to_string()]);
    let (_, html) = page("/ops?health=all&status=needs_reauth".into()).await;
    assert!(listed(&html).0.is_empty());

    // Filters it does not know are a readable 400.
    for bad in [
        "/ops?health=sickly",
        "/ops?status=gone",
        "/ops?after=garbage",
    ] {
        let (status, html) = page(bad.into()).await;
        assert_eq!(status, 400, "{bad}");
        assert!(html.contains("Unknown filter"), "{html}");
    }
}
