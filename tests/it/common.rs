//! Test harness: starts the real app on a random port against the test's own
//! fresh PostgreSQL database ([`TestDb`]), with the sandbox Amazon or a test
//! double standing in for Amazon.
//!
//! Why not `#[sqlx::test]`: it needs the database named in DATABASE_URL to exist
//! already; ours creates a database per test on the server DATABASE_URL names
//! (default: the local one) and drops it afterwards, so `cargo nextest run`
//! works on a fresh machine with nothing set.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::redirect::Policy;
use sp_broker::app::{self, Services};
use sp_broker::clock::OffsetClock;
use sp_broker::config::{Config, Settings};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A fresh database for one test, dropped (forcibly) when the value is dropped.
pub struct TestDb {
    pub pool: PgPool,
    name: String,
    admin_url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let server = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| sp_broker::config::DEFAULT_DATABASE_URL.to_owned());
        Self::new_on(&server).await
    }

    /// A fresh database on the PostgreSQL server at `server` (a URL).
    pub async fn new_on(server: &str) -> TestDb {
        let mut admin = url::Url::parse(server).expect("DATABASE_URL is a URL");
        admin.set_path("/postgres");
        let name = format!("spb_test_{}", uuid::Uuid::new_v4().simple());
        let mut test_url = admin.clone();
        test_url.set_path(&format!("/{name}"));
        let pool = sp_broker::db::connect(test_url.as_str()).await.expect(
            "PostgreSQL answers at DATABASE_URL (default postgres://postgres@127.0.0.1:5432)",
        );
        sp_broker::db::migrate(&pool).await.unwrap();
        TestDb {
            pool,
            name,
            admin_url: admin.to_string(),
        }
    }
}

impl TestDb {
    /// The URL of this test's database (for a child `sp-broker` process).
    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&self.admin_url).expect("a URL");
        url.set_path(&format!("/{}", self.name));
        url.to_string()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ =
                        sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

pub const TEST_KEY: &str = "test-key-1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Settings as a test would write them; `public_url` is filled in by `spawn`.
pub fn test_settings() -> Settings {
    Settings {
        database_url: "postgres://unused".into(),
        listen: "127.0.0.1:0".into(),
        public_url: "http://127.0.0.1:1".into(),
        app_draft: "false".into(),
        log: "info".into(),
        log_format: "text".into(),
        encryption_keys: Some(TEST_KEY.into()),
        // No background sweep: a test runs a pass when it wants one.
        sweep_interval_seconds: "0".into(),
        ..Settings::default()
    }
}

pub struct TestApp {
    pub db: Arc<TestDb>,
    pub base: String,
    pub services: Services,
    pub clock: OffsetClock,
    pub pool: PgPool,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    /// The app in sandbox mode with default settings, on a fresh database.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// The app on a fresh database with settings edited by `edit`.
    pub async fn spawn_with(edit: impl FnOnce(&mut Settings)) -> TestApp {
        Self::spawn_on(Arc::new(TestDb::new().await), edit).await
    }

    /// The app with settings edited by `edit`. `{base}` in any URL setting is
    /// replaced by the app's own base URL.
    /// Another instance on the same database (several brokers, one database).
    pub async fn spawn_on(db: Arc<TestDb>, edit: impl FnOnce(&mut Settings)) -> TestApp {
        let pool = db.pool.clone();
        Self::spawn_with_pool(db, pool, edit).await
    }

    /// The app on `db`, reaching it through `pool` (say, one that connects
    /// through a proxy the test can cut).
    pub async fn spawn_with_pool(
        db: Arc<TestDb>,
        pool: PgPool,
        edit: impl FnOnce(&mut Settings),
    ) -> TestApp {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            // Debugging aid: `TEST_LOG=debug cargo nextest run … --no-capture`.
            let _ = sp_broker::logging::init(&filter, false);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let mut settings = test_settings();
        settings.public_url = base.clone();
        edit(&mut settings);
        for url in [
            &mut settings.lwa_token_url,
            &mut settings.seller_central_url,
            &mut settings.spapi_url,
        ]
        .into_iter()
        .flatten()
        {
            *url = url.replace("{base}", &base);
        }
        let config = Config::from_settings(&settings).expect("valid test settings");
        let keys = config.load_key_ring().unwrap();
        sp_broker::db::key_checks::verify_key_ring(&pool, &keys, time::OffsetDateTime::now_utc())
            .await
            .unwrap();
        let clock = OffsetClock::default();
        let services = Services::build(config, pool.clone(), keys, Arc::new(clock.clone()))
            .expect("services build");
        let (tx, rx) = oneshot::channel::<()>();
        let serve_services = services.clone();
        tokio::spawn(async move {
            let _ = app::serve(listener, serve_services, async {
                let _ = rx.await;
            })
            .await;
        });
        TestApp {
            db,
            base,
            services,
            clock,
            pool,
            shutdown: Some(tx),
        }
    }

