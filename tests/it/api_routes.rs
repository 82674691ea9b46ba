//! Every `/v1` route of CONTRACT §3 besides the access-token outcomes (see
//! tokens_api.rs): tenants, login links, the connections list with its
//! filters and cursor pagination, one connection's shape, DELETE, Restricted
//! Data Tokens through the sandbox's Tokens API, grantless tokens, the ops
//! summary; `/openapi.json` (every route in it, valid OpenAPI 3.1); the audit
//! trail of keys and token issues; and a canary refresh token that no route
//! ever shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::token_support::*;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const US: &str = "ATVPDKIKX0DER";

fn rfc3339(value: &Value) -> OffsetDateTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    assert!(text.ends_with('Z'), "UTC: {text}");
    OffsetDateTime::parse(text, &Rfc3339).unwrap()
}

async fn delete(app: &TestApp, path: &str, key: &str) -> Answer {
    call(
        &reqwest::Client::new(),
        reqwest::Method::DELETE,
        &app.url(path),
        Some(key),
        None,
    )
    .await
}

fn ids_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn tenants_are_listed_and_created_by_tenants_admin_only() {
    let app = TestApp::spawn().await;
    let admin = app.api_key(None, &["tenants:admin"]).await;

    let empty = get(&app, "/v1/tenants", &admin).await;
    assert_eq!(empty.status, 200, "{empty:?}");
    assert_eq!(empty.body["items"], json!([]));

    let created = post(
        &app,
        "/v1/tenants",
        &admin,
        json!({"slug": "new-co", "name": "New Co"}),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["slug"], "new-co");
    assert_eq!(created.body["name"], "New Co");
    rfc3339(&created.body["created_at"]);
    let unnamed = post(&app, "/v1/tenants", &admin, json!({"slug": "plain"})).await;
    assert_eq!(unnamed.status, 201, "{unnamed:?}");
    assert_eq!(unnamed.body["name"], "plain");

    let listed = get(&app, "/v1/tenants", &admin).await;
    let slugs: BTreeSet<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, BTreeSet::from(["new-co", "plain"]));

    let duplicate = post(&app, "/v1/tenants", &admin, json!({"slug": "new-co"})).await;
    assert_problem(&duplicate, 409, "tenant_exists");

    for body in [
        json!({"slug": "Bad_Slug"}),
        json!({"slug": "a"}),
        json!({"slug": "-dash-first"}),
        json!({"slug": "x".repeat(64)}),
        json!({"name": "no slug"}),
        json!({"slug": 7}),
    ] {
        let answer = post(&app, "/v1/tenants", &admin, body.clone()).await;
        let problem = assert_problem(&answer, 422, "invalid_request");
        assert!(
            problem["detail"].as_str().unwrap().contains("slug"),
            "{body}: {problem}"
        );
    }
    let unknown = post(
        &app,
        "/v1/tenants",
        &admin,
        json!({"slug": "ok-slug", "plan": "gold"}),
    )
    .await;
    assert!(assert_problem(&unknown, 422, "invalid_request")["detail"]
        .as_str()
        .unwrap()
        .contains("plan"));

    // Without tenants:admin: 403 (the default scopes, and every other scope).
    let ordinary = app
        .api_key(
            None,
            &["connections:read", "tokens:issue", "connections:manage"],
        )
        .await;
    assert_problem(
        &get(&app, "/v1/tenants", &ordinary).await,
        403,
        "insufficient_scope",
    );
    let refused = post(&app, "/v1/tenants", &ordinary, json!({"slug": "sneaky"})).await;
    assert_problem(&refused, 403, "insufficient_scope");
    let tenant_key = app.api_key(Some("new-co"), &[]).await;
    assert_problem(
        &get(&app, "/v1/tenants", &tenant_key).await,
        403,
        "insufficient_scope",
    );
    assert!(
        sp_broker::db::tenants::find_tenant_by_slug(&app.pool, "sneaky")
            .await
            .unwrap()
            .is_none()
    );
    // And no key at all: 401.
    let anonymous = call(
        &reqwest::Client::new(),
        reqwest::Method::GET,
        &app.url("/v1/tenants"),
        None,
        None,
    )
    .await;
    assert_problem(&anonymous, 401, "unauthenticated");
}

