"""The REST API: server (app.py, routes/), its authentication (auth.py) and the Python client (client.py)."""

from __future__ import annotations

from virtkit.api.client import Client

__all__ = ["Client"]
