//! The composition root: every service is built here, once, with exactly the
//! handles it uses ([`Services::build`]); [`prepare`] is start-up (database,
//! migrations, key checks, which Amazon the database serves); [`serve`] runs
//! the HTTP server, the change listener and the background jobs until
//! shutdown. Nothing else builds a service, and nothing below `http/` sees
//! the bundle HTTP handlers extract from (`http::AppState`).

use crate::amazon::lwa::{self, LwaClient};
use crate::amazon::spapi::SpApi;
use crate::api_keys::ApiKeys;
use crate::authorization::{self, Authorizer, AuthorizerHandles};
use crate::broker::{AppCredentials, BrokerHandles, TokenBroker};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::connections::Connections;
use crate::crypto::KeyRing;
use crate::db;
use crate::events::Events;
use crate::http::{self, AppState};
use crate::jobs::Jobs;
use crate::login_links::LoginLinks;
use crate::notify::ChangeListener;
use crate::ops_summary::Summaries;
use crate::sandbox::Sandbox;
use crate::sweep::Sweep;
use crate::tenants::Tenants;
use crate::webhooks::Webhooks;
use axum::Router;
use sqlx::PgPool;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Everything sp-broker is made of, built once.
#[derive(Clone)]
pub struct Services {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub keys: Arc<KeyRing>,
    pub clock: Arc<dyn Clock>,
    pub credentials: Arc<AppCredentials>,
    pub broker: Arc<TokenBroker>,
    pub authorizer: Arc<Authorizer>,
    pub api_keys: Arc<ApiKeys>,
    pub tenants: Arc<Tenants>,
    pub login_links: Arc<LoginLinks>,
    pub connections: Arc<Connections>,
    pub summaries: Arc<Summaries>,
    pub spapi: Arc<SpApi>,
    pub events: Arc<Events>,
    pub sweep: Arc<Sweep>,
    /// Webhook delivery, when a webhook URL is configured.
    pub webhooks: Option<Arc<Webhooks>>,
    /// The simulated Amazon, in sandbox mode only.
    pub sandbox: Option<Arc<Sandbox>>,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub shutting_down: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Database(#[from] db::DbSetupError),
    #[error(transparent)]
    Keys(#[from] db::key_checks::KeyCheckError),
    #[error(transparent)]
    OtherAmazon(#[from] authorization::OtherAmazon),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("the HTTP client for Amazon cannot be built: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error(transparent)]
    Webhooks(#[from] crate::webhooks::WebhookSetupError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl Services {
    pub fn build(
        config: Config,
        db: PgPool,
        keys: KeyRing,
        clock: Arc<dyn Clock>,
    ) -> Result<Services, StartError> {
        crate::metrics::install();
        let config = Arc::new(config);
        let keys = Arc::new(keys);
        let http_client = lwa::http_client()?;
        let lwa = LwaClient::new(
            http_client.clone(),
            config.lwa_token_url.clone(),
            config.lwa_client_id.clone(),
        );
        let spapi = Arc::new(SpApi::new(
            http_client,
            config
                .spapi_override
                .as_ref()
                .map(|url| url.as_str().trim_end_matches('/').to_owned()),
        ));
        let credentials = Arc::new(AppCredentials::new(
            db.clone(),
            Arc::clone(&clock),
            Arc::clone(&keys),
            config.lwa_client_id.clone(),
            config.lwa_client_secrets.clone(),
        ));
        let broker = TokenBroker::new(BrokerHandles {
            db: db.clone(),
            keys: Arc::clone(&keys),
            lwa: lwa.clone(),
            clock: Arc::clone(&clock),
            credentials: Arc::clone(&credentials),
        });
        let authorizer = Arc::new(Authorizer::new(AuthorizerHandles {
            db: db.clone(),
            keys: Arc::clone(&keys),
            lwa,
            clock: Arc::clone(&clock),
            credentials: Arc::clone(&credentials),
            config: Arc::clone(&config),
            spapi: Arc::clone(&spapi),
            broker: Arc::clone(&broker),
        }));
        let webhooks = match &config.webhooks {
            Some(webhooks) => Some(Arc::new(Webhooks::new(
                db.clone(),
                Arc::clone(&clock),
                webhooks,
            )?)),
            None => None,
        };
        let sandbox = config.is_sandbox().then(|| {
            Arc::new(Sandbox::new(
                db.clone(),
                Arc::clone(&clock),
                &config,
                Arc::clone(&credentials),
            ))
        });
        Ok(Services {
            api_keys: Arc::new(ApiKeys::new(db.clone(), Arc::clone(&clock))),
            tenants: Arc::new(Tenants::new(db.clone(), Arc::clone(&clock))),
            login_links: Arc::new(LoginLinks::new(
                db.clone(),
                Arc::clone(&clock),
                Arc::clone(&config),
            )),
            connections: Arc::new(Connections::new(
                db.clone(),
                Arc::clone(&clock),
                Arc::clone(&broker),
            )),
            summaries: Arc::new(Summaries::new(
                db.clone(),
                Arc::clone(&clock),
                Arc::clone(&credentials),
                config.webhooks.is_some(),
            )),
            events: Arc::new(Events::new(db.clone())),
            sweep: Arc::new(Sweep::new(
                db.clone(),
                Arc::clone(&clock),
                Arc::clone(&broker),
                config.sweep,
            )),
            webhooks,
            config,
            db,
            keys,
            clock,
            credentials,
            broker,
            authorizer,
            spapi,
            sandbox,
            shutting_down: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The background jobs of this instance.
    pub fn jobs(&self) -> Jobs {
        Jobs::new(
            self.db.clone(),
            Arc::clone(&self.clock),
            Arc::clone(&self.broker),
        )
    }

    /// The HTTP router over these services.
    pub fn router(&self) -> Router {
        http::router(AppState::new(self), self.sandbox.clone())
    }
}

/// Connects to PostgreSQL (creating the database), applies migrations, loads
/// the key ring and checks it against what is stored (fail closed), and
/// refuses a database whose connections belong to another Amazon.
pub async fn prepare(config: Config) -> Result<Services, StartError> {
    let keys = config.load_key_ring()?;
    let pool = db::connect(&config.database_url).await?;
    db::migrate(&pool).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    db::key_checks::verify_key_ring(&pool, &keys, clock.now()).await?;
    authorization::check_database_serves(&pool, config.mode, &config.lwa_client_id).await?;
    let services = Services::build(config, pool, keys, clock)?;
    // Every command (`sweep` too) sends the stored secrets and honours the hold.
    services.broker.app_state_changed().await?;
    Ok(services)
}

/// After the shutdown signal, `/readyz` answers 503 this long while every
/// other request is still served, so a load balancer stops sending new ones
/// before the listener closes.
pub const SHUTDOWN_NOTICE: Duration = Duration::from_secs(3);
/// After the drain, the jobs get this long to finish their batch and flush.
pub const JOBS_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a shutdown takes, signal to exit: within Kubernetes' default
/// 30 s grace period.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(
    SHUTDOWN_NOTICE.as_secs()
        + crate::http::listener::DRAIN_TIMEOUT.as_secs()
        + JOBS_STOP_TIMEOUT.as_secs(),
);

/// Serves until `shutdown` resolves, then: `/readyz` 503 and the sweep and
/// webhook deliveries stop at their batch boundary; [`SHUTDOWN_NOTICE`]
/// later the listener closes and in-flight requests are drained; then the
/// jobs flush what they hold (token-issue counts). Bounded by [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let flag = Arc::clone(&services.shutting_down);
    let (stop_background_tx, stop_background) = tokio::sync::watch::channel(false);
    let (stop_jobs_tx, stop_jobs) = tokio::sync::watch::channel(false);
    if let Err(e) = services.broker.app_state_changed().await {
        tracing::warn!(error = %e, "could not read the app-wide state at start");
    }
    let change_listener = ChangeListener::new(
        services.db.clone(),
        Arc::clone(&services.broker),
        Arc::clone(&services.api_keys),
    );
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(change_listener.run(stop_jobs.clone()));
    if let Some(webhooks) = services.webhooks.clone() {
        tasks.spawn(webhooks.run(stop_background.clone()));
    }
    tasks.spawn(Arc::clone(&services.sweep).run(stop_background));
    tasks.spawn(services.jobs().run(stop_jobs));
    let router = services.router();
    let served = crate::http::listener::serve(
        listener,
        router,
        crate::http::listener::Limits::for_this_process(),
        async move {
            shutdown.await;
            flag.store(true, Ordering::Relaxed);
            let _ = stop_background_tx.send(true);
            tracing::info!(
                notice_seconds = SHUTDOWN_NOTICE.as_secs(),
                "shutdown signal received: /readyz answers 503, then in-flight requests are drained"
            );
            tokio::time::sleep(SHUTDOWN_NOTICE).await;
        },
    )
    .await;
    let _ = stop_jobs_tx.send(true);
    let stopped = tokio::time::timeout(JOBS_STOP_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        tracing::warn!("background jobs still busy after the stop timeout: cut short");
        tasks.abort_all();
    }
    tracing::info!("shut down");
    served
}