#[tokio::test]
async fn login_links_sign_a_browser_in_to_that_tenant_only() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    let manage = app.api_key(Some("acme"), &["connections:manage"]).await;

    let answer = post(
        &app,
        "/v1/tenants/acme/login-links",
        &manage,
        json!({"user_id": "user-42", "email": "user@example.com"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let url = answer.body["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("{}/login/", app.base)), "{url}");
    let expires_at = rfc3339(&answer.body["expires_at"]);
    let left = (expires_at - app.now()).whole_seconds();
    assert!((590..=600).contains(&left), "10 minutes, not {left} s");

    // The link signs a browser in to Settings → Connections, once.
    let browser = app.browser();
    let login = browser.get(&url).send().await.unwrap();
    assert_eq!(login.status(), 303);
    assert!(location(&login).ends_with("/settings/connections"));
    let page = browser
        .get(app.url("/settings/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let again = app.browser().get(&url).send().await.unwrap();
    assert_eq!(again.status(), 400, "single use");

    // return_to: a same-origin path is where the link lands.
    let with_return = post(
        &app,
        "/v1/tenants/acme/login-links",
        &manage,
        json!({"user_id": "user-42", "return_to": "/oauth/amazon/login?amazon_state=x"}),
    )
    .await;
    assert_eq!(with_return.status, 201, "{with_return:?}");
    let landed = app
        .browser()
        .get(with_return.body["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(landed.status(), 303);
    assert!(location(&landed).ends_with("/oauth/amazon/login?amazon_state=x"));

    for (body, field) in [
        (
            json!({"user_id": "u", "return_to": "https://evil.example/"}),
            "return_to",
        ),
        (
            json!({"user_id": "u", "return_to": "//evil.example/x"}),
            "return_to",
        ),
        (json!({"user_id": ""}), "user_id"),
        (json!({}), "user_id"),
        (json!({"user_id": "u", "email": "not-an-email"}), "email"),
    ] {
        let refused = post(&app, "/v1/tenants/acme/login-links", &manage, body.clone()).await;
        let problem = assert_problem(&refused, 422, "invalid_request");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{body}: {problem}"
        );
    }

    // A tenant key naming another tenant: 404 tenant_not_found, like an unknown slug.
    let foreign = post(
        &app,
        "/v1/tenants/globex/login-links",
        &manage,
        json!({"user_id": "u"}),
    )
    .await;
    let unknown = post(
        &app,
        "/v1/tenants/nobody/login-links",
        &manage,
        json!({"user_id": "u"}),
    )
    .await;
    assert_eq!(
        assert_problem(&foreign, 404, "tenant_not_found"),
        assert_problem(&unknown, 404, "tenant_not_found")
    );
    // A platform key may; a key without connections:manage may not.
    let platform = app.api_key(None, &["connections:manage"]).await;
    let ok = post(
        &app,
        "/v1/tenants/globex/login-links",
        &platform,
        json!({"user_id": "u"}),
    )
    .await;
    assert_eq!(ok.status, 201, "{ok:?}");
    let reader = app.api_key(Some("acme"), &[]).await;
    let refused = post(
        &app,
        "/v1/tenants/acme/login-links",
        &reader,
        json!({"user_id": "u"}),
    )
    .await;
    assert_problem(&refused, 403, "insufficient_scope");
}

#[tokio::test]
async fn connections_are_listed_with_filters_and_cursor_pagination() {
    let app = TestApp::spawn().await;
    let mut seeded = Vec::new();
    for i in 0..5 {
        seeded.push(
            app.seed_connection(
                "acme",
                &format!("A1LIST{i}"),
                &format!("Atzr|list-{i}"),
                &format!("Atza|list-{i}"),
                secs(3000),
            )
            .await,
        );
    }
    let foreign = app
        .seed_connection("globex", "A1GLOBEX", "Atzr|g", "Atza|g", secs(3000))
        .await;
    // Seller revoked (as a refused refresh leaves it) and disconnected.
    sqlx::query("update connection set status = 'needs_reauth', status_reason = 'revoked_or_expired' where id = $1")
        .bind(seeded[1])
        .execute(&app.pool)
        .await
        .unwrap();
    let acme_id = app.find_tenant("acme").await.unwrap().id;
    assert!(app
        .services
        .connections
        .disconnect(acme_id, seeded[2], "test")
        .await
        .unwrap()
        .is_some());
    let key = app.api_key(Some("acme"), &["connections:read"]).await;

    // limit=2: three pages, no duplicates, everything once, in creation order.
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/tenants/acme/connections?limit=2".to_owned(),
            Some(c) => format!("/v1/tenants/acme/connections?limit=2&cursor={c}"),
        };
        let page = get(&app, &path, &key).await;
        assert_eq!(page.status, 200, "{page:?}");
        pages.push(ids_of(&page.body));
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert_eq!(page.body["next_cursor"], Value::Null);
                break;
            }
        }
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let all: Vec<String> = pages.concat();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 5, "no duplicates");
    let expected: Vec<String> = seeded.iter().map(Uuid::to_string).collect();
    assert_eq!(all, expected, "every connection once, in creation order");
    assert!(!all.contains(&foreign.to_string()), "only this tenant's");

    let one_page = get(&app, "/v1/tenants/acme/connections", &key).await;
    assert_eq!(ids_of(&one_page.body), expected);
    assert_eq!(one_page.body["next_cursor"], Value::Null);
    assert!(!one_page.text.contains("Atza|") && !one_page.text.contains("Atzr|"));

    // Filters.
    for (query, ids) in [
        ("status=active", vec![seeded[0], seeded[3], seeded[4]]),
        ("status=needs_reauth", vec![seeded[1]]),
        ("status=disconnected", vec![seeded[2]]),
        ("selling_partner_id=A1LIST3", vec![seeded[3]]),
        ("status=active&selling_partner_id=A1LIST1", vec![]),
        ("selling_partner_id=A1GLOBEX", vec![]),
    ] {
        let page = get(&app, &format!("/v1/tenants/acme/connections?{query}"), &key).await;
        assert_eq!(page.status, 200, "{query}: {page:?}");
        let expected: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        assert_eq!(ids_of(&page.body), expected, "{query}");
        for item in page.body["items"].as_array().unwrap() {
            if let Some(status) = query
                .strip_prefix("status=")
                .and_then(|s| s.split('&').next())
            {
                assert_eq!(item["status"], status);
            }
        }
    }
    // A filter with pagination.
    let first = get(
        &app,
        "/v1/tenants/acme/connections?status=active&limit=2",
        &key,
    )
    .await;
    assert_eq!(
        ids_of(&first.body),
        [seeded[0].to_string(), seeded[3].to_string()]
    );
    let next = first.body["next_cursor"].as_str().unwrap();
    let second = get(
        &app,
        &format!("/v1/tenants/acme/connections?status=active&limit=2&cursor={next}"),
        &key,
    )
    .await;
    assert_eq!(ids_of(&second.body), [seeded[4].to_string()]);
    assert_eq!(second.body["next_cursor"], Value::Null);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=two", "limit"),
        ("status=sleeping", "status"),
        ("cursor=not-a-cursor", "cursor"),
    ] {
        let answer = get(&app, &format!("/v1/tenants/acme/connections?{query}"), &key).await;
        let problem = assert_problem(&answer, 422, "invalid_request");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{query}: {problem}"
        );
    }

    // Another tenant's list, with a tenant key: 404 like an unknown slug.
    let foreign_list = get(&app, "/v1/tenants/globex/connections", &key).await;
    let unknown_list = get(&app, "/v1/tenants/nobody/connections", &key).await;
    assert_eq!(
        assert_problem(&foreign_list, 404, "tenant_not_found"),
        assert_problem(&unknown_list, 404, "tenant_not_found")
    );
    let platform = app.api_key(None, &["connections:read"]).await;
    let globex = get(&app, "/v1/tenants/globex/connections", &platform).await;
    assert_eq!(ids_of(&globex.body), [foreign.to_string()]);
    let no_scope = app.api_key(Some("acme"), &["tokens:issue"]).await;
    assert_problem(
        &get(&app, "/v1/tenants/acme/connections", &no_scope).await,
        403,
        "insufficient_scope",
    );
}

