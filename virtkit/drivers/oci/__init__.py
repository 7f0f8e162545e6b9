"""The container driver: OCI bundles run by runc, each container monitored by its own conmon.

Modules: spec (ContainerSpec), plan (record + image -> ContainerSpec), bundle (ContainerSpec ->
config.json, pure), seccomp (the default profile), rootfs (overlayfs), idmap (each container's
host ids), idmount (idmapped mounts), runtime (runc), monitor (conmon), driver (OciDriver, the
Driver contract).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtkit.drivers.oci.driver import OciDriver
    from virtkit.drivers.oci.spec import ContainerSpec, IdMap

# Imported on first use: `virtkit run` needs plan/bundle/runtime, not the driver and its pydantic.
_EXPORTS = {"OciDriver": "driver", "ContainerSpec": "spec", "IdMap": "spec"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

__all__ = ["ContainerSpec", "IdMap", "OciDriver"]
