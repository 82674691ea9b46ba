//! Typed settings, read from the environment (each also a `--flag` on `serve`)
//! and validated once at start. A bad setting is a [`ConfigError`] naming the
//! variable and why; `main` turns it into exit code 2.
//!
//! Secrets (client secrets, encryption keys) are held as [`SecretString`] and
//! never appear in `Debug` output.

use crate::amazon::marketplaces::Region;
use crate::crypto::{KeyConfigError, KeyRing};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use url::Url;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/sp_broker";

/// The raw settings as given. Deliberately not `Debug`: it holds secrets.
#[derive(clap::Args, Clone, Default)]
pub struct Settings {
    /// PostgreSQL URL (created if missing).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Address to bind.
    #[arg(long, env = "SP_BROKER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// External base URL.
    #[arg(
        long,
        env = "SP_BROKER_PUBLIC_URL",
        default_value = "http://localhost:8080"
    )]
    pub public_url: String,
    /// `sandbox` or `live`.
    #[arg(long, env = "SP_BROKER_AMAZON")]
    pub amazon: Option<String>,
    #[arg(long, env = "SP_BROKER_APP_ID")]
    pub app_id: Option<String>,
    #[arg(long, env = "SP_BROKER_LWA_CLIENT_ID")]
    pub lwa_client_id: Option<String>,
    #[arg(long, env = "SP_BROKER_LWA_CLIENT_SECRET", hide_env_values = true)]
    pub lwa_client_secret: Option<String>,
    #[arg(
        long,
        env = "SP_BROKER_LWA_CLIENT_SECRET_PREVIOUS",
        hide_env_values = true
    )]
    pub lwa_client_secret_previous: Option<String>,
    /// `true` adds `version=beta` to consent URLs.
    #[arg(long, env = "SP_BROKER_APP_DRAFT", default_value = "false")]
    pub app_draft: String,
    /// Comma-separated `KEYID:BASE64`; the first is active.
    #[arg(long, env = "SP_BROKER_ENCRYPTION_KEYS", hide_env_values = true)]
    pub encryption_keys: Option<String>,
    #[arg(long, env = "SP_BROKER_LWA_TOKEN_URL")]
    pub lwa_token_url: Option<String>,
    #[arg(long, env = "SP_BROKER_SELLER_CENTRAL_URL")]
    pub seller_central_url: Option<String>,
    #[arg(long, env = "SP_BROKER_SPAPI_URL")]
    pub spapi_url: Option<String>,
    /// tracing filter.
    #[arg(long, env = "SP_BROKER_LOG", default_value = "info")]
    pub log: String,
    /// `json` for JSON lines.
    #[arg(long, env = "SP_BROKER_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Seconds between health-sweep passes; 0 turns the sweep off.
    #[arg(long, env = "SP_BROKER_SWEEP_INTERVAL_SECONDS", default_value = "3600")]
    pub sweep_interval_seconds: String,
    /// An active connection not refreshed for this long is due for the sweep.
    #[arg(
        long,
        env = "SP_BROKER_SWEEP_STALE_AFTER_SECONDS",
        default_value = "86400"
    )]
    pub sweep_stale_after_seconds: String,
    /// The most sweep refreshes per second, all instances together.
    #[arg(long, env = "SP_BROKER_SWEEP_RATE", default_value = "2")]
    pub sweep_rate: String,
    /// Where events are POSTed (CONTRACT §8).
    #[arg(long, env = "SP_BROKER_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Comma-separated `whsec_…` signing secrets; the first is the newest.
    #[arg(long, env = "SP_BROKER_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Comma-separated CIDRs whose `X-Forwarded-For` is believed for the client address.
    #[arg(long, env = "SP_BROKER_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

fn bad(variable: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        reason: reason.into(),
    }
}

crate::domain::text_enum! {
    /// Which Amazon sp-broker talks to (`SP_BROKER_AMAZON`).
    pub enum AmazonMode ("mode (sandbox or live)") {
        /// The built-in simulated Amazon under `/sandbox`.
        Sandbox => "sandbox",
        Live => "live",
    }
}

/// Where the encryption keys come from.
pub enum KeySource {
    Configured(SecretString),
    /// Sandbox only: a generated development key kept in this file.
    DevFile(PathBuf),
}

