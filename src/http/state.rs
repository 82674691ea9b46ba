//! What HTTP handlers extract from: the services, each a substate
//! (`State<Arc<TokenBroker>>`, …) through `FromRef`. One `Arc`, so the
//! per-request clone axum makes is one counter. Only `http/` and `app.rs`
//! know this type.

use super::SecurityHeaders;
use crate::amazon::spapi::SpApi;
use crate::api_keys::ApiKeys;
use crate::app::Services;
use crate::authorization::Authorizer;
use crate::broker::TokenBroker;
use crate::clock::Clock;
use crate::config::Config;
use crate::connections::Connections;
use crate::login_links::LoginLinks;
use crate::ops_summary::Summaries;
use crate::tenants::Tenants;
use axum::extract::FromRef;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use time::OffsetDateTime;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub clock: Arc<dyn Clock>,
    pub broker: Arc<TokenBroker>,
    pub authorizer: Arc<Authorizer>,
    pub api_keys: Arc<ApiKeys>,
    pub tenants: Arc<Tenants>,
    pub login_links: Arc<LoginLinks>,
    pub connections: Arc<Connections>,
    pub summaries: Arc<Summaries>,
    pub spapi: Arc<SpApi>,
    pub events: Arc<crate::events::Events>,
    pub headers: Arc<SecurityHeaders>,
    pub token_routes: Arc<super::api::tokens::TokenRoutes>,
    shutting_down: Arc<AtomicBool>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(services: &Services) -> Self {
        AppState(Arc::new(Shared {
            config: Arc::clone(&services.config),
            db: services.db.clone(),
            clock: Arc::clone(&services.clock),
            broker: Arc::clone(&services.broker),
            authorizer: Arc::clone(&services.authorizer),
            api_keys: Arc::clone(&services.api_keys),
            tenants: Arc::clone(&services.tenants),
            login_links: Arc::clone(&services.login_links),
            connections: Arc::clone(&services.connections),
            summaries: Arc::clone(&services.summaries),
            spapi: Arc::clone(&services.spapi),
            events: Arc::clone(&services.events),
            headers: Arc::new(SecurityHeaders::new(&services.config)),
            token_routes: Arc::new(super::api::tokens::TokenRoutes::new(
                Arc::clone(&services.broker),
                Arc::clone(&services.spapi),
                Arc::clone(&services.clock),
                &services.config,
            )),
            shutting_down: Arc::clone(&services.shutting_down),
        }))
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

macro_rules! substates {
    ($($field:ident: $ty:ty),+ $(,)?) => {
        $(impl FromRef<AppState> for $ty {
            fn from_ref(state: &AppState) -> Self {
                state.0.$field.clone()
            }
        })+
    };
}

substates! {
    config: Arc<Config>,
    broker: Arc<TokenBroker>,
    authorizer: Arc<Authorizer>,
    api_keys: Arc<ApiKeys>,
    tenants: Arc<Tenants>,
    login_links: Arc<LoginLinks>,
    connections: Arc<Connections>,
    summaries: Arc<Summaries>,
    spapi: Arc<SpApi>,
    events: Arc<crate::events::Events>,
}
