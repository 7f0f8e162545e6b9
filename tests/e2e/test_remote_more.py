"""The rest of the CLI through a remote: snapshots, copies, publish, images, export/import, storage,
networks, the console and the host check, each family played through the local CLI and then through
`--remote` against a real `virtkit serve` (its Unix socket; storage over TLS with a token too): the
same stdout, stderr and exit codes, once what varies from run to run (times, ids, the state roots'
and files' paths) is set aside (tests/e2e/test_remote_cli.py's `normal`). Networks are made in a
network namespace of the test's own, one per side, since both sides make the same bridges."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import cliproc
from tests.apiserver import Server, servers  # noqa: F401  (the fixture)
from tests.e2e.conftest import VIRTKIT
from tests.e2e.test_remote_cli import (  # noqa: F401  (fixtures)
    Run,
    Step,
    _token,
    cleanup,
    cli,
    normal,
    root_of,
)
from tests.netns import own_netns

# `@FILES` is a directory of the side that plays the scenario (the client's files: archives).
SNAPSHOTS: list[list[str]] = [
    ["create", "tiny", "c1", "--container"],
    ["snapshot", "list", "c1"],
    ["snapshot", "create", "c1"],
    ["snapshot", "create", "c1", "s1", "--expiry", "7d"],
    ["snapshot", "create", "c1", "s1"],
    ["snapshot", "create", "c1", "s2", "--stateful"],
    ["snapshot", "create", "c1", "s2", "--expiry", "soon"],
    ["snapshot", "create", "nope"],
    ["snapshot", "list", "c1"],
    ["snapshot", "list", "c1", "--json"],
    ["snapshot", "list", "nope"],
    ["snapshot", "show", "c1", "s1"],
    ["snapshot", "show", "c1", "s1", "--json"],
    ["snapshot", "show", "c1", "nope"],
    ["snapshot", "show", "nope", "s1"],
    ["snapshot", "show", "c1", "Bad_Snap"],
    ["snapshot", "restore", "c1", "snap0"],
    ["--json", "snapshot", "restore", "c1", "s1"],
    ["snapshot", "restore", "c1", "nope"],
    ["snapshot", "delete", "c1", "snap0"],
    ["snapshot", "delete", "c1", "snap0"],
    ["snapshot", "prune", "c1"],
    # copies
    ["copy", "c1", "c2"],
    ["copy", "c1", "c3", "--full", "--json"],
    ["copy", "c1", "c4", "--snapshot", "s1"],
    ["copy", "c1", "c2"],
    ["copy", "c1", "c5", "--snapshot", "nope"],
    ["copy", "nope", "c5"],
    ["copy", "c1"],
    ["copy", "--flatten", "c2"],
    ["copy", "--flatten", "c2", "c6"],
    ["--json", "copy", "--flatten", "c3"],
    ["start", "c4"],
    ["copy", "c4", "c6"],
    ["stop", "c4", "--force"],
    # images
    ["publish", "c1", "--alias", "pub1"],
    ["publish", "c1", "--alias", "pub1"],
    ["publish", "c1", "--snapshot", "s1", "--alias", "pub2", "--json"],
    ["publish", "nope"],
    ["image", "list"],
    ["image", "show", "pub1"],
    ["image", "show", "pub1", "--json"],
    ["image", "show", "nope"],
    ["image", "alias", "add", "pub1", "extra"],
    ["image", "alias", "add", "pub1", "Bad_Name"],
    ["image", "alias", "add", "nope", "more"],
    ["image", "alias", "add", "pub2", "extra"],
    ["--json", "image", "alias", "remove", "extra"],
    ["image", "alias", "remove", "extra"],
    ["image", "delete", "pub2"],
    ["image", "delete", "tiny"],
    ["image", "delete", "nope"],
    ["image", "list", "--json"],
    # export / import: the archive is the client's
    ["export", "c1", "@FILES/c1.tar.zst"],
    ["export", "c1", "@FILES/c1.tar.zst"],
    ["export", "nope", "@FILES/nope.tar.zst"],
    ["export", "c1", "@FILES/no/such/dir/c1.tar"],
    ["export", "c1", "@FILES/c1.tar.gz", "--compress", "gzip", "--instance-only", "--json"],
    ["import", "@FILES/c1.tar.zst", "c9"],
    ["import", "@FILES/c1.tar.zst", "c9"],
    ["import", "@FILES/none.tar.zst", "c10"],
    ["import", "@FILES", "c10"],
    ["--json", "import", "@FILES/c1.tar.gz", "c10"],
    ["snapshot", "list", "c9"],
    ["list"],
    ["delete", "c2"],
    ["delete", "c3"],
    ["delete", "c4"],
    ["delete", "c9"],
    ["delete", "c10"],
    ["delete", "c1"],
]

STORAGE: list[list[str]] = [
    ["storage", "pool", "list"],
    ["storage", "pool", "create", "p1"],
    ["storage", "pool", "create", "p1"],
    ["storage", "pool", "create", "p2", "--driver", "zfs"],
    ["storage", "pool", "create", "p2", "--path", "relative/dir"],
    ["storage", "pool", "create", "Bad_Pool"],
    ["storage", "pool", "show", "p1"],
    ["storage", "pool", "show", "p1", "--json"],
    ["storage", "pool", "show", "nope"],
    ["volume", "create", "p1", "v1", "--size", "64MiB", "--limit-read-iops", "100"],
    ["volume", "create", "p1", "v2", "--size", "1GiB", "--type", "filesystem"],
    ["volume", "create", "p1", "v1", "--size", "64MiB"],
    ["volume", "create", "p1", "v3", "--size", "lots"],
    ["volume", "create", "p1", "v3", "--limit-iops", "many"],
    ["volume", "create", "nope", "v3"],
    ["volume", "list"],
    ["volume", "list", "p1", "--json"],
    ["volume", "list", "nope"],
    ["volume", "show", "p1", "v1"],
    ["volume", "show", "p1", "nope"],
    ["volume", "set", "p1", "v1", "limits.write_bps=50MiB"],
    ["volume", "set", "p1", "v1", "limits.nope=1"],
    ["volume", "unset", "p1", "v1", "limits.read_iops"],
    ["volume", "unset", "p1", "v1", "limits.nope"],
    ["volume", "list", "p1"],
    ["volume", "resize", "p1", "v1", "128MiB"],
    ["volume", "resize", "p1", "v1", "128MiB"],
    ["volume", "resize", "p1", "v1", "64MiB"],
    ["volume", "resize", "p1", "v1", "lots"],
    ["storage", "pool", "list"],
    ["create", "tiny", "c1", "--container"],
    ["volume", "attach", "p1", "v2", "c1", "/mnt/data"],
    ["volume", "attach", "p1", "v2", "c1", "/mnt/data"],
    ["volume", "attach", "p1", "v1", "nope"],
    ["volume", "show", "p1", "v2", "--json"],
    ["volume", "show", "p1", "v2"],
    ["volume", "delete", "p1", "v2"],
    ["volume", "detach", "p1", "v2", "c1", "--json"],
    ["volume", "detach", "p1", "v2", "c1"],
    ["volume", "delete", "p1", "v1"],
    ["volume", "delete", "p1", "v1"],
    ["storage", "pool", "delete", "p1"],
    ["storage", "volume", "delete", "p1", "v2"],
    ["storage", "pool", "delete", "p1"],
    ["storage", "pool", "delete", "default"],
    ["storage", "pool", "delete", "p1"],
    ["delete", "c1"],
]

NETWORKS: list[list[str]] = [
    ["network", "list"],
    ["network", "create", "web", "--subnet", "10.77.0.0/24"],
    ["network", "create", "web", "--subnet", "10.79.0.0/24"],
    ["network", "create", "Bad_Name"],
    ["network", "create", "public", "--subnet", "8.8.8.0/24"],
    ["network", "create", "taken", "--subnet", "10.77.0.0/24"],
    ["network", "create", "iso", "--type", "isolated", "--subnet", "10.78.0.0/24", "--dns-domain", "lab"],
    ["network", "list"],
    ["network", "reconcile"],
    ["network", "show", "web"],
    ["network", "show", "iso", "--json"],
    ["network", "show", "nope"],
    ["create", "tiny", "c1", "--container", "--network", "web", "--ip", "10.77.0.50"],
    ["network", "forward", "add", "web", "8080", "c1:80"],
    ["network", "forward", "add", "web", "8080", "c1"],
    ["network", "forward", "add", "web", "5353/udp", "c1:53"],
    ["network", "forward", "add", "iso", "8082", "c1"],
    ["network", "forward", "add", "web", "8083", "nope"],
    ["network", "forward", "list", "web"],
    ["network", "forward", "list", "web", "--json"],
    ["network", "forward", "list", "iso"],
    ["network", "show", "web"],
    ["network", "forward", "remove", "web", "5353/udp"],
    ["network", "forward", "remove", "web", "9999"],
    ["network", "forward", "remove", "web", "abc"],
    ["network", "attach", "iso", "c1", "--ip", "10.78.0.9"],
    ["network", "show", "iso"],
    ["network", "detach", "iso", "c1"],
    ["network", "delete", "web"],
    ["delete", "c1"],
    ["network", "delete", "web"],
    ["--json", "network", "list"],
    ["network", "delete", "iso"],
    ["network", "delete", "nope"],
    ["network", "list"],
]


def play(run: Run, scenario: list[list[str]], remote: str | None, hide: list[Path],
         files: Path) -> list[Step]:  # fmt: skip
    """Each step run here or (`--remote REMOTE`) there; its output with `hide` paths set aside."""
    steps = []
    for args in scenario:
        given = [a.replace("@FILES", str(files)) for a in args]
        done = run(*(["--remote", remote] if remote else []), *given)
        shown = " ".join(args)
        steps.append(Step(shown, done.returncode, tidy(done.stdout, hide), tidy(done.stderr, hide)))
    return steps


LAYER = re.compile(r"\b[0-9a-f]{32,64}\b")


def tidy(text: str, hide: list[Path]) -> str:
    """`normal`, and the ids it leaves: layers and fingerprints of what was made in the run."""
    if text.lstrip().startswith(("{", "[")):
        try:
            document = json.loads(text)
        except ValueError:
            pass
        else:
            text = json.dumps(_drop(document), indent=1, sort_keys=True)
    text = re.sub(r"\b52:54:00(:[0-9a-f]{2}){3}\b", "MAC", text)  # before `normal` sees "30s" in one
    text = re.sub(r"\b[0-9a-f]{12}\b", "HEX12", normal(text, hide))
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d", "TIME", text)  # image list: to the minute
    text = re.sub(r"dnsmasq pid \d+", "dnsmasq pid N", text)
    # a pool's free space moves with whatever else writes to its file system meanwhile
    text = re.sub(r"\S+ (ok|unavailable)$", r"FREE \1", text, flags=re.MULTILINE)
    text = re.sub(r"^Free: .*$", "Free: N", text, flags=re.MULTILINE)
    return LAYER.sub("HEX", re.sub(r"\bvk[0-9a-f]{8}n(\d+)", r"vkIDn\1", text))


DROPPED = {"layers", "fingerprint", "created", "expires_at", "expiry", "lower", "usage", "free", "size",
           "dnsmasq_pid", "mac", "device"}


def _drop(value: object) -> object:
    if isinstance(value, dict):
        return {k: "*" if k in DROPPED else _drop(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_drop(v) for v in value]
    return value


def compare(local: list[Step], remote: list[Step]) -> None:
    pairs = zip(local, remote, strict=True)
    differ = [f"{here}\n  remote: {there}" for here, there in pairs if here != there]
    assert not differ, "local and remote differ:\n" + "\n".join(differ)


def first_codes(steps: list[Step]) -> dict[str, int]:
    """Each step's exit code, the first time it was run."""
    codes: dict[str, int] = {}
    for step in steps:
        codes.setdefault(step.args, step.code)
    return codes


