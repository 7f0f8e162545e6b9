"""Argument checks of `virtkit image build debian`: every bad input is refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.errors import HostCapabilityError, SpecError
from virtkit.images import debian
from virtkit.images.debian import (
    build_debian,
    dpkg_status,
    recipe_packages,
    stale_kernels,
    validate_arch,
    validate_packages,
    validate_release,
)
from virtkit.images.debiancache import tree_key


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    path = tmp_path / "scripts"
    path.mkdir()
    (path / "sid").write_text("")
    for name in ("bookworm", "bullseye", "trixie", "jammy", "stable"):
        (path / name).symlink_to("sid")
    return path


def test_known_release_is_accepted(scripts: Path) -> None:
    assert validate_release("bookworm", scripts) == "bookworm"


@pytest.mark.parametrize("release", ["", "Bookworm", "book worm", "bookworm;rm", "../sid", "bookworm1", "é"])
def test_malformed_release_is_refused(scripts: Path, release: str) -> None:
    with pytest.raises(SpecError, match="invalid Debian release"):
        validate_release(release, scripts)


def test_suite_alias_is_refused_with_a_hint(scripts: Path) -> None:
    with pytest.raises(SpecError, match="codename") as info:
        validate_release("stable", scripts)
    assert info.value.hint and "bookworm" in info.value.hint


@pytest.mark.parametrize("release", ["jammy", "woody", "nosuchrelease"])
def test_non_debian_or_unserved_release_is_refused(scripts: Path, release: str) -> None:
    with pytest.raises(SpecError, match="not a Debian release"):
        validate_release(release, scripts)


def test_release_unknown_to_this_debootstrap_is_refused(scripts: Path) -> None:
    with pytest.raises(SpecError, match="does not know Debian forky"):
        validate_release("forky", scripts)


def test_package_names_follow_debian_policy() -> None:
    checked = validate_packages(["vim", "libc6", "g++", "python3.11", "vim"])
    assert checked == ["g++", "libc6", "python3.11", "vim"]


@pytest.mark.parametrize("name", ["", "a", "Vim", "-vim", "vim_9", "vim=2:9", "a b", "--no-check-gpg", "x,y"])
def test_bad_package_names_are_refused(name: str) -> None:
    with pytest.raises(SpecError, match="invalid Debian package name"):
        validate_packages([name])


def test_one_string_is_not_a_package_list() -> None:
    with pytest.raises(SpecError):
        validate_packages("vim")


def test_arch() -> None:
    assert validate_arch("x86_64") == "amd64"
    with pytest.raises(SpecError, match="riscv"):
        validate_arch("riscv64")


def test_foreign_arch_without_emulation_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(debian.Path, "exists", lambda self: False)
    with pytest.raises(HostCapabilityError) as info:
        validate_arch("aarch64")
    assert info.value.hint and "qemu-user-static" in info.value.hint


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flavour": "lxc"}, "flavour"),
        ({"release": "Bookworm"}, "release"),
        ({"packages": ["ok", "NOT OK"]}, "package name"),
        ({"arch": "mips"}, "architecture"),
    ],
)
def test_build_refuses_bad_input_before_any_work(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    staging, cache = tmp_path / "staging", tmp_path / "cache"
    staging.mkdir()
    with pytest.raises(SpecError, match=match):
        build_debian(staging, cache=cache, **kwargs)  # type: ignore[arg-type]
    assert not cache.exists()
    assert list(staging.iterdir()) == []


def test_recipe_vm_has_a_kernel_container_has_none() -> None:
    vm = recipe_packages("bookworm", "amd64", "vm", ["htop"])
    container = recipe_packages("bookworm", "amd64", "container", ["htop"])
    assert "linux-image-amd64" in vm and "initramfs-tools" in vm
    assert not any(p.startswith(("linux-image", "initramfs")) for p in container)
    for wanted in ("systemd", "systemd-sysv", "systemd-resolved", "openssh-server", "qemu-guest-agent",
                   "cloud-init", "htop", "udev", "dbus", "iproute2"):
        assert wanted in vm and wanted in container
    assert vm == sorted(vm)
    assert "linux-image-arm64" in recipe_packages("bookworm", "arm64", "vm", [])


def test_bullseye_has_resolved_inside_systemd() -> None:
    assert "systemd-resolved" not in recipe_packages("bullseye", "amd64", "vm", [])


def test_tree_key_ignores_package_order_and_changes_with_recipe() -> None:
    one = tree_key(recipe=1, release="bookworm", debarch="amd64", packages=["b", "a"])
    assert one == tree_key(recipe=1, release="bookworm", debarch="amd64", packages=["a", "b", "a"])
    assert one.startswith("bookworm-amd64-")
    assert one != tree_key(recipe=2, release="bookworm", debarch="amd64", packages=["a", "b"])
    assert one != tree_key(recipe=1, release="bookworm", debarch="amd64", packages=["a", "b", "c"])


STATUS = """\
Package: linux-image-amd64
Status: install ok installed
Version: 6.1.140-1
Depends: linux-image-6.1.0-56-amd64 (= 6.1.140-1)

Package: linux-image-6.1.0-56-amd64
Status: install ok installed
Description: Linux 6.1
 for 64-bit PCs

Package: linux-image-6.1.0-50-amd64
Status: install ok installed

Package: linux-image-6.1.0-40-amd64
Status: deinstall ok config-files
"""


def test_dpkg_status_keeps_installed_packages_only() -> None:
    packages = dpkg_status(STATUS)
    assert set(packages) == {"linux-image-amd64", "linux-image-6.1.0-56-amd64", "linux-image-6.1.0-50-amd64"}
    assert packages["linux-image-6.1.0-56-amd64"]["Description"] == "Linux 6.1\n for 64-bit PCs"


def test_stale_kernels_are_the_ones_the_metapackage_no_longer_wants(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(STATUS)
    assert stale_kernels(tmp_path, "amd64") == ["linux-image-6.1.0-50-amd64"]
    status.write_text("Package: systemd\nStatus: install ok installed\n")
    assert stale_kernels(tmp_path, "amd64") == []
