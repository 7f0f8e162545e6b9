"""The API's routers, one module per resource; app.py includes them all."""

from __future__ import annotations

from fastapi import APIRouter

from virtkit.api.routes.backups import router as backups
from virtkit.api.routes.console import router as console
from virtkit.api.routes.copies import router as copies
from virtkit.api.routes.events import router as events
from virtkit.api.routes.exec import router as exec_stream
from virtkit.api.routes.host import router as host
from virtkit.api.routes.images import router as images
from virtkit.api.routes.instances import router as instances
from virtkit.api.routes.metrics import router as metrics
from virtkit.api.routes.migrations import router as migrations
from virtkit.api.routes.networks import router as networks
from virtkit.api.routes.operations import router as operations
from virtkit.api.routes.snapshots import router as snapshots
from virtkit.api.routes.storage import router as storage
from virtkit.api.routes.tokens import router as tokens

# snapshots, copies, backups before instances: its POST /1.0/instances/{name}/{action} would take their paths
ROUTERS: list[APIRouter] = [
    host, snapshots, copies, backups, console, exec_stream, instances, operations, tokens, events, metrics,
    images, networks, storage, migrations,
]  # fmt: skip
