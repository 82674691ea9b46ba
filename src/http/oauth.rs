//! Connect, Reconnect, Amazon's callback and the app's Login URI. Handlers parse,
//! call `authorization`, and answer; no code, state or token reaches a log line
//! or a later URL.

use crate::amazon::consent;
use crate::amazon::lwa::LwaError;
use crate::amazon::marketplaces::{self, AccountType};
use crate::authorization::{self, Begin, Callback, CompleteError, Flow, Outcome};
use crate::db::oauth_states::StateProblem;
use crate::db::tenants;
use crate::http::pages::connections::{connection_not_found, CsrfForm};
use crate::http::pages::{current_auth, set_flash, PageError, SignedIn};
use crate::http::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::HashMap;
use tower_sessions::Session;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct ConnectForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    marketplace_id: String,
    #[serde(default)]
    account_type: String,
}

/// A redirect to Amazon that no cache keeps and no referrer follows.
fn redirect_to_amazon(status: StatusCode, url: &str) -> Response {
    (
        status,
        [(header::LOCATION, url), (header::CACHE_CONTROL, "no-store")],
    )
        .into_response()
}

/// `POST /settings/connections/connect`
pub async fn connect_post(
    State(state): State<AppState>,
    signed_in: SignedIn,
    headers: HeaderMap,
    Form(form): Form<ConnectForm>,
) -> Result<Response, PageError> {
    signed_in.check_form(&state, &headers, &form.csrf_token)?;
    let marketplace = marketplaces::find(&form.marketplace_id).ok_or_else(|| {
        PageError::start_again(
            StatusCode::BAD_REQUEST,
            "Unknown marketplace",
            "Choose one of the marketplaces in the list.",
        )
    })?;
    let account_type: AccountType = form.account_type.parse().map_err(|_| {
        PageError::start_again(
            StatusCode::BAD_REQUEST,
            "Unknown account type",
            "Choose Seller or Vendor.",
        )
    })?;
    tenants::update_last_marketplace(&state.db, signed_in.tenant_id, marketplace.id).await?;
    start(
        &state,
        &signed_in,
        marketplace,
        account_type,
        Flow::Connect,
        None,
    )
    .await
}

/// `POST /settings/connections/{id}/reconnect`
pub async fn reconnect_post(
    State(state): State<AppState>,
    signed_in: SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    signed_in.check_form(&state, &headers, &form.csrf_token)?;
    let id = Uuid::parse_str(&id).map_err(|_| connection_not_found())?;
    let connection = state
        .connections
        .find_for_tenant(signed_in.tenant_id, id)
        .await?
        .ok_or_else(connection_not_found)?;
    let marketplace = marketplaces::find(&connection.marketplace_id)
        .or_else(|| marketplaces::find(marketplaces::DEFAULT_MARKETPLACE_ID))
        .ok_or_else(connection_not_found)?;
    let account_type = connection.account_type;
    start(
        &state,
        &signed_in,
        marketplace,
        account_type,
        Flow::Reconnect(id),
        Some(&connection.selling_partner_id),
    )
    .await
}

async fn start(
    state: &AppState,
    signed_in: &SignedIn,
    marketplace: &'static marketplaces::Marketplace,
    account_type: AccountType,
    flow: Flow,
    expected_selling_partner_id: Option<&str>,
) -> Result<Response, PageError> {
    let oauth_state = state
        .authorizer
        .begin(Begin {
            tenant_id: signed_in.tenant_id,
            user_id: &signed_in.auth.user_id,
            session_binding: &signed_in.auth.binding_hash(),
            marketplace,
            account_type,
            flow,
            expected_selling_partner_id,
        })
        .await?;
    let url = consent::consent_url(
        &state.config,
        marketplace,
        account_type,
        authorization::expose(&oauth_state),
    );
    tracing::info!(
        marketplace = marketplace.id,
        account_type = account_type.as_str(),
        ?flow,
        "authorization started"
    );
    Ok(redirect_to_amazon(StatusCode::SEE_OTHER, &url))
}

