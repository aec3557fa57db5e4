"""JSON error answers, shared by the issuance API and the proxy."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from keybrake.vendors import get_vendor

__all__ = ["error_body", "error_response"]


def error_body(
    status: int,
    code: str,
    message: str,
    *,
    vendor: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body and the headers of :func:`error_response`, for any HTTP frame."""
    body: dict[str, Any] = {"code": code, "message": message}
    body.update((k, v) for k, v in extra.items() if v is not None)
    # Tells clients this answer is keybrake's own, not the vendor's.
    out_headers = {**(headers or {}), "Keybrake-Error": code}
    plugin = get_vendor(vendor) if vendor is not None else None
    if plugin is not None:
        # The vendor's own error shape too, so that its official SDK raises a proper error
        # (and doesn't retry a refusal); keybrake's fields win.
        shape_body, shape_headers = plugin.error_shape(status, code, message)
        body = {**shape_body, **body}
        out_headers = {**shape_headers, **out_headers}
    return body, out_headers


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    vendor: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A JSON error with top-level ``code`` and ``message`` (plus ``extra`` fields).

    On a vendor's paths the body also carries that vendor's own error shape (its plugin's
    ``error_shape``): on Stripe's, Stripe's ``error`` object and ``Stripe-Should-Retry:
    false``, so the official Stripe SDK raises a proper error and does not retry a refusal.
    """
    body, out_headers = error_body(status, code, message, vendor=vendor, headers=headers, **extra)
    return web.json_response(body, status=status, headers=out_headers)
