"""Verifies sp-broker's webhook deliveries with the Standard Webhooks
reference library for Python (`standardwebhooks` from PyPI).

argv: a JSON file of deliveries ({id, timestamp, signature, body}), then the
secrets. Each delivery must verify under every secret, and must not once its
body, id or timestamp is changed. Prints one line of counts.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

deliveries = json.load(open(sys.argv[1]))
secrets = sys.argv[2:]
verified = refused = 0
for delivery in deliveries:
    headers = {
        "webhook-id": delivery["id"],
        "webhook-timestamp": delivery["timestamp"],
        "webhook-signature": delivery["signature"],
    }
    for secret in secrets:
        payload = Webhook(secret).verify(delivery["body"], headers)
        assert payload["type"], payload
        verified += 1
        for changed_body, changed_headers in [
            (delivery["body"] + " ", headers),
            (delivery["body"], {**headers, "webhook-id": headers["webhook-id"] + "x"}),
            (delivery["body"], {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)}),
        ]:
            try:
                Webhook(secret).verify(changed_body, changed_headers)
            except WebhookVerificationError:
                refused += 1
            else:
                sys.exit(f"a changed delivery verified: {delivery['id']}")
print(f"verified {verified} refused {refused}")
