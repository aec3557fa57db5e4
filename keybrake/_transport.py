"""Sending vendor calls through the proxy with a vault key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import attrs

from keybrake._client import decode_error
from keybrake._errors import KeybrakeError, KeybrakeTimeout, KeybrakeUnavailable

__all__ = ["ProxyResponse", "ProxyTransport"]


@attrs.frozen
class ProxyResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class ProxyTransport:
    """Calls ``{proxy_url}/{vendor}/...`` with the vault key as bearer token.

    Answers the proxy gave itself (marked with ``Keybrake-Error``) become keybrake's
    exceptions; the vendor's own answers are returned for the vendor client to interpret.
    """

    def __init__(
        self,
        *,
        vendor: str,
        proxy_url: str,
        session: Callable[[], aiohttp.ClientSession],
        token: Callable[[], str],
        check: Callable[[], None] = lambda: None,
    ) -> None:
        self.vendor = vendor
        self.base_url = f"{proxy_url}/{vendor}"
        self._session = session
        self._token = token
        self._check = check

    def __repr__(self) -> str:
        return f"ProxyTransport({self.base_url!r})"

    async def send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        form: Sequence[tuple[str, str]] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> ProxyResponse:
        """Send one request; raise if the proxy itself refused it.

        ``form`` is sent as ``application/x-www-form-urlencoded``, ``json`` (if not None) as
        ``application/json``, as the vendor takes it.

        Raises:
            ProxyRefused: a policy refusal (cap, endpoint, key state).
            KeybrakeUnavailable: the proxy or the vendor could not be reached.
        """
        self._check()
        all_headers = {"Authorization": f"Bearer {self._token()}", **(headers or {})}
        try:
            async with self._session().request(
                method,
                self.base_url + path,
                params=list(query) if query else None,
                data=list(form) if form is not None else None,
                json=json,
                headers=all_headers,
            ) as response:
                body = await response.read()
        except asyncio.TimeoutError as exc:
            raise KeybrakeTimeout("the keybrake proxy did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise KeybrakeUnavailable(f"can't reach the keybrake proxy: {exc}") from exc
        if "Keybrake-Error" in response.headers:
            error: KeybrakeError = decode_error(
                response.status, response.headers, body, source="proxy"
            )
            raise error
        return ProxyResponse(response.status, response.headers, body)
