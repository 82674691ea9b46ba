//! PostgreSQL access: small named functions, one file per table family.
//! Every tenant-owned query takes the tenant id. Nothing here logs values.
//!
//! Queries are checked at run time (`sqlx::query_as`), not compile time, so
//! building needs no database; every query is exercised by the test suite.

pub mod api_keys;
pub mod audit;
pub mod connections;
pub mod key_checks;
pub mod login_tokens;
pub mod oauth_states;
pub mod sessions;
pub mod tenants;
pub mod usage;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("DATABASE_URL is not a PostgreSQL URL: {0}")]
    BadUrl(sqlx::Error),
    #[error("cannot reach PostgreSQL or create the database: {0}")]
    Unreachable(sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Connects (creating the database if it does not exist) with the pool limits
/// the reliability rules ask for: fail fast when PostgreSQL is down.
pub async fn connect(database_url: &str) -> Result<PgPool, DbSetupError> {
    let options = PgConnectOptions::from_str(database_url).map_err(DbSetupError::BadUrl)?;
    if !Postgres::database_exists(database_url)
        .await
        .map_err(DbSetupError::Unreachable)?
    {
        if let Err(e) = Postgres::create_database(database_url).await {
            // Another instance may have created it meanwhile.
            if !Postgres::database_exists(database_url)
                .await
                .map_err(DbSetupError::Unreachable)?
            {
                return Err(DbSetupError::Unreachable(e));
            }
        }
    }
    PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await
        .map_err(DbSetupError::Unreachable)
}

pub async fn migrate(pool: &PgPool) -> Result<(), DbSetupError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// True when every migration this build knows is applied.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(pool)
        .await?;
    Ok(applied >= MIGRATOR.iter().count() as i64)
}

/// Is this a unique-constraint violation?
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}
