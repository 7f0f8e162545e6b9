"""The qemu.user check over fake /etc/passwd, /etc/group and /dev/kvm trees."""

from __future__ import annotations

import os
from pathlib import Path

from virtkit.host.checks import Status
from virtkit.host.qemuuser import CREATE_USER, probe_qemu_user, qemu_user_check

PASSWD = "root:x:0:0:root:/root:/bin/bash\nvirtkit-qemu:x:995:994::/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nkvm:x:995:virtkit-qemu\nvirtkit-qemu:x:994:\n"


def _tree(tmp_path: Path, passwd: str = PASSWD, kvm_mode: int | None = 0o660, kvm_gid: int = 995) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(passwd)
    (tmp_path / "etc/group").write_text(GROUP)
    if kvm_mode is not None:
        (tmp_path / "dev").mkdir()
        kvm = tmp_path / "dev/kvm"
        kvm.write_text("")
        os.chown(kvm, 0, kvm_gid)
        kvm.chmod(kvm_mode)
    return tmp_path


def test_the_user_with_kvm_access_passes(tmp_path: Path) -> None:
    state = probe_qemu_user(_tree(tmp_path))
    assert (state.uid, state.gids, state.kvm_rw) == (995, (994, 995), True)
    assert qemu_user_check(state, kvm_usable=True).status is Status.PASS


def test_no_user_warns_with_the_command_that_makes_it(tmp_path: Path) -> None:
    state = probe_qemu_user(_tree(tmp_path, passwd="root:x:0:0:root:/root:/bin/bash\n"))
    check = qemu_user_check(state, kvm_usable=False)
    assert state.uid is None and check.status is Status.WARN and check.remedy == CREATE_USER
    assert "QEMU runs as root" in check.summary


def test_kvm_closed_to_the_user_warns_only_where_kvm_works(tmp_path: Path) -> None:
    state = probe_qemu_user(_tree(tmp_path, kvm_mode=0o600, kvm_gid=0))
    assert state.kvm_rw is False
    assert qemu_user_check(state, kvm_usable=True).status is Status.WARN
    assert qemu_user_check(state, kvm_usable=False).status is Status.PASS  # TCG needs no /dev/kvm


def test_garbled_passwd_is_no_user(tmp_path: Path) -> None:
    state = probe_qemu_user(_tree(tmp_path, passwd="virtkit-qemu:x:abc\n", kvm_mode=None))
    assert state.uid is None