    /// The app's clock (the test may have moved it).
    pub fn now(&self) -> time::OffsetDateTime {
        use sp_broker::clock::Clock;
        self.clock.now()
    }

    pub async fn find_tenant(&self, slug: &str) -> Option<sp_broker::db::tenants::Tenant> {
        self.services.tenants.find_by_slug(slug).await.unwrap()
    }

    /// `/metrics` as text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A browser: cookie store, redirects not followed.
    pub fn browser(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .build()
            .unwrap()
    }

    pub async fn create_tenant(&self, slug: &str) -> sp_broker::db::tenants::Tenant {
        self.services.tenants.create(slug, None).await.unwrap()
    }

    pub async fn login_link(&self, tenant_slug: &str, user: &str) -> String {
        let tenant = self.find_tenant(tenant_slug).await.expect("tenant exists");
        self.services
            .login_links
            .create(sp_broker::login_links::LinkRequest {
                kind: sp_broker::db::login_tokens::LoginKind::Tenant,
                tenant_id: Some(tenant.id),
                user_id: user,
                email: None,
                return_to: None,
            })
            .await
            .unwrap()
            .url
    }

    /// A browser signed in to `tenant_slug`'s Settings → Connections (the tenant
    /// is created if needed).
    pub async fn signed_in_browser(&self, tenant_slug: &str, user: &str) -> Browser {
        if self.find_tenant(tenant_slug).await.is_none() {
            self.create_tenant(tenant_slug).await;
        }
        let client = self.browser();
        let link = self.login_link(tenant_slug, user).await;
        let response = client.get(&link).send().await.unwrap();
        assert_eq!(response.status(), 303);
        let mut browser = Browser {
            client,
            base: self.base.clone(),
            csrf: String::new(),
        };
        let page = browser.page().await;
        browser.csrf =
            extract_attr(&page, "name=\"csrf_token\" value=\"").expect("csrf token on page");
        browser
    }

