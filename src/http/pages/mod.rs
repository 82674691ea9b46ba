//! Browser pages (askama), authenticated by a server-side session that a
//! one-time login link starts. Every POST checks the session's CSRF token and,
//! when present, the `Origin` header.

mod charts;
pub mod connections;
pub mod ops;

use crate::db::login_tokens::{self, LoginKind};
use crate::error::Error;
use crate::http::AppState;
use crate::secrets;
use askama::Template;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use tower_sessions::Session;
use uuid::Uuid;

pub const SESSION_IDLE_TIMEOUT: Duration = Duration::hours(2);
pub const SESSION_ABSOLUTE_TIMEOUT: Duration = Duration::hours(12);

const AUTH_KEY: &str = "auth";
const FLASH_KEY: &str = "flash";

/// Who a browser session belongs to, kept server-side in the session record.
/// Holds the CSRF token and the OAuth binding: deliberately not `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct BrowserAuth {
    /// `None` for an operator session (ops dashboard).
    pub tenant_id: Option<Uuid>,
    pub user_id: String,
    pub email: Option<String>,
    pub csrf_token: String,
    /// Random value that OAuth states are bound to (stored there as its hash).
    pub binding: String,
    pub signed_in_at: i64,
}

impl BrowserAuth {
    pub fn binding_hash(&self) -> Vec<u8> {
        secrets::sha256(&self.binding)
    }
}

/// A one-line message shown once, after a redirect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flash {
    /// `success` or `error`.
    pub kind: String,
    pub text: String,
}

pub async fn set_flash(session: &Session, kind: &str, text: String) -> Result<(), Error> {
    session
        .insert(
            FLASH_KEY,
            Flash {
                kind: kind.to_owned(),
                text,
            },
        )
        .await?;
    Ok(())
}

pub async fn take_flash(session: &Session) -> Result<Option<Flash>, Error> {
    Ok(session.remove(FLASH_KEY).await?)
}

pub struct Link {
    pub href: String,
    pub label: String,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    message: &'a str,
    next_step: Option<&'a str>,
    link: Option<&'a Link>,
    incident: Option<&'a str>,
}

/// A page that says what went wrong and what to do next (boxed: errors stay
/// one pointer wide on the happy path).
#[derive(Debug)]
pub struct PageError(Box<PageErrorDetails>);

#[derive(Debug)]
pub struct PageErrorDetails {
    pub status: StatusCode,
    pub title: String,
    pub message: String,
    pub next_step: Option<String>,
    pub link: Option<(String, String)>,
    pub incident: Option<String>,
}

impl PageError {
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn new(status: StatusCode, title: impl Into<String>, message: impl Into<String>) -> Self {
        PageError(Box::new(PageErrorDetails {
            status,
            title: title.into(),
            message: message.into(),
            next_step: None,
            link: None,
            incident: None,
        }))
    }

    pub fn next_step(mut self, text: impl Into<String>) -> Self {
        self.0.next_step = Some(text.into());
        self
    }

    pub fn link(mut self, href: impl Into<String>, label: impl Into<String>) -> Self {
        self.0.link = Some((href.into(), label.into()));
        self
    }

    pub fn not_signed_in() -> Self {
        PageError::new(
            StatusCode::UNAUTHORIZED,
            "Please open this page from your app",
            "You are not signed in here. Open Settings → Connections from inside the app you use; it signs you in for you.",
        )
    }

    pub fn forbidden() -> Self {
        PageError::new(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "The form you sent did not come from this page in your current session, so nothing was changed.",
        )
        .link("/settings/connections", "Back to Connections")
    }

    pub fn start_again(status: StatusCode, title: &str, message: impl Into<String>) -> Self {
        PageError::new(status, title, message)
            .next_step("Nothing was changed. You can start again from the Connections page.")
            .link("/settings/connections", "Start again")
    }
}

impl From<Error> for PageError {
    fn from(error: Error) -> Self {
        let incident = Uuid::new_v4().to_string();
        tracing::error!(%incident, error = %error, "request failed");
        let mut page = PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong on our side",
            "We could not finish this. Please try again in a moment; if it keeps happening, contact support with the reference below.",
        );
        page.0.incident = Some(incident);
        page
    }
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        Error::from(error).into()
    }
}

impl From<tower_sessions::session::Error> for PageError {
    fn from(error: tower_sessions::session::Error) -> Self {
        Error::from(error).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let details = *self.0;
        let link = details.link.map(|(href, label)| Link { href, label });
        let page = MessagePage {
            title: &details.title,
            message: &details.message,
            next_step: details.next_step.as_deref(),
            link: link.as_ref(),
            incident: details.incident.as_deref(),
        };
        let body = page
            .render()
            .unwrap_or_else(|_| "Something went wrong.".to_owned());
        (
            details.status,
            [(header::CACHE_CONTROL, "no-store")],
            Html(body),
        )
            .into_response()
    }
}

/// Renders a template as an HTML page that is never cached.
pub fn render(template: &impl Template) -> Result<Response, PageError> {
    let body = template.render().map_err(Error::from)?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(body)).into_response())
}

/// A browser signed in to a tenant's Settings → Connections.
pub struct SignedIn {
    pub auth: BrowserAuth,
    pub tenant_id: Uuid,
    pub session: Session,
}