#[tokio::test]
async fn a_connection_has_the_contract_shape_and_never_a_token() {
    let app = TestApp::spawn().await;
    let id = app
        .seed_connection(
            "acme",
            "A1SHAPE",
            "Atzr|shape-refresh",
            "Atza|shape-access",
            secs(3000),
        )
        .await;
    let key = app.api_key(Some("acme"), &[]).await;
    let answer = get(&app, &format!("/v1/connections/{id}"), &key).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let c = &answer.body;
    let keys: BTreeSet<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    let expected = BTreeSet::from([
        "id",
        "tenant",
        "selling_partner_id",
        "account_type",
        "region",
        "marketplace_id",
        "store_name",
        "marketplace_ids",
        "status",
        "status_reason",
        "health",
        "authorized_at",
        "authorization_expires_at",
        "last_refresh_at",
        "last_error",
        "created_at",
        "updated_at",
    ]);
    assert_eq!(keys, expected, "exactly CONTRACT's Connection");
    assert_eq!(c["id"], id.to_string());
    assert_eq!(c["tenant"], "acme", "the tenant's slug");
    assert_eq!(c["selling_partner_id"], "A1SHAPE");
    assert_eq!(c["account_type"], "seller");
    assert_eq!(c["region"], "na");
    assert_eq!(c["marketplace_id"], US);
    assert_eq!(c["store_name"], Value::Null, "unknown until verified");
    assert_eq!(c["marketplace_ids"], Value::Null);
    assert_eq!(c["status"], "active");
    assert_eq!(c["status_reason"], Value::Null);
    assert_eq!(c["health"], "ok");
    assert_eq!(c["last_error"], Value::Null);
    let authorized_at = rfc3339(&c["authorized_at"]);
    assert_eq!(
        rfc3339(&c["authorization_expires_at"]) - authorized_at,
        time::Duration::days(365)
    );
    rfc3339(&c["last_refresh_at"]);
    rfc3339(&c["created_at"]);
    rfc3339(&c["updated_at"]);
    assert!(!answer.text.contains("shape-refresh") && !answer.text.contains("shape-access"));
    let no_scope = app.api_key(Some("acme"), &["tokens:issue"]).await;
    assert_problem(
        &get(&app, &format!("/v1/connections/{id}"), &no_scope).await,
        403,
        "insufficient_scope",
    );
}

