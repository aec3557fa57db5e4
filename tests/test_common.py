"""Durations, money and endpoint patterns: the pieces both halves share."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keybrake._common import (
    EndpointPattern,
    UnsafePathError,
    format_usd,
    normalise_path,
    parse_duration,
    parse_rate,
    parse_time,
    to_micros,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("45", 45),
        (90, 90),
        (timedelta(minutes=1), 60),
    ],
)
def test_parse_duration(value: str | int | timedelta, seconds: int) -> None:
    assert parse_duration(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["", "5x", "-5m", "1.5h", 0, -1, True, 1.5, None])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        (500, 500_000_000),
        ("0.01", 10_000),
        (Decimal("12.345678"), 12_345_678),
        ("0", 0),
        ("1.000000000", 1_000_000),
        ("1E+2", 100_000_000),
    ],
)
def test_to_micros_is_exact(value: int | str | Decimal, micros: int) -> None:
    assert to_micros(value) == micros


@pytest.mark.parametrize(
    "value",
    [0.1, "-1", "1e12", "NaN", "Infinity", "0.0000001", "abc", True, "1e-999999999", "5E-7"],
)
def test_to_micros_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="USD amount"):
        to_micros(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("micros", "text"),
    [(500_000_000, "500.00"), (10_000, "0.01"), (7_900, "0.0079"), (0, "0.00"), (1, "0.000001")],
)
def test_format_usd(micros: int, text: str) -> None:
    assert format_usd(micros) == text


@given(st.integers(min_value=0, max_value=10**15))
def test_money_round_trips(micros: int) -> None:
    assert to_micros(format_usd(micros)) == micros


def test_parse_time_accepts_z() -> None:
    assert parse_time("2026-11-27T18:00:00Z").utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="time zone"):
        parse_time("2026-11-27T18:00:00")


@pytest.mark.parametrize(
    ("pattern", "method", "path", "expected"),
    [
        ("/v1/payment_intents", "POST", "/v1/payment_intents", True),
        ("/v1/payment_intents", "GET", "/v1/payment_intents/pi_1", False),
        ("/v1/payment_intents/*", "GET", "/v1/payment_intents/pi_1", True),
        ("/v1/payment_intents/*", "GET", "/v1/payment_intents/pi_1/confirm", False),
        ("/v1/payment_intents/**", "POST", "/v1/payment_intents/pi_1/confirm", True),
        ("/v1/payment_intents/**", "POST", "/v1/payment_intents", True),  # any number: 0 too
        ("/v1/payment_intents/**", "POST", "/v1/payment_intent", False),
        ("/v1/payment_intents/**", "POST", "/v1", False),
        ("GET /v1/charges/*", "GET", "/v1/charges/ch_1", True),
        ("GET /v1/charges/*", "POST", "/v1/charges/ch_1", False),
        ("post /v1/refunds", "POST", "/v1/refunds", True),
        ("/**", "GET", "/anything/at/all", True),
    ],
)
def test_endpoint_patterns(pattern: str, method: str, path: str, expected: bool) -> None:
    assert EndpointPattern.parse(pattern).matches(method, normalise_path(path)) is expected


@pytest.mark.parametrize(
    "pattern", ["v1/x", "FETCH /v1/x", "/v1/**/x", "/v1/a*", "/v1//x", "/v1/../x", "", "/v1/x/"]
)
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        EndpointPattern.parse(pattern)


segment_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/"), min_size=0, max_size=6
)
raw_paths = st.lists(
    st.one_of(
        segment_text,
        st.sampled_from(
            [
                "..",
                ".",
                "%2e%2e",
                "%2E",
                "%2f",
                "%5c",
                "%00",
                "payment_intents",
                "v1",
                "*",
                "%",
                "%zz",
                "pi_1",
            ]
        ),
    ),
    min_size=1,
    max_size=5,
).map(lambda parts: "/" + "/".join(parts))


@given(raw_paths)
def test_no_crafted_path_escapes_the_allowlist(path: str) -> None:
    """Whatever a path looks like, it either is refused or names only what it says."""
    pattern = EndpointPattern.parse("/v1/payment_intents/*")
    try:
        segments = normalise_path(path)
    except UnsafePathError:
        return
    if pattern.matches("GET", segments):
        assert segments[:2] == ("v1", "payment_intents")
        assert len(segments) == 3
        assert segments[2] not in ("", ".", "..")
        assert all(ch.isprintable() and ch not in "/\\" for ch in segments[2])


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        (
            "/2010-04-01/%41ccounts/AC1/Messages.json",
            ("2010-04-01", "Accounts", "AC1", "Messages.json"),
        ),
        ("/v1/%70ayment_intents/pi_%31", ("v1", "payment_intents", "pi_1")),
        ("/v1/a%3ab", ("v1", "a%3Ab")),  # reserved: stays escaped, in one spelling
        ("/v1/%7e%2D%5f", ("v1", "~-_")),
    ],
)
def test_every_spelling_of_a_path_gives_the_same_segments(
    path: str, segments: tuple[str, ...]
) -> None:
    assert normalise_path(path) == segments
    pattern = EndpointPattern.parse("/" + "/".join(segments))
    assert pattern.matches("GET", normalise_path(path))


@pytest.mark.parametrize(
    ("value", "parsed"), [("1/s", (1, 1)), ("100/m", (100, 60)), ("100000/h", (100_000, 3600))]
)
def test_parse_rate(value: str, parsed: tuple[int, int]) -> None:
    assert parse_rate(value) == parsed


@pytest.mark.parametrize(
    "value", ["1/s\n", " 1/s", "1/s ", "0/s", "01/s", "100001/h", "1/d", "1/S", "1 /s", ""]
)
def test_parse_rate_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError, match="not a rate limit"):
        parse_rate(value)
