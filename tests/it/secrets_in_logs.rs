//! Secrets stay out of logs and responses (SECURITY.md "Logs"): the whole flow
//! runs with every tracing event and span of every crate captured at `trace`,
//! in both log formats, with canary values for the client secret and the
//! tokens Amazon issues; none of them, nor the login token, session id, CSRF
//! token, state or code, may appear in a log line. The tokens and the client
//! secret also appear in no HTTP response, and code and state in none after
//! the callback.
//!
//! The subscriber is process-global: nextest runs each test in its own process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use crate::flow_support::*;
use serde_json::json;
use sp_broker::http::SESSION_COOKIE;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use tracing::instrument::WithSubscriber;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, ResponseTemplate};

const REFRESH: &str = "Atzr|CANARY-REFRESH-5c1f0e9a7b3d";
const ACCESS: &str = "Atza|CANARY-ACCESS-9e2d4b6a8c0f";
const CLIENT_SECRET: &str = "CANARY-CLIENT-SECRET-0a1b2c3d4e5f";
/// A valid webhook secret (base64 of 30 bytes) that reads as a canary.
const WEBHOOK_SECRET: &str = "whsec_CANARYWEBHOOKSECRET0123456789abcdefghijk";
/// The base64 and the raw bytes of the test encryption key (`TEST_KEY`).
const KEY_BASE64: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY_RAW: &str = "0123456789abcdef0123456789abcdef";

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every event and span (opened and closed, with their fields) of every crate
/// at `trace`, as text and as JSON lines; `log` records included.
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let text = Capture(buffer.clone());
        let json = Capture(buffer.clone());
        tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
                    .with_writer(move || text.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
                    .with_writer(move || json.clone()),
            )
            .try_init()
            .expect("the only subscriber of this process");
        buffer
    })
    .clone()
}

/// Where a response came from, which decides what it may legitimately carry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    /// The simulated Amazon: its pages and redirects carry state and code.
    Amazon,
    /// The broker's redirect to Amazon: its Location carries the state.
    RedirectToAmazon,
    /// Any other broker response: carries neither state nor code.
    Broker,
}

#[derive(Default)]
struct Transcript {
    entries: Vec<(String, Source, String, String)>,
    session_ids: Vec<String>,
}

impl Transcript {
    /// Records a response (headers and body) and returns it as (status,
    /// headers, body) for the test to go on with.
    async fn record(
        &mut self,
        what: &str,
        source: Source,
        response: reqwest::Response,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut header_text = String::new();
        for (name, value) in &headers {
            let value = value.to_str().unwrap_or_default();
            if name == "set-cookie" {
                if let Some(id) = value
                    .strip_prefix(&format!("{SESSION_COOKIE}="))
                    .and_then(|v| v.split(';').next())
                {
                    if !id.is_empty() {
                        self.session_ids.push(id.to_owned());
                    }
                }
                continue;
            }
            header_text.push_str(&format!("{name}: {value}\n"));
        }
        let body = response.text().await.unwrap();
        self.entries
            .push((what.to_owned(), source, header_text, body.clone()));
        (status, headers, body)
    }
}

fn location_of(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("location")
        .expect("a Location")
        .to_str()
        .unwrap()
        .replace("&amp;", "&")
}

/// The forms a value can take in a log line or URL.
fn variants(secret: &str) -> Vec<String> {
    let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let mut all = vec![secret.to_owned(), encoded];
    all.dedup();
    all
}

