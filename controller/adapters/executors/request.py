"""What the http executor sends: the body (exactly `payload`) and the headers, with the rules that
keep a header we cannot send from reaching aiohttp (which would raise, after a partial request).

Pure functions: no I/O. Messages name a header and where its value came from, never the value.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from multidict import CIMultiDict

from controller.model.jobs import AttemptContext

# RFC 9110 §5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)

# The operator states who is calling and frames the body itself: a user's Content-Length that
# disagrees with the body would desynchronise the connection (the rest is read as the next request).
IDENTITY_HEADERS = (
    "Idempotency-Key",
    "Relay-Job-Namespace",
    "Relay-Job-Name",
    "Relay-Job-Uid",
    "Relay-Attempt",
)
OPERATOR_HEADERS = frozenset(h.lower() for h in (*IDENTITY_HEADERS, "Content-Length", "Transfer-Encoding"))

BODYLESS_METHODS = frozenset({"GET", "DELETE"})


def request_body(method: str, payload: dict[str, Any]) -> bytes | None:
    """`payload` as JSON, exactly: numbers as the RelayJob holds them (`1e300` goes as `1e+300`, a big
    integer with all its digits). None for methods that carry no body.

    ValueError when the payload holds what JSON cannot carry (NaN, a lone surrogate).
    """
    if method in BODYLESS_METHODS:
        return None
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def header_name_problem(name: str) -> str | None:
    if not _TOKEN.fullmatch(name):
        return "is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
    if name.lower() in OPERATOR_HEADERS:
        return "is set by the operator and may not be given"
    return None


def trim_line_end(value: str) -> str:
    """Without one trailing newline: `kubectl create secret --from-file` keeps the one editors add."""
    if value.endswith("\r\n"):
        return value[:-2]
    return value.removesuffix("\n")


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be sent as a header value, or None. Describes the value, never shows it."""
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc" and char != "\t":
            return f"contains a control character (U+{ord(char):04X})"
        if category == "Cs":
            return "is not valid UTF-8 text"
    return None


def identity_headers(ctx: AttemptContext) -> dict[str, str]:
    return {
        "Idempotency-Key": ctx.idempotency_key,
        "Relay-Job-Namespace": ctx.ref.namespace,
        "Relay-Job-Name": ctx.ref.name,
        "Relay-Job-Uid": str(ctx.ref.uid),
        "Relay-Attempt": str(ctx.attempt),
    }


def request_headers(ctx: AttemptContext, given: dict[str, str], has_body: bool) -> CIMultiDict[str]:
    """The headers of the request: the user's (already checked), ours, and Content-Type for a body."""
    headers: CIMultiDict[str] = CIMultiDict(given)
    if has_body:
        headers.setdefault("Content-Type", "application/json")
    headers.update(identity_headers(ctx))
    return headers
