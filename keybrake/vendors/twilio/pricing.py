"""What a Twilio request can cost.

Reads are free. Sending messages and placing calls is not priced yet, so every other request
is refused with 403 ``unpriced_endpoint``: the proxy fails closed rather than let a send
through that no cap can bound.
"""

from __future__ import annotations

from keybrake.vendors._pricing import PricingRefusal

__all__ = ["price_request"]


def price_request(
    method: str, segments: tuple[str, ...], query: str, content_type: str, body: bytes
) -> int:
    """The most a request can cost, in USD micro-dollars.

    Raises:
        PricingRefusal: 403 ``unpriced_endpoint`` for anything but a read.
    """
    if method in ("GET", "HEAD"):
        return 0
    raise PricingRefusal(
        403, "unpriced_endpoint", f"{method} /{'/'.join(segments)} has no Twilio price rule yet"
    )
