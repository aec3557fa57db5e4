"""Finding the installed vendors: the entry-point group ``keybrake.vendors``."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from keybrake.vendors._plugin import Vendor

__all__ = ["GROUP", "VendorLoadError", "get_vendor", "installed_vendors"]

#: The entry-point group a vendor package registers its :class:`Vendor` in.
GROUP = "keybrake.vendors"


class VendorLoadError(RuntimeError):
    """An installed vendor plugin can't be loaded, or is not what it says it is."""


@functools.cache
def installed_vendors() -> Mapping[str, Vendor[Any]]:
    """Every installed vendor, by name, loaded once per process.

    A plugin that fails to load is an error, never skipped: a server that silently lost a
    vendor would answer ``unknown_vendor`` instead of saying why.

    Raises:
        VendorLoadError: a plugin fails to import, is not a :class:`Vendor`, or is
            registered under another name than its own, or two share a name.
    """
    found: dict[str, Vendor[Any]] = {}
    for entry in entry_points(group=GROUP):
        try:
            vendor = entry.load()
        except Exception as exc:
            raise VendorLoadError(
                f"vendor plugin {entry.name!r} ({entry.value}) can't be loaded: {exc}"
            ) from exc
        if not isinstance(vendor, Vendor):
            raise VendorLoadError(
                f"vendor plugin {entry.name!r} ({entry.value}) is not a keybrake Vendor"
            )
        if vendor.name != entry.name:
            raise VendorLoadError(
                f"vendor plugin {entry.value} is registered as {entry.name!r}"
                f" but is named {vendor.name!r}"
            )
        if entry.name in found and found[entry.name] is not vendor:
            raise VendorLoadError(f"two vendor plugins are named {entry.name!r}")
        found[entry.name] = vendor
    return dict(sorted(found.items()))


def get_vendor(name: str) -> Vendor[Any] | None:
    """The installed vendor called ``name``, or None."""
    return installed_vendors().get(name)
