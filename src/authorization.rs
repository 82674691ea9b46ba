//! The SP-API website authorization workflow, apart from HTTP: pending
//! authorizations (`state`), and completing one (exchange the code exactly once,
//! seal and store the tokens, upsert the connection, audit).
//!
//! Tenant, region and redirect URI come only from the stored pending
//! authorization, never from the callback's parameters. Never logs a code,
//! state or token.

use crate::amazon::lwa::{Grant, LwaError};
use crate::amazon::marketplaces::{self, AccountType, Marketplace, Region};
use crate::amazon::spapi;
use crate::app::AppState;
use crate::crypto::{Purpose, SealContext};
use crate::db::audit::{self, AuditTarget};
use crate::db::connections;
use crate::db::oauth_states::{self, NewPendingAuthorization, PendingAuthorization, StateProblem};
use crate::error::Error;
use crate::secrets;
use secrecy::{ExposeSecret, SecretString};
use time::Duration;
use uuid::Uuid;

pub const STATE_LIFETIME: Duration = Duration::minutes(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Connect,
    Reconnect(Uuid),
    LoginUri,
}

pub struct Begin<'a> {
    pub tenant_id: Uuid,
    pub user_id: &'a str,
    pub session_binding: &'a [u8],
    pub marketplace: &'a Marketplace,
    pub account_type: AccountType,
    pub flow: Flow,
    pub expected_selling_partner_id: Option<&'a str>,
}

/// Records a pending authorization and returns its `state` (256 random bits).
pub async fn begin(state: &AppState, begin: Begin<'_>) -> Result<SecretString, Error> {
    let oauth_state = secrets::random_token(32);
    let now = state.now();
    let (flow, reconnect_id) = match begin.flow {
        Flow::Connect => ("connect", None),
        Flow::Reconnect(id) => ("reconnect", Some(id)),
        Flow::LoginUri => ("login_uri", None),
    };
    oauth_states::insert_pending(
        &state.db,
        NewPendingAuthorization {
            state_hash: &secrets::sha256_secret(&oauth_state),
            session_binding: begin.session_binding,
            tenant_id: begin.tenant_id,
            user_id: begin.user_id,
            flow,
            marketplace_id: begin.marketplace.id,
            account_type: begin.account_type.as_str(),
            region: begin.marketplace.region.as_str(),
            redirect_uri: &state.config.redirect_uri(),
            reconnect_connection_id: reconnect_id,
            expected_selling_partner_id: begin.expected_selling_partner_id,
            now,
            expires_at: now + STATE_LIFETIME,
        },
    )
    .await?;
    Ok(oauth_state)
}

#[derive(Debug)]
pub enum CompleteError {
    /// Unknown, used, expired or another session's state. Nothing was exchanged.
    State(StateProblem),
    /// The selling partner id Amazon sent is not plausible.
    BadSellingPartnerId,
    /// Amazon refused the code or could not be reached; nothing stored.
    Exchange(LwaError),
    /// Amazon answered without a refresh token.
    NoRefreshToken,
    Internal(Error),
}

impl<E: Into<Error>> From<E> for CompleteError {
    fn from(e: E) -> Self {
        CompleteError::Internal(e.into())
    }
}

/// What happened, for the message the seller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Connected {
        selling_partner_id: String,
        region: Region,
    },
    Reconnected {
        selling_partner_id: String,
        region: Region,
    },
    /// A reconnect came back with another account: stored as its own connection.
    ReconnectedOtherAccount {
        selling_partner_id: String,
        expected_selling_partner_id: String,
        region: Region,
        is_new: bool,
    },
}

pub struct Callback<'a> {
    pub oauth_state: &'a str,
    pub session_binding: Option<&'a [u8]>,
    pub selling_partner_id: &'a str,
    pub code: SecretString,
}

