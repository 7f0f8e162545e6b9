"""Stack files (`virtkit apply -f stack.yaml`): the networks, volumes and instance groups wanted.

    name: shop                      # the stack's name (default: the file's name without .yaml)
    networks:
      - name: shopnet
        subnet: 10.42.0.0/24        # optional; type: nat (default) or isolated
    volumes:
      - name: shop-data
        size: 1GiB                  # pool: default; type: block (VM disk) or filesystem
    groups:
      - name: web                   # instances web-1 ... web-N
        image: tiny
        type: container             # or vm (default: what the image is, a container first)
        count: 3
        cpus: 1
        memory: 64MiB
        disk: 1GiB                  # VMs only
        networks: [shopnet]         # the CLI's --network forms: "shopnet,limit=10mbit"
        publish: ["8080:80"]        # the CLI's --publish forms (a group of count 1: ports are the host's)
        user-data: cloud.yaml       # cloud-init user-data file, relative to the stack file
        labels: {tier: front}
        config: {devices: emulated} # other launch settings, as instance config keys
        wait: false                 # wait for each guest to be ready

The YAML is read safely (no tags, no anchors or aliases, at most MAX_BYTES) and every error names
the file, the line and the field: `shop.yaml:12: groups[0].memory: invalid memory size 'lots'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from virtkit.errors import SpecError
from virtkit.units import parse_size, validate_name

MAX_BYTES = 1 << 20
MAX_COUNT = 1000
STACK_LABEL = "virtkit.stack"  # on every instance a stack made: whose it is
GROUP_LABEL = "virtkit.group"
INDEX_LABEL = "virtkit.index"

Lines = dict[tuple[str | int, ...], int]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _name(value: str, what: str) -> str:
    try:
        return validate_name(value, what=what)
    except SpecError as exc:
        raise ValueError(exc.message) from None


def _size(value: int | str | None, what: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value, what=what)
    except SpecError as exc:
        raise ValueError(exc.message) from None


class NetworkSpec(Strict):
    name: str
    type: Literal["nat", "isolated"] = "nat"
    subnet: str | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _name(value, "network name")


class VolumeSpec(Strict):
    name: str
    pool: str = "default"
    size: int | str = "1GiB"
    type: Literal["block", "filesystem"] = "block"

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _name(value, "volume name")

    @field_validator("pool")
    @classmethod
    def _valid_pool(cls, value: str) -> str:
        return _name(value, "pool name")

    @field_validator("size")
    @classmethod
    def _valid_size(cls, value: int | str) -> int | None:
        return _size(value, "volume size")


class GroupSpec(Strict):
    name: str
    image: str = Field(min_length=1, max_length=200)
    type: Literal["vm", "container"] | None = None
    count: int = Field(default=1, ge=0, le=MAX_COUNT)
    cpus: float = Field(default=1, gt=0, le=1024)
    memory: int | str = "256MiB"
    disk: int | str | None = None
    networks: list[str] = Field(default_factory=list, max_length=16)
    publish: list[str] = Field(default_factory=list, max_length=64)
    user_data: str | None = Field(default=None, alias="user-data")
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    config: dict[str, str] = Field(default_factory=dict, max_length=64)
    wait: bool = False

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if len(value) > 58:  # instance names are NAME-INDEX: room for "-1000"
            raise ValueError(f"group name {value[:70]!r} is too long: at most 58 characters (instances are "
                             "NAME-N)")  # fmt: skip
        return _name(value, "group name")

    @field_validator("memory")
    @classmethod
    def _valid_memory(cls, value: int | str) -> int | None:
        return _size(value, "memory size")

    @field_validator("disk")
    @classmethod
    def _valid_disk(cls, value: int | str | None) -> int | None:
        return _size(value, "disk size")

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key in labels:
            if key.startswith("virtkit."):
                raise ValueError(f"label {key!r}: labels under virtkit. are virtkit's own")
        return labels

    def instance_name(self, index: int) -> str:
        return f"{self.name}-{index}"


class StackSpec(Strict):
    name: str
    networks: list[NetworkSpec] = Field(default_factory=list, max_length=64)
    volumes: list[VolumeSpec] = Field(default_factory=list, max_length=256)
    groups: list[GroupSpec] = Field(default_factory=list, max_length=256)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _name(value, "stack name")

    def group(self, name: str) -> GroupSpec:
        for group in self.groups:
            if group.name == name:
                return group
        raise SpecError(f"stack {self.name!r} has no group {name!r}",
                        hint="groups: " + (", ".join(g.name for g in self.groups) or "none"))  # fmt: skip


def load(path: Path) -> tuple[StackSpec, Path]:
    """The stack `path` describes, and the directory its relative file names are in."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read stack file {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise SpecError(f"{path}: a stack file is at most {MAX_BYTES >> 10} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse(text, path), path.resolve().parent


