"""The keybrake server: issuance API, enforcing proxy and stores (``pip install keybrake[server]``).

Nothing here imports the SDK client; both sides share only :mod:`keybrake._common`.
"""

from keybrake.server.app import create_app
from keybrake.server.config import ServerConfig
from keybrake.server.runner import running_server

__all__ = ["ServerConfig", "create_app", "running_server"]
