"""The pure parts of p2v: URLs, what the server's mount table and lsblk say, the copy's fstab,
which kernel boots the copy, and the sparse writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.errors import RejectedError, SpecError
from virtkit.images.guestboot import pick_kernel
from virtkit.ops.p2v import Options, check_options, write_sparse
from virtkit.ops.p2vsource import (
    Probe,
    Remote,
    chosen_disks,
    copied_mounts,
    parse_lsblk,
    parse_mounts,
    parse_url,
    tar_command,
)
from virtkit.storage.treedisk import copy_fstab


def test_urls() -> None:
    assert parse_url("ssh://root@10.0.0.1") == Remote("root", "10.0.0.1", 22)
    assert parse_url("ssh://server.example.com:2222/") == Remote("root", "server.example.com", 2222)
    assert parse_url("ssh://admin@[::1]:22").host == "::1"
    for bad in ("ssh://", "http://x", "x", "ssh://root@-oProxyCommand=x", "ssh://root@a;b", "ssh://r:p@x",
                "ssh://root@x:0", "ssh://root@x:65536", "ssh://root@x/p", "ssh://root@x y", "ssh://Root@x",
                "ssh://root@[zz]", "ssh://root@x:"):  # fmt: skip
        with pytest.raises(SpecError):
            parse_url(bad)


def test_options() -> None:
    with pytest.raises(SpecError):
        check_options(Options(name="a"))
    with pytest.raises(SpecError):
        check_options(Options(name="a", source="ssh://x", image=Path("i")))
    with pytest.raises(SpecError):
        check_options(Options(name="a", source="ssh://x", disks="../sda"))
    with pytest.raises(SpecError):
        check_options(Options(name="a", source="ssh://x", disk_size=1))
    check_options(Options(name="a", source="ssh://x", disks="sda,sdb"))


MOUNTS = """/dev/sda1 / ext4 rw 0 0
proc /proc proc rw 0 0
/dev/sda2 /home ext4 rw 0 0
/dev/sdb1 /tmp/x ext4 rw 0 0
srv:/e /mnt/nfs nfs rw 0 0
/dev/sdc1 /mnt/nfs/inner ext4 rw 0 0
/dev/sda2 /srv/again ext4 rw 0 0
/dev/sdd1 /with\\040space xfs rw 0 0
"""


def test_copied_mounts_and_tar() -> None:
    mounts = copied_mounts(parse_mounts(MOUNTS))
    assert [m.target for m in mounts] == ["/", "/home", "/with space"]
    argv = tar_command(mounts, "tar (GNU tar) 1.34")
    assert argv[-4:] == ["--", ".", "./home", "./with space"] and "--one-file-system" in argv
    with pytest.raises(RejectedError):
        tar_command(mounts, "bsdtar 3.6")
    with pytest.raises(RejectedError):
        copied_mounts(parse_mounts("tmpfs / tmpfs rw 0 0\n"))


def test_lsblk_and_disks() -> None:
    text = ('{"blockdevices": [{"name": "sda", "type": "disk", "size": 100, "children": '
            '[{"name": "sda1", "type": "part", "mountpoint": "/"}]}, {"name": "../x", "type": "disk"}, '
            '{"name": "sdb", "type": "disk", "size": "7", "mountpoint": null}]}')  # fmt: skip
    disks = parse_lsblk(text)
    assert [(d.name, d.size, d.mountpoints) for d in disks] == [("sda", 100, ("/",)), ("sdb", 7, ())]
    assert parse_lsblk("garbage") == ()
    probe = Probe("Linux", "0", "h", (), "", disks)
    mounts = copied_mounts(parse_mounts("/dev/sda1 / ext4 rw 0 0\n"))
    assert [d.name for d in chosen_disks(probe, "auto", mounts)] == ["sda"]
    assert [d.name for d in chosen_disks(probe, "sdb,sda,sdb", mounts)] == ["sdb", "sda"]
    with pytest.raises(SpecError):
        chosen_disks(probe, "sdz", mounts)


def test_copy_fstab() -> None:
    text = ("# comment\n/dev/sda1 / ext4 defaults 0 1\nUUID=x /home ext4 defaults 0 2\n"
            "/dev/sdb1 none swap sw 0 0\nsrv:/e /mnt nfs defaults 0 0\nUUID=y /opt ext4 nofail 0 2\n")
    new, changes = copy_fstab(text, "u-1", {"/home"})  # fmt: skip
    lines = new.splitlines()
    assert lines[1] == "UUID=u-1\t/\text4\tdefaults\t0\t1"
    assert lines[2].startswith("# virtkit p2v: copied into /:") and lines[3].startswith("# virtkit p2v:")
    assert lines[4:] == ["srv:/e /mnt nfs defaults 0 0", "UUID=y /opt ext4 nofail 0 2"]
    assert len(changes) == 3
    assert copy_fstab("", "u-2", set())[0] == "UUID=u-2\t/\text4\tdefaults,errors=remount-ro\t0\t1\n"


def test_pick_kernel() -> None:
    names = {"vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64",
             "initrd.img-6.1.0-10-amd64", "vmlinuz-6.2.0-1-amd64", "vmlinuz-7.0-rescue",
             "initrd.img-7.0-rescue", "vmlinuz-../x", "initrd.img-../x"}  # fmt: skip
    assert pick_kernel(names) == ("vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64")
    fedora = ("vmlinuz-5.14.0", "initramfs-5.14.0.img")
    assert pick_kernel(set(fedora)) == fedora
    assert pick_kernel({"vmlinuz-1"}) is None


def test_write_sparse(tmp_path: Path) -> None:
    read, write = os.pipe()
    data = b"a" * 100 + bytes(3 * 1024 * 1024) + b"z"
    os.write(write, data[: 64 * 1024])
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, data[64 * 1024 :])
        os._exit(0)
    os.close(write)
    out = tmp_path / "disk.raw"
    assert write_sparse(read, out, lambda _n: None) == len(data)
    os.close(read)
    os.waitpid(pid, 0)
    assert out.read_bytes() == data
    assert out.stat().st_blocks * 512 < len(data)
