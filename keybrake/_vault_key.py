"""``VaultKey``: one short-lived, scoped, capped key for the length of an ``async with`` block."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import attrs

from keybrake._client import Keybrake
from keybrake._config import ClientConfig
from keybrake._errors import (
    ConfigurationError,
    KeybrakeError,
    VaultKeyExpired,
    VaultKeyRevoked,
)
from keybrake._key_spec import Cap, Duration, KeySpec
from keybrake._lifecycle import KEEPALIVE_FRACTION, REVOKE_TIMEOUT, Held
from keybrake._models import IssuedKey
from keybrake._transport import ProxyTransport
from keybrake.vendors import Vendor, get_vendor
from keybrake.vendors import resend as _resend
from keybrake.vendors import stripe as _stripe
from keybrake.vendors import twilio as _twilio
from keybrake.vendors.resend.client import ResendClient
from keybrake.vendors.stripe.client import StripeClient
from keybrake.vendors.twilio.client import PLACEHOLDER_ACCOUNT_SID, TwilioClient

if TYPE_CHECKING:
    import stripe as stripe_sdk  # the names 'stripe' and 'twilio' are VaultKey properties
    import twilio.rest as twilio_sdk
    from typing_extensions import Self

__all__ = [
    "REVOKE_TIMEOUT",
    "BaseRunOptions",
    "KeyOptions",
    "RunOptions",
    "SpecOptions",
    "VaultKey",
    "resolve_spec",
]

log = logging.getLogger("keybrake")

T = TypeVar("T")
C = TypeVar("C")


@attrs.frozen
class _OfficialClient:
    """How to close an official SDK client handed out by a key."""

    close: Callable[[], object]
    close_async: Callable[[], Awaitable[object]] | None


class BaseRunOptions(TypedDict, total=False):
    """The run options of both facades (this one and ``keybrake.sync``), ``client`` aside."""

    on_lost: Callable[[KeybrakeError], object] | None
    cancel_on_loss: bool
    token: str | None
    api_url: str | None
    proxy_url: str | None


class SpecOptions(TypedDict, total=False):
    """A [`KeySpec`][keybrake.KeySpec]'s keyword fields after ``label``."""

    keepalive: bool
    max_lifetime: Duration | None
    metadata: Mapping[str, str] | None
    stripe_account: str | None
    rate_limit: str | None
    max_requests: int | None
    budget: object


class RunOptions(BaseRunOptions, total=False):
    """How a ``VaultKey`` runs, apart from what its ``KeySpec`` says.

    The keyword options of [`VaultKey.from_spec()`][keybrake.VaultKey.from_spec], which
    ``@vault_key`` and the integrations pass on.
    """

    client: Keybrake | None


class KeyOptions(RunOptions, SpecOptions, total=False):
    """The keyword options of ``VaultKey(vendor, endpoints, cap, ttl, ...)`` after ``label``.

    What ``@vault_key(vendor, endpoints, cap=..., ttl=..., **options)`` and the integrations
    accept besides a [`KeySpec`][keybrake.KeySpec]'s first fields.
    """


_SPEC_OPTIONS = SpecOptions.__optional_keys__
_RUN_OPTIONS = RunOptions.__optional_keys__


