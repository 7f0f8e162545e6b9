"""A container's NICs on the host: one veth pair per NIC, the host end enslaved to its network's
bridge, the other moved into the container's network namespace (as eth0, eth1, ...) after the
runtime created the container and before its init runs, so its DHCP client finds them at boot.
The pair goes with the namespace when the container stops; what a crash left is deleted by
drivers/nics.py. A NIC plugged into a running container (`plug`) gets its address from the host,
as its DHCP client ran at boot only; its routes and DNS come with its next start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from virtkit.drivers.base import Plugged
from virtkit.drivers.oci.spec import ContainerSpec
from virtkit.errors import ToolError
from virtkit.model import Nic


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


def plug(pid: int, nic: Nic, bridge: str) -> None:
    """A veth into the running container whose init is `pid`, addressed and up."""
    import ipaddress
    import json
    import subprocess

    from virtkit.network import links

    shown = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", bridge], capture_output=True, text=True)
    try:
        prefix = int(json.loads(shown.stdout)[0]["addr_info"][0]["prefixlen"])
    except (ValueError, LookupError) as exc:
        raise ToolError(f"cannot read the subnet of bridge {bridge}", stderr=shown.stderr) from exc
    address = ipaddress.IPv4Interface(f"{nic.ip}/{prefix}")
    links.create_veth(nic.device, bridge=bridge, pid=pid, inner=nic.inner, mac=nic.mac)
    try:
        for argv in (
            ["ip", "addr", "add", str(address), "dev", nic.inner],
            ["ip", "link", "set", nic.inner, "up"],
        ):
            done = subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True)
            if done.returncode != 0:
                raise ToolError(f"cannot configure {nic.inner} in the container: {done.stderr.strip()}",
                                argv=argv, returncode=done.returncode, stderr=done.stderr)  # fmt: skip
    except BaseException:
        links.delete(nic.device)
        raise
