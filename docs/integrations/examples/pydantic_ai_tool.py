"""PydanticAI: a tool that gets its own vault key for each call.

Needs `pip install 'keybrake[pydantic-ai]'`, a running server and KEYBRAKE_URL and
KEYBRAKE_TOKEN (see the quickstart). PydanticAI's TestModel plays the model so that this
runs offline: it calls every tool once, with arguments that fit the schema.
"""

import asyncio
from typing import Annotated

from pydantic import Field
from pydantic_ai import Agent
from pydantic_ai.messages import ToolReturnPart
from pydantic_ai.models.test import TestModel

from keybrake import Keybrake, VaultKey
from keybrake.integrations.pydantic_ai import vault_key

model = TestModel()  # in real code: your model, like Agent("<provider>:<model>", ...)
agent = Agent(model, instructions="Take payments.")
key_ids: list[str] = []  # only to show the keys' status at the end


@agent.tool_plain
@vault_key("stripe", ["/v1/payment_intents"], cap=50, ttl="2m", label="billing-agent")
async def create_payment(
    amount: Annotated[int, Field(ge=50, description="the amount in cents")],
    vk: VaultKey,
    currency: str = "usd",
) -> str:
    """Create a payment intent."""
    key_ids.append(vk.id)
    pi = await vk.stripe.payment_intents.create(amount=amount, currency=currency)
    return pi.id


async def main() -> None:
    result = await agent.run("Charge the customer.")
    assert model.last_model_request_parameters is not None
    [tool] = model.last_model_request_parameters.function_tools
    print("the model sees the parameters", sorted(tool.parameters_json_schema["properties"]))
    for message in result.all_messages():
        for part in message.parts:
            if isinstance(part, ToolReturnPart):
                print(f"tool returned: {part.content}")
    async with Keybrake() as kb:
        for key_id in key_ids:
            print(f"{key_id} {(await kb.get_key(key_id)).status}")


if __name__ == "__main__":
    asyncio.run(main())