@contextlib.contextmanager
def side(run: Run, root: Path, remote: str | None) -> Iterator[None]:
    """A side's leftovers removed whatever happens: instances (clones first), then networks."""
    try:
        yield
    finally:
        where = ["--remote", remote] if remote else ["--remote", "local", "--root", str(root)]
        listed = run(*where, "list", "--json")
        names = sorted((i["name"] for i in json.loads(listed.stdout or "[]")), reverse=True)
        for name in names:
            run(*where, "delete", "--force", name)
        for network in json.loads(run(*where, "network", "list", "--json").stdout or "[]"):
            run(*where, "network", "delete", network["name"])


ENVS: dict[int, dict[str, str]] = {}  # id(run) -> its environment


def _cli(env: dict[str, str]) -> Run:
    env = {**env, "COLUMNS": "400"}  # tables unwrapped: the state roots' paths whole, to be set aside
    run = cli(env)
    ENVS[id(run)] = env
    return run


def _sides(tmp_path: Path, root_of: Callable[[str], Path], servers: Callable[..., Server],  # noqa: F811
           transport: str = "unix", role: str = "operator",
           ) -> tuple[Run, Path, Run, Path, Callable[[], Server]]:  # fmt: skip
    """(local run, local root, remote run, server root, start the server) of one test."""
    config = tmp_path / "config"
    local_root, server_root = root_of("local"), root_of("serve")  # same length: same table widths
    local = _cli({"VIRTKIT_ROOT": str(local_root), "VIRTKIT_CONFIG_DIR": str(config)})
    remote = _cli({"VIRTKIT_ROOT": str(tmp_path / "client-root"), "VIRTKIT_CONFIG_DIR": str(config)})

    def start() -> Server:
        if transport == "unix":
            server = servers(server_root)
            added = remote("remote", "add", "far", server.url)
        else:
            server = servers(server_root, tls=tmp_path / "tls")
            assert server.cert is not None
            token = _token(local, server_root, role=role)
            added = remote("remote", "add", "far", server.url, "--token", token,
                           "--certificate", str(server.cert))  # fmt: skip
        assert added.returncode == 0, added.stderr
        return server

    return local, local_root, remote, server_root, start


