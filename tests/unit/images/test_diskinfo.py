"""Judging `qemu-img info` output: what refers outside the image, lies about its size, or is not one file."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from virtkit.errors import RejectedError
from virtkit.images.diskinfo import validate_info
from virtkit.units import MiB, TiB

OWN = "/dev/fd/5"
QCOW2: dict[str, Any] = {
    "virtual-size": 64 * MiB,
    "filename": OWN,
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {"compat": "1.1", "refcount-bits": 16, "corrupt": False, "extended-l2": False},
    },
    "dirty-flag": False,
}
VMDK: dict[str, Any] = {
    "virtual-size": 64 * MiB,
    "filename": OWN,
    "format": "vmdk",
    "format-specific": {
        "type": "vmdk",
        "data": {
            "cid": 1,
            "parent-cid": 4294967295,
            "create-type": "monolithicSparse",
            "extents": [{"virtual-size": 64 * MiB, "filename": OWN, "cluster-size": 65536, "format": ""}],
        },
    },
}


def judge(data: dict[str, Any], fmt: str = "qcow2", limit: int = 2 * TiB) -> int:
    return validate_info(data, fmt, name="disk.img", filename=OWN, max_virtual_size=limit).virtual_size


def changed(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `base` with the dotted `path` set to `value`."""
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


def test_clean_images_pass() -> None:
    assert judge(QCOW2) == 64 * MiB
    assert judge(VMDK, "vmdk") == 64 * MiB
    assert judge({"format": "vpc", "virtual-size": 512, "filename": OWN}, "vpc") == 512


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (changed(QCOW2, "backing-filename", "base.qcow2"), r"refers to a backing file \('base\.qcow2'\)"),
        (changed(QCOW2, "full-backing-filename", "/x/base"), "refers to a backing file"),
        (changed(QCOW2, "format-specific.data.data-file", "d.raw"), r"external data file \('d\.raw'\)"),
        (changed(QCOW2, "backing-filename", 'json:{"driver":"nbd"}'), "json: pseudo-filename"),
        (changed(QCOW2, "format-specific.data.note", "see json:{}"), "json: pseudo-filename"),
        (changed(QCOW2, "children", [{"name": "backing", "info": {"backing-image": {}}}]), "backing file"),
        (changed(QCOW2, "encrypted", True), "is encrypted"),
        (changed(QCOW2, "format-specific.data.encrypt", {"format": "luks"}), "is encrypted"),
        (changed(QCOW2, "format-specific.data.corrupt", True), "is marked corrupt"),
        (changed(QCOW2, "virtual-size", 3 * TiB), "has a virtual size of 3TiB, above the limit of 2TiB"),
        (changed(QCOW2, "virtual-size", 0), "has no usable virtual size"),
        (changed(QCOW2, "virtual-size", "64M"), "has no usable virtual size"),
        (changed(QCOW2, "format", "raw"), "qemu-img does not read disk.img as a qcow2 image"),
    ],
)
def test_refused_qcow2_info(data: dict[str, Any], message: str) -> None:
    with pytest.raises(RejectedError, match=message):
        judge(data)


TWO_EXTENTS = [{"filename": OWN, "format": ""}, {"filename": "/dev/fd/s002.vmdk", "format": ""}]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (changed(VMDK, "format-specific.data.create-type", "monolithicFlat"), "VMDK of type monolithicFlat"),
        (changed(VMDK, "format-specific.data.create-type", None), "VMDK of type None"),
        (changed(VMDK, "format-specific.data.extents", TWO_EXTENTS), r"extents: /dev/fd/5, /dev/fd/s002"),
        (
            changed(VMDK, "format-specific.data.extents", [{"filename": "/etc/shadow"}]),
            "extents: /etc/shadow",
        ),
        (changed(VMDK, "format-specific.data.extents", []), "extents: none"),
    ],
)
def test_refused_vmdk_info(data: dict[str, Any], message: str) -> None:
    with pytest.raises(RejectedError, match=message):
        judge(data, "vmdk")


def test_the_size_limit_is_a_parameter() -> None:
    with pytest.raises(RejectedError, match="above the limit of 32MiB"):
        judge(QCOW2, limit=32 * MiB)
