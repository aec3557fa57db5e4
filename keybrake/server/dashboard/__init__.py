"""The operator's dashboard, ``GET /dashboard``: server-rendered HTML, a little JavaScript,
nothing loaded from anywhere but this server."""

from __future__ import annotations

from keybrake.server.dashboard.routes import DASHBOARD, Dashboard, add_routes

__all__ = ["DASHBOARD", "Dashboard", "add_routes"]
