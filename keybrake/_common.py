"""What both the SDK and the server need: durations, money, times and endpoint patterns.

This module imports neither side, so either can use it without pulling in the other.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

import attrs

__all__ = [
    "MAX_LABEL",
    "MAX_METADATA",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_NAME",
    "MAX_METADATA_VALUE",
    "MAX_RATE",
    "MICROS_PER_USD",
    "EndpointPattern",
    "UnsafePathError",
    "format_time",
    "format_usd",
    "label_problem",
    "metadata_problem",
    "normalise_path",
    "parse_duration",
    "parse_rate",
    "parse_time",
    "to_micros",
]

MICROS_PER_USD = 1_000_000

#: What a key's label and metadata may be, checked alike by the SDK (where a key is
#: defined) and the server (where it is issued): an operator reads them on the dashboard
#: and in ``keybrake keys``, and an agent may choose them.
MAX_LABEL = 200
MAX_METADATA = 50
MAX_METADATA_NAME = 64
MAX_METADATA_VALUE = 512
#: All of a key's metadata together, in UTF-8 bytes.
MAX_METADATA_BYTES = 8 * 1024
#: Characters no label or metadata may hold: controls, format characters (zero-width
#: spaces, bidi overrides: a label that reads as another's), surrogates, line separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _shown_text(value: str) -> bool:
    """Text that reads as what it is: no control, format or separator character."""
    return value.isprintable() or not any(
        unicodedata.category(ch) in _HIDDEN_CATEGORIES for ch in value
    )


def label_problem(label: object) -> str | None:
    """What is wrong with a key's label (``None``: nothing)."""
    if not isinstance(label, str) or len(label) > MAX_LABEL:
        return f"label must be a string of at most {MAX_LABEL} characters"
    if not _shown_text(label):
        return (
            "label may not hold control, format or line-separator characters (a label must"
            " read as what it is)"
        )
    return None


def metadata_problem(metadata: object) -> str | None:
    """What is wrong with a key's metadata (``None``: nothing)."""
    if (
        not isinstance(metadata, Mapping)
        or len(metadata) > MAX_METADATA
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        return f"metadata must map at most {MAX_METADATA} strings to strings"
    for name, value in metadata.items():
        if not 0 < len(name) <= MAX_METADATA_NAME or len(value) > MAX_METADATA_VALUE:
            return (
                f"metadata names are 1 to {MAX_METADATA_NAME} characters and values at most"
                f" {MAX_METADATA_VALUE}"
            )
        if not (_shown_text(name) and _shown_text(value)):
            return "metadata may not hold control, format or line-separator characters"
    if sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items()) > MAX_METADATA_BYTES:
        return f"metadata may hold at most {MAX_METADATA_BYTES} bytes in all"
    return None


#: Largest daily cap we accept: a billion dollars is a typo, not a policy.
MAX_USD = Decimal("1000000000")

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | int | timedelta) -> timedelta:
    """Parse a TTL: ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, an int of seconds or a timedelta.

    Raises:
        ValueError: the value is not a positive duration.
    """
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    elif isinstance(value, int):
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. '30s', '5m', '2h')")
        result = timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2] or "s"])
    else:
        raise ValueError(f"not a duration: {value!r}")
    if result <= timedelta(0):
        raise ValueError(f"duration must be positive: {value!r}")
    return result


_RATE = re.compile(r"([1-9][0-9]{0,5})/(s|m|h)")  # matched whole: "1/s\n" is not one
#: Most requests a rate limit may allow per window.
MAX_RATE = 100_000


def parse_rate(value: str) -> tuple[int, int]:
    """Parse a rate limit, ``"N/s"``, ``"N/m"`` or ``"N/h"``: at most N requests in any window
    of a second, a minute or an hour.

    Returns:
        ``(N, window in seconds)``.

    Raises:
        ValueError: not such a rate, or N outside 1 to :data:`MAX_RATE`.
    """
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match[1]) > MAX_RATE:
        raise ValueError(
            f"not a rate limit: {value!r} (use e.g. '10/s', '100/m' or '1000/h',"
            f" at most {MAX_RATE} per window)"
        )
    return int(match[1]), _UNIT_SECONDS[match[2]]


