//! Settings → Connections: the page, and Disconnect.

use super::{render, set_flash, take_flash, Flash, PageError, SignedIn};
use crate::amazon::marketplaces::{self, Region, MARKETPLACES};
use crate::db::connections::ConnectionRow;
use crate::db::tenants;
use crate::domain::{ConnectionStatus, Health};
use crate::http::AppState;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Redirect, Response};
use axum::Form;
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

pub struct MarketplaceOption {
    pub id: &'static str,
    pub country: &'static str,
    pub selected: bool,
}

pub struct MarketplaceGroup {
    pub label: &'static str,
    pub options: Vec<MarketplaceOption>,
}

pub struct ConnectionView {
    pub id: Uuid,
    pub selling_partner_id: String,
    pub store_name: Option<String>,
    pub status: &'static str,
    pub health: &'static str,
    /// The seller has something to do (reconnect, or see why verification failed).
    pub needs_seller: bool,
    pub status_label: &'static str,
    pub status_explanation: String,
    pub account_type_label: &'static str,
    pub region_label: &'static str,
    pub marketplace_label: String,
    /// The marketplaces verification found, by name.
    pub marketplaces_found: String,
    pub authorized_at: String,
    pub authorization_expires_at: String,
    pub last_refresh_at: String,
    pub last_error: String,
}

#[derive(Template)]
#[template(path = "connections.html")]
struct ConnectionsPage {
    tenant_name: String,
    csrf_token: String,
    flash: Option<Flash>,
    marketplace_groups: Vec<MarketplaceGroup>,
    connections: Vec<ConnectionView>,
    /// How many connections need the seller (the banner).
    attention: usize,
}

pub fn human_time(at: Option<OffsetDateTime>) -> String {
    const FORMAT: &[time::format_description::FormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    match at {
        Some(at) => at
            .to_offset(time::UtcOffset::UTC)
            .format(FORMAT)
            .unwrap_or_default(),
        None => "—".to_owned(),
    }
}

fn marketplace_label(id: &str) -> String {
    marketplaces::find(id)
        .map(|m| format!("{} ({})", m.country, m.id))
        .unwrap_or_else(|| id.to_owned())
}

fn view(row: ConnectionRow) -> ConnectionView {
    let expires = human_time(row.authorization_expires_at);
    let verification_failed = row.last_error_code.as_deref() == Some("verification_failed");
    let (status_label, status_explanation, needs_seller) = match (row.status, row.health) {
        (ConnectionStatus::Active, Health::Expiring) => (
            "Connected",
            format!(
                "Working, but Amazon ends this authorization on {expires}: reconnect before then to keep imports running."
            ),
            true,
        ),
        (ConnectionStatus::Active, Health::Degraded) if verification_failed => (
            "Connected",
            "Tokens work, but Amazon would not show this account's marketplaces, so some features may fail: see Last error for what to do.".to_owned(),
            true,
        ),
        (ConnectionStatus::Active, Health::Degraded) => (
            "Connected",
            "Working, but the last attempt to renew access failed for a passing reason (see Last error). We retry by ourselves: nothing to do unless it keeps failing.".to_owned(),
            false,
        ),
        (ConnectionStatus::Active, _) => ("Connected", "Working. Nothing to do.".to_owned(), false),
        (ConnectionStatus::NeedsReauth, _) => (
            "Needs reconnecting",
            "Amazon no longer accepts this authorization (it was revoked or has expired): click Reconnect and approve access again on Amazon.".to_owned(),
            true,
        ),
        (ConnectionStatus::Disconnected, _) => (
            "Disconnected",
            "Disconnected: we erased its access. Click Reconnect to connect it again.".to_owned(),
            false,
        ),
    };
    let marketplaces_found = match &row.marketplace_ids {
        None => "Not verified yet".to_owned(),
        Some(ids) if ids.is_empty() => "None found".to_owned(),
        Some(ids) => ids
            .iter()
            .map(|id| marketplaces::find(id).map_or(id.as_str(), |m| m.country))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let last_error = match (&row.last_error_message, row.last_error_at) {
        (Some(message), at) => format!("{message} ({})", human_time(at)),
        _ => "None".to_owned(),
    };
    ConnectionView {
        id: row.id,
        selling_partner_id: row.selling_partner_id,
        store_name: row.store_name,
        status: row.status.as_str(),
        health: row.health.as_str(),
        needs_seller,
        status_label,
        status_explanation,
        account_type_label: row.account_type.label(),
        region_label: row.region.label(),
        marketplace_label: marketplace_label(&row.marketplace_id),
        marketplaces_found,
        authorized_at: human_time(row.authorized_at),
        authorization_expires_at: expires,
        last_refresh_at: human_time(row.last_refresh_at),
        last_error,
    }
}

fn marketplace_groups(selected: &str) -> Vec<MarketplaceGroup> {
    Region::ALL
        .iter()
        .map(|region| MarketplaceGroup {
            label: region.label(),
            options: MARKETPLACES
                .iter()
                .filter(|m| m.region == *region)
                .map(|m| MarketplaceOption {
                    id: m.id,
                    country: m.country,
                    selected: m.id == selected,
                })
                .collect(),
        })
        .collect()
}

impl ConnectionsPage {
    fn with_attention(mut self) -> Self {
        self.attention = self.connections.iter().filter(|c| c.needs_seller).count();
        self
    }
}

/// `GET /settings/connections`
pub async fn connections_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
) -> Result<Response, PageError> {
    let tenant = tenants::find_tenant(&state.db, signed_in.tenant_id)
        .await?
        .ok_or_else(PageError::not_signed_in)?;
    let rows = state.connections.list_for_tenant(tenant.id).await?;
    let flash = take_flash(&signed_in.session).await?;
    let selected = tenant
        .last_marketplace_id
        .as_deref()
        .unwrap_or(marketplaces::DEFAULT_MARKETPLACE_ID);
    render(
        &ConnectionsPage {
            tenant_name: tenant.name,
            csrf_token: signed_in.auth.csrf_token.clone(),
            flash,
            marketplace_groups: marketplace_groups(selected),
            attention: 0,
            connections: rows.into_iter().map(view).collect(),
        }
        .with_attention(),
    )
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf_token: String,
}

pub fn connection_not_found() -> PageError {
    PageError::new(
        StatusCode::NOT_FOUND,
        "Connection not found",
        "This connection does not exist in your account, so nothing was changed.",
    )
    .link("/settings/connections", "Back to Connections")
}

/// `POST /settings/connections/{id}/disconnect`
pub async fn disconnect_post(
    State(state): State<AppState>,
    signed_in: SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    signed_in.check_form(&state, &headers, &form.csrf_token)?;
    let id = Uuid::parse_str(&id).map_err(|_| connection_not_found())?;
    let disconnected = state
        .connections
        .disconnect(signed_in.tenant_id, id, &signed_in.actor())
        .await?
        .ok_or_else(connection_not_found)?;
    set_flash(
        &signed_in.session,
        "success",
        format!(
            "Disconnected {}. We erased its stored access; the app can no longer act for this account.",
            disconnected.selling_partner_id
        ),
    )
    .await?;
    Ok(axum::response::IntoResponse::into_response(Redirect::to(
        "/settings/connections",
    )))
}