def _files(tmp_path: Path, name: str) -> Path:
    made = tmp_path / name / "files"
    made.mkdir(parents=True)
    return made


def test_snapshots_copies_images_backups(
    tmp_path: Path, root_of: Callable[[str], Path], servers: Callable[..., Server],  # noqa: F811
) -> None:
    local, local_root, remote, server_root, start = _sides(tmp_path, root_of, servers)
    began = time.monotonic()
    local_files = _files(tmp_path, "local")
    with side(local, local_root, None):
        here = play(local, SNAPSHOTS, None, [local_root, local_files], local_files)
    middle = time.monotonic()
    start()
    remote_files = _files(tmp_path, "remote")
    with side(remote, server_root, "far"):
        there = play(remote, SNAPSHOTS, "far", [server_root, remote_files], remote_files)
    print(f"snapshots: local {middle - began:.1f}s, remote {time.monotonic() - middle:.1f}s")
    prune = SNAPSHOTS.index(["snapshot", "prune", "c1"])  # the one refused: the API has no prune
    assert there[prune].code == 2 and "does not work through a remote" in there[prune].stderr
    assert here[prune].code == 0, here[prune].stderr
    there[prune] = here[prune]
    compare(here, there)
    codes = first_codes(here)
    assert codes["snapshot create c1 s1 --expiry 7d"] == 0
    assert codes["copy c1 c3 --full --json"] == 0
    assert codes["import @FILES/c1.tar.zst c9"] == 0
    assert codes["snapshot show c1 nope"] == 1 and codes["snapshot show c1 Bad_Snap"] == 2
    assert (remote_files / "c1.tar.zst").stat().st_size > 0
    assert sorted(p.name for p in remote_files.iterdir()) == sorted(p.name for p in local_files.iterdir())
    assert not (tmp_path / "client-root").exists()