/// Reads the session's sign-in, enforcing the absolute timeout.
pub async fn current_auth(
    state: &AppState,
    session: &Session,
) -> Result<Option<BrowserAuth>, PageError> {
    let Some(auth) = session.get::<BrowserAuth>(AUTH_KEY).await? else {
        return Ok(None);
    };
    let signed_in_at = OffsetDateTime::from_unix_timestamp(auth.signed_in_at)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    if state.now() - signed_in_at > SESSION_ABSOLUTE_TIMEOUT {
        session.flush().await?;
        return Ok(None);
    }
    Ok(Some(auth))
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state)
            .await
            .map_err(|_| PageError::not_signed_in())?;
        let auth = current_auth(state, &session)
            .await?
            .ok_or_else(PageError::not_signed_in)?;
        let tenant_id = auth.tenant_id.ok_or_else(PageError::not_signed_in)?;
        Ok(SignedIn {
            auth,
            tenant_id,
            session,
        })
    }
}

impl SignedIn {
    /// The CSRF and `Origin` checks every POST passes before it changes anything.
    pub fn check_form(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        csrf_token: &str,
    ) -> Result<(), PageError> {
        check_origin(state, headers)?;
        if secrets::constant_time_eq(csrf_token, &self.auth.csrf_token) {
            Ok(())
        } else {
            tracing::warn!("form refused: CSRF token missing or wrong");
            Err(PageError::forbidden())
        }
    }

    pub fn actor(&self) -> String {
        format!("user:{}", self.auth.user_id)
    }
}

/// An `Origin` header, when present, must be sp-broker's own.
///
/// One exception: under `Referrer-Policy: no-referrer` (which every page sends,
/// as Amazon advises) browsers send `Origin: null` even on same-origin form
/// posts. `null` is accepted only together with `Sec-Fetch-Site: same-origin`,
/// a header pages cannot set; a cross-site form carries `cross-site` there.
/// The CSRF token is checked in every case.
pub fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), PageError> {
    let same_origin_fetch = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"same-origin");
    match headers.get(header::ORIGIN) {
        None => Ok(()),
        Some(origin) if origin.as_bytes() == state.config.public_url.as_bytes() => Ok(()),
        Some(origin) if origin.as_bytes() == b"null" && same_origin_fetch => Ok(()),
        Some(_) => {
            tracing::warn!("form refused: foreign Origin");
            Err(PageError::forbidden())
        }
    }
}

/// `GET /login/{token}`: consumes a one-time login token and starts a fresh session.
pub async fn login(
    State(state): State<AppState>,
    session: Session,
    Path(token): Path<String>,
    crate::http::ClientAddress(client): crate::http::ClientAddress,
) -> Result<Response, PageError> {
    let used = || {
        PageError::new(
            StatusCode::BAD_REQUEST,
            "This sign-in link no longer works",
            "Sign-in links work once and for 10 minutes. This one is used, expired or unknown.",
        )
        .next_step("Open Settings → Connections again from your app to get a new one.")
    };
    let throttle = state.api_keys.throttle();
    if let Some(Err(retry)) = client.map(|c| throttle.check(c)) {
        let mut page = PageError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts",
            format!(
                "Too many sign-in links that do not work came from your network. Wait {} seconds, then open Settings → Connections again from your app.",
                retry.as_secs().max(1)
            ),
        )
        .into_response();
        if let Ok(value) = axum::http::HeaderValue::from_str(&retry.as_secs().max(1).to_string()) {
            page.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        return Ok(page);
    }
    let consumed = login_tokens::consume_login_token(&state.db, &secrets::sha256(&token)).await?;
    let Some(login) = consumed.filter(|t| t.expires_at > state.now()) else {
        tracing::info!("sign-in refused: login token used, expired or unknown");
        if let Some(client) = client {
            throttle.failed(client);
        }
        return Err(used());
    };
    // A fresh session: the old id (if any) is dropped so it cannot be fixated.
    session.clear().await;
    session.cycle_id().await?;
    let auth = BrowserAuth {
        tenant_id: login.tenant_id,
        user_id: login.user_id,
        email: login.email,
        csrf_token: secrets::random_token(32).expose_secret().to_owned(),
        binding: secrets::random_token(32).expose_secret().to_owned(),
        signed_in_at: state.now().unix_timestamp(),
    };
    session.insert(AUTH_KEY, &auth).await?;
    tracing::info!(kind = %login.kind, user = %auth.user_id, "browser signed in with a login link");
    let default = if login.kind == LoginKind::Ops {
        "/ops"
    } else {
        "/settings/connections"
    };
    // Checked when the link was made; checked again here, so a stored value
    // can never send the browser off our origin.
    let target = login
        .return_to
        .and_then(|raw| crate::amazon::consent::validate_return_to(&state.config, &raw))
        .unwrap_or_else(|| default.to_owned());
    Ok(([(header::CACHE_CONTROL, "no-store")], Redirect::to(&target)).into_response())
}

/// `POST /logout`: ends the session (its row is deleted); `csrf_token` required.
pub async fn logout(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    axum::Form(form): axum::Form<connections::CsrfForm>,
) -> Result<Response, PageError> {
    check_origin(&state, &headers)?;
    let auth: Option<BrowserAuth> = session.get(AUTH_KEY).await?;
    if let Some(auth) = auth {
        if !secrets::constant_time_eq(&form.csrf_token, &auth.csrf_token) {
            return Err(PageError::forbidden());
        }
        session.delete().await?;
        tracing::info!(user = %auth.user_id, "browser signed out");
    }
    Ok(Redirect::to("/signed-out").into_response())
}

/// `GET /signed-out`
pub async fn signed_out() -> Result<Response, PageError> {
    render(&MessagePage {
        title: "You are signed out",
        message: "This browser's session has ended. Open Settings → Connections from your app to sign in again.",
        next_step: None,
        link: None,
        incident: None,
    })
}

pub async fn not_found() -> PageError {
    PageError::new(
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is nothing at this address.",
    )
}