    /// Every text and bytea value in every table, for "no plaintext secret stored" checks.
    pub async fn database_dump(&self) -> String {
        let columns: Vec<(String, String, String)> = sqlx::query_as(
            "select table_name::text, column_name::text, data_type::text from information_schema.columns
             where table_schema = 'public' and data_type in ('text', 'bytea', 'jsonb', 'ARRAY', 'character varying')",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let mut dump = String::new();
        for (table, column, kind) in columns {
            let expr = match kind.as_str() {
                "bytea" => format!("encode(\"{column}\", 'escape')"),
                _ => format!("\"{column}\"::text"),
            };
            let values: Vec<Option<String>> =
                sqlx::query_scalar(&format!("select {expr} from \"{table}\""))
                    .fetch_all(&self.pool)
                    .await
                    .unwrap();
            for v in values.into_iter().flatten() {
                dump.push_str(&v);
                dump.push('\n');
            }
        }
        dump
    }
}

/// A signed-in browser session.
pub struct Browser {
    pub client: reqwest::Client,
    pub base: String,
    pub csrf: String,
}

impl Browser {
    pub async fn page(&self) -> String {
        let response = self
            .client
            .get(format!("{}/settings/connections", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// POSTs the Connect form; returns the 303 response.
    pub async fn connect(&self, marketplace_id: &str, account_type: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/settings/connections/connect", self.base))
            .form(&[
                ("csrf_token", self.csrf.as_str()),
                ("marketplace_id", marketplace_id),
                ("account_type", account_type),
            ])
            .send()
            .await
            .unwrap()
    }

    pub async fn post_action(&self, connection_id: &str, action: &str) -> reqwest::Response {
        self.client
            .post(format!(
                "{}/settings/connections/{connection_id}/{action}",
                self.base
            ))
            .form(&[("csrf_token", self.csrf.as_str())])
            .send()
            .await
            .unwrap()
    }

    /// Follows a consent URL through the sandbox consent page's Confirm as
    /// `selling_partner_id`; returns the callback URL Amazon redirects to.
    pub async fn consent(&self, consent_url: &str, selling_partner_id: &str) -> String {
        let page = self.client.get(consent_url).send().await.unwrap();
        assert_eq!(page.status(), 200, "consent page");
        let html = page.text().await.unwrap();
        let state = extract_attr(&html, "name=\"state\" value=\"").unwrap();
        let redirect_uri = extract_attr(&html, "name=\"redirect_uri\" value=\"").unwrap();
        let confirm = self
            .client
            .post(format!("{}/sandbox/apps/authorize/confirm", self.base))
            .form(&[
                ("state", state.as_str()),
                ("redirect_uri", redirect_uri.as_str()),
                ("selling_partner_id", selling_partner_id),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(confirm.status(), 303, "sandbox confirm");
        location(&confirm)
    }

    /// Connect → consent → callback, all the way; returns the callback response.
    pub async fn connect_through(
        &self,
        marketplace_id: &str,
        selling_partner_id: &str,
    ) -> reqwest::Response {
        let connect = self.connect(marketplace_id, "seller").await;
        assert_eq!(connect.status(), 303);
        let callback = self.consent(&location(&connect), selling_partner_id).await;
        self.client.get(callback).send().await.unwrap()
    }
}

pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
        .replace("&amp;", "&")
}

/// The value after `prefix` up to the next `"`, HTML entities for & undone.
pub fn extract_attr(html: &str, prefix: &str) -> Option<String> {
    let start = html.find(prefix)? + prefix.len();
    let end = html[start..].find('"')? + start;
    Some(
        html[start..end]
            .replace("&amp;", "&")
            .replace("&#x2f;", "/"),
    )
}

/// Every `data-connection-id` on a page, with its status.
pub fn connection_rows(html: &str) -> Vec<(String, String, String)> {
    html.split("data-connection-id=\"")
        .skip(1)
        .map(|chunk| {
            let id = chunk[..chunk.find('"').unwrap()].to_owned();
            let spid = extract_attr(chunk, "data-selling-partner-id=\"").unwrap();
            let status = extract_attr(chunk, "data-status=\"").unwrap();
            (id, spid, status)
        })
        .collect()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    parsed
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The sealing context of a connection's secret (as the broker binds it).
pub fn connection_seal_context<'a>(
    purpose: sp_broker::crypto::Purpose,
    tenant: &'a str,
    row: &'a str,
) -> sp_broker::crypto::SealContext<'a> {
    sp_broker::crypto::SealContext {
        purpose,
        tenant,
        row,
    }
}

impl TestApp {
    /// An API key, as `sp-broker api-key create` makes it: a tenant key when
    /// `tenant_slug` is given (the tenant must exist), else a platform key;
    /// `scopes` empty means the default scopes.
    pub async fn api_key(&self, tenant_slug: Option<&str>, scopes: &[&str]) -> String {
        use secrecy::ExposeSecret;
        let tenant_id = match tenant_slug {
            Some(slug) => Some(self.find_tenant(slug).await.expect("tenant exists").id),
            None => None,
        };
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.services
            .api_keys
            .create("test key", tenant_id, &scopes, "test")
            .await
            .unwrap()
            .expose_secret()
            .to_owned()
    }

    /// Seeds an active seller connection (United States, region na) directly in
    /// the database, as a completed authorization would leave it: `refresh_token`
    /// and `access_token` sealed like the broker seals them, the access token
    /// expiring `access_expires_in` from the app's clock. The tenant is created
    /// if needed. No call to Amazon is made. Returns the connection id.
    pub async fn seed_connection(
        &self,
        tenant_slug: &str,
        selling_partner_id: &str,
        refresh_token: &str,
        access_token: &str,
        access_expires_in: time::Duration,
    ) -> uuid::Uuid {
        let tenant = match self.find_tenant(tenant_slug).await {
            Some(t) => t,
            None => self.create_tenant(tenant_slug).await,
        };
        let (id, _) = self
            .services
            .authorizer
            .store(&sp_broker::authorization::NewAuthorization {
                tenant_id: tenant.id,
                selling_partner_id,
                region: sp_broker::amazon::marketplaces::Region::Na,
                account_type: sp_broker::amazon::marketplaces::AccountType::Seller,
                marketplace_id: "ATVPDKIKX0DER",
                refresh_token: &secrecy::SecretString::from(refresh_token.to_owned()),
                access_token: &secrecy::SecretString::from(access_token.to_owned()),
                access_token_expires_at: self.now() + access_expires_in,
                actor: "test",
                flow: "seed",
            })
            .await
            .unwrap();
        id
    }
}