fn state_problem_page(problem: StateProblem) -> PageError {
    let message = match problem {
        StateProblem::Expired => "This authorization took longer than 15 minutes, so it expired before Amazon sent you back.",
        StateProblem::OtherSession => "This authorization was started in another browser or sign-in session, so it cannot be finished here.",
        StateProblem::UnknownOrUsed => "This authorization link is unknown or was already used. If you just connected, your account is listed on the Connections page.",
    };
    PageError::start_again(
        StatusCode::BAD_REQUEST,
        "We could not finish connecting",
        message,
    )
}

fn exchange_problem_page(error: &LwaError) -> PageError {
    let message = match error {
        LwaError::InvalidGrant { .. } => "Amazon did not accept the authorization (the code was expired or already used).",
        LwaError::ClientRejected { .. } | LwaError::Refused { .. } => "Amazon refused this app's credentials. This is a problem on our side, not with your account; our team has been alerted.",
        LwaError::Unavailable(_) => "Amazon did not answer in time. Your account was not connected.",
    };
    PageError::start_again(
        StatusCode::BAD_GATEWAY,
        "Amazon did not complete the connection",
        message,
    )
}

/// Amazon's answer on the callback URL, taken from its decoded query (the
/// last value of a repeated name wins, as axum's `Query` gives it). Fuzzed
/// (`fuzz/fuzz_targets/callback_query.rs`). Deliberately not `Debug`: the
/// code is a credential.
pub enum CallbackQuery<'a> {
    /// `state`, `selling_partner_id` and `spapi_oauth_code`, all non-empty.
    Complete {
        state: &'a str,
        selling_partner_id: &'a str,
        code: SecretString,
    },
    /// Something is missing: the seller declined, or Amazon answered an
    /// error. `state` when it came back, to count the return.
    Incomplete { state: Option<&'a str> },
}

