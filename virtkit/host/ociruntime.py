"""The OCI runtime containers run with, as `host check` reports it: the `containers.oci-runtime` line.

Having runc or crun installed says little: crun 1.8 refuses hybrid cgroup hosts where runc 1.1
works. The container driver decides by really running a tiny container with each candidate (crun
first, then runc; see `virtkit.drivers.oci.probe`) and keeps the verdict; this module holds that
verdict's shape and turns it into a check line, so the host layer reports it without importing
the drivers (the probe is a parameter of `run_checks`, like the functional KVM probe).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from virtkit.host.checks import Check, JsonValue, Status

log = logging.getLogger(__name__)

CHECK_ID = "containers.oci-runtime"


@dataclass(frozen=True)
class RuntimeTrial:
    """One runtime's test container: whether it ran, and if not the first line of what it said."""

    name: str  # "crun", "runc"
    path: str
    version: str | None
    ok: bool
    error: str = ""
    elapsed_s: float | None = None
    timed_out: bool = False

    @property
    def label(self) -> str:
        """Name and version, e.g. "crun 1.8.1" (the name alone when the version is unknown)."""
        return f"{self.name} {self.version}" if self.version else self.name

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "name": self.name,
            "path": self.path,
            "version": self.version,
            "ok": self.ok,
            "error": self.error,
            "elapsed_s": self.elapsed_s,
            "timed_out": self.timed_out,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeTrial:
        """The trial `to_dict` wrote; ValueError when `data` is not one."""
        name, path, version, ok = (data.get(k) for k in ("name", "path", "version", "ok"))
        error, elapsed, timed_out = data.get("error", ""), data.get("elapsed_s"), data.get("timed_out", False)
        if not (isinstance(name, str) and isinstance(path, str) and isinstance(ok, bool)):
            raise ValueError("a runtime trial needs a name, a path and ok")
        if not (version is None or isinstance(version, str)) or not isinstance(error, str):
            raise ValueError("a runtime trial's version and error are strings")
        if not (elapsed is None or isinstance(elapsed, int | float)) or isinstance(elapsed, bool):
            raise ValueError("a runtime trial's elapsed_s is a number")
        return cls(
            name, path, version, ok, error, None if elapsed is None else float(elapsed), bool(timed_out)
        )


@dataclass(frozen=True)
class OciRuntimeVerdict:
    """Which runtime won, from the trials in order of preference; `not_run` says why none was tried.

    No trials and no `not_run`: no OCI runtime is installed.
    """

    trials: tuple[RuntimeTrial, ...] = ()
    not_run: str = ""
    cached: bool = False
    probed_at: str | None = None

    @property
    def ran(self) -> bool:
        return not self.not_run

    @property
    def chosen(self) -> RuntimeTrial | None:
        return next((trial for trial in self.trials if trial.ok), None)

    @property
    def refused(self) -> tuple[RuntimeTrial, ...]:
        return tuple(trial for trial in self.trials if not trial.ok)

    def refusals(self) -> str:
        """Each refused runtime and why, e.g. "crun 1.8.1 refused: cgroups in hybrid mode not supported"."""
        return "; ".join(
            f"{trial.label} refused: {trial.error or 'no reason given'}" for trial in self.refused
        )

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "trials": [trial.to_dict() for trial in self.trials],
            "not_run": self.not_run,
            "cached": self.cached,
            "probed_at": self.probed_at,
        }


OciProbe = Callable[[], OciRuntimeVerdict]


def run_oci_probe(probe: OciProbe) -> OciRuntimeVerdict:
    """Run `probe`; a probe that crashes says so in the report, it never crashes the host check."""
    try:
        return probe()
    except Exception as exc:  # a hook as far as host check is concerned
        log.warning("OCI runtime probe crashed", exc_info=True)
        return OciRuntimeVerdict(not_run=f"the probe itself failed: {type(exc).__name__}: {exc}")


def oci_runtime_check(verdict: OciRuntimeVerdict | None) -> Check:
    """containers.oci-runtime: which runtime virtkit runs containers with, and why the others not."""
    details: dict[str, JsonValue] = verdict.to_dict() if verdict is not None else {"not_run": "not asked"}
    if verdict is None or not verdict.ran:
        why = verdict.not_run if verdict is not None else "no probe was given"
        return Check(CHECK_ID, Status.INFO, f"functional OCI runtime test not run: {why}", details=details)
    if not verdict.trials:
        return Check(
            CHECK_ID,
            Status.WARN,
            "no OCI runtime (runc or crun) is installed: containers cannot run",
            remedy="apt-get install runc (it works on cgroup v1, hybrid and v2)",
            details=details,
        )
    chosen = verdict.chosen
    if chosen is None:
        return Check(
            CHECK_ID,
            Status.FAIL,
            f"no OCI runtime could run a test container: {verdict.refusals()}",
            remedy="fix what the runtime says; runc works on cgroup v1, hybrid and v2 (apt-get install runc)",
            details=details,
        )
    took = f" in {chosen.elapsed_s:.2f}s" if chosen.elapsed_s is not None else ""
    summary = f"containers run with {chosen.label} ({chosen.path}): a test container ran{took}"
    if verdict.refused:
        summary += f"; {verdict.refusals()}"
    return Check(CHECK_ID, Status.PASS, summary, details=details)


IdmapProbe = Callable[[], tuple[bool, str]]
IDMAP_CHECK_ID = "containers.userns"


def idmap_check(probe: IdmapProbe | None) -> Check:
    """containers.userns: whether containers get their own user namespace and ids here, and how their
    root filesystem shows the image's files as theirs (drivers/oci/idmap.py probes it for real)."""
    if probe is None:
        return Check(IDMAP_CHECK_ID, Status.INFO, "user namespaces for containers not tested (no probe)")
    try:
        ok, detail = probe()
    except Exception as error:  # a probe's own failure is a finding, not a crash of the report
        ok, detail = False, f"the probe failed: {type(error).__name__}: {error}"
    if ok:
        return Check(IDMAP_CHECK_ID, Status.PASS, f"root in a container is not root on the host: {detail}")
    remedy = "see docs/containers.md (User namespace); containers still run, with a Note"
    return Check(IDMAP_CHECK_ID, Status.WARN, detail, remedy=remedy)