/// Validated configuration.
pub struct Config {
    pub database_url: String,
    pub listen: SocketAddr,
    /// Without a trailing slash, e.g. `http://localhost:8080`.
    pub public_url: String,
    pub is_https: bool,
    pub mode: AmazonMode,
    pub app_id: String,
    pub lwa_client_id: String,
    /// The current secret first, then the previous one if configured.
    pub lwa_client_secrets: Vec<SecretString>,
    pub app_draft: bool,
    pub keys: KeySource,
    pub lwa_token_url: Url,
    /// One base URL used instead of every Seller/Vendor Central URL.
    pub seller_central_override: Option<Url>,
    /// One base URL used instead of every regional SP-API endpoint.
    pub spapi_override: Option<Url>,
    pub log_filter: String,
    pub log_json: bool,
    /// Webhook delivery, when a URL is configured.
    pub webhooks: Option<WebhookConfig>,
    pub sweep: SweepConfig,
    /// Proxies whose `X-Forwarded-For` names the client (CONTRACT §10).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The health sweep's settings (CONTRACT §5).
#[derive(Debug, Clone, Copy)]
pub struct SweepConfig {
    /// Between passes; `None`: no background sweep (`sp-broker sweep` still runs one).
    pub interval: Option<std::time::Duration>,
    pub stale_after: std::time::Duration,
    /// Refresh calls per second, all instances together.
    pub rate: f64,
}

/// `raw` as whole seconds; empty means `default`.
fn parse_seconds(
    variable: &'static str,
    raw: &str,
    default: u64,
    min: u64,
) -> Result<u64, ConfigError> {
    if raw.trim().is_empty() {
        return Ok(default);
    }
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|s| *s >= min && *s <= 366 * 86_400)
        .ok_or_else(|| {
            bad(
                variable,
                format!("`{raw}` is not a whole number of seconds from {min} to 31622400"),
            )
        })
}

fn parse_sweep(settings: &Settings) -> Result<SweepConfig, ConfigError> {
    let interval = parse_seconds(
        "SP_BROKER_SWEEP_INTERVAL_SECONDS",
        &settings.sweep_interval_seconds,
        3600,
        0,
    )?;
    let stale_after = parse_seconds(
        "SP_BROKER_SWEEP_STALE_AFTER_SECONDS",
        &settings.sweep_stale_after_seconds,
        86_400,
        60,
    )?;
    let rate = Some(settings.sweep_rate.trim())
        .map(|raw| if raw.is_empty() { "2" } else { raw })
        .and_then(|raw| raw.parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r >= 0.01 && *r <= 1000.0)
        .ok_or_else(|| {
            bad(
                "SP_BROKER_SWEEP_RATE",
                format!(
                    "`{}` is not a number of calls per second from 0.01 to 1000",
                    settings.sweep_rate
                ),
            )
        })?;
    Ok(SweepConfig {
        interval: (interval > 0).then(|| std::time::Duration::from_secs(interval)),
        stale_after: std::time::Duration::from_secs(stale_after),
        rate,
    })
}

/// Where events are delivered and the secrets that sign them. Not `Debug`.
pub struct WebhookConfig {
    pub url: Url,
    /// `whsec_…`, each signing every delivery (more than one during a rotation).
    pub secrets: Vec<SecretString>,
}

/// `SP_BROKER_TRUSTED_PROXIES`: comma-separated CIDRs (a bare address is one host).
fn parse_trusted_proxies(raw: Option<&str>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<ipnet::IpNet>()
                .or_else(|_| part.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    bad(
                        "SP_BROKER_TRUSTED_PROXIES",
                        format!("`{part}` is not a CIDR (e.g. 10.0.0.0/8) or an IP address"),
                    )
                })
        })
        .collect()
}

/// A webhook signing secret: `whsec_` and the base64 of 24 to 64 random bytes.
pub fn check_webhook_secret(secret: &str) -> Result<(), &'static str> {
    use base64::Engine as _;
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err(
            "each secret must start with whsec_ (make one with `sp-broker webhook-secret`)",
        );
    };
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(key) if (24..=64).contains(&key.len()) => Ok(()),
        Ok(_) => Err("each secret must hold 24 to 64 bytes"),
        Err(_) => Err("each secret must be whsec_ followed by standard base64"),
    }
}

