"""What is forwarded is what was decided: one reading of a proxy request, rebuilt to be sent.

The pricer and the vendor must see the same request. A request that another reader could
take another way is refused (400 ``bad_request``) before anything else looks at it:

- a header byte outside visible ASCII (space and tab inside a value allowed), anywhere;
- a repeated header that matters to the vendor or to the policy (``Authorization``,
  ``Content-Type``, ``Idempotency-Key``, ``Stripe-Account``, ... in any letter case);
- for a vendor that takes forms, a body that is not a strict UTF-8 form sent as
  ``application/x-www-form-urlencoded`` (no other charset), or a JSON-looking body sent as a
  form;
- for a vendor that takes JSON, a body that is not strict UTF-8 JSON sent as
  ``application/json``, or that repeats a key in an object (which of the two counts depends
  on the reader), or holds ``NaN``, ``Infinity``, a number out of range, or a key a
  JavaScript reader takes for its objects' machinery (``__proto__``, ``constructor``,
  ``prototype``);
- a query string that is not a strict form.

What is forwarded is then built from what was parsed: the form and the query re-encoded from
their pairs (so an odd escape or separator reaches the vendor as the literal text the pricer
saw), a JSON body re-encoded from its value, one value of each forwarded header, and the
vendor's credential.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import attrs

from keybrake.vendors import Vendor
from keybrake.vendors._pricing import read_strict_json

__all__ = [
    "FORM",
    "JSON",
    "BadRequest",
    "HeaderRules",
    "canonical_form",
    "canonical_json",
    "canonical_query",
    "check_headers",
    "fingerprint",
    "forwarded_headers",
]

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

#: Headers every request may carry once at most, whatever the vendor (lower case).
_SINGLE_FOR_ALL = frozenset(
    ("authorization", "content-type", "content-length", "transfer-encoding", "host")
)
# Visible ASCII; space and tab also inside a value.
_HEADER_NAME = re.compile(rb"[!-~]+")
_HEADER_VALUE = re.compile(rb"[ \t!-~]*")
_JSON_START = frozenset('{["')
# A parameter name: a plain top-level part, then bracketed parts (``metadata[k]``,
# ``items[0][price]``, ``expand[]``). ``amount]`` or ``[amount]`` is refused: a lenient
# reader may take either for ``amount``.
_NAME = re.compile(r"[^\[\]\s]+(?:\[[^\[\]]*\])*")


@attrs.frozen
class HeaderRules:
    """One vendor's request headers: which are passed on, and which may come once only."""

    #: Passed on as the client sent them (one value each), by lower-case name.
    forwarded: Mapping[str, str]
    #: May come once at most (lower case): those forwarded, those the policy reads, and the
    #: framing headers.
    single: frozenset[str]

    @classmethod
    def for_vendor(cls, vendor: Vendor[Any]) -> HeaderRules:
        forwarded = {h.lower(): h for h in vendor.all_forwarded_headers}
        guarded = {h.lower() for h in vendor.guarded_headers}
        return cls(forwarded, _SINGLE_FOR_ALL | set(forwarded) | guarded)


class BadRequest(Exception):
    """The request can be read more than one way; refuse it with 400 ``bad_request``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_headers(raw_headers: Iterable[tuple[bytes, bytes]], single: frozenset[str]) -> None:
    """Refuse header bytes outside visible ASCII and repeats of the ``single`` headers (lower
    case names, :attr:`HeaderRules.single`).

    Raises:
        BadRequest: such a header.
    """
    seen: set[str] = set()
    for name, value in raw_headers:
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise BadRequest("header names and values must be visible ASCII")
        lowered = name.decode("ascii").lower()
        if lowered in single:
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
    _media_type(content_type, FORM)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8") from None
    if text.lstrip()[:1] in _JSON_START:
        raise BadRequest("the request body looks like JSON but is sent as a form")
    return _encode(_pairs(text, "request body")).encode("ascii")


def _media_type(content_type: str, expected: str) -> None:
    """Refuse a content type other than ``expected``, or with a parameter other than
    ``charset=utf-8``."""
    media, _, params = content_type.partition(";")
    if media.strip().lower() != expected:
        raise BadRequest(f"a request body must be sent as {expected}")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if param.strip() and (
            name.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8"
        ):
            raise BadRequest(f"a body is {expected} with no parameter but charset=utf-8")


def canonical_json(content_type: str, body: bytes) -> bytes:
    """A JSON body re-encoded from its one reading (``b""`` for no body).

    Raises:
        BadRequest: another content type or charset, not strict UTF-8, not JSON, an object
            that repeats a key, ``NaN`` or ``Infinity``, a number out of range, or nesting
            deeper than 32 (see :func:`keybrake.vendors._pricing.read_strict_json`).
    """
    if not body:
        return b""
    _media_type(content_type, JSON)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8") from None
    try:
        value = read_strict_json(text)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def canonical_query(query: str) -> str:
    """The query string re-encoded from its pairs.

    Raises:
        BadRequest: not a strict form.
    """
    if not query:
        return ""
    return _encode(_pairs(query, "query string"))


def forwarded_headers(
    headers: Mapping[str, str],
    forwarded: Mapping[str, str],
    *,
    authorization: str,
    extra: Mapping[str, str],
) -> list[tuple[str, str]]:
    """The headers to send the vendor: those of ``forwarded`` (:attr:`HeaderRules.forwarded`)
    the client gave (checked to be single by :func:`check_headers`), then ``extra`` and the
    credential, which win."""
    out = {
        forwarded[name.lower()]: value
        for name, value in headers.items()
        if name.lower() in forwarded
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
