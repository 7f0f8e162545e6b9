"""Bulk verbs (`virtkit stop --all`, `virtkit delete --label tier=web`, `virtkit start a b c`): one
verb over many instances, in parallel, each failure kept apart from the others' successes.

Works over anything with the lifecycle's methods (the local Lifecycle, or the API's
RemoteLifecycle), so a remote's instances are selected and acted on the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from virtkit.errors import NotFoundError, SpecError, VirtkitError
from virtkit.model import InstanceRecord
from virtkit.ops.lifecycle import InstanceView

PARALLEL = 8  # mostly waiting on guests (graceful stops, boots): wider than the CPUs


class Viewer(Protocol):
    def views(self) -> list[InstanceView]: ...


@dataclass
class Outcome:
    done: list[tuple[str, InstanceRecord]] = field(default_factory=list)
    failed: list[tuple[str, VirtkitError]] = field(default_factory=list)


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """`--label k=v` (repeatable) as a dict; SpecError for anything else."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or len(item) > 256:
            raise SpecError(f"invalid --label {item[:60]!r}",
                            hint="use --label KEY=VALUE, e.g. --label tier=web")
        labels[key] = value
    return labels


def select(life: Viewer, names: Sequence[str], *, every: bool = False,
           labels: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    """The instances a bulk verb acts on: NAMEs (each must exist), or --all, or those with every
    --label; exactly one way of choosing."""
    ways = sum((bool(names), every, bool(labels)))
    if ways != 1:
        raise SpecError("name the instances, or give --all or --label KEY=VALUE (one of them)",
                        hint="e.g. virtkit stop web1 web2; virtkit stop --all; virtkit stop --label tier=web")
    views = life.views()
    if names:
        known = {view.record.name for view in views}
        missing = [name for name in names if name not in known]
        if missing:
            raise NotFoundError(f"instance {missing[0]!r} not found",
                                hint="`virtkit list` shows the instances")
        return list(dict.fromkeys(names))
    wanted = labels or {}
    return [view.record.name for view in views if wanted.items() <= view.record.labels.items()]


Report = Callable[[str, InstanceRecord | None, VirtkitError | None], None]


def run(names: Sequence[str], act: Callable[[str], InstanceRecord], *, parallel: int = PARALLEL,
        report: Report | None = None) -> Outcome:  # fmt: skip
    """`act(name)` for each name, `parallel` at once; one failure does not stop the others."""
    outcome = Outcome()

    def one(name: str) -> None:
        try:
            record = act(name)
        except VirtkitError as error:
            outcome.failed.append((name, error))
            if report:
                report(name, None, error)
        else:
            outcome.done.append((name, record))
            if report:
                report(name, record, None)

    width = max(1, min(parallel, len(names) or 1))
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="bulk") as pool:
        list(pool.map(one, names))
    order = {name: index for index, name in enumerate(names)}
    outcome.done.sort(key=lambda item: order[item[0]])
    outcome.failed.sort(key=lambda item: order[item[0]])
    return outcome