LOCAL_STORAGE: list[list[Step]] = []  # STORAGE played locally, once per module


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_storage(
    transport: str, tmp_path: Path, root_of: Callable[[str], Path], servers: Callable[..., Server],  # noqa: F811
) -> None:
    local, local_root, remote, server_root, start = _sides(tmp_path, root_of, servers, transport, "admin")
    if not LOCAL_STORAGE:  # what the local side says does not depend on the remote's transport: played once
        with side(local, local_root, None):
            LOCAL_STORAGE.append(play(local, STORAGE, None, [local_root], tmp_path))
    here = LOCAL_STORAGE[0]
    start()
    with side(remote, server_root, "far"):
        there = play(remote, STORAGE, "far", [server_root], tmp_path)
    compare(here, there)
    codes = first_codes(here)
    assert codes["storage pool create p1"] == 0 and codes["volume create p1 v3 --size lots"] == 2
    assert codes["volume attach p1 v2 c1 /mnt/data"] == 0
    assert not (tmp_path / "client-root").exists()


def test_networks(
    tmp_path: Path, root_of: Callable[[str], Path], servers: Callable[..., Server],  # noqa: F811
) -> None:
    local, local_root, remote, server_root, start = _sides(tmp_path, root_of, servers)
    with own_netns(), side(local, local_root, None):
        here = play(local, NETWORKS, None, [local_root], tmp_path)
    with own_netns():
        start()  # the server and what it makes live in this namespace
        with side(remote, server_root, "far"):
            there = play(remote, NETWORKS, "far", [server_root], tmp_path)
    compare(here, there)
    codes = first_codes(here)
    assert codes["network create web --subnet 10.77.0.0/24"] == 0
    assert codes["network forward add web 8080 c1:80"] == 0
    assert codes["network create public --subnet 8.8.8.0/24"] == 2


