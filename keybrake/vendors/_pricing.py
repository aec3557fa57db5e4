"""Types shared by every vendor's pricing rules."""

from __future__ import annotations

__all__ = ["PricingRefusal"]


class PricingRefusal(Exception):
    """A request the proxy must refuse before forwarding, with the HTTP answer to give."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
