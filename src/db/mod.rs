//! PostgreSQL access: small named functions, one file per table family.
//! Every tenant-owned query takes the tenant id. Nothing here logs values.
//!
//! Queries are checked at run time (`sqlx::query_as`), not compile time, so
//! building needs no database; every query is exercised by the test suite.

pub mod api_keys;
pub mod app_secrets;
pub mod app_state;
pub mod audit;
pub mod connections;
pub mod consent_attempts;
pub mod events;
pub mod key_checks;
pub mod login_tokens;
pub mod notify;
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

/// A request waits at most this long for a pooled connection: with
/// PostgreSQL down, requests fail fast (503) instead of piling up.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// No statement runs longer (PostgreSQL's `statement_timeout` on every pooled
/// connection): every query sp-broker makes is small, and bounded writes are
/// what make the refresh lease provably long enough (`broker/lease.rs`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
pub const POOL_SIZE: u32 = 20;

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
    let options = options.options([(
        "statement_timeout",
        format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
    )]);
    pool_options()
        .connect_with(options)
        .await
        .map_err(DbSetupError::Unreachable)
}

/// The pool every sp-broker process uses (the benchmark's bare `SELECT`s too).
///
/// sqlx tests each connection with a round trip when it is returned to the
/// pool; testing it again when it is taken out (`test_before_acquire`) would
/// cost every query a second extra round trip. Without it, a connection that
/// died while idle (PostgreSQL restarted) fails one query, which answers 503
/// like any other database fault, and is then dropped by the release test.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
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

/// Does this error mean the database cannot be reached right now (the
/// answer is 503 with `Retry-After`, not 500)? Besides a full pool and a
/// broken socket: a TLS failure, and a protocol error, which is how sqlx
/// reports a connection cut in the middle of its handshake or of an answer;
/// and PostgreSQL's own word that it is going or not yet there: a connection
/// exception (SQLSTATE class 08), `admin_shutdown`, `crash_shutdown`,
/// `cannot_connect_now` (57P01–57P03, what a session gets when the server
/// stops or is still starting), `too_many_connections` (53300). The fault
/// drill (tests/it/fault_drills.rs) found 57P01 answered as a 500.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Is this a unique-constraint violation?
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}
