//! The SP-API calls sp-broker makes itself, with the seller's access token in
//! `x-amz-access-token`. Never logs the token.

use super::marketplaces::Region;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// SP-API as sp-broker calls it: the regional endpoints, or one override
/// (`SP_BROKER_SPAPI_URL`, the sandbox).
pub struct SpApi {
    http: reqwest::Client,
    endpoint_override: Option<String>,
}

impl SpApi {
    pub fn new(http: reqwest::Client, endpoint_override: Option<String>) -> Self {
        SpApi {
            http,
            endpoint_override,
        }
    }

    pub fn endpoint(&self, region: Region) -> &str {
        self.endpoint_override
            .as_deref()
            .unwrap_or_else(|| region.spapi_endpoint())
    }

    pub async fn marketplace_participations(
        &self,
        region: Region,
        access_token: &SecretString,
    ) -> Result<SellerAccount, SpApiError> {
        marketplace_participations(&self.http, self.endpoint(region), access_token).await
    }

    pub async fn restricted_data_token(
        &self,
        region: Region,
        access_token: &str,
        resources: &[RestrictedResource],
        target_application: Option<&str>,
    ) -> Result<(SecretString, i64), SpApiError> {
        restricted_data_token(
            &self.http,
            self.endpoint(region),
            access_token,
            resources,
            target_application,
        )
        .await
    }
}

impl SpApi {
    /// The Application Management API's rotation, on the NA endpoint, with a
    /// grantless token of scope `sellingpartnerapi::client_credential:rotation`.
    /// Amazon answers 204; the new secret comes later as a notification.
    pub async fn rotate_client_secret(&self, grantless: &SecretString) -> Result<(), SpApiError> {
        let endpoint = self.endpoint(Region::Na);
        let response = self
            .http
            .post(format!("{endpoint}/applications/2023-11-30/clientSecret"))
            .header("x-amz-access-token", grantless.expose_secret())
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|_| SpApiError::Unavailable)?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            403 => Err(SpApiError::Unauthorized),
            429 => Err(SpApiError::Throttled),
            status if status >= 500 => Err(SpApiError::Unavailable),
            other => Err(SpApiError::Status(other)),
        }
    }
}

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

/// Sends an SP-API request; anything but 200 is an error.
async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, SpApiError> {
    let response = request.send().await.map_err(|_| SpApiError::Unavailable)?;
    match response.status().as_u16() {
        200 => Ok(response),
        403 => Err(SpApiError::Unauthorized),
        429 => Err(SpApiError::Throttled),
        other => Err(SpApiError::Status(other)),
    }
}

async fn marketplace_participations(
    http: &reqwest::Client,
    endpoint: &str,
    access_token: &SecretString,
) -> Result<SellerAccount, SpApiError> {
    let request = http
        .get(format!("{endpoint}/sellers/v1/marketplaceParticipations"))
        .header("x-amz-access-token", access_token.expose_secret());
    let response = send(request).await?;
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

/// One resource of a Restricted Data Token request.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestrictedResource {
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_elements: Option<Vec<String>>,
}

/// Holds a token: deliberately not `Debug`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RdtBody {
    restricted_data_token: Option<SecretString>,
    expires_in: Option<i64>,
    payload: Option<RdtPayload>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RdtPayload {
    restricted_data_token: SecretString,
    expires_in: i64,
}

/// `POST /tokens/2021-03-01/restrictedDataToken`; accepts the answer with or
/// without the older `payload` wrapper.
async fn restricted_data_token(
    http: &reqwest::Client,
    endpoint: &str,
    access_token: &str,
    resources: &[RestrictedResource],
    target_application: Option<&str>,
) -> Result<(SecretString, i64), SpApiError> {
    let mut body = serde_json::json!({ "restrictedResources": resources });
    if let Some(target) = target_application {
        body["targetApplication"] = serde_json::Value::String(target.to_owned());
    }
    let request = http
        .post(format!("{endpoint}/tokens/2021-03-01/restrictedDataToken"))
        .header("x-amz-access-token", access_token)
        .json(&body);
    let response = send(request).await?;
    let body: RdtBody = response.json().await.map_err(|_| SpApiError::Unavailable)?;
    match (body.restricted_data_token, body.expires_in, body.payload) {
        (Some(token), Some(expires_in), _) => Ok((token, expires_in)),
        (_, _, Some(p)) => Ok((p.restricted_data_token, p.expires_in)),
        _ => Err(SpApiError::Unavailable),
    }
}