fn assert_absent(haystack: &str, secret: &str, name: &str, place: &str) {
    for variant in variants(secret) {
        if let Some(at) = haystack.find(&variant) {
            let line_start = haystack[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = haystack[at..].find('\n').map_or(haystack.len(), |i| at + i);
            panic!(
                "{name} found in {place}:\n{}",
                &haystack[line_start..line_end]
            );
        }
    }
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_or_a_response() {
    let logs = capture_logs();
    // The test's own side (its HTTP client with its cookie jar, its set-up
    // queries) logs nowhere: what is captured is what the broker, the
    // simulated Amazon and the test double log from their own tasks.
    whole_flow(logs)
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await;
}

async fn whole_flow(logs: Arc<Mutex<Vec<u8>>>) {
    // Amazon's token endpoint and SP-API, answering with canary tokens only
    // to the canary client secret.
    let mock = wiremock::MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains(format!(
            "client_secret={CLIENT_SECRET}"
        )))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(tokens_answer(REFRESH, ACCESS))
        .with_priority(5)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/sellers/v1/marketplaceParticipations"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"payload": [{
                "marketplace": {"id": US, "name": "Amazon.com", "countryCode": "US"},
                "participation": {"isParticipating": true, "hasSuspendedListings": false},
                "storeName": "Log Test Store",
            }]})),
        )
        .mount(&mock)
        .await;
    let token_url = token_url(&mock);
    let spapi = mock.uri();
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let hooks = format!("{}/hooks", mock.uri());
    let app = TestApp::spawn_with(move |s| {
        s.lwa_token_url = Some(token_url);
        s.spapi_url = Some(spapi);
        s.lwa_client_secret = Some(CLIENT_SECRET.into());
        s.webhook_url = Some(hooks);
        s.webhook_secret = Some(WEBHOOK_SECRET.into());
        s.log = "trace".into();
    })
    .await;
    app.create_tenant("acme").await;

    let mut transcript = Transcript::default();
    let mut login_tokens = Vec::new();
    let mut csrf_tokens = Vec::new();
    let mut states = Vec::new();
    let mut codes = Vec::new();

    // Sign in with a login link.
    let client = app.browser();
    let link = app.login_link("acme", "user-1").await;
    login_tokens.push(link.rsplit('/').next().unwrap().to_owned());
    let (status, _, _) = transcript
        .record(
            "login",
            Source::Broker,
            client.get(&link).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 303);
    let (_, _, page) = transcript
        .record(
            "page",
            Source::Broker,
            client
                .get(app.url("/settings/connections"))
                .send()
                .await
                .unwrap(),
        )
        .await;
    let csrf = extract_attr(&page, "name=\"csrf_token\" value=\"").unwrap();
    csrf_tokens.push(csrf.clone());
    let browser = Browser {
        client: client.clone(),
        base: app.base.clone(),
        csrf: csrf.clone(),
    };

    // Connect → consent → callback, the way a browser goes.
    async fn through_amazon(
        app: &TestApp,
        browser: &Browser,
        transcript: &mut Transcript,
        redirect: reqwest::Response,
        selling_partner_id: &str,
    ) -> (String, String, String) {
        let (status, headers, _) = transcript
            .record("redirect to Amazon", Source::RedirectToAmazon, redirect)
            .await;
        assert!(status == 302 || status == 303, "{status}");
        let consent_url = location_of(&headers);
        let state = query_param(&consent_url, "state").unwrap();
        let (status, _, consent_page) = transcript
            .record(
                "consent page",
                Source::Amazon,
                browser.client.get(&consent_url).send().await.unwrap(),
            )
            .await;
        assert_eq!(status, 200);
        let redirect_uri = extract_attr(&consent_page, "name=\"redirect_uri\" value=\"").unwrap();
        let confirm = browser
            .client
            .post(app.url("/sandbox/apps/authorize/confirm"))
            .form(&[
                ("state", state.as_str()),
                ("redirect_uri", redirect_uri.as_str()),
                ("selling_partner_id", selling_partner_id),
            ])
            .send()
            .await
            .unwrap();
        let (status, headers, _) = transcript.record("confirm", Source::Amazon, confirm).await;
        assert_eq!(status, 303);
        let callback_url = location_of(&headers);
        let code = query_param(&callback_url, "spapi_oauth_code").unwrap();
        (state, code, callback_url)
    }

    let connect = browser.connect(US, "seller").await;
    let (state, code, callback_url) =
        through_amazon(&app, &browser, &mut transcript, connect, "A1LOGSELLER").await;
    states.push(state);
    codes.push(code);
    let (status, _, _) = transcript
        .record(
            "callback",
            Source::Broker,
            client.get(&callback_url).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 303, "the canary exchange succeeded");
    let (_, _, page) = transcript
        .record("page after connect", Source::Broker, {
            client
                .get(app.url("/settings/connections"))
                .send()
                .await
                .unwrap()
        })
        .await;
    let rows = connection_rows(&page);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, "active");
    let id = rows[0].0.clone();

    // The refusals log too: a replay, and another session opening the URL.
    let (status, _, _) = transcript
        .record(
            "replayed callback",
            Source::Broker,
            client.get(&callback_url).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 400);
    let other = app.signed_in_browser("acme", "user-2").await;
    csrf_tokens.push(other.csrf.clone());
    let connect = browser.connect(GERMANY, "seller").await;
    let (state, code, foreign_url) =
        through_amazon(&app, &browser, &mut transcript, connect, "A1LOGSELLER").await;
    states.push(state);
    codes.push(code);
    let (status, _, _) = transcript
        .record(
            "callback from another session",
            Source::Broker,
            other.client.get(&foreign_url).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 400);

    // Amazon refusing a code: logged as a failure, with nothing secret.
    let connect = browser.connect(US, "seller").await;
    let (state, code, refused_url) =
        through_amazon(&app, &browser, &mut transcript, connect, "A1LOGSELLER").await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains(code.as_str()))
        .respond_with(invalid_grant_answer())
        .with_priority(1)
        .mount(&mock)
        .await;
    states.push(state);
    codes.push(code);
    let (status, _, _) = transcript
        .record(
            "refused code",
            Source::Broker,
            client.get(&refused_url).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 502);

    // Reconnect, the Login URI, Disconnect.
    let reconnect = browser.post_action(&id, "reconnect").await;
    let (state, code, url) =
        through_amazon(&app, &browser, &mut transcript, reconnect, "A1LOGSELLER").await;
    states.push(state);
    codes.push(code);
    let (status, _, _) = transcript
        .record(
            "reconnect callback",
            Source::Broker,
            client.get(&url).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 303);
    let mut login_uri = url::Url::parse(&app.url("/oauth/amazon/login")).unwrap();
    login_uri
        .query_pairs_mut()
        .append_pair(
            "amazon_callback_uri",
            &app.url("/sandbox/apps/authorize/consent"),
        )
        .append_pair("amazon_state", "amazon-state-not-secret")
        .append_pair("selling_partner_id", "A2LOGINURI");
    let login_redirect = client.get(login_uri.as_str()).send().await.unwrap();
    let (state, code, url) = through_amazon(
        &app,
        &browser,
        &mut transcript,
        login_redirect,
        "A2LOGINURI",
    )
    .await;
    states.push(state);
    codes.push(code);
    let (status, _, _) = transcript
        .record(
            "Login URI callback",
            Source::Broker,
            client.get(&url).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 303);
    let (status, _, _) = transcript
        .record(
            "disconnect",
            Source::Broker,
            browser.post_action(&id, "disconnect").await,
        )
        .await;
    assert_eq!(status, 303);
    let (_, _, page) = transcript
        .record(
            "final page",
            Source::Broker,
            client
                .get(app.url("/settings/connections"))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(rows_for(&page, "A1LOGSELLER")[0].2, "disconnected");
    assert_eq!(rows_for(&page, "A2LOGINURI")[0].2, "active");

    // Refused forms and sign-ins log too.
    let (status, _, _) = transcript
        .record(
            "form with another session's token",
            Source::Broker,
            client
                .post(app.url("/settings/connections/connect"))
                .form(&[
                    ("csrf_token", other.csrf.as_str()),
                    ("marketplace_id", US),
                    ("account_type", "seller"),
                ])
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(status, 403);
    let expired = app.login_link("acme", "user-3").await;
    login_tokens.push(expired.rsplit('/').next().unwrap().to_owned());
    app.clock.advance(time::Duration::minutes(11));
    let (status, _, _) = transcript
        .record(
            "expired login link",
            Source::Broker,
            app.browser().get(&expired).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 400);
    let reused = link.clone();
    let (status, _, _) = transcript
        .record(
            "used login link",
            Source::Broker,
            app.browser().get(&reused).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 400);

    // The double saw the exchanges with the canary secret.
    let forms = token_request_forms(&mock).await;
    assert_eq!(forms.len(), 4, "four code exchanges reached Amazon");
    assert!(forms
        .iter()
        .all(|f| f.contains(&("client_secret".to_owned(), CLIENT_SECRET.to_owned()))));

    // The events the flow made are delivered, signed with the canary secret.
    let webhooks = app.services.webhooks.clone().unwrap();
    while webhooks.deliver_due().await.unwrap().delivered > 0 {}
    let delivered = mock
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == "/hooks")
        .count();
    assert!(
        delivered >= 1,
        "a webhook was delivered while logging at trace"
    );

    // Let any late log line (span closes, connection tasks) be written.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    // Kept for a person to read when this fails (it holds only test canaries).
    let dump = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/secrets_in_logs.log");
    let _ = std::fs::write(dump, &log);

    // The capture works: the flow was logged, at every level down to trace.
    assert!(!log.is_empty(), "nothing was captured");
    assert!(
        log.contains("/oauth/amazon/callback"),
        "requests are logged"
    );
    assert!(log.contains("TRACE") || log.contains("\"level\":\"TRACE\""));
    assert!(log.contains("DEBUG"));

    let session_ids = transcript.session_ids.clone();
    assert!(!session_ids.is_empty());
    let mut secrets: Vec<(&str, String)> = vec![
        ("refresh token", REFRESH.to_owned()),
        ("access token", ACCESS.to_owned()),
        ("client secret", CLIENT_SECRET.to_owned()),
        ("webhook secret", WEBHOOK_SECRET.to_owned()),
        ("encryption key", KEY_BASE64.to_owned()),
        ("encryption key bytes", KEY_RAW.to_owned()),
        ("canary marker", "CANARY".to_owned()),
    ];
    secrets.extend(login_tokens.iter().map(|t| ("login token", t.clone())));
    secrets.extend(session_ids.iter().map(|t| ("session id", t.clone())));
    secrets.extend(csrf_tokens.iter().map(|t| ("CSRF token", t.clone())));
    secrets.extend(states.iter().map(|t| ("state", t.clone())));
    secrets.extend(codes.iter().map(|t| ("authorization code", t.clone())));
    for (name, secret) in &secrets {
        assert_absent(&log, secret, name, "the log");
    }

    // Responses: tokens, client secret and keys in none; login tokens and
    // session ids in no body; state and code only where Amazon's protocol
    // carries them (the redirect to Amazon, Amazon's own pages).
    let never = [
        REFRESH,
        ACCESS,
        CLIENT_SECRET,
        WEBHOOK_SECRET,
        KEY_BASE64,
        KEY_RAW,
        "CANARY",
    ];
    for (what, source, headers, body) in &transcript.entries {
        let all = format!("{headers}\n{body}");
        for secret in never {
            assert_absent(&all, secret, secret, &format!("the response to {what}"));
        }
        for secret in login_tokens.iter().chain(&session_ids) {
            assert_absent(&all, secret, "login token or session id", what);
        }
        if *source == Source::Broker {
            for secret in states.iter().chain(&codes) {
                assert_absent(
                    &all,
                    secret,
                    "state or code",
                    &format!("the response to {what}"),
                );
            }
        }
        if *source == Source::RedirectToAmazon {
            for code in &codes {
                assert_absent(&all, code, "code", &format!("the response to {what}"));
            }
        }
    }
}

