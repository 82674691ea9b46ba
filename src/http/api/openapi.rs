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
    components(schemas(ConnectionJson, Health, LastError)),
    modifiers(&ApiKeyAuth),
)]
pub struct ApiDoc;

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