#[tokio::test]
async fn delete_erases_the_tokens_and_disconnects() {
    let app = TestApp::spawn().await;
    let id = app
        .seed_connection("acme", "A1DELETE", "Atzr|delete", "Atza|delete", secs(3000))
        .await;
    let key = app
        .api_key(
            Some("acme"),
            &["connections:read", "tokens:issue", "connections:manage"],
        )
        .await;
    assert_eq!(access_token(&app, &key, id, json!({})).await.status, 200);

    let reader = app.api_key(Some("acme"), &[]).await;
    let refused = delete(&app, &format!("/v1/connections/{id}"), &reader).await;
    assert_problem(&refused, 403, "insufficient_scope");

    let deleted = delete(&app, &format!("/v1/connections/{id}"), &key).await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    assert!(deleted.text.is_empty());

    let shown = connection(&app, &key, id).await;
    assert_eq!(shown["status"], "disconnected");
    let (refresh, access, expires): (Option<Vec<u8>>, Option<Vec<u8>>, Option<OffsetDateTime>) =
        sqlx::query_as(
            "select refresh_token_sealed, access_token_sealed, access_token_expires_at from connection where id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        refresh.is_none() && access.is_none() && expires.is_none(),
        "tokens erased"
    );
    assert_eq!(
        audit_count(&app, "connection.disconnected", Some(id)).await,
        1
    );

    // The token that was cached in memory is not served any more.
    let after = access_token(&app, &key, id, json!({})).await;
    let body = assert_problem(&after, 409, "reauthorization_required");
    assert_eq!(body["connection_status"], "disconnected");
    assert!(!after.text.contains("Atza|delete"));
}

#[tokio::test]
async fn restricted_data_tokens_come_from_the_sandbox_tokens_api() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "user-1").await;
    assert_eq!(browser.connect_through(US, "A1RDT").await.status(), 303);
    let id: Uuid = connection_rows(&browser.page().await)[0].0.parse().unwrap();
    let key = app.api_key(Some("acme"), &[]).await;

    // The verification after authorization filled store name and marketplaces.
    let shown = connection(&app, &key, id).await;
    assert_eq!(shown["store_name"], "Sandbox Store A1RDT");
    let marketplaces: BTreeSet<&str> = shown["marketplace_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(marketplaces, BTreeSet::from([US, "A2EUQ1WTGCTBG2"]));

    let path = format!("/v1/connections/{id}/restricted-data-token");
    let answer = post(
        &app,
        &path,
        &key,
        json!({"restricted_resources": [
            {"method": "GET", "path": "/orders/v0/orders", "data_elements": ["buyerInfo", "shippingAddress"]},
            {"method": "GET", "path": "/orders/v0/orders/123-1234567-1234567/address"}
        ]}),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let keys: BTreeSet<&str> = answer
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["restricted_data_token", "expires_at", "expires_in"])
    );
    assert!(answer.body["restricted_data_token"]
        .as_str()
        .unwrap()
        .starts_with("Atz.sprdt|"));
    assert_eq!(answer.body["expires_in"], 3600);
    let left = (rfc3339(&answer.body["expires_at"]) - app.now()).whole_seconds();
    assert!((3590..=3600).contains(&left), "{left}");

    for (body, field) in [
        (json!({"restricted_resources": []}), "restricted_resources"),
        (json!({}), "restricted_resources"),
        (
            json!({"restricted_resources": [{"method": "FETCH", "path": "/orders/v0/orders"}]}),
            "restricted_resources[0].method",
        ),
        (
            json!({"restricted_resources": [{"method": "GET", "path": "orders"}]}),
            "restricted_resources[0].path",
        ),
    ] {
        let refused = post(&app, &path, &key, body.clone()).await;
        let problem = assert_problem(&refused, 422, "invalid_request");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{body}: {problem}"
        );
    }
    let reader = app.api_key(Some("acme"), &["connections:read"]).await;
    let refused = post(
        &app,
        &path,
        &reader,
        json!({"restricted_resources": [{"method": "GET", "path": "/orders/v0/orders"}]}),
    )
    .await;
    assert_problem(&refused, 403, "insufficient_scope");
    let missing = post(
        &app,
        &format!("/v1/connections/{}/restricted-data-token", Uuid::new_v4()),
        &key,
        json!({"restricted_resources": [{"method": "GET", "path": "/orders/v0/orders"}]}),
    )
    .await;
    assert_problem(&missing, 404, "connection_not_found");
}

#[tokio::test]
async fn grantless_tokens_for_the_known_scopes_only() {
    let app = TestApp::spawn().await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    for scope in [
        "sellingpartnerapi::notifications",
        "sellingpartnerapi::client_credential:rotation",
    ] {
        let answer = post(&app, "/v1/grantless-token", &admin, json!({"scope": scope})).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        let keys: BTreeSet<&str> = answer
            .body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "access_token",
                "token_type",
                "expires_at",
                "expires_in",
                "scope"
            ])
        );
        assert!(answer.access_token().starts_with("Atza|"));
        assert_eq!(answer.body["token_type"], "bearer");
        assert_eq!(answer.body["scope"], scope);
        assert!((3500..=3600).contains(&answer.body["expires_in"].as_i64().unwrap()));
        rfc3339(&answer.body["expires_at"]);
    }
    for body in [
        json!({"scope": "sellingpartnerapi::everything"}),
        json!({"scope": ""}),
        json!({}),
        json!({"scope": 1}),
    ] {
        let answer = post(&app, "/v1/grantless-token", &admin, body.clone()).await;
        let problem = assert_problem(&answer, 422, "invalid_request");
        assert!(
            problem["detail"].as_str().unwrap().contains("scope"),
            "{body}: {problem}"
        );
    }
    let ordinary = app.api_key(None, &[]).await;
    let refused = post(
        &app,
        "/v1/grantless-token",
        &ordinary,
        json!({"scope": "sellingpartnerapi::notifications"}),
    )
    .await;
    assert_problem(&refused, 403, "insufficient_scope");
}

