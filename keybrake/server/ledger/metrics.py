"""Prometheus metrics, in the text exposition format, kept in memory per process."""

from __future__ import annotations

import bisect
from collections import defaultdict

from keybrake._common import format_usd

__all__ = ["LATENCY_BUCKETS", "Metrics"]

#: Upper bounds (seconds) of the upstream latency histogram's buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(**labels: str) -> str:
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items()
    )
    return "{" + inner + "}"


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.spend_micros: dict[str, int] = defaultdict(int)
        self.latency_buckets: dict[str, list[int]] = defaultdict(
            lambda: [0] * (len(LATENCY_BUCKETS) + 1)
        )
        self.latency_sum: dict[str, float] = defaultdict(float)

    def decision(self, vendor: str, decision: str) -> None:
        self.requests[(vendor, decision)] += 1

    def spend(self, vendor: str, micros: int) -> None:
        self.spend_micros[vendor] += micros

    def upstream_latency(self, vendor: str, seconds: float) -> None:
        self.latency_buckets[vendor][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[vendor] += seconds

    def render(self, *, active_keys: int, unconfirmed_today: int = 0) -> str:
        lines = [
            "# HELP keybrake_proxy_requests_total Proxy requests by vendor and decision.",
            "# TYPE keybrake_proxy_requests_total counter",
        ]
        for (vendor, decision), count in sorted(self.requests.items()):
            lines.append(
                f"keybrake_proxy_requests_total{_labels(vendor=vendor, decision=decision)} {count}"
            )
        lines += [
            "# HELP keybrake_spend_usd_total Spend settled through the proxy, in USD.",
            "# TYPE keybrake_spend_usd_total counter",
        ]
        for vendor, micros in sorted(self.spend_micros.items()):
            lines.append(f"keybrake_spend_usd_total{_labels(vendor=vendor)} {micros / 1e6:.6f}")
        lines += [
            "# HELP keybrake_upstream_latency_seconds Time the vendor took to answer.",
            "# TYPE keybrake_upstream_latency_seconds histogram",
        ]
        for vendor, counts in sorted(self.latency_buckets.items()):
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(
                    f"keybrake_upstream_latency_seconds_bucket{_labels(vendor=vendor, le=le)}"
                    f" {cumulative}"
                )
            lines.append(
                f"keybrake_upstream_latency_seconds_sum{_labels(vendor=vendor)}"
                f" {self.latency_sum[vendor]:.6f}"
            )
            lines.append(
                f"keybrake_upstream_latency_seconds_count{_labels(vendor=vendor)} {cumulative}"
            )
        lines += [
            "# HELP keybrake_active_keys Vault keys neither expired nor revoked.",
            "# TYPE keybrake_active_keys gauge",
            f"keybrake_active_keys {active_keys}",
            "# HELP keybrake_unconfirmed_spend_usd Spend of the current UTC day counted at its"
            " bound because its request's outcome was lost (a crash before settling), in USD.",
            "# TYPE keybrake_unconfirmed_spend_usd gauge",
            f"keybrake_unconfirmed_spend_usd {format_usd(unconfirmed_today)}",
        ]
        return "\n".join(lines) + "\n"
