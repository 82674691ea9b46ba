//! The Login with Amazon token endpoint: code exchange, refresh and client
//! credentials.
//!
//! Written on reqwest directly rather than the `oauth2` crate: LWA's outcomes
//! must be told apart by HTTP status *and* error code (`invalid_grant` ends one
//! seller's connection, `invalid_client` is an app-wide alarm that must never
//! touch sellers, 429/5xx/garbage are passing), the code exchange must never be
//! retried while refreshes retry with jitter, and a rejected client secret falls
//! back to the previous one. `oauth2`'s typed errors fold a non-JSON 5xx into a
//! parse error without its status, so we would re-implement most of it anyway.
//!
//! Never logs a token, code or client secret; `Debug` of every type here
//! redacts them.

use crate::domain::text_enum;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::time::{Duration, Instant};
use url::Url;

text_enum! {
    /// The grantless (client credentials) scopes SP-API apps use.
    pub enum GrantlessScope ("grantless scope (sellingpartnerapi::notifications or sellingpartnerapi::client_credential:rotation)") {
        Notifications => "sellingpartnerapi::notifications",
        ClientCredentialRotation => "sellingpartnerapi::client_credential:rotation",
    }
}

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A call with less time than this left before its deadline is not started.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// The HTTP client for every call to Amazon (and the sandbox standing in for
/// it). A failure to build it stops start-up: a client without its timeouts
/// would let one slow answer hold a refresh for ever.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TOTAL_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sp-broker/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The longest token lifetime believed: Amazon's are an hour. A larger
/// `expires_in` (or one that would overflow a timestamp) is cut to this.
pub const MAX_TOKEN_LIFETIME: time::Duration = time::Duration::hours(24);

#[derive(Deserialize)]
struct TokenBody {
    access_token: SecretString,
    #[serde(default)]
    refresh_token: Option<SecretString>,
    #[serde(default)]
    token_type: Option<String>,
    expires_in: i64,
}

/// A successful answer of the token endpoint. Deliberately not `Debug`.
pub struct Tokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// Seconds, as Amazon said, within 1 ..= [`MAX_TOKEN_LIFETIME`].
    pub expires_in: i64,
    /// The client secret that worked (its id in `app_secret`).
    pub secret_id: uuid::Uuid,
    /// The secrets refused before it, if any.
    pub refused_first: Vec<uuid::Uuid>,
}