fn is_plausible_selling_partner_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Completes an authorization: consumes the state atomically, exchanges the
/// code exactly once, stores the tokens sealed and upserts the connection.
pub async fn complete(
    state: &AppState,
    callback: Callback<'_>,
) -> Result<(Outcome, Uuid), CompleteError> {
    let now = state.now();
    let state_hash = secrets::sha256(callback.oauth_state);
    let pending = match callback.session_binding {
        Some(binding) => {
            oauth_states::consume_pending(&state.db, &state_hash, binding, now).await?
        }
        None => None,
    };
    let Some(pending) = pending else {
        let problem =
            oauth_states::diagnose(&state.db, &state_hash, callback.session_binding, now).await?;
        return Err(CompleteError::State(problem));
    };
    if !is_plausible_selling_partner_id(callback.selling_partner_id) {
        return Err(CompleteError::BadSellingPartnerId);
    }
    let region: Region = pending
        .region
        .parse()
        .map_err(|_| CompleteError::BadSellingPartnerId)?;

    // Exactly one request: a code exchange is never retried.
    let started = std::time::Instant::now();
    let exchanged = state
        .lwa
        .request(
            &Grant::AuthorizationCode {
                code: &callback.code,
                redirect_uri: &pending.redirect_uri,
            },
            &state.config.lwa_client_secrets,
        )
        .await;
    crate::metrics::lwa_call(
        "authorization_code",
        if exchanged.is_ok() { "ok" } else { "failed" },
        started.elapsed().as_secs_f64(),
    );
    let tokens = exchanged.map_err(CompleteError::Exchange)?;
    let refresh_token = tokens.refresh_token.ok_or(CompleteError::NoRefreshToken)?;
    let access_expires_at = now + Duration::seconds(tokens.expires_in);

    let (connection_id, is_new) = store(
        state,
        &pending,
        callback.selling_partner_id,
        &refresh_token,
        &tokens.access_token,
        access_expires_at,
    )
    .await?;

    if pending.account_type == "seller" {
        verify_seller(state, connection_id, region, &tokens.access_token).await;
    }

    let selling_partner_id = callback.selling_partner_id.to_owned();
    let outcome = match (
        &pending.expected_selling_partner_id,
        pending.reconnect_connection_id,
    ) {
        (Some(expected), Some(_)) if *expected != selling_partner_id => {
            Outcome::ReconnectedOtherAccount {
                selling_partner_id,
                expected_selling_partner_id: expected.clone(),
                region,
                is_new,
            }
        }
        _ if is_new => Outcome::Connected {
            selling_partner_id,
            region,
        },
        _ => Outcome::Reconnected {
            selling_partner_id,
            region,
        },
    };
    Ok((outcome, connection_id))
}

async fn store(
    state: &AppState,
    pending: &PendingAuthorization,
    selling_partner_id: &str,
    refresh_token: &SecretString,
    access_token: &SecretString,
    access_expires_at: time::OffsetDateTime,
) -> Result<(Uuid, bool), Error> {
    let now = state.now();
    let mut tx = state.db.begin().await?;
    let (id, is_new) = connections::lock_or_create(
        &mut tx,
        pending.tenant_id,
        selling_partner_id,
        &pending.region,
        &pending.account_type,
        &pending.marketplace_id,
        now,
    )
    .await?;
    let tenant = pending.tenant_id.to_string();
    let row = id.to_string();
    let refresh_sealed = state.keys.seal_str(
        SealContext {
            purpose: Purpose::RefreshToken,
            tenant: &tenant,
            row: &row,
        },
        refresh_token,
    );
    let access_sealed = state.keys.seal_str(
        SealContext {
            purpose: Purpose::AccessToken,
            tenant: &tenant,
            row: &row,
        },
        access_token,
    );
    connections::store_authorization(
        &mut tx,
        connections::Authorized {
            id,
            account_type: &pending.account_type,
            marketplace_id: &pending.marketplace_id,
            refresh_token_sealed: &refresh_sealed,
            access_token_sealed: &access_sealed,
            access_token_expires_at: access_expires_at,
            now,
        },
    )
    .await?;
    let action = if is_new {
        "connection.connected"
    } else {
        "connection.reconnected"
    };
    audit::record(
        &mut *tx,
        now,
        &format!("user:{}", pending.user_id),
        action,
        AuditTarget {
            tenant_id: Some(pending.tenant_id),
            connection_id: Some(id),
        },
        serde_json::json!({
            "flow": pending.flow,
            "selling_partner_id": selling_partner_id,
            "region": pending.region,
            "marketplace_id": pending.marketplace_id,
        }),
    )
    .await?;
    connections::notify_changed(&mut *tx, id).await?;
    tx.commit().await?;
    state.broker.forget(id);
    tracing::info!(connection = %id, flow = %pending.flow, region = %pending.region, is_new, "seller authorization stored");
    Ok((id, is_new))
}

