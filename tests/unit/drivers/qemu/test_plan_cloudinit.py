"""The VM driver's cloud-init choices (plan.py): which images get a NoCloud seed, which are ready
when qemu-guest-agent answers, and cloud-init inputs refused for images that would ignore them."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.drivers.base import InstancePaths
from virtkit.drivers.qemu.agent import QGA_PORT
from virtkit.drivers.qemu.plan import build_spec
from virtkit.drivers.qemu.spec import VmSpec
from virtkit.errors import SpecError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord

# What `virtkit image build debian` records for its VM image (debian.py, debiandisk.py).
DEBIAN_PROPERTIES = {
    "os": "debian", "release": "bookworm", "cloud_init": "nocloud",
    "cmdline": "root=LABEL=virtkit-root rw console=ttyS0",
    "agent": "qemu-guest-agent", "agent_port": QGA_PORT,
}  # fmt: skip
TINY_PROPERTIES = {
    "ready_port": "org.virtkit.ready",
    "ready_marker": "VIRTKIT-READY",
    "agent_port": "org.virtkit.agent",
}


def _image(tmp_path: Path, name: str, properties: dict[str, str]) -> ImageRecord:
    for file in ("disk.qcow2", "vmlinuz", "initrd.img"):
        (tmp_path / file).touch()
    return ImageRecord(
        fingerprint="cd" * 32, name=name, aliases=[name], kinds=[InstanceKind.VM], format=name,
        files={"disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img"}, properties=properties,
    )  # fmt: skip


def _spec(tmp_path: Path, image: ImageRecord, **config: str) -> VmSpec:
    record = InstanceRecord(name="d1", kind=InstanceKind.VM, config=config)
    paths = InstancePaths.of(tmp_path / "root", "d1")
    spec, _notices = build_spec(
        record, image, tmp_path, paths, verdict=lambda: False, host="x86_64", tsc_khz=lambda: None,
        who=lambda: None,
    )  # fmt: skip
    return spec


def test_debian_gets_a_seed_and_is_ready_when_its_guest_agent_answers(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path, _image(tmp_path, "debian-bookworm", DEBIAN_PROPERTIES), user_data="ud.yaml (9 bytes)"
    )
    assert spec.seed == str(tmp_path / "root/instances/d1/seed.iso")
    assert spec.ready_agent and spec.agent_port == QGA_PORT
    assert spec.agent_socket == str(tmp_path / "root/instances/d1/agent.sock")
    assert spec.ready_marker is None and spec.ready_file is None
    assert VmSpec.from_dict(spec.to_dict()) == spec  # saved in the runtime and boot.json


def test_without_virtio_the_seed_stays_but_readiness_is_the_console(tmp_path: Path) -> None:
    spec = _spec(tmp_path, _image(tmp_path, "debian-bookworm", DEBIAN_PROPERTIES), devices="emulated")
    assert spec.seed is not None and spec.agent_socket is None and not spec.ready_agent


def test_the_tiny_image_has_neither(tmp_path: Path) -> None:
    spec = _spec(tmp_path, _image(tmp_path, "tiny", TINY_PROPERTIES))
    assert spec.seed is None and not spec.ready_agent and spec.ready_marker == "VIRTKIT-READY"


@pytest.mark.parametrize("key", ["user_data", "ssh_keys"])
def test_cloud_init_inputs_for_an_image_without_cloud_init_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(SpecError, match="image tiny has no cloud-init: --user-data and --ssh-key need"):
        _spec(tmp_path, _image(tmp_path, "tiny", TINY_PROPERTIES), **{key: "what it held"})
