//! The token broker alone, built with exactly its own handles (no HTTP, no
//! `Services`): real PostgreSQL, Amazon played by a wiremock double.

use crate::common::*;
use crate::token_support::*;
use secrecy::SecretString;
use sp_broker::amazon::lwa::{self, LwaClient};
use sp_broker::amazon::marketplaces::{AccountType, Region};
use sp_broker::api_keys::{ApiPrincipal, Scope};
use sp_broker::broker::{AppCredentials, BrokerHandles, TokenBroker, TokenError, TokenSource};
use sp_broker::clock::{Clock, OffsetClock};
use sp_broker::config::AmazonMode;
use sp_broker::crypto::{KeyRing, Purpose};
use sp_broker::db::connections::{self, AuthorizationKey, Authorized};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use wiremock::MockServer;

struct Fixture {
    db: TestDb,
    broker: Arc<TokenBroker>,
    keys: Arc<KeyRing>,
    clock: OffsetClock,
    caller: ApiPrincipal,
}

async fn fixture(mock: &MockServer) -> Fixture {
    let db = TestDb::new().await;
    let keys = Arc::new(KeyRing::parse(&SecretString::from(TEST_KEY.to_owned())).unwrap());
    let clock = OffsetClock::default();
    let clock_handle: Arc<dyn Clock> = Arc::new(clock.clone());
    let lwa = LwaClient::new(
        lwa::http_client().unwrap(),
        url::Url::parse(&lwa_url(mock)).unwrap(),
        "amzn1.application-oa2-client.unit".to_owned(),
    );
    let credentials = Arc::new(AppCredentials::new(
        db.pool.clone(),
        Arc::clone(&clock_handle),
        Arc::clone(&keys),
        "amzn1.application-oa2-client.unit".to_owned(),
        vec![SecretString::from("unit-secret".to_owned())],
    ));
    let broker = TokenBroker::new(BrokerHandles {
        db: db.pool.clone(),
        keys: Arc::clone(&keys),
        lwa,
        clock: clock_handle,
        credentials,
    });
    let caller = ApiPrincipal {
        key_id: Uuid::new_v4(),
        public_id: "unit".to_owned(),
        tenant_id: None,
        scopes: vec![Scope::TokensIssue],
        budget: Default::default(),
    };
    Fixture {
        db,
        broker,
        keys,
        clock,
        caller,
    }
}

/// A tenant and one active connection whose access token has `left` to live.
async fn seed(f: &Fixture, access_token: &str, left: time::Duration) -> Uuid {
    seed_as(f, "unit", "A1UNIT", access_token, left).await
}

/// [`seed`] for a tenant `slug` and seller `selling_partner_id` of its own.
async fn seed_as(
    f: &Fixture,
    slug: &str,
    selling_partner_id: &str,
    access_token: &str,
    left: time::Duration,
) -> Uuid {
    let now = f.clock.now();
    let tenant_id = Uuid::new_v4();
    sqlx::query("insert into tenant (id, slug, name, created_at) values ($1, $2, 'Unit', $3)")
        .bind(tenant_id)
        .bind(slug)
        .bind(now)
        .execute(&f.db.pool)
        .await
        .unwrap();
    let mut tx = f.db.pool.begin().await.unwrap();
    let (id, _) = connections::lock_or_create(
        &mut tx,
        &AuthorizationKey {
            tenant_id,
            selling_partner_id,
            region: Region::Na,
            account_type: AccountType::Seller,
            marketplace_id: "ATVPDKIKX0DER",
        },
        now,
    )
    .await
    .unwrap();
    let tenant = tenant_id.to_string();
    let row = id.to_string();
    let seal = |purpose, value: &str| {
        f.keys.seal_str(
            connection_seal_context(purpose, &tenant, &row),
            &SecretString::from(value.to_owned()),
        )
    };
    connections::store_authorization(
        &mut tx,
        Authorized {
            id,
            account_type: AccountType::Seller,
            marketplace_id: "ATVPDKIKX0DER",
            refresh_token_sealed: &seal(Purpose::RefreshToken, "Atzr|unit"),
            access_token_sealed: &seal(Purpose::AccessToken, access_token),
            access_token_expires_at: now + left,
            authorization_expires_at: now + time::Duration::days(365),
            mode: AmazonMode::Sandbox,
            client_id: "amzn1.application-oa2-client.unit",
            now,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test]
async fn concurrent_cache_misses_each_get_their_own_connections_token() {
    // No refresh is due: every answer comes from the rows, read together.
    let mock = MockServer::start().await;
    let f = fixture(&mock).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let (slug, seller, token) = (
            format!("unit-{i}"),
            format!("A1UNIT{i}"),
            format!("Atza|unit-{i}"),
        );
        ids.push(seed_as(&f, &slug, &seller, &token, secs(3600)).await);
    }
    // Each connection asked for twice at once, and one that does not exist.
    let asked: Vec<Uuid> = ids
        .iter()
        .chain(ids.iter())
        .copied()
        .chain([Uuid::new_v4()])
        .collect();
    let min_ttl = time::Duration::seconds(300);
    let issued = futures::future::join_all(
        asked
            .iter()
            .map(|id| f.broker.access_token(&f.caller, *id, min_ttl, false)),
    )
    .await;
    for (i, answer) in issued.iter().enumerate() {
        if i == 2 * ids.len() {
            assert!(
                matches!(answer, Err(TokenError::NotFound)),
                "the unknown id is not found"
            );
            continue;
        }
        let token = answer.as_ref().unwrap_or_else(|e| panic!("{e}"));
        let n = i % ids.len();
        assert_eq!(token.access_token(), format!("Atza|unit-{n}"));
        assert_eq!(token.selling_partner_id(), format!("A1UNIT{n}"));
        assert_eq!(token.source, TokenSource::Cache);
    }
    assert_eq!(refresh_requests(&mock).await, 0);
    assert_eq!(f.broker.cached(), ids.len());
}

#[tokio::test]
async fn a_hundred_concurrent_callers_make_one_refresh() {
    let mock = lwa_answering_refresh(
        lwa_tokens("Atza|unit-fresh", "Atzr|unit", 3600).set_delay(Duration::from_millis(200)),
    )
    .await;
    let f = fixture(&mock).await;
    let id = seed(&f, "Atza|unit-old", secs(30)).await;
    let min_ttl = time::Duration::seconds(300);
    let issued = futures::future::join_all(
        (0..100).map(|_| f.broker.access_token(&f.caller, id, min_ttl, false)),
    )
    .await;
    let mut started = 0;
    for token in issued {
        let token = token.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.access_token(), "Atza|unit-fresh");
        assert_eq!(token.refresh_error, None);
        match token.source {
            TokenSource::Refreshed => started += 1,
            TokenSource::Joined => {}
            other => panic!("unexpected source {other:?}"),
        }
    }
    assert_eq!(
        started, 1,
        "one caller started the refresh, the rest joined"
    );
    assert_eq!(refresh_requests(&mock).await, 1);
    // Now a cache hit.
    let again = f
        .broker
        .access_token(&f.caller, id, min_ttl, false)
        .await
        .unwrap();
    assert_eq!(again.source, TokenSource::Cache);
}

