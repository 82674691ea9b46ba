//! The token engine's races (issue #4): fenced writes, detached refreshes,
//! the app-wide `invalid_client` hold, the `invalid_grant` fuse, one Amazon
//! per database, and an LWA brownout. Amazon is a wiremock double; the
//! database is real, and "another instance" is a second app on it.

use crate::common::*;
use crate::flow_support::{live, LIVE_CLIENT_ID};
use crate::token_support::*;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sp_broker::amazon::marketplaces::{AccountType, Region};
use sp_broker::authorization::NewAuthorization;
use sp_broker::crypto::Purpose;
use std::time::{Duration, Instant};
use uuid::Uuid;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const OLD: &str = "Atza|old-token";
const REFRESH: &str = "Atzr|the-refresh-token";

/// Answers refreshes of `refresh_token` with `template` (one call only when
/// `once`), ahead of any other mock.
async fn on_refresh_of(
    mock: &MockServer,
    refresh_token: &str,
    template: ResponseTemplate,
    once: bool,
) {
    let builder = Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains(format!(
            "refresh_token={}",
            urlencode(refresh_token)
        )))
        .respond_with(template)
        .with_priority(1);
    let builder = if once {
        builder.up_to_n_times(1)
    } else {
        builder
    };
    builder.mount(mock).await;
}

fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[derive(sqlx::FromRow, Debug, PartialEq)]
struct RefreshState {
    status: String,
    refresh_failures: i32,
    refresh_cooldown_until: Option<time::OffsetDateTime>,
    last_error_code: Option<String>,
    refresh_lease_token: Option<Uuid>,
}

