//! Restricted Data Tokens: the connection's access token (from the cache or
//! a refresh), then SP-API's Tokens API in the connection's region.

use super::{TokenBroker, TokenError};
use crate::amazon::spapi::{RestrictedResource, SpApi, SpApiError};
use crate::api_keys::ApiPrincipal;
use secrecy::SecretString;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// A Restricted Data Token. Deliberately not `Debug`.
pub struct RestrictedDataToken {
    pub secret: SecretString,
    pub expires_at: OffsetDateTime,
    pub expires_in: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RdtError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    SpApi(#[from] SpApiError),
}

/// The access token used for the Tokens API call needs at least this long.
const MIN_TTL: Duration = Duration::seconds(60);

impl TokenBroker {
    pub async fn restricted_data_token(
        self: &Arc<Self>,
        spapi: &SpApi,
        caller: &ApiPrincipal,
        connection_id: Uuid,
        resources: &[RestrictedResource],
        target_application: Option<&str>,
    ) -> Result<RestrictedDataToken, RdtError> {
        let issued = self
            .access_token(caller, connection_id, MIN_TTL, false)
            .await?;
        caller
            .spend_amazon_call()
            .map_err(TokenError::budget_spent)?;
        let (secret, expires_in) = spapi
            .restricted_data_token(
                issued.region(),
                issued.access_token(),
                resources,
                target_application,
            )
            .await?;
        let expires_in =
            expires_in.clamp(0, crate::amazon::lwa::MAX_TOKEN_LIFETIME.whole_seconds());
        Ok(RestrictedDataToken {
            secret,
            expires_at: self.clock.now() + Duration::seconds(expires_in),
            expires_in,
        })
    }
}
