//! `POST /v1/connections/{id}/access-token`: every row of CONTRACT §3's
//! access-token outcomes table, with its status, `code` and headers, and the
//! rules around it (min_ttl, never an expired token, at most two retries, a
//! cooldown after a failure, invalid_client never blames a seller).
//!
//! Amazon's token endpoint is a wiremock double so faults can be chosen and
//! the requests reaching it counted; connections are seeded directly with
//! known tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::token_support::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const OLD: &str = "Atza|cached-old-token";
const FRESH: &str = "Atza|fresh-from-lwa";
const REFRESH: &str = "Atzr|seeded-refresh-token";

fn keys_of(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn fresh_or_cached_token_is_200_with_no_store_and_the_contract_shape() {
    let mock = lwa_answering_refresh(lwa_tokens(FRESH, REFRESH, 3600)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1SHAPE", REFRESH, OLD, secs(2000))
        .await;
    let key = app.api_key(Some("acme"), &[]).await;

    // Cached: 2000 s left ≥ the default min_ttl of 300.
    let cached = access_token(&app, &key, id, json!({})).await;
    assert_eq!(cached.status, 200, "{cached:?}");
    assert_eq!(cached.header("cache-control"), Some("no-store"));
    assert!(cached
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    let expected: BTreeSet<String> = [
        "access_token",
        "token_type",
        "expires_at",
        "expires_in",
        "connection_id",
        "selling_partner_id",
        "region",
        "spapi_endpoint",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        keys_of(&cached.body),
        expected,
        "no refresh_error, no extra member"
    );
    assert_eq!(cached.access_token(), OLD);
    assert_eq!(cached.body["token_type"], "bearer");
    assert_eq!(cached.body["connection_id"], id.to_string());
    assert_eq!(cached.body["selling_partner_id"], "A1SHAPE");
    assert_eq!(cached.body["region"], "na");
    assert_eq!(
        cached.body["spapi_endpoint"],
        format!("{}/sandbox", app.base),
        "the SP_BROKER_SPAPI_URL override (sandbox) is the endpoint"
    );
    let expires_in = cached.body["expires_in"].as_i64().unwrap();
    assert!((1990..=2000).contains(&expires_in), "{expires_in}");
    let expires_at_text = cached.body["expires_at"].as_str().unwrap();
    assert!(expires_at_text.ends_with('Z'), "UTC: {expires_at_text}");
    let expires_at = OffsetDateTime::parse(expires_at_text, &Rfc3339).unwrap();
    let left = (expires_at - app.now()).whole_seconds();
    assert!((1985..=2001).contains(&left), "{left}");
    assert_eq!(refresh_requests(&mock).await, 0, "a cache hit calls nobody");

    // min_ttl above what the cached token has: refreshed, and the fresh token
    // is returned whatever life Amazon gave it.
    let fresh = access_token(&app, &key, id, json!({"min_ttl_seconds": 3000})).await;
    assert_eq!(fresh.status, 200, "{fresh:?}");
    assert_eq!(fresh.access_token(), FRESH);
    assert_eq!(fresh.header("cache-control"), Some("no-store"));
    assert!(fresh.body.get("refresh_error").is_none());
    assert!((3590..=3600).contains(&fresh.body["expires_in"].as_i64().unwrap()));
    assert_eq!(refresh_requests(&mock).await, 1);
    let form = &refresh_forms(&mock).await[0];
    assert!(form.contains(&("refresh_token".into(), REFRESH.into())));

    // Now cached: no further call.
    let again = access_token(&app, &key, id, json!({"min_ttl_seconds": 3000})).await;
    assert_eq!(again.access_token(), FRESH);
    assert_eq!(refresh_requests(&mock).await, 1);
}

#[tokio::test]
async fn a_token_just_obtained_is_returned_whatever_life_amazon_gave_it() {
    // Amazon hands out a token with only 120 s of life; the caller asked 300.
    let mock = lwa_answering_refresh(lwa_tokens(FRESH, REFRESH, 120)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1SHORT", REFRESH, OLD, secs(10))
        .await;
    let key = app.api_key(None, &[]).await;
    let answer = access_token(&app, &key, id, json!({"min_ttl_seconds": 300})).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.access_token(), FRESH);
    assert!((110..=120).contains(&answer.body["expires_in"].as_i64().unwrap()));
    assert_eq!(refresh_requests(&mock).await, 1);
}

#[tokio::test]
async fn refresh_failure_with_a_minute_left_returns_the_cached_token_with_refresh_error() {
    let mock = lwa_answering_refresh(ResponseTemplate::new(500).set_body_string("oops")).await;
    let app = spawn_with_lwa(&mock).await;
    // 100 s left: less than min_ttl (300), more than the 60 s floor.
    let id = app
        .seed_connection("acme", "A1FALLBACK", REFRESH, OLD, secs(100))
        .await;
    let key = app.api_key(None, &[]).await;

    let answer = access_token(&app, &key, id, json!({})).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["refresh_error"], "amazon_unavailable");
    assert_eq!(answer.access_token(), OLD);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let expires_in = answer.body["expires_in"].as_i64().unwrap();
    assert!((60..=100).contains(&expires_in), "{expires_in}");
    assert_eq!(
        refresh_requests(&mock).await,
        3,
        "one failing refresh is one attempt and at most two retries"
    );

    // Right after a failure: the cooldown answers, Amazon is not called again.
    let again = access_token(&app, &key, id, json!({"min_ttl_seconds": 3000})).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["refresh_error"], "amazon_unavailable");
    assert_eq!(again.access_token(), OLD);
    assert_eq!(
        refresh_requests(&mock).await,
        3,
        "cooldown: no new LWA call"
    );

    // The connection shows the passing failure (degraded), still active.
    let admin = app.api_key(None, &["connections:read"]).await;
    let shown = connection(&app, &admin, id).await;
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["health"], "degraded");
    assert_eq!(shown["last_error"]["code"], "amazon_unavailable");
}