async fn refresh_state(app: &TestApp, id: Uuid) -> RefreshState {
    sqlx::query_as(
        "select status, refresh_failures, refresh_cooldown_until, last_error_code, refresh_lease_token
         from connection where id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// The stored refresh token of `id`, opened.
async fn stored_refresh_token(app: &TestApp, id: Uuid) -> String {
    let (tenant_id, sealed): (Uuid, Vec<u8>) =
        sqlx::query_as("select tenant_id, refresh_token_sealed from connection where id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let tenant = tenant_id.to_string();
    let row = id.to_string();
    app.services
        .keys
        .open_str(
            connection_seal_context(Purpose::RefreshToken, &tenant, &row),
            &sealed,
        )
        .unwrap()
        .expose_secret()
        .to_owned()
}

fn spawn_request(app: &TestApp, key: &str, id: Uuid) -> tokio::task::JoinHandle<Answer> {
    let base = app.base.clone();
    let key = key.to_owned();
    tokio::spawn(async move {
        access_token_at(&reqwest::Client::new(), &base, &key, id, json!({})).await
    })
}

/// Waits until the token double has received `count` requests.
async fn amazon_received(mock: &MockServer, count: usize) {
    let started = Instant::now();
    while refresh_requests(mock).await < count {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "Amazon never received request {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reconnect_during_a_refresh_fences_out_its_invalid_grant() {
    let mock = MockServer::start().await;
    on_refresh_of(
        &mock,
        REFRESH,
        invalid_grant_for_refresh().set_delay(Duration::from_millis(800)),
        false,
    )
    .await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1RECONNECT", REFRESH, OLD, secs(30))
        .await;
    let tenant = app.find_tenant("acme").await.unwrap();
    let key = app.api_key(None, &[]).await;

    let request = spawn_request(&app, &key, id);
    amazon_received(&mock, 1).await;
    // The seller reconnects while Amazon is still answering the old grant.
    let (reconnected, is_new) = app
        .services
        .authorizer
        .store(&NewAuthorization {
            tenant_id: tenant.id,
            selling_partner_id: "A1RECONNECT",
            region: Region::Na,
            account_type: AccountType::Seller,
            marketplace_id: "ATVPDKIKX0DER",
            refresh_token: &SecretString::from("Atzr|after-reconnect".to_owned()),
            access_token: &SecretString::from("Atza|after-reconnect".to_owned()),
            access_token_expires_at: app.now() + secs(3600),
            actor: "user:u1",
            flow: "reconnect",
        })
        .await
        .unwrap();
    assert_eq!((reconnected, is_new), (id, false));
    let _ = request.await.unwrap();

    let state = refresh_state(&app, id).await;
    assert_eq!(state.status, "active", "{state:?}");
    assert_eq!(state.last_error_code, None);
    assert_eq!(
        audit_count(&app, "connection.needs_reauth", Some(id)).await,
        0
    );
    let next = access_token(&app, &key, id, json!({})).await;
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.access_token(), "Atza|after-reconnect");
    assert_eq!(stored_refresh_token(&app, id).await, "Atzr|after-reconnect");
}

#[tokio::test]
async fn a_late_writer_after_its_lease_expired_changes_nothing() {
    let mock = MockServer::start().await;
    // Instance A's refresh: slow, and then refused.
    on_refresh_of(
        &mock,
        REFRESH,
        invalid_grant_for_refresh().set_delay(Duration::from_millis(1500)),
        true,
    )
    .await;
    // Instance B's refresh, after A's lease expired: fine.
    on_refresh(&mock, lwa_tokens("Atza|from-b", REFRESH, 3600)).await;
    let url = lwa_url(&mock);
    let edit = move |s: &mut sp_broker::config::Settings| s.lwa_token_url = Some(url.clone());
    let a = TestApp::spawn_with(edit.clone()).await;
    let b = TestApp::spawn_on(a.db.clone(), edit).await;
    let id = a
        .seed_connection("acme", "A1LATE", REFRESH, OLD, secs(30))
        .await;
    let key = a.api_key(None, &[]).await;

    let late = spawn_request(&a, &key, id);
    amazon_received(&mock, 1).await;
    // A's lease runs out while its refresh is still on the wire.
    sqlx::query(
        "update connection set refresh_lease_until = now() - interval '1 second' where id = $1",
    )
    .bind(id)
    .execute(&a.pool)
    .await
    .unwrap();
    let from_b = access_token(&b, &key, id, json!({})).await;
    assert_eq!(from_b.status, 200, "{from_b:?}");
    assert_eq!(from_b.access_token(), "Atza|from-b");
    let after_b = refresh_state(&a, id).await;

    let _ = late.await.unwrap();
    let after_late = refresh_state(&a, id).await;
    assert_eq!(after_late, after_b, "the late writer changed the row");
    assert_eq!(after_late.status, "active");
    assert_eq!(after_late.refresh_failures, 0);
    assert_eq!(after_late.refresh_cooldown_until, None);
    assert_eq!(after_late.last_error_code, None);
    for app in [&a, &b] {
        let next = access_token(app, &key, id, json!({})).await;
        assert_eq!(next.access_token(), "Atza|from-b");
    }
    assert_eq!(refresh_requests(&mock).await, 2);
}

#[tokio::test]
async fn a_caller_hanging_up_mid_refresh_changes_nothing() {
    let mock = MockServer::start().await;
    on_refresh(
        &mock,
        lwa_tokens("Atza|finished-anyway", REFRESH, 3600).set_delay(Duration::from_millis(800)),
    )
    .await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1HANGUP", REFRESH, OLD, secs(30))
        .await;
    let key = app.api_key(None, &[]).await;

    // The client gives up (and closes its socket) while Amazon is answering.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(app.url(&format!("/v1/connections/{id}/access-token")))
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client was meant to time out");

    // The refresh finishes on its own: token stored, lease released.
    let started = Instant::now();
    loop {
        let state = refresh_state(&app, id).await;
        let stored: Option<time::OffsetDateTime> =
            sqlx::query_scalar("select access_token_expires_at from connection where id = $1")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if state.refresh_lease_token.is_none() && stored > Some(app.now() + secs(3000)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the refresh did not finish after its caller left: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = access_token(&app, &key, id, json!({})).await;
    assert_eq!(next.status, 200);
    assert_eq!(next.access_token(), "Atza|finished-anyway");
    assert_eq!(refresh_requests(&mock).await, 1, "no second call to Amazon");
}

#[tokio::test]
async fn a_rotated_refresh_token_is_stored_although_the_lease_was_lost() {
    let mock = MockServer::start().await;
    on_refresh(
        &mock,
        lwa_tokens("Atza|rotated", "Atzr|rotated-by-amazon", 3600)
            .set_delay(Duration::from_millis(800)),
    )
    .await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1ROTATE", REFRESH, OLD, secs(30))
        .await;
    let key = app.api_key(None, &[]).await;

    let request = spawn_request(&app, &key, id);
    amazon_received(&mock, 1).await;
    // Someone else holds the lease now.
    sqlx::query("update connection set refresh_lease_token = gen_random_uuid() where id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let _ = request.await.unwrap();
    let started = Instant::now();
    while stored_refresh_token(&app, id).await != "Atzr|rotated-by-amazon" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the refresh token Amazon rotated was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_grantless_invalid_scope_leaves_refreshes_alone() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=client_credentials"))
        .respond_with(lwa_error(400, "invalid_scope", "The scope is not allowed"))
        .mount(&mock)
        .await;
    on_refresh(&mock, lwa_tokens("Atza|refreshed", REFRESH, 3600)).await;
    let app = spawn_with_lwa(&mock).await;
    let id = app
        .seed_connection("acme", "A1SCOPE", REFRESH, OLD, secs(30))
        .await;
    let admin = app.api_key(None, &["tokens:issue", "tenants:admin"]).await;
    let refused = post(
        &app,
        "/v1/grantless-token",
        &admin,
        json!({"scope": "sellingpartnerapi::notifications"}),
    )
    .await;
    let problem = assert_problem(&refused, 502, "spapi_refused");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("invalid_scope"),
        "{problem}"
    );
    let refreshed = access_token(&app, &admin, id, json!({})).await;
    assert_eq!(refreshed.status, 200, "{refreshed:?}");
    assert_eq!(refreshed.access_token(), "Atza|refreshed");
    assert_eq!(refreshed.body.get("refresh_error"), None);
}

#[tokio::test]
async fn the_invalid_client_hold_serves_good_tokens_and_probes_once_across_instances() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .respond_with(invalid_client())
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    // Slow enough that every request after the hold lapses arrives while the
    // probe is still out (once it has succeeded, refreshes rightly resume).
    on_refresh(
        &mock,
        lwa_tokens("Atza|after-the-hold", REFRESH, 3600).set_delay(Duration::from_millis(1000)),
    )
    .await;
    let url = lwa_url(&mock);
    let edit = move |s: &mut sp_broker::config::Settings| s.lwa_token_url = Some(url.clone());
    let a = TestApp::spawn_with(edit.clone()).await;
    let b = TestApp::spawn_on(a.db.clone(), edit).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            a.seed_connection("acme", &format!("A1HOLD{i:02}"), REFRESH, OLD, secs(200))
                .await,
        );
    }
    let key = a.api_key(None, &[]).await;

    // The first refresh meets invalid_client: the hold begins.
    let first = access_token(&a, &key, ids[0], json!({})).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["refresh_error"], "app_credentials_rejected");
    // 50 concurrent requests over both instances: every cached token is served.
    let client = reqwest::Client::new();
    let answers = futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        access_token_at(&client, base, &key, *id, json!({}))
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.access_token(), OLD);
        assert_eq!(answer.body["refresh_error"], "app_credentials_rejected");
    }
    assert_eq!(
        refresh_requests(&mock).await,
        1,
        "the hold kept them from Amazon"
    );

    // The hold lapses (30 s on both instances' clocks): exactly one probe.
    a.clock.advance(time::Duration::seconds(31));
    b.clock.advance(time::Duration::seconds(31));
    let answers = futures::future::join_all(ids[..20].iter().enumerate().map(|(i, id)| {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        access_token_at(&client, base, &key, *id, json!({}))
    }))
    .await;
    assert!(answers.iter().all(|answer| answer.status == 200));
    assert_eq!(refresh_requests(&mock).await, 2, "exactly one probe");

    // It succeeded: refreshes resume on both instances.
    for (app, id) in [(&a, ids[30]), (&b, ids[31])] {
        let started = Instant::now();
        loop {
            let answer = access_token(app, &key, id, json!({})).await;
            if answer.access_token() == "Atza|after-the-hold" {
                assert_eq!(answer.body.get("refresh_error"), None);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "refreshes did not resume: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn the_invalid_grant_fuse_stops_at_twenty_and_raises_one_alarm() {
    let mock = lwa_answering_refresh(invalid_grant_for_refresh()).await;
    let app = spawn_with_lwa(&mock).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            app.seed_connection("acme", &format!("A1FUSE{i:02}"), REFRESH, OLD, secs(30))
                .await,
        );
    }
    let key = app.api_key(None, &[]).await;
    let client = reqwest::Client::new();
    let answers = futures::future::join_all(
        ids.iter()
            .map(|id| access_token_at(&client, &app.base, &key, *id, json!({}))),
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(
        statuses.iter().all(|s| *s == 409 || *s == 502),
        "{statuses:?}"
    );

    let needs_reauth: i64 =
        sqlx::query_scalar("select count(*) from connection where status = 'needs_reauth'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let active: i64 = sqlx::query_scalar("select count(*) from connection where status = 'active'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(needs_reauth <= 20, "{needs_reauth} marked needs_reauth");
    assert_eq!(active + needs_reauth, 50);
    assert!(active >= 30);
    assert_eq!(audit_count(&app, "app.credentials_rejected", None).await, 1);
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count() as i64,
        needs_reauth
    );
}

#[tokio::test]
async fn a_start_against_another_amazons_database_exits_2_and_changes_nothing() {
    let app = TestApp::spawn_with(live).await;
    app.seed_connection("acme", "A1LIVE", REFRESH, OLD, secs(3000))
        .await;
    let before: String = sqlx::query_scalar("select string_agg(c::text, '|') from connection c")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let database_url = app.db.url();
    for (env, names) in [
        (vec![("SP_BROKER_AMAZON", "sandbox")], ["live", "sandbox"]),
        (
            vec![
                ("SP_BROKER_AMAZON", "live"),
                ("SP_BROKER_APP_ID", "amzn1.sp.solution.another-app"),
                (
                    "SP_BROKER_LWA_CLIENT_ID",
                    "amzn1.application-oa2-client.another",
                ),
                ("SP_BROKER_LWA_CLIENT_SECRET", "another-secret"),
            ],
            [LIVE_CLIENT_ID, "amzn1.application-oa2-client.another"],
        ),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sp-broker"));
        command
            .arg("serve")
            .env("DATABASE_URL", &database_url)
            .env("SP_BROKER_ENCRYPTION_KEYS", TEST_KEY)
            .env("SP_BROKER_LISTEN", "127.0.0.1:0")
            .env("SP_BROKER_LOG", "warn");
        for var in [
            "SP_BROKER_APP_ID",
            "SP_BROKER_LWA_CLIENT_ID",
            "SP_BROKER_LWA_CLIENT_SECRET",
        ] {
            command.env_remove(var);
        }
        for (k, v) in &env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        for name in names {
            assert!(stderr.contains(name), "{name} not named: {stderr}");
        }
    }
    let after: String = sqlx::query_scalar("select string_agg(c::text, '|') from connection c")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(before, after, "a refused start changed a row");
}

#[tokio::test]
async fn an_lwa_brownout_never_exhausts_the_pool() {
    let mock =
        lwa_answering_refresh(ResponseTemplate::new(503).set_delay(Duration::from_secs(4))).await;
    let app = spawn_with_lwa(&mock).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            app.seed_connection("acme", &format!("A1BROWN{i:02}"), REFRESH, OLD, secs(200))
                .await,
        );
    }
    let key = app.api_key(None, &[]).await;
    let reader = app.api_key(None, &["connections:read"]).await;
    let client = reqwest::Client::new();
    let callers = futures::future::join_all((0..200).map(|i| {
        let client = client.clone();
        let base = app.base.clone();
        let key = key.clone();
        let id = ids[i % ids.len()];
        async move {
            let started = Instant::now();
            let answer = access_token_at(&client, &base, &key, id, json!({})).await;
            (answer, started.elapsed())
        }
    }));
    let probes = async {
        // Meanwhile the instance stays ready and the key check answers.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..10 {
            let ready = client.get(app.url("/readyz")).send().await.unwrap();
            assert_eq!(ready.status(), 200, "/readyz during the brownout");
            let listed = get(&app, &format!("/v1/connections/{}", ids[0]), &reader).await;
            assert_eq!(listed.status, 200, "{listed:?}");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    let (answers, ()) = tokio::join!(callers, probes);
    for (answer, took) in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.access_token(), OLD);
        assert_eq!(answer.body["refresh_error"], "amazon_unavailable");
        assert!(
            *took < Duration::from_millis(3500),
            "a caller waited {took:?}"
        );
    }
}
