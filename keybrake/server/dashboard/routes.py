"""``/dashboard``: sign-in, the keys, revoking one or all matching, sign-out.

Every change is a ``POST`` that passes three checks, in this order, before anything is
touched: the request comes from this origin (``Sec-Fetch-Site`` and ``Origin``, when the
browser sends them), its session is live (and its master token still accepted), and it
carries the session's CSRF token.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import parse_qsl, urlsplit

import attrs
from aiohttp import web

from keybrake.server._keys import CONFIGURED_ADMIN_HASH, LEDGER, STORE
from keybrake.server.api.tokens import tenant_of
from keybrake.server.dashboard.data import VendorCache, active_matching, key_page, spend_chart
from keybrake.server.dashboard.markup import Markup
from keybrake.server.dashboard.sessions import Lookup, Session, Sessions, SessionsFull
from keybrake.server.dashboard.views import (
    BASE,
    STATUSES,
    Filters,
    confirm_page,
    dashboard_page,
    live_fragment,
    message_page,
    sign_in_page,
)
from keybrake.server.http import deadlines
from keybrake.server.stores.base import Store, StoreUnavailable
from keybrake.server.util import hash_token, now_micros

__all__ = ["COOKIE", "DASHBOARD", "SECURITY_HEADERS", "Dashboard", "add_routes"]

#: The session cookie's name.
COOKIE = "keybrake_dashboard"
#: Longest label prefix, key id or master token read from a form.
_MAX_FIELD = 256
#: Milliseconds between two refreshes of the keys and the chart.
REFRESH_MS = 5_000
#: What a session id looks like (``secrets.token_urlsafe(32)``); anything else names none.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")
#: Largest form body read (a sign-in or a revoke is a few hundred bytes).
_MAX_FORM = 64 * 1024
_FORM = "application/x-www-form-urlencoded"


class _BadForm(Exception):
    """A form that can't be read one plain way: answered 400, nothing changed."""


#: Set on every dashboard answer. Scripts and styles come from this server's own files (no
#: inline script or style at all), nothing may frame the page, forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none';"
        " object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@attrs.define
class Dashboard:
    """The dashboard's state on the application."""

    sessions: Sessions = attrs.field(factory=Sessions)
    vendors: VendorCache = attrs.field(factory=VendorCache)
    refresh_ms: int = REFRESH_MS


DASHBOARD: web.AppKey[Dashboard] = web.AppKey("dashboard", Dashboard)

# -- answers ---------------------------------------------------------------------------------

EXPIRED = "Your session expired (a session lasts 12 hours). Sign in again."
ENDED = "Your session has ended (you signed out, or the server restarted). Sign in again."
TOKEN_GONE = "The master token this session signed in with is no longer accepted. Sign in again."
WRONG_TOKEN = "That master token is not valid: this server knows no such token."
CROSS_SITE = (
    "Refused: this request came from another site (Origin / Sec-Fetch-Site). Nothing was changed."
)
BAD_CSRF = (
    "Refused: the form's CSRF token is missing or does not match your session, so it may not"
    " come from this dashboard. Nothing was changed. Reload the dashboard and try again."
)
UNAVAILABLE = "keybrake's store is unavailable. Nothing was changed; try again shortly."
BAD_FORM = (
    "Refused: the form could not be read (a dashboard form is a small UTF-8"
    " application/x-www-form-urlencoded body). Nothing was changed."
)
FULL = (
    "The server has as many dashboard sessions open as it keeps. Sign out elsewhere, or try"
    " again once some have expired."
)
TWO_COOKIES = (
    "Your browser sent a dashboard session cookie that can't be used: two of them (so which"
    " session is yours is unclear), or a malformed one. Sign in again."
)
NO_CHANGE = " Nothing was changed."


def _html(
    body: Markup, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**SECURITY_HEADERS, "Location": location})


