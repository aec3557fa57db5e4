"""What is forwarded is what was decided: one reading of a proxy request, rebuilt to be sent.

The pricer and the vendor must see the same request. A request that another reader could
take another way is refused (400 ``bad_request``) before anything else looks at it:

- a header byte outside visible ASCII (space and tab inside a value allowed), anywhere;
- a repeated header that matters to the vendor or to the policy (``Authorization``,
  ``Content-Type``, ``Idempotency-Key``, ``Stripe-Account``, ... in any letter case);
- a body that is not a strict UTF-8 form sent as ``application/x-www-form-urlencoded``
  (no other charset), or a JSON-looking body sent as a form;
- a query string that is not a strict form.

What is forwarded is then built from what was parsed: the form and the query re-encoded from
their pairs (so an odd escape or separator reaches the vendor as the literal text the pricer
saw), one value of each forwarded header, and the vendor's credential.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, urlencode

__all__ = [
    "FORM",
    "FORWARD_REQUEST_HEADERS",
    "SINGLE_HEADERS",
    "BadRequest",
    "canonical_form",
    "canonical_query",
    "check_headers",
    "fingerprint",
    "forwarded_headers",
]

FORM = "application/x-www-form-urlencoded"

#: Request headers passed on to the vendor, as the client sent them (one value each);
#: everything else (cookies, the vault key, hop-by-hop headers) stays here.
FORWARD_REQUEST_HEADERS = (
    "Accept",
    "Accept-Language",
    "Idempotency-Key",
    "Stripe-Version",
    "User-Agent",
    "X-Stripe-Client-User-Agent",
    "X-Twilio-Client",
)
#: Headers a request may carry once at most (lower case).
SINGLE_HEADERS = frozenset(
    h.lower()
    for h in (
        *FORWARD_REQUEST_HEADERS,
        "Authorization",
        "Content-Type",
        "Content-Length",
        "Transfer-Encoding",
        "Host",
        "Stripe-Account",
        "Stripe-Context",
    )
)
_FORWARD_LOWER = {h.lower(): h for h in FORWARD_REQUEST_HEADERS}
# Visible ASCII; space and tab also inside a value.
_HEADER_NAME = re.compile(rb"[!-~]+")
_HEADER_VALUE = re.compile(rb"[ \t!-~]*")
_JSON_START = frozenset('{["')
# A parameter name: a plain top-level part, then bracketed parts (``metadata[k]``,
# ``items[0][price]``, ``expand[]``). ``amount]`` or ``[amount]`` is refused: a lenient
# reader may take either for ``amount``.
_NAME = re.compile(r"[^\[\]\s]+(?:\[[^\[\]]*\])*")


class BadRequest(Exception):
    """The request can be read more than one way; refuse it with 400 ``bad_request``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Refuse header bytes outside visible ASCII and repeats of :data:`SINGLE_HEADERS`.

    Raises:
        BadRequest: such a header.
    """
    seen: set[str] = set()
    for name, value in raw_headers:
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise BadRequest("header names and values must be visible ASCII")
        lowered = name.decode("ascii").lower()
        if lowered in SINGLE_HEADERS:
            if lowered in seen:
                raise BadRequest(f"header {name.decode('ascii')!r} may be sent once only")
            seen.add(lowered)


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"the {what} is not a valid form") from None
    for name, _ in pairs:
        if not name.isascii() or not name.isprintable() or not _NAME.fullmatch(name):
            raise BadRequest(f"the {what} has a parameter name that is not plain ASCII")
    return pairs


def _encode(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs, quote_via=quote, safe="[]")


def canonical_form(content_type: str, body: bytes) -> bytes:
    """The form body re-encoded from its pairs (``b""`` for no body).

    Raises:
        BadRequest: not a strict UTF-8 form, another content type or charset, or a body that
            looks like JSON.
    """
    if not body:
        return b""
    media, _, params = content_type.partition(";")
    if media.strip().lower() != FORM:
        raise BadRequest(f"a request body must be sent as {FORM}")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if param.strip() and (
            name.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8"
        ):
            raise BadRequest(f"a form body is {FORM} with no parameter but charset=utf-8")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8") from None
    if text.lstrip()[:1] in _JSON_START:
        raise BadRequest("the request body looks like JSON but is sent as a form")
    return _encode(_pairs(text, "request body")).encode("ascii")


def canonical_query(query: str) -> str:
    """The query string re-encoded from its pairs.

    Raises:
        BadRequest: not a strict form.
    """
    if not query:
        return ""
    return _encode(_pairs(query, "query string"))


def forwarded_headers(
    headers: Mapping[str, str], *, authorization: str, extra: Mapping[str, str]
) -> list[tuple[str, str]]:
    """The headers to send the vendor: the forwarded ones the client gave (checked to be
    single by :func:`check_headers`), then ``extra`` and the credential, which win."""
    out = {
        _FORWARD_LOWER[name.lower()]: value
        for name, value in headers.items()
        if name.lower() in _FORWARD_LOWER
    }
    out.update(extra)
    out["Authorization"] = authorization
    return list(out.items())


def fingerprint(
    method: str, path: str, query: str, body: bytes, headers: Iterable[tuple[str, str]] = ()
) -> str:
    """What identifies a request for idempotent replays: method, path, query, body and the
    headers sent with it (``Stripe-Version`` and the like; the credential left out)."""
    digest = hashlib.sha256()
    sent = sorted((k.lower(), v) for k, v in headers if k.lower() != "authorization")
    parts = [method.encode(), path.encode(), query.encode(), body]
    parts += [f"{k}: {v}".encode() for k, v in sent]
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()
