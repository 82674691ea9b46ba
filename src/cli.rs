//! The command line of CONTRACT §1. Each subcommand prints exactly what the
//! contract says on stdout; logs and messages go to stderr.

use crate::app::{self, AppState, StartError};
use crate::config::{Config, ConfigError, Settings};
use crate::crypto::KeyRing;
use crate::db::login_tokens::LoginKind;
use crate::db::tenants;
use crate::http::pages;
use crate::{amazon::consent, db};
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

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
            _ => 1,
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
            let state = app::prepare(config).await?;
            admin(&state, command).await
        }
    }
}

async fn admin(state: &AppState, command: Command) -> Result<(), CliError> {
    match command {
        Command::Tenant(TenantCommand::Create { slug, name }) => {
            let tenant = create_tenant(state, &slug, name.as_deref()).await?;
            println!("{}", serde_json::to_string(&tenant).unwrap_or_default());
        }
        Command::Tenant(TenantCommand::List) => {
            for tenant in tenants::list_tenants(&state.db).await? {
                println!("{}", serde_json::to_string(&tenant).unwrap_or_default());
            }
        }
        Command::LoginLink {
            tenant,
            user,
            email,
            return_to,
        } => {
            let tenant = tenants::find_tenant_by_slug(&state.db, &tenant)
                .await?
                .ok_or_else(|| CliError::Usage(format!("--tenant: no tenant `{tenant}`")))?;
            let return_to = match return_to {
                Some(raw) => Some(consent::validate_return_to(&state.config, &raw).ok_or_else(|| {
                    CliError::Usage("--return-to: must be a path on this broker, such as /settings/connections".into())
                })?),
                None => None,
            };
            let (url, _) = pages::create_login_link(
                state,
                LoginKind::Tenant,
                Some(tenant.id),
                &user,
                email.as_deref(),
                return_to.as_deref(),
            )
            .await?;
            println!("{url}");
        }
        Command::OpsLink { user } => {
            let (url, _) =
                pages::create_login_link(state, LoginKind::Ops, None, &user, None, None).await?;
            println!("{url}");
        }
        Command::ApiKey(ApiKeyCommand::Create {
            name,
            tenant,
            scopes,
        }) => {
            let tenant_id = tenant_id_of(state, tenant.as_deref()).await?;
            let key = create_api_key(state, &name, tenant_id, &scopes, "cli").await?;
            println!("{}", key.expose_secret());
        }
        Command::ApiKey(ApiKeyCommand::List { tenant }) => {
            let tenant_id = tenant_id_of(state, tenant.as_deref()).await?;
            for key in db::api_keys::list_api_keys(&state.db, tenant_id).await? {
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
            revoke_api_key(state, &id, "cli").await?;
        }
        Command::Keys(KeysCommand::Rotate) => {
            let summary = crate::rotation::rotate(&state.db, &state.keys)
                .await
                .map_err(|e| CliError::Failed(e.to_string()))?;
            db::audit::record(
                &state.db,
                state.now(),
                "cli",
                "keys.rotated",
                db::audit::AuditTarget::default(),
                serde_json::to_value(&summary).unwrap_or_default(),
            )
            .await?;
            println!("{}", serde_json::to_string(&summary).unwrap_or_default());
        }
        Command::Keys(KeysCommand::Status) => {
            let counts = crate::rotation::sealed_counts(&state.db).await?;
            let mut ids: Vec<String> = state.keys.key_ids().map(str::to_owned).collect();
            ids.extend(counts.keys().filter(|id| !state.keys.has_key(id)).cloned());
            for id in ids {
                let json = serde_json::json!({
                    "key_id": id,
                    "active": id == state.keys.active_key_id(),
                    "configured": state.keys.has_key(&id),
                    "sealed_values": counts.get(&id).copied().unwrap_or(0),
                });
                println!("{json}");
            }
        }
        Command::Serve { .. } | Command::Migrate | Command::Keys(KeysCommand::Generate) => {}
    }
    Ok(())
}

/// The id of the tenant `--tenant SLUG` names, if given.
async fn tenant_id_of(
    state: &AppState,
    slug: Option<&str>,
) -> Result<Option<uuid::Uuid>, CliError> {
    let Some(slug) = slug else {
        return Ok(None);
    };
    let tenant = tenants::find_tenant_by_slug(&state.db, slug)
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

/// Creates an API key and records it in the audit log; returns the key (shown once).
pub async fn create_api_key(
    state: &AppState,
    name: &str,
    tenant_id: Option<uuid::Uuid>,
    scopes: &[String],
    actor: &str,
) -> Result<secrecy::SecretString, CliError> {
    use crate::api_keys::{NewKey, Scope};
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(CliError::Usage("--name: 1 to 200 characters".into()));
    }
    let mut parsed: Vec<Scope> = Vec::new();
    for raw in scopes {
        let scope = Scope::parse(raw).ok_or_else(|| {
            CliError::Usage(format!(
                "--scope: `{raw}` is not one of connections:read, tokens:issue, connections:manage, tenants:admin"
            ))
        })?;
        if !parsed.contains(&scope) {
            parsed.push(scope);
        }
    }
    if parsed.is_empty() {
        parsed.extend(Scope::DEFAULT);
    }
    if tenant_id.is_some() && parsed.contains(&Scope::TenantsAdmin) {
        return Err(CliError::Usage(
            "--scope: tenants:admin exists only on platform keys (no --tenant)".into(),
        ));
    }
    let scope_names: Vec<String> = parsed.iter().map(|s| s.as_str().to_owned()).collect();
    let key = NewKey::generate();
    let now = state.now();
    let mut tx = state.db.begin().await?;
    db::api_keys::insert_api_key(
        &mut *tx,
        db::api_keys::NewApiKey {
            id: key.id,
            public_id: &key.public_id,
            secret_hash: &key.secret_hash(),
            name,
            tenant_id,
            scopes: &scope_names,
            now,
        },
    )
    .await?;
    db::audit::record(
        &mut *tx,
        now,
        actor,
        "api_key.created",
        db::audit::AuditTarget { tenant_id, connection_id: None },
        serde_json::json!({"api_key_id": key.id, "public_id": key.public_id, "name": name, "scopes": scope_names}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(public_id = %key.public_id, "API key created");
    Ok(key.token())
}

/// Revokes an API key everywhere at once (NOTIFY) and audits it.
pub async fn revoke_api_key(state: &AppState, id: &str, actor: &str) -> Result<(), CliError> {
    let now = state.now();
    let mut tx = state.db.begin().await?;
    let Some((key_id, public_id, tenant_id)) =
        db::api_keys::revoke_api_key(&mut *tx, id, now).await?
    else {
        return Err(CliError::Usage(format!("ID: no active API key `{id}`")));
    };
    db::audit::record(
        &mut *tx,
        now,
        actor,
        "api_key.revoked",
        db::audit::AuditTarget {
            tenant_id,
            connection_id: None,
        },
        serde_json::json!({"api_key_id": key_id, "public_id": public_id}),
    )
    .await?;
    crate::notify::send(&mut *tx, &crate::notify::Change::ApiKey(public_id.clone())).await?;
    tx.commit().await?;
    state.api_keys.forget(&public_id);
    tracing::info!(public_id = %public_id, "API key revoked");
    Ok(())
}

pub async fn create_tenant(
    state: &AppState,
    slug: &str,
    name: Option<&str>,
) -> Result<tenants::Tenant, CliError> {
    if !tenants::is_valid_slug(slug) {
        return Err(CliError::Usage(format!(
            "SLUG: `{slug}` must match ^[a-z0-9][a-z0-9-]{{1,62}}$"
        )));
    }
    match tenants::insert_tenant(&state.db, slug, name.unwrap_or(slug), state.now()).await {
        Ok(tenant) => Ok(tenant),
        Err(e) if db::is_unique_violation(&e) => Err(CliError::Usage(format!(
            "SLUG: tenant `{slug}` already exists"
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn serve(settings: Settings) -> Result<(), CliError> {
    let config = Config::from_settings(&settings)?;
    crate::logging::init(&config.log_filter, config.log_json)?;
    let listen = config.listen;
    let state = app::prepare(config).await?;
    if state.config.is_sandbox() {
        first_run_in_sandbox(&state).await?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(addr = %listen, public_url = %state.config.public_url, mode = ?state.config.mode, "sp-broker serving");
    app::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("sp-broker stopped");
    Ok(())
}

/// Sandbox mode on a fresh database: a `demo` tenant and a login link for it,
/// so a newcomer can click through the whole flow at once.
async fn first_run_in_sandbox(state: &AppState) -> Result<(), CliError> {
    let tenant = match tenants::find_tenant_by_slug(&state.db, "demo").await? {
        Some(t) => t,
        None if tenants::list_tenants(&state.db).await?.is_empty() => {
            create_tenant(state, "demo", Some("Demo tenant")).await?
        }
        None => return Ok(()),
    };
    let (url, _) = pages::create_login_link(
        state,
        LoginKind::Tenant,
        Some(tenant.id),
        "demo-user",
        None,
        None,
    )
    .await?;
    eprintln!(
        "\n  sp-broker is running against the SANDBOX Amazon (no real seller data).\n  \
         Open this one-time link (valid 10 minutes) to see Settings → Connections for tenant `{}`:\n\n    {url}\n\n  \
         New link: sp-broker login-link --tenant {}\n",
        tenant.slug, tenant.slug
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