/// One passing failure of Amazon's token endpoint.
struct Fault {
    name: &'static str,
    answer: ResponseTemplate,
}

fn faults() -> Vec<Fault> {
    vec![
        Fault {
            name: "500 html",
            answer: ResponseTemplate::new(500).set_body_string("<html>Internal error</html>"),
        },
        Fault {
            name: "503 server_error",
            answer: lwa_error(503, "server_error", "down"),
        },
        Fault {
            name: "429",
            answer: ResponseTemplate::new(429).set_body_string("Rate exceeded"),
        },
        Fault {
            name: "garbage 200",
            answer: ResponseTemplate::new(200).set_body_string("<html>not json</html>"),
        },
        Fault {
            name: "400 temporarily_unavailable",
            answer: lwa_error(400, "temporarily_unavailable", "try later"),
        },
        Fault {
            name: "timeout",
            // Longer than the broker's 5 s total timeout.
            answer: lwa_tokens(FRESH, REFRESH, 3600).set_delay(Duration::from_secs(7)),
        },
    ]
}

/// With < 60 s left on the cached token, a passing failure is a 503 with
/// Retry-After; the nearly expired token is not handed out.
async fn fault_case(fault: Fault) {
    let mock = lwa_answering_refresh(fault.answer).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1FAULT", REFRESH, OLD, secs(30))
        .await;
    let key = app.api_key(None, &[]).await;
    let answer = access_token(&app, &key, id, json!({})).await;
    assert_problem(&answer, 503, "amazon_unavailable");
    assert!(answer.retry_after() >= 1, "{}: {answer:?}", fault.name);
    assert!(!answer.text.contains(OLD), "{}", fault.name);
    let calls = refresh_requests(&mock).await;
    assert_eq!(
        calls, 3,
        "{}: at most two retries after the first attempt",
        fault.name
    );
    // Asked again right away (30 s left is below any min_ttl of 60).
    let second = access_token(&app, &key, id, json!({"min_ttl_seconds": 60})).await;
    assert_problem(&second, 503, "amazon_unavailable");
    assert!(second.retry_after() >= 1);
    assert_eq!(
        refresh_requests(&mock).await,
        calls,
        "{}: a request right after a failure makes no LWA call (cooldown)",
        fault.name
    );
}

#[tokio::test]
async fn passing_failures_with_less_than_a_minute_left_are_503_with_retry_after() {
    futures::future::join_all(faults().into_iter().map(fault_case)).await;
}

