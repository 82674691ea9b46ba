"""Gets a connection's access token through python-amazon-sp-api (the
community SDK, unchanged): its LWA endpoint is a class attribute of
AccessTokenClient, pointed here at sp-broker. Run by tests/it/sdk.rs with
SPB_LWA_ENDPOINT, SPB_CONNECTION_ID and SPB_API_KEY; prints the token.
"""
import os
from types import SimpleNamespace
from urllib.parse import urlsplit

from sp_api.auth import AccessTokenClient

lwa = urlsplit(os.environ["SPB_LWA_ENDPOINT"])
AccessTokenClient.scheme = lwa.scheme + "://"
AccessTokenClient.host = lwa.netloc
AccessTokenClient.path = lwa.path

credentials = SimpleNamespace(
    lwa_app_id="amzn1.application-oa2-client.not-needed-by-sp-broker",
    lwa_client_secret=os.environ["SPB_API_KEY"],
    refresh_token=os.environ["SPB_CONNECTION_ID"],
)
print(AccessTokenClient(credentials=credentials).get_auth().access_token)
