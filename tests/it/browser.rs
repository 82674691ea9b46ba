//! A real browser clicks through Connect Amazon account → sandbox consent →
//! Confirm and sees the connection active: headless Chromium driven over
//! WebDriver (fantoccini + chromedriver), against the real app on a random port.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`). Without them the test prints a note and passes,
//! except under `CI=true`, where it fails: CI must really run it.
//!
//! Screenshots for a person to look at: `target/browser-consent.png` (the
//! sandbox consent page) and `target/browser-connected.png` (Settings →
//! Connections after coming back); on failure, `target/browser-failure.png`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;

use fantoccini::{Client, ClientBuilder, Locator};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const SELLING_PARTNER_ID: &str = "A1SANDBOXSELLER";

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// chromedriver in its own process group, with a fresh Chromium profile
/// directory; dropping it ends the group (chromedriver and any Chromium it
/// started) and removes the profile.
struct ChromeDriver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let profile = std::env::temp_dir().join(format!(
            "sp-broker-browser-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&profile).expect("create the Chromium profile directory");
        let log = std::fs::File::create(target_dir().join("browser-chromedriver.log"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let driver = ChromeDriver {
            child,
            port,
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn capabilities(&self) -> serde_json::Map<String, serde_json::Value> {
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,1200".to_owned(),
            format!("--user-data-dir={}", self.profile.display()),
        ];
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        match capabilities {
            serde_json::Value::Object(map) => map,
            _ => unreachable!(),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The negative pid names the process group: chromedriver and every
        // Chromium process it started (they would otherwise outlive the test).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Whether Chromium and chromedriver are installed; fails under CI when not.
fn browser_available() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "the real-browser test needs {} (Debian packages `chromium` and `chromium-driver`: \
         apt-get install chromium chromium-driver)",
        missing.join(" and ")
    );
    if is_ci() {
        panic!("CI=true and {message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

/// chromedriver and a WebDriver session with headless Chromium.
async fn start_browser() -> (ChromeDriver, Client) {
    // Both ring and aws-lc-rs are compiled in, so rustls cannot pick one itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = ChromeDriver::start();
    let client = ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(driver.capabilities())
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| panic!("chromedriver could not start Chromium ({CHROMIUM}): {e}"));
    (driver, client)
}

async fn save_screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("a screenshot");
    let dir = target_dir();
    std::fs::create_dir_all(&dir).expect("create target/");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
    path
}

/// Waits until the browser is at `path` on `origin` (redirects settle).
async fn wait_for_path(client: &Client, origin: &str, path: &str) -> Result<url::Url, String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = client.current_url().await.map_err(|e| e.to_string())?;
        if url.origin().ascii_serialization() == origin && url.path() == path {
            return Ok(url);
        }
        if Instant::now() > deadline {
            let page = body_text(client).await.unwrap_or_default();
            return Err(format!(
                "expected to arrive at {origin}{path}, still at {url}, showing:\n{page}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click_button(client: &Client, label: &str) -> Result<(), String> {
    let xpath = format!("//button[normalize-space(.)='{label}']");
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(&xpath))
        .await
        .map_err(|e| format!("no button labelled {label:?}: {e}"))?
        .click()
        .await
        .map_err(|e| format!("clicking {label:?}: {e}"))
}

async fn body_text(client: &Client) -> Result<String, String> {
    client
        .find(Locator::Css("body"))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())
}

/// The whole flow as a seller clicks it. Errors say which step failed.
async fn connect_in_browser(client: &Client, app: &TestApp) -> Result<(), String> {
    let origin = app.base.clone();
    let link = app.login_link("acme", "browser-user").await;
    assert!(
        link.starts_with(&format!("{origin}/login/")),
        "the link uses PUBLIC_URL"
    );

    client.goto(&link).await.map_err(|e| e.to_string())?;
    wait_for_path(client, &origin, "/settings/connections").await?;
    let page = body_text(client).await?;
    if !page.contains("No Amazon account is connected yet") {
        return Err(format!(
            "a new tenant's page should list no connection:\n{page}"
        ));
    }

    click_button(client, "Connect Amazon account").await?;
    let consent = wait_for_path(client, &origin, "/sandbox/apps/authorize/consent").await?;
    let page = body_text(client).await?;
    if !page.contains("sp-broker sandbox") {
        return Err(format!(
            "the consent page should say \"sp-broker sandbox\":\n{page}"
        ));
    }
    let consent_query: Vec<(String, String)> = consent.query_pairs().into_owned().collect();
    for name in ["application_id", "state", "redirect_uri"] {
        if !consent_query.iter().any(|(k, _)| k == name) {
            return Err(format!("the consent URL lacks {name}: {consent}"));
        }
    }
    let spid = client
        .find(Locator::Css("input[name=selling_partner_id]"))
        .await
        .map_err(|e| e.to_string())?
        .prop("value")
        .await
        .map_err(|e| e.to_string())?;
    if spid.as_deref() != Some(SELLING_PARTNER_ID) {
        return Err(format!(
            "the consent page should suggest {SELLING_PARTNER_ID}, has {spid:?}"
        ));
    }
    save_screenshot(client, "browser-consent.png").await;

    click_button(client, "Confirm").await?;
    let back = wait_for_path(client, &origin, "/settings/connections").await?;
    if back.query().is_some() {
        return Err(format!("no code or state in the final URL: {back}"));
    }
    let row = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("[data-connection-id]"))
        .await
        .map_err(|e| format!("no connection row after Confirm: {e}"))?;
    let status = row.attr("data-status").await.map_err(|e| e.to_string())?;
    let seller = row
        .attr("data-selling-partner-id")
        .await
        .map_err(|e| e.to_string())?;
    if status.as_deref() != Some("active") || seller.as_deref() != Some(SELLING_PARTNER_ID) {
        return Err(format!(
            "expected an active row for {SELLING_PARTNER_ID}, got status {status:?} seller {seller:?}"
        ));
    }
    let message = client
        .find(Locator::Css("[role=status]"))
        .await
        .map_err(|e| format!("no role=status message: {e}"))?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    if !message.starts_with("Connected") {
        return Err(format!(
            "the status message should say Connected: {message:?}"
        ));
    }
    save_screenshot(client, "browser-connected.png").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_connects_a_seller() {
    if !browser_available() {
        return;
    }
    std::fs::create_dir_all(target_dir()).expect("create target/");
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;

    let (driver, client) = start_browser().await;
    let result = connect_in_browser(&client, &app).await;
    if result.is_err() {
        save_screenshot(&client, "browser-failure.png").await;
    }
    let _ = client.close().await;
    drop(driver);
    if let Err(step) = result {
        panic!("{step}");
    }

    // What the browser saw is what is stored.
    let rows: Vec<(String, String)> =
        sqlx::query_as("select selling_partner_id, status from connection")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![(SELLING_PARTNER_ID.to_owned(), "active".to_owned())]
    );
}

/// Puts a seeded connection into a state, as the engine would have left it.
async fn set_state(app: &TestApp, id: uuid::Uuid, set: &str) {
    sqlx::query(&format!("update connection set {set} where id = $1"))
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
}

/// Seeds a dashboard worth looking at: 60 failing connections (more than a
/// page), one degraded, one expiring, healthy ones, a day of refreshes.
async fn seed_dashboard(app: &TestApp) -> Vec<uuid::Uuid> {
    // Consent attempts: two connected, one left on Amazon's page.
    let seller = app.signed_in_browser("acme", "u1").await;
    for spid in ["A1FUNNEL1", "A1FUNNEL2"] {
        assert_eq!(
            seller.connect_through("ATVPDKIKX0DER", spid).await.status(),
            303
        );
    }
    assert_eq!(
        seller.connect("A1PA6795UKMFR9", "seller").await.status(),
        303
    );
    app.clock.advance(time::Duration::minutes(16));
    let mut failing = Vec::new();
    for i in 0..60 {
        let id = app
            .seed_connection(
                "bulk",
                &format!("A1FAIL{i:02}"),
                "Atzr|r",
                "Atza|a",
                time::Duration::hours(1),
            )
            .await;
        set_state(
            app,
            id,
            "status = 'needs_reauth', status_reason = 'invalid_grant', \
             last_error_code = 'invalid_grant', last_error_message = 'Amazon no longer accepts this authorization', \
             last_error_at = now(), status_changed_at = now() - make_interval(mins => 1)",
        )
        .await;
        failing.push(id);
    }
    let degraded = app
        .seed_connection(
            "acme",
            "A1DEGRADED",
            "Atzr|r",
            "Atza|a",
            time::Duration::hours(1),
        )
        .await;
    set_state(
        app,
        degraded,
        "last_error_code = 'verification_failed', last_error_message = 'Amazon answered 403 to getMarketplaceParticipations', last_error_at = now()",
    )
    .await;
    let expiring = app
        .seed_connection(
            "acme",
            "A1EXPIRING",
            "Atzr|r",
            "Atza|a",
            time::Duration::hours(1),
        )
        .await;
    set_state(
        app,
        expiring,
        "authorized_at = now() - interval '340 days', authorization_expires_at = now() + interval '25 days'",
    )
    .await;
    for i in 0..3 {
        app.seed_connection(
            "acme",
            &format!("A1HEALTHY{i}"),
            "Atzr|r",
            "Atza|a",
            time::Duration::hours(1),
        )
        .await;
    }
    for hours_ago in 0..24i64 {
        for n in 0..(hours_ago % 5 + 2) {
            crate::ops_dashboard::seed_refresh(
                app,
                expiring,
                hours_ago,
                "ok",
                80 + 20 * n as i32 + hours_ago as i32,
            )
            .await;
        }
        if hours_ago % 7 == 3 {
            crate::ops_dashboard::seed_refresh(app, failing[0], hours_ago, "invalid_grant", 400)
                .await;
            crate::ops_dashboard::seed_refresh(
                app,
                degraded,
                hours_ago,
                "amazon_unavailable",
                2500,
            )
            .await;
        }
    }
    failing
}

async fn rows_shown(client: &Client) -> Result<Vec<String>, String> {
    // Read in one script, so a page that is being replaced (after a click)
    // gives all or nothing instead of a stale element.
    let ids = client
        .execute(
            "return Array.from(document.querySelectorAll('table[data-attention] tr[data-connection-id]')).map(r => r.getAttribute('data-connection-id'))",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_value(ids).map_err(|e| e.to_string())
}

/// [`rows_shown`] until `done` holds, at most 10 s; a page still loading
/// is waited for, not an error.
async fn rows_until(
    client: &Client,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = rows_shown(client).await;
        if let Ok(rows) = &shown {
            if done(rows) {
                return shown;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: {shown:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What an operator does on the dashboard, checked step by step.
async fn use_the_dashboard(
    client: &Client,
    app: &TestApp,
    link: &str,
    failing: &[uuid::Uuid],
) -> Result<(), String> {
    let origin = app.base.clone();
    client.goto(link).await.map_err(|e| e.to_string())?;
    wait_for_path(client, &origin, "/ops").await?;

    // The charts are drawn, with room on the page (not collapsed).
    for chart in ["refresh-outcomes", "lwa-latency", "consent-funnel"] {
        let svg = client
            .find(Locator::Css(&format!("svg[data-chart='{chart}']")))
            .await
            .map_err(|e| format!("no {chart} chart: {e}"))?;
        let (_, _, width, height) = svg.rectangle().await.map_err(|e| e.to_string())?;
        if width < 300.0 || height < 50.0 {
            return Err(format!("the {chart} chart is {width}×{height}"));
        }
    }
    let bars = client
        .find_all(Locator::Css(
            "svg[data-chart='refresh-outcomes'] rect[data-outcome]",
        ))
        .await
        .map_err(|e| e.to_string())?;
    if bars.len() < 24 {
        return Err(format!(
            "{} refresh bars, expected one per hour at least",
            bars.len()
        ));
    }
    let points = client
        .find_all(Locator::Css(
            "svg[data-chart='lwa-latency'] circle[data-series='p99']",
        ))
        .await
        .map_err(|e| e.to_string())?;
    if points.len() != 24 {
        return Err(format!("{} p99 points, expected 24", points.len()));
    }
    let abandoned = client
        .find(Locator::Css(
            "svg[data-chart='consent-funnel'] rect[data-region='eu'][data-step='abandoned']",
        ))
        .await
        .map_err(|e| format!("no abandoned bar for Europe: {e}"))?
        .attr("data-count")
        .await
        .map_err(|e| e.to_string())?;
    if abandoned.as_deref() != Some("1") {
        return Err(format!("Europe's abandoned attempts: {abandoned:?}"));
    }
    // The whole page in one picture, for a person to look at.
    client
        .set_window_size(1280, 3400)
        .await
        .map_err(|e| e.to_string())?;
    save_screenshot(client, "ops-dashboard.png").await;
    client
        .set_window_size(1280, 1200)
        .await
        .map_err(|e| e.to_string())?;

    // By default: what needs attention, 50 a page, newest change first.
    let first = rows_shown(client).await?;
    if first.len() != 50 {
        return Err(format!("{} rows on the first page", first.len()));
    }
    // Filter by health: degraded, through the form.
    client
        .find(Locator::Css("select[name=health] option[value=degraded]"))
        .await
        .map_err(|e| e.to_string())?
        .click()
        .await
        .map_err(|e| e.to_string())?;
    click_button(client, "Filter").await?;
    wait_for_path(client, &origin, "/ops").await?;
    let shown = rows_until(client, "filtering by degraded shows", |rows| {
        rows.len() == 1
    })
    .await?;
    let degraded = client
        .find_all(Locator::Css(
            "table[data-attention] tr[data-health='degraded']",
        ))
        .await
        .map_err(|e| e.to_string())?;
    if degraded.len() != 1 {
        return Err(format!(
            "filtering by degraded shows {shown:?}, {} degraded",
            degraded.len()
        ));
    }
    save_screenshot(client, "ops-dashboard-degraded.png").await;

    // One tenant's failing connections: two pages, each connection once.
    client
        .goto(&format!("{origin}/ops?tenant=bulk&health=failing"))
        .await
        .map_err(|e| e.to_string())?;
    let page_one = rows_shown(client).await?;
    client
        .find(Locator::Css("a[rel=next]"))
        .await
        .map_err(|e| format!("no next-page link: {e}"))?
        .click()
        .await
        .map_err(|e| e.to_string())?;
    let page_two = rows_until(client, "the second page shows", |rows| rows.len() == 10).await?;
    let mut seen: Vec<String> = page_one.into_iter().chain(page_two).collect();
    seen.sort();
    let mut expected: Vec<String> = failing.iter().map(|id| id.to_string()).collect();
    expected.sort();
    if seen != expected {
        return Err("the two pages do not list each failing connection once".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_uses_the_ops_dashboard() {
    if !browser_available() {
        return;
    }
    std::fs::create_dir_all(target_dir()).expect("create target/");
    let app = TestApp::spawn().await;
    let failing = seed_dashboard(&app).await;
    let link = app
        .services
        .login_links
        .create(sp_broker::login_links::LinkRequest {
            kind: sp_broker::db::login_tokens::LoginKind::Ops,
            tenant_id: None,
            user_id: "op-browser",
            email: None,
            return_to: None,
        })
        .await
        .unwrap()
        .url;

    let (driver, client) = start_browser().await;
    let result = use_the_dashboard(&client, &app, &link, &failing).await;
    if result.is_err() {
        save_screenshot(&client, "ops-dashboard-failure.png").await;
    }
    let _ = client.close().await;
    drop(driver);
    if let Err(step) = result {
        panic!("{step}");
    }
}