def parse(text: str, path: Path) -> StackSpec:
    """A StackSpec from the YAML `text` of file `path` (for messages, and the default name)."""
    document, lines = _read_yaml(text, path)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise SpecError(f"{path}:1: a stack file is a mapping (name, networks, volumes, groups)")
    document.setdefault("name", _default_name(path))
    try:
        spec = StackSpec.model_validate(document)
    except ValidationError as exc:
        raise _located(exc, path, lines) from None
    _check_unique(spec, path, lines)
    return spec


def _default_name(path: Path) -> str:
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    return stem.lower().replace("_", "-").replace(".", "-")


def _read_yaml(text: str, path: Path) -> tuple[Any, Lines]:
    """The document, and the line of every value by its path; anchors, aliases and tags refused."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            anchor = getattr(event, "anchor", None)
            tag = getattr(event, "tag", None)
            line = event.start_mark.line + 1 if event.start_mark is not None else 1
            if isinstance(event, yaml.AliasEvent) or anchor:
                raise SpecError(f"{path}:{line}: YAML anchors and aliases are not allowed in a stack file")
            if tag and not getattr(event, "implicit", True):
                raise SpecError(f"{path}:{line}: YAML tags ({tag}) are not allowed in a stack file")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}: invalid YAML: {problem}") from None
    lines: Lines = {}
    if node is not None:
        _walk(node, (), lines)
    return document, lines


def _walk(node: yaml.Node, where: tuple[str | int, ...], lines: Lines) -> None:
    lines[where] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _walk(value, (*where, str(key.value)), lines)
            lines.setdefault((*where, str(key.value), "<key>"), key.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*where, index), lines)


def _field(where: tuple[str | int, ...]) -> str:
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"


def _line(where: tuple[str | int, ...], lines: Lines) -> int:
    while where and where not in lines:
        where = where[:-1]
    return lines.get(where, 1)


def _located(exc: ValidationError, path: Path, lines: Lines) -> SpecError:
    error = exc.errors()[0]
    where = tuple(part for part in error.get("loc", ()) if isinstance(part, str | int))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "unknown field"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return SpecError(f"{path}:{_line(where, lines)}: {_field(where)}: {message}{more}",
                     hint="see docs/stacks.md for the fields a stack file takes")  # fmt: skip


def _check_unique(spec: StackSpec, path: Path, lines: Lines) -> None:
    listed = {"networks": [n.name for n in spec.networks], "volumes": [v.name for v in spec.volumes],
              "groups": [g.name for g in spec.groups]}  # fmt: skip
    for part, names in listed.items():
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                line = _line((part, index, "name"), lines)
                raise SpecError(f"{path}:{line}: {part}[{index}].name: {name!r} is listed twice")
            seen.add(name)
    for index, group in enumerate(spec.groups):
        if group.publish and group.count > 1:
            line = _line(("groups", index, "publish"), lines)
            raise SpecError(f"{path}:{line}: groups[{index}].publish: a group of {group.count} cannot "
                            "publish host ports (each port is the host's once)",
                            hint="publish from a group of count 1")  # fmt: skip