fn parse_webhooks(settings: &Settings, live: bool) -> Result<Option<WebhookConfig>, ConfigError> {
    let Some(raw) = non_empty(&settings.webhook_url) else {
        if non_empty(&settings.webhook_secret).is_some() {
            return Err(bad(
                "SP_BROKER_WEBHOOK_URL",
                "required with SP_BROKER_WEBHOOK_SECRET",
            ));
        }
        return Ok(None);
    };
    let url =
        Url::parse(raw).map_err(|e| bad("SP_BROKER_WEBHOOK_URL", format!("not a URL ({e})")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if !live || loopback => {}
        "http" => {
            return Err(bad(
                "SP_BROKER_WEBHOOK_URL",
                "must be https in live mode (unless the host is a loopback address)",
            ))
        }
        _ => {
            return Err(bad(
                "SP_BROKER_WEBHOOK_URL",
                "must be an http:// or https:// URL",
            ))
        }
    }
    if url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "SP_BROKER_WEBHOOK_URL",
            "must name a host and carry no credentials",
        ));
    }
    let Some(secrets) = non_empty(&settings.webhook_secret) else {
        return Err(bad(
            "SP_BROKER_WEBHOOK_SECRET",
            "required with SP_BROKER_WEBHOOK_URL (make one with `sp-broker webhook-secret`)",
        ));
    };
    let mut parsed = Vec::new();
    for secret in secrets.split(',').map(str::trim) {
        check_webhook_secret(secret).map_err(|why| bad("SP_BROKER_WEBHOOK_SECRET", why))?;
        parsed.push(SecretString::from(secret.to_owned()));
    }
    Ok(Some(WebhookConfig {
        url,
        secrets: parsed,
    }))
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("mode", &self.mode)
            .field("app_id", &self.app_id)
            .field("lwa_client_id", &self.lwa_client_id)
            .field("lwa_client_secrets", &self.lwa_client_secrets.len())
            .field("app_draft", &self.app_draft)
            .field("lwa_token_url", &self.lwa_token_url.as_str())
            .finish_non_exhaustive()
    }
}

/// Identifiers the sandbox Amazon issues to itself, used when no real ones are set.
pub const SANDBOX_APP_ID: &str = "amzn1.sp.solution.sp-broker-sandbox";
pub const SANDBOX_CLIENT_ID: &str = "amzn1.application-oa2-client.sp-broker-sandbox";
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-client-secret";

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn parse_base_url(variable: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw.trim()).map_err(|e| bad(variable, format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad(variable, "must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad(
            variable,
            "must not carry a query, a fragment or credentials",
        ));
    }
    Ok(url)
}

/// `base` joined with `path`, keeping any path `base` already has.
pub fn join_url(base: &Url, path: &str) -> String {
    format!("{}{}", base.as_str().trim_end_matches('/'), path)
}

