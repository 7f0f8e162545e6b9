"""`virtkit host check` of a remote server: its Report rebuilt from `GET /1.0/host/check`
(api/routes/host.py), which checks with the server's default free-space threshold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtkit.api.client import Client
    from virtkit.host import Report

HOST_CHECK_TIMEOUT = 300.0  # the first check of a boot boots a guest under KVM and runs a test container


def report_of(document: Mapping[str, Any]) -> Report:
    """A host check Report rebuilt from its `to_dict()`."""
    from virtkit.host.checks import (
        Check,
        ContainerSupport,
        HostInfo,
        KvmFunctional,
        Report,
        Status,
        Verdict,
        VmSupport,
    )

    host = dict(document["host"])
    info = HostInfo(str(host["arch"]), str(host["kernel"]), str(host["os"]), str(host["cpu_vendor"]),
                    str(host["cpu_model"]), int(host["cpus"]), bool(host["hypervisor"]),
                    host.get("virtualization"), host.get("slat"))  # fmt: skip
    checks = tuple(
        Check(str(c["id"]), Status(c["status"]), str(c["summary"]), c.get("remedy"),
              bool(c.get("required")), dict(c.get("details") or {}))
        for c in document["checks"]
    )  # fmt: skip
    v = document["verdict"]
    verdict = Verdict(VmSupport(v["vms"]), str(v["vms_reason"]), KvmFunctional(v["kvm_functional"]),
                      ContainerSupport(v["containers"]), str(v["containers_reason"]), v.get("oci_runtime"))
    return Report(info, checks, verdict, int(document["exit_code"]))


class RemoteHost:
    """The host checks of a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def check(self) -> Report:
        return report_of(self.client.request("GET", "/1.0/host/check", timeout=HOST_CHECK_TIMEOUT))