/// Reads the seller's store name and marketplaces. Best effort: a failure is
/// logged and the connection stays as it is (the fields stay null until known).
async fn verify_seller(state: &AppState, id: Uuid, region: Region, access_token: &SecretString) {
    let endpoint = state.config.spapi_endpoint(region);
    match spapi::marketplace_participations(&state.http, endpoint, access_token).await {
        Ok(account) => {
            if let Err(e) = connections::update_verified_details(
                &state.db,
                id,
                account.store_name.as_deref(),
                &account.marketplace_ids,
                state.now(),
            )
            .await
            {
                tracing::warn!(connection = %id, error = %e, "could not store verified seller details");
            }
        }
        Err(e) => tracing::warn!(connection = %id, error = %e, "seller verification failed"),
    }
}

/// The marketplace (and account type) a Login URI authorization is for, from
/// the host of Amazon's callback URI. Authorizations are regional, so any
/// marketplace of the right region will do; retail domains map to sellers.
pub fn marketplace_for_callback_host(
    host: &str,
    fallback: &str,
) -> (&'static Marketplace, AccountType) {
    for m in marketplaces::MARKETPLACES {
        if m.seller_central.strip_prefix("https://") == Some(host) {
            return (m, AccountType::Seller);
        }
        if m.vendor_central.strip_prefix("https://") == Some(host) {
            return (m, AccountType::Vendor);
        }
    }
    let bare = host.strip_prefix("www.").unwrap_or(host);
    let retail: Vec<&str> = marketplaces::retail_domains().collect();
    if let Some(index) = retail.iter().position(|d| *d == bare) {
        if let Some(m) = marketplaces::MARKETPLACES.get(index) {
            return (m, AccountType::Seller);
        }
    }
    let m = marketplaces::find(fallback)
        .or_else(|| marketplaces::find(marketplaces::DEFAULT_MARKETPLACE_ID))
        .unwrap_or(&marketplaces::MARKETPLACES[0]);
    (m, AccountType::Seller)
}

/// The exposed state value, for building the consent URL.
pub fn expose(state: &SecretString) -> &str {
    state.expose_secret()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_uri_region_comes_from_amazons_host() {
        let (m, t) =
            marketplace_for_callback_host("sellercentral-europe.amazon.com", "ATVPDKIKX0DER");
        assert_eq!((m.region, t), (Region::Eu, AccountType::Seller));
        let (m, t) = marketplace_for_callback_host("vendorcentral.amazon.co.jp", "ATVPDKIKX0DER");
        assert_eq!((m.region, t), (Region::Fe, AccountType::Vendor));
        let (m, t) = marketplace_for_callback_host("www.amazon.de", "ATVPDKIKX0DER");
        assert_eq!((m.id, t), ("A1PA6795UKMFR9", AccountType::Seller));
        let (m, _) = marketplace_for_callback_host("127.0.0.1", "A39IBJ37TRP1C6");
        assert_eq!(m.region, Region::Fe);
        assert!(is_plausible_selling_partner_id("A1B2C3"));
        assert!(!is_plausible_selling_partner_id("A1 B2"));
        assert!(!is_plausible_selling_partner_id(""));
    }
}