def resolve_spec(
    spec: KeySpec | str,
    endpoints: list[str] | tuple[str, ...] | None,
    *,
    cap: Cap | None,
    ttl: Duration | None,
    label: str | None,
    options: Mapping[str, Any],
) -> tuple[KeySpec, RunOptions]:
    """The spec and run options of a ``(spec | vendor, endpoints, cap=, ttl=, ...)`` call.

    ``@vault_key`` and every integration take either a [`KeySpec`][keybrake.KeySpec] (with only run
    options beside it) or the spec's fields one by one; this checks both, once, where the
    key is defined: the spec's values, the options' names, and the client settings
    (``token``, ``api_url``, ``proxy_url``) when no ``client`` is shared.

    Raises:
        ConfigurationError: a bad value (see [`KeySpec`][keybrake.KeySpec]) or client setting.
        TypeError: an unknown option, a spec together with the fields it already holds, or
            neither.
    """
    unknown = set(options) - _SPEC_OPTIONS - _RUN_OPTIONS
    if unknown:
        raise TypeError(f"unknown vault key option(s): {', '.join(sorted(unknown))}")
    spec_options = {k: v for k, v in options.items() if k in _SPEC_OPTIONS}
    run: RunOptions = {k: v for k, v in options.items() if k in _RUN_OPTIONS}  # type: ignore[assignment]
    if isinstance(spec, KeySpec):
        given = [
            name
            for name, value in [
                ("endpoints", endpoints),
                ("cap", cap),
                ("ttl", ttl),
                ("label", label),
            ]
            if value is not None
        ] + sorted(spec_options)
        if given:
            raise TypeError(f"with a KeySpec, give {', '.join(given)} in the spec, not beside it")
    else:
        if endpoints is None or cap is None or ttl is None:
            raise TypeError("give a KeySpec, or a vendor with endpoints, cap and ttl")
        spec = KeySpec(spec, endpoints, cap, ttl, label=label, **spec_options)
    if run.get("client") is None:
        ClientConfig.resolve(
            token=run.get("token"), api_url=run.get("api_url"), proxy_url=run.get("proxy_url")
        )
    return spec, run


