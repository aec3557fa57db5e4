"""What a Twilio request can cost, decided before it is sent.

Only the v2010 API below one account is proxied, and never a credential:

- **Paths**: anything not below ``/2010-04-01/Accounts/{sid}/`` is refused (403
  ``endpoint_not_allowed``), whatever the key's allowed endpoints say, as are the account list
  and the account itself (``/2010-04-01/Accounts[.json]``, ``/2010-04-01/Accounts/{sid}[.json]``:
  they show the master auth token, and a ``POST`` can suspend or close the account) and every
  resource that holds or makes a credential (:data:`CREDENTIAL_RESOURCES`: API and signing
  keys, network traversal tokens, SIP credential lists, credentials, IP access control lists
  and their mappings, Connect apps), for every method, reads included. A segment is compared
  as a lenient router might read it: case-folded, percent-decoded, cut at its extension or at
  anything that can't be part of a name (``KEYS.json``, ``keys;x``).
- The account SID in a path is replaced by the configured account's, so a vault key can only
  ever act on that account (``accounts`` spelt in any case included).
- **Parameters**: a ``POST``'s parameters belong in its form body; any query string is refused
  (400 ``bad_request``). A parameter may repeat only if Twilio's OpenAPI spec types it as an
  array for that path (``MediaUrl``, ``StatusCallbackEvent``, ..., :mod:`._spec`).
- **Messages** (``POST .../Messages.json``): SMS are priced as segments times the per-segment
  price for the destination; a body that fits GSM-7 makes segments of 160 characters (153
  when split), anything else is UCS-2 with 70 (67) UTF-16 units. A message that may be an MMS
  (a ``MediaUrl``, ``SendAsMms`` anything but ``false``, or a template) is priced at the
  dearer of the MMS price and the SMS price (Twilio sends media as a link where MMS isn't
  supported: one more segment). A templated message (``ContentSid``) is bounded by the
  largest body Twilio sends (1,600 characters of UCS-2).
- **Calls** (``POST .../Calls.json``): ``TimeLimit`` is forced down to the configured maximum
  and the call is reserved as that many minutes times the per-minute price for the
  destination, plus, for inline ``Twiml``, each leg its ``<Dial>`` opens (each ``<Number>``,
  or the Dial's text) at its destination's per-minute price for as many minutes; a ``<Sip>``,
  ``<Client>``, ``<Conference>``, ``<Queue>``, ``<Enqueue>``, ``<Refer>``, ``<Connect>``, ...
  is refused (403 ``unpriced_endpoint``), malformed TwiML or TwiML with a ``<!DOCTYPE`` is
  400 ``bad_request`` (:mod:`._twiml` has the rules). Such a call's estimate is never lowered
  to the price Twilio reports for it (that is its own leg's).
- **Updates** of a live call (``POST .../Calls/{sid}.json``) cost what their inline TwiML
  dials, for the longest a call may last; a ``TimeLimit`` given there is cut like one given
  at creation, and its minutes are reserved again at the price for the call's ``to``,
  looked up at Twilio (an update may run the call longer than was reserved when it was
  placed). Updates of messages (redact, cancel) are free.
- **Addresses** (``To``, numbers inline TwiML dials) are ASCII; ``ShortenUrls`` is refused
  (Twilio rewrites the body after pricing).
- Prices are looked up by the longest matching prefix of the destination's digits
  (``"1"`` for the US and Canada, ``"44"`` for the UK, ...), falling back to ``"default"``;
  with no match the request is refused (403 ``unpriced_endpoint``). ``"1"`` means the US and
  Canada only: a ``+1`` number of another country or a US territory (876 Jamaica, 809 the
  Dominican Republic, 787 Puerto Rico, ...; :mod:`._nanp`) takes a prefix as long as its area
  code (``"1876"``) or ``"default"``. An address not in international form (no ``+``) takes
  only its channel's price or ``"default"``: Twilio reads it in the sender's country.
- Reads and deletes of the rest are free; any other ``POST`` is refused as
  ``unpriced_endpoint`` unless the operator marks it free.

Twilio reports a message's or call's ``price`` late. The estimate stays counted until a
fetched message or call shows its price; then the spend is corrected to it.

- **TwiML from a URL** may dial anywhere, and only the call's own leg would be priced: a
  call (created or updated) whose ``Url`` or ``FallbackUrl``, or a URL in whose inline
  ``Twiml`` (a ``<Redirect>``, an ``action``, a ``url``), isn't under one of the operator's
  ``twiml_urls`` prefixes is refused (403 ``unpriced_endpoint``), as is an
  ``ApplicationSid`` not among the operator's ``twiml_applications``. With neither set, a
  call runs inline TwiML only. What the operator's own TwiML dials is the operator's to
  bound.

What these rules can't see: features billed on top of a call's minutes (recording,
transcription, answering machine detection, speech recognition, premium voices) are not
priced.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

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
    parse_form,
    single_values,
    usd_to_micros,
)
from keybrake.vendors.twilio._nanp import US_CA_AREA_CODES
from keybrake.vendors.twilio._spec import ARRAY_PARAMETERS
from keybrake.vendors.twilio._twiml import dialled_numbers, fetched_urls

try:  # Unicode's grapheme clusters, which the standard library doesn't segment
    import regex

    _GRAPHEMES: regex.Pattern[str] | None = regex.compile(r"\X")
except ImportError:  # pragma: no cover - a core install: sms_segments bounds without them
    _GRAPHEMES = None

__all__ = [
    "CREDENTIAL_RESOURCES",
    "DEFAULT_CALL_PRICES",
    "DEFAULT_MAX_CALL_MINUTES",
    "DEFAULT_MMS_PRICES",
    "DEFAULT_SMS_PRICES",
    "TwilioPricer",
    "TwilioPricing",
    "sms_segments",
]

#: USD per SMS segment, by destination prefix.
DEFAULT_SMS_PRICES: Mapping[str, Decimal] = {
    "1": Decimal("0.0083"),
    "44": Decimal("0.0524"),
    "default": Decimal("0.20"),
}
#: USD per MMS message, by destination prefix.
DEFAULT_MMS_PRICES: Mapping[str, Decimal] = {
    "1": Decimal("0.0220"),
    "default": Decimal("0.50"),
}
#: USD per call minute, by destination prefix.
DEFAULT_CALL_PRICES: Mapping[str, Decimal] = {
    "1": Decimal("0.0140"),
    "44": Decimal("0.0170"),
    "default": Decimal("0.60"),
}
#: Calls are cut off (``TimeLimit``) after this many minutes.
DEFAULT_MAX_CALL_MINUTES = 10
#: Twilio's limit on a message body, in characters.
MAX_BODY = 1600

_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = frozenset("^{}\\[~]|€\f")


def sms_segments(body: str) -> int:
    """How many SMS segments Twilio sends for a body.

    A body that fits one segment (160 GSM-7 septets, or 70 UTF-16 units) is one. A longer one
    is packed into parts of 153 septets (67 units) the way Twilio packs it: an escaped GSM
    character (two septets), a surrogate pair or a grapheme cluster (Unicode's extended
    grapheme clusters, UAX #29, as the ``regex`` module of the ``server`` extra reads them) is
    never split across two parts, so ``"]" * 153`` takes three parts, not two. Without
    ``regex`` a UCS-2 body of more than one part is bounded without its clusters: at most
    twice the parts its units fill, plus one (any two parts in a row hold more than one
    part's units), too many rather than too few.
    """
    if all(ch in _GSM_BASIC or ch in _GSM_EXTENDED for ch in body):
        pieces = [2 if ch in _GSM_EXTENDED else 1 for ch in body]
        single, part = 160, 153
    else:
        single, part = 70, 67
        if _GRAPHEMES is None:
            units = len(body.encode("utf-16-le")) // 2
            return 1 if units <= single else 2 * -(-units // part) + 1
        pieces = [len(c.encode("utf-16-le")) // 2 for c in _GRAPHEMES.findall(body)]
    if sum(pieces) <= single:
        return 1
    segments, used = 1, 0
    for size in pieces:
        if used + size > part:
            segments, used = segments + 1 + (size - 1) // part, (size - 1) % part + 1
        else:
            used += size
    return segments


_UNSAFE_URL = re.compile(r"[^\x21-\x7e]|\\")
_UNSAFE_PATH = re.compile(r"%2e|%2f|%5c|;", re.IGNORECASE)
_APPLICATION_SID = re.compile(r"AP[0-9a-fA-F]{32}")
#: A message's or call's SID in a path, before its extension: letters and digits.
_SID = re.compile(r"[A-Za-z0-9]+")


@attrs.frozen
class _Origin:
    """A URL as compared against the operator's TwiML prefixes."""

    scheme: str
    netloc: str
    path: str

    @classmethod
    def parse(cls, url: str) -> _Origin | None:
        """The URL's scheme, host (with its port unless it is the scheme's own) and path, or
        None for one that different parsers or servers may read differently: spaces,
        controls, backslashes, non-ASCII, user info, no host, and a path with a dot segment
        or anything a server may decode or cut into one (``%2e``, ``%2f``, ``%5c``, ``;``)."""
        if _UNSAFE_URL.search(url):
            return None
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        scheme = parts.scheme.casefold()
        if scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
            return None
        path = parts.path or "/"
        if _UNSAFE_PATH.search(path) or any(s in (".", "..") for s in path.split("/")):
            return None
        netloc = parts.netloc.casefold().removesuffix(":")
        netloc = netloc.removesuffix(":443" if scheme == "https" else ":80")
        return cls(scheme, netloc, path)

    def holds(self, other: _Origin) -> bool:
        """Whether ``other`` is this prefix or below it."""
        return (
            other.scheme == self.scheme
            and other.netloc == self.netloc
            and other.path.startswith(self.path)
        )


def _twiml_urls(value: Any) -> tuple[str, ...]:
    where = "twilio.twiml_urls"
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of URL prefixes")
    for url in value:
        origin = _Origin.parse(url)
        parts = urlsplit(url) if origin is not None else None
        if origin is None or parts is None or parts.query or parts.fragment:
            raise ValueError(f"{where}: {url!r} is not an http(s) URL without query or user")
        if not parts.path.endswith("/"):
            raise ValueError(f"{where}: {url!r} must end its path with '/' (a folder)")
    return tuple(value)


def _twiml_applications(value: Any) -> frozenset[str]:
    where = "twilio.twiml_applications"
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(
        isinstance(v, str) and _APPLICATION_SID.fullmatch(v) for v in value
    ):
        raise ValueError(f"{where}: expected a list of TwiML app SIDs (AP + 32 hex digits)")
    return frozenset(value)


def _price_table(value: Any, where: str, default: Mapping[str, Decimal]) -> dict[str, Decimal]:
    if value is None:
        return dict(default)
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping of destination prefix to USD price")
    return {str(k): decimal_setting(v, f"{where}.{k}") for k, v in value.items()}


@attrs.frozen(kw_only=True)
class TwilioPricing:
    """The operator's Twilio price settings. A table given in a pricing file replaces the
    default table whole, so leaving out ``"default"`` makes unknown destinations refused."""

    sms_usd_per_segment: Mapping[str, Decimal] = attrs.field(
        factory=lambda: dict(DEFAULT_SMS_PRICES)
    )
    mms_usd_per_message: Mapping[str, Decimal] = attrs.field(
        factory=lambda: dict(DEFAULT_MMS_PRICES)
    )
    call_usd_per_minute: Mapping[str, Decimal] = attrs.field(
        factory=lambda: dict(DEFAULT_CALL_PRICES)
    )
    max_call_minutes: int = DEFAULT_MAX_CALL_MINUTES
    free_endpoints: tuple[EndpointPattern, ...] = ()
    #: Where the operator serves its own TwiML: a call may have Twilio fetch TwiML only from
    #: a URL under one of these prefixes (scheme and host as given, path below the prefix's).
    twiml_urls: tuple[str, ...] = ()
    #: TwiML apps (``AP...``) whose voice URL the operator controls: a call may name one.
    twiml_applications: frozenset[str] = frozenset()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TwilioPricing:
        """Read the ``"twilio"`` section of a pricing file.

        Raises:
            ValueError: a malformed section.
        """
        known = {
            "sms_usd_per_segment",
            "mms_usd_per_message",
            "call_usd_per_minute",
            "max_call_minutes",
            "free_endpoints",
            "twiml_urls",
            "twiml_applications",
        }
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"twilio: unknown settings {sorted(unknown)}")
        minutes = data.get("max_call_minutes", DEFAULT_MAX_CALL_MINUTES)
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 0 < minutes <= 240:
            raise ValueError("twilio.max_call_minutes: expected a whole number from 1 to 240")
        return cls(
            sms_usd_per_segment=_price_table(
                data.get("sms_usd_per_segment"), "twilio.sms_usd_per_segment", DEFAULT_SMS_PRICES
            ),
            mms_usd_per_message=_price_table(
                data.get("mms_usd_per_message"), "twilio.mms_usd_per_message", DEFAULT_MMS_PRICES
            ),
            call_usd_per_minute=_price_table(
                data.get("call_usd_per_minute"), "twilio.call_usd_per_minute", DEFAULT_CALL_PRICES
            ),
            max_call_minutes=minutes,
            free_endpoints=endpoint_patterns(
                data.get("free_endpoints", []), "twilio.free_endpoints"
            ),
            twiml_urls=_twiml_urls(data.get("twiml_urls")),
            twiml_applications=_twiml_applications(data.get("twiml_applications")),
        )


#: Resources below an account that hold or make a credential, by name as :func:`_name` reads
#: it: API keys and signing keys (their ``secret``), network traversal tokens (a TURN
#: ``password``), SIP credential lists, credentials, IP access control lists, their
#: addresses and their mappings onto SIP domains (who may place calls as the account), and
#: Connect apps (where the account's authorisations are redirected). Never proxied, whatever
#: the method and the key's allowed endpoints.
CREDENTIAL_RESOURCES = frozenset(
    {
        "auth",
        "connectapps",
        "credentiallistmappings",
        "credentiallists",
        "credentials",
        "ipaccesscontrollistmappings",
        "ipaccesscontrollists",
        "ipaddresses",
        "keys",
        "signingkeys",
        "tokens",
    }
)

_NAME = re.compile(r"[a-z0-9_-]*")


def _name(segment: str) -> str:
    """A path segment as a lenient router might read it: decoded, case-folded and cut at
    the first character that can't be part of a name (``Keys.json``, ``KEYS;x`` and
    ``%4Beys`` are all ``keys``)."""
    match = _NAME.match(unquote(segment).casefold())
    return match[0] if match else ""


def _account_resource(segments: tuple[str, ...]) -> tuple[str, ...]:
    """The path below the account (``("Messages.json",)``, ``("Calls", "CA1.json")``, ...).

    Raises:
        PricingRefusal: 403 ``endpoint_not_allowed`` for a path that is not below
            ``/2010-04-01/Accounts/{sid}/``, or that names a credential resource.
    """
    under_accounts = len(segments) >= 2 and segments[0] == "2010-04-01"
    under_accounts = under_accounts and _name(segments[1]) == "accounts"
    if under_accounts and len(segments) <= 3:
        raise PricingRefusal(
            403,
            "endpoint_not_allowed",
            "an account and the account list show its auth token: credential resources are"
            " never proxied",
        )
    if not under_accounts:
        raise PricingRefusal(
            403, "endpoint_not_allowed", "only /2010-04-01/Accounts/{AccountSid}/... is proxied"
        )
    resource = segments[3:]
    for segment in resource:
        if _name(segment) in CREDENTIAL_RESOURCES:
            raise PricingRefusal(
                403,
                "endpoint_not_allowed",
                f"{segment} holds or makes a credential: credential resources are never proxied",
            )
    return resource


def _spec_path(template: str) -> tuple[str, ...]:
    return tuple(s.casefold() for s in template.strip("/").split("/"))


_ARRAYS = [(_spec_path(path), names) for path, names in ARRAY_PARAMETERS.items()]

#: The parameters the price reads, by their case-folded name.
_PRICED = {
    name.casefold(): name
    for name in (
        "ApplicationSid",
        "Body",
        "ContentSid",
        "FallbackUrl",
        "MediaUrl",
        "SendAsMms",
        "ShortenUrls",
        "TimeLimit",
        "To",
        "Twiml",
        "Url",
    )
}


def _one_spelling(pairs: list[tuple[str, str]]) -> None:
    """Refuse parameter names that differ only in letter case from each other or from one the
    price reads (``timelimit``, ``to`` beside ``To``): the price reads one spelling, and a
    vendor that folds case would read the other.

    Raises:
        PricingRefusal: 400 ``bad_request``.
    """
    seen: dict[str, str] = {}
    for name, _ in pairs:
        folded = name.casefold()
        other = seen.setdefault(folded, _PRICED.get(folded, name))
        if other != name:
            raise PricingRefusal(
                400, "bad_request", f"parameter {name!r} is spelt differently from {other!r}"
            )


def _array_parameters(segments: tuple[str, ...]) -> frozenset[str]:
    """The parameters Twilio's spec lets repeat on a ``POST`` to this path."""
    folded = tuple(s.casefold() for s in segments)
    for template, names in _ARRAYS:
        if len(template) == len(folded) and all(
            t.startswith("{") or t == s for t, s in zip(template, folded, strict=True)
        ):
            return names
    return frozenset()


def _is_false(value: str) -> bool:
    return value.strip().casefold() == "false"


class TwilioPricer:
    """Twilio's pricing rules, with the operator's settings and account."""

    name = "twilio"

    def __init__(self, settings: TwilioPricing | None = None, *, account_sid: str | None) -> None:
        self.settings = settings or TwilioPricing()
        self.account_sid = account_sid
        self._twiml_prefixes = [_Origin.parse(url) for url in self.settings.twiml_urls]

    def _price_for(self, table: Mapping[str, Decimal], to: str, what: str) -> Decimal:
        """The price for a destination: its channel's (``whatsapp:``) and its longest prefix.

        Only an address in international form (``+`` and the country code) is read by its
        digits: Twilio reads other forms in the sender's country, which we don't know. A
        ``+1`` number outside the US and Canada (Caribbean, US territories) skips the
        prefixes shorter than its area code, so it never takes the ``"1"`` price.
        """
        if not to.isascii():
            # Twilio may read other digits (Arabic-Indic, full-width) as the ones we skip.
            raise PricingRefusal(400, "bad_request", f"a {what} address must be ASCII")
        channel, _, address = to.rpartition(":")
        address = address.strip()
        digits = "".join(ch for ch in address if ch in "0123456789")
        if not address.startswith("+"):
            digits = ""
        shortest = 1
        if digits.startswith("1") and digits[1:4] not in US_CA_AREA_CODES:
            shortest = 4
        prefix = f"{channel}:" if channel else ""
        for length in range(len(digits), shortest - 1, -1):
            price = table.get(prefix + digits[:length])
            if price is not None:
                return price
        price = table.get(f"{channel}:") if channel else None
        if price is None:
            price = table.get("default")
        if price is None:
            raise PricingRefusal(
                403, "unpriced_endpoint", f"no {what} price is configured for {to!r}"
            )
        return price

    def _rewrite_account(self, segments: tuple[str, ...]) -> tuple[str, ...] | None:
        """The path with the configured account (and ``Accounts`` spelt as Twilio does)."""
        if self.account_sid is None:
            return None
        return (segments[0], "Accounts", self.account_sid, *segments[3:])

    async def quote(
        self, request: VendorRequest, lookup: Lookup, counted: Counted = nothing_counted
    ) -> Quote:
        """The most the request can cost, with the account SID and ``TimeLimit`` rewritten.

        Raises:
            PricingRefusal: a malformed request (400), a credential resource or a path
                outside an account (403 ``endpoint_not_allowed``), or one nothing bounds
                (403 ``unpriced_endpoint``).
        """
        resource = _account_resource(request.segments)
        free = attrs.evolve(FREE, segments=self._rewrite_account(request.segments))
        method = request.method
        if method in ("GET", "HEAD", "DELETE"):
            return free
        if method != "POST":
            raise PricingRefusal(403, "unpriced_endpoint", f"{method} is not priced for Twilio")
        if request.query:
            raise PricingRefusal(400, "bad_request", "Twilio POST parameters belong in the body")
        pairs = parse_form(request)
        _one_spelling(pairs)
        form = single_values(pairs, _array_parameters(request.segments))
        folded = tuple(s.casefold() for s in resource)
        update = len(folded) == 2 and folded[0] in ("messages", "calls")
        if update and not _SID.fullmatch(resource[1].partition(".")[0]):
            # ``Messages/.json`` is no update of a message: a lenient router might read it as
            # ``Messages.json``, a send priced as nothing.
            raise PricingRefusal(
                400, "bad_request", f"{resource[1]!r} is not a message or call SID"
            )
        if folded == ("calls.json",) or (len(folded) == 2 and folded[0] == "calls"):
            # Before the operator's free endpoints: marking updates of calls free (a hang-up)
            # doesn't make them free to run anyone's TwiML.
            self._check_fetched_twiml(form)
        if any(p.matches(method, request.segments) for p in self.settings.free_endpoints):
            return free
        if folded == ("messages.json",):
            return attrs.evolve(free, micros=self._message_bound(pairs, form))
        if folded == ("calls.json",):
            micros, body = self._call_bound(pairs, form)
            return attrs.evolve(free, micros=micros, body=body)
        if len(folded) == 2 and folded[0] == "messages":
            return free  # redacting or cancelling an existing message
        if len(folded) == 2 and folded[0] == "calls":
            return await self._call_update(free, pairs, form, request.segments, lookup)
        raise PricingRefusal(
            403, "unpriced_endpoint", f"POST {request.path} has no Twilio price rule"
        )

    def _message_bound(self, pairs: list[tuple[str, str]], form: dict[str, str]) -> int:
        """An SMS bound by its segments; a message that may be an MMS (media, ``SendAsMms``,
        a template) by the dearer of the MMS price and the SMS price, since Twilio may still
        send it as SMS (media as a link, one more segment)."""
        to = form.get("To", "")
        if not to:
            raise PricingRefusal(400, "bad_request", "'To' is required")
        if not _is_false(form.get("ShortenUrls", "false")):
            raise PricingRefusal(
                403,
                "unpriced_endpoint",
                "'ShortenUrls' has Twilio rewrite the body after it is priced",
            )
        body = form.get("Body", "")
        media = any(name == "MediaUrl" for name, _ in pairs)
        if form.get("ContentSid"):
            segments = sms_segments("\u4e00" * MAX_BODY)
        else:
            segments = max(1, sms_segments(body)) + (1 if media else 0)
        sms = self._price_for(self.settings.sms_usd_per_segment, to, "SMS") * segments
        may_be_mms = media or not _is_false(form.get("SendAsMms", "false"))
        if not may_be_mms and not form.get("ContentSid"):
            return usd_to_micros(sms)
        mms = self._price_for(self.settings.mms_usd_per_message, to, "MMS")
        return usd_to_micros(max(sms, mms))

    def _call_bound(self, pairs: list[tuple[str, str]], form: dict[str, str]) -> tuple[int, bytes]:
        """The call to ``To``, and each leg its inline TwiML dials, for the whole time limit."""
        to = form.get("To", "")
        if not to:
            raise PricingRefusal(400, "bad_request", "'To' is required")
        limit, body = self._time_limited(pairs, form)
        price = self._price_for(self.settings.call_usd_per_minute, to, "call")
        price += self._dialled_per_minute(form)
        return usd_to_micros(price * math.ceil(limit / 60)), body

    async def _call_update(
        self,
        free: Quote,
        pairs: list[tuple[str, str]],
        form: dict[str, str],
        segments: tuple[str, ...],
        lookup: Lookup,
    ) -> Quote:
        """Updating a live call (hang up, new TwiML) costs what its new TwiML dials, for the
        longest a call may last. A ``TimeLimit`` given here is cut like one given at
        creation, and may run the call's own leg longer than was reserved when it was
        placed: its minutes are reserved again, at the price for the call's ``to`` (looked
        up at Twilio), on top of what was counted then (too much, never too little).

        Raises:
            PricingRefusal: 400 ``bad_request`` for a ``TimeLimit`` on a call Twilio doesn't
                show.
        """
        limit = self.settings.max_call_minutes * 60
        body = None
        per_minute = self._dialled_per_minute(form)
        if "TimeLimit" in form:
            limit, body = self._time_limited(pairs, form)
            per_minute += await self._own_leg_per_minute(segments, lookup)
        micros = usd_to_micros(per_minute * math.ceil(limit / 60))
        return attrs.evolve(free, micros=micros, body=body)

    async def _own_leg_per_minute(self, segments: tuple[str, ...], lookup: Lookup) -> Decimal:
        """The per-minute price of the call at ``segments`` (``.../Calls/{sid}[.ext]``)."""
        pinned = self._rewrite_account(segments) or segments
        sid = pinned[-1].partition(".")[0]
        call = await lookup("/" + "/".join([*pinned[:-1], f"{sid}.json"]))
        to = None if call is None else call.get("to")
        if not isinstance(to, str) or not to:
            raise PricingRefusal(
                400, "bad_request", "can't price a new 'TimeLimit' for a call Twilio doesn't show"
            )
        return self._price_for(self.settings.call_usd_per_minute, to, "call")

    def _check_fetched_twiml(self, form: dict[str, str]) -> None:
        """Refuse a call that would run TwiML from anywhere but the operator's own.

        Raises:
            PricingRefusal: 403 ``unpriced_endpoint``.
        """
        sources = [(f"'{name}'", form[name]) for name in ("Url", "FallbackUrl") if name in form]
        if "Twiml" in form:
            sources += [("a URL in its 'Twiml'", url) for url in fetched_urls(form["Twiml"])]
        for where, url in sources:
            origin = _Origin.parse(url)
            if origin is None or not any(
                prefix is not None and prefix.holds(origin) for prefix in self._twiml_prefixes
            ):
                raise PricingRefusal(
                    403,
                    "unpriced_endpoint",
                    f"the call's {where} has Twilio fetch TwiML that could dial anywhere: only"
                    " URLs under the operator's twilio.twiml_urls are allowed",
                )
        app = form.get("ApplicationSid")
        if app is not None and app not in self.settings.twiml_applications:
            raise PricingRefusal(
                403,
                "unpriced_endpoint",
                "the call's 'ApplicationSid' runs TwiML that could dial anywhere: only the"
                " operator's twilio.twiml_applications are allowed",
            )

    def _dialled_per_minute(self, form: dict[str, str]) -> Decimal:
        """What the legs dialled by the call's inline TwiML cost per minute together."""
        twiml = form.get("Twiml")
        if twiml is None:
            return Decimal(0)
        table = self.settings.call_usd_per_minute
        return sum(
            (self._price_for(table, number, "call") for number in dialled_numbers(twiml)),
            Decimal(0),
        )

    def _time_limited(
        self, pairs: list[tuple[str, str]], form: dict[str, str]
    ) -> tuple[int, bytes]:
        """The call's ``TimeLimit`` cut to the configured maximum, and the body saying so."""
        limit = self.settings.max_call_minutes * 60
        given = form.get("TimeLimit")
        if given is not None:
            if not given.isascii() or not given.isdigit() or int(given) <= 0:
                raise PricingRefusal(400, "bad_request", "'TimeLimit' must be a positive integer")
            limit = min(limit, int(given))
        body = urlencode(
            [(k, v) for k, v in pairs if k != "TimeLimit"] + [("TimeLimit", str(limit))]
        )
        return limit, body.encode()

    def outcome(self, request: VendorRequest, quote: Quote, body: bytes) -> Outcome:
        """The price if Twilio already knows it; else the estimate, awaiting a report.

        Only a new message or call is its own price. An update of a live call and a call
        whose TwiML dials other legs keep their estimate for good: the price Twilio reports
        for the call is its own leg's, never what the update or the other legs cost.
        """
        data = _json_object(body)
        sid = data.get("sid") if isinstance(data.get("sid"), str) else None
        if not _priced_by_its_report(request):
            return Outcome(quote.micros, final=True, object_id=sid)
        price = _usd_price(data)
        if price is not None:
            return Outcome(price, final=True, object_id=sid)
        return Outcome(quote.micros, final=sid is None, object_id=sid)

    def reports(self, request: VendorRequest, body: bytes) -> list[PriceReport]:
        """Prices of messages and calls in a fetched answer (one object or a list page)."""
        if request.method != "GET":
            return []
        data = _json_object(body)
        items: list[Any] = [data]
        for name in ("messages", "calls"):
            if isinstance(data.get(name), list):
                items = data[name]
        reports = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("sid"), str):
                continue
            price = _usd_price(item)
            if price is not None:
                reports.append(PriceReport(item["sid"], price))
        return reports


def _priced_by_its_report(request: VendorRequest) -> bool:
    """Whether the price Twilio reports for the object a request made is all it cost."""
    try:
        folded = tuple(s.casefold() for s in _account_resource(request.segments))
        if folded == ("messages.json",):
            return True
        if folded != ("calls.json",):
            return False
        form = single_values(parse_form(request), _array_parameters(request.segments))
        return "Twiml" not in form or not dialled_numbers(form["Twiml"])
    except PricingRefusal:
        return False


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _usd_price(data: Mapping[str, Any]) -> int | None:
    """A Twilio ``price`` (negative, as a string, e.g. ``"-0.00750"``) in micro-dollars."""
    price, unit = data.get("price"), data.get("price_unit")
    if price is None or str(unit or "USD").upper() != "USD":
        return None
    try:
        value = abs(Decimal(str(price)))
    except InvalidOperation:
        return None
    return usd_to_micros(value) if value.is_finite() else None
