"""HTML built from trusted templates and escaped values.

Labels and metadata are chosen by agents, so every value that goes into a page is escaped
unless it is already :class:`Markup` (HTML this package built). Templates are string literals
of this package; their attribute values are always in double quotes, which
:func:`html.escape` escapes along with ``&``, ``<``, ``>`` and ``'``.
"""

from __future__ import annotations

import html as _html
import unicodedata
from collections.abc import Iterable

__all__ = ["Markup", "clip", "escape", "join", "render"]

#: Characters shown as ``\\u...`` escapes: controls, format characters (zero-width spaces,
#: bidi overrides: a label that reads ``run-42`` but isn't), separators, unassigned and private.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: Longest agent-chosen text shown whole (a label, a metadata value, an audit path).
MAX_SHOWN = 200


def _visible(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        (f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        if unicodedata.category(ch) in _INVISIBLE and ch not in "\n\t"
        else ch
        for ch in text
    )


def clip(value: str, limit: int = MAX_SHOWN) -> str:
    """Agent-chosen text cut to ``limit`` characters, with ``…`` where it was cut (a page of
    50 keys with megabytes of metadata each would stall the server and the browser)."""
    return value if len(value) <= limit else value[: limit - 1] + "\u2026"


class Markup(str):
    """Text that is HTML already, and is not escaped again."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """``value`` as HTML text: unchanged if it is :class:`Markup`, else escaped, with
    invisible characters shown as ``\\u...``."""
    if isinstance(value, Markup):
        return value
    return Markup(_html.escape(_visible(str(value)), quote=True))


def render(template: str, /, **values: object) -> Markup:
    """``template.format(**values)`` with every value escaped (:func:`escape`)."""
    return Markup(template.format_map({name: escape(v) for name, v in values.items()}))


def join(parts: Iterable[Markup], separator: str = "") -> Markup:
    """Pieces of HTML, one after the other."""
    return Markup(escape(separator).join(parts))