/// The same with the sandbox's own token endpoint issuing the tokens: their
/// values are unknown to the test, but Amazon's (and the sandbox's) refresh
/// tokens start with `Atzr|` and access tokens with `Atza|`.
#[tokio::test]
async fn no_sandbox_issued_token_reaches_a_log_line_or_a_response() {
    let logs = capture_logs();
    sandbox_flow(logs)
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await;
}

async fn sandbox_flow(logs: Arc<Mutex<Vec<u8>>>) {
    let app = TestApp::spawn_with(|s| {
        s.lwa_client_secret = Some(CLIENT_SECRET.into());
        s.log = "trace".into();
    })
    .await;
    app.create_tenant("acme").await;
    let mut transcript = Transcript::default();
    let client = app.browser();
    let link = app.login_link("acme", "user-1").await;
    let login_token = link.rsplit('/').next().unwrap().to_owned();
    transcript
        .record(
            "login",
            Source::Broker,
            client.get(&link).send().await.unwrap(),
        )
        .await;
    let (_, _, page) = transcript
        .record(
            "page",
            Source::Broker,
            client
                .get(app.url("/settings/connections"))
                .send()
                .await
                .unwrap(),
        )
        .await;
    let browser = Browser {
        client: client.clone(),
        base: app.base.clone(),
        csrf: extract_attr(&page, "name=\"csrf_token\" value=\"").unwrap(),
    };
    let connect = browser.connect(US, "seller").await;
    let consent_url = location(&connect);
    transcript
        .record("connect", Source::RedirectToAmazon, connect)
        .await;
    let state = query_param(&consent_url, "state").unwrap();
    let callback_url = browser.consent(&consent_url, "A1SANDBOXLOG").await;
    let code = query_param(&callback_url, "spapi_oauth_code").unwrap();
    let (status, _, _) = transcript
        .record(
            "callback",
            Source::Broker,
            client.get(&callback_url).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 303, "the sandbox exchanged the code");
    let (status, _, _) = transcript
        .record(
            "replay",
            Source::Broker,
            client.get(&callback_url).send().await.unwrap(),
        )
        .await;
    assert_eq!(status, 400);
    let (_, _, page) = transcript
        .record(
            "page after connect",
            Source::Broker,
            client
                .get(app.url("/settings/connections"))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(rows_for(&page, "A1SANDBOXLOG")[0].2, "active");
    // The sandbox did issue tokens: one grant for this seller.
    assert_eq!(count(&app, "sandbox_grant").await, 1);

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(log.contains("/sandbox/auth/o2/token") || log.contains("auth/o2/token"));
    let mut secrets: Vec<(&str, String)> = vec![
        ("a refresh token", "Atzr|".to_owned()),
        ("an access token", "Atza|".to_owned()),
        ("client secret", CLIENT_SECRET.to_owned()),
        ("login token", login_token),
        ("CSRF token", browser.csrf.clone()),
        ("state", state.clone()),
        ("authorization code", code.clone()),
    ];
    secrets.extend(
        transcript
            .session_ids
            .iter()
            .map(|id| ("session id", id.clone())),
    );
    for (name, secret) in &secrets {
        assert_absent(&log, secret, name, "the log");
    }
    for (what, source, headers, body) in &transcript.entries {
        let all = format!("{headers}\n{body}");
        for secret in ["Atzr|", "Atza|", CLIENT_SECRET] {
            assert_absent(&all, secret, secret, &format!("the response to {what}"));
        }
        if *source == Source::Broker {
            for secret in [&state, &code] {
                assert_absent(
                    &all,
                    secret,
                    "state or code",
                    &format!("the response to {what}"),
                );
            }
        }
    }
}

#[tokio::test]
async fn no_lwa_compatible_answer_or_log_line_holds_a_key_or_a_token() {
    let logs = capture_logs();
    lwa_compatible_flow(logs)
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await;
}

/// LWA played by wiremock: refreshes answered with the canary tokens,
/// client-credentials grants with `grantless`.
async fn lwa_issuing_canaries(grantless: &str) -> wiremock::MockServer {
    let mock = wiremock::MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": ACCESS, "refresh_token": REFRESH,
            "token_type": "bearer", "expires_in": 3600,
        })))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=client_credentials"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": grantless, "token_type": "bearer", "expires_in": 3600,
            "scope": "sellingpartnerapi::notifications",
        })))
        .mount(&mock)
        .await;
    mock
}

