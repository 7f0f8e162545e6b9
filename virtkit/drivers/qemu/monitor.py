"""A small synchronous client of a VM's QMP socket, over the QEMU project's own `qemu.qmp`.

Each call opens a connection, negotiates, runs one command and disconnects, inside its own event
loop and under bounded timeouts: nothing stays connected between calls, and a hung QEMU costs at
most `connect_timeout + timeout` seconds. QMP failures come out as virtkit errors: an unreachable
socket as StateError (the VM is not running, or its QEMU does not answer), a refused command or
an overrun as ToolError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError

from virtkit.errors import StateError, ToolError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
_DISCONNECT_TIMEOUT = 2.0

T = TypeVar("T")

# qemu.qmp logs every refused connection at ERROR level; virtkit turns those into its own errors,
# so the library stays quiet unless someone configured its logger explicitly.
if logging.getLogger("qemu.qmp").level == logging.NOTSET:
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to completion from synchronous code, even when this thread runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class Monitor:
    """The QMP monitor of one VM, at `path`."""

    def __init__(
        self,
        path: Path,
        *,
        name: str = "vm",
        connect_timeout: float = CONNECT_TIMEOUT,
        timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        self.path = path
        self.name = name
        self.connect_timeout = connect_timeout
        self.timeout = timeout

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        """Run one QMP command and return its value."""
        log.debug("%s: QMP %s %s", self.name, command, arguments or "")
        return _run(self._execute(command, arguments))

    async def _execute(
        self, command: str, arguments: Mapping[str, object] | None, *, hangup_ok: bool = False
    ) -> object:
        if not self.path.is_socket():
            raise StateError(
                f"{self.name} has no QEMU monitor socket at {self.path}",
                hint="is the VM running? `virtkit list` shows its state",
            )
        client = QMPClient(self.name)
        try:
            await asyncio.wait_for(client.connect(str(self.path)), self.connect_timeout)
        except (ConnectError, OSError, TimeoutError) as exc:
            await self._close(client)
            raise StateError(
                f"the QEMU monitor of {self.name} does not answer at {self.path}: {_why(exc)}",
                hint="is the VM running? `virtkit list` shows its state",
            ) from None
        try:
            return await asyncio.wait_for(client.execute(command, arguments), self.timeout)
        except ExecInterruptedError:
            if hangup_ok:
                return None
            raise ToolError(f"QEMU hung up on {command} for {self.name}") from None
        except ExecuteError as exc:
            raise ToolError(f"QEMU refused {command} for {self.name}: {exc}") from None
        except TimeoutError:
            late = f"QEMU did not answer {command} for {self.name} within {self.timeout:g} s"
            raise ToolError(late) from None
        except QMPError as exc:
            raise ToolError(f"QMP {command} for {self.name} failed: {_why(exc)}") from None
        finally:
            await self._close(client)

    @staticmethod
    async def _close(client: QMPClient) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), _DISCONNECT_TIMEOUT)
        except (QMPError, OSError, EOFError, TimeoutError) as exc:
            log.debug("QMP disconnect: %s", _why(exc))

    def query_status(self) -> str:
        """QEMU's run state: "running", "paused", "shutdown", "internal-error", ..."""
        result = self.execute("query-status")
        status = result.get("status") if isinstance(result, dict) else None
        if not isinstance(status, str):
            raise ToolError(f"unexpected answer to query-status from {self.name}: {result!r}")
        return status

    def stop(self) -> None:
        """Pause the vCPUs."""
        self.execute("stop")

    def cont(self) -> None:
        """Resume the vCPUs."""
        self.execute("cont")

    def system_powerdown(self) -> None:
        """Press the ACPI power button (the guest decides what to do)."""
        self.execute("system_powerdown")

    def balloon(self, size: int) -> None:
        """Ask the guest's balloon driver to leave it `size` bytes of RAM (it may take a moment)."""
        self.execute("balloon", {"value": size})

    def balloon_actual(self) -> int:
        """The RAM the guest has now, in bytes, as its balloon driver reports it."""
        result = self.execute("query-balloon")
        actual = result.get("actual") if isinstance(result, dict) else None
        if not isinstance(actual, int):
            raise ToolError(f"unexpected answer to query-balloon from {self.name}: {result!r}")
        return actual

    def set_throttle(self, group: str, iops: int | None, bps: int | None) -> None:
        """Change a throttle group's limits (0: unlimited; both are always set, or QEMU keeps the old)."""
        limits = {"iops-total": iops or 0, "bps-total": bps or 0}
        self.execute("qom-set", {"path": f"/objects/{group}", "property": "limits", "value": limits})

    def quit(self) -> None:
        """Make QEMU exit at once (cleanly: it removes its pidfile); QEMU hanging up is success."""
        log.debug("%s: QMP quit", self.name)
        _run(self._execute("quit", None, hangup_ok=True))


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