impl Tokens {
    pub fn lifetime(&self) -> time::Duration {
        time::Duration::seconds(self.expires_in)
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Why a passing failure happened (for logs and metrics; never secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passing {
    Timeout,
    Connect,
    ServerError,
    Throttled,
    Garbage,
}

impl Passing {
    pub fn as_str(self) -> &'static str {
        match self {
            Passing::Timeout => "timeout",
            Passing::Connect => "connect",
            Passing::ServerError => "server_error",
            Passing::Throttled => "throttled",
            Passing::Garbage => "garbage",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LwaError {
    /// The code or refresh token is no good: expired, reused, revoked.
    #[error("Amazon refused the grant (invalid_grant)")]
    InvalidGrant { description: Option<String> },
    /// Every configured client secret was refused: the app's credentials are at fault.
    #[error("Amazon rejected the app's client credentials ({error})")]
    ClientRejected { error: String },
    /// The request or the app is misconfigured (invalid_request, invalid_scope, …).
    #[error("Amazon refused the request ({error})")]
    Refused {
        error: String,
        description: Option<String>,
    },
    /// Timeout, 5xx, 429 or an unreadable answer.
    #[error("Amazon's token endpoint is unavailable ({})", .0.as_str())]
    Unavailable(Passing),
}

impl LwaError {
    pub fn is_passing(&self) -> bool {
        matches!(self, LwaError::Unavailable(_))
    }
}

/// One grant request; its `Debug` shows only the grant type.
pub enum Grant<'a> {
    AuthorizationCode {
        code: &'a SecretString,
        redirect_uri: &'a str,
    },
    RefreshToken(&'a SecretString),
    ClientCredentials {
        scope: GrantlessScope,
    },
}

impl Grant<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Grant::AuthorizationCode { .. } => "authorization_code",
            Grant::RefreshToken(_) => "refresh_token",
            Grant::ClientCredentials { .. } => "client_credentials",
        }
    }
}

#[derive(Clone)]
pub struct LwaClient {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
}

impl LwaClient {
    pub fn new(http: reqwest::Client, token_url: Url, client_id: String) -> Self {
        Self {
            http,
            token_url,
            client_id,
        }
    }

    /// One grant, trying each client secret in turn (in the order given, each
    /// with its id), moving to the next only on
    /// `invalid_client`/`unauthorized_client` (client authentication happens
    /// before the grant is looked at, so a code is not spent by a refused
    /// secret). Passing failures are returned at once; retrying is the
    /// caller's choice. No request runs past `deadline`.
    pub async fn request(
        &self,
        grant: &Grant<'_>,
        secrets: &[(uuid::Uuid, &SecretString)],
        deadline: Instant,
    ) -> Result<Tokens, LwaError> {
        let mut last = LwaError::ClientRejected {
            error: "no client secret configured".into(),
        };
        let mut refused = Vec::new();
        for (id, secret) in secrets {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < MIN_ATTEMPT {
                return Err(LwaError::Unavailable(Passing::Timeout));
            }
            match self
                .request_once(grant, secret, left.min(TOTAL_TIMEOUT))
                .await
            {
                Ok(mut tokens) => {
                    tokens.secret_id = *id;
                    tokens.refused_first = refused;
                    return Ok(tokens);
                }
                Err(e @ LwaError::ClientRejected { .. }) => {
                    tracing::warn!(
                        grant = grant.name(),
                        secret_id = %id,
                        "LWA rejected the app's client secret"
                    );
                    refused.push(*id);
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn request_once(
        &self,
        grant: &Grant<'_>,
        secret: &SecretString,
        timeout: Duration,
    ) -> Result<Tokens, LwaError> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", grant.name())];
        match grant {
            Grant::AuthorizationCode { code, redirect_uri } => {
                form.push(("code", code.expose_secret()));
                form.push(("redirect_uri", redirect_uri));
            }
            Grant::RefreshToken(token) => form.push(("refresh_token", token.expose_secret())),
            Grant::ClientCredentials { scope } => form.push(("scope", scope.as_str())),
        }
        form.push(("client_id", &self.client_id));
        form.push(("client_secret", secret.expose_secret()));

        let started = std::time::Instant::now();
        let response = self
            .http
            .post(self.token_url.clone())
            .timeout(timeout)
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                LwaError::Unavailable(if e.is_timeout() {
                    Passing::Timeout
                } else {
                    Passing::Connect
                })
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            LwaError::Unavailable(if e.is_timeout() {
                Passing::Timeout
            } else {
                Passing::Garbage
            })
        })?;
        tracing::debug!(
            grant = grant.name(),
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "LWA token endpoint answered"
        );
        classify(status, &body)
    }
}

fn classify(status: reqwest::StatusCode, body: &[u8]) -> Result<Tokens, LwaError> {
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(LwaError::Unavailable(Passing::Throttled));
    }
    if status.is_server_error() {
        return Err(LwaError::Unavailable(Passing::ServerError));
    }
    if status.is_success() {
        let parsed: TokenBody =
            serde_json::from_slice(body).map_err(|_| LwaError::Unavailable(Passing::Garbage))?;
        if parsed.expires_in <= 0
            || parsed.access_token.expose_secret().is_empty()
            || parsed
                .token_type
                .as_deref()
                .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(LwaError::Unavailable(Passing::Garbage));
        }
        return Ok(Tokens {
            access_token: parsed.access_token,
            refresh_token: parsed
                .refresh_token
                .filter(|t| !t.expose_secret().is_empty()),
            expires_in: parsed.expires_in.min(MAX_TOKEN_LIFETIME.whole_seconds()),
            secret_id: uuid::Uuid::nil(),
            refused_first: Vec::new(),
        });
    }
    let Ok(error) = serde_json::from_slice::<ErrorBody>(body) else {
        return Err(LwaError::Unavailable(Passing::Garbage));
    };
    match error.error.as_str() {
        "invalid_grant" => Err(LwaError::InvalidGrant {
            description: error.error_description,
        }),
        "invalid_client" | "unauthorized_client" => {
            Err(LwaError::ClientRejected { error: error.error })
        }
        "server_error" | "temporarily_unavailable" => {
            Err(LwaError::Unavailable(Passing::ServerError))
        }
        _ => Err(LwaError::Refused {
            error: error.error,
            description: error.error_description,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn classification_follows_amazons_error_table() {
        let ok = classify(
            StatusCode::OK,
            br#"{"access_token":"Atza|a","token_type":"bearer","expires_in":3600,"refresh_token":"Atzr|r"}"#,
        );
        assert!(matches!(
            ok,
            Ok(Tokens {
                expires_in: 3600,
                refresh_token: Some(_),
                ..
            })
        ));
        let grant = classify(
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_grant","error_description":"x"}"#,
        );
        assert!(matches!(grant, Err(LwaError::InvalidGrant { .. })));
        let client = classify(StatusCode::UNAUTHORIZED, br#"{"error":"invalid_client"}"#);
        assert!(matches!(client, Err(LwaError::ClientRejected { .. })));
        let unauthorized = classify(
            StatusCode::BAD_REQUEST,
            br#"{"error":"unauthorized_client"}"#,
        );
        assert!(matches!(unauthorized, Err(LwaError::ClientRejected { .. })));
        let scope = classify(StatusCode::BAD_REQUEST, br#"{"error":"invalid_scope"}"#);
        assert!(matches!(scope, Err(LwaError::Refused { .. })));
        let centuries = classify(
            StatusCode::OK,
            br#"{"access_token":"Atza|a","expires_in":9223372036854775807}"#,
        );
        assert!(matches!(
            centuries,
            Ok(Tokens {
                expires_in: 86400,
                ..
            })
        ));
        for (status, body) in [
            (StatusCode::TOO_MANY_REQUESTS, &b""[..]),
            (StatusCode::BAD_GATEWAY, b"<html>"),
            (StatusCode::OK, b"not json"),
            (StatusCode::OK, br#"{"access_token":"a","expires_in":0}"#),
            (StatusCode::BAD_REQUEST, b"<html>"),
            (
                StatusCode::BAD_REQUEST,
                br#"{"error":"temporarily_unavailable"}"#,
            ),
        ] {
            assert!(
                matches!(classify(status, body), Err(LwaError::Unavailable(_))),
                "{status}"
            );
        }
    }
}
