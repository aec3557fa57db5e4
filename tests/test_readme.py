"""The README opens with the two commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)\n```", text, re.S)


def test_readme_opens_with_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)\n```", head, re.S)
    assert len(blocks) == 2
    demo, tests = blocks
    assert "keybrake demo" in demo
    assert "pytest" in tests
    assert "\n" not in demo + tests


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_readme_python_examples_compile() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)\n```", text, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        # Top-level `async with` is valid in an async context; wrap each example in one.
        body = "\n".join("    " + line for line in block.splitlines())
        compile(f"async def _example():\n{body}\n", "README.md", "exec")