def _secure(request: web.Request) -> bool:
    """Whether the browser reached us over https (itself, or through a proxy that says so:
    believing the header can only add ``Secure`` to the cookie, never take it away)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def _end_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=BASE)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _store_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreUnavailable:
            return _html(message_page("Unavailable", UNAVAILABLE), status=503)
        except _BadForm:
            return _html(message_page("Refused", BAD_FORM), status=400)

    return wrapped


def _plain(value: str) -> bool:
    """Printable text that is valid UTF-8 (no lone surrogate, no NUL): what a store takes."""
    if not value.isprintable():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _form(request: web.Request) -> dict[str, str]:
    """The request's form, read one plain way: a small UTF-8 urlencoded body, no encoding.

    Raises:
        _BadForm: anything else (another content type or charset, a compressed or
            oversized body, bytes that aren't UTF-8, a malformed pair, odd characters).
    """
    media, _, params = request.headers.get("Content-Type", "").partition(";")
    charset = params.strip().lower()
    if (
        media.strip().lower() != _FORM
        or charset not in ("", "charset=utf-8")
        or "Content-Encoding" in request.headers
        # A browser's form says its length: a chunked body, which doesn't, could make the
        # server buffer up to the proxy's body limit for anyone, signed in or not.
        or request.content_length is None
        or request.content_length > _MAX_FORM
    ):
        raise _BadForm
    body = await deadlines.read_body(request)
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise _BadForm from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form or not _plain(name) or not _plain(value):
            raise _BadForm
        form[name] = value
    return form


def _session_cookie(request: web.Request) -> str | None:
    """The session id the request's cookies carry: None for none, ``""`` for two or more
    (another site's cookie beside ours could pick the session) or a malformed one."""
    found = [
        value.strip()
        for header in request.headers.getall("Cookie", [])
        for name, _, value in (part.partition("=") for part in header.split(";"))
        if name.strip() == COOKIE
    ]
    if not found:
        return None
    if len(found) > 1 or not _SESSION_ID.fullmatch(found[0]):
        return ""
    return found[0]


# -- who is asking ---------------------------------------------------------------------------


async def _tenant_of(request: web.Request, token_hash: str) -> str | None:
    """The tenant of a master token's hash, as the issuance API authorises it."""
    return await tenant_of(request.app[STORE], request.app[CONFIGURED_ADMIN_HASH], token_hash)


async def _session(request: web.Request) -> tuple[str, Session] | str | None:
    """The live session of the request's cookie with its id; else why there is none (a
    message), or None when there is no cookie at all."""
    session_id = _session_cookie(request)
    if session_id is None:
        return None
    if not session_id:
        return TWO_COOKIES
    sessions = request.app[DASHBOARD].sessions
    found = sessions.get(session_id)
    if found is Lookup.EXPIRED:
        return EXPIRED
    if found is Lookup.UNKNOWN:
        return ENDED
    assert isinstance(found, Session)
    if await _tenant_of(request, found.admin_token_hash) != found.tenant:
        sessions.end(session_id)
        return TOKEN_GONE
    return session_id, found


def _same_origin(request: web.Request) -> bool:
    """Whether a browser says this request comes from a page of this server.

    ``Sec-Fetch-Site`` must say ``same-origin`` when it is sent. ``Origin`` must name this
    server when it names one; under the page's ``Referrer-Policy: no-referrer`` Chromium sends
    ``Origin: null`` even from our own pages, which passes only next to ``Sec-Fetch-Site:
    same-origin``. Requests with neither header (not from a browser) pass: the CSRF token is
    what they need.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is None or (origin == "null" and site is not None):
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()


async def _change(request: web.Request) -> tuple[Session, dict[str, str]] | web.Response:
    """The session and form of a change, or the refusal to send (nothing was changed)."""
    if not _same_origin(request):
        return _html(message_page("Refused", CROSS_SITE), status=403)
    found = await _session(request)
    if not isinstance(found, tuple):
        message = (found or "You are not signed in. Sign in first.") + NO_CHANGE
        response = _html(message_page("Sign in", message, sign_in=True), status=401)
        _end_cookie(response)
        return response
    _, session = found
    form = await _form(request)
    if not session.csrf_matches(form.get("csrf", "")):
        return _html(message_page("Refused", BAD_CSRF), status=403)
    return session, form


def _field(values: dict[str, str], name: str) -> str:
    """A filter's value; ``""`` for one no store could hold (a NUL, a lone surrogate)."""
    value = values.get(name, "")[:_MAX_FIELD]
    return value if _plain(value) else ""


def _filters(values: dict[str, str]) -> Filters:
    status = values.get("status", "")
    return Filters(
        prefix=_field(values, "prefix"),
        status=status if status in STATUSES else "",
        after=_field(values, "after"),
    )


def _back(form: dict[str, str]) -> str:
    """Where a change returns to: the dashboard with the filters it was made under (only
    those: never a location taken from the form)."""
    back = form.get("back", "")
    values = dict(parse_qsl(back[1:] if back.startswith("?") else ""))
    return BASE + _filters(values).query()


# -- pages -----------------------------------------------------------------------------------


@_store_errors
async def dashboard(request: web.Request) -> web.StreamResponse:
    found = await _session(request)
    if not isinstance(found, tuple):
        response = _html(sign_in_page(found, error=found is not None))
        if found is not None:
            _end_cookie(response)
        return response
    _, session = found
    filters = _filters(dict(request.query))
    flash, session.flash = session.flash, None
    live = await _live(request, session, filters)
    return _html(
        dashboard_page(
            tenant=session.tenant,
            csrf_token=session.csrf_token,
            filters=filters,
            live=live,
            flash=flash,
            refresh_ms=request.app[DASHBOARD].refresh_ms,
        )
    )


async def _live(request: web.Request, session: Session, filters: Filters) -> Markup:
    store: Store = request.app[STORE]
    await request.app[LEDGER].flush()  # spend as of every request answered so far
    now = now_micros()
    page = await key_page(
        store,
        session.tenant,
        status=filters.status or None,
        prefix=filters.prefix,
        after=filters.after or None,
        now=now,
    )
    chart = await spend_chart(store, session.tenant, request.app[DASHBOARD].vendors, now=now)
    return live_fragment(page, chart, csrf_token=session.csrf_token, filters=filters, now=now)


@_store_errors
async def live(request: web.Request) -> web.StreamResponse:
    """The part of the page that refreshes on its own (401 once the session is gone: the
    page's script then reloads, and the sign-in form says why)."""
    found = await _session(request)
    if not isinstance(found, tuple):
        return _html(Markup(""), status=401)
    _, session = found
    return _html(await _live(request, session, _filters(dict(request.query))))


@_store_errors
async def sign_in(request: web.Request) -> web.StreamResponse:
    if not _same_origin(request):
        return _html(message_page("Refused", CROSS_SITE), status=403)
    form = await _form(request)
    token = form.get("token", "").strip()
    tenant = None
    if token and len(token) <= _MAX_FIELD and token.isascii():
        token_hash = hash_token(token)
        tenant = await _tenant_of(request, token_hash)
    if tenant is None:
        return _html(sign_in_page(WRONG_TOKEN, error=True), status=401)
    sessions = request.app[DASHBOARD].sessions
    previous = _session_cookie(request)
    if previous:
        sessions.end(previous)
    try:
        session_id, _ = sessions.create(tenant, token_hash)
    except SessionsFull:
        return _html(message_page("Unavailable", FULL), status=503)
    response = _see_other(BASE)
    response.set_cookie(
        COOKIE,
        session_id,
        path=BASE,
        max_age=int(sessions.ttl),
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )
    return response


@_store_errors
async def sign_out(request: web.Request) -> web.StreamResponse:
    checked = await _change(request)
    if isinstance(checked, web.Response):
        return checked
    request.app[DASHBOARD].sessions.end(_session_cookie(request) or "")
    response = _html(sign_in_page("You are signed out."))
    _end_cookie(response)
    return response


@_store_errors
async def revoke(request: web.Request) -> web.StreamResponse:
    checked = await _change(request)
    if isinstance(checked, web.Response):
        return checked
    session, form = checked
    key_id = form.get("key_id", "")
    store: Store = request.app[STORE]
    now = now_micros()
    key = None
    if key_id and len(key_id) <= _MAX_FIELD and _plain(key_id):
        key = await store.revoke_key(session.tenant, key_id, now)
    if key is None:
        message = f"Your tenant has no key {key_id[:_MAX_FIELD]!r}." + NO_CHANGE
        return _html(message_page("No such key", message), status=404)
    if key.revoked_at == now:
        session.flash = f"Revoked {key.id} ({key.label or 'no label'})."
    else:
        session.flash = f"{key.id} was revoked already."
    return _see_other(_back(form))


@_store_errors
async def confirm_matching(request: web.Request) -> web.StreamResponse:
    """The confirmation step: which active keys a label prefix matches now."""
    found = await _session(request)
    if not isinstance(found, tuple):
        response = _html(sign_in_page(found, error=found is not None))
        _end_cookie(response)
        return response
    _, session = found
    prefix = _field(dict(request.query), "prefix")
    now = now_micros()
    keys, more = (
        await active_matching(request.app[STORE], session.tenant, prefix, now=now)
        if prefix
        else ([], False)
    )
    return _html(
        confirm_page(
            tenant=session.tenant,
            csrf_token=session.csrf_token,
            prefix=prefix,
            keys=keys,
            more=more,
            now=now,
        )
    )


@_store_errors
async def revoke_matching(request: web.Request) -> web.StreamResponse:
    checked = await _change(request)
    if isinstance(checked, web.Response):
        return checked
    session, form = checked
    prefix = form.get("prefix", "")
    if not prefix or len(prefix) > _MAX_FIELD:
        message = "Type a label prefix: the active keys whose label starts with it are revoked."
        return _html(message_page("No label prefix", message + NO_CHANGE), status=400)
    store: Store = request.app[STORE]
    ids = await store.revoke_keys(session.tenant, now_micros(), label_prefix=prefix)
    noun = "key" if len(ids) == 1 else "keys"
    session.flash = f"Revoked {len(ids)} {noun} whose label starts with {prefix!r}."
    return _see_other(BASE + Filters(prefix=prefix).query())


# -- files -----------------------------------------------------------------------------------

_STATIC = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


@functools.cache
def _static_text(name: str) -> str:
    return resources.files("keybrake.server.dashboard").joinpath("static", name).read_text("utf-8")


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _STATIC:
        return not_found(request)
    return web.Response(
        text=_static_text(name),
        content_type=_STATIC[name],
        charset="utf-8",
        headers=SECURITY_HEADERS,
    )


def not_found(request: web.Request) -> web.Response:
    return _html(message_page("Not found", "The dashboard has no such page."), status=404)


async def _not_found(request: web.Request) -> web.StreamResponse:
    return not_found(request)


async def _to_dashboard(request: web.Request) -> web.StreamResponse:
    return _see_other(BASE)


def add_routes(app: web.Application) -> None:
    """Serve the dashboard under ``/dashboard`` (before the proxy's ``/{vendor}/...``, which
    would otherwise take ``/dashboard/...`` for a vendor)."""
    app[DASHBOARD] = Dashboard()
    app.router.add_get(BASE, dashboard)
    app.router.add_get(BASE + "/live", live)
    app.router.add_post(BASE + "/sign-in", sign_in)
    app.router.add_post(BASE + "/sign-out", sign_out)
    app.router.add_post(BASE + "/revoke", revoke)
    app.router.add_get(BASE + "/revoke-matching", confirm_matching)
    app.router.add_post(BASE + "/revoke-matching", revoke_matching)
    app.router.add_get(BASE + "/static/{name}", static)
    app.router.add_get(BASE + "/", _to_dashboard)
    app.router.add_route("*", BASE + "/{tail:.*}", _not_found)
