//! The SP-API website authorization workflow, apart from HTTP: pending
//! authorizations (`state`), completing one (exchange the code exactly once,
//! seal and store the tokens, upsert the connection, audit), and the one home
//! of "seal and store a connection's tokens" that tests and the benchmark
//! use too.
//!
//! Tenant, region and redirect URI come only from the stored pending
//! authorization, never from the callback's parameters. Never logs a code,
//! state or token.

use crate::amazon::lwa::{Grant, LwaClient, LwaError, TOTAL_TIMEOUT};
use crate::amazon::marketplaces::{self, AccountType, Marketplace, Region};
use crate::amazon::spapi::{SellerAccount, SpApi, SpApiError};
use crate::broker::{AppCredentials, TokenBroker};
use crate::clock::Clock;
use crate::config::{AmazonMode, Config};
use crate::crypto::{KeyRing, Purpose, SealContext};
use crate::db::audit::{self, AuditTarget};
use crate::db::connections::{self, AuthorizationKey};
use crate::db::consent_attempts;
use crate::db::notify::{self, Change};
use crate::db::oauth_states::{self, NewPendingAuthorization, PendingAuthorization, StateProblem};
use crate::domain::EventType;
use crate::domain::AUTHORIZATION_LIFETIME;
use crate::error::Error;
use crate::events;
use crate::secrets;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Instant;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub const STATE_LIFETIME: Duration = Duration::minutes(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Connect,
    Reconnect(Uuid),
    LoginUri,
}

impl Flow {
    fn as_str(self) -> &'static str {
        match self {
            Flow::Connect => "connect",
            Flow::Reconnect(_) => "reconnect",
            Flow::LoginUri => "login_uri",
        }
    }
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

pub fn is_plausible_selling_partner_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A connection's tokens to seal and store (a completed authorization; tests
/// and the benchmark seed connections the same way).
pub struct NewAuthorization<'a> {
    pub tenant_id: Uuid,
    pub selling_partner_id: &'a str,
    pub region: Region,
    pub account_type: AccountType,
    pub marketplace_id: &'a str,
    pub refresh_token: &'a SecretString,
    pub access_token: &'a SecretString,
    pub access_token_expires_at: OffsetDateTime,
    /// Who authorized it, for the audit log (`user:{id}`).
    pub actor: &'a str,
    pub flow: &'a str,
}

pub struct Authorizer {
    db: PgPool,
    keys: Arc<KeyRing>,
    lwa: LwaClient,
    clock: Arc<dyn Clock>,
    credentials: Arc<AppCredentials>,
    config: Arc<Config>,
    spapi: Arc<SpApi>,
    broker: Arc<TokenBroker>,
}

pub struct AuthorizerHandles {
    pub db: PgPool,
    pub keys: Arc<KeyRing>,
    pub lwa: LwaClient,
    pub clock: Arc<dyn Clock>,
    pub credentials: Arc<AppCredentials>,
    pub config: Arc<Config>,
    pub spapi: Arc<SpApi>,
    pub broker: Arc<TokenBroker>,
}

impl Authorizer {
    pub fn new(h: AuthorizerHandles) -> Self {
        Authorizer {
            db: h.db,
            keys: h.keys,
            lwa: h.lwa,
            clock: h.clock,
            credentials: h.credentials,
            config: h.config,
            spapi: h.spapi,
            broker: h.broker,
        }
    }

    /// Records a pending authorization and returns its `state` (256 random bits).
    pub async fn begin(&self, begin: Begin<'_>) -> Result<SecretString, Error> {
        let oauth_state = secrets::random_token(32);
        let now = self.clock.now();
        let reconnect_id = match begin.flow {
            Flow::Reconnect(id) => Some(id),
            Flow::Connect | Flow::LoginUri => None,
        };
        let state_hash = secrets::sha256_secret(&oauth_state);
        let mut tx = self.db.begin().await?;
        oauth_states::insert_pending(
            &mut *tx,
            NewPendingAuthorization {
                state_hash: &state_hash,
                session_binding: begin.session_binding,
                tenant_id: begin.tenant_id,
                user_id: begin.user_id,
                flow: begin.flow.as_str(),
                marketplace_id: begin.marketplace.id,
                account_type: begin.account_type,
                region: begin.marketplace.region,
                redirect_uri: &self.config.redirect_uri(),
                reconnect_connection_id: reconnect_id,
                expected_selling_partner_id: begin.expected_selling_partner_id,
                now,
                expires_at: now + STATE_LIFETIME,
            },
        )
        .await?;
        consent_attempts::record_start(
            &mut *tx,
            &state_hash,
            begin.tenant_id,
            begin.marketplace.region,
            now,
        )
        .await?;
        tx.commit().await?;
        crate::metrics::consent("started");
        Ok(oauth_state)
    }

