"""``Budget``: one daily cap shared by every key of a run, for an ``async with`` block."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from keybrake._client import Keybrake
from keybrake._key_spec import Cap, Duration, cap_string, duration_seconds
from keybrake._lifecycle import Held
from keybrake._models import BudgetInfo

__all__ = ["Budget"]


class Budget(Held[BudgetInfo]):
    """A run budget for one block of work: made on enter, revoked (with its keys) on exit.

    ```python
    async with Budget(cap=100, ttl="30m", label="run-42") as run:
        async with VaultKey("stripe", ["/v1/payment_intents"], cap=80, ttl="5m",
                            budget=run) as stripe_key, \\
                   VaultKey("twilio", ["POST /2010-04-01/Accounts/*/Messages.json"],
                            cap=50, ttl="5m", budget=run) as twilio_key:
            ...  # together, the two keys never spend more than 100 USD a day
    ```

    Every request of a key issued with ``budget=run`` must fit both the key's own cap and the
    budget's, whatever the vendor, in one atomic step on the server; past the budget, calls
    raise [`BudgetExhausted`][keybrake.BudgetExhausted]. Leaving the block revokes the budget
    and, with it, every key drawing from it, with the same guarantees as
    [`VaultKey`][keybrake.VaultKey]: however the block ends (exception, cancellation,
    timeout), shielded, bounded by ``REVOKE_TIMEOUT``.

    A budget is the run's hard limit: ``ttl`` is fixed when it is made, and its keys live no
    longer (their keepalive stops at the budget's end). So there is nothing to keep alive.

    Args:
        cap: the shared daily cap in USD: ``100``, ``"12.50"`` or ``Decimal("12.50")``.
        ttl: how long the run may last: ``"30m"``, ``"2h"``, seconds or a ``timedelta``.
        label: a name for the budget.
        client: a [`Keybrake`][keybrake.Keybrake] client to share (pass the same one to the
            keys); otherwise one is created and closed here.
        token: the master token for the client created here.
        api_url: the issuance API's URL, for the client created here.
        proxy_url: the proxy's URL, for the client created here.

    Raises:
        ConfigurationError: a bad argument (checked here) or no master token (on enter).
    """

    _kind = "Budget"
    _noun = "budget"

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
        self.cap = Decimal(cap_string(cap))
        self.ttl = timedelta(seconds=duration_seconds(ttl, "ttl"))
        self.label = label or ""
        self._init_lifecycle(client, token=token, api_url=api_url, proxy_url=proxy_url)

    def __repr__(self) -> str:
        budget_id = self._issued.id if self._issued else None
        return f"<Budget id={budget_id!r} state={self._state}>"

    @property
    def id(self) -> str:
        """The budget's id (``bud_...``); what ``VaultKey(..., budget=...)`` sends."""
        return self._require_issued().id

    @property
    def expires_at(self) -> datetime:
        """When the budget, and every key drawing from it, ends."""
        return self._require_issued().expires_at

    @property
    def info(self) -> BudgetInfo:
        """What the issuance API answered when the budget was made."""
        return self._require_issued()

    async def _issue(self) -> BudgetInfo:
        return await self._client.create_budget(cap=self.cap, ttl=self.ttl, label=self.label)

    async def _send_revoke(self, issued: BudgetInfo) -> object:
        return await self._client.revoke_budget(issued.id)
