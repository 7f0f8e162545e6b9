"""Request bodies of the API (pydantic): what a client sends, checked before any work starts.

Sizes and rates may be numbers (bytes, bits/s) or strings ("256MiB", "10mbit"); names are checked
by the ops they reach, which say exactly what was wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from virtkit.errors import SpecError
from virtkit.model import Role

if TYPE_CHECKING:
    from virtkit.ops.lifecycle import Request

Name = Field(min_length=1, max_length=63)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstanceBody(Strict):
    """`POST /1.0/instances`: what `virtkit launch|create` take."""

    image: str = Field(min_length=1, max_length=200)
    name: str = Name
    kind: str | None = Field(default=None, pattern=r"^(vm|container)$")
    cpus: float = Field(default=1, gt=0, le=1024)
    memory: int | str = "256MiB"
    disk: int | str | None = None
    config: dict[str, str] = Field(default_factory=dict, max_length=64)
    arch: str | None = Field(default=None, max_length=32)
    # As the CLI takes them: "NET[,ip=A][,mac=M][,limit=RATE][,model=M]" and "HOSTPORT:PORT[/proto]".
    nics: list[str] = Field(default_factory=list, max_length=16)
    publish: list[str] = Field(default_factory=list, max_length=64)
    allow_host: bool = False
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    start: bool = True
    wait: bool = False

    def request(self) -> Request:
        """The ops request this body asks for; SpecError (400) for what the CLI would refuse."""
        from virtkit.model import InstanceKind
        from virtkit.ops.lifecycle import Request
        from virtkit.ops.nics import parse_nic, parse_publish
        from virtkit.units import parse_size

        return Request(
            image=self.image, name=self.name,
            kind=InstanceKind(self.kind) if self.kind else None,
            cpus=self.cpus, memory=parse_size(self.memory, what="memory size"),
            disk=parse_size(self.disk, what="disk size") if self.disk is not None else None,
            config=dict(self.config), arch=self.arch,
            nics=tuple(parse_nic(text) for text in self.nics),
            publish=tuple(parse_publish(text, self.name) for text in self.publish),
            allow_host=self.allow_host,
            labels=self._labels() or None,
        )  # fmt: skip

    def _labels(self) -> dict[str, str]:
        for key, value in self.labels.items():
            if not key or len(key) > 128 or len(value) > 256:
                raise SpecError(f"invalid label {key[:60]!r}: keys of 1-128 characters, values up to 256")
            if key.startswith("virtkit."):
                raise SpecError(f"label {key[:60]!r}: labels under virtkit. are virtkit's own")
        return dict(self.labels)


class ActionBody(Strict):
    """`POST /1.0/instances/NAME/ACTION`: start, stop, restart, pause, resume."""

    force: bool = False
    wait: bool = False
    timeout: float = Field(default=30, ge=0, le=3600)


class ExecBody(Strict):
    command: list[str] = Field(min_length=1, max_length=4096)
    timeout: float = Field(default=60, ge=0.1, le=86400)


class SettingsBody(Strict):
    """`PATCH /1.0/instances/NAME`: settings as `virtkit set NAME key=value` takes them."""

    config: dict[str, str] = Field(min_length=1, max_length=64)


class TokenBody(Strict):
    name: str = Name
    role: Role = Role.VIEWER
    expires: str | None = Field(default=None, max_length=32)


class ErrorDocument(BaseModel):
    """What every error answer is: the error's class, what was wrong, and what to do."""

    error: str
    message: str
    hint: str | None = None


class WaitQuery(Strict):
    timeout: float = Field(default=30, ge=0, le=3600)