    /// Completes an authorization: consumes the state atomically, exchanges the
    /// code exactly once, stores the tokens sealed and upserts the connection.
    pub async fn complete(&self, callback: Callback<'_>) -> Result<(Outcome, Uuid), CompleteError> {
        let state_hash = secrets::sha256(callback.oauth_state);
        let completed = self.complete_callback(callback).await;
        self.record_return(&state_hash, completed.is_ok()).await;
        completed
    }

    /// A callback came back for this state (with or without a code): the
    /// consent funnel's returned, then connected or failed. The funnel is a
    /// view for operators, so failing to write it never fails the callback.
    pub async fn record_return(&self, state_hash: &[u8], connected: bool) {
        crate::metrics::consent("returned");
        crate::metrics::consent(if connected { "connected" } else { "failed" });
        if let Err(error) =
            consent_attempts::record_return(&self.db, state_hash, connected, self.clock.now()).await
        {
            tracing::warn!(%error, "could not record the consent attempt's return");
        }
    }

    async fn complete_callback(
        &self,
        callback: Callback<'_>,
    ) -> Result<(Outcome, Uuid), CompleteError> {
        let now = self.clock.now();
        let state_hash = secrets::sha256(callback.oauth_state);
        let pending = match callback.session_binding {
            Some(binding) => {
                oauth_states::consume_pending(&self.db, &state_hash, binding, now).await?
            }
            None => None,
        };
        let Some(pending) = pending else {
            let problem =
                oauth_states::diagnose(&self.db, &state_hash, callback.session_binding, now)
                    .await?;
            return Err(CompleteError::State(problem));
        };
        if !is_plausible_selling_partner_id(callback.selling_partner_id) {
            return Err(CompleteError::BadSellingPartnerId);
        }

        // Exactly one request per secret at most: a code exchange is never
        // retried (a refused secret is refused before the code is looked at).
        let started = Instant::now();
        let secrets = self.credentials.secrets_in_order();
        let secrets = secrets.candidates();
        let deadline = started + TOTAL_TIMEOUT * secrets.len().max(1) as u32;
        let exchanged = self
            .lwa
            .request(
                &Grant::AuthorizationCode {
                    code: &callback.code,
                    redirect_uri: &pending.redirect_uri,
                },
                &secrets,
                deadline,
            )
            .await;
        crate::metrics::lwa_call(
            "authorization_code",
            if exchanged.is_ok() { "ok" } else { "failed" },
            started.elapsed().as_secs_f64(),
        );
        let tokens = match exchanged {
            Ok(tokens) => tokens,
            Err(error) => {
                if matches!(error, LwaError::ClientRejected { .. }) {
                    let tried: Vec<_> = secrets.iter().map(|(id, _)| *id).collect();
                    self.credentials.rejected(&tried).await?;
                }
                return Err(CompleteError::Exchange(error));
            }
        };
        self.credentials
            .worked(tokens.secret_id, &tokens.refused_first)
            .await?;
        let refresh_token = tokens
            .refresh_token
            .as_ref()
            .ok_or(CompleteError::NoRefreshToken)?;
        let (connection_id, is_new) = self
            .store(&NewAuthorization {
                tenant_id: pending.tenant_id,
                selling_partner_id: callback.selling_partner_id,
                region: pending.region,
                account_type: pending.account_type,
                marketplace_id: &pending.marketplace_id,
                refresh_token,
                access_token: &tokens.access_token,
                access_token_expires_at: now + tokens.lifetime(),
                actor: &format!("user:{}", pending.user_id),
                flow: &pending.flow,
            })
            .await?;

        if pending.account_type == AccountType::Seller {
            self.verify_seller(connection_id, pending.region, &tokens.access_token)
                .await;
        }
        Ok((
            outcome_of(&pending, callback.selling_partner_id, is_new),
            connection_id,
        ))
    }

