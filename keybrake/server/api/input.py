"""Reading what a client sends the issuance API: query parameters and JSON bodies.

Every value is checked here before a handler or the store sees it, so that no input, however
odd, becomes anything but a ``400 bad_request`` naming the ``param`` at fault.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import date
from decimal import Decimal
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from keybrake.server.http import deadlines

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_QUERY_VALUE",
    "BadRequest",
    "is_day",
    "is_whole_number",
    "query",
    "query_int",
    "read_json_object",
]

#: Deepest nesting of arrays and objects a request body may have (the API needs 2).
MAX_JSON_DEPTH = 8
#: Longest query parameter value; ids and cursors are far shorter.
MAX_QUERY_VALUE = 200


class BadRequest(Exception):
    """Input the API refuses: answered ``400 bad_request`` with ``message`` and ``param``."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body, a JSON object in UTF-8, nested at most :data:`MAX_JSON_DEPTH` deep.

    The depth is measured before parsing, so no body can make the parser (or anything that
    walks its result) recurse deeply.

    Raises:
        BadRequest: not UTF-8, not JSON, not an object, too deep, or with a string that
            can't be stored.
        aiohttp.web.HTTPRequestTimeout: the body didn't arrive within
            :data:`~keybrake.server.http.deadlines.BODY_TIMEOUT` seconds.
    """
    if "Content-Encoding" in request.headers:
        raise BadRequest("a compressed request body is not accepted (Content-Encoding)")
    try:
        text = (await deadlines.read_body(request)).decode("utf-8-sig") or "{}"
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    except (HttpProcessingError, web.RequestPayloadError):
        raise BadRequest("the request body can't be read") from None
    if _nesting(text) > MAX_JSON_DEPTH:
        raise BadRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(text, parse_float=Decimal)
    except (ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    if not _storable(data):
        raise BadRequest("request body has a string that can't be stored (NUL or lone surrogate)")
    return data


_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _nesting(text: str) -> int:
    """How deep a JSON text's arrays and objects nest, strings skipped; linear, in C loops."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _storable(value: Any) -> bool:
    """Whether every string in a JSON value can be stored as UTF-8 text (``"\\ud800"`` can't,
    nor can PostgreSQL hold a NUL); recursion is bounded by :data:`MAX_JSON_DEPTH`."""
    if isinstance(value, str):
        return "\x00" not in value and _utf8(value)
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def query(request: web.Request, name: str) -> str | None:
    """One query parameter, or None if absent; every handler reads its parameters here.

    Raises:
        BadRequest: given twice (which one would count?), too long, or with characters
            that are not visible (controls, NUL) in it.
    """
    values = request.query.getall(name, [])
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"'{name}' may be given only once", param=name)
    value = values[0]
    if len(value) > MAX_QUERY_VALUE or not value.isprintable():
        raise BadRequest(
            f"'{name}' must be at most {MAX_QUERY_VALUE} visible characters", param=name
        )
    return value


_WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")


def is_whole_number(text: str, low: int, high: int) -> bool:
    """Whether ``text`` is ASCII digits for a number from ``low`` to ``high`` (at most 19)."""
    return _WHOLE_NUMBER.fullmatch(text) is not None and low <= int(text) <= high


def query_int(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    """A whole-number query parameter from ``low`` to ``high``, or ``default`` if absent.

    Raises:
        BadRequest: anything but such a number, or as :func:`query`.
    """
    raw = query(request, name)
    if raw is None:
        return default
    if not is_whole_number(raw, low, high):
        raise BadRequest(f"'{name}' must be a whole number from {low} to {high}", param=name)
    return int(raw)


_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def is_day(text: str) -> bool:
    """Whether ``text`` is a UTC calendar day as the store names spend windows (``YYYY-MM-DD``)."""
    try:
        return _DAY.fullmatch(text) is not None and bool(date.fromisoformat(text))
    except ValueError:
        return False
