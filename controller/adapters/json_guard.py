"""JSON from the API server, decoded with its nesting bounded, so that no object can exhaust a stack.

The API server stores objects nested up to 10,000 levels (apimachinery's `maxDepth`), while
Python's json decoder recurses once per level and raises RecursionError near 1,000: one RelayJob
with a deep payload stopped kopf's watch stream, and the operator with it, on every restart. Here
a value nested deeper than `MAX_DEPTH` is replaced by the string `TRUNCATED` before decoding, so
kopf, admission, the ledger's encoder and PostgreSQL's jsonb parser all see a bounded document. A
job carrying one is refused by admission, whose depth limit is far lower.

Every check is iterative, and the common cases cost little: a text with no more brackets than
`MAX_DEPTH` cannot nest deeper (one count, in C); a larger one is measured with byte operations
in C; only a text that does nest too deep is rewritten by a Python loop over its tokens.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Deep enough for any document admission accepts (a payload of 100 levels, inside a list of
# objects, inside managedFields' mirror of it), shallow enough to leave most of Python's default
# recursion limit of 1,000 to the code that walks or copies the document afterwards.
MAX_DEPTH = 200
TRUNCATED = f"(nested deeper than {MAX_DEPTH} levels: not decoded)"
_TRUNCATED_JSON = json.dumps(TRUNCATED)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"[]", b"{}")
# A whole string (so brackets inside strings are skipped; one left open runs to the end, as for
# the decoder), or one bracket.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{}]')


def loads(text: str | bytes | bytearray) -> Any:
    """`json.loads`, but values nested deeper than `MAX_DEPTH` come back as `TRUNCATED`."""
    if not isinstance(text, str):
        text = bytes(text).decode(json.detect_encoding(text))
    if text.count("{") + text.count("[") > MAX_DEPTH and too_deep(text.encode(errors="surrogatepass")):
        text = bounded(text)
    return json.loads(text)


def too_deep(data: bytes) -> bool:
    """Whether JSON text may nest deeper than `MAX_DEPTH`, measured without recursion or a loop
    per byte: with escapes and strings removed, each pass deletes every innermost bracket pair,
    and a document `d` levels deep is gone after `d` passes. Unbalanced brackets count as deep:
    the decoder recurses into them before it finds the error."""
    # Pairs first, so that `\\"` (an escaped backslash, then the closing quote) keeps its quote.
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = b"".join(data.split(b'"')[::2]).translate(_ONE_KIND, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        shorter = structure.replace(b"{}", b"")
        if len(shorter) == len(structure):
            break
        structure = shorter
    return bool(structure)


def bounded(text: str) -> str:
    """`text` with each value that opens below `MAX_DEPTH` levels replaced by `TRUNCATED`.
    Unterminated nesting that deep raises JSONDecodeError, as decoding it would (after
    exhausting the stack)."""
    pieces: list[str] = []
    depth = 0
    copied = 0  # text before this index is in `pieces` (or cut)
    cut = 0  # where the value being cut opened
    for token in _TOKENS.finditer(text):
        char = text[token.start()]
        if char == '"':
            continue
        if char in "[{":
            depth += 1
            if depth == MAX_DEPTH + 1:
                cut = token.start()
        else:
            if depth == MAX_DEPTH + 1:
                pieces += (text[copied:cut], _TRUNCATED_JSON)
                copied = token.end()
            depth -= 1
    if depth > MAX_DEPTH:
        raise json.JSONDecodeError(f"unterminated value nested deeper than {MAX_DEPTH} levels", text, cut)
    pieces.append(text[copied:])
    return "".join(pieces)