#[tokio::test]
async fn the_ops_summary_counts_connections_and_refresh_outcomes() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("refresh_token=Atzr-ok"))
        .respond_with(lwa_tokens("Atza-new", "Atzr-ok", 3600))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("refresh_token=Atzr-revoked"))
        .respond_with(invalid_grant_for_refresh())
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("refresh_token=Atzr-down"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&mock)
        .await;
    let app = spawn_with_lwa(&mock).await;
    let ok = app
        .seed_connection("acme", "A1OK", "Atzr-ok", "Atza-ok", secs(100))
        .await;
    let revoked = app
        .seed_connection("acme", "A1REVOKED", "Atzr-revoked", "Atza-r", secs(100))
        .await;
    let down = app
        .seed_connection("globex", "A1DOWN", "Atzr-down", "Atza-d", secs(100))
        .await;
    let expiring = app
        .seed_connection("globex", "A1EXPIRING", "Atzr-e", "Atza-e", secs(3000))
        .await;
    let gone = app
        .seed_connection("acme", "A1GONE", "Atzr-g", "Atza-g", secs(3000))
        .await;
    sqlx::query(
        "update connection set authorized_at = authorized_at - interval '340 days',
             authorization_expires_at = authorization_expires_at - interval '340 days'
         where id = $1",
    )
    .bind(expiring)
    .execute(&app.pool)
    .await
    .unwrap();
    let key = app
        .api_key(
            None,
            &["tokens:issue", "connections:manage", "tenants:admin"],
        )
        .await;
    assert_eq!(access_token(&app, &key, ok, json!({})).await.status, 200);
    assert_eq!(
        access_token(&app, &key, revoked, json!({})).await.status,
        409
    );
    assert_eq!(access_token(&app, &key, down, json!({})).await.status, 200);
    assert_eq!(
        delete(&app, &format!("/v1/connections/{gone}"), &key)
            .await
            .status,
        204
    );

    let summary = get(&app, "/v1/ops/summary", &key).await;
    assert_eq!(summary.status, 200, "{summary:?}");
    let s = &summary.body;
    assert_eq!(
        s["connections_by_status"],
        json!({"active": 3, "needs_reauth": 1, "disconnected": 1})
    );
    let health = &s["connections_by_health"];
    assert_eq!(health["failing"], 1, "{s}");
    assert_eq!(health["degraded"], 1, "{s}");
    assert_eq!(health["expiring"], 1, "{s}");
    let total: i64 = ["ok", "degraded", "expiring", "failing"]
        .iter()
        .map(|h| health[h].as_i64().unwrap())
        .sum();
    assert_eq!(total, 5);
    for window in ["refreshes_last_hour", "refreshes_last_day"] {
        let outcomes = &s[window]["outcomes"];
        assert_eq!(outcomes["ok"], 1, "{window}: {s}");
        assert_eq!(outcomes["invalid_grant"], 1, "{window}: {s}");
        assert_eq!(outcomes["amazon_unavailable"], 1, "{window}: {s}");
        assert!(s[window]["mean_latency_ms"].as_f64().is_some());
    }
    assert_eq!(s["app_credentials"]["state"], "ok");
    assert_eq!(s["app_credentials"]["secret_in_use"], "current");
    assert_eq!(s["app_credentials"]["configured_secrets"], 1);

    // Two hours later the refreshes have left the last hour, not the last day.
    app.clock.advance(time::Duration::hours(2));
    let later = get(&app, "/v1/ops/summary", &key).await;
    assert_eq!(later.body["refreshes_last_hour"]["outcomes"], json!({}));
    assert_eq!(later.body["refreshes_last_day"]["outcomes"]["ok"], 1);

    let ordinary = app
        .api_key(None, &["connections:read", "tokens:issue"])
        .await;
    assert_problem(
        &get(&app, "/v1/ops/summary", &ordinary).await,
        403,
        "insufficient_scope",
    );
}

/// Every route of CONTRACT §3 under `/v1`, as (method, OpenAPI path).
const V1_ROUTES: [(&str, &str); 14] = [
    ("get", "/v1/tenants"),
    ("post", "/v1/tenants"),
    ("post", "/v1/tenants/{slug}/login-links"),
    ("get", "/v1/tenants/{slug}/connections"),
    ("get", "/v1/connections/{id}"),
    ("delete", "/v1/connections/{id}"),
    ("post", "/v1/connections/{id}/access-token"),
    ("post", "/v1/connections/{id}/restricted-data-token"),
    ("post", "/v1/grantless-token"),
    ("get", "/v1/ops/summary"),
    ("get", "/v1/events"),
    ("post", "/v1/app/notifications"),
    ("get", "/v1/app/status"),
    ("post", "/v1/app/rotate-secret"),
];

