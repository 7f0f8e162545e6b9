"""kernel.* checks: namespaces, user namespaces, overlayfs; and the kernel's identity."""

from __future__ import annotations

import pytest
from hosttree import MakeTree

from virtkit.host import Status
from virtkit.host.kernel import (
    kernel_release,
    namespaces_check,
    os_name,
    overlay_check,
    probe_namespaces,
    probe_overlay,
    probe_userns,
    userns_check,
)


def test_identity(make_tree: MakeTree) -> None:
    tree = make_tree(release="6.1.0-13-amd64")
    assert kernel_release(tree) == "6.1.0-13-amd64"
    assert os_name(tree) == "Debian GNU/Linux 12 (bookworm)"


def test_all_namespaces_pass(make_tree: MakeTree) -> None:
    present = probe_namespaces(make_tree())
    assert present == {"mnt", "uts", "ipc", "pid", "net", "user", "cgroup"}
    check = namespaces_check(present)
    assert check.status is Status.PASS and check.required


def test_missing_pid_namespace_is_a_required_failure(make_tree: MakeTree) -> None:
    present = probe_namespaces(make_tree(namespaces=("mnt", "uts", "ipc", "net", "user", "cgroup")))
    check = namespaces_check(present)
    assert check.status is Status.FAIL
    assert check.required
    assert "pid" in check.summary


def test_missing_user_namespace_only_warns(make_tree: MakeTree) -> None:
    present = probe_namespaces(make_tree(namespaces=("mnt", "uts", "ipc", "pid", "net", "cgroup")))
    check = namespaces_check(present)
    assert check.status is Status.WARN
    assert check.details["missing"] == ["user"]
    userns = userns_check(probe_userns(make_tree()), present)
    assert userns.status is Status.WARN


@pytest.mark.parametrize(
    ("max_userns", "clone", "status", "words"),
    [
        (15000, None, Status.PASS, "allowed (up to 15000)"),
        (15000, 1, Status.PASS, "allowed"),
        (15000, 0, Status.WARN, "only root"),
        (0, None, Status.WARN, "disabled"),
    ],
)
def test_userns(make_tree: MakeTree, max_userns: int, clone: int | None, status: Status, words: str) -> None:
    tree = make_tree(max_user_namespaces=max_userns, unprivileged_userns_clone=clone)
    check = userns_check(probe_userns(tree), probe_namespaces(tree))
    assert check.status is status
    assert words in check.summary
    if status is Status.WARN:
        assert check.remedy is not None and "sysctl -w" in check.remedy


def test_apparmor_restriction_warns(make_tree: MakeTree) -> None:
    tree = make_tree()
    (tree / "proc/sys/kernel/apparmor_restrict_unprivileged_userns").write_text("1\n")
    check = userns_check(probe_userns(tree), probe_namespaces(tree))
    assert check.status is Status.WARN
    assert "AppArmor" in check.summary


@pytest.mark.parametrize(
    ("overlay", "status", "available"),
    [
        ("loaded", Status.PASS, True),
        ("module", Status.WARN, True),
        ("unknown", Status.WARN, False),
        ("absent", Status.FAIL, False),
    ],
)
def test_overlayfs(make_tree: MakeTree, overlay: str, status: Status, available: bool) -> None:
    tree = make_tree(overlay=overlay, release="6.1.0-13-amd64")
    state = probe_overlay(tree, "6.1.0-13-amd64")
    assert state.status == overlay
    assert state.available is available
    check = overlay_check(state, "6.1.0-13-amd64")
    assert check.status is status
    assert not check.required
    if overlay in ("module", "unknown"):
        assert check.remedy is not None and "modprobe overlay" in check.remedy
    if overlay == "module":
        assert state.module is not None and state.module.endswith("overlay.ko.xz")
