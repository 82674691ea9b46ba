//! The sandbox LWA token endpoint: `authorization_code` (single use, 5 minutes),
//! `refresh_token` (refused with `invalid_grant` once revoked) and
//! `client_credentials`, with Amazon's error shapes.

use super::{Sandbox, SandboxState, ACCESS_TOKEN_LIFETIME, CODE_LIFETIME};
use crate::secrets;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde_json::json;
use std::collections::HashMap;

use crate::amazon::lwa::GrantlessScope;

fn lwa_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn invalid_grant(parameter: &str) -> Response {
    let description = if parameter == "refresh_token" {
        "The request has an invalid grant parameter : refresh_token. User may have revoked or didn't grant the permission."
    } else {
        "The request has an invalid grant parameter : code"
    };
    lwa_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn internal() -> Response {
    lwa_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "Internal error",
    )
}

/// `POST /sandbox/auth/o2/token`, form-encoded (or JSON, as Amazon accepts).
pub async fn token_endpoint(
    State(state): SandboxState,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let params: HashMap<String, String> = if is_json {
        match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(_) => {
                return lwa_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Malformed request body",
                )
            }
        }
    } else {
        match serde_urlencoded::from_bytes(&body) {
            Ok(p) => p,
            Err(_) => {
                return lwa_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Malformed request body",
                )
            }
        }
    };
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());

    let (Some(client_id), Some(client_secret)) = (get("client_id"), get("client_secret")) else {
        return lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter : client_id or client_secret",
        );
    };
    if client_id != state.client_id {
        return lwa_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    // By hash: no comparison of the secret itself to time.
    let secret_ok = match state.accepts_secret(client_secret).await {
        Ok(ok) => ok,
        Err(_) => return internal(),
    };
    if !secret_ok {
        return lwa_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }

    match get("grant_type") {
        Some("authorization_code") => {
            authorization_code(&state, get("code"), get("redirect_uri"), client_id).await
        }
        Some("refresh_token") => refresh(&state, get("refresh_token"), client_id).await,
        Some("client_credentials") => client_credentials(&state, get("scope")).await,
        Some(_) => lwa_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server",
        ),
        None => lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter : grant_type",
        ),
    }
}

async fn issue_access_token(
    state: &Sandbox,
    seller: Option<&str>,
    scope: Option<&str>,
) -> Result<String, sqlx::Error> {
    let token = format!("Atza|sbx{}", secrets::random_token(48).expose_secret());
    sqlx::query("insert into sandbox_access_token (token_hash, selling_partner_id, scope, expires_at) values ($1, $2, $3, $4)")
        .bind(secrets::sha256(&token))
        .bind(seller)
        .bind(scope)
        .bind(state.now() + ACCESS_TOKEN_LIFETIME)
        .execute(&state.db)
        .await?;
    Ok(token)
}

fn token_answer(body: serde_json::Value) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

async fn authorization_code(
    state: &Sandbox,
    code: Option<&str>,
    redirect_uri: Option<&str>,
    client_id: &str,
) -> Response {
    let Some(code) = code else {
        return lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter : code",
        );
    };
    let now = state.now();
    // Single use: the first exchange marks it used, whatever happens next.
    let row: Result<Option<(String, String, Option<String>)>, _> = sqlx::query_as(
        "update sandbox_authorization_code set used_at = $2
         where code_hash = $1 and used_at is null and expires_at > $2 and expires_at <= $2 + $3
         returning selling_partner_id, client_id, redirect_uri",
    )
    .bind(secrets::sha256(code))
    .bind(now)
    .bind(CODE_LIFETIME)
    .fetch_optional(&state.db)
    .await;
    let (seller, code_client, code_redirect) = match row {
        Ok(Some(row)) => row,
        Ok(None) => return invalid_grant("code"),
        Err(_) => return internal(),
    };
    if code_client != client_id
        || (code_redirect.is_some()
            && redirect_uri.is_some()
            && code_redirect.as_deref() != redirect_uri)
    {
        return invalid_grant("code");
    }
    let refresh_token = format!("Atzr|sbx{}", secrets::random_token(48).expose_secret());
    let stored = sqlx::query(
        "insert into sandbox_grant (refresh_token_hash, selling_partner_id, client_id, created_at) values ($1, $2, $3, $4)",
    )
    .bind(secrets::sha256(&refresh_token))
    .bind(&seller)
    .bind(client_id)
    .bind(now)
    .execute(&state.db)
    .await;
    if stored.is_err() {
        return internal();
    }
    match issue_access_token(state, Some(&seller), None).await {
        Ok(access_token) => token_answer(json!({
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_LIFETIME.whole_seconds(),
        })),
        Err(_) => internal(),
    }
}

async fn refresh(state: &Sandbox, refresh_token: Option<&str>, client_id: &str) -> Response {
    let Some(refresh_token) = refresh_token else {
        return lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter : refresh_token",
        );
    };
    let row: Result<Option<(String, String)>, _> = sqlx::query_as(
        "select selling_partner_id, client_id from sandbox_grant where refresh_token_hash = $1 and revoked_at is null",
    )
    .bind(secrets::sha256(refresh_token))
    .fetch_optional(&state.db)
    .await;
    let seller = match row {
        Ok(Some((seller, grant_client))) if grant_client == client_id => seller,
        Ok(_) => return invalid_grant("refresh_token"),
        Err(_) => return internal(),
    };
    match issue_access_token(state, Some(&seller), None).await {
        // Amazon answers a refresh with the same refresh token it was sent.
        Ok(access_token) => token_answer(json!({
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_LIFETIME.whole_seconds(),
        })),
        Err(_) => internal(),
    }
}

async fn client_credentials(state: &Sandbox, scope: Option<&str>) -> Response {
    let Some(scope) = scope.filter(|s| s.parse::<GrantlessScope>().is_ok()) else {
        return lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "The request has an invalid parameter : scope",
        );
    };
    match issue_access_token(state, None, Some(scope)).await {
        Ok(access_token) => token_answer(json!({
            "access_token": access_token,
            "scope": scope,
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_LIFETIME.whole_seconds(),
        })),
        Err(_) => internal(),
    }
}
