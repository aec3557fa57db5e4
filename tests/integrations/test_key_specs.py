"""Every integration takes a KeySpec, and checks what it is given where the key is defined."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from keybrake import ConfigurationError, Keybrake, KeySpec, VaultKey
from keybrake.integrations import aiohttp_web, arq, fastapi, langchain, openai_agents, pydantic_ai

SPEC = KeySpec("stripe", ["/v1/refunds"], cap=5, ttl="1m")
FACTORIES: dict[str, Callable[..., Any]] = {
    "openai_agents": openai_agents.vault_key_tool,
    "langchain": langchain.vault_key_tool,
    "pydantic_ai": pydantic_ai.vault_key,
    "fastapi": fastapi.vault_key_dependency,
    "aiohttp_web": aiohttp_web.vault_key_middleware,
    "arq": lambda *args, **kwargs: arq.job_vault_key({"job_id": "j1"}, *args, **kwargs),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_a_bad_value_fails_where_the_key_is_defined(name: str) -> None:
    factory = FACTORIES[name]
    with pytest.raises(ConfigurationError, match="no-slash"):
        factory("stripe", ["no-slash"], cap=1, ttl=60)
    with pytest.raises(ConfigurationError, match="acct_"):
        factory("stripe", ["/v1/refunds"], cap=1, ttl=60, stripe_account="cus_1")
    with pytest.raises(TypeError, match="ttl, keepalive in the spec"):
        factory(SPEC, ttl=60, keepalive=False)
    with pytest.raises(TypeError, match="unknown vault key option"):
        factory(SPEC, colour="red")


async def test_a_job_key_from_a_spec() -> None:
    kb = Keybrake("kb_admin_x", api_url="http://127.0.0.1:9", proxy_url="http://127.0.0.1:9")
    spec = KeySpec("stripe", ["/v1/refunds"], cap=5, ttl="1m", metadata={"a": "b"})
    vk = arq.job_vault_key({"job_id": "j1", "job_try": 2, arq.CLIENT: kb}, spec)
    assert isinstance(vk, VaultKey)
    assert vk.client is kb
    assert vk.label == "arq:j1"
    assert vk.metadata == {"arq_job_id": "j1", "arq_job_try": "2", "a": "b"}
    assert vk.endpoints == ("/v1/refunds",)