impl<'a> CallbackQuery<'a> {
    pub fn from_params(params: &'a HashMap<String, String>) -> CallbackQuery<'a> {
        let param = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        match (
            param("state"),
            param("selling_partner_id"),
            param("spapi_oauth_code"),
        ) {
            (Some(state), Some(selling_partner_id), Some(code)) => CallbackQuery::Complete {
                state,
                selling_partner_id,
                code: SecretString::from(code.to_owned()),
            },
            (state, _, _) => CallbackQuery::Incomplete { state },
        }
    }
}

/// `GET /oauth/amazon/callback?state=…&selling_partner_id=…&spapi_oauth_code=…`
pub async fn callback(
    State(state): State<AppState>,
    session: Session,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let (oauth_state, selling_partner_id, code) = match CallbackQuery::from_params(&params) {
        CallbackQuery::Complete {
            state,
            selling_partner_id,
            code,
        } => (state, selling_partner_id, code),
        CallbackQuery::Incomplete { state: returned } => {
            tracing::info!("callback refused: missing parameters");
            if let Some(oauth_state) = returned {
                // The seller came back without a code (declined, or Amazon's error).
                state
                    .authorizer
                    .record_return(&crate::secrets::sha256(oauth_state), false)
                    .await;
            }
            return Err(PageError::start_again(
                StatusCode::BAD_REQUEST,
                "We could not finish connecting",
                "Amazon's answer was incomplete (state, selling_partner_id and spapi_oauth_code are all needed).",
            ));
        }
    };
    let auth = current_auth(&state, &session).await?;
    let binding = auth.as_ref().map(|a| a.binding_hash());
    let result = state
        .authorizer
        .complete(Callback {
            oauth_state,
            session_binding: binding.as_deref(),
            selling_partner_id,
            code,
        })
        .await;
    let outcome = match result {
        Ok((outcome, _)) => outcome,
        Err(CompleteError::State(problem)) => {
            tracing::info!(?problem, "callback refused: state not usable");
            return Err(state_problem_page(problem));
        }
        Err(CompleteError::BadSellingPartnerId) => {
            return Err(PageError::start_again(
                StatusCode::BAD_REQUEST,
                "We could not finish connecting",
                "Amazon's answer named no valid selling partner account.",
            ))
        }
        Err(CompleteError::Exchange(error)) => {
            tracing::warn!(error = %error, "code exchange failed");
            return Err(exchange_problem_page(&error));
        }
        Err(CompleteError::NoRefreshToken) => {
            tracing::warn!("code exchange answered without a refresh token");
            return Err(exchange_problem_page(&LwaError::Unavailable(
                crate::amazon::lwa::Passing::Garbage,
            )));
        }
        Err(CompleteError::Internal(error)) => return Err(error.into()),
    };
    let text = match outcome {
        Outcome::Connected { selling_partner_id, region } => format!(
            "Connected Amazon account {selling_partner_id} ({}). The app can now work with it.",
            region.label()
        ),
        Outcome::Reconnected { selling_partner_id, region } => format!(
            "Reconnected Amazon account {selling_partner_id} ({}). Its authorization is renewed for 365 days.",
            region.label()
        ),
        Outcome::ReconnectedOtherAccount { selling_partner_id, expected_selling_partner_id, region, is_new } => format!(
            "You signed in to Amazon as {selling_partner_id}, not {expected_selling_partner_id}. \
             {selling_partner_id} ({}) was {} as its own connection; {expected_selling_partner_id} is unchanged. \
             To reconnect {expected_selling_partner_id}, click its Reconnect button and sign in to that account.",
            region.label(),
            if is_new { "added" } else { "reconnected" }
        ),
    };
    set_flash(&session, "success", text).await?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/settings/connections"),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response())
}

/// `GET /oauth/amazon/login?amazon_callback_uri=…&amazon_state=…&selling_partner_id=…[&version=beta]`
/// The app's Login URI, where Amazon's Appstore and "Re-authorize" start.
pub async fn login_uri(
    State(state): State<AppState>,
    session: Session,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let Some(auth) = current_auth(&state, &session).await? else {
        return Err(PageError::new(
            StatusCode::UNAUTHORIZED,
            "Please start from your app",
            "To authorize this app from Amazon, first sign in to your app, open Settings → Connections there, and then choose Authorize again on Amazon.",
        ));
    };
    let Some(tenant_id) = auth.tenant_id else {
        return Err(PageError::not_signed_in());
    };
    let refuse = |why: &str| {
        tracing::info!(reason = why, "Login URI refused");
        PageError::start_again(
            StatusCode::BAD_REQUEST,
            "This authorization request is not valid",
            "The link that brought you here did not come from Amazon's Seller Central or Vendor Central, so we did not follow it.",
        )
    };
    let callback_uri = params
        .get("amazon_callback_uri")
        .and_then(|raw| consent::validate_amazon_callback_uri(&state.config, raw))
        .ok_or_else(|| refuse("amazon_callback_uri not allowed"))?;
    let amazon_state = params
        .get("amazon_state")
        .filter(|v| !v.is_empty() && v.len() <= 2048)
        .ok_or_else(|| refuse("amazon_state missing"))?;
    let expected = params
        .get("selling_partner_id")
        .map(String::as_str)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()));

    let tenant = tenants::find_tenant(&state.db, tenant_id)
        .await?
        .ok_or_else(PageError::not_signed_in)?;
    let (marketplace, account_type) = authorization::marketplace_for_callback_host(
        callback_uri.host_str().unwrap_or_default(),
        tenant
            .last_marketplace_id
            .as_deref()
            .unwrap_or(marketplaces::DEFAULT_MARKETPLACE_ID),
    );
    let oauth_state = state
        .authorizer
        .begin(Begin {
            tenant_id,
            user_id: &auth.user_id,
            session_binding: &auth.binding_hash(),
            marketplace,
            account_type,
            flow: Flow::LoginUri,
            expected_selling_partner_id: expected,
        })
        .await?;
    let mut target = callback_uri;
    {
        let mut query = target.query_pairs_mut();
        query
            .append_pair("redirect_uri", &state.config.redirect_uri())
            .append_pair("amazon_state", amazon_state)
            .append_pair("state", authorization::expose(&oauth_state));
        if state.config.app_draft {
            query.append_pair("version", "beta");
        }
    }
    tracing::info!(region = %marketplace.region, "Login URI authorization started");
    Ok(redirect_to_amazon(StatusCode::FOUND, target.as_str()))
}
