"""`virtkit apply|destroy|scale`: a stack file's desired instances, made to be what exists.

A plan compares the file with what the stack owns — the instances labelled virtkit.stack=NAME and
the networks and volumes its StackRecord says it created — and lists steps, like `terraform plan`:

    + create     web-3                          a missing instance of a group
    ~ change     web-1  memory 64MiB -> 96MiB   CPUs, memory or labels: changed in place (`set`)
    -/+ recreate web-2  image changed           image, type, disk, networks, publish, config,
                                                user-data: deleted and launched again
    > start      web-4                          exists (an interrupted apply) but is stopped
    - delete     web-5                          beyond `count`, newest (highest index) first

Instance steps run in parallel (bounded; deletions first and wider, since a graceful stop is
mostly waiting), networks and volumes before them and their deletions after. One failure does not
stop the others; each step is whole or undone by the op it calls. An interrupted apply (Ctrl-C)
lets the running steps finish and skips the rest: the next apply plans what is left. An instance
with a stack's name but not its label is never touched: the plan refuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from virtkit import cloudinit
from virtkit.drivers.base import get_driver
from virtkit.errors import ConflictError, NotFoundError, VirtkitError
from virtkit.model import InstanceRecord, InstanceState, NetworkRecord, StackRecord, VolumeRecord
from virtkit.ops.lifecycle import DriverFor, Lifecycle, Request, default_kind
from virtkit.stackspec import GROUP_LABEL, INDEX_LABEL, STACK_LABEL, GroupSpec, StackSpec
from virtkit.store import Store
from virtkit.units import format_size

log = logging.getLogger(__name__)

SPEC_LABEL = "virtkit.spec"  # digest of what cannot change in place; a new one means recreate
PARALLEL = 4
DELETE_WIDTH = 4  # deletions run this many times --parallel at once
STOP_TIMEOUT = 30.0
SYMBOLS = {"create": "+", "change": "~", "recreate": "-/+", "start": ">", "delete": "-"}


@dataclass(frozen=True)
class Step:
    """One thing to do: `action` on `kind` (instance, network, volume) `target`."""

    action: str
    kind: str
    target: str
    detail: str = ""
    group: str = ""
    index: int = 0

    def line(self) -> str:
        what = self.target if self.kind == "instance" else f"{self.kind} {self.target}"
        detail = f"  ({self.detail})" if self.detail else ""
        return f"{SYMBOLS[self.action]:>3} {self.action:<8} {what}{detail}"

    def to_dict(self) -> dict[str, object]:
        return {"action": self.action, "kind": self.kind, "target": self.target, "detail": self.detail}


@dataclass
class Plan:
    spec: StackSpec
    base: Path
    steps: list[Step] = field(default_factory=list)
    file: str = ""
    destroy: bool = False
    digests: dict[str, str] = field(default_factory=dict)  # group -> SPEC_LABEL, made once when planned

    def summary(self) -> str:
        counts = {action: sum(1 for s in self.steps if s.action == action) for action in SYMBOLS}
        return ("Plan: " + ", ".join(f"{counts[a]} to {a}" for a in ("create", "change", "recreate", "start",
                                                                    "delete")) + ".")  # fmt: skip


@dataclass
class Applied:
    done: list[Step] = field(default_factory=list)
    failed: list[tuple[Step, VirtkitError]] = field(default_factory=list)
    skipped: list[Step] = field(default_factory=list)  # not started: interrupted
    interrupted: bool = False


Progress = Callable[[Step, str, VirtkitError | None], None]  # step, "start"|"done"|"failed", error


def _no_progress(_step: Step, _what: str, _error: VirtkitError | None) -> None:
    pass


class Stacks:
    def __init__(self, root: Path, store: Store, drivers: DriverFor = get_driver) -> None:
        self.root, self.store, self.drivers = root, store, drivers
        self.life = Lifecycle(root, store, drivers)

    # --- planning -------------------------------------------------------------------------------

    def plan(self, spec: StackSpec, base: Path, file: str = "") -> Plan:
        """The steps that make what exists match `spec` (relative files are under `base`)."""
        plan = Plan(spec, base, file=file)
        owned = self._owned_instances(spec.name)
        known = self.store.find(StackRecord, spec.name)
        for network in spec.networks:
            if self.store.find(NetworkRecord, network.name) is None:
                plan.steps.append(Step("create", "network", network.name, network.subnet or "", ))
        for volume in spec.volumes:
            if self.store.find(VolumeRecord, volume.pool, volume.name) is None:
                plan.steps.append(Step("create", "volume", f"{volume.pool}/{volume.name}",
                                       format_size(int(volume.size))))  # fmt: skip
        groups = {group.name: group for group in spec.groups}
        for record in sorted(owned, key=_newest_first):
            group = groups.get(record.labels.get(GROUP_LABEL, ""))
            if group is None or _index(record) > group.count:
                plan.steps.append(Step("delete", "instance", record.name, "beyond count" if group else
                                       "group removed", record.labels.get(GROUP_LABEL, ""), _index(record)))
        for group in spec.groups:
            plan.digests[group.name] = self._digest(group, base)
            plan.steps += self._group_steps(spec, group, plan.digests[group.name], owned)
        if known is not None:
            plan.steps += self._dropped(known, spec)
        return plan

    def plan_destroy(self, spec: StackSpec, base: Path) -> Plan:
        """Every instance the stack owns, then the networks and volumes it created."""
        plan = Plan(spec, base, destroy=True)
        for record in sorted(self._owned_instances(spec.name), key=_newest_first):
            plan.steps.append(Step("delete", "instance", record.name, "", record.labels.get(GROUP_LABEL, ""),
                                   _index(record)))  # fmt: skip
        known = self.store.find(StackRecord, spec.name)
        if known is not None:
            plan.steps += self._dropped(known, StackSpec(name=spec.name))
        return plan

    def _group_steps(self, spec: StackSpec, group: GroupSpec, digest: str,
                     owned: list[InstanceRecord]) -> list[Step]:  # fmt: skip
        mine = {_index(r): r for r in owned if r.labels.get(GROUP_LABEL) == group.name}
        steps = []
        for index in range(1, group.count + 1):
            name = group.instance_name(index)
            record = mine.get(index)
            if record is None:
                if self.store.find(InstanceRecord, name) is not None:
                    raise ConflictError(f"instance {name!r} exists and is not part of stack {spec.name!r}",
                                        hint=f"rename or delete it, or rename group {group.name!r}")
                steps.append(Step("create", "instance", name, "", group.name, index))
            elif record.labels.get(SPEC_LABEL) != digest:
                why = "image, type, disk, networks, publish, config or user-data changed"
                steps.append(Step("recreate", "instance", name, why, group.name, index))
            elif changes := _in_place(record, group):
                steps.append(Step("change", "instance", name, changes, group.name, index))
            elif self.life.view(name).status.state in (InstanceState.STOPPED, InstanceState.ERROR):
                steps.append(Step("start", "instance", name, "stopped", group.name, index))
        return steps

    def _dropped(self, known: StackRecord, spec: StackSpec) -> list[Step]:
        """The networks and volumes the stack made that `spec` no longer lists."""
        steps = []
        networks = {n.name for n in spec.networks}
        volumes = {f"{v.pool}/{v.name}" for v in spec.volumes}
        for name in known.networks:
            if name not in networks and self.store.find(NetworkRecord, name) is not None:
                steps.append(Step("delete", "network", name))
        for ref in known.volumes:
            pool, _, name = ref.partition("/")
            if ref not in volumes and self.store.find(VolumeRecord, pool, name) is not None:
                steps.append(Step("delete", "volume", ref))
        return steps

    def _owned_instances(self, stack: str) -> list[InstanceRecord]:
        return [r for r in self.store.list(InstanceRecord) if r.labels.get(STACK_LABEL) == stack]

    def _digest(self, group: GroupSpec, base: Path) -> str:
        """What an instance of `group` is made from, hashed: the image's fingerprint, the kind, the
        disk, NICs, forwards, config, and the user-data file's contents."""
        from virtkit.ops.images import image_store

        image = image_store(self.root, self.store).resolve(group.image)
        config = dict(group.config)
        if group.user_data:
            config, _ = cloudinit.take_inputs({cloudinit.USER_DATA: str(base / group.user_data)})
        wanted = {"image": image.fingerprint, "kind": group.type or default_kind(image).value,
                  "disk": group.disk, "networks": group.networks, "publish": group.publish,
                  "config": group.config, "user_data": config.get(cloudinit.USER_DATA)}  # fmt: skip
        return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]

    # --- applying -------------------------------------------------------------------------------

    def apply(self, plan: Plan, *, parallel: int = PARALLEL, progress: Progress = _no_progress) -> Applied:
        """Run the plan's steps: networks and volumes made, instance steps in parallel, then what is
        deleted. KeyboardInterrupt lets running steps finish and skips the rest (`interrupted`)."""
        applied = Applied()
        record = self._stack_record(plan)
        first = [s for s in plan.steps if s.kind != "instance" and s.action == "create"]
        removed = [s for s in plan.steps if s.kind == "instance" and s.action == "delete"]
        middle = [s for s in plan.steps if s.kind == "instance" and s.action != "delete"]
        last = [s for s in plan.steps if s.kind != "instance" and s.action == "delete"]
        wide = max(1, parallel)
        # A graceful stop is mostly waiting for the guest (busybox init alone takes a second):
        # deletions run wider than the CPU-bound launches.
        batches = ((first, 1), (removed, wide * DELETE_WIDTH), (middle, wide), (last, 1))
        for batch, width in batches:
            self._run(plan, batch, width, applied, progress, record)
            if applied.interrupted:
                started = {*applied.done, *(f for f, _ in applied.failed)}
                applied.skipped = [s for s in plan.steps if s not in started]
                break
        if not plan.destroy or applied.failed or applied.interrupted:
            self.store.put(record)
        elif self.store.find(StackRecord, record.name) is not None:
            self.store.delete(StackRecord, record.name)
        return applied

    def _stack_record(self, plan: Plan) -> StackRecord:
        known = self.store.find(StackRecord, plan.spec.name)
        record = known or StackRecord(name=plan.spec.name)
        if not plan.destroy:
            record.spec = plan.spec.model_dump(mode="json", by_alias=True)
            record.file = plan.file or record.file
            record.spec["base"] = str(plan.base)
        return self.store.put(record) if known else self.store.create(record)

    def _run(self, plan: Plan, steps: list[Step], width: int, applied: Applied, progress: Progress,
             record: StackRecord) -> None:  # fmt: skip
        if not steps:
            return
        pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="apply")
        futures: dict[Future[None], Step] = {}
        try:
            for step in steps:
                futures[pool.submit(self._step, plan, step, progress, record)] = step
            for future in as_completed(futures):
                step = futures[future]
                error = future.exception()
                if error is None:
                    applied.done.append(step)
                elif isinstance(error, VirtkitError):
                    applied.failed.append((step, error))
                else:
                    raise error
        except KeyboardInterrupt:
            applied.interrupted = True
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True)
            for future, step in futures.items():  # what finished while the rest was cancelled
                if future.done() and not future.cancelled() and step not in applied.done:
                    error = future.exception()
                    if error is None:
                        applied.done.append(step)
                    elif isinstance(error, VirtkitError):
                        applied.failed.append((step, error))
        finally:
            pool.shutdown(wait=True)

    def _step(self, plan: Plan, step: Step, progress: Progress, record: StackRecord) -> None:
        progress(step, "start", None)
        try:
            self._do(plan, step, record)
        except VirtkitError as error:
            log.warning("%s %s failed: %s", step.action, step.target, error)
            progress(step, "failed", error)
            raise
        except Exception as exc:  # a bug: this step fails, the others go on, the record is kept
            log.exception("%s %s failed", step.action, step.target)
            bug = VirtkitError(f"internal error: {type(exc).__name__}: {exc}",
                               hint="rerun with --debug for the traceback, and report it as a bug")
            progress(step, "failed", bug)
            raise bug from exc
        progress(step, "done", None)

    def _do(self, plan: Plan, step: Step, record: StackRecord) -> None:
        from virtkit.ops.networks import Networks
        from virtkit.ops.settings import Settings
        from virtkit.ops.storage import Storage

        if step.kind == "network":
            if step.action == "create":
                network = next(n for n in plan.spec.networks if n.name == step.target)
                Networks(self.root, self.store).create(network.name, type=network.type, subnet=network.subnet)
                record.networks = sorted({*record.networks, network.name})
            else:
                Networks(self.root, self.store).delete(step.target)
                record.networks = [n for n in record.networks if n != step.target]
        elif step.kind == "volume":
            pool, _, name = step.target.partition("/")
            if step.action == "create":
                volume = next(v for v in plan.spec.volumes if (v.pool, v.name) == (pool, name))
                Storage(self.root, self.store).create_volume(pool, name, size=volume.size, type=volume.type)
                record.volumes = sorted({*record.volumes, step.target})
            else:
                Storage(self.root, self.store).delete_volume(pool, name)
                record.volumes = [v for v in record.volumes if v != step.target]
        elif step.action == "delete":
            self._remove(step.target)
        elif step.action == "recreate":
            self._remove(step.target)
            self._launch(plan, plan.spec.group(step.group), step.index)
        elif step.action == "create":
            self._launch(plan, plan.spec.group(step.group), step.index)
        elif step.action == "change":
            group = plan.spec.group(step.group)
            current = self.store.get(InstanceRecord, step.target)
            settings = {k: v for k, v in (("cpus", f"{group.cpus:g}"), ("memory", str(group.memory)))
                        if _differs(current, k, group)}  # fmt: skip
            if settings:
                Settings(self.root, self.store, self.drivers).set(step.target, settings)
            self._relabel(step.target, group)
        elif step.action == "start":
            self.life.start(step.target, wait=plan.spec.group(step.group).wait)

    def _launch(self, plan: Plan, group: GroupSpec, index: int) -> None:
        from virtkit.model import InstanceKind
        from virtkit.ops.nics import parse_nic, parse_publish

        name = group.instance_name(index)
        config = dict(group.config)
        if group.user_data:
            config[cloudinit.USER_DATA] = str(plan.base / group.user_data)
        request = Request(
            image=group.image, name=name, kind=InstanceKind(group.type) if group.type else None,
            cpus=group.cpus, memory=int(group.memory),
            disk=int(group.disk) if group.disk is not None else None, config=config,
            nics=tuple(parse_nic(text) for text in group.networks),
            publish=tuple(parse_publish(text, name) for text in group.publish),
            labels={**group.labels, STACK_LABEL: plan.spec.name, GROUP_LABEL: group.name,
                    INDEX_LABEL: str(index), SPEC_LABEL: plan.digests[group.name]},
        )  # fmt: skip
        self.life.launch(request, wait=group.wait)

    def _remove(self, name: str) -> None:
        """Stop gracefully if it runs, then delete (an instance already gone is not an error)."""
        try:
            view = self.life.view(name)
        except NotFoundError:
            return
        if view.status.state is not InstanceState.STOPPED:
            self.life.stop(name, timeout=STOP_TIMEOUT)
        self.life.delete(name)

    def _relabel(self, name: str, group: GroupSpec) -> None:
        with self.store.lock("instance", name):
            record = self.store.get(InstanceRecord, name)
            ours = {k: v for k, v in record.labels.items() if k.startswith("virtkit.")}
            record.labels = {**group.labels, **ours}
            self.store.put(record)

    # --- scaling --------------------------------------------------------------------------------

    def scale_plan(self, group: str, count: int, stack: str | None = None) -> Plan:
        """The plan of the last applied spec of the stack holding `group`, with `count` instances."""
        known = self._stack_of(group, stack)
        spec = StackSpec.model_validate({k: v for k, v in known.spec.items() if k != "base"})
        wanted = spec.group(group).model_copy(update={"count": count})
        spec.groups = [wanted if g.name == group else g for g in spec.groups]
        StackSpec.model_validate(spec.model_dump(by_alias=True))  # the count's bounds
        plan = self.plan(spec, Path(str(known.spec.get("base", "."))), file=known.file)
        plan.steps = [s for s in plan.steps if s.kind == "instance" and s.group == group]
        return plan

    def _stack_of(self, group: str, stack: str | None) -> StackRecord:
        records = [r for r in self.store.list(StackRecord) if stack in (None, r.name)
                   and any(g.get("name") == group for g in r.spec.get("groups", []))]  # fmt: skip
        if not records:
            where = f"stack {stack!r}" if stack else "any applied stack"
            raise NotFoundError(f"group {group!r} is not in {where}", hint="`virtkit apply -f FILE` first")
        if len(records) > 1:
            raise ConflictError(f"group {group!r} is in stacks {', '.join(r.name for r in records)}",
                                hint="say which: --stack NAME")  # fmt: skip
        return records[0]


def _index(record: InstanceRecord) -> int:
    text = record.labels.get(INDEX_LABEL, "0")
    return int(text) if text.isdigit() else 0


def _newest_first(record: InstanceRecord) -> tuple[int, float]:
    return (-_index(record), -record.created_at)


def _differs(record: InstanceRecord, key: str, group: GroupSpec) -> bool:
    return record.cpus != group.cpus if key == "cpus" else record.memory != int(group.memory)


def _in_place(record: InstanceRecord, group: GroupSpec) -> str:
    """What differs that `set` changes in place, said as `memory 64MiB -> 96MiB`."""
    changes = []
    if record.cpus != group.cpus:
        changes.append(f"cpus {record.cpus:g} -> {group.cpus:g}")
    if record.memory != int(group.memory):
        changes.append(f"memory {format_size(record.memory)} -> {format_size(int(group.memory))}")
    mine = {k: v for k, v in record.labels.items() if not k.startswith("virtkit.")}
    if mine != group.labels:
        changes.append("labels")
    return ", ".join(changes)
