//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! annotations (utoipa), so it cannot drift from the code.

use super::connections::{ConnectionJson, LastError};
use super::{app, connections, events, ops, tenants, tokens};
use crate::domain::Health;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An sp-broker API key (`spb_…`), with the scope each operation names.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "lwa_basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "`POST /auth/o2/token` only: any user name, an sp-broker API key as the password.",
                    ))
                    .build(),
            ),
        );
    }
}

/// A problem details answer (RFC 9457), as every `/v1` error is.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// `urn:sp-broker:problem:{code}`.
    #[schema(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// Machine-readable: `unauthenticated`, `insufficient_scope`,
    /// `invalid_request`, `rate_limited`, `not_found`, `service_unavailable`, …
    code: String,
}

/// The answers every operation can give besides its own (CONTRACT §10):
/// listed on each, so a client (or schemathesis) finds every status documented.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        let lwa = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("LwaErrorAnswer")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let is_lwa = path == "/auth/o2/token";
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let has_body = operation.request_body.is_some();
                let answers = &mut operation.responses.responses;
                let mut add = |status: &str, response: utoipa::openapi::Response| {
                    answers
                        .entry(status.to_owned())
                        .or_insert_with(|| response.into());
                };
                if is_lwa {
                    add("400", lwa("invalid_request, invalid_grant, unauthorized_client, unsupported_grant_type or invalid_scope"));
                    add("401", lwa("invalid_client"));
                    add("429", lwa("rate_limited: too many failed authentications from this address (Retry-After)"));
                    add("500", lwa("server_error"));
                    add("503", lwa("temporarily_unavailable (Retry-After)"));
                    continue;
                }
                add(
                    "400",
                    problem("invalid_request: the path, query or headers cannot be read"),
                );
                add(
                    "401",
                    problem("unauthenticated: missing, unknown or revoked API key"),
                );
                add("403", problem("insufficient_scope"));
                if has_body {
                    add(
                        "413",
                        problem("invalid_request: the body is larger than 64 KiB"),
                    );
                    add(
                        "415",
                        problem("invalid_request: the body is not application/json"),
                    );
                }
                add(
                    "422",
                    problem("invalid_request: a field is missing, malformed or out of its limits"),
                );
                add("429", problem("rate_limited: too many failed authentications from this address (Retry-After)"));
                add("500", problem("internal_error"));
                add(
                    "503",
                    problem("service_unavailable: the database is not answering (Retry-After)"),
                );
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "sp-broker", description = "Amazon SP-API connection broker: connections and fresh LWA access tokens for internal services. Errors are RFC 9457 problem details (application/problem+json) with a machine-readable `code`."),
    paths(
        tenants::list_tenants, tenants::create_tenant, tenants::create_login_link,
        connections::list_connections, connections::get_connection, connections::delete_connection,
        tokens::access_token, tokens::restricted_data_token, tokens::grantless_token,
        ops::summary, events::list_events,
        app::notifications, app::status, app::rotate_secret,
        crate::http::lwa_compat::token,
    ),
    components(schemas(ConnectionJson, Health, LastError, Problem, crate::http::lwa_compat::LwaErrorAnswer)),
    modifiers(&ApiKeyAuth, &CommonAnswers),
)]
pub struct ApiDoc;

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
