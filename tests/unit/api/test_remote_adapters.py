"""api/remote_*.py: what each adapter asks a server, and how the server's JSON (the local views'
own `to_dict()`, as the routes answer) becomes the local types again, equal to what local ops give."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from virtkit.api.remote_common import model_of, seg
from virtkit.api.remote_host import report_of
from virtkit.api.remote_images import RemoteImages
from virtkit.api.remote_networks import RemoteAttach, RemoteNetworks, network_view_of
from virtkit.api.remote_snapshots import RemoteCopies, RemotePublisher, RemoteSnapshots
from virtkit.api.remote_storage import RemoteStorage, RemoteVolumes, pool_view_of, volume_view_of
from virtkit.errors import SpecError
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
from virtkit.model import (
    Forward,
    ImageRecord,
    InstanceKind,
    InstanceRecord,
    InstanceState,
    NetworkRecord,
    Nic,
    PoolRecord,
    SnapshotRecord,
    VolumeAttachment,
    VolumeRecord,
    VolumeType,
)
from virtkit.ops.copy import Copied
from virtkit.ops.networks import Attachment, NetworkView
from virtkit.ops.nics import NicRequest
from virtkit.ops.snapshots import SnapshotView
from virtkit.ops.storage import PoolView, VolumeView
from virtkit.ops.volumes import Attached
from virtkit.storage.pools import Capacity


class FakeClient:
    """Answers (method, path) from a table, as JSON would carry them; remembers what was asked."""

    url = "unix:/nowhere"

    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, Any, Any]] = []

    def request(self, method: str, path: str, *, json: Any = None, params: Any = None,
                timeout: float | None = None) -> Any:  # fmt: skip
        self.asked.append((method, path, json, params))
        return _wire(self.answers[(method, path)])

    run = request

    def instance(self, name: str) -> Any:
        return self.request("GET", f"/1.0/instances/{name}")

    def info(self) -> Any:
        return self.request("GET", "/1.0")

    def wait(self, operation: str) -> Any:
        return self.request("GET", f"/1.0/operations/{operation}/result")


def _wire(value: Any) -> Any:
    return json.loads(json.dumps(value))


SNAP = SnapshotRecord(instance="c1", name="s1", size=4096, live=True, expires_at=1e9, disks=["root"])
INSTANCE = InstanceRecord(name="c2", image="f" * 64, kind=InstanceKind.CONTAINER)
IMAGE = ImageRecord(fingerprint="a" * 64, name="pub", format="tiny", aliases=["pub"], kinds=[InstanceKind.VM])
NIC = Nic(network="web", mac="52:54:00:12:34:56", ip="10.77.0.5", device="vk1234abcdn0", limit=10_000_000)


def test_snapshots_come_back_as_the_local_types() -> None:
    view = SnapshotView(SNAP, InstanceKind.VM, Path("/srv/root/instances/c1/snapshots/s1"))
    base = "/1.0/instances/c1/snapshots"
    client = FakeClient({
        ("GET", base): [SNAP.model_dump(mode="json")],
        ("GET", f"{base}/s1"): view.to_dict(),
        ("POST", base): {"snapshot": SNAP.model_dump(mode="json"), "notes": ["taken while running"]},
        ("POST", f"{base}/s1/restore"): {"snapshot": SNAP.model_dump(mode="json"), "was": "running",
                                         "restarted": True, "resumed": False},
        ("DELETE", f"{base}/s1"): {"snapshot": SNAP.model_dump(mode="json")},
    })  # fmt: skip
    verbs = RemoteSnapshots(client)  # type: ignore[arg-type]
    assert verbs.list("c1") == [SNAP]
    assert verbs.view("c1", "s1") == view
    assert verbs.create("c1", "s1", expiry=3600) == (SNAP, ("taken while running",))
    assert client.asked[-1][2] == {"name": "s1", "stateful": False, "expiry": 3600}
    done = verbs.restore("c1", "s1", wait=True)
    assert (done.snapshot, done.was, done.restarted) == (SNAP, InstanceState.RUNNING, True)
    assert not done.resumed
    assert client.asked[-1][2] == {"wait": True}
    assert verbs.delete("c1", "s1") == SNAP


def test_copies_and_publish() -> None:
    copied = Copied(INSTANCE, "linked", ("abc", "def"), ("a note",))
    client = FakeClient({
        ("POST", "/1.0/instances/c1/copy"): copied.to_dict(),
        ("POST", "/1.0/instances/c2/flatten"): {"instance": INSTANCE.model_dump(mode="json")},
        ("POST", "/1.0/instances/c1/publish"): {"image": IMAGE.model_dump(mode="json")},
    })  # fmt: skip
    assert RemoteCopies(client).copy("c1", "c2", snapshot="s1") == copied  # type: ignore[arg-type]
    assert client.asked[-1][2] == {"target": "c2", "full": False, "snapshot": "s1"}
    assert RemoteCopies(client).flatten("c2") == INSTANCE  # type: ignore[arg-type]
    assert RemotePublisher(client).publish("c1", alias="pub") == IMAGE  # type: ignore[arg-type]


def test_images_and_where_their_files_are_on_the_server() -> None:
    client = FakeClient({
        ("GET", "/1.0/images/pub"): IMAGE.model_dump(mode="json"), ("GET", "/1.0"): {"root": "/srv/vk"},
        ("POST", "/1.0/images/pub/aliases"): IMAGE.model_dump(mode="json"),
        ("DELETE", "/1.0/images/aliases/pub"): IMAGE.model_dump(mode="json"),
        ("POST", "/1.0/images/build"): {"id": "op1", "status": "running", "message": "kernel",
                                        "progress": 50},
        ("GET", "/1.0/operations/op1/wait"): {"id": "op1", "status": "success", "message": "done"},
        ("GET", "/1.0/operations/op1/result"): {"images": [IMAGE.model_dump(mode="json")]},
    })  # fmt: skip
    images = RemoteImages(client)  # type: ignore[arg-type]
    assert images.get("pub") == IMAGE
    assert images.path(IMAGE) == Path("/srv/vk/images") / IMAGE.fingerprint
    assert images.add_alias("pub", "more") == IMAGE and client.asked[-1][2] == {"alias": "more"}
    assert images.remove_alias("pub") == IMAGE
    seen: list[tuple[str, float | None]] = []
    assert images.build_tiny("aarch64", lambda what, fraction: seen.append((what, fraction))) == IMAGE
    assert client.asked[-3][2] == {"builder": "tiny", "arch": "aarch64"} and seen == [("kernel", 0.5)]


def test_network_views() -> None:
    record = NetworkRecord(name="web", bridge="vk-web", subnet="10.77.0.0/24", gateway="10.77.0.1",
                           forwards=[Forward(host_port=8080, instance="c1", port=80)])  # fmt: skip
    view = NetworkView(record, True, 1234, [Attachment("c1", NIC)],
                       [{"mac": NIC.mac, "ip": NIC.ip, "hostname": "c1", "expiry": 1e9}])  # fmt: skip
    assert network_view_of(_wire(view.to_dict())) == view
    down = NetworkView(record, False, None)
    assert network_view_of(_wire(down.to_dict())) == down
    client = FakeClient({
        ("DELETE", "/1.0/networks/web/forwards/5353"): Forward(proto="udp", host_port=5353, instance="c1",
                                                               port=53).model_dump(mode="json"),
        ("POST", "/1.0/networks/web/attach"): {"instance": "c1", **NIC.model_dump(mode="json")},
    })  # fmt: skip
    gone = RemoteNetworks(client).remove_forward("web", 5353, "udp")  # type: ignore[arg-type]
    assert (gone.label(), client.asked[-1][3]) == ("5353/udp", {"proto": "udp"})
    nic = RemoteAttach(client).attach(NicRequest("web", limit=10_000_000), "c1")  # type: ignore[arg-type]
    assert nic == NIC and client.asked[-1][2]["limit"] == "10mbit"
    with pytest.raises(SpecError, match="invalid network name"):
        RemoteNetworks(client).view("Bad_Name")  # type: ignore[arg-type]


def test_pool_and_volume_views() -> None:
    pool = PoolRecord(name="p1", path="/srv/p1")
    volumes = [VolumeRecord(pool="p1", name=n, size=1 << 20, type=VolumeType.BLOCK, format="qcow2")
               for n in ("b", "a")]  # fmt: skip
    view = PoolView(pool, True, Capacity(10 << 30, 5 << 30), volumes)
    assert pool_view_of(_wire(view.to_dict()), list(reversed(volumes))) == view
    sick = PoolView(pool, False, None, [])
    assert pool_view_of(_wire(sick.to_dict()), []) == sick

    record = volumes[0].model_copy(update={"attached_to": "c1", "config": {"limits.read_iops": "100"}})
    held = VolumeAttachment(pool="p1", name="b", type=VolumeType.BLOCK, format="qcow2",
                            source="/srv/p1/block/b.qcow2", device="vol0")  # fmt: skip
    shown = VolumeView(record, Path("/srv/p1/block/b.qcow2"), 8192, held)
    again = volume_view_of(_wire(shown.to_dict()))
    assert (again.record, again.path, again.usage) == (record, shown.path, 8192)
    assert again.attachment is not None and (again.attachment.device, again.attachment.path) == ("vol0", None)
    assert volume_view_of(_wire(VolumeView(volumes[1], Path("/x"), None).to_dict())).attachment is None

    attached = Attached("c1", held, True, ["hot-plugged"])
    base = "/1.0/storage-pools/p1/volumes/b"
    document = {"instance": "c1", "live": True, "notices": ["hot-plugged"], **held.model_dump(mode="json")}
    client = FakeClient({(("POST", f"{base}/attach")): document})
    assert RemoteVolumes(client).attach("p1", "b", "c1") == attached  # type: ignore[arg-type]


def test_storage_refuses_here_what_the_server_would_refuse_by_shape() -> None:
    client = FakeClient({})
    storage = RemoteStorage(client)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="unknown pool driver 'zfs'"):
        storage.create_pool("p1", driver="zfs")
    with pytest.raises(SpecError, match="invalid pool path"):
        storage.create_pool("p1", path="relative")
    with pytest.raises(SpecError, match="invalid pool name"):
        storage.pool_view("Bad")
    assert client.asked == []


def test_a_host_check_report_comes_back_whole() -> None:
    report = Report(
        HostInfo("x86_64", "6.1.0", "Debian", "AuthenticAMD", "EPYC", 2, True, "svm", None),
        (Check("kvm.device", Status.PASS, "/dev/kvm opens"),
         Check("cpu.nested", Status.WARN, "no nesting", remedy="load kvm_amd nested=1", details={"x": [1]})),
        Verdict(VmSupport.EMULATED, "KVM hangs", KvmFunctional.FAILED, ContainerSupport.AVAILABLE, "runc",
                "runc"),
        0,
    )  # fmt: skip
    assert report_of(_wire(report.to_dict())) == report


def test_path_segments_stay_segments() -> None:
    assert seg("a/b") == "a%2Fb" and seg("..") == "%2E%2E" and seg("c1") == "c1"
    assert model_of(SnapshotRecord, {**SNAP.model_dump(mode="json"), "kind": "vm", "path": "/x"}) == SNAP
