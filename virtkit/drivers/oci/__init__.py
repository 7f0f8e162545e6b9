"""The container driver: OCI bundles run by runc, each container monitored by its own conmon.

Modules: spec (ContainerSpec), plan (record + image -> ContainerSpec), bundle (ContainerSpec ->
config.json, pure), seccomp (the default profile), rootfs (overlayfs), runtime (runc), monitor
(conmon), driver (OciDriver, the Driver contract).
"""

from virtkit.drivers.oci.driver import OciDriver
from virtkit.drivers.oci.spec import ContainerSpec, IdMap

__all__ = ["ContainerSpec", "IdMap", "OciDriver"]
