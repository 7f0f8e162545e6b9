"""create/launch with cloud-init inputs (FakeDriver, real SQLite store): the files are read once,
at create time, kept under the instance directory, described in the record; bad ones are
refused before anything is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit import cloudinit
from virtkit.drivers.fake import FakeDriver
from virtkit.errors import SpecError, ToolError
from virtkit.images.staged import DISK, StagedImage
from virtkit.model import InstanceKind, InstanceRecord
from virtkit.ops.images import add_staged
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.store import SqliteStore

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHjGR4SSnOlVaFDWUHIQ+LiFIL/kkHKyr1HM6XPXg1YZ tester@host"


@pytest.fixture
def life(root: Path, store: SqliteStore, fake: FakeDriver) -> Lifecycle:
    def make(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(b"disk")
        return StagedImage(
            "debian-bookworm", ["vm"], "x86_64", "debian", "t", files={DISK: "disk.qcow2"},
            properties={"cloud_init": "nocloud"},
        )  # fmt: skip

    add_staged(root, store, make, alias="debian-bookworm")
    return Lifecycle(root, store, drivers=lambda kind: fake)


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    user_data, key = tmp_path / "ud.yaml", tmp_path / "k.pub"
    user_data.write_text("#cloud-config\nruncmd: [[touch, /ran]]\n")
    key.write_text(KEY + "\n")
    return user_data, key


def _request(**config: str) -> Request:
    return Request(image="debian-bookworm", name="d1", kind=InstanceKind.VM, config=config)


def test_inputs_are_kept_with_the_instance_and_described_in_its_record(
    life: Lifecycle, root: Path, inputs: tuple[Path, Path]
) -> None:
    user_data, key = inputs
    record, _runtime = life.create(_request(user_data=str(user_data), ssh_keys=str(key)))
    assert record.config["user_data"].startswith("ud.yaml (")
    assert record.config["ssh_keys"].startswith(
        "ssh-ed25519 SHA256:f6dq5QioNFx6lAuRRJ+UAkhqJzUyfFhC2jeIJ0dmSwQ"
    )
    user_data.write_text("#cloud-config\n# changed after create: not what the instance got\n")
    key.unlink()
    kept = cloudinit.load(root / "instances" / "d1")
    assert kept.user_data == b"#cloud-config\nruncmd: [[touch, /ran]]\n" and kept.ssh_keys == (KEY,)
    assert str(user_data) not in (root / "instances" / "d1" / "runtime.json").read_text()


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"user_data": "/nonexistent/ud.yaml"}, "does not exist"),
        ({"user_data": "KEY"}, "cloud-init would ignore it"),  # a public key given as user-data
        ({"ssh_keys": "UD"}, "is not an OpenSSH public key"),  # user-data given as a key
    ],
)
def test_bad_inputs_make_nothing(
    life: Lifecycle, root: Path, store: SqliteStore, fake: FakeDriver, inputs: tuple[Path, Path],
    config: dict[str, str], says: str,
) -> None:  # fmt: skip
    paths = {"KEY": str(inputs[1]), "UD": str(inputs[0])}
    config = {key: paths.get(value, value) for key, value in config.items()}
    for attempt in (life.create, life.preview, life.launch):
        with pytest.raises(SpecError) as caught:
            attempt(_request(**config))  # type: ignore[operator]
        assert says in caught.value.message
    assert fake.calls == [] and store.list(InstanceRecord) == []
    assert not (root / "instances").exists()


def test_a_failed_prepare_removes_the_kept_inputs(
    life: Lifecycle, root: Path, fake: FakeDriver, inputs: tuple[Path, Path]
) -> None:
    fake.fail_on.add("prepare")
    with pytest.raises(ToolError):
        life.create(_request(user_data=str(inputs[0])))
    assert not (root / "instances").exists()
