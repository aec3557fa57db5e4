"""What the web integrations share: labels from request headers, the 503 answer."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import attrs

from keybrake._common import MAX_LABEL
from keybrake._errors import KeybrakeError
from keybrake._key_spec import KeySpec
from keybrake._vault_key import RunOptions, VaultKey

__all__ = [
    "DEFAULT_LABEL_HEADERS",
    "UNAVAILABLE_CODE",
    "open_request_key",
    "request_label",
    "request_spec",
    "unavailable_body",
]

log = logging.getLogger("keybrake")

#: Request headers whose values label a request's vault key, by default.
DEFAULT_LABEL_HEADERS: tuple[str, ...] = ("X-User-Id", "X-Agent-Run-Id")
#: The ``code`` of the 503 answer when a request's vault key can't be issued.
UNAVAILABLE_CODE = "vault_key_unavailable"

MAX_VALUE = 64  # of one header value, in a label or in metadata


def _clean(value: str) -> str:
    """A header value as it may appear in a label: printable, short."""
    return "".join(c for c in value if c.isprintable()).strip()[:MAX_VALUE]


def request_label(
    base: str, headers: Mapping[str, str], names: Sequence[str]
) -> tuple[str, dict[str, str]]:
    """The label and metadata of a request's key: ``base`` plus the named headers' values.

    ``request_label("POST /pay", {"X-User-Id": "u1"}, ["X-User-Id"])`` is
    ``("POST /pay x-user-id=u1", {"x-user-id": "u1"})``. Absent or empty headers are left
    out; values are cut to 64 printable characters and the label to 200.
    """
    metadata: dict[str, str] = {}
    for name in names:
        value = _clean(headers.get(name, ""))
        if value:
            metadata[name.lower()] = value
    label = " ".join([base, *(f"{k}={v}" for k, v in metadata.items())])
    return label[:MAX_LABEL], metadata


async def open_request_key(
    spec: KeySpec,
    run: RunOptions,
    *,
    label: str,
    headers: Mapping[str, str],
    label_headers: Sequence[str],
) -> VaultKey:
    """Issue (enter) a request's vault key, labelled from its headers.

    The key is ``spec`` with ``label`` and the named headers' values as its label, and
    those values added to its metadata (the spec's own pairs win).

    Raises:
        KeybrakeError: keybrake could not issue it (logged; the caller answers 503).
    """
    key_spec = request_spec(spec, label=label, headers=headers, label_headers=label_headers)
    key = VaultKey.from_spec(key_spec, **run)
    try:
        await key.__aenter__()
    except KeybrakeError as exc:
        log.warning("no vault key for %s: %s", key_spec.label, exc)
        raise
    return key


def request_spec(
    spec: KeySpec, *, label: str, headers: Mapping[str, str], label_headers: Sequence[str]
) -> KeySpec:
    """``spec`` for one request: labelled ``label`` plus the named headers' values, which
    are also added to its metadata (the spec's own pairs win)."""
    key_label, from_headers = request_label(label, headers, label_headers)
    return attrs.evolve(spec, label=key_label, metadata={**from_headers, **spec.metadata})


def unavailable_body(vendor: str) -> dict[str, str]:
    """The JSON body of the 503 answer: what failed, without the underlying details."""
    return {
        "code": UNAVAILABLE_CODE,
        "message": f"a {vendor} vault key for this request could not be issued; try again later",
    }