/// SDK-style requests to `POST /auth/o2/token`, good and bad, at `trace`.
async fn lwa_compatible_flow(logs: Arc<Mutex<Vec<u8>>>) {
    const CACHED: &str = "Atza|CANARY-CACHED-FOR-SDK-3e7a";
    const GRANTLESS: &str = "Atc|CANARY-GRANTLESS-8d2f";
    let mock = lwa_issuing_canaries(GRANTLESS).await;
    let url = format!("{}/auth/o2/token", mock.uri());
    let app = TestApp::spawn_with(|s| {
        s.lwa_token_url = Some(url);
        s.lwa_client_secret = Some(CLIENT_SECRET.into());
        s.log = "trace".into();
    })
    .await;
    // 100 s left: the first request refreshes (the default wants 300).
    let id = app
        .seed_connection(
            "acme",
            "A1LWALOG",
            REFRESH,
            CACHED,
            time::Duration::seconds(100),
        )
        .await
        .to_string();
    let key = app.api_key(Some("acme"), &[]).await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let wrong = format!("{}Z", &key[..key.len() - 1]);
    let client = reqwest::Client::new();
    let endpoint = app.url("/auth/o2/token");
    let mut answers = Vec::new();
    let refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", id.as_str()),
    ];
    let with_secret = |secret: &str| {
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", id.clone()),
            ("client_secret", secret.to_owned()),
        ]
    };
    assert_eq!(
        record(
            &mut answers,
            client.post(&endpoint).form(&with_secret(&key))
        )
        .await,
        200
    );
    assert_eq!(
        record(
            &mut answers,
            client
                .post(&endpoint)
                .basic_auth("sdk", Some(&key))
                .form(&refresh)
        )
        .await,
        200
    );
    assert_eq!(
        record(
            &mut answers,
            client.post(&endpoint).json(&json!({
                "grant_type": "refresh_token", "refresh_token": id, "client_secret": key,
            }))
        )
        .await,
        200
    );
    assert_eq!(
        record(
            &mut answers,
            client.post(&endpoint).form(&with_secret(&wrong))
        )
        .await,
        401
    );
    assert_eq!(
        record(
            &mut answers,
            client
                .post(&endpoint)
                .basic_auth("sdk", Some(&wrong))
                .form(&refresh)
        )
        .await,
        401
    );
    assert_eq!(
        record(
            &mut answers,
            client.post(&endpoint).form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", REFRESH),
                ("client_secret", key.as_str()),
            ])
        )
        .await,
        400,
        "a real refresh token is not a connection id"
    );
    assert_eq!(
        record(
            &mut answers,
            client.post(&endpoint).form(&[
                ("grant_type", "client_credentials"),
                ("scope", "sellingpartnerapi::notifications"),
                ("client_secret", admin.as_str()),
            ])
        )
        .await,
        200
    );
    assert!(
        answers[0].contains(ACCESS),
        "the refreshed token was handed out"
    );

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(log.contains("/auth/o2/token"), "the requests were logged");
    for (name, secret) in [
        ("the API key", key.as_str()),
        ("the admin API key", admin.as_str()),
        ("a wrong API key", wrong.as_str()),
        ("the refresh token", REFRESH),
        ("the refreshed access token", ACCESS),
        ("the cached access token", CACHED),
        ("the grantless token", GRANTLESS),
        ("the client secret", CLIENT_SECRET),
    ] {
        assert_absent(&log, secret, name, "the log");
    }
    for answer in &answers {
        for (name, secret) in [
            ("a refresh token", "Atzr|"),
            ("the API key", key.as_str()),
            ("the client secret", CLIENT_SECRET),
        ] {
            assert_absent(answer, secret, name, "an answer of /auth/o2/token");
        }
    }
}

