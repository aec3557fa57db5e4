"""The integration modules: imported only when used, and a clear error without the extra."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "aiohttp_web",
    "arq",
    "celery",
    "django",
    "fastapi",
    "langchain",
    "openai_agents",
    "pydantic_ai",
]


def test_the_package_imports_no_framework() -> None:
    frameworks = [
        "agents", "arq", "celery", "django", "fastapi", "langchain_core", "pydantic_ai",
        "starlette",
    ]  # fmt: skip
    code = (
        "import sys, keybrake, keybrake.integrations\n"
        f"print(sorted(m for m in {frameworks!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", MODULES)
def test_public_names_are_listed_and_sorted(name: str) -> None:
    module = importlib.import_module(f"keybrake.integrations.{name}")
    assert module.__all__ == sorted(module.__all__)
    for public in module.__all__:
        assert getattr(module, public) is not None
        doc = getattr(getattr(module, public), "__doc__", None)
        assert callable(getattr(module, public)) <= bool(doc), f"{public} has no docstring"


@pytest.mark.parametrize(
    ("name", "framework", "extra"),
    [
        ("celery", "celery", "celery"),
        ("django", "django.conf", "django"),
        ("fastapi", "fastapi", "fastapi"),
        ("langchain", "langchain_core.tools", "langchain"),
        ("openai_agents", "agents", "openai-agents"),
        ("pydantic_ai", "pydantic_ai", "pydantic-ai"),
    ],
)
def test_a_missing_framework_names_the_extra(
    name: str, framework: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, f"keybrake.integrations.{name}", raising=False)
    monkeypatch.setitem(sys.modules, framework, None)  # as if it were not installed
    with pytest.raises(ImportError, match=rf"pip install 'keybrake\[{extra}\]'"):
        importlib.import_module(f"keybrake.integrations.{name}")
