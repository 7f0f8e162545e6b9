"""A VM's NICs on the host: one persistent tap per NIC, owned by QEMU's unprivileged user,
enslaved to its network's bridge. Made before QEMU starts and opened by virtkit, which hands QEMU
the open descriptor (`-netdev tap,fd=N`, as libvirt does: QEMU's user need not be able to open
/dev/net/tun, and no script runs). Removed when the VM has stopped (a persistent tap outlives the
process that opened it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from virtkit.drivers.qemu.runas import RunAs
from virtkit.drivers.qemu.spec import VmSpec


@contextlib.contextmanager
def taps(spec: VmSpec, user: RunAs | None) -> Iterator[dict[str, int]]:
    """The spec's taps for the body of the block, as {device: open descriptor} (closed at its end);
    the taps are removed again if the body fails."""
    fds: dict[str, int] = {}
    if not spec.nics:
        yield fds
        return
    from virtkit.network import links

    made: list[str] = []
    try:
        for nic in spec.nics:
            links.delete(nic.device)  # left by a VM killed with the host's virtkit
            owner, group = (user.uid, user.gid) if user else (0, None)
            links.create_tap(nic.device, bridge=nic.bridge, owner=owner, group=group)
            made.append(nic.device)
            fds[nic.device] = links.open_tap(nic.device)
        yield fds
    except BaseException:
        for device in made:
            with contextlib.suppress(Exception):
                links.delete(device)
        raise
    finally:
        for fd in fds.values():
            os.close(fd)
