"""JSON error answers, shared by the issuance API and the proxy."""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["error_body", "error_response"]

_STRIPE_TYPES = {500: "api_error", 502: "api_error", 503: "api_error", 504: "api_error"}


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
    if vendor == "stripe":
        body["error"] = {
            "type": _STRIPE_TYPES.get(status, "invalid_request_error"),
            "code": code,
            "message": message,
        }
        out_headers["Stripe-Should-Retry"] = "false"
    elif vendor == "twilio":
        # Twilio's error shape; its SDK reads ``message`` and ``code`` from here.
        body.setdefault("status", status)
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

    On Stripe paths the body also carries Stripe's own error shape and the answer says
    ``Stripe-Should-Retry: false``, so the official Stripe SDK raises a proper error and does
    not retry a refusal.
    """
    body, out_headers = error_body(status, code, message, vendor=vendor, headers=headers, **extra)
    return web.json_response(body, status=status, headers=out_headers)