impl Config {
    pub fn from_settings(settings: &Settings) -> Result<Config, ConfigError> {
        let listen: SocketAddr = settings.listen.trim().parse().map_err(|_| {
            bad(
                "SP_BROKER_LISTEN",
                format!(
                    "`{}` is not an address such as 127.0.0.1:8080",
                    settings.listen
                ),
            )
        })?;

        let public = parse_base_url("SP_BROKER_PUBLIC_URL", &settings.public_url)?;
        if public.path() != "/" {
            return Err(bad(
                "SP_BROKER_PUBLIC_URL",
                "must be an origin without a path, e.g. https://broker.example.com",
            ));
        }
        let public_url = public.as_str().trim_end_matches('/').to_owned();
        let is_https = public.scheme() == "https";

        let client_id = non_empty(&settings.lwa_client_id);
        let mode = match non_empty(&settings.amazon) {
            None if client_id.is_none() => AmazonMode::Sandbox,
            None => AmazonMode::Live,
            Some("sandbox") => AmazonMode::Sandbox,
            Some("live") => AmazonMode::Live,
            Some(other) => {
                return Err(bad(
                    "SP_BROKER_AMAZON",
                    format!("`{other}` is neither `sandbox` nor `live`"),
                ))
            }
        };

        let app_draft = match settings.app_draft.trim() {
            "true" | "1" => true,
            "false" | "0" | "" => false,
            other => {
                return Err(bad(
                    "SP_BROKER_APP_DRAFT",
                    format!("`{other}` is neither `true` nor `false`"),
                ))
            }
        };

        let live = mode == AmazonMode::Live;
        let app_id = match (non_empty(&settings.app_id), live) {
            (Some(id), _) => id.to_owned(),
            (None, true) => return Err(bad("SP_BROKER_APP_ID", "required in live mode")),
            (None, false) => SANDBOX_APP_ID.to_owned(),
        };
        if !(app_id.starts_with("amzn1.sp.solution.")
            || app_id.starts_with("amzn1.sellerapps.app."))
        {
            return Err(bad(
                "SP_BROKER_APP_ID",
                "must start with amzn1.sp.solution. or amzn1.sellerapps.app.",
            ));
        }
        let lwa_client_id = match (client_id, live) {
            (Some(id), _) => id.to_owned(),
            (None, true) => return Err(bad("SP_BROKER_LWA_CLIENT_ID", "required in live mode")),
            (None, false) => SANDBOX_CLIENT_ID.to_owned(),
        };
        let mut lwa_client_secrets = Vec::new();
        match (non_empty(&settings.lwa_client_secret), live) {
            (Some(secret), _) => lwa_client_secrets.push(SecretString::from(secret.to_owned())),
            (None, true) => {
                return Err(bad("SP_BROKER_LWA_CLIENT_SECRET", "required in live mode"))
            }
            (None, false) => lwa_client_secrets.push(SecretString::from(SANDBOX_CLIENT_SECRET)),
        }
        if let Some(previous) = non_empty(&settings.lwa_client_secret_previous) {
            lwa_client_secrets.push(SecretString::from(previous.to_owned()));
        }

        let keys = match (non_empty(&settings.encryption_keys), live) {
            (Some(spec), _) => {
                let spec = SecretString::from(spec.to_owned());
                KeyRing::parse(&spec)
                    .map_err(|e| bad("SP_BROKER_ENCRYPTION_KEYS", e.to_string()))?;
                KeySource::Configured(spec)
            }
            (None, true) => {
                return Err(bad(
                    "SP_BROKER_ENCRYPTION_KEYS",
                    "required in live mode (generate one with `sp-broker keys generate`)",
                ))
            }
            (None, false) => KeySource::DevFile(PathBuf::from(".sp-broker/dev-keys")),
        };

        let sandbox_base = format!("{public_url}/sandbox");
        let lwa_token_url = match non_empty(&settings.lwa_token_url) {
            Some(raw) => parse_base_url("SP_BROKER_LWA_TOKEN_URL", raw)?,
            None if live => parse_base_url(
                "SP_BROKER_LWA_TOKEN_URL",
                "https://api.amazon.com/auth/o2/token",
            )?,
            None => parse_base_url(
                "SP_BROKER_LWA_TOKEN_URL",
                &format!("{sandbox_base}/auth/o2/token"),
            )?,
        };
        let seller_central_override = match non_empty(&settings.seller_central_url) {
            Some(raw) => Some(parse_base_url("SP_BROKER_SELLER_CENTRAL_URL", raw)?),
            None if live => None,
            None => Some(parse_base_url(
                "SP_BROKER_SELLER_CENTRAL_URL",
                &sandbox_base,
            )?),
        };
        let spapi_override = match non_empty(&settings.spapi_url) {
            Some(raw) => Some(parse_base_url("SP_BROKER_SPAPI_URL", raw)?),
            None if live => None,
            None => Some(parse_base_url("SP_BROKER_SPAPI_URL", &sandbox_base)?),
        };

        let log_json = match settings.log_format.trim() {
            "json" => true,
            "text" | "" => false,
            other => {
                return Err(bad(
                    "SP_BROKER_LOG_FORMAT",
                    format!("`{other}` is neither `json` nor `text`"),
                ))
            }
        };

        let webhooks = parse_webhooks(settings, live)?;
        let sweep = parse_sweep(settings)?;

        Ok(Config {
            database_url: settings.database_url.trim().to_owned(),
            listen,
            public_url,
            is_https,
            mode,
            app_id,
            lwa_client_id,
            lwa_client_secrets,
            app_draft,
            keys,
            lwa_token_url,
            seller_central_override,
            spapi_override,
            log_filter: settings.log.clone(),
            log_json,
            webhooks,
            sweep,
            trusted_proxies: parse_trusted_proxies(settings.trusted_proxies.as_deref())?,
        })
    }

    pub fn is_sandbox(&self) -> bool {
        self.mode == AmazonMode::Sandbox
    }

    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/amazon/callback", self.public_url)
    }

    pub fn spapi_endpoint(&self, region: Region) -> &str {
        match &self.spapi_override {
            Some(url) => url.as_str().trim_end_matches('/'),
            None => region.spapi_endpoint(),
        }
    }

    /// Loads the key ring: the configured keys, or (sandbox only) the development
    /// key file, created with a fresh key on first use.
    pub fn load_key_ring(&self) -> Result<KeyRing, ConfigError> {
        match &self.keys {
            KeySource::Configured(spec) => {
                KeyRing::parse(spec).map_err(|e| bad("SP_BROKER_ENCRYPTION_KEYS", e.to_string()))
            }
            KeySource::DevFile(path) => load_or_create_dev_keys(path),
        }
    }
}

