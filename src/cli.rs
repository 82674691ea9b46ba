//! The command line of CONTRACT §1. Each subcommand prints exactly what the
//! contract says on stdout; logs and messages go to stderr.

use crate::app::{self, Services, StartError};
use crate::config::{Config, ConfigError, Settings};
use crate::crypto::KeyRing;
use crate::db;
use crate::db::login_tokens::LoginKind;
use crate::domain::InvalidInput;
use crate::login_links::{LinkRequest, LoginLinkError};
use crate::tenants::CreateTenantError;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "sp-broker",
    version,
    about = "Amazon SP-API connection broker",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand)]
pub enum Command {
    /// Migrate the database if needed, then serve HTTP until SIGTERM/SIGINT.
    Serve {
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Apply migrations and exit.
    Migrate,
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// A one-time link that signs a browser in to a tenant's Settings → Connections.
    LoginLink {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "admin")]
        user: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        return_to: Option<String>,
    },
    /// A one-time link that signs a browser in to the ops dashboard.
    OpsLink {
        #[arg(long, default_value = "operator")]
        user: String,
    },
    /// API keys for internal services.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// A new webhook signing secret (`whsec_…`), alone on one line.
    WebhookSecret,
    /// Runs one health-sweep pass now, within the sweep's rate budget.
    Sweep,
    /// The app's own LWA client secrets.
    #[command(subcommand)]
    App(AppCommand),
}

#[derive(Subcommand)]
pub enum AppCommand {
    /// The client secrets: which is in use, expiry, days left (JSON, as `GET /v1/app/status`).
    Status,
    /// Asks Amazon for a new client secret; it arrives as a notification.
    RotateSecret,
}

#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key; prints the key itself, alone on one line (shown once).
    Create {
        #[arg(long)]
        name: String,
        /// Bind the key to one tenant; without it, a platform key (all tenants).
        #[arg(long)]
        tenant: Option<String>,
        /// connections:read, tokens:issue, connections:manage, tenants:admin (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// One JSON object per line.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by its id (or public id); effective at once on every instance.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints it as one JSON object.
    Create {
        slug: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// One JSON object per line.
    List,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print a new random key as KEYID:BASE64.
    Generate,
    /// Re-seal every stored secret under the active key (resumable, safe while serving).
    Rotate,
    /// How many sealed values each key id protects; one JSON object per key id.
    Status,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Log(#[from] crate::logging::BadFilter),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Config(_) | CliError::Log(_) => 2,
            CliError::Start(StartError::Config(_)) => 2,
            CliError::Start(StartError::OtherAmazon(
                crate::authorization::OtherAmazon::Mismatch { .. },
            )) => 2,
            _ => 1,
        }
    }
}

/// A refused field, named by the flag or argument that gave it.
impl From<InvalidInput> for CliError {
    fn from(invalid: InvalidInput) -> Self {
        let flag = match invalid.field {
            "slug" => "SLUG",
            "user_id" => "--user",
            "return_to" => "--return-to",
            "scope" => "--scope",
            "name" => "--name",
            "email" => "--email",
            other => other,
        };
        CliError::Usage(format!("{flag}: {}", invalid.problem))
    }
}

impl From<CreateTenantError> for CliError {
    fn from(e: CreateTenantError) -> Self {
        match e {
            CreateTenantError::Invalid(invalid) => invalid.into(),
            CreateTenantError::Exists => CliError::Usage("SLUG: this tenant already exists".into()),
            CreateTenantError::Database(e) => e.into(),
        }
    }
}

impl From<LoginLinkError> for CliError {
    fn from(e: LoginLinkError) -> Self {
        match e {
            LoginLinkError::Invalid(invalid) => invalid.into(),
            LoginLinkError::Database(e) => e.into(),
        }
    }
}

