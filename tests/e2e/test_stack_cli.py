"""Stacks as a user types them: `virtkit apply -f stack.yaml` (plan, then apply), a second apply
that changes nothing, edits that change only what they touch, `scale`, `destroy` that removes
exactly what the file owns, an apply interrupted by SIGINT that the next one completes, and
invalid files refused with file, line and field. Runs in the network lab (its own namespace)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import VIRTKIT
from tests.e2e.netlab import Lab, lab  # noqa: F401  (the fixture)
from tests.e2e.test_cli import assert_clear_error

STACK = """\
name: shop
networks:
  - name: shopnet
    subnet: 10.42.0.0/24
volumes:
  - name: shop-data
    size: 64MiB
groups:
  - name: web
    image: tiny
    type: container
    count: {count}
    memory: {memory}
    networks: [shopnet]
    labels: {{tier: front}}
"""


def write(path: Path, count: int = 3, memory: str = "64MiB") -> Path:
    path.write_text(STACK.format(count=count, memory=memory))
    return path


def instances(lab: Lab) -> dict[str, dict[str, object]]:  # noqa: F811
    return {i["name"]: i for i in json.loads(lab.ok("list", "--json").stdout)}


def test_apply_again_edit_scale_destroy(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    stack = write(tmp_path / "shop.yaml")
    lab.ok("launch", "tiny", "bystander", "--container")
    planned = lab.ok("apply", "-f", str(stack), "--dry-run").stdout
    assert "+ create   network shopnet" in planned and "+ create   web-3" in planned
    assert "Plan: 5 to create, 0 to change" in planned and set(instances(lab)) == {"bystander"}

    done = lab.ok("apply", "-f", str(stack)).stdout
    assert "Applied: 5 done, 0 failed." in done
    made = instances(lab)
    assert set(made) == {"bystander", "web-1", "web-2", "web-3"}
    for name in ("web-1", "web-2", "web-3"):
        shown = made[name]
        assert shown["state"] == "running" and shown["memory"] == 64 << 20, shown
        assert [nic["network"] for nic in shown["nics"]] == ["shopnet"]  # type: ignore[attr-defined]
        labels = shown["labels"]
        assert labels["tier"] == "front" and labels["virtkit.stack"] == "shop"  # type: ignore[index]
    volumes = json.loads(lab.ok("volume", "list", "--json").stdout)
    assert [v["name"] for v in volumes] == ["shop-data"]

    again = lab.ok("apply", "-f", str(stack)).stdout
    assert again == f"No changes: stack shop matches {stack}.\n"

    write(stack, count=2, memory="96MiB")
    changed = lab.ok("apply", "-f", str(stack)).stdout
    assert "- delete   web-3  (beyond count)" in changed
    assert "~ change   web-1  (memory 64MiB -> 96MiB)" in changed
    assert "Plan: 0 to create, 2 to change, 0 to recreate, 0 to start, 1 to delete." in changed
    after = instances(lab)
    assert set(after) == {"bystander", "web-1", "web-2"}
    assert after["web-1"]["memory"] == 96 << 20
    assert after["web-1"]["created_at"] == made["web-1"]["created_at"]  # changed in place

    scaled = lab.ok("scale", "web", "--count", "4").stdout
    assert "+ create   web-3" in scaled and "+ create   web-4" in scaled
    assert {"web-3", "web-4"} <= set(instances(lab))
    down = lab.ok("scale", "web", "--count", "1").stdout
    assert down.index("web-4") < down.index("web-3") < down.index("web-2")  # newest first
    assert set(instances(lab)) == {"bystander", "web-1"}

    gone = lab.ok("destroy", "-f", str(stack)).stdout
    assert "- delete   web-1" in gone and "- delete   network shopnet" in gone
    assert "- delete   volume default/shop-data" in gone
    assert set(instances(lab)) == {"bystander"}
    assert json.loads(lab.ok("network", "list", "--json").stdout) == []
    assert json.loads(lab.ok("volume", "list", "--json").stdout) == []
    assert lab.ok("destroy", "-f", str(stack)).stdout == "Stack shop owns nothing.\n"


def test_a_network_that_was_there_before_is_used_not_owned(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    lab.ok("network", "create", "shopnet", "--subnet", "10.42.0.0/24")
    stack = write(tmp_path / "shop.yaml", count=1)
    assert "network shopnet" not in lab.ok("apply", "-f", str(stack)).stdout
    lab.ok("destroy", "-f", str(stack))
    assert [n["name"] for n in json.loads(lab.ok("network", "list", "--json").stdout)] == ["shopnet"]


def test_an_interrupted_apply_is_finished_by_the_next(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    stack = write(tmp_path / "shop.yaml", count=6)
    env = {**os.environ, "VIRTKIT_ROOT": str(lab.root)}
    argv = lab.host.argv([str(VIRTKIT), "apply", "-f", str(stack), "--parallel", "1"])
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(n.startswith("web-") for n in instances(lab)):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # to virtkit alone, as Ctrl-C reaches the foreground command
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "Interrupted: run the same command again to finish." in err
    assert "Traceback" not in err
    partial = {n for n in instances(lab) if n.startswith("web-")}
    assert 1 <= len(partial) < 6, partial
    finished = lab.ok("apply", "-f", str(stack)).stdout
    assert "Applied:" in finished and "0 failed" in finished
    now = instances(lab)
    assert {f"web-{i}" for i in range(1, 7)} == set(now)
    assert all(i["state"] == "running" for i in now.values())
    assert lab.ok("apply", "-f", str(stack)).stdout.startswith("No changes")


BAD = [
    ("groups:\n  - name: web\n    image: tiny\n    memory: lots\n",
     "s.yaml:4: groups[0].memory: invalid memory size"),
    ("groups:\n  - name: web\n    image: tiny\n    colour: red\n",
     "s.yaml:4: groups[0].colour: unknown field"),
    ("groups:\n  - name: Web\n    image: tiny\n",
     "s.yaml:2: groups[0].name: invalid group name 'Web'"),
    ("groups:\n  - {name: w, image: tiny, count: 5000}\n",
     "s.yaml:2: groups[0].count: Input should be less"),
    ("groups: [\n",
     "s.yaml:2: invalid YAML"),
    ("a: &x [1]\nb: *x\n",
     "s.yaml:1: YAML anchors and aliases are not allowed"),
    ("x: !!python/object/apply:os.system [id]\n",
     "YAML tags (tag:yaml.org,2002:python/object/apply:os.system)"),
    ("- 1\n",
     "s.yaml:1: a stack file is a mapping"),
    ("groups:\n  - {name: w, image: tiny}\n  - {name: w, image: tiny}\n",
     "s.yaml:3: groups[1].name: 'w' is listed"),
    ("groups:\n  - {name: w, image: tiny, count: 2, publish: ['80']}\n",
     "cannot publish host ports"),
    ("groups:\n  - {name: w, image: nope}\n",
     "image 'nope' not found"),
    ("groups:\n  - {name: w, image: tiny, labels: {virtkit.stack: x}}\n",
     "labels under virtkit. are virtkit's"),
    ("\xff\n",
     "not UTF-8"),
]


@pytest.mark.parametrize(("text", "said"), BAD)
def test_invalid_files_say_where_and_change_nothing(
    lab: Lab, tmp_path: Path, text: str, said: str  # noqa: F811
) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    done = lab.virtkit("apply", "-f", str(path))
    assert_clear_error(done, 2 if "not found" not in said else 1, said)
    assert instances(lab) == {}
    assert json.loads(lab.ok("network", "list", "--json").stdout) == []


def test_missing_and_huge_files(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    assert_clear_error(lab.virtkit("apply", "-f", str(tmp_path / "none.yaml")), 2, "cannot read stack file")
    huge = tmp_path / "huge.yaml"
    huge.write_text("# x\n" * 300_000)
    assert_clear_error(lab.virtkit("apply", "-f", str(huge)), 2, "a stack file is at most 1024 KiB")
    unknown = lab.virtkit("scale", "web", "--count", "2")
    assert_clear_error(unknown, 1, "group 'web' is not in any applied stack")


def test_what_cannot_change_in_place_is_recreated(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    stack = write(tmp_path / "shop.yaml", count=2)
    lab.ok("apply", "-f", str(stack))
    before = instances(lab)
    stack.write_text(stack.read_text().replace("    networks: [shopnet]\n", ""))  # the group's NICs go
    done = lab.ok("apply", "-f", str(stack)).stdout
    assert "-/+ recreate web-1" in done and "-/+ recreate web-2" in done
    assert "Plan: 0 to create, 0 to change, 2 to recreate, 0 to start, 0 to delete." in done
    after = instances(lab)
    for name in ("web-1", "web-2"):
        assert after[name]["nics"] == [] and after[name]["state"] == "running"
        assert after[name]["uuid"] != before[name]["uuid"]  # a new instance, not an edited one
    assert lab.ok("apply", "-f", str(stack)).stdout.startswith("No changes")
    lab.ok("destroy", "-f", str(stack))
    assert instances(lab) == {}
