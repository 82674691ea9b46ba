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

    // Both ring and aws-lc-rs are compiled in, so rustls cannot pick one itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = ChromeDriver::start();
    let client = ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(driver.capabilities())
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| panic!("chromedriver could not start Chromium ({CHROMIUM}): {e}"));

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