class VaultKey(Held[IssuedKey]):
    """A vault key for one block of work: issued on enter, kept alive, revoked on exit.

    ```python
    async with VaultKey("stripe", ["/v1/payment_intents"], cap=500, ttl="5m") as vk:
        await vk.stripe.payment_intents.create(amount=2000, currency="usd")
    ```

    or, from a [`KeySpec`][keybrake.KeySpec] written down once, ``VaultKey.from_spec(spec)``.

    Revocation runs however the block ends (normally, by exception, cancellation, timeout
    or ``KeyboardInterrupt``). It is shielded from further cancellation, bounded by
    ``REVOKE_TIMEOUT``, never hides the block's own exception, and re-raises a
    cancellation.

    Args:
        vendor: ``"stripe"`` or ``"twilio"``.
        endpoints: the allowlist, a non-empty list of endpoint patterns such as
            ``"/v1/payment_intents"``, ``"GET /v1/customers/*"`` or ``"/v1/**"``.
        cap: the daily spend cap in USD: ``500``, ``"12.50"`` or ``Decimal("12.50")``;
            never a float.
        ttl: time to live: ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, seconds or a
            ``timedelta``.
        label: a name for the key, shown in server logs and key descriptions.
        keepalive: refresh the key in the background while the block runs.
        max_lifetime: a hard age limit the server enforces; not shorter than ``ttl``.
        client: a [`Keybrake`][keybrake.Keybrake] client to share; otherwise one is created
            and closed here.
        metadata: string pairs stored with the key.
        stripe_account: Stripe keys only: the connected account (``"acct_..."``) every
            request acts on.
        rate_limit: at most N forwarded requests in any window: ``"10/s"``, ``"100/m"``,
            ``"1000/h"`` (free requests included); over it, calls raise
            [`RateLimited`][keybrake.RateLimited].
        max_requests: at most so many forwarded requests over the key's life; past it,
            [`UsesExhausted`][keybrake.UsesExhausted].
        budget: a run budget to draw from too: an open [`Budget`][keybrake.Budget] or its
            id; over it, [`BudgetExhausted`][keybrake.BudgetExhausted].
        on_lost: called with the error when keepalive finds the key revoked or expired.
        cancel_on_loss: also cancel the task running the block when the key is lost.
        token: the master token for the [`Keybrake`][keybrake.Keybrake] client created here.
        api_url: the issuance API's URL, for the client created here.
        proxy_url: the proxy's URL, for the client created here.

    Raises:
        ConfigurationError: a bad argument (checked here) or no master token (on enter).
    """

    def __init__(
        self,
        vendor: str,
        endpoints: list[str] | tuple[str, ...],
        cap: Cap,
        ttl: Duration,
        *,
        label: str | None = None,
        keepalive: bool = True,
        max_lifetime: Duration | None = None,
        client: Keybrake | None = None,
        metadata: Mapping[str, str] | None = None,
        stripe_account: str | None = None,
        rate_limit: str | None = None,
        max_requests: int | None = None,
        budget: object = None,
        on_lost: Callable[[KeybrakeError], object] | None = None,
        cancel_on_loss: bool = False,
        token: str | None = None,
        api_url: str | None = None,
        proxy_url: str | None = None,
    ) -> None:
        spec = KeySpec(
            vendor,
            endpoints,
            cap,
            ttl,
            label=label,
            keepalive=keepalive,
            max_lifetime=max_lifetime,
            metadata=metadata,
            stripe_account=stripe_account,
            rate_limit=rate_limit,
            max_requests=max_requests,
            budget=budget,
        )
        self._setup(
            spec,
            client=client,
            on_lost=on_lost,
            cancel_on_loss=cancel_on_loss,
            token=token,
            api_url=api_url,
            proxy_url=proxy_url,
        )

    @classmethod
    def from_spec(
        cls,
        spec: KeySpec,
        *,
        client: Keybrake | None = None,
        on_lost: Callable[[KeybrakeError], object] | None = None,
        cancel_on_loss: bool = False,
        token: str | None = None,
        api_url: str | None = None,
        proxy_url: str | None = None,
    ) -> Self:
        """A vault key as ``spec`` describes it; the other arguments are as for ``VaultKey``.

        Raises:
            ConfigurationError: a bad client setting (``api_url``, ``proxy_url``).
        """
        if not isinstance(spec, KeySpec):
            raise TypeError(f"from_spec() needs a KeySpec, not {type(spec).__name__}")
        key = cls.__new__(cls)
        key._setup(
            spec,
            client=client,
            on_lost=on_lost,
            cancel_on_loss=cancel_on_loss,
            token=token,
            api_url=api_url,
            proxy_url=proxy_url,
        )
        return key

    def _setup(
        self,
        spec: KeySpec,
        *,
        client: Keybrake | None,
        on_lost: Callable[[KeybrakeError], object] | None,
        cancel_on_loss: bool,
        token: str | None,
        api_url: str | None,
        proxy_url: str | None,
    ) -> None:
        self.spec = spec
        self.on_lost = on_lost
        self.cancel_on_loss = cancel_on_loss
        self._init_lifecycle(client, token=token, api_url=api_url, proxy_url=proxy_url)
        self._expires_at: datetime | None = None
        self._lost: KeybrakeError | None = None
        self._vendor_clients: dict[str, Any] = {}
        self._official_clients: list[_OfficialClient] = []

    # -- the spec's fields, as attributes ---------------------------------------------------

    @property
    def vendor(self) -> str:
        """The vendor the key is for (``"stripe"``, ``"twilio"``)."""
        return self.spec.vendor

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoint patterns the key allows."""
        return self.spec.endpoints

    @property
    def cap(self) -> Decimal:
        """The daily spend cap, in USD."""
        return self.spec.cap

    @property
    def ttl_seconds(self) -> int:
        """How long the key lives, in seconds, before keepalive extends it."""
        return self.spec.ttl_seconds

    @property
    def max_lifetime(self) -> timedelta | None:
        """The server-side hard age limit, if one was asked for."""
        return self.spec.max_lifetime

    @property
    def label(self) -> str:
        """The key's name in logs and listings (``""`` if none)."""
        return self.spec.label or ""

    @property
    def keepalive(self) -> bool:
        """Whether the key is refreshed in the background while the block runs."""
        return self.spec.keepalive

    @property
    def metadata(self) -> Mapping[str, str]:
        """String pairs stored with the key."""
        return self.spec.metadata

    @property
    def stripe_account(self) -> str | None:
        """The Stripe connected account every request acts on, if any."""
        return self.spec.stripe_account

    # -- what the block sees ---------------------------------------------------------------

    def __repr__(self) -> str:
        key_id = self._issued.id if self._issued else None
        return f"<VaultKey {self.vendor} id={key_id!r} state={self._state}>"

    @property
    def id(self) -> str:
        """The key's id (``vk_...``); not secret."""
        return self._require_issued().id

    @property
    def token(self) -> str:
        """The key's secret token (``vault_key_...``). Never logged, never in ``repr()``."""
        return self._require_issued().token

    @property
    def expires_at(self) -> datetime:
        """When the key expires; moves forward with each keepalive refresh."""
        self._require_issued()
        assert self._expires_at is not None
        return self._expires_at

    @property
    def info(self) -> IssuedKey:
        """What the issuance API answered (without the token in ``raw``)."""
        return self._require_issued()

    @property
    def lost(self) -> KeybrakeError | None:
        """Why keepalive gave the key up, if it did."""
        return self._lost

    @property
    def stripe(self) -> StripeClient:
        """Stripe through the proxy with this key.

        A typed [`StripeClient`][keybrake.vendors.stripe.client.StripeClient].
        """
        return self.vendor_client(_stripe.VENDOR)

    @property
    def twilio(self) -> TwilioClient:
        """Twilio through the proxy with this key (messages and calls).

        A typed [`TwilioClient`][keybrake.vendors.twilio.client.TwilioClient].
        """
        return self.vendor_client(_twilio.VENDOR)

    @property
    def resend(self) -> ResendClient:
        """Resend through the proxy with this key (e-mails, priced by recipient).

        A typed [`ResendClient`][keybrake.vendors.resend.client.ResendClient].
        """
        return self.vendor_client(_resend.VENDOR)

    def vendor_client(self, vendor: Vendor[C]) -> C:
        """The typed client of an installed vendor, through the proxy with this key.

        ``vk.stripe``, ``vk.twilio`` and ``vk.resend`` are typed properties for keybrake's own
        vendors; another vendor's client is this, or an attribute named after the vendor
        (``vk.<name>``), which a type checker can't see.

        Raises:
            ConfigurationError: the key is for another vendor, or not issued yet.
        """
        self._require_issued()
        client = self._vendor_clients.get(vendor.name)
        if client is None:
            transport = self._transport(vendor.name)
            client = self._vendor_clients[vendor.name] = vendor.make_client(
                transport, self._client.retry
            )
        typed: C = client
        return typed

    if not TYPE_CHECKING:  # a type checker should still catch a misspelt attribute

        def __getattr__(self, name: str) -> Any:
            """``vk.resend`` (or any installed vendor's name): that vendor's client."""
            if not name.startswith("_"):
                plugin = get_vendor(name)
                if plugin is not None:
                    return self.vendor_client(plugin)
            raise AttributeError(f"'VaultKey' object has no attribute {name!r}")

    def stripe_client(self) -> stripe_sdk.StripeClient:
        """The official ``stripe.StripeClient``, with every base address on the proxy.

        It works sync and async (``..._async`` methods), and is closed when the key is.
        Needs ``pip install 'keybrake[stripe]'``.

        Raises:
            ConfigurationError: the ``stripe`` package is missing, or the key is for
                another vendor.
        """
        self._transport("stripe")  # checks the vendor
        self._require_open("stripe_client()")
        try:
            import stripe as stripe_sdk
        except ImportError:
            raise ConfigurationError(
                "vk.stripe_client() needs the official SDK: pip install 'keybrake[stripe]'"
            ) from None
        base = f"{self._client.config.proxy_url}/stripe"
        http_client = stripe_sdk.RequestsClient(async_fallback_client=stripe_sdk.AIOHTTPClient())
        client = stripe_sdk.StripeClient(
            self.token,
            base_addresses={"api": base, "connect": base, "files": base, "meter_events": base},
            http_client=http_client,
            max_network_retries=2,
        )
        self._official_clients.append(_OfficialClient(http_client.close, http_client.close_async))
        return client

    def twilio_client(self) -> twilio_sdk.Client:
        """The official ``twilio.rest.Client``, rebased onto the proxy.

        Its ``api`` domain (messages, calls, ...) goes through the proxy, which pins the
        account; the vault key is the auth token. A request for any other Twilio host
        (verify, lookups, ...) raises [`EndpointNotAllowed`][keybrake.EndpointNotAllowed] before
        anything is sent, so the key never leaves for a host that isn't the proxy. Closed when
        the key is. Needs ``pip install 'keybrake[twilio]'``.

        Raises:
            ConfigurationError: the ``twilio`` package is missing, or the key is for
                another vendor.
        """
        self._transport("twilio")
        self._require_open("twilio_client()")
        try:
            from twilio.rest import Client
        except ImportError:
            raise ConfigurationError(
                "vk.twilio_client() needs the official SDK: pip install 'keybrake[twilio]'"
            ) from None
        from keybrake.vendors.twilio.official import proxy_only_http_client

        http_client = proxy_only_http_client(self._client.config.proxy_url)
        client = Client(
            PLACEHOLDER_ACCOUNT_SID, self.token, http_client=http_client, environment={}
        )
        client.api.base_url = f"{self._client.config.proxy_url}/twilio"

        def close() -> None:
            if http_client.session is not None:
                http_client.session.close()

        self._official_clients.append(_OfficialClient(close, None))
        return client

    def _transport(self, vendor: str) -> ProxyTransport:
        if vendor != self.vendor:
            raise ConfigurationError(f"this vault key is for {self.vendor}, not {vendor}")
        return ProxyTransport(
            vendor=vendor,
            proxy_url=self._client.config.proxy_url,
            session=self._client.http,
            token=lambda: self.token,
            check=self._check_usable,
        )

    def _require_open(self, what: str) -> None:
        if self._state != "open":
            raise ConfigurationError(f"{what} needs an open vault key (it is {self._state})")

    def _check_usable(self) -> None:
        if self._lost is not None:
            raise self._lost

    # -- lifecycle ---------------------------------------------------------------------------

    _kind = "VaultKey"
    _noun = "vault key"

    async def _issue(self) -> IssuedKey:
        return await self._client.issue_key(self.spec, idempotency_key=f"kb-{uuid.uuid4()}")

    async def _send_revoke(self, issued: IssuedKey) -> object:
        return await self._client.revoke_key(issued.id)

    def _opened(self, issued: IssuedKey) -> None:
        self._expires_at = issued.expires_at

    def _wants_keepalive(self) -> bool:
        return self.keepalive

    async def _closing(self) -> None:
        await self._close_official_clients()

    async def _close_official_clients(self) -> None:
        clients, self._official_clients = self._official_clients, []
        for official in clients:
            try:
                official.close()
                if official.close_async is not None:
                    await official.close_async()
            except Exception:  # closing a client must not hide the block's outcome
                log.warning("closing an official SDK client failed", exc_info=True)

    async def _keep_alive(self) -> None:
        issued = self._issued
        assert issued is not None
        while True:
            assert self._expires_at is not None
            remaining = (self._expires_at - datetime.now(timezone.utc)).total_seconds()
            if self._expires_at >= issued.max_expires_at:
                return  # can't be extended any further; the TTL will end it
            delay = max(0.05, remaining * KEEPALIVE_FRACTION * random.uniform(0.9, 1.0))
            await asyncio.sleep(delay)
            try:
                lease = await self._client.refresh_key(issued.id, expires_in=self.ttl_seconds)
            except KeybrakeError as exc:
                if exc.status in (404, 409):  # revoked, expired or gone: it won't come back
                    self._mark_lost(exc)
                    return
                if datetime.now(timezone.utc) >= self._expires_at:
                    self._mark_lost(
                        VaultKeyExpired(f"vault key {issued.id} expired: keepalive failed ({exc})")
                    )
                    return
                log.warning("keepalive of vault key %s failed, will retry: %s", issued.id, exc)
                continue
            self._expires_at = lease.expires_at

    def _mark_lost(self, cause: KeybrakeError) -> None:
        issued = self._require_issued()
        if cause.code == "key_revoked" or (cause.status == 404):
            lost: KeybrakeError = VaultKeyRevoked(
                f"vault key {issued.id} was revoked", status=401, code="key_revoked"
            )
        else:
            lost = VaultKeyExpired(
                f"vault key {issued.id} has expired", status=401, code="key_expired"
            )
        self._lost = lost
        log.warning("vault key %s lost: %s", issued.id, lost.message)
        if self.on_lost is not None:
            try:
                self.on_lost(lost)
            except Exception:
                log.exception("on_lost callback failed")
        if self.cancel_on_loss and self._owner_task is not None:
            self._owner_task.cancel()