def test_console_and_host_check(
    tmp_path: Path, root_of: Callable[[str], Path], servers: Callable[..., Server],  # noqa: F811
) -> None:
    local, local_root, remote, server_root, start = _sides(tmp_path, root_of, servers)
    start()
    outputs = []
    for run, where, root in ((local, [], local_root), (remote, ["--remote", "far"], server_root)):
        with side(run, root, where[1] if where else None):
            assert run(*where, "launch", "tiny", "c1", "--container", "--wait").returncode == 0
            said = cliproc.run([str(VIRTKIT), *where, "console", "c1"], input="echo hi-$((40+2))\n",
                               timeout=60, env={**os.environ, **ENVS[id(run)]})
            assert said.returncode == 0, said.stderr
            assert "hi-42" in said.stdout, said.stdout
            steps = [run(*where, *args) for args in (["console", "nope"], ["console", "Bad_Name"])]
            assert run(*where, "stop", "c1", "--force").returncode == 0
            steps.append(run(*where, "console", "c1"))
            outputs.append([(s.returncode, tidy(s.stdout, [root]), tidy(s.stderr, [root])) for s in steps])
    assert outputs[0] == outputs[1]
    assert [code for code, _out, _err in outputs[0]] == [1, 2, 1]
    logs = remote("--remote", "far", "console", "c1", "--log")
    assert logs.returncode == 2 and "logs does not work through a remote" in logs.stderr

    both = ((local, []), (remote, ["--remote", "far"]))
    checks = [run(*where, "host", "check", "--json") for run, where in both]
    assert checks[0].returncode == checks[1].returncode, checks[1].stderr
    shown = [json.loads(done.stdout) for done in checks]
    assert [c["id"] for c in shown[0]["checks"]] == [c["id"] for c in shown[1]["checks"]]
    assert shown[0]["verdict"] == shown[1]["verdict"] and shown[0]["host"] == shown[1]["host"]
    text = [run(*where, "host", "check") for run, where in both]
    assert text[0].returncode == text[1].returncode
    assert _no_space(tidy(text[0].stdout, [])) == _no_space(tidy(text[1].stdout, []))
    built = [run(*where, "image", "build", "tiny") for run, where in both]
    assert built[0].returncode == built[1].returncode == 0, built[1].stderr
    assert tidy(built[0].stdout, []) == tidy(built[1].stdout, [])
    refused = remote("--remote", "far", "host", "check", "--min-free", "1GiB")
    assert refused.returncode == 2 and "--min-free does not work through a remote" in refused.stderr


def _no_space(text: str) -> str:
    """A host check's text without its free-space line (each state root has its own)."""
    return "\n".join(line for line in text.splitlines() if "free" not in line.lower())



def test_streams_over_tls_with_a_pinned_certificate(
    tmp_path: Path, root_of: Callable[[str], Path], servers: Callable[..., Server],  # noqa: F811
) -> None:
    """Console, export and import over TLS, the server's self-signed certificate accepted by its
    fingerprint (`remote add --accept-certificate`), with an operator's token."""
    local, _local_root, remote, server_root, _start = _sides(tmp_path, root_of, servers)
    server = servers(server_root, tls=tmp_path / "tls")
    token = _token(local, server_root)
    added = remote("remote", "add", "far", server.url, "--token", token, "--accept-certificate")
    assert added.returncode == 0, added.stderr
    far = ["--remote", "far"]
    with side(remote, server_root, "far"):
        assert remote(*far, "launch", "tiny", "c1", "--container", "--wait").returncode == 0
        said = cliproc.run([str(VIRTKIT), *far, "console", "c1"], input="echo hi-$((40+2))\n",
                           timeout=60, env={**os.environ, **ENVS[id(remote)]})
        assert said.returncode == 0 and "hi-42" in said.stdout, said.stderr
        archive = tmp_path / "c1.tar.zst"
        exported = remote(*far, "export", "c1", str(archive))
        assert exported.returncode == 0 and f"Exported c1 to {archive} (" in exported.stdout, exported.stderr
        imported = remote(*far, "import", str(archive), "c2")
        assert imported.returncode == 0, imported.stderr
        assert imported.stdout.startswith("Imported container c2 from c1.tar.zst."), imported.stdout
        shown = remote(*far, "--json", "show", "c2")
        assert json.loads(shown.stdout)["name"] == "c2"
        viewer = _token(local, server_root, name="ro", role="viewer")
        added = remote("remote", "add", "ro", server.url, "--token", viewer, "--accept-certificate")
        assert added.returncode == 0, added.stderr
        refused = remote("--remote", "ro", "export", "c1", str(tmp_path / "no.tar"))
        assert refused.returncode == 1 and "Error: " in refused.stderr, refused.stderr
        assert not (tmp_path / "no.tar").exists()
