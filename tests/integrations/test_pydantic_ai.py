"""PydanticAI: a real Agent run with PydanticAI's offline TestModel."""

from __future__ import annotations

import json
from typing import Annotated

import attrs
from pydantic import Field
from pydantic_ai import Agent, RunContext, Tool
from pydantic_ai.messages import ToolReturnPart
from pydantic_ai.models.test import TestModel

from keybrake import Keybrake, VaultKey
from keybrake.integrations.pydantic_ai import vault_key
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.integrations.conftest import run_example

Cents = Annotated[int, Field(ge=500, le=5000, description="in cents")]


def tool_returns(result: object) -> list[ToolReturnPart]:
    messages = result.all_messages()  # type: ignore[attr-defined]
    return [part for m in messages for part in m.parts if isinstance(part, ToolReturnPart)]


@attrs.frozen
class Deps:
    customer: str


async def test_the_key_is_hidden_and_each_call_has_its_own(kb: Keybrake) -> None:
    seen: list[VaultKey] = []
    model = TestModel()
    agent = Agent(model, deps_type=Deps)

    @agent.tool_plain
    @vault_key("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    async def create_payment(amount: Cents, vk: VaultKey, currency: str = "usd") -> str:
        """Create a payment intent."""
        seen.append(vk)
        return (await vk.stripe.payment_intents.create(amount=amount, currency=currency)).id

    @agent.tool
    @vault_key("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    async def charge_customer(ctx: RunContext[Deps], vk: VaultKey, amount: Cents) -> str:
        """Charge the run's customer."""
        seen.append(vk)
        pi = await vk.stripe.payment_intents.create(amount=amount, currency="usd")
        return f"{pi.id} for {ctx.deps.customer}"

    result = await agent.run("take two payments", deps=Deps("cus_42"))

    params = model.last_model_request_parameters
    assert params is not None
    shown = {t.name: t.parameters_json_schema for t in params.function_tools}
    assert set(shown["create_payment"]["properties"]) == {"amount", "currency"}
    assert set(shown["charge_customer"]["properties"]) == {"amount"}
    assert shown["create_payment"]["properties"]["amount"]["minimum"] == 500

    returns = {part.tool_name: str(part.content) for part in tool_returns(result)}
    assert returns["create_payment"].startswith("pi_")
    assert returns["charge_customer"].endswith("for cus_42")
    assert len({vk.id for vk in seen}) == 2
    for vk in seen:
        assert (await kb.get_key(vk.id)).status == "revoked"
        assert vk.token not in json.dumps(shown) + repr(result.all_messages())


async def test_tools_list_and_tool_objects(kb: Keybrake) -> None:
    @vault_key("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    async def create_payment(amount: Cents, vk: VaultKey) -> str:
        """Create a payment intent."""
        return (await vk.stripe.payment_intents.create(amount=amount, currency="usd")).id

    for tools in ([create_payment], [Tool(create_payment, name="pay")]):
        result = await Agent(TestModel(), tools=tools).run("pay")
        [part] = tool_returns(result)
        assert str(part.content).startswith("pi_")
    keys = [k async for k in kb.list_keys()]
    assert len(keys) == 2
    assert {k.status for k in keys} == {"revoked"}


async def test_issuance_down_is_a_tool_failure_the_model_sees(dead_kb: Keybrake) -> None:
    calls: list[int] = []
    agent = Agent(TestModel())

    @agent.tool_plain
    @vault_key("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=dead_kb)
    async def create_payment(amount: Cents, vk: VaultKey) -> str:
        """Create a payment intent."""
        calls.append(amount)
        return "unreachable"

    result = await agent.run("pay")

    [part] = tool_returns(result)
    assert part.outcome == "failed"
    assert part.content == "The tool is unavailable right now; try again later."
    assert calls == []
    assert "unavailable" in result.output


async def test_a_cap_refusal_is_a_tool_failure(kb: Keybrake) -> None:
    agent = Agent(TestModel())

    @agent.tool_plain
    @vault_key("stripe", SEED_ENDPOINTS, cap=1, ttl="1m", client=kb)
    async def create_payment(amount: Cents, vk: VaultKey) -> str:
        """Create a payment intent."""
        return (await vk.stripe.payment_intents.create(amount=amount, currency="usd")).id

    [part] = tool_returns(await agent.run("pay"))
    assert part.outcome == "failed"
    assert str(part.content).startswith("Refused: this call would pass the tool's daily")
    [key] = [k async for k in kb.list_keys()]
    assert key.status == "revoked"


async def test_the_docs_example_runs(server: RunningServer) -> None:
    out = await run_example(server, "pydantic_ai_tool.py")
    assert "the model sees the parameters ['amount', 'currency']" in out
    assert "tool returned: pi_" in out
    assert out.strip().endswith("revoked")
