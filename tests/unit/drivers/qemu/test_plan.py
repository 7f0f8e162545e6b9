"""The VM driver's choices (plan.build_spec), on fake images: acceleration, machine, boot path,
devices, and the requests it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.images.diskbuild import make_iso
from virtkit.drivers.base import InstancePaths, get_driver
from virtkit.drivers.qemu import QemuDriver, plan
from virtkit.drivers.qemu.plan import TCG_NOTICE, UNPROVEN_NOTICE, build_spec
from virtkit.drivers.qemu.spec import VmSpec
from virtkit.errors import HostCapabilityError, SpecError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord

TINY_PROPERTIES = {
    "cmdline": "console=ttyS0 panic=-1 quiet", "ready_port": "org.virtkit.ready",
    "ready_marker": "VIRTKIT-READY", "agent_port": "org.virtkit.agent", "vmlinux": "vmlinux",
}  # fmt: skip


def _image(tmp_path: Path, arch: str = "x86_64", **changes: object) -> ImageRecord:
    for name in ("disk.qcow2", "vmlinuz", "initrd.img", "vmlinux"):
        (tmp_path / name).touch()
    values: dict[str, object] = dict(
        fingerprint="ab" * 32, name="tiny", kinds=[InstanceKind.VM, InstanceKind.CONTAINER], arch=arch,
        format="tiny", virtual_size=64 << 20,
        files={"disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img"},
        properties=dict(TINY_PROPERTIES),
    )  # fmt: skip
    values.update(changes)
    return ImageRecord(**values)  # type: ignore[arg-type]


def _plan(
    tmp_path: Path, verdict: bool | None = None, arch: str = "x86_64", image: ImageRecord | None = None,
    **config: str,
) -> tuple[VmSpec, list[str]]:  # fmt: skip
    record = InstanceRecord(name="vm1", kind=InstanceKind.VM, arch=arch, config=config)
    image = image or _image(tmp_path, arch)
    paths = InstancePaths.of(tmp_path / "root", "vm1")
    spec, notices = build_spec(
        record, image, tmp_path, paths, verdict=lambda: verdict, host="x86_64", tsc_khz=lambda: 2600000,
        who=lambda: None,
    )  # fmt: skip
    # Said on every host without the unprivileged user; tests/unit/drivers/qemu/test_limits.py covers it.
    return spec, [notice for notice in notices if not notice.startswith("QEMU runs as root")]


def test_registry_gives_the_qemu_driver() -> None:
    assert isinstance(get_driver("vm"), QemuDriver)


def test_default_is_microvm_with_the_pvh_kernel_under_tcg(tmp_path: Path) -> None:
    spec, notices = _plan(tmp_path)
    assert (spec.machine, spec.accel, spec.cpu_model, spec.devices) == ("microvm", "tcg", "max", "virtio")
    assert spec.kernel == str(tmp_path / "vmlinux") and spec.initrd == str(tmp_path / "initrd.img")
    assert spec.tsc_khz == 2600000 and spec.cmdline.endswith("virtkit.hostname=vm1")
    assert spec.ready_file and spec.agent_socket and spec.ready_marker == "VIRTKIT-READY"
    assert [d.bus for d in spec.disks] == ["virtio"] and spec.disks[0].format == "qcow2"
    assert notices == [f"{UNPROVEN_NOTICE}: running under TCG (emulation)"]


def test_kvm_only_when_the_probe_said_it_works(tmp_path: Path) -> None:
    spec, notices = _plan(tmp_path, verdict=True)
    assert (spec.accel, spec.cpu_model, spec.tsc_khz, notices) == ("kvm", "host", None, [])
    spec, notices = _plan(tmp_path, verdict=False)
    assert spec.accel == "tcg" and notices == [TCG_NOTICE]
    spec, notices = _plan(tmp_path, verdict=True, accel="tcg")
    assert spec.accel == "tcg" and notices == []


def test_explicit_kvm_fails_where_kvm_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(HostCapabilityError, match="KVM cannot run guests"):
        _plan(tmp_path, verdict=False, accel="kvm")
    spec, notices = _plan(tmp_path, verdict=None, accel="kvm")  # unknown: as asked, with a warning
    assert spec.accel == "kvm" and notices == [UNPROVEN_NOTICE]
    with pytest.raises(HostCapabilityError, match="aarch64 guests"):
        _plan(tmp_path, verdict=True, arch="aarch64", accel="kvm")


def test_aarch64_is_emulated_on_virt(tmp_path: Path) -> None:
    image = _image(tmp_path, "aarch64", properties={**TINY_PROPERTIES, "cmdline": "console=ttyAMA0"})
    del image.properties["vmlinux"]
    spec, notices = _plan(tmp_path, verdict=True, arch="aarch64", image=image)
    assert (spec.machine, spec.accel, spec.cpu_model, spec.tsc_khz) == ("virt", "tcg", "cortex-a57", None)
    assert spec.kernel == str(tmp_path / "vmlinuz") and spec.binary == "qemu-system-aarch64"
    assert notices == ["aarch64 guest on this x86_64 host: emulated (TCG)"]


def test_emulated_devices_use_q35_ahci_and_no_virtio_channels(tmp_path: Path) -> None:
    spec, _ = _plan(tmp_path, devices="emulated")
    assert spec.machine == "q35" and [d.bus for d in spec.disks] == ["ahci"]
    assert spec.ready_file is None and spec.agent_socket is None and spec.tsc_khz is None
    assert spec.kernel == str(tmp_path / "vmlinux")  # PVH on q35 too: half the boot time under TCG


def test_firmware_and_iso_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk_only = _image(tmp_path, files={"disk": "disk.qcow2"}, properties={}, format="qcow2", kinds=["vm"])
    spec, _ = _plan(tmp_path, image=disk_only, firmware="bios")
    assert (spec.machine, spec.firmware, spec.kernel, spec.cmdline) == ("q35", "bios", None, "")
    code = tmp_path / "OVMF_CODE.fd"
    code.touch()
    monkeypatch.setitem(plan.UEFI_FILES, "x86_64", (str(code), str(tmp_path / "VARS.fd"), "ovmf"))
    iso = make_iso(tmp_path / "install.iso")
    spec, _ = _plan(tmp_path, firmware="uefi", iso=str(iso))
    assert spec.firmware == "uefi" and spec.uefi is not None and spec.uefi.code == str(code)
    assert spec.iso == str(iso) and spec.uefi.vars.endswith("/instances/vm1/efivars.fd")
    spec, _ = _plan(tmp_path, iso=str(iso))  # an ISO alone boots through the default firmware
    assert (spec.firmware, spec.kernel) == ("bios", None)


def test_imported_install_media_boots_with_an_empty_disk(tmp_path: Path) -> None:
    make_iso(tmp_path / "install.iso")
    media = _image(
        tmp_path, files={"iso": "install.iso"}, properties={"el_torito": "yes"}, format="iso", kinds=["vm"]
    )
    spec, _ = _plan(tmp_path, image=media)
    assert (spec.machine, spec.firmware, spec.iso) == ("q35", "bios", str(tmp_path / "install.iso"))
    assert [(d.path.endswith("/vm1/root.qcow2"), d.bus) for d in spec.disks] == [(True, "virtio")]
    data_cd = media.model_copy(update={"properties": {"el_torito": "no"}})
    with pytest.raises(SpecError, match="without an El Torito boot record"):
        _plan(tmp_path, image=data_cd)


def test_firmware_cannot_boot_the_bootloader_free_disk_of_a_kernel_image(tmp_path: Path) -> None:
    for firmware in ("bios", "uefi"):
        with pytest.raises(SpecError, match=f"no bootloader for {firmware} firmware"):
            _plan(tmp_path, firmware=firmware)
    spec, _ = _plan(tmp_path, firmware="bios", iso=str(make_iso(tmp_path / "rescue.iso")))
    assert spec.kernel is None and spec.iso == str(tmp_path / "rescue.iso")  # the image's disk, the CD first


def test_an_image_without_kernel_boots_its_disk_through_firmware(tmp_path: Path) -> None:
    image = _image(tmp_path, files={"disk": "disk.qcow2"}, properties={}, format="qcow2", kinds=["vm"])
    spec, _ = _plan(tmp_path, image=image)
    assert (spec.machine, spec.firmware, spec.ready_file, spec.agent_socket) == ("q35", "bios", None, None)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"devices": "paravirt"}, "invalid devices"),
        ({"accel": "xen"}, "invalid accel"),
        ({"firmware": "coreboot"}, "invalid firmware"),
        ({"machine": "microvm", "devices": "emulated"}, "microvm machine boots"),
        ({"machine": "microvm", "firmware": "bios"}, "microvm machine boots"),
        ({"iso": "/nonexistent.iso"}, "does not exist"),
        ({"iso": "/"}, "is a directory"),
        ({"iso": "/etc/hostname"}, "not an ISO 9660 image"),
        ({"machine": "virt"}, "virt machine cannot run x86_64 guests"),
        ({"machine": "pc"}, "invalid machine"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, config: dict[str, str], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        _plan(tmp_path, None, "x86_64", None, **config)


def test_images_that_cannot_run_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot run as a VM"):
        _plan(tmp_path, image=_image(tmp_path, kinds=["container"]))
    with pytest.raises(SpecError, match="is for aarch64"):
        _plan(tmp_path, image=_image(tmp_path, "aarch64"))
    with pytest.raises(SpecError, match="nothing to boot"):
        _plan(tmp_path, image=_image(tmp_path, files={"initrd": "initrd.img"}))
    with pytest.raises(SpecError, match="UEFI firmware only"):
        _plan(tmp_path, arch="aarch64", firmware="bios")


def test_socket_paths_too_long_for_unix_sockets(tmp_path: Path) -> None:
    record = InstanceRecord(name="vm1", kind=InstanceKind.VM)
    paths = InstancePaths.of(tmp_path / ("x" * 100), "vm1")
    with pytest.raises(SpecError, match="unix sockets allow"):
        build_spec(record, _image(tmp_path), tmp_path, paths, verdict=lambda: None, host="x86_64")


def test_generate_saves_the_spec_with_the_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan, "kvm_verdict", lambda: False)
    record = InstanceRecord(name="vm1", kind=InstanceKind.VM, cpus=2)
    paths = InstancePaths.of(tmp_path / "root", "vm1")
    runtime = QemuDriver().generate(record, _image(tmp_path), tmp_path, paths)
    spec = VmSpec.from_dict(runtime.config)
    assert runtime.kind == "vm" and spec.uuid == record.uuid and spec.cpus == 2
    assert runtime.argv[runtime.argv.index("-uuid") + 1] == record.uuid
    assert runtime.notices[0] == TCG_NOTICE  # then, here, why QEMU runs as root (test_limits.py)