#[tokio::test]
async fn openapi_json_is_valid_openapi_3_1_with_every_v1_route() {
    let app = TestApp::spawn().await;
    let response = reqwest::get(app.url("/openapi.json")).await.unwrap();
    assert_eq!(response.status(), 200, "no key needed");
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let text = response.text().await.unwrap();
    let raw: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(raw["openapi"], "3.1.0");
    assert!(raw["info"]["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(raw["info"]["version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));

    // A validating OpenAPI 3.1 parser accepts it.
    let spec = oas3::from_json(&text).expect("a valid OpenAPI 3.1 document");
    let version = spec
        .validate_version()
        .expect("a supported OpenAPI version");
    assert_eq!((version.major, version.minor), (3, 1));

    // Every /v1 route is documented, and the document has no route the contract lacks.
    let documented: BTreeSet<(String, String)> = spec
        .operations()
        .map(|(path, method, _)| (method.as_str().to_ascii_lowercase(), path))
        .collect();
    let expected: BTreeSet<(String, String)> = V1_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = expected.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );
    let extra: Vec<_> = documented
        .difference(&expected)
        .filter(|(_, p)| p.starts_with("/v1/"))
        .collect();
    assert!(
        extra.is_empty(),
        "documented but not in the contract: {extra:?}"
    );

    // The LWA-compatible endpoint, with its form body and LWA's statuses.
    let lwa = &raw["paths"]["/auth/o2/token"]["post"];
    assert!(
        lwa["requestBody"]["content"]["application/x-www-form-urlencoded"].is_object(),
        "{lwa}"
    );
    for status in ["200", "400", "401", "503"] {
        assert!(lwa["responses"][status].is_object(), "{status} of {lwa}");
    }

    // Every operation has responses, and every reference resolves.
    for (path, method, operation) in spec.operations() {
        let responses = operation.responses(&spec);
        assert!(!responses.is_empty(), "{method} {path} has no responses");
        operation
            .request_body(&spec)
            .unwrap_or_else(|e| panic!("{method} {path}: request body does not resolve: {e}"));
        operation
            .parameters(&spec)
            .unwrap_or_else(|e| panic!("{method} {path}: parameters do not resolve: {e}"));
        // OpenAPI: a path parameter's name MUST be a template expression of the path.
        for parameter in operation.parameters(&spec).unwrap() {
            if parameter.location == oas3::spec::ParameterIn::Path {
                assert!(
                    path.contains(&format!("{{{}}}", parameter.name)),
                    "{method} {path}: `{}` is documented as a path parameter but is not in the path",
                    parameter.name
                );
            }
        }
    }
    // The list's filters are optional query parameters.
    let list = &raw["paths"]["/v1/tenants/{slug}/connections"]["get"]["parameters"];
    for name in ["status", "selling_partner_id", "limit", "cursor"] {
        let parameter = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("`{name}` is not documented"));
        assert_eq!(parameter["in"], "query", "{name}: {parameter}");
        assert_ne!(parameter["required"], true, "{name}: {parameter}");
    }
    let access = spec
        .operation(&reqwest::Method::POST, "/v1/connections/{id}/access-token")
        .unwrap();
    let statuses: BTreeSet<String> = access.responses(&spec).keys().cloned().collect();
    for status in [
        "200", "401", "403", "404", "409", "422", "429", "502", "503",
    ] {
        assert!(
            statuses.contains(status),
            "access-token documents {status}: {statuses:?}"
        );
    }
    assert!(raw["components"]["securitySchemes"]["api_key"].is_object());
    // The Connection schema names every field of CONTRACT's Connection.
    let connection_schema = &raw["components"]["schemas"]["ConnectionJson"]["properties"];
    for field in [
        "id",
        "tenant",
        "selling_partner_id",
        "status",
        "health",
        "authorization_expires_at",
        "last_error",
    ] {
        assert!(
            connection_schema.get(field).is_some(),
            "Connection schema lacks {field}"
        );
    }

    // And every documented route is really served (no catch-all `not_found`).
    let key = app.api_key(None, &["tenants:admin"]).await;
    let client = reqwest::Client::new();
    for (m, p) in V1_ROUTES {
        let url = app.url(
            &p.replace("{slug}", "nobody")
                .replace("{id}", &Uuid::new_v4().to_string()),
        );
        let answer = call(
            &client,
            m.to_uppercase().parse().unwrap(),
            &url,
            Some(&key),
            Some(json!({})),
        )
        .await;
        assert_ne!(
            answer.body["code"], "not_found",
            "{m} {p} is not served: {answer:?}"
        );
        assert_ne!(answer.status, 405, "{m} {p}");
    }
}