def to_micros(value: int | str | Decimal) -> int:
    """Convert a USD amount to integer micro-dollars, exactly.

    Floats are refused: ``0.1`` is not a price anybody meant.

    Raises:
        ValueError: not a non-negative amount with at most six decimals, or absurdly large.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise ValueError(f"not a USD amount: {value!r} (use int, str or Decimal)")
    try:
        amount = Decimal(value) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"not a USD amount: {value!r}") from None
    if not amount.is_finite() or amount < 0 or amount > MAX_USD:
        raise ValueError(f"not a USD amount: {value!r}")
    # Checked on the digits, before any arithmetic (which would round 1e-999999999 to 0).
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if any(digits) and exponent + trailing < -6:
        raise ValueError(f"USD amount has more than six decimals: {value!r}")
    micros = amount * MICROS_PER_USD
    return int(micros)


def format_usd(micros: int) -> str:
    """Render micro-dollars as a decimal string with at least two decimals (``"500.00"``)."""
    amount = Decimal(micros) / MICROS_PER_USD
    text = f"{amount:f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{whole}.{frac}"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix; fractions of a second only when present."""
    moment = moment.astimezone(timezone.utc)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware datetime (Python 3.10 lacks ``Z`` support)."""
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return moment


class UnsafePathError(ValueError):
    """A path that can't be normalised safely (dot segments, encoded ``/``, ``\\``, ...)."""


_PATH_SAFE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%-]*$")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
# Encoded characters that could change how a path splits or is resolved.
_FORBIDDEN_DECODED = {"/", "\\", ".", "\x00"}
# Unreserved characters (RFC 3986) other than ".": an escape of one means the character itself.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")


def _decode_escape(match: re.Match[str]) -> str:
    decoded = chr(int(match[1], 16))
    return decoded if decoded in _UNRESERVED else "%" + match[1].upper()


def normalise_path(raw_path: str) -> tuple[str, ...]:
    """Split an absolute request path into its segments, refusing anything ambiguous.

    The path is the raw (still percent-encoded) path. Escapes of unreserved characters are
    decoded (``%41ccounts`` is ``Accounts``) and the others are written in upper case, so
    every spelling of a path gives the same segments, which are what is matched, priced and
    forwarded. Refused: a relative path, empty segments (``//`` or a trailing ``/``), ``.``
    and ``..`` segments, encoded ``.``, ``/``, ``\\`` or NUL, backslashes, control characters
    and anything that is not a legal path character.

    Raises:
        UnsafePathError: the path can't be matched safely.
    """
    if not raw_path.startswith("/"):
        raise UnsafePathError("path must start with '/'")
    segments = raw_path[1:].split("/")
    for index, segment in enumerate(segments):
        if segment == "":
            raise UnsafePathError("empty path segment")
        if not _PATH_SAFE.match(segment):
            raise UnsafePathError("illegal character in path")
        for match in _PCT.finditer(segment):
            decoded = chr(int(match[1], 16))
            if decoded in _FORBIDDEN_DECODED or not decoded.isprintable():
                raise UnsafePathError("encoded separator, dot or control character in path")
        if "%" in _PCT.sub("", segment):
            raise UnsafePathError("malformed percent-encoding in path")
        if segment in (".", ".."):
            raise UnsafePathError("dot segment in path")
        if "%" in segment:
            segments[index] = _PCT.sub(_decode_escape, segment)
    return tuple(segments)


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@attrs.frozen
class EndpointPattern:
    """One allowlist entry: ``"[METHOD ]/path"``.

    ``*`` matches exactly one path segment; a trailing ``/**`` matches any number of further
    segments, none included (``/v1/refunds/**`` matches ``/v1/refunds`` and everything below
    it); no method means any method.
    """

    text: str
    method: str | None
    segments: tuple[str, ...]
    open_ended: bool

    @classmethod
    def parse(cls, text: str) -> EndpointPattern:
        """Parse one pattern.

        Raises:
            ValueError: the pattern is malformed.
        """
        if not isinstance(text, str):
            raise ValueError(f"endpoint pattern must be a string: {text!r}")
        method: str | None = None
        path = text.strip()
        if " " in path:
            method, _, path = path.partition(" ")
            method = method.upper()
            path = path.strip()
            if method not in _METHODS:
                raise ValueError(f"unknown HTTP method in endpoint pattern: {text!r}")
        open_ended = path.endswith("/**")
        if open_ended:
            path = path[:-3] or "/"
        if path == "/" and open_ended:
            segments: tuple[str, ...] = ()
        else:
            try:
                segments = normalise_path(path)
            except UnsafePathError as exc:
                raise ValueError(f"invalid endpoint pattern {text!r}: {exc}") from None
        if any("**" in s for s in segments):
            raise ValueError(f"'**' may only end an endpoint pattern: {text!r}")
        if any("*" in s and s != "*" for s in segments):
            raise ValueError(f"'*' must be a whole segment of an endpoint pattern: {text!r}")
        return cls(text=text, method=method, segments=segments, open_ended=open_ended)

    def matches(self, method: str, segments: tuple[str, ...]) -> bool:
        """Whether a request (method, normalised path segments) falls under this pattern."""
        if self.method is not None and self.method != method.upper():
            return False
        n = len(self.segments)
        if self.open_ended:
            if len(segments) < n:
                return False
        elif len(segments) != n:
            return False
        return all(p == "*" or p == s for p, s in zip(self.segments, segments, strict=False))
