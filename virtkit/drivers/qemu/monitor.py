"""A small synchronous client of a VM's QMP socket, over the QEMU project's own `qemu.qmp`.

Each call opens a connection, negotiates (itself: see `_session`), runs its command (or the few
commands of one hot-plug step) and disconnects, inside its own event loop and under bounded
timeouts: nothing stays connected between calls, and a hung QEMU costs at most
`connect_timeout + timeout` seconds a command (plus the stated wait of `device_del`). QMP
failures come out as virtkit errors: an unreachable socket as StateError (the VM is not running,
or its QEMU does not answer), a refused command or an overrun as ToolError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    QMPError,
)
from qemu.qmp.qmp_client import GreetingError

from virtkit.errors import StateError, ToolError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
_DISCONNECT_TIMEOUT = 2.0
PERIPHERALS = "/machine/peripheral"  # where QOM lists the devices that have an id
UNPLUG_POLL = 0.5  # seconds between looks for a device being unplugged, besides its event
JOB_POLL = 0.5  # seconds between looks at a job (query-jobs), besides its JOB_STATUS_CHANGE events
# QEMU's refusal of a second device_del while the guest has not yet answered the first
_UNPLUG_PENDING = "process of unplug"

T = TypeVar("T")
Execute = Callable[[str, Mapping[str, object] | None], Awaitable[object]]

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
        return _run(self._execute(command, arguments))

    async def _execute(
        self, command: str, arguments: Mapping[str, object] | None, *, missing_ok: bool = False,
        hangup_ok: bool = False,
    ) -> object:
        async with self._session() as client:
            return await self._command(client, command, arguments, missing_ok=missing_ok, hangup_ok=hangup_ok)

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[QMPClient]:
        """A negotiated connection for the body of the block (several commands, events, descriptors)."""
        if not self.path.is_socket():
            raise StateError(
                f"{self.name} has no QEMU monitor socket at {self.path}",
                hint="is the VM running? `virtkit list` shows its state",
            )
        try:
            client = await asyncio.wait_for(self._open(), self.connect_timeout)
        except (QMPError, OSError, EOFError, TimeoutError) as exc:
            raise StateError(
                f"the QEMU monitor of {self.name} does not answer at {self.path}: {_why(exc)}",
                hint="is the VM running? `virtkit list` shows its state",
            ) from None
        try:
            yield client
        finally:
            await self._close(client)

    async def _open(self) -> QMPClient:
        """A negotiated client. A first message that is not QEMU's greeting gets one fresh
        connection. The suite saw it once, on the first connection after a client was killed in the
        middle of a live move: most likely output of that client's session, which QEMU sent on to
        the next client before its greeting."""
        try:
            return await self._client()
        except ConnectError as exc:
            if not isinstance(exc.exc, GreetingError):
                raise
            log.warning("%s: QMP: %s; connecting again", self.name, _why(exc))
        return await self._client()

    async def _client(self) -> QMPClient:
        client = QMPClient(self.name)
        # qemu.qmp's own negotiation takes the first message after qmp_capabilities for its
        # answer, but QEMU can send an event first (a block job's, during a mirror); negotiated
        # here, the answer is matched by its id and events are set aside.
        client.negotiate = False
        try:
            await self._negotiated(client)
        except BaseException:
            await self._close(client)
            raise
        return client

    async def _negotiated(self, client: QMPClient) -> None:
        try:
            await client.connect(str(self.path))
        except AssertionError:  # qemu.qmp asserts it is connected: QEMU hung up after its greeting
            raise EOFError("QEMU hung up after its greeting") from None
        await client.execute("qmp_capabilities")

    async def _command(
        self, client: QMPClient, command: str, arguments: Mapping[str, object] | None = None, *,
        missing_ok: bool = False, hangup_ok: bool = False,
    ) -> object:
        """One command on an open session. With `missing_ok`, QEMU saying that the object named is
        not there (error class DeviceNotFound) is success; with `hangup_ok`, QEMU hanging up is."""
        log.debug("%s: QMP %s %s", self.name, command, arguments or "")
        try:
            return await asyncio.wait_for(client.execute(command, arguments), self.timeout)
        except ExecInterruptedError:
            if hangup_ok:
                return None
            raise ToolError(f"QEMU hung up on {command} for {self.name}") from None
        except ExecuteError as exc:
            if missing_ok and exc.error_class == "DeviceNotFound":
                return None
            raise ToolError(f"QEMU refused {command} for {self.name}: {exc}") from None
        except TimeoutError:
            late = f"QEMU did not answer {command} for {self.name} within {self.timeout:g} s"
            raise ToolError(late) from None
        except QMPError as exc:
            raise ToolError(f"QMP {command} for {self.name} failed: {_why(exc)}") from None

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

    # --- NICs plugged while the VM runs -------------------------------------------------------

    def add_tap(self, netdev: str, fd: int) -> None:
        """A tap netdev `netdev` on the open tap descriptor `fd`: a copy goes to QEMU over the
        socket (SCM_RIGHTS), `getfd` names it `netdev`, and `netdev_add` takes it (QEMU's user need
        not open /dev/net/tun). The caller still closes its own copy. A failure leaves no named
        descriptor in QEMU (nor a netdev, unless QEMU made it and then failed to answer)."""
        _run(self._add_tap(netdev, fd))

    async def _add_tap(self, netdev: str, fd: int) -> None:
        async with self._session() as client:
            try:
                client.send_fd_scm(fd)
            except (QMPError, OSError) as exc:
                why = _why(exc)
                raise ToolError(f"cannot pass a tap descriptor to the QEMU of {self.name}: {why}") from None
            await self._command(client, "getfd", {"fdname": netdev})
            try:
                await self._command(client, "netdev_add", {"type": "tap", "id": netdev, "fd": netdev})
            except BaseException:
                with contextlib.suppress(ToolError):  # taken already if netdev_add got that far
                    await self._command(client, "closefd", {"fdname": netdev})
                raise

    def netdev_del(self, netdev: str) -> None:
        """Remove netdev `netdev`; one that is not there is fine."""
        _run(self._execute("netdev_del", {"id": netdev}, missing_ok=True))

    def device_add(self, driver: str, device: str, **properties: object) -> None:
        """Plug a device (`device` is its id) into the running machine."""
        self.execute("device_add", {"driver": driver, "id": device, **properties})

    def peripherals(self) -> list[str]:
        """The ids of the devices that have one (`-device ...,id=`, `device_add`), sorted."""
        return _peripherals(self.name, self.execute("qom-list", {"path": PERIPHERALS}))

    def device_del(self, device: str, wait: float) -> bool:
        """Ask for device `device` to be unplugged and wait up to `wait` seconds for it to go (the
        guest must let it go first): QEMU's DEVICE_DELETED event, or the device no longer among the
        peripherals (it went between two connections). Whether it went; one not there is gone.
        Asking again while the guest has not answered a first request just waits again."""
        return _run(self._device_del(device, wait))

    async def _device_del(self, device: str, wait: float) -> bool:
        def deleted(event: Message) -> bool:
            data = event.get("data")
            return isinstance(data, Mapping) and data.get("device") == device

        async with self._session() as client:
            listener = EventListener("DEVICE_DELETED", deleted)
            with client.listen(listener):
                try:
                    await self._command(client, "device_del", {"id": device}, missing_ok=True)
                except ToolError as exc:
                    if _UNPLUG_PENDING not in str(exc):
                        raise
                deadline = time.monotonic() + wait
                while True:
                    listed = await self._command(client, "qom-list", {"path": PERIPHERALS})
                    if device not in _peripherals(self.name, listed):
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(listener.get(), min(left, UNPLUG_POLL))
                        return True

    # --- block volumes plugged while the VM runs (volumeplug.py) ---------------------------------

    def add_volume(
        self, fd: int, opaque: str, group: Mapping[str, object] | None,
        nodes: list[dict[str, object]], device: Mapping[str, object],
    ) -> int:
        """Hand QEMU the open volume `fd` in a new fd set (tagged `opaque`), then add the throttle
        `group` object, the block `nodes` (bottom up, the file node on /dev/fdset/ID: the set's id
        is filled in) and the `device`; the fd set's id. One session: QEMU drops an fd set nothing
        uses when its last monitor connection closes. Each step is undone if a later one fails."""
        return _run(self._add_volume(fd, opaque, group, nodes, device))

    async def _add_volume(
        self, fd: int, opaque: str, group: Mapping[str, object] | None,
        nodes: list[dict[str, object]], device: Mapping[str, object],
    ) -> int:
        async with self._session() as client:
            try:
                client.send_fd_scm(fd)
            except (QMPError, OSError) as exc:
                raise ToolError(f"cannot pass a volume to the QEMU of {self.name}: {_why(exc)}") from None
            added = await self._command(client, "add-fd", {"opaque": opaque})
            fdset = added.get("fdset-id") if isinstance(added, dict) else None
            if not isinstance(fdset, int):
                raise ToolError(f"unexpected answer to add-fd from {self.name}: {added!r}")
            undo: list[tuple[str, dict[str, object]]] = [("remove-fd", {"fdset-id": fdset})]
            try:
                if group is not None:
                    await self._command(client, "object-add", group)
                    undo.append(("object-del", {"id": group["id"]}))
                for node in nodes:
                    if node.get("driver") == "file":
                        node = {**node, "filename": f"/dev/fdset/{fdset}"}
                    await self._command(client, "blockdev-add", node)
                    undo.append(("blockdev-del", {"node-name": node["node-name"]}))
                await self._command(client, "device_add", device)
            except BaseException:
                for command, arguments in reversed(undo):
                    with contextlib.suppress(ToolError):
                        await self._command(client, command, arguments)
                raise
            return fdset

    def remove_volume(self, nodes: list[str], group: str, opaque: str) -> list[str]:
        """Once its device is gone: delete those of the block `nodes` QEMU has (top first), the
        throttle `group` if there, and the fd sets tagged `opaque`. What could not be removed."""
        return _run(self._remove_volume(nodes, group, opaque))

    async def _remove_volume(self, nodes: list[str], group: str, opaque: str) -> list[str]:
        async with self._session() as client:
            listed = await self._command(client, "query-named-block-nodes", {"flat": True})
            present = _node_names(self.name, listed)
            objects = _peripherals(self.name, await self._command(client, "qom-list", {"path": "/objects"}))
            steps: list[tuple[str, dict[str, object]]] = [
                ("blockdev-del", {"node-name": node}) for node in nodes if node in present
            ]
            if group in objects:
                steps.append(("object-del", {"id": group}))
            fdsets = await self._command(client, "query-fdsets")
            for fdset in fdsets if isinstance(fdsets, list) else []:
                if any(fd.get("opaque") == opaque for fd in fdset.get("fds", [])):
                    steps.append(("remove-fd", {"fdset-id": fdset["fdset-id"]}))
            left = []
            for command, arguments in steps:
                try:
                    await self._command(client, command, arguments)
                except ToolError as exc:
                    log.warning("%s: %s", self.name, exc)
                    left.append(str(next(iter(arguments.values()))))
            return left

    # --- several commands on one connection ---------------------------------------------------

    def in_session(self, work: Callable[[Execute], Awaitable[T]]) -> T:
        """Run `work` on one negotiated connection: it gets `execute(command, arguments)`, a
        coroutine function with `execute`'s errors. For steps where each reconnection's few
        milliseconds count (a live migration's switchover)."""

        async def session() -> T:
            async with self._session() as client:

                async def execute(command: str, arguments: Mapping[str, object] | None = None) -> object:
                    return await self._command(client, command, arguments)

                return await work(execute)

        return _run(session())

    # --- jobs (snapshot-save, snapshot-load, snapshot-delete) -----------------------------------

    def run_job(self, command: str, arguments: Mapping[str, object], timeout: float) -> None:
        """Run the job command `command` (its `arguments` name the `job-id`, unique to this call) and
        wait up to `timeout` seconds for the job to conclude (its JOB_STATUS_CHANGE events, and
        query-jobs every JOB_POLL s in case one was missed), then dismiss it. ToolError with QEMU's
        own reason when the job failed; when it did not conclude in time it is cancelled (and
        dismissed, if it concludes at once)."""
        _run(self._run_job(command, arguments, timeout))

    async def _run_job(self, command: str, arguments: Mapping[str, object], timeout: float) -> None:
        job = str(arguments["job-id"])

        def mine(event: Message) -> bool:
            data = event.get("data")
            return isinstance(data, Mapping) and data.get("id") == job

        async with self._session() as client:
            listener = EventListener("JOB_STATUS_CHANGE", mine)
            with client.listen(listener):
                await self._command(client, command, arguments)
                deadline = time.monotonic() + timeout
                while (info := await self._job(client, job)).get("status") != "concluded":
                    left = deadline - time.monotonic()
                    if left <= 0:
                        with contextlib.suppress(ToolError):
                            await self._command(client, "job-cancel", {"id": job})
                            await self._command(client, "job-dismiss", {"id": job})
                        raise ToolError(f"QEMU did not finish {command} for {self.name} within {timeout:g} s")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(listener.get(), min(left, JOB_POLL))
                await self._command(client, "job-dismiss", {"id": job})
        if info.get("error"):
            raise ToolError(f"QEMU could not {command} for {self.name}: {info['error']}")

    async def _job(self, client: QMPClient, job: str) -> dict[str, Any]:
        """What query-jobs says of job `job`; ToolError if QEMU does not list it."""
        listed = await self._command(client, "query-jobs")
        for entry in listed if isinstance(listed, list) else []:
            if isinstance(entry, dict) and entry.get("id") == job:
                return entry
        raise ToolError(f"QEMU lost track of its {job} job for {self.name}: query-jobs gave {listed!r}")

    def block_nodes(self) -> list[str]:
        """The names of the block nodes QEMU has, sorted."""
        return _node_names(self.name, self.execute("query-named-block-nodes", {"flat": True}))

    def quit(self) -> None:
        """Make QEMU exit at once (cleanly: it removes its pidfile); QEMU hanging up is success."""
        _run(self._execute("quit", None, hangup_ok=True))


def _node_names(name: str, listed: object) -> list[str]:
    if not isinstance(listed, list):
        raise ToolError(f"unexpected answer to query-named-block-nodes from {name}: {listed!r}")
    return sorted(str(n["node-name"]) for n in listed if isinstance(n, dict) and "node-name" in n)


def _peripherals(name: str, listed: object) -> list[str]:
    if not isinstance(listed, list):
        raise ToolError(f"unexpected answer to qom-list {PERIPHERALS} from {name}: {listed!r}")
    return sorted(
        str(entry["name"])
        for entry in listed
        if isinstance(entry, dict) and str(entry.get("type", "")).startswith("child<") and "name" in entry
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
