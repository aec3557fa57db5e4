"""Sessions in memory, by hash; HTML escaping; the spend chart's drawing."""

from __future__ import annotations

import pytest

from keybrake.server.dashboard.chart import spend_svg
from keybrake.server.dashboard.data import SpendChart, user_and_run
from keybrake.server.dashboard.markup import Markup, clip, escape, render
from keybrake.server.dashboard.sessions import Lookup, Session, Sessions, SessionsFull


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_is_kept_by_the_hash_of_its_id() -> None:
    sessions = Sessions()
    session_id, session = sessions.create("default", "ab" * 32)
    assert session_id not in repr(vars(sessions))
    assert sessions.get(session_id) is session
    assert sessions.get(session_id + "x") is Lookup.UNKNOWN
    assert session.csrf_token != session_id


def test_a_session_expires_for_good_and_is_forgotten_later() -> None:
    clock = Clock()
    sessions = Sessions(ttl=100, clock=clock)
    session_id, _ = sessions.create("default", "h")
    clock.now += 99
    assert isinstance(sessions.get(session_id), Session)
    clock.now += 1
    assert sessions.get(session_id) is Lookup.EXPIRED
    clock.now -= 50  # a clock that goes back revives nothing
    assert sessions.get(session_id) is Lookup.EXPIRED
    clock.now += 200
    sessions.create("default", "h")  # forgets what expired a ttl ago
    assert sessions.get(session_id) is Lookup.UNKNOWN
    assert len(sessions) == 1


def test_a_token_past_its_own_limit_ends_its_own_oldest_session_only() -> None:
    sessions = Sessions(per_token=2)
    operator, _ = sessions.create("default", "operator")
    first, _ = sessions.create("acme", "other")
    second, _ = sessions.create("acme", "other")
    third, _ = sessions.create("acme", "other")
    assert sessions.get(first) is Lookup.UNKNOWN
    assert isinstance(sessions.get(second), Session)
    assert isinstance(sessions.get(third), Session)
    assert isinstance(sessions.get(operator), Session)  # another token's is never ended


def test_a_full_process_refuses_sign_ins_rather_than_end_others_sessions() -> None:
    sessions = Sessions(limit=2)
    operator, _ = sessions.create("default", "operator")
    sessions.create("acme", "other")
    with pytest.raises(SessionsFull):
        sessions.create("acme", "other-again")
    assert isinstance(sessions.get(operator), Session)


def test_invisible_characters_are_shown_and_long_text_is_clipped() -> None:
    assert escape("run\u200b-42") == "run\\u200b-42"
    assert escape("\u202esdnufer") == "\\u202esdnufer"
    assert escape("a\x00b") == "a\\u0000b"
    assert escape("café") == "café"
    assert clip("x" * 500) == "x" * 199 + "\u2026"
    assert clip("short") == "short"


def test_csrf_tokens_compare_exactly() -> None:
    _, session = Sessions().create("default", "h")
    assert session.csrf_matches(session.csrf_token)
    assert not session.csrf_matches(session.csrf_token[:-1])
    assert not session.csrf_matches("")
    assert not session.csrf_matches("é")


def test_values_are_escaped_and_markup_is_not() -> None:
    html = render(
        '<td title="{title}">{text}{safe}</td>',
        title='" onmouseover="x',
        text="<script>&'",
        safe=Markup("<b>ok</b>"),
    )
    assert html == (
        '<td title="&quot; onmouseover=&quot;x">&lt;script&gt;&amp;&#x27;<b>ok</b></td>'
    )
    assert escape(escape("<")) == "&lt;"


def test_user_and_run_come_from_metadata() -> None:
    assert user_and_run({"user": "u", "run": "r"}) == ("u", "r")
    assert user_and_run({"x-user-id": "u1", "x-agent-run-id": "r7"}) == ("u1", "r7")
    assert user_and_run({"arq_job_id": "j"}) == ("", "j")
    assert user_and_run({"user": "", "x-user-id": "u1"}) == ("u1", "")


def test_the_chart_stacks_vendors_per_day() -> None:
    chart = SpendChart(
        ["2026-11-26", "2026-11-27"],
        {("2026-11-27", "stripe"): 3_000_000, ("2026-11-27", "twilio"): 1_000_000},
        truncated=False,
    )
    svg = spend_svg(chart)
    assert "stripe $3.00" in svg
    assert "twilio $1.00" in svg
    assert "<title>2026-11-27 stripe: $3.00</title>" in svg
    assert svg.count("<rect") == 2 + 2  # two bars, two legend swatches
    assert " style=" not in svg
    empty = spend_svg(SpendChart(["2026-11-27"], {}, truncated=False))
    assert "No spend in these 1 days." in empty
