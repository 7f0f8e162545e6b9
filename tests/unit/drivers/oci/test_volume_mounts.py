"""A container's volumes in its config.json (golden files under golden/volumes/) and the plan that turns
an instance's attachments into mounts.

After an intended change, regenerate with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/drivers/oci/test_volume_mounts.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.drivers.oci.test_bundle import SPECS, USERNS, _base, assert_confined
from virtkit.drivers.oci import mounts
from virtkit.drivers.oci.bundle import build_config
from virtkit.drivers.oci.mounts import VolumeMount
from virtkit.drivers.oci.spec import ContainerSpec
from virtkit.errors import SpecError
from virtkit.model import VolumeAttachment, VolumeType

GOLDEN = Path(__file__).parent / "golden" / "volumes"
DIR = Path("/var/lib/virtkit/instances/c1")
POOL = "/var/lib/virtkit/pools/default/filesystem"


def attachment(name: str, path: str | None, device: str = "vol0", **overrides: Any) -> VolumeAttachment:
    values: dict[str, Any] = dict(
        pool="default", name=name, type=VolumeType.FILESYSTEM, format="dir", source=f"{POOL}/{name}",
        device=device, path=path,
    )  # fmt: skip
    values.update(overrides)
    return VolumeAttachment(**values)


TWO = mounts.plan([attachment("data", "/mnt/data"), attachment("www", "/srv/www", "vol1")], DIR)

CASES: dict[str, tuple[ContainerSpec, tuple[VolumeMount, ...]]] = {
    # busybox init in a user namespace with two volumes: bound from their staging points, after /run.
    "userns-two": (SPECS["userns"], TWO),
    # An application without a user namespace (idmap=host): the same binds, ids the host's.
    "app-one": (SPECS["app-default"], TWO[:1]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_matches_golden(case: str) -> None:
    spec, volumes = CASES[case]
    text = json.dumps(build_config(spec, volumes), indent=2) + "\n"
    golden = GOLDEN / f"{case}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden.name}: run with UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"config changed for {case}; if intended, regenerate with UPDATE_GOLDEN=1"
    )


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == sorted(CASES)


def test_volumes_come_last_bound_from_their_stage_nodev_and_stay_confined() -> None:
    config = build_config(SPECS["userns"], TWO)
    assert config["mounts"][: -len(TWO)] == build_config(SPECS["userns"])["mounts"]
    assert config["mounts"][-2:] == [
        {
            "destination": "/mnt/data",
            "type": "bind",
            "source": f"{DIR}/volumes/vol0",
            "options": ["rbind", "nodev"],
        },
        {
            "destination": "/srv/www",
            "type": "bind",
            "source": f"{DIR}/volumes/vol1",
            "options": ["rbind", "nodev"],
        },
    ]
    assert_confined(config)
    assert {k: v for k, v in config.items() if k != "mounts"} == {
        k: v for k, v in build_config(SPECS["userns"]).items() if k != "mounts"
    }


def test_the_plan_keeps_the_attachment_order_and_round_trips() -> None:
    assert [(m.name, m.stage, m.destination) for m in TWO] == [
        ("default/data", f"{DIR}/volumes/vol0", "/mnt/data"),
        ("default/www", f"{DIR}/volumes/vol1", "/srv/www"),
    ]
    saved = json.loads(json.dumps({"volumes": [m.to_dict() for m in TWO]}))
    assert mounts.saved(saved) == TWO and mounts.saved({}) == ()


@pytest.mark.parametrize(
    ("volume", "words"),
    [
        (attachment("disk", None, type=VolumeType.BLOCK, format="qcow2"), "block volume"),
        (attachment("disk", "/mnt", type=VolumeType.BLOCK, format="qcow2"), "block volume"),
        (attachment("data", None), "no path inside"),
    ],
)
def test_what_a_container_cannot_mount_is_refused(volume: VolumeAttachment, words: str) -> None:
    with pytest.raises(SpecError, match=words):
        mounts.plan([volume], DIR)


@pytest.mark.parametrize(
    ("destination", "stage"),
    [("mnt", "/s"), ("/", "/s"), ("/mnt/../etc", "/s"), ("/mnt/./x", "/s"), ("/a//b", "/s"), ("/m", "s")],
)
def test_the_builder_refuses_a_mount_that_is_not_plain(destination: str, stage: str) -> None:
    with pytest.raises(SpecError, match="volume default/x"):
        build_config(_base(uid_maps=USERNS), (VolumeMount("default/x", "/src", stage, destination),))


def test_the_builder_refuses_two_volumes_at_one_path() -> None:
    twice = (VolumeMount("default/a", "/a", "/s/0", "/m"), VolumeMount("default/b", "/b", "/s/1", "/m"))
    with pytest.raises(SpecError, match="cannot be mounted at '/m'"):
        build_config(_base(), twice)