impl From<crate::api_keys::CreateKeyError> for CliError {
    fn from(e: crate::api_keys::CreateKeyError) -> Self {
        match e {
            crate::api_keys::CreateKeyError::Invalid(invalid) => invalid.into(),
            crate::api_keys::CreateKeyError::Database(e) => e.into(),
        }
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        None => serve(cli.settings).await,
        Some(Command::Serve { settings }) => serve(*settings).await,
        Some(Command::Keys(KeysCommand::Generate)) => {
            println!("{}", KeyRing::generate_key_spec().expose_secret());
            Ok(())
        }
        Some(Command::WebhookSecret) => {
            println!("{}", crate::webhooks::new_secret());
            Ok(())
        }
        Some(Command::Migrate) => {
            let config = Config::from_settings(&cli.settings)?;
            crate::logging::init(&config.log_filter, config.log_json)?;
            let pool = db::connect(&config.database_url)
                .await
                .map_err(StartError::from)?;
            db::migrate(&pool).await.map_err(StartError::from)?;
            Ok(())
        }
        Some(command) => {
            let config = Config::from_settings(&cli.settings)?;
            crate::logging::init(&config.log_filter, config.log_json)?;
            let services = app::prepare(config).await?;
            admin(&services, command).await
        }
    }
}

fn json_line(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

async fn admin(services: &Services, command: Command) -> Result<(), CliError> {
    match command {
        Command::Tenant(TenantCommand::Create { slug, name }) => {
            let tenant = services.tenants.create(&slug, name.as_deref()).await?;
            println!("{}", json_line(&tenant));
        }
        Command::Sweep => {
            let counts = services.sweep.pass().await?;
            println!("{}", json_line(&counts));
        }
        Command::App(AppCommand::Status) => {
            services.credentials.reload().await?;
            let status = crate::app_secrets::status(&services.credentials);
            println!("{}", json_line(&status));
        }
        Command::App(AppCommand::RotateSecret) => {
            services.credentials.reload().await?;
            let operator = crate::api_keys::ApiPrincipal::operator("cli");
            crate::app_secrets::request_rotation(
                &services.broker,
                &services.spapi,
                &operator,
                "cli",
            )
            .await
            .map_err(|e| CliError::Failed(format!("the rotation was not requested: {e}")))?;
            println!(
                "{}",
                json_line(&serde_json::json!({
                    "status": "requested",
                    "detail": "Amazon accepted; the new secret arrives as an APPLICATION_OAUTH_CLIENT_NEW_SECRET notification",
                }))
            );
        }
        Command::Tenant(TenantCommand::List) => {
            for tenant in services.tenants.list().await? {
                println!("{}", json_line(&tenant));
            }
        }
        Command::LoginLink {
            tenant,
            user,
            email,
            return_to,
        } => {
            let tenant = services
                .tenants
                .find_by_slug(&tenant)
                .await?
                .ok_or_else(|| CliError::Usage(format!("--tenant: no tenant `{tenant}`")))?;
            let link = services
                .login_links
                .create(LinkRequest {
                    kind: LoginKind::Tenant,
                    tenant_id: Some(tenant.id),
                    user_id: &user,
                    email: email.as_deref(),
                    return_to: return_to.as_deref(),
                })
                .await?;
            println!("{}", link.url);
        }
        Command::OpsLink { user } => {
            let link = services
                .login_links
                .create(LinkRequest {
                    kind: LoginKind::Ops,
                    tenant_id: None,
                    user_id: &user,
                    email: None,
                    return_to: None,
                })
                .await?;
            println!("{}", link.url);
        }
        Command::ApiKey(ApiKeyCommand::Create {
            name,
            tenant,
            scopes,
        }) => {
            let tenant_id = tenant_id_of(services, tenant.as_deref()).await?;
            let key = services
                .api_keys
                .create(&name, tenant_id, &scopes, "cli")
                .await?;
            println!("{}", key.expose_secret());
        }
        Command::ApiKey(ApiKeyCommand::List { tenant }) => {
            let tenant_id = tenant_id_of(services, tenant.as_deref()).await?;
            for key in services.api_keys.list(tenant_id).await? {
                let json = serde_json::json!({
                    "id": key.id,
                    "public_id": key.public_id,
                    "name": key.name,
                    "tenant": key.tenant_slug,
                    "scopes": key.scopes,
                    "created_at": rfc3339(Some(key.created_at)),
                    "last_used_at": rfc3339(key.last_used_at),
                    "revoked_at": rfc3339(key.revoked_at),
                });
                println!("{json}");
            }
        }
        Command::ApiKey(ApiKeyCommand::Revoke { id }) => {
            if !services.api_keys.revoke(&id, "cli").await? {
                return Err(CliError::Usage(format!("ID: no active API key `{id}`")));
            }
        }
        Command::Keys(KeysCommand::Rotate) => {
            let summary = crate::rotation::rotate(&services.db, &services.keys)
                .await
                .map_err(|e| CliError::Failed(e.to_string()))?;
            db::audit::record(
                &services.db,
                services.clock.now(),
                "cli",
                "keys.rotated",
                db::audit::AuditTarget::default(),
                serde_json::to_value(&summary).unwrap_or_default(),
            )
            .await?;
            println!("{}", json_line(&summary));
        }
        Command::Keys(KeysCommand::Status) => {
            let counts = crate::rotation::sealed_counts(&services.db).await?;
            let keys = &services.keys;
            let mut ids: Vec<String> = keys.key_ids().map(str::to_owned).collect();
            ids.extend(counts.keys().filter(|id| !keys.has_key(id)).cloned());
            for id in ids {
                let json = serde_json::json!({
                    "key_id": id,
                    "active": id == keys.active_key_id(),
                    "configured": keys.has_key(&id),
                    "sealed_values": counts.get(&id).copied().unwrap_or(0),
                });
                println!("{json}");
            }
        }
        Command::Serve { .. }
        | Command::Migrate
        | Command::Keys(KeysCommand::Generate)
        | Command::WebhookSecret => {}
    }
    Ok(())
}

/// The id of the tenant `--tenant SLUG` names, if given.
async fn tenant_id_of(
    services: &Services,
    slug: Option<&str>,
) -> Result<Option<uuid::Uuid>, CliError> {
    let Some(slug) = slug else {
        return Ok(None);
    };
    let tenant = services
        .tenants
        .find_by_slug(slug)
        .await?
        .ok_or_else(|| CliError::Usage(format!("--tenant: no tenant `{slug}`")))?;
    Ok(Some(tenant.id))
}

fn rfc3339(at: Option<time::OffsetDateTime>) -> Option<String> {
    at.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
}

async fn serve(settings: Settings) -> Result<(), CliError> {
    let config = Config::from_settings(&settings)?;
    crate::logging::init(&config.log_filter, config.log_json)?;
    let listen = config.listen;
    let services = app::prepare(config).await?;
    if services.config.is_sandbox() {
        first_run_in_sandbox(&services).await?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let config = Arc::clone(&services.config);
    tracing::info!(addr = %listen, public_url = %config.public_url, mode = %config.mode, "sp-broker serving");
    app::serve(listener, services, shutdown_signal()).await?;
    tracing::info!("sp-broker stopped");
    Ok(())
}

/// Sandbox mode on a fresh database: a `demo` tenant and a login link for it,
/// so a newcomer can click through the whole flow at once.
async fn first_run_in_sandbox(services: &Services) -> Result<(), CliError> {
    let tenant = match services.tenants.find_by_slug("demo").await? {
        Some(t) => t,
        None if services.tenants.list().await?.is_empty() => {
            services.tenants.create("demo", Some("Demo tenant")).await?
        }
        None => return Ok(()),
    };
    let link = services
        .login_links
        .create(LinkRequest {
            kind: LoginKind::Tenant,
            tenant_id: Some(tenant.id),
            user_id: "demo-user",
            email: None,
            return_to: None,
        })
        .await?;
    eprintln!(
        "\n  sp-broker is running against the SANDBOX Amazon (no real seller data).\n  \
         Open this one-time link (valid 10 minutes) to see Settings → Connections for tenant `{}`:\n\n    {}\n\n  \
         New link: sp-broker login-link --tenant {}\n",
        tenant.slug, link.url, tenant.slug
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
