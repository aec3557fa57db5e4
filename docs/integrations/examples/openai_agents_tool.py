"""OpenAI Agents SDK: a tool that gets its own vault key for each call.

Needs `pip install 'keybrake[openai-agents]'`, a running server and KEYBRAKE_URL and
KEYBRAKE_TOKEN (see the quickstart). The model is scripted so that this runs offline; give
your agent a real model instead.
"""

import asyncio

from agents import Agent, Runner, set_tracing_disabled
from agents.items import ToolCallOutputItem
from agents.testing import ScriptedModel, assistant_message, function_call

from keybrake import Keybrake, VaultKey
from keybrake.integrations.openai_agents import vault_key_tool

key_ids: list[str] = []  # only to show the keys' status at the end


@vault_key_tool("stripe", ["/v1/payment_intents"], cap=50, ttl="2m", label="billing-agent")
async def create_payment(amount: int, currency: str, vk: VaultKey) -> str:
    """Create a payment intent.

    Args:
        amount: the amount in cents.
        currency: a three-letter ISO currency code.
    """
    key_ids.append(vk.id)
    pi = await vk.stripe.payment_intents.create(amount=amount, currency=currency)
    return pi.id


# Two scripted turns: the model calls the tool, then answers.
model = ScriptedModel(
    [
        [function_call("create_payment", {"amount": 2000, "currency": "usd"}, call_id="call_1")],
        [assistant_message("Paid.")],
    ]
)
agent = Agent(name="billing", instructions="Take payments.", model=model, tools=[create_payment])


async def main() -> None:
    set_tracing_disabled(True)  # this example sends nothing to OpenAI
    print("the model sees the parameters", sorted(create_payment.params_json_schema["properties"]))
    result = await Runner.run(agent, "Charge the customer $20.")
    for item in result.new_items:
        if isinstance(item, ToolCallOutputItem):
            print(f"tool output: {item.output}")
    print(f"agent: {result.final_output}")
    async with Keybrake() as kb:
        for key_id in key_ids:
            print(f"{key_id} {(await kb.get_key(key_id)).status}")


if __name__ == "__main__":
    asyncio.run(main())
