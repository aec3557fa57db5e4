"""The outside services some tests need, as markers: ``postgres``, ``redis``, ``node`` and
``browser``.

pyproject.toml declares the markers, so
``pytest -m "not postgres and not redis and not node and not browser"`` runs what needs none
of them. Two things keep the marks honest:

* a test that uses one of :data:`FIXTURE_MARKERS` (``prism_url``, hence ``twilio_server``) gets
  its marker at collection, from ``pytest_collection_modifyitems`` in tests/conftest.py;
* the helpers that reach a service (tests/pg.py, Redis in tests/integrations/test_arq.py, the
  npm-installed Twilio spec) call :func:`require`, which fails a test that reaches the service
  without carrying its marker: a missing mark shows on the first run, with or without the
  service on the machine.
"""

from __future__ import annotations

import pytest

__all__ = ["FIXTURE_MARKERS", "require"]

#: A fixture, and the marker of every test that uses it (directly or through other fixtures).
FIXTURE_MARKERS = {"prism_url": "node", "browser": "browser"}

#: The test being run, set by ``pytest_runtest_protocol`` in tests/conftest.py.
current: pytest.Item | None = None


def require(marker: str) -> None:
    """Fail the running test unless it carries ``marker``: it is about to reach that service."""
    if current is not None and current.get_closest_marker(marker) is None:
        pytest.fail(
            f"{current.nodeid} needs {marker} but is not marked: mark the test, its module "
            f"(pytestmark) or its fixture's param with pytest.mark.{marker}",
            pytrace=False,
        )
