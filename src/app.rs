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

/// Serves until `shutdown` resolves, then marks the instance not ready,
/// drains in-flight requests, and stops the listener and the jobs.
pub async fn serve(
    listener: TcpListener,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let flag = Arc::clone(&services.shutting_down);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Err(e) = services.broker.app_state_changed().await {
        tracing::warn!(error = %e, "could not read the app-wide state at start");
    }
    let change_listener = ChangeListener::new(
        services.db.clone(),
        Arc::clone(&services.broker),
        Arc::clone(&services.api_keys),
    );
    let listener_task = tokio::spawn(change_listener.run(stop_rx.clone()));
    let webhooks_task = services
        .webhooks
        .clone()
        .map(|webhooks| tokio::spawn(webhooks.run(stop_rx.clone())));
    let sweep_task = tokio::spawn(Arc::clone(&services.sweep).run(stop_rx.clone()));
    let jobs_task = tokio::spawn(services.jobs().run(stop_rx));
    let router = services.router();
    let served = crate::http::listener::serve(
        listener,
        router,
        crate::http::listener::Limits::for_this_process(),
        async move {
            shutdown.await;
            flag.store(true, Ordering::Relaxed);
            tracing::info!("shutdown signal received: draining in-flight requests");
        },
    )
    .await;
    let _ = stop_tx.send(true);
    // Jobs stop at a batch boundary and flush what they hold.
    let _ = jobs_task.await;
    let _ = sweep_task.await;
    if let Some(task) = webhooks_task {
        let _ = task.await;
    }
    let _ = listener_task.await;
    served
}
