//! One-time login links: how the embedding app (API), an operator (CLI) or
//! sp-broker itself (the sandbox's first run) signs a browser in. One home,
//! so the user id, email and `return_to` are checked the same way for all.

use crate::amazon::consent;
use crate::clock::Clock;
use crate::config::Config;
use crate::db::login_tokens::{self, LoginKind};
use crate::domain::{text_field, InvalidInput};
use crate::secrets;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub const LOGIN_TOKEN_LIFETIME: Duration = Duration::minutes(10);
pub const MAX_USER_ID_CHARS: usize = 200;
pub const MAX_EMAIL_CHARS: usize = 320;

/// Who the link signs in, and where to.
pub struct LinkRequest<'a> {
    pub kind: LoginKind,
    /// Required for a tenant link, absent for an operator link.
    pub tenant_id: Option<Uuid>,
    pub user_id: &'a str,
    pub email: Option<&'a str>,
    /// A path on this broker (a query is allowed).
    pub return_to: Option<&'a str>,
}

pub struct LoginLink {
    pub url: String,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginLinkError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

pub struct LoginLinks {
    db: PgPool,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
}

impl LoginLinks {
    pub fn new(db: PgPool, clock: Arc<dyn Clock>, config: Arc<Config>) -> Self {
        LoginLinks { db, clock, config }
    }

    pub async fn create(&self, request: LinkRequest<'_>) -> Result<LoginLink, LoginLinkError> {
        let user_id = text_field("user_id", request.user_id, MAX_USER_ID_CHARS)?;
        let email = match request.email {
            None => None,
            Some(email) => {
                let email = text_field("email", email, MAX_EMAIL_CHARS)?;
                if !email.contains('@') || email.contains(char::is_whitespace) {
                    return Err(InvalidInput::new("email", "is not an email address").into());
                }
                Some(email)
            }
        };
        let return_to = match request.return_to {
            None => None,
            Some(raw) => Some(
                consent::validate_return_to(&self.config, raw).ok_or_else(|| {
                    InvalidInput::new(
                    "return_to",
                    "must be a path on this broker (same origin), such as /settings/connections",
                )
                })?,
            ),
        };
        let token = secrets::random_token(32);
        let now = self.clock.now();
        let expires_at = now + LOGIN_TOKEN_LIFETIME;
        login_tokens::insert_login_token(
            &self.db,
            login_tokens::NewLoginToken {
                token_hash: &secrets::sha256_secret(&token),
                kind: request.kind,
                tenant_id: request.tenant_id,
                user_id,
                email,
                return_to: return_to.as_deref(),
                now,
                expires_at,
            },
        )
        .await?;
        Ok(LoginLink {
            url: format!("{}/login/{}", self.config.public_url, token.expose_secret()),
            expires_at,
        })
    }
}