/// Sends `request` and keeps its answer (headers and body) in `answers`.
async fn record(answers: &mut Vec<String>, request: reqwest::RequestBuilder) -> u16 {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers: String = response
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or_default()))
        .collect();
    let body = response.text().await.unwrap();
    answers.push(format!("{headers}\n{body}"));
    status
}

#[tokio::test]
async fn a_client_secret_from_a_notification_is_in_no_log_line_answer_or_dump() {
    let logs = capture_logs();
    notified_secret_flow(logs)
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await;
}

/// A canary secret arrives by notification (twice, and malformed), is used
/// for refreshes, shown by `app status` and the dashboard, and re-sealed by
/// `keys rotate`: at `trace`, with a `pg_dump` at the end.
async fn notified_secret_flow(logs: Arc<Mutex<Vec<u8>>>) {
    const NOTIFIED: &str = "amzn1.oa2-cs.v1.CANARY-NOTIFIED-SECRET-6f2b9d";
    let mock = wiremock::MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/o2/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": ACCESS, "refresh_token": REFRESH,
            "token_type": "bearer", "expires_in": 3600,
        })))
        .mount(&mock)
        .await;
    let url = format!("{}/auth/o2/token", mock.uri());
    let app = TestApp::spawn_with(|s| {
        s.lwa_token_url = Some(url);
        s.lwa_client_secret = Some(CLIENT_SECRET.into());
        s.log = "trace".into();
    })
    .await;
    let id = app
        .seed_connection(
            "acme",
            "A1NOTIFIED",
            REFRESH,
            "Atza|seeded",
            time::Duration::seconds(100),
        )
        .await;
    let admin = app.api_key(None, &["tenants:admin"]).await;
    let key = app.api_key(Some("acme"), &[]).await;
    let client = reqwest::Client::new();
    let now = app.now();
    let notification = crate::app_secrets::new_secret_notification(
        &app.services.config.lwa_client_id,
        NOTIFIED,
        "n-canary",
        now + time::Duration::days(180),
        now + time::Duration::days(7),
    );
    let mut answers = Vec::new();
    let notify = |body: String| {
        client
            .post(app.url("/v1/app/notifications"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body)
    };
    assert_eq!(
        record(&mut answers, notify(notification.to_string())).await,
        200
    );
    assert_eq!(
        record(&mut answers, notify(notification.to_string())).await,
        200
    );
    let mut other = notification.clone();
    other["payload"]["applicationOAuthClientNewSecret"]["clientId"] = json!("someone-else");
    assert_eq!(record(&mut answers, notify(other.to_string())).await, 422);
    let cut = notification.to_string();
    assert_eq!(
        record(&mut answers, notify(cut[..cut.len() - 9].to_owned())).await,
        422
    );
    assert_eq!(
        record(
            &mut answers,
            client
                .post(app.url(&format!("/v1/connections/{id}/access-token")))
                .bearer_auth(&key)
                .json(&json!({}))
        )
        .await,
        200
    );
    assert_eq!(
        record(
            &mut answers,
            client.get(app.url("/v1/app/status")).bearer_auth(&admin)
        )
        .await,
        200
    );
    assert!(answers.last().unwrap().contains("\"notification\""));
    let ops = crate::ops_dashboard::operator(&app).await;
    assert_eq!(record(&mut answers, ops.get(app.url("/ops"))).await, 200);
    assert_eq!(
        record(&mut answers, client.get(app.url("/metrics"))).await,
        200
    );
    // The notified secret was sent to Amazon, so it was really used.
    let sent = mock.received_requests().await.unwrap();
    assert!(sent
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains("CANARY-NOTIFIED-SECRET")));

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        log.contains("/v1/app/notifications"),
        "the requests were logged"
    );
    assert_absent(&log, NOTIFIED, "the notified client secret", "the log");
    assert_absent(
        &log,
        CLIENT_SECRET,
        "the environment's client secret",
        "the log",
    );
    for answer in &answers {
        assert_absent(answer, NOTIFIED, "the notified client secret", "an answer");
        assert_absent(answer, CLIENT_SECRET, "the client secret", "an answer");
    }
    let dump = app.database_dump().await;
    assert_absent(
        &dump,
        NOTIFIED,
        "the notified client secret",
        "the database",
    );
    if let Some(pg_dump) = pg_dump(&app).await {
        assert!(pg_dump.contains("secret_sealed"), "a real dump");
        assert_absent(&pg_dump, NOTIFIED, "the notified client secret", "pg_dump");
        assert_absent(
            &pg_dump,
            &bytea_hex(NOTIFIED),
            "the notified client secret (hex)",
            "pg_dump",
        );
    }
}

