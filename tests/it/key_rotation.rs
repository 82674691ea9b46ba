//! `keys rotate`: every stored secret re-sealed under the new active key, in
//! batches; interrupted and rerun, nothing is lost; afterwards the old key can
//! be dropped and every token still opens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use sp_broker::crypto::{KeyRing, Purpose};
use std::sync::Arc;

const NEW_KEY: &str = "new-key-2:AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";

fn ring(spec: &str) -> KeyRing {
    KeyRing::parse(&secrecy::SecretString::from(spec.to_owned())).unwrap()
}

#[tokio::test]
async fn rotation_interrupted_and_rerun_loses_nothing() {
    let app = TestApp::spawn().await;
    let mut seeded = Vec::new();
    for i in 0..600 {
        let id = app
            .seed_connection(
                "acme",
                &format!("A1ROT{i}"),
                &format!("Atzr|refresh-{i}"),
                &format!("Atza|access-{i}"),
                time::Duration::hours(1),
            )
            .await;
        seeded.push((id, i));
    }
    let tenant_id = sp_broker::db::tenants::find_tenant_by_slug(&app.pool, "acme")
        .await
        .unwrap()
        .unwrap()
        .id
        .to_string();

    let rotated_ring = Arc::new(ring(&format!("{NEW_KEY},{TEST_KEY}")));
    // Interrupt a rotation part-way (as a killed process would), then rerun it.
    let pool = app.pool.clone();
    let keys = rotated_ring.clone();
    let interrupted = tokio::spawn(async move { sp_broker::rotation::rotate(&pool, &keys).await });
    tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    interrupted.abort();
    let _ = interrupted.await;
    let mid = sp_broker::rotation::sealed_counts(&app.pool).await.unwrap();
    assert_eq!(
        mid.values().sum::<i64>(),
        1200,
        "no value lost mid-rotation: {mid:?}"
    );

    let summary = sp_broker::rotation::rotate(&app.pool, &rotated_ring)
        .await
        .unwrap();
    assert_eq!(summary.remaining, 0);
    let after = sp_broker::rotation::sealed_counts(&app.pool).await.unwrap();
    assert_eq!(after.get("new-key-2").copied(), Some(1200), "{after:?}");
    assert_eq!(after.get("test-key-1"), None);

    // The old key can now be dropped: start-up accepts the new ring alone, and
    // every value opens under it, bound to its own row.
    let new_only = ring(NEW_KEY);
    sp_broker::db::key_checks::verify_key_ring(
        &app.pool,
        &new_only,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let rows: Vec<(uuid::Uuid, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("select id, refresh_token_sealed, access_token_sealed from connection")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), seeded.len());
    for (id, refresh, access) in rows {
        let i = seeded.iter().find(|(s, _)| *s == id).unwrap().1;
        let row = id.to_string();
        let opened = new_only
            .open(
                connection_seal_context(Purpose::RefreshToken, &tenant_id, &row),
                &refresh,
            )
            .unwrap();
        assert_eq!(opened, format!("Atzr|refresh-{i}").into_bytes());
        let opened = new_only
            .open(
                connection_seal_context(Purpose::AccessToken, &tenant_id, &row),
                &access,
            )
            .unwrap();
        assert_eq!(opened, format!("Atza|access-{i}").into_bytes());
    }
    // A second run has nothing to do.
    let again = sp_broker::rotation::rotate(&app.pool, &rotated_ring)
        .await
        .unwrap();
    assert_eq!((again.rows_rewritten, again.remaining), (0, 0));
}

#[tokio::test]
async fn a_client_secret_from_a_notification_is_resealed_and_opens_under_the_new_key_alone() {
    let app = TestApp::spawn().await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let now = app.now();
    let notification = crate::app_secrets::new_secret_notification(
        &app.services.config.lwa_client_id,
        "amzn1.oa2-cs.v1.to-be-resealed",
        "n-reseal",
        now + time::Duration::days(180),
        now + time::Duration::days(7),
    );
    let stored =
        crate::token_support::post(&app, "/v1/app/notifications", &admin, notification).await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    let summary = sp_broker::rotation::rotate(&app.pool, &ring(&format!("{NEW_KEY},{TEST_KEY}")))
        .await
        .unwrap();
    assert_eq!((summary.values_resealed, summary.remaining), (1, 0));
    let counts = sp_broker::rotation::sealed_counts(&app.pool).await.unwrap();
    assert_eq!(counts.get("new-key-2").copied(), Some(1), "{counts:?}");
    // A broker holding only the new key opens it and sends it first.
    let renewed =
        TestApp::spawn_on(app.db.clone(), |s| s.encryption_keys = Some(NEW_KEY.into())).await;
    renewed.services.credentials.reload().await.unwrap();
    let shown = sp_broker::app_secrets::status(&renewed.services.credentials);
    let in_use = shown.secrets.iter().find(|s| s.in_use).unwrap();
    assert_eq!(
        in_use.source,
        sp_broker::broker::app_credentials::SecretSource::Notification
    );
}
