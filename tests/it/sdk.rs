//! Amazon's official Python SDK (`amzn-sp-api` from PyPI, unchanged) works
//! against sp-broker: its LWA endpoint is `POST /auth/o2/token`, its refresh
//! token a connection id, its client secret an API key, its SP-API endpoint
//! the connection's `spapi_endpoint` (the sandbox). The SDK's
//! `getMarketplaceParticipations` answer must be the sandbox's for that seller.
//! The community `python-amazon-sp-api`, its LWA endpoint pointed at
//! sp-broker, must get the same access token as the JSON route.
//!
//! The virtual environment is made once under `target/sdk-venv` (Debian's
//! `python3-venv`; `.ci/run` installs it). Without Python or PyPI the test
//! prints a note and passes, except under `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::token_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The SDK versions the test installs (pinned: the test checks their behaviour).
const AMZN_SP_API: &str = "amzn-sp-api==1.13.0";
const PYTHON_AMAZON_SP_API: &str = "python-amazon-sp-api==2.1.35";
const SELLER: &str = "A1SDKSELLER";

/// `target/sdk-venv/bin/python` with both SDKs installed.
fn sdk_python() -> Option<PathBuf> {
    crate::python_support::venv_with("sdk-venv", &[AMZN_SP_API, PYTHON_AMAZON_SP_API])
        .map(|venv| venv.join("bin/python"))
}

#[tokio::test]
async fn amazons_python_sdk_gets_marketplace_participations_through_sp_broker() {
    let Some(python) = tokio::task::spawn_blocking(sdk_python).await.unwrap() else {
        return;
    };
    let app = TestApp::spawn().await;
    let seller = app.signed_in_browser("acme", "sdk-user").await;
    assert_eq!(
        seller
            .connect_through("ATVPDKIKX0DER", SELLER)
            .await
            .status(),
        303
    );
    let id = connection_rows(&seller.page().await)[0].0.clone();
    let key = app.api_key(Some("acme"), &[]).await;
    // The JSON route names the connection's SP-API endpoint (the sandbox's).
    let route = access_token(&app, &key, id.parse().unwrap(), serde_json::json!({})).await;
    let spapi_endpoint = route.body["spapi_endpoint"].as_str().unwrap().to_owned();
    assert!(spapi_endpoint.starts_with(&app.base), "{spapi_endpoint}");

    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/amzn_sp_api_participations.py");
    let lwa_endpoint = app.url("/auth/o2/token");
    let mut sdk = Command::new(&python);
    sdk.arg(&script)
        .env("SPB_LWA_ENDPOINT", &lwa_endpoint)
        .env("SPB_SPAPI_ENDPOINT", &spapi_endpoint)
        .env("SPB_CONNECTION_ID", &id)
        .env("SPB_API_KEY", &key);
    let output = tokio::task::spawn_blocking(move || sdk.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("SDK stdout: {stdout}");
    assert!(output.status.success(), "the SDK failed:\n{stderr}");
    let through_sdk: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();

    // What the sandbox answers for this seller, asked directly.
    let direct: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{spapi_endpoint}/sellers/v1/marketplaceParticipations"
        ))
        .header("x-amz-access-token", route.access_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        through_sdk, direct["payload"],
        "the SDK's answer is the sandbox's"
    );
    assert_eq!(
        through_sdk[0]["storeName"],
        format!("Sandbox Store {SELLER}")
    );
    assert_eq!(through_sdk[0]["marketplace"]["id"], "ATVPDKIKX0DER");
    assert!(!stderr.contains("Atzr|") && !stdout.contains("Atzr|"));

    // The community SDK, its LWA endpoint pointed at sp-broker: the same token.
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/python_amazon_sp_api_token.py");
    let mut community = Command::new(&python);
    community
        .arg(&script)
        .env("SPB_LWA_ENDPOINT", &lwa_endpoint)
        .env("SPB_CONNECTION_ID", &id)
        .env("SPB_API_KEY", &key);
    let output = tokio::task::spawn_blocking(move || community.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "python-amazon-sp-api failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        route.access_token(),
        "python-amazon-sp-api got the connection's token"
    );

    // The SDKs' token requests reached sp-broker's endpoint and were counted.
    let metrics = app.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sp_broker_lwa_compatible_requests_total")
                && l.contains("grant=\"refresh_token\"")
                && l.contains("outcome=\"ok\"")),
        "{metrics}"
    );
}