fn load_or_create_dev_keys(path: &Path) -> Result<KeyRing, ConfigError> {
    let variable = "SP_BROKER_ENCRYPTION_KEYS";
    let spec = match std::fs::read_to_string(path) {
        Ok(text) => SecretString::from(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let spec = KeyRing::generate_key_spec();
            write_private_file(path, spec.expose_secret()).map_err(|e| {
                bad(
                    variable,
                    format!(
                        "unset, and the development key file {} cannot be written: {e}",
                        path.display()
                    ),
                )
            })?;
            spec
        }
        Err(e) => {
            return Err(bad(
                variable,
                format!(
                    "unset, and the development key file {} cannot be read: {e}",
                    path.display()
                ),
            ))
        }
    };
    tracing::warn!(
        file = %path.display(),
        "SANDBOX MODE: SP_BROKER_ENCRYPTION_KEYS is unset, so stored secrets are sealed with a \
         development key kept in this file. Never use it for real sellers' tokens."
    );
    KeyRing::parse(&spec).map_err(|e: KeyConfigError| {
        bad(
            variable,
            format!(
                "the development key file {} is damaged: {e}",
                path.display()
            ),
        )
    })
}

fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn settings() -> Settings {
        Settings {
            database_url: DEFAULT_DATABASE_URL.into(),
            listen: "127.0.0.1:8080".into(),
            public_url: "http://localhost:8080".into(),
            app_draft: "false".into(),
            log: "info".into(),
            log_format: "text".into(),
            ..Settings::default()
        }
    }

    #[test]
    fn sandbox_is_the_default_and_points_at_itself() {
        let config = Config::from_settings(&settings()).unwrap();
        assert!(config.is_sandbox());
        assert_eq!(
            config.lwa_token_url.as_str(),
            "http://localhost:8080/sandbox/auth/o2/token"
        );
        assert_eq!(
            config.spapi_endpoint(Region::Eu),
            "http://localhost:8080/sandbox"
        );
        assert_eq!(
            config.redirect_uri(),
            "http://localhost:8080/oauth/amazon/callback"
        );
    }

    #[test]
    fn live_mode_names_each_missing_setting() {
        let mut s = settings();
        s.lwa_client_id = Some("amzn1.application-oa2-client.x".into());
        let err = Config::from_settings(&s).err().unwrap();
        assert_eq!(err.variable, "SP_BROKER_APP_ID");
        s.app_id = Some("amzn1.sp.solution.abc".into());
        assert_eq!(
            Config::from_settings(&s).err().unwrap().variable,
            "SP_BROKER_LWA_CLIENT_SECRET"
        );
        s.lwa_client_secret = Some("secret".into());
        assert_eq!(
            Config::from_settings(&s).err().unwrap().variable,
            "SP_BROKER_ENCRYPTION_KEYS"
        );
        s.encryption_keys = Some("k:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into());
        let config = Config::from_settings(&s).unwrap();
        assert_eq!(config.mode, AmazonMode::Live);
        assert_eq!(
            config.lwa_token_url.as_str(),
            "https://api.amazon.com/auth/o2/token"
        );
        assert_eq!(
            config.spapi_endpoint(Region::Fe),
            "https://sellingpartnerapi-fe.amazon.com"
        );
        assert!(!format!("{config:?}").contains("secret\""));
    }

    #[test]
    fn bad_values_are_refused_with_their_variable() {
        for (edit, variable) in [
            (
                Box::new(|s: &mut Settings| s.listen = "nope".into()) as Box<dyn Fn(&mut Settings)>,
                "SP_BROKER_LISTEN",
            ),
            (
                Box::new(|s: &mut Settings| s.public_url = "ftp://x".into()),
                "SP_BROKER_PUBLIC_URL",
            ),
            (
                Box::new(|s: &mut Settings| s.public_url = "https://x/base".into()),
                "SP_BROKER_PUBLIC_URL",
            ),
            (
                Box::new(|s: &mut Settings| s.amazon = Some("prod".into())),
                "SP_BROKER_AMAZON",
            ),
            (
                Box::new(|s: &mut Settings| s.app_draft = "yes".into()),
                "SP_BROKER_APP_DRAFT",
            ),
            (
                Box::new(|s: &mut Settings| s.app_id = Some("my-app".into())),
                "SP_BROKER_APP_ID",
            ),
            (
                Box::new(|s: &mut Settings| s.encryption_keys = Some("k:short".into())),
                "SP_BROKER_ENCRYPTION_KEYS",
            ),
            (
                Box::new(|s: &mut Settings| s.log_format = "xml".into()),
                "SP_BROKER_LOG_FORMAT",
            ),
        ] {
            let mut s = settings();
            edit(&mut s);
            assert_eq!(Config::from_settings(&s).err().unwrap().variable, variable);
        }
    }
}
