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
pub async fn operator(app: &TestApp) -> reqwest::Client {
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

/// Inserts one refresh of `connection` that ended `hours_ago` hours before
/// the app's clock (what the refresh engine writes after each LWA call).
pub async fn seed_refresh(
    app: &TestApp,
    connection: uuid::Uuid,
    hours_ago: i64,
    outcome: &str,
    latency_ms: i32,
) {
    sqlx::query(
        "insert into refresh_event (connection_id, at, outcome, latency_ms) values ($1, $2, $3, $4)",
    )
    .bind(connection)
    .bind(app.now() - time::Duration::hours(hours_ago) - time::Duration::minutes(5))
    .bind(outcome)
    .bind(latency_ms)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// The `data-count` of the chart element carrying `attrs` (e.g.
/// `data-region="eu" data-step="started"`), once per element.
fn chart_counts(html: &str, attrs: &str) -> Vec<i64> {
    html.split(&format!("{attrs} data-count=\""))
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn the_dashboard_draws_a_days_refreshes_latency_and_consent_funnel_and_filters_the_audit_log()
{
    let app = TestApp::spawn().await;
    let seller = app.signed_in_browser("acme", "u1").await;
    // North America: connected. Europe: connected, declined (back without a
    // code), and one left on Amazon's page.
    assert_eq!(
        seller
            .connect_through("ATVPDKIKX0DER", "A1FUNNELNA")
            .await
            .status(),
        303
    );
    assert_eq!(
        seller
            .connect_through(crate::flow_support::GERMANY, "A1FUNNELEU")
            .await
            .status(),
        303
    );
    let declined = seller.connect(crate::flow_support::GERMANY, "seller").await;
    let state = query_param(&location(&declined), "state").unwrap();
    let back = seller
        .client
        .get(app.url(&format!(
            "/oauth/amazon/callback?state={state}&error=access_denied"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 400);
    assert_eq!(
        seller
            .connect(crate::flow_support::GERMANY, "seller")
            .await
            .status(),
        303
    );
    let connections = connection_rows(&seller.page().await);
    let na = connections
        .iter()
        .find(|c| c.1 == "A1FUNNELNA")
        .unwrap()
        .0
        .parse()
        .unwrap();
    let other = app
        .seed_connection(
            "other",
            "A1OTHERT",
            "Atzr|r",
            "Atza|a",
            time::Duration::hours(1),
        )
        .await;
    app.clock.advance(time::Duration::minutes(16));

    seed_refresh(&app, na, 2, "ok", 100).await;
    seed_refresh(&app, na, 2, "ok", 120).await;
    seed_refresh(&app, na, 2, "ok", 140).await;
    seed_refresh(&app, na, 2, "invalid_grant", 900).await;
    seed_refresh(&app, na, 20, "amazon_unavailable", 5000).await;
    seed_refresh(&app, na, 20, "amazon_unavailable", 5000).await;
    seed_refresh(&app, na, 30, "ok", 50).await; // older than the charts' day

    let client = operator(&app).await;
    let get = |path: &str| {
        let request = client.get(app.url(path));
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, html) = get("/ops").await;
    assert_eq!(status, 200);

    // Refreshes by outcome: 3 ok + 1 invalid_grant in one hour, 2 unavailable in another.
    assert_eq!(chart_counts(&html, r#"data-outcome="ok""#), vec![3]);
    assert_eq!(
        chart_counts(&html, r#"data-outcome="invalid_grant""#),
        vec![1]
    );
    assert_eq!(
        chart_counts(&html, r#"data-outcome="amazon_unavailable""#),
        vec![2]
    );
    // LWA latency: p50 and p99 of each hour with refreshes, oldest first.
    let ms = |series: &str| -> Vec<String> {
        html.split(&format!("data-series=\"{series}\" data-ms=\""))
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ms("p50"), vec!["5000", "130"]);
    assert_eq!(ms("p99"), vec!["5000", "877"]);

    // The funnel by region.
    let step = |region: &str, step: &str| {
        chart_counts(
            &html,
            &format!("data-region=\"{region}\" data-step=\"{step}\""),
        )
    };
    assert_eq!(step("na", "started"), vec![1]);
    assert_eq!(step("na", "connected"), vec![1]);
    assert_eq!(step("na", "abandoned"), vec![0]);
    assert_eq!(step("eu", "started"), vec![3]);
    assert_eq!(step("eu", "returned"), vec![2]);
    assert_eq!(step("eu", "connected"), vec![1]);
    assert_eq!(step("eu", "failed"), vec![1]);
    assert_eq!(step("eu", "abandoned"), vec![1]);
    assert!(
        step("fe", "started").is_empty(),
        "no attempt in the far east"
    );

    // The audit log: everything, one tenant's, one connection's.
    let actions = |html: &str| -> Vec<String> {
        html.split("<tr data-audit-action=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap().to_owned())
            .collect()
    };
    let everything = actions(&html);
    assert!(everything.len() >= 3, "{everything:?}");
    let (_, html) = get("/ops?audit_tenant=other").await;
    assert!(!actions(&html).is_empty());
    assert!(html.contains(&format!("/ops/connections/{other}")));
    assert!(!html.contains(&format!("<a href=\"/ops/connections/{na}\">")));
    let (_, html) = get(&format!("/ops?audit_connection={na}")).await;
    let of_na = actions(&html);
    assert!(!of_na.is_empty());
    assert!(of_na.len() < everything.len(), "{of_na:?}");
    assert!(!html.contains(&format!("<a href=\"/ops/connections/{other}\">")));
    let (_, html) = get("/ops?audit_tenant=nobody").await;
    assert!(html.contains("No audit entry matches"));
    let (status, html) = get("/ops?audit_connection=garbage").await;
    assert_eq!(status, 400);
    assert!(html.contains("Unknown filter"));
}
