"""`check_boot_media`: a file given as `--iso` must be whole, bootable ISO 9660 install media."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.images.diskbuild import make_iso
from virtkit.errors import SpecError
from virtkit.images.iso import check_boot_media


def test_bootable_media_is_accepted(tmp_path: Path) -> None:
    volume = check_boot_media(make_iso(tmp_path / "install.iso", volume_id="DEBIAN 12"))
    assert (volume.volume_id, volume.el_torito) == ("DEBIAN 12", True)


def test_what_firmware_cannot_boot_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.iso"
    text.write_text("not an ISO\n" * 4000)
    qcow2 = tmp_path / "disk.iso"
    qcow2.write_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(40000))
    truncated = make_iso(tmp_path / "cut.iso", blocks=64)
    os.truncate(truncated, 40 * 2048)
    fifo = tmp_path / "pipe.iso"
    os.mkfifo(fifo)
    (tmp_path / "empty.iso").touch()
    cases = [
        (tmp_path / "missing.iso", "does not exist"),
        (tmp_path, "is a directory"),
        (fifo, "is a FIFO, not a regular file"),
        (tmp_path / "empty.iso", "is empty"),
        (text, "is not an ISO 9660 image$"),
        (qcow2, r"is not an ISO 9660 image \(it looks like: qcow2\)"),
        (truncated, "is truncated"),
        (make_iso(tmp_path / "data.iso", el_torito=False), "no El Torito boot record"),
    ]
    for path, message in cases:
        with pytest.raises(SpecError, match=message) as caught:
            check_boot_media(path)
        assert caught.value.hint, path
