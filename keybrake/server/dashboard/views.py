"""The dashboard's pages, as HTML (every value escaped: labels and metadata come from agents)."""

from __future__ import annotations

from urllib.parse import urlencode

import attrs

from keybrake._common import format_time, format_usd
from keybrake.server.dashboard.chart import spend_svg
from keybrake.server.dashboard.data import KeyPage, KeyView, SpendChart, user_and_run
from keybrake.server.dashboard.markup import Markup, clip, join, render
from keybrake.server.stores.base import AuditEntry, KeyRecord
from keybrake.server.util import to_datetime

__all__ = [
    "BASE",
    "Filters",
    "confirm_page",
    "dashboard_page",
    "live_fragment",
    "message_page",
    "sign_in_page",
]

BASE = "/dashboard"
STATUSES = ("active", "expired", "revoked")


@attrs.frozen
class Filters:
    """What the page lists: a label prefix, a status ("" for all), a cursor."""

    prefix: str = ""
    status: str = ""
    after: str = ""

    def query(self, **changes: str) -> str:
        """This view's query string (with ``changes``), empty fields left out."""
        values = attrs.asdict(attrs.evolve(self, **changes))
        text = urlencode({k: v for k, v in values.items() if v})
        return "?" + text if text else ""


_EMPTY = Markup("")


def _page(title: str, body: Markup, *, header: Markup = _EMPTY) -> Markup:
    return render(
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        "<title>{title} · keybrake</title>"
        '<link rel="icon" href="{base}/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="{base}/static/dashboard.css">'
        '<script src="{base}/static/dashboard.js" defer></script>'
        "</head><body>"
        '<header class="top"><span class="brand">keybrake</span>{header}</header>'
        "<main>{body}</main></body></html>\n",
        title=title,
        base=BASE,
        header=header,
        body=body,
    )


def _notice(message: str | None, kind: str = "info") -> Markup:
    if not message:
        return Markup("")
    role = "alert" if kind == "error" else "status"
    return render(
        '<p class="notice {kind}" role="{role}">{message}</p>',
        kind=kind,
        role=role,
        message=message,
    )


def _csrf(token: str) -> Markup:
    return render('<input type="hidden" name="csrf" value="{token}">', token=token)


def sign_in_page(message: str | None = None, *, error: bool = False) -> Markup:
    body = render(
        '<section class="sign-in"><h1>Sign in</h1>{notice}'
        '<form method="post" action="{base}/sign-in">'
        '<label for="token">Master token</label>'
        '<input id="token" name="token" type="password" autocomplete="off" spellcheck="false"'
        " required>"
        '<button type="submit">Sign in</button></form>'
        '<p class="hint">The master token (<code>KEYBRAKE_TOKEN</code>) of your team. It is'
        " checked and not kept: your browser gets a session cookie holding a random id, for 12"
        " hours at most.</p></section>",
        notice=_notice(message, "error" if error else "info"),
        base=BASE,
    )
    return _page("Sign in", body)


def message_page(title: str, message: str, *, sign_in: bool = False) -> Markup:
    """A refusal or an error, with the way back."""
    if sign_in:
        return sign_in_page(message, error=True)
    body = render(
        '<section class="message"><h1>{title}</h1>{notice}'
        '<p><a href="{base}">Back to the dashboard</a></p></section>',
        title=title,
        notice=_notice(message, "error"),
        base=BASE,
    )
    return _page(title, body)


def _header(tenant: str, csrf_token: str) -> Markup:
    return render(
        '<span class="tenant">Tenant <strong>{tenant}</strong></span>'
        '<form method="post" action="{base}/sign-out" class="sign-out">{csrf}'
        '<button type="submit">Sign out</button></form>',
        tenant=tenant,
        base=BASE,
        csrf=_csrf(csrf_token),
    )


def _usd(micros: int) -> str:
    return "$" + format_usd(micros)


