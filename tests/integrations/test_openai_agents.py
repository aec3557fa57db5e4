"""OpenAI Agents SDK: a real Agent and Runner, a scripted model, the real keybrake server."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from agents import Agent, RunContextWrapper, Runner, function_tool, set_tracing_disabled
from agents.items import ToolCallOutputItem
from agents.testing import ScriptedModel, assistant_message, function_call

from keybrake import Keybrake, VaultKey, vault_key
from keybrake.integrations.openai_agents import tool_error_message, vault_key_tool
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.integrations.conftest import run_example


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    """Nothing may try to export traces to OpenAI."""
    set_tracing_disabled(True)


def properties(tool: Any) -> set[str]:
    return set(tool.params_json_schema["properties"])


def tool_outputs(items: list[Any]) -> list[Any]:
    return [item.output for item in items if isinstance(item, ToolCallOutputItem)]


def test_the_key_is_not_in_the_tool_schema(kb: Keybrake) -> None:
    @vault_key_tool("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    async def create_payment(amount: int, vk: VaultKey, currency: str = "usd") -> str:
        """Create a payment intent.

        Args:
            amount: in cents.
            currency: a three-letter code.
        """
        return ""

    @function_tool
    @vault_key("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    async def stacked(ctx: RunContextWrapper[Any], vk: VaultKey, amount: int) -> str:
        return ""

    assert properties(create_payment) == {"amount", "currency"}
    assert create_payment.params_json_schema["properties"]["amount"]["description"] == "in cents."
    assert create_payment.description == "Create a payment intent."
    assert properties(stacked) == {"amount"}
    for tool in (create_payment, stacked):
        assert "vk" not in json.dumps(tool.params_json_schema)
        assert "VaultKey" not in json.dumps(tool.params_json_schema)


async def test_an_agent_run_issues_uses_and_revokes_a_key(kb: Keybrake) -> None:
    seen: list[VaultKey] = []

    @vault_key_tool("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    async def create_payment(amount: int, currency: str, vk: VaultKey) -> str:
        """Create a payment intent of `amount` cents."""
        seen.append(vk)
        pi = await vk.stripe.payment_intents.create(amount=amount, currency=currency)
        return pi.id

    model = ScriptedModel(
        [
            [function_call("create_payment", {"amount": 2000, "currency": "usd"}, call_id="c1")],
            [assistant_message("paid")],
        ]
    )
    agent = Agent(name="billing", model=model, tools=[create_payment])
    result = await Runner.run(agent, "charge $20")

    assert result.final_output == "paid"
    [output] = tool_outputs(result.new_items)
    assert str(output).startswith("pi_")
    [vk] = seen
    info = await kb.get_key(vk.id)
    assert info.status == "revoked"
    assert info.label.endswith("create_payment")
    assert info.spent_today_usd == 20
    # What the model was shown, tools and tool output included, never holds the key.
    shown = repr(model.calls) + json.dumps(create_payment.params_json_schema)
    assert vk.token not in shown
    assert vk.id not in shown


@attrs.frozen
class Run:
    run_id: str


async def test_a_run_context_first_parameter(kb: Keybrake) -> None:
    contexts: list[Any] = []

    @vault_key_tool("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    async def create_payment(ctx: RunContextWrapper[Run], amount: int, vk: VaultKey) -> str:
        """Create a payment intent of `amount` cents."""
        contexts.append(ctx.context)
        pi = await vk.stripe.payment_intents.create(amount=amount, currency="usd")
        return f"{pi.id} for run {ctx.context.run_id}"

    assert properties(create_payment) == {"amount"}
    model = ScriptedModel(
        [
            [function_call("create_payment", {"amount": 700}, call_id="c1")],
            [assistant_message("done")],
        ]
    )
    agent = Agent[Run](name="billing", model=model, tools=[create_payment])
    result = await Runner.run(agent, "charge $7", context=Run("run-42"))

    [output] = tool_outputs(result.new_items)
    assert str(output).endswith("for run run-42")
    assert contexts == [Run("run-42")]
    [key] = [k async for k in kb.list_keys()]
    assert key.status == "revoked"


async def test_issuance_down_tells_the_model_and_the_run_goes_on(dead_kb: Keybrake) -> None:
    calls: list[int] = []

    @vault_key_tool("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=dead_kb)
    async def create_payment(amount: int, vk: VaultKey) -> str:
        """Create a payment intent of `amount` cents."""
        calls.append(amount)
        return "unreachable"

    model = ScriptedModel(
        [
            [function_call("create_payment", {"amount": 2000}, call_id="c1")],
            [assistant_message("payments are down; try later")],
        ]
    )
    agent = Agent(name="billing", model=model, tools=[create_payment])
    result = await Runner.run(agent, "charge $20")

    assert result.final_output == "payments are down; try later"
    assert calls == []  # the body never ran without a key
    assert tool_outputs(result.new_items) == ["The tool is unavailable right now; try again later."]
    assert "127.0.0.1" not in repr(model.calls)  # no internals shown to the model


async def test_a_cap_refusal_is_explained_to_the_model(kb: Keybrake) -> None:
    @function_tool(failure_error_function=tool_error_message)
    @vault_key("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb)
    async def create_payment(amount: int, vk: VaultKey) -> str:
        """Create a payment intent of `amount` cents."""
        return (await vk.stripe.payment_intents.create(amount=amount, currency="usd")).id

    model = ScriptedModel(
        [
            [function_call("create_payment", {"amount": 2000}, call_id="c1")],
            [assistant_message("over the cap")],
        ]
    )
    result = await Runner.run(Agent(name="b", model=model, tools=[create_payment]), "charge $20")

    [output] = tool_outputs(result.new_items)
    assert output == (
        "Refused: this call would pass the tool's daily spending cap of $5.00. "
        "Do not retry it today."
    )
    [key] = [k async for k in kb.list_keys()]
    assert key.status == "revoked"


async def test_the_docs_example_runs(server: RunningServer) -> None:
    out = await run_example(server, "openai_agents_tool.py")
    assert "tool output: pi_" in out
    assert "agent: Paid." in out
    assert out.strip().endswith("revoked")