#[tokio::test]
async fn creating_and_revoking_keys_is_audited_and_never_records_the_key() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("acme").await;
    let key = app
        .services
        .api_keys
        .create(
            "inventory-import",
            Some(tenant.id),
            &["tokens:issue".to_owned()],
            "cli:alice",
        )
        .await
        .unwrap();
    let key = secrecy::ExposeSecret::expose_secret(&key).to_owned();
    let public_id = key.split('_').nth(1).unwrap().to_owned();
    // The secret may hold `_` itself (base64url): all after `spb_{public}_`.
    let secret_part = key[format!("spb_{public_id}_").len()..].to_owned();

    let created: Vec<(String, Option<Uuid>, Value)> = sqlx::query_as(
        "select actor, tenant_id, detail from audit_event where action = 'api_key.created'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(created.len(), 1);
    let (actor, tenant_id, detail) = &created[0];
    assert_eq!(actor, "cli:alice");
    assert_eq!(*tenant_id, Some(tenant.id));
    assert_eq!(detail["public_id"], public_id);
    assert_eq!(detail["name"], "inventory-import");
    assert_eq!(detail["scopes"], json!(["tokens:issue"]));

    app.services
        .api_keys
        .revoke(&public_id, "cli:bob")
        .await
        .unwrap();
    let revoked: Vec<(String, Value)> =
        sqlx::query_as("select actor, detail from audit_event where action = 'api_key.revoked'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].0, "cli:bob");
    assert_eq!(revoked[0].1["public_id"], public_id);

    // The key's secret is stored nowhere in clear (only its hash).
    let dump = app.database_dump().await;
    assert!(
        !dump.contains(&secret_part),
        "the key's secret part is stored in clear"
    );
    assert!(!dump.contains(&key));
}

#[tokio::test]
async fn tokens_issued_are_counted_per_key_and_connection() {
    let app = TestApp::spawn().await;
    let first = app
        .seed_connection("acme", "A1COUNT1", "Atzr|c1", "Atza|c1", secs(3000))
        .await;
    let second = app
        .seed_connection("acme", "A1COUNT2", "Atzr|c2", "Atza|c2", secs(3000))
        .await;
    let key_a = app.api_key(None, &[]).await;
    let key_b = app.api_key(Some("acme"), &[]).await;
    let id_of = |key: &str| {
        let public_id = key.split('_').nth(1).unwrap().to_owned();
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("select id from api_key where public_id = $1")
                .bind(public_id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (a, b) = (id_of(&key_a).await, id_of(&key_b).await);
    for (key, connection, times) in [(&key_a, first, 3), (&key_b, first, 2), (&key_a, second, 1)] {
        for _ in 0..times {
            assert_eq!(
                access_token(&app, key, connection, json!({})).await.status,
                200
            );
        }
    }
    // Refused requests are not counted.
    assert_eq!(
        access_token(&app, &key_a, Uuid::new_v4(), json!({}))
            .await
            .status,
        404
    );
    app.services.jobs().flush_usage_once().await.unwrap();

    let expected = BTreeSet::from([(a, first, 3i64), (b, first, 2), (a, second, 1)]);
    let mut counted = BTreeSet::new();
    for _ in 0..40 {
        counted = sqlx::query_as::<_, (Uuid, Uuid, i64)>(
            "select api_key_id, connection_id, sum(count)::int8 from token_issue_count group by 1, 2",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        if counted == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, expected);
}

#[tokio::test]
async fn no_response_of_any_route_contains_a_refresh_token() {
    // Amazon (LWA and SP-API) played by wiremock; its refresh answer echoes
    // the refresh token, as Amazon's does.
    let mock = MockServer::start().await;
    on_refresh(
        &mock,
        lwa_tokens("Atza|canary-run-access", CANARY_REFRESH, 3600),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=client_credentials"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "Atza|grantless", "token_type": "bearer", "expires_in": 3600,
            "scope": "sellingpartnerapi::notifications",
        })))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/tokens/2021-03-01/restrictedDataToken"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"restrictedDataToken": "Atz.sprdt|canary-run", "expiresIn": 3600}),
        ))
        .mount(&mock)
        .await;
    let token_url = lwa_url(&mock);
    let spapi = mock.uri();
    let app = TestApp::spawn_with(move |s| {
        s.lwa_token_url = Some(token_url);
        s.spapi_url = Some(spapi);
    })
    .await;
    // 100 s left: the access-token request below refreshes through LWA.
    let id = app
        .seed_connection(
            "acme",
            "A1CANARY",
            CANARY_REFRESH,
            "Atza|canary-cached",
            secs(100),
        )
        .await;
    let key = app
        .api_key(
            None,
            &[
                "connections:read",
                "tokens:issue",
                "connections:manage",
                "tenants:admin",
            ],
        )
        .await;
    let client = reqwest::Client::new();
    let mut answers: Vec<(String, Answer)> = Vec::new();
    let mut record = |what: &str, answer: Answer| answers.push((what.to_owned(), answer));

    let v1 = |p: &str| app.url(p);
    let get_ = reqwest::Method::GET;
    let post_ = reqwest::Method::POST;
    record(
        "tenants list",
        call(&client, get_.clone(), &v1("/v1/tenants"), Some(&key), None).await,
    );
    record(
        "tenants create",
        call(
            &client,
            post_.clone(),
            &v1("/v1/tenants"),
            Some(&key),
            Some(json!({"slug": "canary-co"})),
        )
        .await,
    );
    record(
        "login link",
        call(
            &client,
            post_.clone(),
            &v1("/v1/tenants/acme/login-links"),
            Some(&key),
            Some(json!({"user_id": "u"})),
        )
        .await,
    );
    record(
        "connections list",
        call(
            &client,
            get_.clone(),
            &v1("/v1/tenants/acme/connections"),
            Some(&key),
            None,
        )
        .await,
    );
    record(
        "connection",
        call(
            &client,
            get_.clone(),
            &v1(&format!("/v1/connections/{id}")),
            Some(&key),
            None,
        )
        .await,
    );
    let refreshed = access_token(&app, &key, id, json!({})).await;
    assert_eq!(
        refreshed.access_token(),
        "Atza|canary-run-access",
        "{refreshed:?}"
    );
    record("access token (refreshed)", refreshed);
    record(
        "access token (cached)",
        access_token(&app, &key, id, json!({})).await,
    );
    record(
        "access token (forced)",
        access_token(&app, &key, id, json!({"force_refresh": true})).await,
    );
    record(
        "access token (429)",
        access_token(&app, &key, id, json!({"force_refresh": true})).await,
    );
    record(
        "access token (422)",
        access_token(&app, &key, id, json!({"min_ttl_seconds": CANARY_REFRESH})).await,
    );
    let rdt = call(
        &client,
        post_.clone(),
        &v1(&format!("/v1/connections/{id}/restricted-data-token")),
        Some(&key),
        Some(json!({"restricted_resources": [{"method": "GET", "path": "/orders/v0/orders"}]})),
    )
    .await;
    assert_eq!(rdt.status, 200, "{rdt:?}");
    record("restricted data token", rdt);
    let grantless = call(
        &client,
        post_.clone(),
        &v1("/v1/grantless-token"),
        Some(&key),
        Some(json!({"scope": "sellingpartnerapi::notifications"})),
    )
    .await;
    assert_eq!(grantless.status, 200, "{grantless:?}");
    record("grantless token", grantless);
    record(
        "ops summary",
        call(
            &client,
            get_.clone(),
            &v1("/v1/ops/summary"),
            Some(&key),
            None,
        )
        .await,
    );
    record(
        "openapi",
        call(&client, get_.clone(), &app.url("/openapi.json"), None, None).await,
    );
    let browser = app.signed_in_browser("acme", "user-1").await;
    let page = browser
        .client
        .get(app.url("/settings/connections"))
        .send()
        .await
        .unwrap();
    record("settings page", Answer::read(page).await);
    record(
        "delete",
        call(
            &client,
            reqwest::Method::DELETE,
            &v1(&format!("/v1/connections/{id}")),
            Some(&key),
            None,
        )
        .await,
    );
    record(
        "access token (409)",
        access_token(&app, &key, id, json!({})).await,
    );
    record(
        "connection after delete",
        call(
            &client,
            get_.clone(),
            &v1(&format!("/v1/connections/{id}")),
            Some(&key),
            None,
        )
        .await,
    );

    // The canary was in play: LWA received it (and echoed it back).
    let forms = refresh_forms(&mock).await;
    assert!(forms
        .iter()
        .any(|f| f.contains(&("refresh_token".to_owned(), CANARY_REFRESH.to_owned()))));
    let marker = "CANARY-REFRESH-7f3a";
    assert!(answers.len() >= 18);
    for (what, answer) in &answers {
        assert!(
            !answer.text.contains(marker),
            "{what}: the refresh token is in the body"
        );
        assert!(
            !answer.headers_text().contains(marker),
            "{what}: the refresh token is in a header"
        );
    }
    assert!(
        !app.database_dump().await.contains(marker),
        "stored in clear"
    );
}

#[tokio::test]
async fn an_oversized_body_is_a_422_problem_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let oversized = json!({"slug": "big-co", "name": "x".repeat(70 * 1024)});

    // Declared by Content-Length.
    let answer = post(&app, "/v1/tenants", &admin, oversized.clone()).await;
    let problem = assert_problem(&answer, 422, "invalid_request");
    assert!(
        problem["detail"].as_str().unwrap().contains("64 KiB"),
        "{problem}"
    );

    // Sent in chunks, with no length declared up front.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let body = oversized.to_string();
    let key = admin.clone();
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        let mut request = format!(
            "POST /v1/tenants HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        for chunk in body.as_bytes().chunks(8 * 1024) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        // The server may answer and close before reading everything.
        let _ = stream.write_all(&request);
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 422"), "{raw}");
    assert!(raw.contains("application/problem+json"), "{raw}");
    assert!(raw.contains("\"code\":\"invalid_request\""), "{raw}");

    let listed = get(&app, "/v1/tenants", &admin).await;
    assert_eq!(listed.body["items"], json!([]), "no tenant was created");
}
