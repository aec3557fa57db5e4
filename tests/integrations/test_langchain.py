"""LangChain: structured tools driven by a chat model that emits tool calls."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

import pydantic
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from keybrake import Keybrake, KeySpec, VaultKey, vault_key
from keybrake.integrations.langchain import vault_key_tool
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.integrations.conftest import run_example


class ToolCallingFakeModel(GenericFakeChatModel):
    """A fake chat model that takes tools as a real one does, and records what it is shown."""

    shown: list[tuple[list[BaseMessage], Any]] = []  # noqa: RUF012 - a pydantic field

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        schemas = [convert_to_openai_tool(t) for t in tools]
        return cast(Runnable[LanguageModelInput, AIMessage], self.bind(tools=schemas, **kwargs))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.shown.append((list(messages), kwargs.get("tools")))
        return super()._generate(messages, stop, run_manager, **kwargs)


def script(*replies: AIMessage) -> ToolCallingFakeModel:
    return ToolCallingFakeModel(messages=iter(replies), shown=[])


def call(name: str, **args: Any) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": "call_1"}])


async def run_agent(model: ToolCallingFakeModel, tools: list[BaseTool], prompt: str) -> list[Any]:
    """The classic tool-calling loop: ask, run the tool calls, ask again."""
    by_name = {t.name: t for t in tools}
    bound = model.bind_tools(tools)
    messages: list[BaseMessage] = [HumanMessage(prompt)]
    while True:
        reply = await bound.ainvoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            return messages
        for tool_call in reply.tool_calls:
            messages.append(await by_name[tool_call["name"]].ainvoke(tool_call))


def test_the_key_is_not_in_the_tool_schema(kb: Keybrake) -> None:
    @vault_key_tool("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb, parse_docstring=True)
    async def create_payment(amount: int, vk: VaultKey, currency: str = "usd") -> str:
        """Create a payment intent.

        Args:
            amount: in cents.
            currency: a three-letter code.
        """
        return ""

    @tool
    @vault_key("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    async def stacked(amount: int, vk: VaultKey) -> str:
        """Create a payment intent."""
        return ""

    schema = create_payment.tool_call_schema
    assert isinstance(schema, type)
    assert issubclass(schema, pydantic.BaseModel)
    props = schema.model_json_schema()["properties"]
    assert set(props) == {"amount", "currency"}
    assert props["amount"]["description"] == "in cents."
    assert create_payment.description == "Create a payment intent."
    assert set(stacked.args) == {"amount"}
    for t in (create_payment, stacked):
        shown = json.dumps(convert_to_openai_tool(t))
        assert '"vk"' not in shown
        assert "VaultKey" not in shown


async def test_a_model_tool_call_issues_uses_and_revokes_a_key(kb: Keybrake) -> None:
    seen: list[VaultKey] = []

    @vault_key_tool("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    async def create_payment(amount: int, currency: str, vk: VaultKey) -> str:
        """Create a payment intent of `amount` cents."""
        seen.append(vk)
        return (await vk.stripe.payment_intents.create(amount=amount, currency=currency)).id

    model = script(call("create_payment", amount=2000, currency="usd"), AIMessage(content="Paid."))
    messages = await run_agent(model, [create_payment], "charge $20")

    [tool_message] = [m for m in messages if isinstance(m, ToolMessage)]
    assert tool_message.status == "success"
    assert str(tool_message.content).startswith("pi_")
    assert messages[-1].content == "Paid."
    [vk] = seen
    info = await kb.get_key(vk.id)
    assert info.status == "revoked"
    assert info.spent_today_usd == 20
    shown = repr(model.shown)
    assert "create_payment" in shown
    assert vk.token not in shown
    assert vk.id not in shown


async def test_ainvoke_with_arguments(kb: Keybrake) -> None:
    @vault_key_tool("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb, name="pay")
    async def create_payment(amount: int, vk: VaultKey) -> str:
        """Create a payment intent of `amount` cents."""
        return (await vk.stripe.payment_intents.create(amount=amount, currency="usd")).id

    assert create_payment.name == "pay"
    pi_id = await create_payment.ainvoke({"amount": 900})
    assert pi_id.startswith("pi_")
    [key] = [k async for k in kb.list_keys()]
    assert key.status == "revoked"


async def test_issuance_down_answers_the_model_with_an_error(dead_kb: Keybrake) -> None:
    calls: list[int] = []

    @vault_key_tool("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=dead_kb)
    async def create_payment(amount: int, vk: VaultKey) -> str:
        """Create a payment intent of `amount` cents."""
        calls.append(amount)
        return "unreachable"

    model = script(call("create_payment", amount=2000), AIMessage(content="Down; later."))
    messages = await run_agent(model, [create_payment], "charge $20")

    [tool_message] = [m for m in messages if isinstance(m, ToolMessage)]
    assert tool_message.status == "error"
    assert tool_message.content == "The tool is unavailable right now; try again later."
    assert messages[-1].content == "Down; later."
    assert calls == []


async def test_the_docs_example_runs(server: RunningServer) -> None:
    out = await run_example(server, "langchain_tool.py")
    assert "the model sees the parameters ['amount', 'currency']" in out
    assert "tool message (success): pi_" in out
    assert out.strip().endswith("revoked")


async def test_a_spec_describes_the_tools_key(kb: Keybrake) -> None:
    spec = KeySpec("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", metadata={"agent": "billing"})

    @vault_key_tool(spec, client=kb)
    async def create_payment(amount: int, vk: VaultKey) -> str:
        """Create a payment intent of `amount` cents."""
        return (await vk.stripe.payment_intents.create(amount=amount, currency="usd")).id

    assert "vk" not in json.dumps(convert_to_openai_tool(create_payment))
    assert (await create_payment.ainvoke({"amount": 900})).startswith("pi_")
    [key] = [k async for k in kb.list_keys()]
    assert (key.status, key.metadata) == ("revoked", {"agent": "billing"})
    assert key.label.endswith("create_payment")
