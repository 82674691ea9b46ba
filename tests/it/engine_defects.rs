//! The smaller defects found while reading the token engine (issue #4, item
//! 10), each shown where a test can show it. (Bounded `expires_in` and the
//! force-refresh generation are in `broker.rs`; counts put back after a
//! failed flush in `broker::cache`'s unit tests.)

use crate::common::*;
use crate::token_support::*;
use sp_broker::crypto::KeyRing;
use sp_broker::rotation::RotationError;

#[tokio::test]
async fn keys_rotate_stops_naming_a_row_it_cannot_read() {
    let app = TestApp::spawn().await;
    let id = app
        .seed_connection("acme", "A1GARBLED", "Atzr|r", "Atza|a", secs(3000))
        .await;
    sqlx::query(
        "update connection set refresh_token_sealed = 'not an envelope'::bytea where id = $1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    let ring = KeyRing::parse(&secrecy::SecretString::from(format!(
        "new-key:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=,{TEST_KEY}"
    )))
    .unwrap();
    let rotation = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sp_broker::rotation::rotate(&app.pool, &ring),
    )
    .await
    .expect("rotation stops instead of looping");
    match rotation {
        Err(RotationError::Unreadable {
            connection, column, ..
        }) => {
            assert_eq!(connection, id);
            assert_eq!(column, "refresh token");
        }
        Err(other) => panic!("another error: {other}"),
        Ok(summary) => panic!("rotation went past an unreadable row: {summary:?}"),
    }
}

#[tokio::test]
async fn refresh_history_is_pruned_after_30_days() {
    let app = TestApp::spawn().await;
    let id = app
        .seed_connection("acme", "A1HISTORY", "Atzr|r", "Atza|a", secs(3000))
        .await;
    for days_ago in [45, 31, 29, 1] {
        sqlx::query(
            "insert into refresh_event (connection_id, at, outcome, latency_ms) values ($1, $2, 'ok', 10)",
        )
        .bind(id)
        .bind(app.now() - time::Duration::days(days_ago))
        .execute(&app.pool)
        .await
        .unwrap();
    }
    app.services.jobs().clean_up_once().await.unwrap();
    let left: Vec<time::OffsetDateTime> =
        sqlx::query_scalar("select at from refresh_event order by at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left
        .iter()
        .all(|at| *at > app.now() - time::Duration::days(30)));
}

#[test]
fn a_malformed_key_spec_is_never_echoed() {
    let secretish = "k1:c2VjcmV0LWtleS1tYXRlcmlhbA-NOT-32-BYTES";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sp-broker"))
        .arg("serve")
        .env("SP_BROKER_ENCRYPTION_KEYS", secretish)
        .env_remove("SP_BROKER_LWA_CLIENT_ID")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SP_BROKER_ENCRYPTION_KEYS"), "{stderr}");
    assert!(
        !stderr.contains("c2VjcmV0LWtleS1tYXRlcmlhbA"),
        "the key material was echoed: {stderr}"
    );
}

#[tokio::test]
async fn the_change_listener_reports_itself_in_metrics() {
    let app = TestApp::spawn().await;
    let started = std::time::Instant::now();
    loop {
        let metrics = app.metrics_text().await;
        if metrics.contains("sp_broker_change_listener_connected 1") {
            assert!(
                metrics.contains("sp_broker_change_listener_heartbeat_age_seconds"),
                "{metrics}"
            );
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the listener never reported itself: {metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
