"""What a Resend request can cost, decided before it is sent: each recipient of each e-mail.

The proxy has already read the JSON body strictly (one ``application/json`` reading, no repeated
key, no ``NaN``) and re-encoded it canonically; these rules read that one body.

- **Credentials are never proxied** (403 ``endpoint_not_allowed``, every method, reads
  included): ``/api-keys`` (a new key would send mail without keybrake; deleting one would
  cut off the operator's own), ``/oauth`` (grants to other applications), ``/webhooks``
  (each shows its signing secret, with which anyone can forge Resend's events to the
  operator's application) and ``/logs`` (a log entry replays the bodies of earlier requests
  and answers, those secrets among them). A first segment is compared as a lenient router
  might read it: case-folded and cut at anything that can't be part of a name
  (``API-KEYS;x``).
- **Reads** (``GET``, ``HEAD``) are free, of the resources in :data:`READABLE_RESOURCES`
  only, named exactly (``%20emails`` is not ``emails``): a read of anything else, a
  resource Resend adds tomorrow included, is 403 ``endpoint_not_allowed``.
- **Parameters of a write** belong in its JSON body: any query string is refused (400
  ``bad_request``).
- **Sending** (``POST /emails``: one e-mail object; ``POST /emails/batch``: a JSON array of 1
  to :data:`MAX_BATCH` of them, more is 400 as Resend refuses it) costs, for each e-mail, its
  recipients times the price per e-mail (``usd_per_email``, default
  :data:`DEFAULT_USD_PER_EMAIL`), rounded up to micro-dollars. The recipients are every entry
  of ``to`` (required), ``cc`` and ``bcc``, each an address or a list of addresses, counted
  as Resend would send: duplicates count each time, and an entry counts once per ``@`` in it
  (at least once; read after NFKC, so a full-width ``U+FF20`` is an ``@`` too), so
  ``"a@x, b@y"`` is two e-mails whether or not Resend splits it. An entry that is not a
  non-empty string, or more than :data:`MAX_ADDRESSES` entries in one field (Resend refuses
  them anyway), is 400.
- **What an e-mail may hold** is an allowlist (:data:`EMAIL_FIELDS`, and
  :data:`ATTACHMENT_FIELDS`, :data:`TAG_FIELDS`, :data:`TEMPLATE_FIELDS` inside): a field
  keybrake doesn't know is 400, because a field added tomorrow could carry recipients
  (``react`` is the Node SDK's, never the API's). ``headers`` is an object of strings whose
  names are RFC 5322 field names and whose values hold no line break or control character
  (a line break would inject a header); a header an MTA may read as recipients
  (:data:`RECIPIENT_HEADERS`: ``To``, ``Cc``, ``Bcc``, the ``Resent-`` ones, ... in any letter
  case, and the receipt requests) is 400: recipients belong in ``to``, ``cc`` and ``bcc``,
  where they are priced. Nor may the other fields that become header lines (``from``,
  ``subject``, ``reply_to``, attachments' names and types, tags) break a line.
  ``topic_id`` and ``template`` may only narrow or fill in a send: neither adds a recipient.
- **Free writes** (:data:`FREE_WRITES`), which can't make Resend send anything:
  rescheduling (``PATCH /emails/{id}``, only ``scheduled_at``: the e-mail was priced when it
  was sent to Resend), cancelling (``POST /emails/{id}/cancel``; what was counted stays
  counted) and sharing (``POST /emails/{id}/share``) an e-mail; creating, updating,
  publishing, duplicating and deleting templates (a template names no recipient). An id in
  their path is letters, digits, ``-`` and ``_`` only (``batch%3F`` is no id), and their
  bodies are objects: a cancel holds
  nothing but the id, a share nothing but ``expires_in``, and no other may name ``to``,
  ``cc`` or ``bcc``.
- **Unpriced** (403 ``unpriced_endpoint``): anything that mails a list keybrake can't count
  before it is sent: broadcasts (``POST /broadcasts/{id}/send``, a create with
  ``"send": true``, and every other broadcast write, which could change who a scheduled one
  reaches), automations and the events that start them, inboxes (a draft is sent, an agent
  replies), and the audience behind them all (contacts, audiences, segments, topics, contact
  properties, suppressions): adding a contact can start an automation that mails it. So are
  writes to domains: a domain set up to receive mail (``capabilities``) has Resend count
  every e-mail anyone sends it against the account's quota, unbounded. So is
  any other write, to a path Resend adds tomorrow included: the rules fail closed. The
  operator may mark endpoints free in the pricing file (``free_endpoints``); credentials stay
  refused.

After a 2xx the quote stands, except for a batch sent with ``x-batch-validation:
permissive``: Resend lists the e-mails it refused (``errors[].index``), and only the others
are counted. Resend reports no prices afterwards.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from keybrake._common import EndpointPattern
from keybrake.vendors._pricing import (
    FREE,
    Counted,
    Lookup,
    Outcome,
    PriceReport,
    PricingRefusal,
    Quote,
    VendorRequest,
    decimal_setting,
    endpoint_patterns,
    nothing_counted,
    parse_json,
    usd_to_micros,
)

__all__ = [
    "ATTACHMENT_FIELDS",
    "CREDENTIAL_RESOURCES",
    "MAX_ADDRESSES",
    "DEFAULT_USD_PER_EMAIL",
    "EMAIL_FIELDS",
    "FREE_WRITES",
    "MAX_BATCH",
    "READABLE_RESOURCES",
    "RECIPIENT_HEADERS",
    "TAG_FIELDS",
    "TEMPLATE_FIELDS",
    "ResendPricer",
    "ResendPricing",
    "recipients",
]

#: USD per e-mail delivered to one recipient.
DEFAULT_USD_PER_EMAIL = Decimal("0.0009")
#: The most e-mails Resend takes in one ``POST /emails/batch``.
MAX_BATCH = 100

#: The fields of an e-mail object keybrake knows (Resend's "Send Email" body).
EMAIL_FIELDS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "html",
        "text",
        "reply_to",
        "headers",
        "attachments",
        "tags",
        "scheduled_at",
        "template",
        "topic_id",
    }
)
#: The fields of one attachment: its content or a URL Resend fetches, and how it is shown.
ATTACHMENT_FIELDS = frozenset(
    {"content", "filename", "path", "content_type", "content_id", "inline_content_id"}
)
#: The fields of one tag.
TAG_FIELDS = frozenset({"name", "value"})
#: The fields of ``template``: a published template's id (or alias) and its variables.
TEMPLATE_FIELDS = frozenset({"id", "variables"})
#: Header names (case-folded) an MTA may read as recipients (``sendmail -t`` reads ``To``,
#: ``Cc``, ``Bcc`` and, when present, the ``Resent-`` ones instead).
RECIPIENT_HEADERS = frozenset(
    {
        "to",
        "cc",
        "bcc",
        "resent-to",
        "resent-cc",
        "resent-bcc",
        "apparently-to",
        "envelope-to",
        "x-envelope-to",
        # Not recipients of this e-mail, but where a reader's mail client sends a receipt.
        "disposition-notification-to",
        "return-receipt-to",
    }
)
#: Fields that become header lines: a line break in one could add a header, recipients too.
_ONE_LINE_FIELDS = ("from", "subject", "reply_to")
_ONE_LINE_ITEM_FIELDS = {"attachments": ("filename", "content_type"), "tags": ("name", "value")}
#: First path segments, as :func:`_name` reads them, that hold or make a credential.
#: ``logs`` too: a log entry replays a request's and its answer's bodies, a new API key's
#: token or a webhook's signing secret among them.
CREDENTIAL_RESOURCES = frozenset({"api-keys", "logs", "oauth", "webhooks"})
#: First path segments keybrake lets an agent read (free). A read of anything else (a
#: resource Resend adds tomorrow, which might show a secret) is refused.
READABLE_RESOURCES = frozenset(
    {
        "audiences",
        "broadcasts",
        "contact-properties",
        "contacts",
        "domains",
        "emails",
        "segments",
        "templates",
        "topics",
    }
)
#: The most entries Resend takes in one of ``to``, ``cc``, ``bcc``.
MAX_ADDRESSES = 50
#: First path segments of the resources that decide who broadcasts and automations mail.
_AUDIENCE_RESOURCES = frozenset(
    {
        "audiences",
        "automations",
        "broadcasts",
        "contact-properties",
        "contacts",
        "events",
        "inboxes",
        "segments",
        "suppressions",
        "topics",
    }
)
#: Writes that can't make Resend send anything: (method, path shape, ``*`` one segment).
FREE_WRITES: frozenset[tuple[str, tuple[str, ...]]] = frozenset(
    {
        ("PATCH", ("emails", "*")),
        ("POST", ("emails", "*", "cancel")),
        ("POST", ("emails", "*", "share")),
        ("POST", ("templates",)),
        ("PATCH", ("templates", "*")),
        ("DELETE", ("templates", "*")),
        ("POST", ("templates", "*", "publish")),
        ("POST", ("templates", "*", "duplicate")),
    }
)
#: What a reschedule (``PATCH /emails/{id}``) may say; the Python SDK repeats the id.
_RESCHEDULE_FIELDS = frozenset({"id", "scheduled_at"})
#: What the body of each other free e-mail write may say.
_EMAIL_ACTION_FIELDS = {"cancel": frozenset({"id"}), "share": frozenset({"id", "expires_in"})}
#: Fields no free write's body may hold (they could name recipients to a lenient reader).
_RECIPIENT_FIELDS = frozenset({"to", "cc", "bcc"})
#: A resource id or alias in a path (``*`` of :data:`FREE_WRITES`), and a first segment.
_ID = re.compile(r"[A-Za-z0-9_-]+")

_EMAILS = ("emails",)
_BATCH = ("emails", "batch")
#: An RFC 5322 header field name: printable ASCII but ``:``.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_NAME = re.compile(r"[a-z0-9_-]*")


@attrs.frozen(kw_only=True)
class ResendPricing:
    """The operator's Resend price settings."""

    usd_per_email: Decimal = DEFAULT_USD_PER_EMAIL
    free_endpoints: tuple[EndpointPattern, ...] = ()

    @classmethod
    def from_mapping(cls, data: Any) -> ResendPricing:
        """Read the ``"resend"`` section of a pricing file.

        ``usd_per_email`` is the price of one e-mail to one recipient (a decimal string);
        ``free_endpoints`` lists patterns the operator declares free.

        Raises:
            ValueError: a malformed section.
        """
        if not isinstance(data, Mapping):
            raise ValueError("resend: expected an object")
        unknown = set(data) - {"usd_per_email", "free_endpoints"}
        if unknown:
            raise ValueError(f"resend: unknown settings {sorted(unknown)}")
        price = DEFAULT_USD_PER_EMAIL
        if "usd_per_email" in data:
            price = decimal_setting(data["usd_per_email"], "resend.usd_per_email")
        try:
            free = endpoint_patterns(data.get("free_endpoints", []), "resend.free_endpoints")
        except ValueError as exc:
            raise ValueError(f"resend.free_endpoints: {exc}") from None
        return cls(usd_per_email=price, free_endpoints=free)