#[tokio::test]
async fn a_dropped_caller_leaves_the_refresh_to_finish() {
    let mock = lwa_answering_refresh(
        lwa_tokens("Atza|unit-detached", "Atzr|unit", 3600).set_delay(Duration::from_millis(500)),
    )
    .await;
    let f = fixture(&mock).await;
    let id = seed(&f, "Atza|unit-old", secs(30)).await;
    let min_ttl = time::Duration::seconds(300);
    // The caller's future is dropped while Amazon is answering.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        f.broker.access_token(&f.caller, id, min_ttl, false),
    )
    .await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let lease: Option<Uuid> =
        sqlx::query_scalar("select refresh_lease_token from connection where id = $1")
            .bind(id)
            .fetch_one(&f.db.pool)
            .await
            .unwrap();
    assert_eq!(lease, None, "the lease was released");
    let next = f
        .broker
        .access_token(&f.caller, id, min_ttl, false)
        .await
        .unwrap();
    assert_eq!(next.access_token(), "Atza|unit-detached");
    assert_eq!(next.source, TokenSource::Cache);
    assert_eq!(refresh_requests(&mock).await, 1);
}

#[tokio::test]
async fn an_absurd_expires_in_is_bounded_to_a_day() {
    let mock = lwa_answering_refresh(lwa_tokens("Atza|unit-forever", "Atzr|unit", i64::MAX)).await;
    let f = fixture(&mock).await;
    let id = seed(&f, "Atza|unit-old", secs(30)).await;
    let token = f
        .broker
        .access_token(&f.caller, id, time::Duration::seconds(300), false)
        .await
        .unwrap();
    assert_eq!(token.access_token(), "Atza|unit-forever");
    let lifetime = token.expires_at() - f.clock.now();
    assert!(
        lifetime <= time::Duration::hours(24),
        "cached for {lifetime}"
    );
}

#[tokio::test]
async fn force_refresh_never_hands_back_the_rejected_token() {
    // Amazon answers the forced refresh with the same expiry instant as the
    // cached token had (microsecond-equal timestamps): the token must still
    // be the new one.
    let mock = lwa_answering_refresh(lwa_tokens("Atza|unit-forced", "Atzr|unit", 3000)).await;
    let f = fixture(&mock).await;
    let id = seed(&f, "Atza|unit-rejected", secs(3000)).await;
    let forced = f
        .broker
        .access_token(&f.caller, id, time::Duration::seconds(300), true)
        .await
        .unwrap();
    assert_eq!(forced.access_token(), "Atza|unit-forced");
    assert_eq!(refresh_requests(&mock).await, 1);
}
