"""``vk.twilio``: a typed Twilio client that talks to Twilio through the keybrake proxy.

The proxy pins every request to the account it is configured with, so the client addresses a
placeholder account. Sends (``messages.create``, ``calls.create``) are never retried: a send
that may have reached Twilio could be sent twice. Reads are retried on transient failures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import attrs

from keybrake._errors import TwilioError
from keybrake._retry import RetryPolicy
from keybrake._transport import ProxyTransport

__all__ = ["PLACEHOLDER_ACCOUNT_SID", "Call", "Calls", "Message", "Messages", "TwilioClient"]

#: The account SID the client puts in paths; the proxy replaces it with its own account's.
PLACEHOLDER_ACCOUNT_SID = "AC" + "0" * 32
API_VERSION = "2010-04-01"


def _str(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    return value if isinstance(value, str) else None


def _int(raw: Mapping[str, Any], name: str) -> int | None:
    value = raw.get(name)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _decimal(raw: Mapping[str, Any], name: str) -> Decimal | None:
    value = raw.get(name)
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _time(raw: Mapping[str, Any], name: str) -> datetime | None:
    """Twilio's dates are RFC 2822 (``"Thu, 24 Aug 2023 05:01:45 +0000"``)."""
    value = raw.get(name)
    if not isinstance(value, str):
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


@attrs.frozen(kw_only=True)
class Message:
    """A Twilio Message. ``price`` is negative, in ``price_unit``, and None until known."""

    sid: str
    status: str
    to: str | None = None
    from_: str | None = None
    body: str | None = None
    num_segments: int | None = None
    price: Decimal | None = None
    price_unit: str | None = None
    date_created: datetime | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Message:
        return cls(
            sid=str(raw["sid"]),
            status=str(raw.get("status", "")),
            to=_str(raw, "to"),
            from_=_str(raw, "from"),
            body=_str(raw, "body"),
            num_segments=_int(raw, "num_segments"),
            price=_decimal(raw, "price"),
            price_unit=_str(raw, "price_unit"),
            date_created=_time(raw, "date_created"),
            raw=dict(raw),
        )


@attrs.frozen(kw_only=True)
class Call:
    """A Twilio Call. ``duration`` in seconds; ``price`` as for ``Message``."""

    sid: str
    status: str
    to: str | None = None
    from_: str | None = None
    duration: int | None = None
    price: Decimal | None = None
    price_unit: str | None = None
    start_time: datetime | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Call:
        return cls(
            sid=str(raw["sid"]),
            status=str(raw.get("status", "")),
            to=_str(raw, "to"),
            from_=_str(raw, "from"),
            duration=_int(raw, "duration"),
            price=_decimal(raw, "price"),
            price_unit=_str(raw, "price_unit"),
            start_time=_time(raw, "start_time"),
            raw=dict(raw),
        )


def _twilio_error(status: int, headers: Mapping[str, str], data: Any) -> TwilioError:
    fields: Mapping[str, Any] = data if isinstance(data, dict) else {}
    message = fields.get("message") or fields.get("detail") or fields.get("title")
    code = fields.get("code")
    return TwilioError(
        str(message or f"Twilio answered HTTP {status}"),
        status=status,
        code=None if code is None else str(code),
        request_id=headers.get("Twilio-Request-Id"),
        body=fields,
        vendor_fields=fields,
    )


