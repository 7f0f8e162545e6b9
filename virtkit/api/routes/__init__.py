"""The API's routers, one module per resource; app.py includes them all."""

from __future__ import annotations

from fastapi import APIRouter

from virtkit.api.routes.events import router as events
from virtkit.api.routes.host import router as host
from virtkit.api.routes.instances import router as instances
from virtkit.api.routes.operations import router as operations
from virtkit.api.routes.tokens import router as tokens

ROUTERS: list[APIRouter] = [host, instances, operations, tokens, events]