def duration(micros: int) -> str:
    """A span of time, roughly: ``"45s"``, ``"4m 10s"``, ``"2h 5m"``, ``"3d 4h"``."""
    seconds = max(0, micros // 1_000_000)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def _expiry(key: KeyRecord, status: str, now: int) -> Markup:
    if status == "revoked" and key.revoked_at is not None:
        text, moment = f"revoked {duration(now - key.revoked_at)} ago", key.revoked_at
    elif status == "expired":
        text, moment = f"expired {duration(now - key.expires_at)} ago", key.expires_at
    else:
        text, moment = f"{duration(key.expires_at - now)} left", key.expires_at
    return render(
        '<time datetime="{at}" title="{at}">{text}</time>',
        at=format_time(to_datetime(moment)),
        text=text,
    )


def _spend(view: KeyView) -> Markup:
    cap = view.key.cap_micros
    in_flight = (
        render(' <span class="in-flight">+{usd} in flight</span>', usd=_usd(view.reserved_today))
        if view.reserved_today
        else Markup("")
    )
    return render(
        '<meter min="0" max="{max}" low="{low}" high="{high}" optimum="0" value="{value}"'
        ' title="{pct} of the daily cap">{pct}</meter>'
        ' <span class="money">{spent} / {cap}</span>{in_flight}',
        max=max(cap, 1),
        low=cap // 2,
        high=cap * 9 // 10,
        value=min(view.spent_today + view.reserved_today, max(cap, 1)),
        pct=f"{100 * (view.spent_today + view.reserved_today) / max(cap, 1):.0f}%",
        spent=_usd(view.spent_today),
        cap=_usd(cap),
        in_flight=in_flight,
    )


def _audit(key_id: str, entries: list[AuditEntry]) -> Markup:
    if not entries:
        return Markup('<span class="hint">No requests yet.</span>')
    rows = join(
        render(
            '<tr><td><time datetime="{at}" title="{at}">{clock}</time></td>'
            "<td><code>{method} {path}</code></td><td>{decision}</td><td>{status}</td>"
            '<td class="money">{settled}</td></tr>',
            at=format_time(to_datetime(e.at)),
            clock=to_datetime(e.at).strftime("%m-%d %H:%M:%S"),
            method=e.method,
            path=clip(e.path),
            decision=e.decision,
            status=e.status,
            settled=_usd(e.settled),
        )
        for e in entries
    )
    return render(
        '<details id="audit-{id}"><summary>Recent requests ({n})</summary>'
        '<table class="audit"><thead><tr><th>At (UTC)</th><th>Request</th><th>Decision</th>'
        "<th>Status</th><th>Cost</th></tr></thead><tbody>{rows}</tbody></table></details>",
        id=key_id,
        n=len(entries),
        rows=rows,
    )


def _budget(budget_id: str | None) -> Markup:
    """The run budget a key draws from, if any."""
    if budget_id is None:
        return Markup("")
    return render('<p class="budget">Draws from budget <code>{id}</code></p>', id=budget_id)


#: Metadata pairs shown under a key at most.
MAX_METADATA_SHOWN = 20


def _metadata(metadata: dict[str, str]) -> Markup:
    if not metadata:
        return Markup("")
    shown = sorted(metadata.items())[:MAX_METADATA_SHOWN]
    pairs = join(render("<dt>{k}</dt><dd>{v}</dd>", k=clip(k, 64), v=clip(v)) for k, v in shown)
    more = len(metadata) - len(shown)
    rest = render('<p class="hint">and {n} more</p>', n=more) if more > 0 else Markup("")
    return render('<dl class="metadata">{pairs}</dl>{rest}', pairs=pairs, rest=rest)


def _key_rows(view: KeyView, *, csrf_token: str, filters: Filters, now: int) -> Markup:
    key = view.key
    user, run = user_and_run(key.metadata)
    if view.status == "active":
        action = render(
            '<form method="post" action="{base}/revoke">{csrf}'
            '<input type="hidden" name="key_id" value="{id}">'
            '<input type="hidden" name="back" value="{back}">'
            '<button type="submit" class="danger">Revoke</button></form>',
            base=BASE,
            csrf=_csrf(csrf_token),
            id=key.id,
            back=filters.query(),
        )
    else:
        action = Markup("")
    return render(
        '<tr id="key-{id}" class="key {status}">'
        '<td><code class="key-id">{id}</code></td><td class="label">{label}</td>'
        "<td>{vendor}</td>"
        '<td><span class="status {status}">{status}</span></td>'
        '<td class="spend">{spend}</td><td class="expires">{expires}</td>'
        '<td class="user">{user}</td><td class="run">{run}</td><td>{action}</td></tr>'
        '<tr class="details"><td></td><td colspan="8">{metadata}{audit}</td></tr>',
        id=key.id,
        status=view.status,
        label=clip(key.label),
        vendor=key.vendor,
        spend=_spend(view),
        expires=_expiry(key, view.status, now),
        user=clip(user, 64),
        run=clip(run, 64),
        action=action,
        metadata=Markup(_budget(key.budget_id) + _metadata(key.metadata)),
        audit=_audit(key.id, view.audit),
    )


def live_fragment(
    page: KeyPage, chart: SpendChart, *, csrf_token: str, filters: Filters, now: int
) -> Markup:
    """What refreshes on its own: the spend chart and the keys."""
    if page.keys:
        rows = join(
            _key_rows(view, csrf_token=csrf_token, filters=filters, now=now) for view in page.keys
        )
        keys = render(
            '<table class="keys"><thead><tr><th>Key</th><th>Label</th><th>Vendor</th>'
            "<th>Status</th><th>Spent today / cap</th><th>Expires</th><th>User</th>"
            "<th>Run</th><th></th></tr></thead><tbody>{rows}</tbody></table>",
            rows=rows,
        )
    else:
        keys = Markup('<p class="hint">No keys match.</p>')
    pages = []
    if filters.after:
        pages.append(
            render('<a href="{base}{q}">Newest keys</a>', base=BASE, q=filters.query(after=""))
        )
    if page.next_after:
        pages.append(
            render(
                '<a href="{base}{q}">Older keys</a>',
                base=BASE,
                q=filters.query(after=page.next_after),
            )
        )
    truncated = (
        Markup('<p class="hint">Only the most recent spend is drawn: there is too much.</p>')
        if chart.truncated
        else Markup("")
    )
    return render(
        '<section class="spend-chart"><h2>Spend per day (UTC) and vendor</h2>{svg}{truncated}'
        "</section>"
        '<section class="key-list"><h2>Keys</h2>{keys}<nav class="pages">{pages}</nav>'
        '<p class="updated">Updated <time datetime="{at}">{clock} UTC</time></p></section>',
        svg=spend_svg(chart),
        truncated=truncated,
        keys=keys,
        pages=join(pages, " "),
        at=format_time(to_datetime(now)),
        clock=to_datetime(now).strftime("%H:%M:%S"),
    )


def dashboard_page(
    *,
    tenant: str,
    csrf_token: str,
    filters: Filters,
    live: Markup,
    flash: str | None,
    refresh_ms: int,
) -> Markup:
    options = join(
        render(
            '<option value="{value}"{selected}>{text}</option>',
            value=value,
            text=value or "all",
            selected=Markup(" selected") if value == filters.status else Markup(""),
        )
        for value in ("", *STATUSES)
    )
    body = render(
        "{flash}"
        '<form method="get" action="{base}" class="filters">'
        '<label for="prefix">Label prefix</label>'
        '<input id="prefix" name="prefix" value="{prefix}" maxlength="200" spellcheck="false">'
        '<label for="status">Status</label><select id="status" name="status">{options}</select>'
        '<button type="submit">Filter</button>'
        '<button type="submit" class="danger" formaction="{base}/revoke-matching">'
        "Revoke all matching</button></form>"
        '<div id="live" data-src="{base}/live{query}" data-refresh="{refresh}">{live}</div>',
        flash=_notice(flash),
        base=BASE,
        prefix=filters.prefix,
        options=options,
        query=filters.query(),
        refresh=refresh_ms,
        live=live,
    )
    return _page("Keys", body, header=_header(tenant, csrf_token))


def _confirm_row(key: KeyRecord, now: int) -> Markup:
    user, run = user_and_run(key.metadata)
    return render(
        "<tr><td><code>{id}</code></td><td>{label}</td><td>{vendor}</td><td>{user}</td>"
        "<td>{run}</td><td>{expires}</td></tr>",
        id=key.id,
        label=clip(key.label),
        vendor=key.vendor,
        user=clip(user, 64),
        run=clip(run, 64),
        expires=_expiry(key, "active", now),
    )


def confirm_page(
    *,
    tenant: str,
    csrf_token: str,
    prefix: str,
    keys: list[KeyRecord],
    more: bool,
    now: int,
) -> Markup:
    """The confirmation step of revoking every active key whose label starts with ``prefix``."""
    back = render('<a href="{base}{q}">Cancel</a>', base=BASE, q=Filters(prefix=prefix).query())
    if not prefix:
        body = render(
            '<section class="confirm"><h1>Revoke all matching</h1>'
            '{notice}<p><a href="{base}">Back to the dashboard</a></p></section>',
            notice=_notice(
                "Type a label prefix first: the keys whose label starts with it are"
                " the ones revoked.",
                "error",
            ),
            base=BASE,
        )
        return _page("Revoke all matching", body, header=_header(tenant, csrf_token))
    if not keys:
        body = render(
            '<section class="confirm"><h1>Revoke all matching</h1>'
            "<p>No active key has a label starting with <code>{prefix}</code>.</p>"
            "<p>{back}</p></section>",
            prefix=prefix,
            back=back,
        )
        return _page("Revoke all matching", body, header=_header(tenant, csrf_token))
    rows = join(_confirm_row(key, now) for key in keys)
    count = f"{len(keys)}{'+' if more else ''}"
    body = render(
        '<section class="confirm"><h1>Revoke all matching</h1>'
        '<p class="count"><strong>{count}</strong> active {noun} {verb} a label starting with'
        " <code>{prefix}</code>:</p>"
        '<table class="keys"><thead><tr><th>Key</th><th>Label</th><th>Vendor</th><th>User</th>'
        "<th>Run</th><th>Expires</th></tr></thead><tbody>{rows}</tbody></table>"
        '<form method="post" action="{base}/revoke-matching" class="confirm">{csrf}'
        '<input type="hidden" name="prefix" value="{prefix}">'
        '<button type="submit" class="danger">Yes, revoke them</button> {back}</form>'
        '<p class="hint">Every active key whose label starts with the prefix when you confirm is'
        " revoked, keys issued since this page was shown included.</p></section>",
        count=count,
        noun="key" if count == "1" else "keys",
        verb="has" if count == "1" else "have",
        prefix=prefix,
        rows=rows,
        base=BASE,
        csrf=_csrf(csrf_token),
        back=back,
    )
    return _page("Revoke all matching", body, header=_header(tenant, csrf_token))
