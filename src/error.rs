//! Internal failures. Handlers turn them into a page (`http::pages::PageError`)
//! or, for the API, a problem+json answer; the cause is logged with an incident
//! id and the client sees only a fixed phrase and that id.

use crate::crypto::CryptoError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("sealed value: {0}")]
    Crypto(#[from] CryptoError),
    #[error("template: {0}")]
    Template(#[from] askama::Error),
    #[error("session store: {0}")]
    Session(#[from] tower_sessions::session::Error),
    #[error("an in-memory lock was poisoned by a panic")]
    Poisoned,
    #[error("JSON encoding: {0}")]
    Json(#[from] serde_json::Error),
    /// A detached refresh failed; its cause is logged under this incident.
    #[error("the refresh failed (incident {incident})")]
    Refresh { incident: uuid::Uuid },
}
