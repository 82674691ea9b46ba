//! The SP-API calls sp-broker makes itself, with the seller's access token in
//! `x-amz-access-token`. Never logs the token.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum SpApiError {
    #[error("SP-API refused the access token (403)")]
    Unauthorized,
    #[error("SP-API is throttling (429)")]
    Throttled,
    #[error("SP-API answered {0}")]
    Status(u16),
    #[error("SP-API could not be reached or answered garbage")]
    Unavailable,
}

#[derive(Debug, Deserialize)]
struct Participations {
    payload: Vec<Participation>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Participation {
    marketplace: ParticipationMarketplace,
    #[serde(default)]
    store_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ParticipationMarketplace {
    id: String,
}

/// What `GET /sellers/v1/marketplaceParticipations` tells about a seller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SellerAccount {
    pub store_name: Option<String>,
    pub marketplace_ids: Vec<String>,
}

pub async fn marketplace_participations(
    http: &reqwest::Client,
    endpoint: &str,
    access_token: &SecretString,
) -> Result<SellerAccount, SpApiError> {
    let response = http
        .get(format!("{endpoint}/sellers/v1/marketplaceParticipations"))
        .header("x-amz-access-token", access_token.expose_secret())
        .send()
        .await
        .map_err(|_| SpApiError::Unavailable)?;
    match response.status().as_u16() {
        200 => {}
        403 => return Err(SpApiError::Unauthorized),
        429 => return Err(SpApiError::Throttled),
        other => return Err(SpApiError::Status(other)),
    }
    let body: Participations = response.json().await.map_err(|_| SpApiError::Unavailable)?;
    let store_name = body
        .payload
        .iter()
        .find_map(|p| p.store_name.clone().filter(|s| !s.is_empty()));
    let mut marketplace_ids: Vec<String> =
        body.payload.into_iter().map(|p| p.marketplace.id).collect();
    marketplace_ids.sort();
    marketplace_ids.dedup();
    Ok(SellerAccount {
        store_name,
        marketplace_ids,
    })
}
