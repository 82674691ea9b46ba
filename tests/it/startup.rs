//! Start-up and command-line behaviour: keys that cannot open what is stored
//! stop the broker (fail closed); bad settings exit 2 naming the setting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use sp_broker::crypto::KeyRing;
use sp_broker::db::key_checks::{verify_key_ring, KeyCheckError};
use std::process::Command;

const OTHER_KEY: &str = "other:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const IMPOSTOR: &str = "test-key-1:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

fn ring(spec: &str) -> KeyRing {
    KeyRing::parse(&secrecy::SecretString::from(spec.to_owned())).unwrap()
}

#[tokio::test]
async fn start_up_fails_closed_when_keys_cannot_open_stored_secrets() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u1").await;
    assert_eq!(
        browser
            .connect_through("ATVPDKIKX0DER", "A1KEYS")
            .await
            .status(),
        303
    );
    let now = time::OffsetDateTime::now_utc();

    // A key ring without the key that sealed the tokens: refused.
    match verify_key_ring(&app.pool, &ring(OTHER_KEY), now).await {
        Err(KeyCheckError::MissingKeys(ids)) => assert!(ids.contains("test-key-1")),
        other => panic!("expected MissingKeys, got {other:?}"),
    }
    // The same key id with other bytes: refused by the key-check value.
    match verify_key_ring(&app.pool, &ring(IMPOSTOR), now).await {
        Err(KeyCheckError::WrongKey(id)) => assert_eq!(id, "test-key-1"),
        other => panic!("expected WrongKey, got {other:?}"),
    }
    // A new active key with the old one kept for decryption: accepted.
    verify_key_ring(&app.pool, &ring(&format!("{OTHER_KEY},{TEST_KEY}")), now)
        .await
        .unwrap();
}

fn broker(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sp-broker"));
    command.args(args);
    for var in [
        "SP_BROKER_LWA_CLIENT_ID",
        "SP_BROKER_AMAZON",
        "SP_BROKER_ENCRYPTION_KEYS",
        "SP_BROKER_LISTEN",
    ] {
        command.env_remove(var);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn bad_settings_exit_2_naming_the_setting() {
    for (env, variable) in [
        (
            vec![("SP_BROKER_LISTEN", "not-an-address")],
            "SP_BROKER_LISTEN",
        ),
        (
            vec![("SP_BROKER_PUBLIC_URL", "ftp://x")],
            "SP_BROKER_PUBLIC_URL",
        ),
        (vec![("SP_BROKER_AMAZON", "prod")], "SP_BROKER_AMAZON"),
        (
            vec![("SP_BROKER_LWA_CLIENT_ID", "amzn1.application-oa2-client.x")],
            "SP_BROKER_APP_ID",
        ),
        (
            vec![("SP_BROKER_ENCRYPTION_KEYS", "k:tooshort")],
            "SP_BROKER_ENCRYPTION_KEYS",
        ),
    ] {
        let out = broker(&["serve"], &env);
        assert_eq!(out.status.code(), Some(2), "{variable}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
    let out = broker(&["no-such-command"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn keys_generate_prints_a_usable_key() {
    let out = broker(&["keys", "generate"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8(out.stdout).unwrap();
    let line = line.trim_end();
    assert!(!line.contains('\n'));
    let ring = ring(line);
    assert_eq!(ring.key_ids().count(), 1);
}
