"""keybrake for blocking code: the same ``VaultKey`` and ``Keybrake``, used with ``with``.

```python
from keybrake.sync import VaultKey

with VaultKey("stripe", ["/v1/payment_intents"], cap=50, ttl="2m") as vk:
    vk.stripe.payment_intents.create(amount=2000, currency="usd")
```

Everything runs on the async core ([`keybrake.VaultKey`][keybrake.VaultKey],
[`keybrake.Keybrake`][keybrake.Keybrake]) on an event loop of keybrake's own, on a daemon
thread started on first use, one per process; a blocking call hands its coroutine to that
loop and waits. Keepalive runs there while your code runs. Usable from any thread (many at
once), from ``asyncio.to_thread`` workers, and from processes forked after use (Celery's
prefork pool, gunicorn): a forked child starts its own loop and HTTP session.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, cast

from keybrake import _budget, _vault_key
from keybrake import _client as _async_client
from keybrake._blocking import Blocking
from keybrake._errors import ConfigurationError, KeybrakeError
from keybrake._key_spec import Cap, Duration, KeySpec, cap_string, duration_seconds
from keybrake._models import BudgetInfo, IssuedKey
from keybrake._portal import Portal, get_portal
from keybrake._sync_client import Keybrake
from keybrake.vendors import Vendor, get_vendor
from keybrake.vendors import resend as _resend
from keybrake.vendors import stripe as _stripe
from keybrake.vendors import twilio as _twilio

if TYPE_CHECKING:
    import stripe as stripe_sdk
    import twilio.rest as twilio_sdk
    from typing_extensions import Self

    from keybrake.vendors.resend.blocking import BlockingResendClient
    from keybrake.vendors.stripe.blocking import BlockingStripeClient
    from keybrake.vendors.twilio.blocking import BlockingTwilioClient

__all__ = ["Budget", "Keybrake", "VaultKey"]

C = TypeVar("C")


class RunOptions(_vault_key.BaseRunOptions, total=False):
    """The keyword options of [`VaultKey.from_spec()`][keybrake.sync.VaultKey.from_spec]."""

    client: Keybrake | None


class _Core(Protocol):
    """What the blocking faces run on the loop: an async key or budget."""

    async def __aenter__(self) -> Any: ...
    async def aclose(self) -> None: ...


CoreT = TypeVar("CoreT", bound=_Core)


class _Opened(Generic[CoreT]):
    """Entering and leaving an async core (a key, a budget) from blocking code, on the
    process's loop thread; a core left open at exit is closed then, and one opened before a
    fork belongs to the parent."""

    _kind: ClassVar[str]
    _core: CoreT | None
    _portal: Portal | None
    _pid: int
    _owns_client: bool
    _client: Keybrake

    def _make_core(self, kb: _async_client.Keybrake) -> CoreT:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _open(self) -> None:
        if self._core is not None:
            raise ConfigurationError(f"a {self._kind} can be entered only once")
        portal = self._portal = get_portal()
        kb = self._client.core()
        self._pid = os.getpid()
        core = self._core = self._make_core(kb)
        try:
            portal.call(core.__aenter__())
        except BaseException:
            if self._owns_client:
                self._client.close()
            raise
        portal.open_keys[self] = self._aclose

    def _close(self) -> None:
        if self._core is None or self._pid != os.getpid():
            return
        portal = self._portal
        assert portal is not None
        portal.open_keys.pop(self, None)
        portal.call(self._aclose())

    async def _aclose(self) -> None:
        assert self._core is not None
        try:
            await self._core.aclose()
        finally:
            if self._owns_client:
                await self._client._aclose()


class VaultKey(_Opened[_vault_key.VaultKey]):
    """A vault key for one block of blocking code: issued on enter, kept alive, revoked on
    exit.

    ```python
    with VaultKey("stripe", ["/v1/payment_intents"], cap=500, ttl="5m") as vk:
        vk.stripe.payment_intents.create(amount=2000, currency="usd")
    ```

    The same key as [`keybrake.VaultKey`][keybrake.VaultKey], with the same arguments and
    guarantees: revocation runs however the block ends, ``KeyboardInterrupt`` included
    (bounded by ``REVOKE_TIMEOUT``), and a ``KeyboardInterrupt`` during issuance revokes
    the key the server made. ``vk.stripe``, ``vk.twilio`` and every other vendor's client
    are the async clients made blocking: same methods, same models.

    Args:
        vendor: the vendor's name (``"stripe"``, ``"twilio"``, ...).
        endpoints: the allowlist of endpoint patterns.
        cap: the daily spend cap in USD; never a float.
        ttl: time to live: ``"30s"``, ``"5m"``, seconds or a ``timedelta``.
        label: a name for the key.
        keepalive: refresh the key in the background while the block runs.
        max_lifetime: a hard age limit the server enforces; not shorter than ``ttl``.
        client: a [`keybrake.sync.Keybrake`][keybrake.sync.Keybrake] to share; otherwise one
            is created and closed here.
        metadata: string pairs stored with the key.
        stripe_account: Stripe keys only: the connected account every request acts on.
        rate_limit: at most N forwarded requests in any window: ``"10/s"``, ``"100/m"``,
            ``"1000/h"``.
        max_requests: at most so many forwarded requests over the key's life.
        budget: a run budget the key draws from too: an open
            [`keybrake.sync.Budget`][keybrake.sync.Budget] or its id.
        on_lost: called with the error when keepalive finds the key revoked or expired; it
            runs on keybrake's loop thread, where it must not block or call keybrake.sync.
        cancel_on_loss: only ``False`` here: blocking code can't be cancelled; a lost key
            raises on its next use instead.
        token: the master token for the client created here.
        api_url: the issuance API's URL, for the client created here.
        proxy_url: the proxy's URL, for the client created here.

    Raises:
        ConfigurationError: a bad argument (checked here) or no master token (on enter).
    """

    _kind = "VaultKey"

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
        if cancel_on_loss:
            raise ConfigurationError(
                "cancel_on_loss needs a task to cancel; blocking code sees a lost key when"
                " its next call raises VaultKeyRevoked or VaultKeyExpired"
            )
        if client is not None and not isinstance(client, Keybrake):
            raise TypeError(
                f"client must be a keybrake.sync.Keybrake, not {type(client).__module__}."
                f"{type(client).__qualname__}"
            )
        self.spec = spec
        self.on_lost = on_lost
        self._owns_client = client is None
        self._client = client or Keybrake(token, api_url=api_url, proxy_url=proxy_url)
        self._core: _vault_key.VaultKey | None = None
        self._portal: Portal | None = None
        self._pid = os.getpid()
        self._vendor_clients: dict[str, Blocking[Any]] = {}

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
        core = self._core
        key_id = core.info.id if core is not None and core._issued is not None else None
        state = "unopened" if core is None else core._state
        return f"<keybrake.sync.VaultKey {self.vendor} id={key_id!r} state={state}>"

    def _require_core(self) -> _vault_key.VaultKey:
        core = self._core
        if core is None:
            raise ConfigurationError("the vault key is not issued yet; use 'with'")
        if self._pid != os.getpid():
            raise ConfigurationError(
                f"this vault key was issued in process {self._pid}, before a fork; issue"
                " one in this process"
            )
        return core

    @property
    def id(self) -> str:
        """The key's id (``vk_...``); not secret."""
        return self._require_core().id

    @property
    def token(self) -> str:
        """The key's secret token (``vault_key_...``). Never logged, never in ``repr()``."""
        return self._require_core().token

    @property
    def expires_at(self) -> datetime:
        """When the key expires; moves forward with each keepalive refresh."""
        return self._require_core().expires_at

    @property
    def info(self) -> IssuedKey:
        """What the issuance API answered (without the token in ``raw``)."""
        return self._require_core().info

    @property
    def client(self) -> Keybrake:
        """The admin client that issues, refreshes and revokes this key."""
        return self._client

    @property
    def lost(self) -> KeybrakeError | None:
        """Why keepalive gave the key up, if it did."""
        return None if self._core is None else self._core.lost

    @property
    def stripe(self) -> BlockingStripeClient:
        """Stripe through the proxy with this key: ``vk.stripe.payment_intents.create(...)``.

        The async [`StripeClient`][keybrake.vendors.stripe.client.StripeClient], blocking:
        the same methods and models; ``list()`` returns a plain iterator.
        """
        return cast("BlockingStripeClient", self.vendor_client(_stripe.VENDOR))

    @property
    def twilio(self) -> BlockingTwilioClient:
        """Twilio through the proxy with this key: ``vk.twilio.messages.create(...)``.

        The async [`TwilioClient`][keybrake.vendors.twilio.client.TwilioClient], blocking.
        """
        return cast("BlockingTwilioClient", self.vendor_client(_twilio.VENDOR))

    @property
    def resend(self) -> BlockingResendClient:
        """Resend through the proxy with this key: ``vk.resend.emails.send(...)``.

        The async [`ResendClient`][keybrake.vendors.resend.client.ResendClient], blocking.
        """
        return cast("BlockingResendClient", self.vendor_client(_resend.VENDOR))

    def vendor_client(self, vendor: Vendor[C]) -> Blocking[C]:
        """The blocking client of an installed vendor, through the proxy with this key.

        Raises:
            ConfigurationError: the key is for another vendor, or not issued yet.
        """
        client = self._vendor_clients.get(vendor.name)
        if client is None:
            core = self._require_core()
            assert self._portal is not None
            client = Blocking(core.vendor_client(vendor), self._portal)
            self._vendor_clients[vendor.name] = client
        typed: Blocking[C] = client
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
        """The official ``stripe.StripeClient`` on the proxy, closed when the key is.

        See [`keybrake.VaultKey.stripe_client()`][keybrake.VaultKey.stripe_client].
        """
        return self._require_core().stripe_client()

    def twilio_client(self) -> twilio_sdk.Client:
        """The official ``twilio.rest.Client`` on the proxy, closed when the key is.

        See [`keybrake.VaultKey.twilio_client()`][keybrake.VaultKey.twilio_client].
        """
        return self._require_core().twilio_client()

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Issue the key and start keepalive: what ``with`` does on entry.

        A key opened so must be closed with [`close()`][keybrake.sync.VaultKey.close]; one
        still open when the interpreter exits is revoked then.

        Raises:
            ConfigurationError: no master token, or the key was opened before.
            IssuanceError: the API refused.
            KeybrakeUnavailable: the API could not be reached within the retry policy.
        """
        self._open()

    def close(self) -> None:
        """Stop keepalive and revoke the key; what ``with`` does on exit. Closing twice is a
        no-op, and so is closing in a forked child a key its parent opened."""
        self._close()

    def _make_core(self, kb: _async_client.Keybrake) -> _vault_key.VaultKey:
        return _vault_key.VaultKey.from_spec(self.spec, client=kb, on_lost=self.on_lost)


class Budget(_Opened[_budget.Budget]):
    """A run budget for one block of blocking code: made on enter, revoked with its keys on
    exit.

    ```python
    with Budget(cap=100, ttl="30m", label="run-42") as run, \\
         VaultKey("stripe", ["/v1/payment_intents"], cap=80, ttl="5m", budget=run) as vk:
        vk.stripe.payment_intents.create(amount=2000, currency="usd")
    ```

    The same budget as [`keybrake.Budget`][keybrake.Budget], with the same arguments and
    guarantees: leaving the block, however it ends (``KeyboardInterrupt`` included), revokes
    the budget and every key drawing from it, bounded by ``REVOKE_TIMEOUT``.

    Args:
        cap: the shared daily cap in USD: ``100``, ``"12.50"`` or ``Decimal("12.50")``.
        ttl: how long the run may last: ``"30m"``, ``"2h"``, seconds or a ``timedelta``.
        label: a name for the budget.
        client: a [`keybrake.sync.Keybrake`][keybrake.sync.Keybrake] to share (pass the same
            one to the keys); otherwise one is created and closed here.
        token: the master token for the client created here.
        api_url: the issuance API's URL, for the client created here.
        proxy_url: the proxy's URL, for the client created here.

    Raises:
        ConfigurationError: a bad argument (checked here) or no master token (on enter).
    """

    _kind = "Budget"

    def __init__(
        self,
        *,
        cap: Cap,
        ttl: Duration,
        label: str | None = None,
        client: Keybrake | None = None,
        token: str | None = None,
        api_url: str | None = None,
        proxy_url: str | None = None,
    ) -> None:
        if client is not None and not isinstance(client, Keybrake):
            raise TypeError(
                f"client must be a keybrake.sync.Keybrake, not {type(client).__module__}."
                f"{type(client).__qualname__}"
            )
        # Checked now, as keybrake.Budget checks them; the core is made on entry.
        self.cap = Decimal(cap_string(cap))
        self.ttl = timedelta(seconds=duration_seconds(ttl, "ttl"))
        self.label = label or ""
        self._owns_client = client is None
        self._client = client or Keybrake(token, api_url=api_url, proxy_url=proxy_url)
        self._core: _budget.Budget | None = None
        self._portal: Portal | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        issued = None if self._core is None else self._core._issued
        return f"<keybrake.sync.Budget id={None if issued is None else issued.id!r}>"

    def _require_core(self) -> _budget.Budget:
        if self._core is None:
            raise ConfigurationError("the budget is not made yet; use 'with'")
        return self._core

    @property
    def id(self) -> str:
        """The budget's id (``bud_...``); what ``VaultKey(..., budget=...)`` sends."""
        return self._require_core().id

    @property
    def expires_at(self) -> datetime:
        """When the budget, and every key drawing from it, ends."""
        return self._require_core().expires_at

    @property
    def info(self) -> BudgetInfo:
        """What the issuance API answered when the budget was made."""
        return self._require_core().info

    def open(self) -> None:
        """Make the budget: what ``with`` does on entry.

        Raises:
            ConfigurationError: no master token, or the budget was opened before.
            IssuanceError: the API refused.
            KeybrakeUnavailable: the API could not be reached within the retry policy.
        """
        self._open()

    def close(self) -> None:
        """Revoke the budget and its keys; what ``with`` does on exit. Closing twice is a
        no-op, and so is closing in a forked child a budget its parent opened."""
        self._close()

    def _make_core(self, kb: _async_client.Keybrake) -> _budget.Budget:
        return _budget.Budget(cap=self.cap, ttl=self.ttl, label=self.label, client=kb)
