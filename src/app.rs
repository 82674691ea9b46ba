//! The application: [`AppState`] (everything a handler needs, cheap to clone),
//! start-up ([`prepare`]), the router ([`build_router`]) and [`serve`] with
//! graceful shutdown.

use crate::amazon::lwa::{self, LwaClient};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::crypto::KeyRing;
use crate::db;
use crate::http;
use axum::Router;
use sqlx::PgPool;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Cloned for every request (axum's `State`), so it is one `Arc`: one counter
/// to bump instead of one per field.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub keys: Arc<KeyRing>,
    pub http: reqwest::Client,
    pub lwa: LwaClient,
    pub clock: Arc<dyn Clock>,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub shutting_down: Arc<AtomicBool>,
    pub headers: Arc<http::SecurityHeaders>,
    pub broker: Arc<crate::broker::TokenBroker>,
    pub api_keys: Arc<crate::api_keys::ApiKeyCache>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: Config, db: PgPool, keys: KeyRing, clock: Arc<dyn Clock>) -> Self {
        crate::metrics::install();
        let http_client = lwa::http_client();
        let lwa = LwaClient::new(
            http_client.clone(),
            config.lwa_token_url.clone(),
            config.lwa_client_id.clone(),
        );
        let headers = Arc::new(http::SecurityHeaders::new(&config));
        AppState(Arc::new(AppInner {
            db,
            config: Arc::new(config),
            keys: Arc::new(keys),
            http: http_client,
            lwa,
            clock,
            shutting_down: Arc::new(AtomicBool::new(false)),
            headers,
            broker: Arc::default(),
            api_keys: Arc::default(),
        }))
    }

    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Database(#[from] db::DbSetupError),
    #[error(transparent)]
    Keys(#[from] db::key_checks::KeyCheckError),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Connects to PostgreSQL (creating the database), applies migrations, loads the
/// key ring and checks it against what is stored (fail closed).
pub async fn prepare(config: Config) -> Result<AppState, StartError> {
    let keys = config.load_key_ring()?;
    let pool = db::connect(&config.database_url).await?;
    db::migrate(&pool).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    db::key_checks::verify_key_ring(&pool, &keys, clock.now()).await?;
    Ok(AppState::new(config, pool, keys, clock))
}

pub fn build_router(state: AppState) -> Router {
    http::router(state)
}

/// Serves until `shutdown` resolves, then marks the instance not ready and
/// drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let flag = state.shutting_down.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listener_task = tokio::spawn(crate::notify::listen(state.clone(), stop_rx.clone()));
    let jobs_task = tokio::spawn(crate::jobs::run(state.clone(), stop_rx));
    let router = build_router(state);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            flag.store(true, Ordering::Relaxed);
            tracing::info!("shutdown signal received: draining in-flight requests");
        })
        .await;
    let _ = stop_tx.send(true);
    // Jobs stop at a batch boundary and flush what they hold.
    let _ = jobs_task.await;
    let _ = listener_task.await;
    served
}
