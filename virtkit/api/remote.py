"""The lifecycle verbs, settings and operations of a remote server, shaped as the local ones.

`RemoteLifecycle` has the methods of `ops.lifecycle.Lifecycle` the CLI calls, with the same
signatures and return types (InstanceRecord, Runtime, InstanceView), so a command renders a
remote answer exactly as a local one and fails with the same VirtkitError (the client rebuilds
the server's). What needs this host's files (--iso, cloud-init files, a console, a terminal) is
refused with a clear error instead of silently meaning a file on the server.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from virtkit.errors import SpecError

if TYPE_CHECKING:
    from virtkit.api.client import Client
    from virtkit.drivers.base import Runtime
    from virtkit.drivers.console import Console
    from virtkit.model import InstanceRecord, OperationRecord, OperationStatus
    from virtkit.ops.lifecycle import InstanceView, Request

# Settings whose value is a file on the client's host: the server cannot read it.
LOCAL_FILES = {"iso": "--iso", "user_data": "--user-data", "ssh_keys": "--ssh-key"}
CONTAINER_EXEC_TIMEOUT = 86400.0  # the most the server's ExecBody takes
VIEW_KEYS = ("state", "pid", "reason", "live")  # what InstanceView.to_dict() adds to the record


def instance_body(request: Request, *, start: bool, wait: bool = False) -> dict[str, Any]:
    """The `POST /1.0/instances` body (api/schemas.py InstanceBody) of a CLI request."""
    from virtkit.network.shaping import format_rate

    config = dict(request.config or {})
    for key, option in LOCAL_FILES.items():
        if key in config:
            raise SpecError(
                f"{option} names a file on this host: it cannot be used through a remote",
                hint="create the instance on the server's host, or use --remote local",
            )
    nics = []
    for nic in request.nics:
        parts = [nic.network]
        parts += [f"ip={nic.ip}"] if nic.ip else []
        parts += [f"mac={nic.mac}"] if nic.mac else []
        parts += [f"limit={format_rate(nic.limit)}"] if nic.limit else []
        parts += [f"model={nic.model}"] if nic.model else []
        nics.append(",".join(parts))
    body: dict[str, Any] = {
        "image": request.image, "name": request.name, "cpus": request.cpus, "memory": request.memory,
        "config": config, "nics": nics, "allow_host": request.allow_host,
        "labels": dict(request.labels or {}), "start": start, "wait": wait,
        "publish": [f"{f.host_port}:{f.port}/{f.proto}" for f in request.publish],
    }  # fmt: skip
    if request.kind is not None:
        body["kind"] = request.kind.value
    if request.disk is not None:
        body["disk"] = request.disk
    if request.arch is not None:
        body["arch"] = request.arch
    return body


def record_of(document: Mapping[str, Any]) -> InstanceRecord:
    from virtkit.model import InstanceRecord

    return InstanceRecord.model_validate(document)


def view_of(document: Mapping[str, Any]) -> InstanceView:
    """An InstanceView rebuilt from its `to_dict()` (the record, with the live status added)."""
    from virtkit.drivers.base import Status
    from virtkit.model import InstanceState
    from virtkit.ops.lifecycle import InstanceView

    data = dict(document)
    live = {key: data.pop(key, None) for key in VIEW_KEYS}
    status = Status(InstanceState(live["state"]), live["pid"], live["reason"] or "", dict(live["live"] or {}))
    data["state"] = live["state"]
    return InstanceView(record_of(data), status)


def runtime_of(document: Mapping[str, Any]) -> Runtime:
    from virtkit.drivers.base import Runtime

    return Runtime.from_dict(dict(document))


class RemoteLifecycle:
    """`ops.lifecycle.Lifecycle` through a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # --- reading --------------------------------------------------------------------------------

    def view(self, name: str) -> InstanceView:
        return view_of(self.client.instance(name))

    def views(self) -> list[InstanceView]:
        return [view_of(document) for document in self.client.instances()]

    def runtime(self, name: str) -> Runtime:
        return runtime_of(self.client.runtime(name))

    # --- making ---------------------------------------------------------------------------------

    def create(self, request: Request) -> tuple[InstanceRecord, Runtime]:
        done = self.client.launch(instance_body(request, start=False))
        return record_of(done["instance"]), runtime_of(done["runtime"])

    def launch(self, request: Request, *, wait: bool = False) -> tuple[InstanceRecord, Runtime]:
        done = self.client.launch(instance_body(request, start=True, wait=wait))
        return record_of(done["instance"]), runtime_of(done["runtime"])

    def preview(self, request: Request) -> Runtime:
        _unsupported("--dry-run", "the server makes no preview")

    # --- acting ---------------------------------------------------------------------------------

    def start(self, name: str, *, wait: bool = False) -> InstanceRecord:
        return self._act(name, "start", wait=wait)

    def stop(self, name: str, *, force: bool = False, timeout: float = 30.0) -> InstanceRecord:
        return self._act(name, "stop", force=force, timeout=timeout)

    def restart(self, name: str, *, force: bool = False, wait: bool = False) -> InstanceRecord:
        return self._act(name, "restart", force=force, wait=wait)

    def pause(self, name: str) -> InstanceRecord:
        return self._act(name, "pause")

    def resume(self, name: str) -> InstanceRecord:
        return self._act(name, "resume")

    def delete(self, name: str, *, force: bool = False) -> InstanceRecord:
        return record_of(self.client.delete(name, force=force)["instance"])

    def _act(self, name: str, action: str, **options: Any) -> InstanceRecord:
        return record_of(self.client.action(name, action, **options)["instance"])

    def exec_attached(self, name: str, argv: list[str], *, tty: bool, timeout: float) -> int:
        """Run `argv` in the instance, its output written to ours as it comes; no input. `timeout`
        bounds a VM's command; a container's runs as long as the server allows (a day), as locally
        it runs as long as it runs."""
        if tty:
            _unsupported("exec --tty", "a remote command has no terminal")
        if self.client.instance(name).get("kind") == "container":
            timeout = CONTAINER_EXEC_TIMEOUT
        return self.client.exec_stream(name, argv, _write, timeout=timeout)

    def logs(self, name: str, *, follow: bool = False) -> Iterator[bytes]:
        _unsupported("logs", "the API has no console log route yet")

    def open_console(self, name: str) -> Console:
        _unsupported("console", "the API has no console route yet")


class RemoteSettings:
    """`ops.settings.Settings` through a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def set(self, name: str, assignments: Mapping[str, str]) -> tuple[InstanceRecord, bool]:
        done = self.client.set_config(name, dict(assignments))
        return record_of(done["instance"]), bool(done["applied_live"])


class RemoteOperations:
    """`ops.operations.list_operations` and `get_operation` through a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def list(self, status: OperationStatus | None = None) -> list[OperationRecord]:
        from virtkit.model import OperationRecord

        documents = self.client.operations(status.value if status is not None else None)
        return [OperationRecord.model_validate(document) for document in documents]

    def get(self, operation_id: str) -> OperationRecord:
        from urllib.parse import quote

        from virtkit.model import OperationRecord

        # Quoted: the server checks the id as `virtkit operation show` does here, and says the same.
        return OperationRecord.model_validate(self.client.operation(quote(operation_id, safe="")))


def _write(fd: int, data: bytes) -> None:
    """A remote command's output, passed through as the local driver passes its command's."""
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.flush()
    stream.buffer.write(data)
    stream.buffer.flush()


def _unsupported(what: str, why: str) -> NoReturn:
    raise SpecError(f"{what} does not work through a remote: {why}",
                    hint="run it on the server's host, or with --remote local there")  # fmt: skip
