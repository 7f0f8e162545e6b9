"""api/remote.py and the client's stream parsing: what the CLI sends a server, and how its answers
become the local types again (same records, runtimes and views as the local ops give)."""

from __future__ import annotations

import base64
import json

import pytest

from virtkit.api.client import _exec_line, _sse
from virtkit.api.remote import instance_body, view_of
from virtkit.api.schemas import InstanceBody
from virtkit.drivers.base import Status
from virtkit.errors import CommandNotFoundError, SpecError
from virtkit.model import Forward, InstanceKind, InstanceRecord, InstanceState, MiB
from virtkit.ops.lifecycle import InstanceView, Request
from virtkit.ops.nics import NicRequest


def test_the_body_is_what_the_server_turns_back_into_the_request() -> None:
    request = Request(
        image="tiny", name="web1", kind=InstanceKind.VM, cpus=2, memory=512 * MiB, disk=2048 * MiB,
        config={"accel": "tcg", "cpu_allowance": "50%"}, arch="x86_64",
        nics=(NicRequest("default", ip="10.161.0.10", mac="52:54:00:12:34:56", limit=10_000_000,
                         model="e1000"), NicRequest("back")),
        publish=(Forward(proto="udp", host_port=5353, instance="web1", port=53),), allow_host=True,
    )  # fmt: skip
    body = instance_body(request, start=True, wait=True)
    json.dumps(body)  # a JSON document as is
    parsed = InstanceBody.model_validate(body)
    assert (parsed.start, parsed.wait) == (True, True)
    assert parsed.request() == request


def test_a_minimal_body() -> None:
    body = instance_body(Request(image="tiny", name="c1"), start=False)
    assert "kind" not in body and "disk" not in body and "arch" not in body
    assert InstanceBody.model_validate(body).request() == Request(image="tiny", name="c1", config={})


@pytest.mark.parametrize(("key", "option"), [("iso", "--iso"), ("user_data", "--user-data"),
                                             ("ssh_keys", "--ssh-key")])  # fmt: skip
def test_local_files_are_refused(key: str, option: str) -> None:
    with pytest.raises(SpecError, match=f"{option} names a file on this host"):
        instance_body(Request(image="tiny", name="c1", config={key: "/tmp/x"}), start=True)


def test_a_view_is_rebuilt_from_its_document() -> None:
    record = InstanceRecord(name="c1", kind=InstanceKind.CONTAINER, image="abc", state=InstanceState.STOPPED)
    status = Status(InstanceState.RUNNING, 4242, "", {"memory_used": 1024, "cgroup": "virtkit/c1"})
    view = InstanceView(record, status)
    again = view_of(json.loads(json.dumps(view.to_dict())))
    assert again.to_dict() == view.to_dict()
    assert again.status == status
    stopped = InstanceView(record, Status(InstanceState.ERROR, None, "killed by SIGKILL"))
    assert view_of(stopped.to_dict()).status == stopped.status


def test_server_sent_events() -> None:
    lines = [": virtkit events", "", 'data: {"type":"instance","action":"started"}', "", ": keepalive", "",
             "data: not json", "", 'data: {"a":', "data: 1}", ""]  # fmt: skip
    assert list(_sse(iter(lines))) == [{"type": "instance", "action": "started"}, {"a": 1}]
    assert list(_sse(iter(lines), keepalives=True))[:2] == [{}, {"type": "instance", "action": "started"}]


def test_exec_stream_lines() -> None:
    written: list[tuple[int, bytes]] = []

    def write(fd: int, data: bytes) -> None:
        written.append((fd, data))

    def line(document: dict[str, object]) -> str:
        return json.dumps(document)

    data = base64.b64encode(b"\x00out\n").decode()
    assert _exec_line(line({"type": "stdout", "data": data}), write) is None
    assert _exec_line(line({"type": "keepalive"}), write) is None
    assert _exec_line(line({"type": "stderr", "data": base64.b64encode(b"err").decode()}), write) is None
    assert _exec_line("", write) is None
    assert _exec_line(line({"type": "exit", "exit_code": 3}), write) == 3
    assert written == [(1, b"\x00out\n"), (2, b"err")]
    error = {"error": "CommandNotFoundError", "message": "x: command not found", "hint": None}
    with pytest.raises(CommandNotFoundError, match="x: command not found"):
        _exec_line(line({"type": "error", "error": error}), write)