    /// Seals and stores a connection's tokens: the connection keyed by
    /// (tenant, selling partner, region) is created or updated in one
    /// transaction, audited, and every instance told. Returns its id and
    /// whether it is new.
    pub async fn store(&self, a: &NewAuthorization<'_>) -> Result<(Uuid, bool), Error> {
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let stored = self.store_in(&mut tx, a, now).await?;
        tx.commit().await?;
        self.stored(a, stored);
        Ok(stored)
    }

    /// [`Authorizer::store`] for many authorizations in one transaction (the
    /// benchmark seeds its connections this way).
    pub async fn store_all(
        &self,
        authorizations: &[NewAuthorization<'_>],
    ) -> Result<Vec<(Uuid, bool)>, Error> {
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let mut stored = Vec::with_capacity(authorizations.len());
        for a in authorizations {
            stored.push(self.store_in(&mut tx, a, now).await?);
        }
        tx.commit().await?;
        for (a, &one) in authorizations.iter().zip(&stored) {
            self.stored(a, one);
        }
        Ok(stored)
    }

    /// After the commit: this instance forgets what it cached.
    fn stored(&self, a: &NewAuthorization<'_>, (id, is_new): (Uuid, bool)) {
        self.broker.forget(id);
        tracing::info!(connection = %id, flow = a.flow, region = %a.region, is_new, "seller authorization stored");
    }

    async fn store_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        a: &NewAuthorization<'_>,
        now: OffsetDateTime,
    ) -> Result<(Uuid, bool), Error> {
        let (id, is_new) = connections::lock_or_create(
            tx,
            &AuthorizationKey {
                tenant_id: a.tenant_id,
                selling_partner_id: a.selling_partner_id,
                region: a.region,
                account_type: a.account_type,
                marketplace_id: a.marketplace_id,
            },
            now,
        )
        .await?;
        // A reconnect can end a degraded period (it clears the row's error).
        let before = match is_new {
            true => None,
            false => connections::health_for_update(&mut **tx, id, now).await?,
        };
        let tenant = a.tenant_id.to_string();
        let row = id.to_string();
        let context = |purpose| SealContext {
            purpose,
            tenant: &tenant,
            row: &row,
        };
        let refresh_sealed = self
            .keys
            .seal_str(context(Purpose::RefreshToken), a.refresh_token);
        let access_sealed = self
            .keys
            .seal_str(context(Purpose::AccessToken), a.access_token);
        connections::store_authorization(
            tx,
            connections::Authorized {
                id,
                account_type: a.account_type,
                marketplace_id: a.marketplace_id,
                refresh_token_sealed: &refresh_sealed,
                access_token_sealed: &access_sealed,
                access_token_expires_at: a.access_token_expires_at,
                authorization_expires_at: now + AUTHORIZATION_LIFETIME,
                mode: self.config.mode,
                client_id: &self.config.lwa_client_id,
                now,
            },
        )
        .await?;
        let event_type = if is_new {
            EventType::ConnectionConnected
        } else {
            EventType::ConnectionReconnected
        };
        let action = event_type.as_str();
        audit::record(
            &mut **tx,
            now,
            a.actor,
            action,
            AuditTarget {
                tenant_id: Some(a.tenant_id),
                connection_id: Some(id),
            },
            serde_json::json!({
                "flow": a.flow,
                "selling_partner_id": a.selling_partner_id,
                "region": a.region,
                "marketplace_id": a.marketplace_id,
            }),
        )
        .await?;
        events::record_connection_event(tx, event_type, id, events::Details::default(), now)
            .await?;
        if let Some(before) = before {
            events::record_health_change(tx, id, before, now).await?;
        }
        notify::send(&mut **tx, &Change::connection(id)).await?;
        Ok((id, is_new))
    }

