"""The vocabulary of `virtkit host check`: one `Check` per fact, the `Verdict`, and the `Report`.

A check says one thing about the host with a status:

- ``PASS``  it works;
- ``WARN``  missing or degraded: virtkit works around it, or only some features are lost;
- ``FAIL``  broken: the feature it backs cannot work (the exit code counts it only when `required`);
- ``INFO``  a fact, with no judgment.

Every WARN and FAIL carries a remedy (enforced here, so no check can leave an admin without one).
`Report.to_dict()` is the stable ``--json`` document: its keys never change meaning; new keys may appear.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

JsonValue: TypeAlias = str | int | float | bool | Sequence["JsonValue"] | Mapping[str, "JsonValue"] | None

SCHEMA_VERSION = 1

# Dotted, lowercase, stable: "cpu.virt-flags", "tools.qemu-system-x86_64". Scripts key on them.
_ID_RE = re.compile(r"[a-z][a-z0-9]*(\.[a-z0-9][a-z0-9_-]*)+")


class Status(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    INFO = "INFO"


class VmSupport(StrEnum):
    HARDWARE = "hardware-accelerated"
    EMULATED = "emulated"
    UNAVAILABLE = "unavailable"


class ContainerSupport(StrEnum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"


class KvmFunctional(StrEnum):
    """Whether a real guest was booted under KVM to prove acceleration works."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_RUN = "not-run"


def plain(value: JsonValue) -> JsonValue:
    """A deep copy made only of dict, list and scalars, so json.dumps and equality behave."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Check:
    """One fact about the host. The group is the id's first component ("kvm.api" is in "kvm")."""

    id: str
    status: Status
    summary: str
    remedy: str | None = None
    required: bool = False
    details: Mapping[str, JsonValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _ID_RE.fullmatch(self.id):
            raise ValueError(f"check id {self.id!r} is not dotted lowercase")
        if self.status in (Status.WARN, Status.FAIL) and not self.remedy:
            raise ValueError(f"check {self.id} is {self.status} without a remedy")

    @property
    def group(self) -> str:
        return self.id.split(".", 1)[0]

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "id": self.id,
            "group": self.group,
            "status": str(self.status),
            "summary": self.summary,
            "remedy": self.remedy,
            "required": self.required,
            "details": plain(self.details),
        }


@dataclass(frozen=True)
class Verdict:
    """What this host can run, each with its reason."""

    vms: VmSupport
    vms_reason: str
    kvm_functional: KvmFunctional
    containers: ContainerSupport
    containers_reason: str
    oci_runtime: str | None = None

    @property
    def vms_label(self) -> str:
        if self.vms is VmSupport.HARDWARE and self.kvm_functional is not KvmFunctional.PASSED:
            return "hardware-accelerated (possible, unverified)"
        if self.vms is VmSupport.EMULATED:
            return "emulated (TCG)"
        return str(self.vms)

    @property
    def containers_label(self) -> str:
        return "available" if self.containers is ContainerSupport.AVAILABLE else "not available"

    def summary_line(self) -> str:
        """The one line an admin reads first, e.g. "VMs: emulated (TCG) (…); containers: available (…)"."""
        return (
            f"VMs: {self.vms_label} ({self.vms_reason}); "
            f"containers: {self.containers_label} ({self.containers_reason})"
        )

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "vms": str(self.vms),
            "vms_reason": self.vms_reason,
            "kvm_functional": str(self.kvm_functional),
            "containers": str(self.containers),
            "containers_reason": self.containers_reason,
            "oci_runtime": self.oci_runtime,
            "summary": self.summary_line(),
        }


@dataclass(frozen=True)
class HostInfo:
    """Identity of the host, shown above the checks."""

    arch: str
    kernel: str
    os: str
    cpu_vendor: str
    cpu_model: str
    cpus: int
    hypervisor: bool
    virtualization: str | None  # "vmx", "svm" or None: the CPU's hardware virtualization extension
    slat: str | None  # "ept", "npt" or None: second-level address translation

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "arch": self.arch,
            "kernel": self.kernel,
            "os": self.os,
            "cpu_vendor": self.cpu_vendor,
            "cpu_model": self.cpu_model,
            "cpus": self.cpus,
            "hypervisor": self.hypervisor,
            "virtualization": self.virtualization,
            "slat": self.slat,
        }


@dataclass(frozen=True)
class Report:
    """Everything `virtkit host check` found; `exit_code` follows the rule in `virtkit.host.verdict`."""

    host: HostInfo
    checks: tuple[Check, ...]
    verdict: Verdict
    exit_code: int

    def check(self, check_id: str) -> Check:
        """The check with this id; KeyError when the report has none."""
        for check in self.checks:
            if check.id == check_id:
                return check
        raise KeyError(check_id)

    def ids(self) -> list[str]:
        return [check.id for check in self.checks]

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "schema": SCHEMA_VERSION,
            "host": self.host.to_dict(),
            "checks": [check.to_dict() for check in self.checks],
            "verdict": self.verdict.to_dict(),
            "exit_code": self.exit_code,
        }
