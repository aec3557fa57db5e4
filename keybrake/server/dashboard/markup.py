"""HTML built from trusted templates and escaped values.

Labels and metadata are chosen by agents, so every value that goes into a page is escaped
unless it is already :class:`Markup` (HTML this package built). Templates are string literals
of this package; their attribute values are always in double quotes, which
:func:`html.escape` escapes along with ``&``, ``<``, ``>`` and ``'``.
"""

from __future__ import annotations

import html as _html
from collections.abc import Iterable

__all__ = ["Markup", "escape", "join", "render"]


class Markup(str):
    """Text that is HTML already, and is not escaped again."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """``value`` as HTML text: unchanged if it is :class:`Markup`, else escaped."""
    if isinstance(value, Markup):
        return value
    return Markup(_html.escape(str(value), quote=True))


def render(template: str, /, **values: object) -> Markup:
    """``template.format(**values)`` with every value escaped (:func:`escape`)."""
    return Markup(template.format_map({name: escape(v) for name, v in values.items()}))


def join(parts: Iterable[Markup], separator: str = "") -> Markup:
    """Pieces of HTML, one after the other."""
    return Markup(escape(separator).join(parts))
