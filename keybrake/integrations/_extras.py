"""The error an integration raises when its framework is not installed."""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(module: str, framework: str, extra: str) -> ImportError:
    """An :class:`ImportError` that says which extra brings ``framework`` in.

    Args:
        module: the integration module (``"fastapi"`` for ``keybrake.integrations.fastapi``).
        framework: the framework's name, for humans.
        extra: the extra of ``keybrake`` that installs it.
    """
    return ImportError(
        f"keybrake.integrations.{module} needs {framework}: pip install 'keybrake[{extra}]'",
        name=f"keybrake.integrations.{module}",
    )
