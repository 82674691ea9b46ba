"""Calls getMarketplaceParticipations through Amazon's official Python SDK
(amzn-sp-api), unchanged, with sp-broker as its Login with Amazon endpoint.

Run by tests/it/sdk.rs. Settings come from the environment:
  SPB_LWA_ENDPOINT     sp-broker's POST /auth/o2/token
  SPB_SPAPI_ENDPOINT   the connection's spapi_endpoint (the sandbox here)
  SPB_CONNECTION_ID    the connection id, given to the SDK as its refresh token
  SPB_API_KEY          an sp-broker API key, given as its client secret
Prints the answer's payload as JSON on one line.
"""
import json
import os

from spapi import SPAPIClient, SPAPIConfig
from spapi.api.sellers_v1.sellers_api import SellersApi

config = SPAPIConfig(
    client_id="amzn1.application-oa2-client.not-needed-by-sp-broker",
    client_secret=os.environ["SPB_API_KEY"],
    refresh_token=os.environ["SPB_CONNECTION_ID"],
    region="NA",
)
client = SPAPIClient(
    config,
    oauth_endpoint=os.environ["SPB_LWA_ENDPOINT"],
    endpoint=os.environ["SPB_SPAPI_ENDPOINT"],
)
answer = SellersApi(client.api_client).get_marketplace_participations()
print(json.dumps(client.api_client.sanitize_for_serialization(answer.payload)))
