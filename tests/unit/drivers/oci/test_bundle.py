"""Golden files for a container's config.json, one case per file under golden/, and the safety
properties every generated config must have (checked on the golden cases and on generated specs).

After an intended change to bundle.py or seccomp.py, regenerate the golden files with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/drivers/oci/test_bundle.py`` and review the diff.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtkit.drivers.oci import seccomp
from virtkit.drivers.oci.bundle import ALL_CAPS, DEFAULT_CAPS, MASKED_PATHS, READONLY_PATHS, build_config
from virtkit.drivers.oci.spec import ContainerSpec, IdMap
from virtkit.errors import SpecError

GOLDEN = Path(__file__).parent / "golden"
DIR = "/var/lib/virtkit/instances/c1"
MiB = 1024 * 1024
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USERNS = (IdMap(0, 100000, 65536),)
NEVER_ALLOWED = ("mount", "umount2", "unshare", "setns", "bpf", "keyctl", "pivot_root", "open_by_handle_at")


def _base(**overrides: Any) -> ContainerSpec:
    values: dict[str, Any] = dict(
        name="c1", uuid="7c9e6679-7425-40de-944b-e07fc1f90ae7", hostname="c1", rootfs=f"{DIR}/rootfs",
        args=("/docker-entrypoint.sh", "nginx", "-g", "daemon off;"), env=(PATH, "NGINX_VERSION=1.25.3"),
        cgroup="/virtkit/c1.7c9e6679", nofile=(1024, 20000), arch="x86_64",
    )  # fmt: skip
    values.update(overrides)
    return ContainerSpec(**values)


SPECS: dict[str, ContainerSpec] = {
    # An OCI image's entrypoint with every default: no limits, no user namespace.
    "app-default": _base(),
    # Debian with systemd as PID 1 on this cgroup v1 host: a terminal, every limit, its
    # name=systemd subtree writable.
    "system-limits": _base(
        args=("/sbin/init",),
        env=(PATH,),
        system=True,
        terminal=True,
        stop_signal="SIGRTMIN+3",
        cpu_quota=150_000,
        cpuset="0-1",
        memory=512 * MiB,
        memory_swap=1024 * MiB,
        pids=512,
        io_weight=500,
        systemd_hierarchy="/sys/fs/cgroup/systemd",
    ),
    # busybox init in a user namespace: the container's root is host uid 100000.
    "userns": _base(
        args=("/sbin/init",),
        env=(PATH,),
        system=True,
        stop_signal="SIGUSR2",
        uid_maps=USERNS,
        gid_maps=USERNS,
        memory=64 * MiB,
    ),
    # Opted in: every capability, no seccomp, nothing masked.
    "privileged": _base(args=("/bin/sh",), privileged=True),
    # The default now (idmap.py): an application as www-data in its own range, whose subordinate
    # gids (/etc/subgid) start elsewhere than its uids; a terminal, so devpts needs the tty group.
    "userns-app": _base(
        uid=33,
        gid=33,
        terminal=True,
        uid_maps=(IdMap(0, 1_000_000, 65536),),
        gid_maps=(IdMap(0, 2_000_000, 65536),),
    ),
}


def _text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2) + "\n"


@pytest.mark.parametrize("case", sorted(SPECS))
def test_config_matches_golden(case: str) -> None:
    text = _text(build_config(SPECS[case]))
    golden = GOLDEN / f"{case}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden.name}: run with UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"config changed for {case}; if intended, regenerate with UPDATE_GOLDEN=1"
    )


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == sorted(SPECS)


# --- the safety properties -------------------------------------------------------------------


def _allowed_names(config: dict[str, Any]) -> set[str]:
    """Syscalls some rule allows unconditionally (a rule with args only allows some calls)."""
    rules = config["linux"]["seccomp"]["syscalls"]
    return {n for r in rules if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") for n in r["names"]}


def _mount(config: dict[str, Any], destination: str) -> dict[str, Any]:
    (mount,) = [m for m in config["mounts"] if m["destination"] == destination]
    return mount


def assert_confined(config: dict[str, Any]) -> None:
    process, linux = config["process"], config["linux"]
    assert process["noNewPrivileges"] is True
    caps = process["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert "CAP_SYS_ADMIN" not in caps[kind] and "CAP_NET_ADMIN" not in caps[kind]
    assert caps["inheritable"] == [] and caps["ambient"] == []
    assert set(MASKED_PATHS) <= set(linux["maskedPaths"])
    assert set(READONLY_PATHS) <= set(linux["readonlyPaths"])
    profile = linux["seccomp"]
    assert (profile["defaultAction"], profile["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 1)
    assert not set(seccomp.DENIED) & _allowed_names(config)
    assert not set(NEVER_ALLOWED) & {
        n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]
    }
    (clone,) = [r for r in profile["syscalls"] if r["names"] == ["clone"]]
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = [r for r in profile["syscalls"] if r["names"] == ["clone3"]]
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", 38)
    assert "ro" in _mount(config, "/sys")["options"] and "ro" in _mount(config, "/sys/fs/cgroup")["options"]
    assert linux["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert {"type": "cgroup"} in linux["namespaces"] and linux["cgroupsPath"].startswith("/")
    assert "oomScoreAdj" not in process


@pytest.mark.parametrize("case", sorted(set(SPECS) - {"privileged"}))
def test_default_configs_are_confined(case: str) -> None:
    assert_confined(build_config(SPECS[case]))


def test_privileged_has_none_of_the_restrictions() -> None:
    config = build_config(SPECS["privileged"])
    process, linux = config["process"], config["linux"]
    assert process["noNewPrivileges"] is False
    assert process["capabilities"]["bounding"] == list(ALL_CAPS)
    assert "CAP_SYS_ADMIN" in process["capabilities"]["effective"]
    assert not {"maskedPaths", "readonlyPaths", "seccomp"} & set(linux)
    assert "ro" not in _mount(config, "/sys")["options"]
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]


def test_privileged_can_be_limited_to_the_callers_capabilities() -> None:
    # runc cannot grant a capability its caller lacks (root here has no CAP_SYS_RESOURCE).
    caps = tuple(c for c in ALL_CAPS if c != "CAP_SYS_RESOURCE")
    config = build_config(_base(privileged=True, caps=caps))
    assert config["process"]["capabilities"]["permitted"] == list(caps)


def test_default_capabilities_are_dockers() -> None:
    config = build_config(SPECS["app-default"])
    assert config["process"]["capabilities"]["bounding"] == list(DEFAULT_CAPS)
    assert len(DEFAULT_CAPS) == 14 and set(DEFAULT_CAPS) < set(ALL_CAPS)


SIZES = st.integers(min_value=4 * MiB, max_value=64 * 1024 * MiB)


@st.composite
def specs(draw: st.DrawFn) -> ContainerSpec:
    memory = draw(st.none() | SIZES)
    swap = None if memory is None else draw(st.none() | st.integers(memory, 2 * memory))
    userns = draw(st.booleans())
    return _base(
        system=draw(st.booleans()), terminal=draw(st.booleans()),
        cpu_quota=draw(st.none() | st.integers(1000, 1_600_000)), cpuset=draw(st.none() | st.just("0")),
        memory=memory, memory_swap=swap, pids=draw(st.none() | st.integers(16, 100_000)),
        io_weight=draw(st.none() | st.integers(10, 1000)), uid_maps=USERNS if userns else (),
        uid=draw(st.integers(0, 65535)), gid=draw(st.integers(0, 65535)),
        arch=draw(st.sampled_from(sorted(seccomp.ARCHITECTURES))),
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(specs())
def test_every_generated_config_is_confined_and_deterministic(spec: ContainerSpec) -> None:
    config = build_config(spec)
    assert_confined(config)
    assert _text(config) == _text(build_config(ContainerSpec.from_dict(spec.to_dict())))
    resources = config["linux"]["resources"]
    assert ("memory" in resources) == (spec.memory is not None)
    assert ("pids" in resources) == (spec.pids is not None)
    assert ("user" in {ns["type"] for ns in config["linux"]["namespaces"]}) == bool(spec.uid_maps)
    mounts = {m["destination"] for m in config["mounts"]}
    assert ({"/run", "/run/lock"} <= mounts) == spec.system
    env = config["process"]["env"]
    assert ("container=virtkit" in env) == spec.system


# --- details ---------------------------------------------------------------------------------


def test_user_namespace_maps_ids_and_keeps_the_tty_group_only_when_mapped() -> None:
    config = build_config(SPECS["userns"])
    mapping = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert config["linux"]["uidMappings"] == config["linux"]["gidMappings"] == mapping
    assert "gid=5" in _mount(config, "/dev/pts")["options"]
    narrow = (IdMap(0, 100000, 1),)  # only root: gid 5 does not exist inside
    config = build_config(_base(uid_maps=narrow))
    assert config["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 1}]
    assert not [o for o in _mount(config, "/dev/pts")["options"] if o.startswith("gid=")]


def test_environment_marks_system_containers_once() -> None:
    assert "container=virtkit" not in build_config(SPECS["app-default"])["process"]["env"]
    env = build_config(_base(system=True, env=(PATH, "container=lxc")))["process"]["env"]
    assert [e for e in env if e.startswith("container=")] == ["container=lxc"]
    assert "TERM=xterm" in build_config(_base(terminal=True))["process"]["env"]


def test_limits_land_in_resources() -> None:
    resources = build_config(SPECS["system-limits"])["linux"]["resources"]
    assert resources["cpu"] == {"quota": 150_000, "period": 100_000, "cpus": "0-1"}
    assert resources["memory"] == {"limit": 512 * MiB, "swap": 1024 * MiB}
    assert resources["pids"] == {"limit": 512} and resources["blockIO"] == {"weight": 500}
    # No swap given: memory plus swap equals memory, so no swap at all.
    assert build_config(_base(memory=64 * MiB))["linux"]["resources"]["memory"]["swap"] == 64 * MiB
    assert set(build_config(SPECS["app-default"])["linux"]["resources"]) == {"devices"}


def test_systemd_gets_only_its_own_subtree_writable() -> None:
    config = build_config(SPECS["system-limits"])
    mount = _mount(config, "/sys/fs/cgroup/systemd")
    assert mount["source"] == "/sys/fs/cgroup/systemd/virtkit/c1.7c9e6679" and mount["type"] == "bind"
    assert "ro" in _mount(config, "/sys/fs/cgroup")["options"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cgroup": "virtkit/c1"}, "not an absolute path such as /virtkit/NAME"),
        ({"cgroup": ""}, "not an absolute path"),
        ({"rootfs": "rootfs"}, "root filesystem"),
        ({"args": ()}, "no command"),
        ({"memory": 64 * MiB, "memory_swap": 32 * MiB}, "below the memory limit"),
        ({"memory_swap": 32 * MiB}, "without a memory limit"),
        ({"nofile": (4096, 1024)}, "above its hard limit"),
        ({"io_weight": 5}, "outside 10..1000"),
        ({"uid_maps": USERNS, "uid": 70000}, "not mapped"),
        ({"gid_maps": USERNS}, "gid mappings without uid mappings"),
        ({"caps": ("SYS_ADMIN",)}, "unknown capabilities SYS_ADMIN"),
        ({"systemd_hierarchy": "/sys/fs/cgroup/systemd"}, "for system containers only"),
        ({"arch": "riscv64"}, "no seccomp profile for architecture 'riscv64'"),
    ],
)
def test_invalid_specs_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_config(_base(**overrides))


def test_spec_round_trips_with_its_new_fields() -> None:
    spec = _base(privileged=True, caps=("CAP_CHOWN",), systemd_hierarchy="", arch="aarch64")
    assert ContainerSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    legacy = {k: v for k, v in spec.to_dict().items() if k not in ("caps", "arch")}
    assert ContainerSpec.from_dict(legacy).caps is None


# --- the seccomp profile as data -------------------------------------------------------------


def test_syscall_groups_are_sorted_and_disjoint() -> None:
    names = [n for group in seccomp.GROUPS for n in group]
    for group in seccomp.GROUPS:
        assert list(group) == sorted(group)
    assert len(names) == len(set(names))
    assert list(seccomp.DENIED) == sorted(seccomp.DENIED)
    for arch in seccomp.ARCHITECTURES:
        assert not set(seccomp.DENIED) & set(seccomp.allowed_syscalls(arch))


def test_profile_per_architecture() -> None:
    x86, arm = seccomp.default_profile("x86_64"), seccomp.default_profile("aarch64")
    assert x86["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "arch_prctl" in x86["syscalls"][0]["names"] and "arch_prctl" not in arm["syscalls"][0]["names"]
    assert "set_tls" in arm["syscalls"][0]["names"]
    # What a normal container and its init need.
    for name in ("execve", "getrandom", "clock_gettime", "epoll_wait", "name_to_handle_at", "ptrace"):
        assert name in x86["syscalls"][0]["names"]


def _libseccomp() -> ctypes.CDLL | None:
    found = ctypes.util.find_library("seccomp")
    try:
        return ctypes.CDLL(found or "libseccomp.so.2")
    except OSError:
        return None


@pytest.mark.skipif(_libseccomp() is None, reason="needs libseccomp (runc's own dependency)")
def test_every_name_is_known_to_libseccomp() -> None:
    # runc skips names libseccomp does not know, so a typo would silently deny a syscall.
    lib = _libseccomp()
    assert lib is not None
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    arches = [lib.seccomp_arch_resolve_name(a.encode()) for a in ("x86_64", "x86", "x32", "aarch64", "arm")]
    filtered = {n for r in seccomp.default_profile("x86_64")["syscalls"] for n in r["names"]}
    names = {*seccomp.allowed_syscalls("x86_64"), *seccomp.allowed_syscalls("aarch64"), *filtered}
    unknown = sorted(
        name
        for name in names | set(seccomp.DENIED)
        if all(lib.seccomp_syscall_resolve_name_arch(arch, name.encode()) == -1 for arch in arches)
    )
    assert unknown == []
