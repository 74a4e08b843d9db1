"""`target.http.signing`: Standard Webhooks signatures, made with the `standardwebhooks` package,
the one targets verify them with.

`webhook-id` is the job's uid, the same for every attempt, so a target that saw the message before
can drop it (the specification's advice for retries); `webhook-timestamp` is the attempt's own, so a
retry is never refused as a replay of an old message.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from standardwebhooks import Webhook

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_PREFIX = "whsec_"


def signing_key_problem(secret: str) -> str | None:
    """Why `secret` is not a Standard Webhooks signing key, or None. Describes it, never shows it.

    The library decodes leniently (it drops characters that are not base64), which would sign
    with a key the target does not hold: every request refused, and nothing to tell why."""
    encoded = secret.removeprefix(_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return f"is not a signing key: expected {_PREFIX} followed by base64"
    if not key:
        return "is an empty signing key"
    return None


def signature_headers(secret: str, message_id: str, body: bytes | None, now: datetime) -> dict[str, str]:
    """The three headers signing `body` (no body signs as empty) as message `message_id` sent at
    `now` (timezone-aware). `secret` must have passed `signing_key_problem`."""
    now = now.astimezone(UTC)  # the library reads the wall-clock fields as UTC
    signature = Webhook(secret).sign(message_id, now, (body or b"").decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