    /// Reads the seller's store name and marketplaces (CONTRACT §5). A
    /// failure leaves the connection `active` and `degraded`, with a
    /// `last_error` in plain words; a success clears such an error.
    async fn verify_seller(&self, id: Uuid, region: Region, access_token: &SecretString) {
        let verified = self
            .spapi
            .marketplace_participations(region, access_token)
            .await;
        if let Err(e) = &verified {
            tracing::warn!(connection = %id, error = %e, "seller verification failed");
        }
        // The broker caches none of this: nothing to forget.
        if let Err(e) = self.store_verification(id, verified).await {
            tracing::warn!(connection = %id, error = %e, "could not store the seller verification");
        }
    }

    /// Stores what verification found, announcing a change of health
    /// (`connection.degraded` / `connection.recovered`) in the same transaction.
    async fn store_verification(
        &self,
        id: Uuid,
        verified: Result<SellerAccount, SpApiError>,
    ) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let Some(before) = connections::health_for_update(&mut *tx, id, now).await? else {
            return Ok(());
        };
        match verified {
            Ok(account) => {
                connections::update_verified_details(
                    &mut *tx,
                    id,
                    account.store_name.as_deref(),
                    &account.marketplace_ids,
                    now,
                )
                .await?
            }
            Err(e) => {
                connections::record_verification_failure(
                    &mut *tx,
                    id,
                    &verification_failure_message(&e),
                    now,
                )
                .await?
            }
        }
        events::record_health_change(&mut tx, id, before, now).await?;
        tx.commit().await
    }
}

/// What a failed verification means, for the seller and the operator.
fn verification_failure_message(error: &SpApiError) -> String {
    match error {
        SpApiError::Unauthorized => "Amazon refused to show this account's marketplaces (403). \
            This usually means the app lacks a role for this account or the account belongs to another region; \
            tokens still work. Reconnect in the right region, or ask the app's developer to check its roles."
            .to_owned(),
        SpApiError::Throttled => "Amazon was too busy to check this account (429). \
            Nothing is needed: it is checked again at the next connect."
            .to_owned(),
        SpApiError::Status(status) => format!(
            "Amazon answered {status} when checking this account. \
             Tokens still work; if this stays, reconnect the account."
        ),
        SpApiError::Unavailable => "Amazon could not be reached to check this account. \
            Nothing is needed: it is checked again at the next connect."
            .to_owned(),
    }
}

/// A start whose Amazon is not the one the stored authorizations belong to.
#[derive(Debug, thiserror::Error)]
pub enum OtherAmazon {
    #[error(
        "SP_BROKER_AMAZON / SP_BROKER_LWA_CLIENT_ID: the {count} stored authorization(s) of this database \
         were made in {stored_mode} mode under LWA client id `{stored_client_id}`, but this start is in \
         {mode} mode under `{client_id}`; refusing to start, so that no refresh token goes to an Amazon \
         or an app it does not belong to (check the settings, or use another DATABASE_URL)"
    )]
    Mismatch {
        stored_mode: String,
        stored_client_id: String,
        count: i64,
        mode: AmazonMode,
        client_id: String,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// One Amazon per database (CONTRACT §1): refuses a start in another mode or
/// under another LWA client id than the stored authorizations were made in.
/// Authorizations from before connections recorded this are stamped with the
/// first start's (the README says so).
pub async fn check_database_serves(
    db: &PgPool,
    mode: AmazonMode,
    client_id: &str,
) -> Result<(), OtherAmazon> {
    for (stored_mode, stored_client_id, count) in connections::authorized_amazons(db).await? {
        if stored_mode != mode.as_str() || stored_client_id != client_id {
            return Err(OtherAmazon::Mismatch {
                stored_mode,
                stored_client_id,
                count,
                mode,
                client_id: client_id.to_owned(),
            });
        }
    }
    let stamped = connections::stamp_unstamped_authorizations(db, mode, client_id).await?;
    if stamped > 0 {
        tracing::warn!(
            stamped,
            mode = mode.as_str(),
            client_id,
            "stored authorizations from before this version are taken to belong to this start's Amazon"
        );
    }
    Ok(())
}

fn outcome_of(pending: &PendingAuthorization, selling_partner_id: &str, is_new: bool) -> Outcome {
    let selling_partner_id = selling_partner_id.to_owned();
    let region = pending.region;
    match (
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
