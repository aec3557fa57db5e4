"""LangChain: a tool that gets its own vault key for each call.

Needs `pip install 'keybrake[langchain]'`, a running server and KEYBRAKE_URL and
KEYBRAKE_TOKEN (see the quickstart).
"""

import asyncio

from langchain_core.messages.tool import tool_call
from langchain_core.utils.function_calling import convert_to_openai_tool

from keybrake import Keybrake, VaultKey
from keybrake.integrations.langchain import vault_key_tool

key_ids: list[str] = []  # only to show the keys' status at the end


@vault_key_tool("stripe", ["/v1/payment_intents"], cap=50, ttl="2m", parse_docstring=True)
async def create_payment(amount: int, currency: str, vk: VaultKey) -> str:
    """Create a payment intent.

    Args:
        amount: the amount in cents.
        currency: a three-letter ISO currency code.
    """
    key_ids.append(vk.id)
    pi = await vk.stripe.payment_intents.create(amount=amount, currency=currency)
    return pi.id


async def main() -> None:
    # What `chat_model.bind_tools([create_payment])` sends the model:
    parameters = convert_to_openai_tool(create_payment)["function"]["parameters"]
    print("the model sees the parameters", sorted(parameters["properties"]))

    # A tool call as the model's AIMessage.tool_calls holds it:
    call = tool_call(name="create_payment", args={"amount": 2000, "currency": "usd"}, id="call_1")
    message = await create_payment.ainvoke(call)  # a ToolMessage for the model
    print(f"tool message ({message.status}): {message.content}")

    async with Keybrake() as kb:
        for key_id in key_ids:
            print(f"{key_id} {(await kb.get_key(key_id)).status}")


if __name__ == "__main__":
    asyncio.run(main())
