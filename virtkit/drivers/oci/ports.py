"""A container's NICs on the host: one veth pair per NIC, the host end enslaved to its network's
bridge, the other moved into the container's network namespace (as eth0, eth1, ...) after the
runtime created the container and before its init runs, so its DHCP client finds them at boot.
The pair goes with the namespace when the container stops; `remove` deletes what a crash left.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from virtkit.drivers.base import Plugged
from virtkit.drivers.oci.spec import ContainerSpec


def plugger(spec: ContainerSpec, plugged: Plugged) -> Callable[[int], None] | None:
    """What `monitor.launch` calls with the created container's PID: its veths, then `plugged`."""
    if not spec.nics and plugged is None:
        return None

    def plug(pid: int) -> None:
        from virtkit.network import links

        made: list[str] = []
        try:
            for nic in spec.nics:
                links.delete(nic.device)  # left by a container killed with the host's virtkit
                links.create_veth(nic.device, bridge=nic.bridge, pid=pid, inner=nic.inner, mac=nic.mac)
                made.append(nic.device)
            if plugged is not None:
                plugged()
        except BaseException:
            for device in made:
                with contextlib.suppress(Exception):
                    links.delete(device)
            raise

    return plug
