"""The spend chart: stacked bars per UTC day, one colour per vendor, as inline SVG."""

from __future__ import annotations

from decimal import Decimal

from keybrake._common import MICROS_PER_USD, format_usd
from keybrake.server.dashboard.data import SpendChart
from keybrake.server.dashboard.markup import Markup, join, render

__all__ = ["spend_svg"]

WIDTH, HEIGHT = 760, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 12, 40
#: Colours by vendor (the order is fixed so a vendor keeps its colour); others take the rest.
_COLOURS = {"stripe": "#635bff", "twilio": "#f22f46", "resend": "#0a7d5a"}
_SPARE = ("#d97706", "#0284c7", "#7c3aed", "#4b5563")


def colour(vendor: str, vendors: list[str]) -> str:
    if vendor in _COLOURS:
        return _COLOURS[vendor]
    others = [v for v in vendors if v not in _COLOURS]
    return _SPARE[others.index(vendor) % len(_SPARE)] if vendor in others else _SPARE[0]


def _nice_ceiling(micros: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten, in micro-dollars, at least ``micros``
    (one cent at least)."""
    step = Decimal("0.01") * MICROS_PER_USD
    while True:
        for factor in (1, 2, 5):
            if step * factor >= micros:
                return int(step * factor)
        step *= 10


def _usd(micros: int) -> str:
    return "$" + format_usd(micros)


def spend_svg(chart: SpendChart) -> Markup:
    """The chart as an ``<svg>`` element (drawn with attributes only: no inline style)."""
    vendors = chart.vendors
    top = _nice_ceiling(max((chart.day_total(d) for d in chart.days), default=0))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    slot = plot_w / len(chart.days)
    parts: list[Markup] = []
    for fraction in (0, 0.5, 1):
        y = _TOP + plot_h * (1 - fraction)
        parts.append(
            render(
                '<line class="grid" x1="{x1}" x2="{x2}" y1="{y}" y2="{y}"/>'
                '<text class="axis" x="{tx}" y="{ty}" text-anchor="end">{label}</text>',
                x1=_LEFT,
                x2=WIDTH - _RIGHT,
                y=f"{y:.1f}",
                tx=_LEFT - 6,
                ty=f"{y + 4:.1f}",
                label=_usd(int(top * fraction)),
            )
        )
    for i, day in enumerate(chart.days):
        x = _LEFT + i * slot + slot * 0.15
        y = _TOP + plot_h
        for vendor in vendors:
            amount = chart.spent.get((day, vendor), 0)
            if not amount:
                continue
            h = plot_h * amount / top
            y -= h
            parts.append(
                render(
                    '<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}">'
                    "<title>{title}</title></rect>",
                    x=f"{x:.1f}",
                    y=f"{y:.1f}",
                    w=f"{slot * 0.7:.1f}",
                    h=f"{h:.1f}",
                    fill=colour(vendor, vendors),
                    title=f"{day} {vendor}: {_usd(amount)}",
                )
            )
        if (len(chart.days) - 1 - i) % 2 == 0:  # every other day, today included
            parts.append(
                render(
                    '<text class="axis" x="{x}" y="{y}" text-anchor="middle">{day}</text>',
                    x=f"{_LEFT + (i + 0.5) * slot:.1f}",
                    y=HEIGHT - _BOTTOM + 16,
                    day=day[5:],
                )
            )
    legend_x = _LEFT
    for vendor in vendors:
        parts.append(
            render(
                '<rect x="{x}" y="{y}" width="10" height="10" fill="{fill}"/>'
                '<text class="legend" x="{tx}" y="{ty}">{text}</text>',
                x=legend_x,
                y=HEIGHT - 14,
                fill=colour(vendor, vendors),
                tx=legend_x + 14,
                ty=HEIGHT - 5,
                text=f"{vendor} {_usd(chart.vendor_total(vendor))}",
            )
        )
        legend_x += 170
    if not vendors:
        parts.append(
            render(
                '<text class="legend" x="{x}" y="{y}">No spend in these {n} days.</text>',
                x=_LEFT,
                y=HEIGHT - 5,
                n=len(chart.days),
            )
        )
    return render(
        '<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img"'
        ' aria-label="Spend per day and vendor, last {n} days">{body}</svg>',
        w=WIDTH,
        h=HEIGHT,
        n=len(chart.days),
        body=join(parts),
    )
