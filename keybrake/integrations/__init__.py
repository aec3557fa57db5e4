"""keybrake inside the frameworks you already use: one module per framework.

- ``keybrake.integrations.openai_agents``: OpenAI Agents SDK tools (``keybrake[openai-agents]``)
- ``keybrake.integrations.langchain``: LangChain tools (``keybrake[langchain]``)
- ``keybrake.integrations.pydantic_ai``: PydanticAI tools (``keybrake[pydantic-ai]``)
- ``keybrake.integrations.fastapi``: a FastAPI dependency (``keybrake[fastapi]``)
- ``keybrake.integrations.aiohttp_web``: an aiohttp.web middleware (``keybrake[aiohttp-web]``)
- ``keybrake.integrations.arq``: a key per arq job (``keybrake[arq]``)
- ``keybrake.integrations.django``: a Django middleware (``keybrake[django]``)
- ``keybrake.integrations.celery``: a key per Celery task run (``keybrake[celery]``)

Each module imports its framework, so import only the one you use; a missing framework
raises an :class:`ImportError` that names the extra to install. This package itself
imports no framework.
"""

__all__: list[str] = []