#[tokio::test]
async fn an_expired_token_is_never_returned() {
    let mock = MockServer::start().await;
    // The first refresh fails (three attempts), later ones succeed.
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&mock)
        .await;
    on_refresh(&mock, lwa_tokens(FRESH, REFRESH, 3600)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1EXPIRED", REFRESH, OLD, secs(-5))
        .await;
    let key = app.api_key(None, &[]).await;

    // Even asking for min_ttl 0, an expired token is not good enough; Amazon fails: 503.
    let failed = access_token(&app, &key, id, json!({"min_ttl_seconds": 0})).await;
    assert_problem(&failed, 503, "amazon_unavailable");
    assert!(!failed.text.contains(OLD));
    assert!(failed.retry_after() >= 1);

    // After the cooldown Amazon answers: the new token, never the expired one.
    app.clock.advance(secs(failed.retry_after() as i64 + 1));
    let answer = access_token(&app, &key, id, json!({"min_ttl_seconds": 0})).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.access_token(), FRESH);
    assert!(answer.body.get("refresh_error").is_none());
    assert_eq!(refresh_requests(&mock).await, 4);

    // A token that expires while cached is not returned either.
    app.clock.advance(secs(3601));
    let later = access_token(&app, &key, id, json!({"min_ttl_seconds": 0})).await;
    assert_eq!(later.status, 200, "{later:?}");
    assert_eq!(
        refresh_requests(&mock).await,
        5,
        "refreshed, not served expired"
    );
    assert!(later.body["expires_in"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn unauthenticated_is_401_with_www_authenticate_for_missing_unknown_and_revoked_keys() {
    let mock = lwa_answering_refresh(lwa_tokens(FRESH, REFRESH, 3600)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1AUTH", REFRESH, OLD, secs(3000))
        .await;
    let client = reqwest::Client::new();
    let url = app.url(&format!("/v1/connections/{id}/access-token"));

    let check = |answer: Answer, what: &str| {
        assert_problem(&answer, 401, "unauthenticated");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{what}");
        assert!(!answer.text.contains(OLD), "{what}");
    };
    let missing = Answer::read(client.post(&url).json(&json!({})).send().await.unwrap()).await;
    check(missing, "no Authorization header");
    let basic = Answer::read(
        client
            .post(&url)
            .header("authorization", "Basic dXNlcjpwYXNz")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    check(basic, "Basic credentials");
    for bad in [
        "nonsense",
        "spb_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        check(access_token(&app, bad, id, json!({})).await, "unknown key");
    }
    // A real key's public id with the wrong secret.
    let key = app.api_key(None, &[]).await;
    let public_id = key.split('_').nth(1).unwrap().to_owned();
    let forged = format!("spb_{public_id}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    check(
        access_token(&app, &forged, id, json!({})).await,
        "wrong secret",
    );

    // Revoked: the very next request is refused.
    assert_eq!(access_token(&app, &key, id, json!({})).await.status, 200);
    app.services
        .api_keys
        .revoke(&public_id, "test")
        .await
        .unwrap();
    check(access_token(&app, &key, id, json!({})).await, "revoked key");
    // Authentication comes before anything else (even a malformed body).
    check(
        access_token(&app, &key, id, json!({"min_ttl_seconds": "x"})).await,
        "revoked key, bad body",
    );
}

#[tokio::test]
async fn insufficient_scope_is_403() {
    let app = TestApp::spawn().await;
    let id = app
        .seed_connection("acme", "A1SCOPE", REFRESH, OLD, secs(3000))
        .await;
    for scopes in [
        &["connections:read"][..],
        &["connections:manage"][..],
        &["tenants:admin"][..],
    ] {
        let key = app.api_key(None, scopes).await;
        let answer = access_token(&app, &key, id, json!({})).await;
        let body = assert_problem(&answer, 403, "insufficient_scope");
        assert!(
            body["detail"].as_str().unwrap().contains("tokens:issue"),
            "{body}"
        );
        assert!(!answer.text.contains(OLD));
    }
    // The same holds for a tenant key of the right tenant.
    let key = app.api_key(Some("acme"), &["connections:read"]).await;
    assert_problem(
        &access_token(&app, &key, id, json!({})).await,
        403,
        "insufficient_scope",
    );
}

#[tokio::test]
async fn another_tenants_connection_is_404_exactly_like_a_missing_one() {
    let app = TestApp::spawn().await;
    let theirs = app
        .seed_connection("globex", "A1THEIRS", REFRESH, OLD, secs(3000))
        .await;
    let ours = app
        .seed_connection("acme", "A1OURS", "Atzr|ours", "Atza|ours", secs(3000))
        .await;
    let key = app.api_key(Some("acme"), &[]).await;

    assert_eq!(access_token(&app, &key, ours, json!({})).await.status, 200);
    let foreign = access_token(&app, &key, theirs, json!({})).await;
    let missing = access_token(&app, &key, uuid::Uuid::new_v4(), json!({})).await;
    let foreign_body = assert_problem(&foreign, 404, "connection_not_found");
    let missing_body = assert_problem(&missing, 404, "connection_not_found");
    assert_eq!(
        foreign_body, missing_body,
        "another tenant's connection looks exactly like a missing one"
    );
    assert!(!foreign.text.contains(OLD));
    assert!(!foreign.text.contains("A1THEIRS"));
    let not_a_uuid = call(
        &reqwest::Client::new(),
        reqwest::Method::POST,
        &app.url("/v1/connections/not-a-uuid/access-token"),
        Some(&key),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        assert_problem(&not_a_uuid, 404, "connection_not_found"),
        missing_body
    );
    // Also with force_refresh: no trace of the other tenant's connection.
    let forced = access_token(&app, &key, theirs, json!({"force_refresh": true})).await;
    assert_eq!(
        assert_problem(&forced, 404, "connection_not_found"),
        missing_body
    );
    // The other routes for one connection agree.
    let reader = app
        .api_key(Some("acme"), &["connections:read", "connections:manage"])
        .await;
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let answer = call(
            &reqwest::Client::new(),
            method.clone(),
            &app.url(&format!("/v1/connections/{theirs}")),
            Some(&reader),
            None,
        )
        .await;
        assert_eq!(
            assert_problem(&answer, 404, "connection_not_found"),
            missing_body,
            "{method}"
        );
    }
    // A platform key sees every tenant.
    let platform = app.api_key(None, &[]).await;
    assert_eq!(
        access_token(&app, &platform, theirs, json!({}))
            .await
            .status,
        200
    );
    // Nothing changed on the other tenant's connection.
    let shown = connection(&app, &platform, theirs).await;
    assert_eq!(shown["status"], "active");
}

#[tokio::test]
async fn needs_reauth_and_disconnected_are_409_with_status_reason_and_reconnect_url() {
    let mock = lwa_answering_refresh(invalid_grant_for_refresh()).await;
    let app = spawn_with_lwa(&mock).await;
    let revoked = app
        .seed_connection("acme", "A1REVOKED", REFRESH, OLD, secs(100))
        .await;
    let deleted = app
        .seed_connection(
            "acme",
            "A1DELETED",
            "Atzr|deleted",
            "Atza|deleted",
            secs(3000),
        )
        .await;
    let key = app
        .api_key(None, &["tokens:issue", "connections:manage"])
        .await;
    let reconnect_url = format!("{}/settings/connections", app.base);

    // invalid_grant on the refresh → needs_reauth, 409 at once.
    let first = access_token(&app, &key, revoked, json!({})).await;
    let body = assert_problem(&first, 409, "reauthorization_required");
    assert_eq!(body["connection_status"], "needs_reauth");
    assert!(
        body["status_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    assert_eq!(body["reconnect_url"], reconnect_url);
    assert!(!first.text.contains(OLD), "the old token is not handed out");

    // Disconnected through the API.
    let delete = call(
        &reqwest::Client::new(),
        reqwest::Method::DELETE,
        &app.url(&format!("/v1/connections/{deleted}")),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(delete.status, 204, "{delete:?}");
    let answer = access_token(&app, &key, deleted, json!({})).await;
    let body = assert_problem(&answer, 409, "reauthorization_required");
    assert_eq!(body["connection_status"], "disconnected");
    assert!(body.get("status_reason").is_some(), "{body}");
    assert_eq!(body["reconnect_url"], reconnect_url);

    // 409 is checked before any rate limit: force_refresh twice is 409 twice.
    for id in [revoked, deleted] {
        for _ in 0..2 {
            let forced = access_token(&app, &key, id, json!({"force_refresh": true})).await;
            assert_problem(&forced, 409, "reauthorization_required");
        }
    }
    assert_eq!(
        refresh_requests(&mock).await,
        1,
        "only the refresh that found out"
    );
}

#[tokio::test]
async fn malformed_or_out_of_range_bodies_are_422_naming_the_field() {
    let mock = lwa_answering_refresh(lwa_tokens(FRESH, REFRESH, 3600)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1INVALID", REFRESH, OLD, secs(3000))
        .await;
    let key = app.api_key(None, &[]).await;
    for (body, field) in [
        (json!({"min_ttl_seconds": 5000}), "min_ttl_seconds"),
        (json!({"min_ttl_seconds": 3001}), "min_ttl_seconds"),
        (json!({"min_ttl_seconds": -1}), "min_ttl_seconds"),
        (json!({"min_ttl_seconds": "x"}), "min_ttl_seconds"),
        (json!({"min_ttl_seconds": 1.5}), "min_ttl_seconds"),
        (json!({"force_refresh": "yes"}), "force_refresh"),
        (json!({"min_ttl": 10}), "min_ttl"),
        (json!({"surprise": true}), "surprise"),
    ] {
        let answer = access_token(&app, &key, id, body.clone()).await;
        let problem = assert_problem(&answer, 422, "invalid_request");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(field),
            "{body}: detail `{detail}` names `{field}`"
        );
    }
    // Not JSON at all, or not an object.
    for raw in ["{not json", "[1,2]", "42"] {
        let answer = Answer::read(
            reqwest::Client::new()
                .post(app.url(&format!("/v1/connections/{id}/access-token")))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(raw)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_problem(&answer, 422, "invalid_request");
    }
    // The bounds themselves are fine, and so is an empty body.
    for body in [
        json!({"min_ttl_seconds": 0}),
        json!({"min_ttl_seconds": 3000}),
    ] {
        assert_eq!(access_token(&app, &key, id, body).await.status, 200);
    }
    let empty = Answer::read(
        reqwest::Client::new()
            .post(app.url(&format!("/v1/connections/{id}/access-token")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(empty.status, 200, "{empty:?}");
}

#[tokio::test]
async fn a_second_force_refresh_within_30_seconds_is_429_with_retry_after() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(lwa_tokens("Atza|forced-1", REFRESH, 3600))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    on_refresh(&mock, lwa_tokens("Atza|forced-2", REFRESH, 3600)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1FORCE", REFRESH, OLD, secs(3000))
        .await;
    let key = app.api_key(None, &[]).await;

    let first = access_token(&app, &key, id, json!({"force_refresh": true})).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        first.access_token(),
        "Atza|forced-1",
        "the cached token is discarded"
    );

    app.clock.advance(secs(10));
    let second = access_token(&app, &key, id, json!({"force_refresh": true})).await;
    let body = assert_problem(&second, 429, "rate_limited");
    let retry = second.retry_after();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert!(
        retry <= 21,
        "about 20 s are left of the window, not {retry}"
    );
    assert!(!second.text.contains("forced-1"), "{body}");
    assert_eq!(refresh_requests(&mock).await, 1);

    // Without force_refresh the (new) cached token is still served.
    let plain = access_token(&app, &key, id, json!({})).await;
    assert_eq!(plain.access_token(), "Atza|forced-1");

    // Once the window has passed, force_refresh is honoured again.
    app.clock.advance(secs(21));
    let third = access_token(&app, &key, id, json!({"force_refresh": true})).await;
    assert_eq!(third.status, 200, "{third:?}");
    assert_eq!(third.access_token(), "Atza|forced-2");
    assert_eq!(refresh_requests(&mock).await, 2);
}

#[tokio::test]
async fn a_failed_force_refresh_counts_and_the_limit_holds_across_instances() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&mock)
        .await;
    on_refresh(&mock, lwa_tokens(FRESH, REFRESH, 3600)).await;
    let url = lwa_url(&mock);
    let edit = move |s: &mut sp_broker::config::Settings| s.lwa_token_url = Some(url.clone());
    let a = TestApp::spawn_with(edit.clone()).await;
    let b = TestApp::spawn_on(a.db.clone(), edit).await;
    let id = a
        .seed_connection("acme", "A1FORCEFAIL", REFRESH, OLD, secs(3000))
        .await;
    let key = a.api_key(None, &[]).await;

    // Amazon fails: force_refresh discarded the cached token, so nothing to fall back on.
    let failed = access_token(&a, &key, id, json!({"force_refresh": true})).await;
    assert_problem(&failed, 503, "amazon_unavailable");
    assert!(failed.retry_after() >= 1);
    assert!(!failed.text.contains(OLD));
    // The failed attempt counts, on this instance and on the other one: the
    // failure's cooldown (kept in memory here, in PostgreSQL for the other
    // instance) refuses the next forced refresh before it reaches Amazon.
    for app in [&a, &b] {
        let again = access_token(app, &key, id, json!({"force_refresh": true})).await;
        assert_problem(&again, 503, "amazon_unavailable");
        assert!((1..=10).contains(&again.retry_after()));
    }
    assert_eq!(refresh_requests(&mock).await, 3);
}

#[tokio::test]
async fn invalid_client_is_502_and_no_seller_is_blamed() {
    let mock = lwa_answering_refresh(invalid_client()).await;
    let app = spawn_with_lwa(&mock).await;
    // 30 s left: too little to hand out while the app's credentials are held.
    let id = app
        .seed_connection("acme", "A1CLIENT", REFRESH, OLD, secs(30))
        .await;
    let key = app.api_key(None, &[]).await;
    let answer = access_token(&app, &key, id, json!({})).await;
    let body = assert_problem(&answer, 502, "app_credentials_rejected");
    assert!(!answer.text.contains(OLD), "{body}");
    assert_eq!(
        refresh_requests(&mock).await,
        1,
        "invalid_client is not a passing failure: no retry"
    );
    let again = access_token(&app, &key, id, json!({})).await;
    assert_problem(&again, 502, "app_credentials_rejected");
    assert_eq!(
        refresh_requests(&mock).await,
        1,
        "while the hold lasts, nobody asks Amazon again"
    );

    // A cached token with >= 60 s left is still served during the hold, saying why.
    let good = app
        .seed_connection(
            "acme",
            "A1CLIENT2",
            "Atzr|two",
            "Atza|still-good",
            secs(100),
        )
        .await;
    let served = access_token(&app, &key, good, json!({})).await;
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.access_token(), "Atza|still-good");
    assert_eq!(served.body["refresh_error"], "app_credentials_rejected");
    assert_eq!(refresh_requests(&mock).await, 1);

    // The seller's connection is untouched: active, healthy, no error on it.
    let admin = app
        .api_key(None, &["connections:read", "tenants:admin"])
        .await;
    let shown = connection(&app, &admin, id).await;
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["status_reason"], Value::Null);
    assert_eq!(shown["health"], "ok");
    assert_eq!(shown["last_error"], Value::Null);
    assert_eq!(
        audit_count(&app, "connection.needs_reauth", Some(id)).await,
        0
    );
    // The app's credentials show as rejected in the ops summary.
    let summary = get(&app, "/v1/ops/summary", &admin).await;
    assert_eq!(
        summary.body["app_credentials"]["state"], "rejected",
        "{summary:?}"
    );
}

#[tokio::test]
async fn the_previous_client_secret_is_tried_when_the_current_one_is_rejected() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("client_secret=PREV-SECRET"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(lwa_tokens(FRESH, REFRESH, 3600))
        .with_priority(1)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .respond_with(invalid_client())
        .with_priority(2)
        .mount(&mock)
        .await;
    let url = lwa_url(&mock);
    let app = TestApp::spawn_with(move |s| {
        s.lwa_token_url = Some(url);
        s.lwa_client_secret = Some("CURRENT-SECRET".into());
        s.lwa_client_secret_previous = Some("PREV-SECRET".into());
    })
    .await;
    let id = app
        .seed_connection("acme", "A1ROTATE", REFRESH, OLD, secs(100))
        .await;
    let key = app.api_key(None, &[]).await;
    let answer = access_token(&app, &key, id, json!({})).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.access_token(), FRESH);
    assert!(answer.body.get("refresh_error").is_none());
    let secrets: Vec<String> = refresh_forms(&mock)
        .await
        .iter()
        .filter_map(|form| {
            form.iter()
                .find(|(k, _)| k == "client_secret")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(secrets, ["CURRENT-SECRET", "PREV-SECRET"]);
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let summary = get(&app, "/v1/ops/summary", &admin).await;
    assert_eq!(summary.body["app_credentials"]["secret_in_use"], "previous");
    assert_eq!(summary.body["app_credentials"]["configured_secrets"], 2);
}