def _form(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Twilio's form encoding: ``from_`` is ``From``, lists repeat their name."""
    out: list[tuple[str, str]] = []
    for name, value in params.items():
        if value is None:
            continue
        key = "From" if name == "from_" else name
        for item in value if isinstance(value, (list, tuple)) else [value]:
            out.append((key, "true" if item is True else "false" if item is False else str(item)))
    return out


def _pascal(name: str) -> str:
    """``status_callback`` -> ``StatusCallback``; names already in PascalCase are kept."""
    if name == "from_":
        return name
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


class TwilioClient:
    """Twilio through the proxy: ``messages`` and ``calls``; ``request()`` for the rest."""

    def __init__(
        self,
        transport: ProxyTransport,
        *,
        retry: RetryPolicy | None = None,
        account_sid: str = PLACEHOLDER_ACCOUNT_SID,
    ) -> None:
        self._transport = transport
        self._retry = retry or RetryPolicy()
        self.account_sid = account_sid
        self.messages = Messages(self)
        self.calls = Calls(self)

    def __repr__(self) -> str:
        return f"TwilioClient({self._transport.base_url!r})"

    def account_path(self, resource: str) -> str:
        """``/2010-04-01/Accounts/{sid}/{resource}``."""
        return f"/{API_VERSION}/Accounts/{self.account_sid}/{resource}"

    async def request(
        self, method: str, path: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Call any Twilio endpoint (``path`` from the API root, e.g. ``account_path(...)``).

        Only reads (``GET``) are retried.

        Raises:
            TwilioError: Twilio answered with an error (``code``, ``more_info``).
            ProxyRefused: the proxy refused the call (cap, endpoint, key state).
            KeybrakeUnavailable: the proxy or Twilio could not be reached.
        """
        method = method.upper()
        form = _form({_pascal(k): v for k, v in (params or {}).items()})

        async def attempt() -> dict[str, Any]:
            response = await self._transport.send(
                method,
                path,
                query=form if method == "GET" else None,
                form=form if method != "GET" else None,
            )
            try:
                data = json.loads(response.body) if response.body else {}
            except ValueError:
                data = None
            if response.status >= 400 or not isinstance(data, dict):
                raise _twilio_error(response.status, response.headers, data)
            return data

        if method != "GET":
            return await attempt()
        return await self._retry.call(attempt)


class Messages:
    """``vk.twilio.messages``."""

    def __init__(self, client: TwilioClient) -> None:
        self._client = client

    async def create(self, *, to: str, from_: str | None = None, **params: Any) -> Message:
        """Send a message (``body=``, ``media_url=[...]``, ``messaging_service_sid=``, ...).

        The proxy reserves its price (segments times the destination's price) first.
        Never retried.

        Raises:
            SpendCapExceeded: the message would take the key past its cap.
            TwilioError: Twilio refused it.
        """
        data = await self._client.request(
            "POST", self._client.account_path("Messages.json"), {"to": to, "from_": from_, **params}
        )
        return Message.from_json(data)

    async def retrieve(self, sid: str) -> Message:
        """Fetch a message; its ``price`` appears once Twilio knows it."""
        path = self._client.account_path(f"Messages/{quote(sid, safe='')}.json")
        return Message.from_json(await self._client.request("GET", path))

    async def list(self, *, page_size: int = 50, **filters: Any) -> list[Message]:
        """One page of messages (``to=``, ``from_=``, ``date_sent=``, ``page_size=``)."""
        data = await self._client.request(
            "GET", self._client.account_path("Messages.json"), {"PageSize": page_size, **filters}
        )
        items = data.get("messages")
        return [Message.from_json(m) for m in items] if isinstance(items, list) else []


class Calls:
    """``vk.twilio.calls``."""

    def __init__(self, client: TwilioClient) -> None:
        self._client = client

    async def create(self, *, to: str, from_: str, **params: Any) -> Call:
        """Place a call (``url=`` or ``twiml=``, ``time_limit=`` in seconds, ...).

        The proxy cuts ``time_limit`` to its configured maximum and reserves that many
        minutes first. TwiML fetched from a URL (``url=``, ``fallback_url=``,
        ``application_sid=``, a ``<Redirect>`` in ``twiml=``) must be the operator's own (the
        server's ``twilio.twiml_urls``); other TwiML could dial anywhere and is refused
        (:class:`~keybrake.ProxyRefused`, 403 ``unpriced_endpoint``). Never retried.
        """
        data = await self._client.request(
            "POST", self._client.account_path("Calls.json"), {"to": to, "from_": from_, **params}
        )
        return Call.from_json(data)

    async def retrieve(self, sid: str) -> Call:
        """Fetch a call."""
        path = self._client.account_path(f"Calls/{quote(sid, safe='')}.json")
        return Call.from_json(await self._client.request("GET", path))
