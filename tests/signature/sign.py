"""Signs requests with the PyPI package http-message-signatures (RFC 9421),
for the gateway's end-to-end tests: a signer the project did not write.

Reads one JSON document on stdin:

    {"keys": {"<keyid>": "<secret, base64>"},
     "requests": [{"method": "POST", "url": "http://gw/secure/a?x=1",
                   "body": "<text>", "keyid": "<keyid>", "created": 1700000000,
                   "nonce": "n-1", "covered": ["@method", "@path", ...],
                   "include_alg": true}]}

and writes, for each request, the header fields the library set (name ->
value) as a JSON list on stdout. With "body" given, the library computes
Content-Digest (sha-256) itself and adds "content-digest" to the covered
components.
"""

import base64
import datetime
import json
import sys

from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms


class Message:
    """The message interface the library signs: method, url, headers."""

    def __init__(self, method, url):
        self.method = method
        self.url = url
        self.headers = {}


def main():
    document = json.load(sys.stdin)
    keys = {kid: base64.b64decode(secret) for kid, secret in document["keys"].items()}
    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys=keys, private_keys=keys),
    )
    out = []
    for r in document["requests"]:
        message = Message(r["method"], r["url"])
        body = r.get("body")
        signer.sign(
            message,
            key_id=r["keyid"],
            created=datetime.datetime.fromtimestamp(r["created"], datetime.timezone.utc),
            nonce=r.get("nonce"),
            label=r.get("label"),
            include_alg=r.get("include_alg", True),
            covered_component_ids=r["covered"],
            body=None if body is None else body.encode(),
        )
        out.append({name.lower(): value for name, value in message.headers.items()})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