#[tokio::test]
async fn every_route_at_trace_leaves_no_secret_in_a_log_line_a_webhook_body_or_the_database() {
    let logs = capture_logs();
    every_route_flow(logs)
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await;
}

/// The secret part of an API key (`spb_{public}_{secret}`): the public id is
/// logged by design.
fn key_secret_part(key: &str) -> String {
    let rest = key.strip_prefix("spb_").unwrap();
    let (_, secret) = rest.split_once('_').unwrap();
    secret.to_owned()
}

/// Every route of the `/v1` API, `/auth/o2/token`, the ops pages, the probes
/// and `/logout`, good and bad, with Amazon issuing canaries; events
/// delivered to a webhook receiver. Then the log, the webhook bodies, the
/// answers that carry no token, and the database are scanned.
async fn every_route_flow(logs: Arc<Mutex<Vec<u8>>>) {
    const RDT: &str = "Atz.sprdt|CANARY-RDT-71c3e5";
    const GRANTLESS: &str = "Atza|CANARY-GRANTLESS-4d8a2f";
    let mock = lwa_issuing_canaries(GRANTLESS).await;
    Mock::given(method("POST"))
        .and(path("/tokens/2021-03-01/restrictedDataToken"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"restrictedDataToken": RDT, "expiresIn": 3600})),
        )
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&mock)
        .await;
    let (token_url, spapi, hooks) = (
        format!("{}/auth/o2/token", mock.uri()),
        mock.uri(),
        format!("{}/hooks", mock.uri()),
    );
    let app = TestApp::spawn_with(|s| {
        s.lwa_token_url = Some(token_url);
        s.spapi_url = Some(spapi);
        s.lwa_client_secret = Some(CLIENT_SECRET.into());
        s.webhook_url = Some(hooks);
        s.webhook_secret = Some(WEBHOOK_SECRET.into());
        s.log = "trace".into();
    })
    .await;
    let all_scopes = [
        "connections:read",
        "tokens:issue",
        "connections:manage",
        "tenants:admin",
    ];
    let admin = app.api_key(None, &all_scopes).await;
    let client = reqwest::Client::new();
    // Answers that carry no token (scanned for everything), and those that
    // carry one by design (scanned for everything else).
    let mut answers: Vec<String> = Vec::new();
    let mut token_answers: Vec<String> = Vec::new();
    let v1 = |p: &str| app.url(p);

    let status = record(
        &mut answers,
        client
            .post(v1("/v1/tenants"))
            .bearer_auth(&admin)
            .json(&json!({"slug": "acme", "name": "Acme <b>Ltd</b>"})),
    )
    .await;
    assert_eq!(status, 201);
    let key = app.api_key(Some("acme"), &all_scopes[..3]).await;
    let bad_key = format!("spb_{}_CANARYBADKEYSECRET0123", "a1b2c3d4");
    let id = app
        .seed_connection(
            "acme",
            "A1EVERY",
            REFRESH,
            "Atza|seeded",
            time::Duration::seconds(100),
        )
        .await;
    let link: serde_json::Value = client
        .post(v1("/v1/tenants/acme/login-links"))
        .bearer_auth(&admin)
        .json(&json!({"user_id": "user-every", "email": "every@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let login_url = link["url"].as_str().unwrap().to_owned();
    let login_token = login_url.rsplit('/').next().unwrap().to_owned();
    for path in [
        "/v1/tenants".to_owned(),
        "/v1/tenants/acme/connections".to_owned(),
        format!("/v1/connections/{id}"),
        "/v1/events".to_owned(),
        "/v1/ops/summary".to_owned(),
        "/v1/app/status".to_owned(),
        "/v1/no-such-route".to_owned(),
    ] {
        record(&mut answers, client.get(v1(&path)).bearer_auth(&admin)).await;
    }
    record(
        &mut answers,
        client.get(v1("/v1/tenants")).bearer_auth(&bad_key),
    )
    .await;
    record(
        &mut answers,
        client
            .post(v1(&format!("/v1/connections/{id}/access-token")))
            .bearer_auth(&key)
            .header("content-type", "text/plain")
            .body(REFRESH),
    )
    .await;
    // Token-bearing answers: the refresh (LWA's canaries), RDT, grantless.
    for (path, body, bearer) in [
        (
            format!("/v1/connections/{id}/access-token"),
            json!({"min_ttl_seconds": 600}),
            &key,
        ),
        (
            format!("/v1/connections/{id}/restricted-data-token"),
            json!({"restricted_resources": [{"method": "GET", "path": "/orders/v0/orders"}]}),
            &key,
        ),
        (
            "/v1/grantless-token".to_owned(),
            json!({"scope": "sellingpartnerapi::notifications"}),
            &admin,
        ),
    ] {
        let status = record(
            &mut token_answers,
            client.post(v1(&path)).bearer_auth(bearer).json(&body),
        )
        .await;
        assert_eq!(status, 200, "{path}: {:?}", token_answers.last());
    }
    // The LWA-compatible endpoint: a good refresh and a bad secret.
    let lwa_form = |secret: &str| {
        client.post(v1("/auth/o2/token")).form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &id.to_string()),
            ("client_id", "sdk"),
            ("client_secret", secret),
        ])
    };
    assert_eq!(record(&mut token_answers, lwa_form(&key)).await, 200);
    assert_eq!(record(&mut answers, lwa_form(&bad_key)).await, 401);
    // The seller's and the operator's pages, the probes, sign-out.
    let seller = app.browser();
    assert_eq!(record(&mut answers, seller.get(&login_url)).await, 303);
    assert_eq!(
        record(&mut answers, seller.get(app.url("/settings/connections"))).await,
        200
    );
    let operator = crate::ops_dashboard::operator(&app).await;
    for path in [
        "/ops".to_owned(),
        "/ops?q=A1EVERY&health=all&tenant=acme".to_owned(),
        format!("/ops/connections/{id}"),
    ] {
        assert_eq!(
            record(&mut answers, operator.get(app.url(&path))).await,
            200,
            "{path}"
        );
    }
    for path in ["/metrics", "/openapi.json", "/healthz", "/readyz"] {
        record(&mut answers, client.get(app.url(path))).await;
    }
    // The end of the connection, and the events it all made, delivered.
    assert_eq!(
        record(
            &mut answers,
            client
                .delete(v1(&format!("/v1/connections/{id}")))
                .bearer_auth(&key)
        )
        .await,
        204
    );
    let page = seller
        .get(app.url("/settings/connections"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = extract_attr(&page, "name=\"csrf_token\" value=\"").unwrap();
    assert_eq!(
        record(
            &mut answers,
            seller
                .post(app.url("/logout"))
                .form(&[("csrf_token", csrf.as_str())])
        )
        .await,
        303
    );
    let webhooks = app.services.webhooks.clone().unwrap();
    while webhooks.deliver_due().await.unwrap().delivered > 0 {}
    let webhook_bodies: Vec<String> = mock
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == "/hooks")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(
        webhook_bodies
            .iter()
            .any(|b| b.contains("connection.disconnected")),
        "the events were delivered: {webhook_bodies:?}"
    );

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    for route in [
        "/v1/connections/{id}/access-token",
        "/auth/o2/token",
        "/ops",
        "/logout",
    ] {
        assert!(log.contains(route), "{route} was logged");
    }
    let dump = app.database_dump().await;
    assert!(dump.contains("A1EVERY"), "a real dump");
    let pg_dump = pg_dump(&app).await;

    let tokens = [REFRESH, ACCESS, RDT, GRANTLESS];
    let mut secrets: Vec<(&str, String)> = vec![
        ("client secret", CLIENT_SECRET.to_owned()),
        ("webhook secret", WEBHOOK_SECRET.to_owned()),
        ("encryption key", KEY_BASE64.to_owned()),
        ("admin API key", key_secret_part(&admin)),
        ("tenant API key", key_secret_part(&key)),
        ("refused API key", key_secret_part(&bad_key)),
        ("login token", login_token),
    ];
    secrets.extend(tokens.iter().map(|t| ("token", (*t).to_owned())));
    for (name, secret) in &secrets {
        assert_absent(&log, secret, name, "the log");
        assert_absent(&dump, secret, name, "the database");
        if let Some(pg_dump) = &pg_dump {
            assert_absent(pg_dump, secret, name, "pg_dump");
        }
        for body in &webhook_bodies {
            assert_absent(body, secret, name, "a webhook body");
        }
        if !name.contains("login token") {
            for answer in &answers {
                assert_absent(answer, secret, name, "an answer");
            }
        }
    }
    // A token-bearing answer carries its own token and nothing else secret.
    for answer in &token_answers {
        for (name, secret) in secrets.iter().filter(|(n, _)| *n != "token") {
            assert_absent(answer, secret, name, "a token answer");
        }
    }
}
