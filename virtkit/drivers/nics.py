"""What both drivers do with an instance's host-side NIC devices once it has stopped: delete them."""

from __future__ import annotations

from virtkit.model import InstanceRecord


def remove_ports(record: InstanceRecord) -> None:
    """Delete the host-side devices of the record's NICs that are still there (missing is fine)."""
    if not record.nics:
        return
    from virtkit.network import links

    for nic in record.nics:
        links.delete(nic.device)