def _name(segment: str) -> str:
    """A path segment as a lenient router might read it: case-folded and cut at the first
    character that can't be part of a name (``API-KEYS;x`` is ``api-keys``)."""
    match = _NAME.match(segment.casefold())
    return match[0] if match else ""


def _shape_matches(shape: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    """``segments`` (case-folded) fit ``shape``; each ``*`` is a plain id (no ``%3F``)."""
    return len(shape) == len(segments) and all(
        (_ID.fullmatch(seg) is not None) if s == "*" else s == seg
        for s, seg in zip(shape, segments, strict=True)
    )


def _check_free_write(segments: tuple[str, ...], body: Any) -> None:
    """A free write's body: an object (or none) that names no recipient; an e-mail action's
    holds only its own fields.

    Raises:
        PricingRefusal: 400 ``bad_request``.
    """
    if body is None:
        return
    if not isinstance(body, dict):
        raise _refuse("the body of this write must be a JSON object")
    if segments[0] == "emails" and len(segments) == 2:
        _check_reschedule(body)
    elif segments[0] == "emails":
        allowed = _EMAIL_ACTION_FIELDS[segments[2]]
        if set(body) - allowed:
            raise _refuse(f"{segments[2]} takes only {sorted(allowed)}")
    elif set(body) & _RECIPIENT_FIELDS:
        raise _refuse("this write names no recipient; 'to', 'cc' and 'bcc' are refused")


def _refuse(message: str) -> PricingRefusal:
    return PricingRefusal(400, "bad_request", message)


def _addresses(value: Any, field: str, *, required: bool, where: str) -> int:
    """How many e-mails an address field sends: one per ``@`` of each entry, at least one.

    Raises:
        PricingRefusal: 400 for an entry that is not a non-empty string, or a ``to`` that
            names nobody.
    """
    if value is None and not required:
        return 0
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or (required and not entries):
        raise _refuse(f"{where}'{field}' must be an address or a non-empty list of addresses")
    if len(entries) > MAX_ADDRESSES:
        raise _refuse(f"{where}'{field}' holds at most {MAX_ADDRESSES} addresses, as in Resend")
    total = 0
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise _refuse(f"{where}'{field}' holds {entry!r}, which is not an address")
        total += max(1, unicodedata.normalize("NFKC", entry).count("@"))
    return total


def _check_headers(value: Any, where: str) -> None:
    """``headers``: an object of strings, none naming recipients or breaking a line.

    Raises:
        PricingRefusal: 400 ``bad_request``.
    """
    if value is None:
        return
    if not isinstance(value, dict):
        raise _refuse(f"{where}'headers' must be an object of strings")
    for name, text in value.items():
        if not _FIELD_NAME.fullmatch(name):
            raise _refuse(f"{where}header name {name!r} is not an RFC 5322 field name")
        if name.casefold() in RECIPIENT_HEADERS:
            raise _refuse(
                f"{where}header {name!r} names recipients: put them in 'to', 'cc' or 'bcc',"
                " where they are priced"
            )
        if not isinstance(text, str):
            raise _refuse(f"{where}header {name!r} must be a string")
        if _breaks_line(text):
            raise _refuse(f"{where}header {name!r} holds a line break or control character")


def _breaks_line(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") and ch != "\t" for ch in text)


def _check_one_line(email: dict[str, Any], where: str) -> None:
    """Refuse a line break or control character in a field that becomes a header line.

    Raises:
        PricingRefusal: 400 ``bad_request``.
    """
    found = [(field, email.get(field)) for field in _ONE_LINE_FIELDS]
    for field, names in _ONE_LINE_ITEM_FIELDS.items():
        items = email.get(field)
        for item in items if isinstance(items, list) else []:
            found += [(f"{field}.{name}", item.get(name)) for name in names]
    for field, value in found:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and _breaks_line(text) for text in texts):
            raise _refuse(f"{where}'{field}' holds a line break or control character")


def _check_fields(item: Any, field: str, allowed: frozenset[str], where: str) -> None:
    """One object (an attachment, a tag, the template) whose fields are all known.

    Raises:
        PricingRefusal: 400 ``bad_request``.
    """
    if not isinstance(item, dict):
        raise _refuse(f"{where}'{field}' must hold objects")
    unknown = set(item) - allowed
    if unknown:
        raise _refuse(f"{where}'{field}' has fields keybrake doesn't know: {sorted(unknown)}")


def _check_list(value: Any, field: str, allowed: frozenset[str], where: str) -> None:
    """A list of objects (``attachments``, ``tags``) whose fields are all known.

    Raises:
        PricingRefusal: 400 ``bad_request``.
    """
    if value is None:
        return
    if not isinstance(value, list):
        raise _refuse(f"{where}'{field}' must be a list of objects")
    for item in value:
        _check_fields(item, field, allowed, where)


def recipients(email: Any, *, where: str = "") -> int:
    """How many e-mails one e-mail object sends: its ``to``, ``cc`` and ``bcc`` entries.

    Args:
        email: one e-mail object, as parsed from the request's JSON.
        where: a prefix for messages (``"e-mail 3 of the batch: "``).

    Raises:
        PricingRefusal: 400 ``bad_request`` for an e-mail that is not an object, has a field
            keybrake doesn't know, headers naming recipients, or malformed recipients.
    """
    if not isinstance(email, dict):
        raise _refuse(f"{where}an e-mail must be a JSON object")
    unknown = set(email) - EMAIL_FIELDS
    if unknown:
        raise _refuse(
            f"{where}fields keybrake doesn't know (they could carry recipients): {sorted(unknown)}"
        )
    _check_headers(email.get("headers"), where)
    _check_list(email.get("attachments"), "attachments", ATTACHMENT_FIELDS, where)
    _check_list(email.get("tags"), "tags", TAG_FIELDS, where)
    _check_one_line(email, where)
    if email.get("template") is not None:
        _check_fields(email["template"], "template", TEMPLATE_FIELDS, where)
    return (
        _addresses(email.get("to"), "to", required=True, where=where)
        + _addresses(email.get("cc"), "cc", required=False, where=where)
        + _addresses(email.get("bcc"), "bcc", required=False, where=where)
    )


def _batch(body: Any) -> list[int]:
    """Each e-mail's recipients, for a batch.

    Raises:
        PricingRefusal: 400 for a batch that is not a list of 1 to 100 e-mails, or one of
            them malformed.
    """
    if not isinstance(body, list) or not body:
        raise _refuse("a batch is a JSON array of e-mail objects")
    if len(body) > MAX_BATCH:
        raise _refuse(f"a batch holds at most {MAX_BATCH} e-mails, not {len(body)}")
    return [
        recipients(email, where=f"e-mail {index} of the batch: ")
        for index, email in enumerate(body)
    ]


class ResendPricer:
    """Resend's pricing rules, with the operator's settings."""

    name = "resend"

    def __init__(self, settings: ResendPricing | None = None) -> None:
        self.settings = settings or ResendPricing()

    def price(self, count: int) -> int:
        """``count`` e-mails to one recipient each, in micro-dollars, rounded up."""
        return usd_to_micros(self.settings.usd_per_email * count)

    async def quote(
        self, request: VendorRequest, lookup: Lookup, counted: Counted = nothing_counted
    ) -> Quote:
        """The most the request can cost: each recipient of each e-mail it sends.

        Raises:
            PricingRefusal: a malformed request (400 ``bad_request``), a credential resource
                (403 ``endpoint_not_allowed``), or a write keybrake can't bound (403
                ``unpriced_endpoint``).
        """
        segments = tuple(s.casefold() for s in request.segments)
        resource = _name(request.segments[0]) if request.segments else ""
        if resource in CREDENTIAL_RESOURCES:
            raise PricingRefusal(
                403,
                "endpoint_not_allowed",
                f"/{request.segments[0]} holds or makes a credential: credential resources are"
                " never proxied",
            )
        method = request.method
        if method in ("GET", "HEAD"):
            # The first segment exactly, too: a router that trims or decodes once more could
            # read ' api-keys' (``%20api-keys``) as api-keys.
            if resource not in READABLE_RESOURCES or not _ID.fullmatch(request.segments[0]):
                raise PricingRefusal(
                    403,
                    "endpoint_not_allowed",
                    f"reading /{request.segments[0] if request.segments else ''} is not"
                    " allowed: keybrake lets agents read only Resend resources it knows hold"
                    " no secret",
                )
            return FREE
        if request.query:
            raise _refuse(f"Resend {method} parameters belong in the JSON body")
        body = parse_json(request)
        if any(p.matches(method, request.segments) for p in self.settings.free_endpoints):
            return FREE
        if method == "POST" and segments == _EMAILS:
            return Quote(self.price(recipients(body)))
        if method == "POST" and segments == _BATCH:
            return Quote(self.price(sum(_batch(body))))
        if any(m == method and _shape_matches(s, segments) for m, s in FREE_WRITES):
            _check_free_write(segments, body)
            return FREE
        if resource == "broadcasts":
            raise PricingRefusal(
                403,
                "unpriced_endpoint",
                f"{method} {request.path}: a broadcast mails a whole audience, whose size"
                " keybrake can't bound before it is sent",
            )
        if resource in _AUDIENCE_RESOURCES:
            raise PricingRefusal(
                403,
                "unpriced_endpoint",
                f"{method} {request.path} changes who broadcasts and automations mail, which"
                " keybrake can't price",
            )
        raise PricingRefusal(
            403, "unpriced_endpoint", f"{method} {request.path} has no Resend price rule"
        )

    def outcome(self, request: VendorRequest, quote: Quote, body: bytes) -> Outcome:
        """The quote, with the e-mail's id; for a batch Resend answered with ``errors``
        (``x-batch-validation: permissive``), only the e-mails it accepted."""
        data = _json(body)
        segments = tuple(s.casefold() for s in request.segments)
        if request.method != "POST" or not isinstance(data, dict):
            return Outcome(quote.micros)
        if segments == _EMAILS:
            sent_id = data.get("id")
            return Outcome(quote.micros, object_id=sent_id if isinstance(sent_id, str) else None)
        if segments == _BATCH and isinstance(data.get("errors"), list):
            accepted = self._accepted(request, data)
            return Outcome(quote.micros if accepted is None else min(quote.micros, accepted))
        return Outcome(quote.micros)

    def _accepted(self, request: VendorRequest, data: Mapping[str, Any]) -> int | None:
        """What the e-mails of a permissive batch that Resend accepted cost, or None unless
        its answer accounts for every e-mail (each sent or refused, not both)."""
        try:
            counts = _batch(parse_json(request))
        except PricingRefusal:
            return None
        refused: set[int] = set()
        for error in data["errors"]:
            index = error.get("index") if isinstance(error, dict) else None
            if isinstance(index, bool) or not isinstance(index, int):
                return None
            refused.add(index)
        sent = data.get("data")
        if (
            not refused <= set(range(len(counts)))
            or not isinstance(sent, list)
            or len(sent) + len(refused) != len(counts)
        ):
            return None
        return self.price(sum(c for i, c in enumerate(counts) if i not in refused))

    def reports(self, request: VendorRequest, body: bytes) -> list[PriceReport]:
        """Nothing: Resend reports no prices after the fact."""
        return []


def _check_reschedule(body: Any) -> None:
    """A reschedule may only move ``scheduled_at``.

    Raises:
        PricingRefusal: 400 for any other field.
    """
    if body is None:
        return
    if not isinstance(body, dict):
        raise _refuse("a reschedule is a JSON object")
    unknown = set(body) - _RESCHEDULE_FIELDS
    if unknown:
        raise _refuse(f"a reschedule may only set 'scheduled_at', not {sorted(unknown)}")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
