"""`virtkit launch|create|start|stop|restart|pause|resume|delete|exec`: instances' lifecycle.

The seams `lifecycle()`, `settings()`, `operations()` and `events()` give the local ops objects,
or, when a remote is in effect (--remote, REMOTE:INSTANCE, `remote switch`), their counterparts in
api/remote.py with the same methods and return types: commands render both the same way.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from virtkit.cli.context import INSTANCE, get_context, json_option
from virtkit.cli.output import print_json
from virtkit.cli.params import SizeType

if TYPE_CHECKING:
    from virtkit.api.remote import RemoteLifecycle, RemoteOperations, RemoteSettings
    from virtkit.errors import VirtkitError
    from virtkit.model import InstanceRecord, OperationRecord, OperationStatus
    from virtkit.ops.lifecycle import Lifecycle, Request
    from virtkit.ops.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def lifecycle() -> Lifecycle | RemoteLifecycle:
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote import RemoteLifecycle

        return RemoteLifecycle(ctx.client())
    from virtkit.ops.lifecycle import Lifecycle

    return Lifecycle(ctx.root, ctx.store())


def settings() -> Settings | RemoteSettings:
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote import RemoteSettings

        return RemoteSettings(ctx.client())
    from virtkit.ops.settings import Settings

    return Settings(ctx.root, ctx.store())


class LocalOperations:
    """This host's operations, as RemoteOperations gives a server's."""

    def list(self, status: OperationStatus | None = None) -> list[OperationRecord]:
        from virtkit.ops.operations import list_operations

        return list_operations(get_context().store(), status)

    def get(self, operation_id: str) -> OperationRecord:
        from virtkit.ops.operations import get_operation

        return get_operation(get_context().store(), operation_id)


def operations() -> LocalOperations | RemoteOperations:
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote import RemoteOperations

        return RemoteOperations(ctx.client())
    return LocalOperations()


def events(types: list[str] | None, *, ticks: bool = False) -> Generator[dict[str, Any], None, None]:
    """Events as they happen, of `types` only when given; with `ticks`, an empty dict now and then
    while none comes (the first once the stream is open)."""
    ctx = get_context()
    if ctx.is_remote():
        yield from ctx.client().events(types, keepalives=ticks)
        return
    from virtkit.ops.events import follow

    yield from follow(ctx.root, types=frozenset(types) if types else None, heartbeat=1.0 if ticks else None)


def _say(record: InstanceRecord, message: str) -> None:
    if get_context().json:
        print_json(record.model_dump(mode="json"))
    else:
        click.echo(message)


# Options that become instance settings (record.config), by option name -> config key. Each is
# passed to the driver as a string; the driver validates it (plan.py) and says what was wrong.
CONFIG_OPTIONS: list[tuple[click.Option, str]] = []


def _config(key: str, *decls: str, **attrs: Any) -> None:
    option = click.Option(list(decls), **attrs)
    CONFIG_OPTIONS.append((option, key))


_config(
    "accel", "--accel", type=click.Choice(["auto", "kvm", "tcg"]), default=None,
    help="VM acceleration: KVM when it works here, else emulation (TCG).  [default: auto]",
)
_config(
    "devices", "--devices", type=click.Choice(["virtio", "emulated"]), default=None,
    help="Paravirtual devices, or emulated ones (AHCI, e1000) for guests without virtio.  [default: virtio]",
)
_config(
    "machine", "--machine", type=click.Choice(["microvm", "q35", "virt"]), default=None,
    help="VM machine type (default: microvm for direct kernel boot, q35 for firmware boot, virt on aarch64).",
)
_config(
    "firmware", "--firmware", type=click.Choice(["bios", "uefi"]), default=None,
    help="Boot the disk through firmware (SeaBIOS or OVMF) instead of the image's kernel.",
)
_config(
    # Only made absolute here (the record outlives this working directory); the driver checks it.
    "iso", "--iso", type=click.Path(resolve_path=True, readable=False), default=None,
    help="Boot install media (an ISO file, used in place) before the image's disk; an image without "
    "a disk (an imported ISO) gets an empty one of --disk size.",
)
_config(
    "cpu_allowance", "--cpu-allowance", default=None, metavar="PERCENT|MS/MS",
    help="Hard CPU quota in host CPU time: 50% is half a host CPU, 150% one and a half; or 25ms/100ms.",
)
_config(
    "disk_iops", "--disk-iops", default=None, metavar="N",
    help="Throttle the root disk to this many I/O operations per second (VMs: reads and writes together; "
    "containers: each, direct I/O on cgroup v1).",
)
_config(
    "disk_bandwidth", "--disk-bandwidth", type=SizeType("disk bandwidth"), default=None, metavar="SIZE",
    help="Throttle the root disk to this many bytes per second (reads and writes together), e.g. 10MiB.",
)
_config(
    "processes", "--processes", default=None, metavar="N",
    help="Containers: at most N processes (the pids cgroup), against fork bombs.",
)
_config(
    "cpu_set", "--cpu-set", default=None, metavar="CPUS",
    help="Containers: run only on these host CPUs, e.g. 0 or 0-1 or 0,2 (the cpuset cgroup).",
)
_config(
    "privileged", "--privileged", is_flag=True, flag_value="true", default=None,
    help="Containers: turn off the isolation (all capabilities, no seccomp, no masked /proc, every "
    "device, no user namespace). Root in it is root on the host.",
)
# cloud-init (NoCloud): the files are read and checked at create time (virtkit.cloudinit) and what
# they hold is kept with the instance.
_config(
    "user_data", "--user-data", type=click.Path(dir_okay=False, resolve_path=True), default=None,
    metavar="FILE", help="cloud-init user-data for the guest, as is: a #cloud-config file or a #! script.",
)
_config(
    "ssh_keys", "--ssh-key", type=click.Path(dir_okay=False, resolve_path=True), multiple=True,
    metavar="FILE", help="SSH public key file to authorize for the image's default user (repeatable).",
)


def _define_options(func: F) -> F:
    options = [
        click.option("--vm", "kind", flag_value="vm", help="Make a virtual machine (QEMU)."),
        click.option("--container", "kind", flag_value="container", help="Make a container."),
        click.option("--cpus", type=float, default=1, show_default=True, help="Virtual CPUs."),
        click.option(
            "--memory",
            type=SizeType("memory size"),
            default="256MiB",
            show_default=True,
            help="Memory, e.g. 512MiB or 2G.",
        ),
        click.option(
            "--disk", type=SizeType("disk size"), default=None, help="Grow the root disk to this size."
        ),
        click.option(
            "--arch",
            type=click.Choice(["x86_64", "aarch64"]),
            default=None,
            help="Guest architecture (a foreign one runs emulated); `tiny` then means tiny-ARCH.",
        ),
        click.option(
            "--network", "networks", multiple=True, metavar="NAME[,ip=A][,mac=M][,limit=R][,model=M]",
            help="A NIC on network NAME (repeatable: eth0, eth1, ...); `default` is made on first use. "
            "Options: a fixed ip=, mac=, limit= (rate, e.g. 10mbit), model=virtio|e1000 (VMs).",
        ),
        click.option("--ip", default=None, metavar="ADDR", help="The first NIC's IPv4 address."),
        click.option("--mac", default=None, metavar="MAC", help="The first NIC's MAC address."),
        click.option(
            "--network-limit", default=None, metavar="RATE",
            help="Rate limit of every NIC without its own, each direction, e.g. 10mbit.",
        ),
        click.option(
            "--publish", "-p", multiple=True, metavar="HOSTPORT:PORT[/tcp|udp]",
            help="Forward a host port to the first NIC (repeatable), from outside and from the host.",
        ),
        click.option(
            "--allow-host", is_flag=True,
            help="Let the instance reach the host's own services (not only DHCP/DNS on its gateway).",
        ),
        click.option(
            "--label", "labels", multiple=True, metavar="KEY=VALUE",
            help="Tag the instance (repeatable); `stop --label KEY=VALUE` and the others act on the tagged.",
        ),
        click.option("--dry-run", is_flag=True, help="Print what would run, and do nothing."),
    ]
    # click lists decorator parameters in reverse order of application: these come after the above.
    params = getattr(func, "__click_params__", [])
    params.extend(option for option, _key in reversed(CONFIG_OPTIONS))
    func.__click_params__ = params  # type: ignore[attr-defined]
    for option in reversed(options):
        func = option(func)
    return func


def _as_request(func: Callable[..., None]) -> Callable[..., None]:
    """Collect IMAGE, NAME and the define options into one Request argument."""

    @functools.wraps(func)
    def wrapper(**options: Any) -> None:
        from virtkit.model import InstanceKind
        from virtkit.ops.lifecycle import Request

        config: dict[str, str] = {}
        for option, key in CONFIG_OPTIONS:
            value = options.pop(str(option.name))
            if isinstance(value, tuple):  # a repeatable option: its values, one a line
                value = "\n".join(value) or None
            if value is not None:
                config[key] = str(value)
        from virtkit.ops.bulk import parse_labels

        kind = options.pop("kind")
        network = _network_request(options)
        labels = parse_labels(options.pop("labels"))
        reserved = [key for key in labels if key.startswith("virtkit.")]
        if reserved:
            from virtkit.errors import SpecError

            raise SpecError(f"label {reserved[0]!r}: labels under virtkit. are virtkit's own")
        request = Request(
            image=options.pop("image"),
            name=options.pop("name"),
            kind=InstanceKind(kind) if kind else None,
            cpus=options.pop("cpus"),
            memory=options.pop("memory"),
            disk=options.pop("disk"),
            config=config,
            arch=options.pop("arch"),
            labels=labels,
            **network,
        )
        func(request, **options)

    return wrapper


def _network_request(options: dict[str, Any]) -> dict[str, Any]:
    """The NIC and forward parts of a Request, from --network, --ip, --mac, --network-limit, --publish."""
    import dataclasses

    from virtkit.errors import SpecError
    from virtkit.network.addressing import parse_mac
    from virtkit.network.shaping import parse_rate
    from virtkit.ops.nics import parse_nic, parse_publish

    nics = [parse_nic(text) for text in options.pop("networks")]
    ip, mac, limit = options.pop("ip"), options.pop("mac"), options.pop("network_limit")
    if (ip or mac) and not nics:
        raise SpecError("--ip and --mac set the first NIC's addresses: add --network NAME")
    if nics and (ip or mac):
        first = nics[0]
        nics[0] = dataclasses.replace(first, ip=ip or first.ip, mac=parse_mac(mac) if mac else first.mac)
    if limit is not None:
        if not nics:
            raise SpecError("--network-limit limits NICs: add --network NAME")
        rate = parse_rate(limit)
        nics = [nic if nic.limit else dataclasses.replace(nic, limit=rate) for nic in nics]
    publish = tuple(parse_publish(text, options["name"]) for text in options.pop("publish"))
    return {"nics": tuple(nics), "publish": publish, "allow_host": options.pop("allow_host")}


def _notices(notices: list[str]) -> None:
    for notice in notices:
        click.echo(f"Note: {notice}", err=True)


@click.command("launch")
@click.argument("image")
@click.argument("name", type=INSTANCE)
@_define_options
@click.option("--wait", is_flag=True, help="Return once the guest says it is ready.")
@json_option
@_as_request
def launch_command(request: Request, dry_run: bool, wait: bool) -> None:
    """Create instance NAME from IMAGE and start it."""
    if dry_run:
        _dry_run(request)
        return
    record, runtime = lifecycle().launch(request, wait=wait)
    _notices(runtime.notices)
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in record.boot.items())
    _say(record, f"Instance {record.name} started" + (f" ({phases})." if phases else "."))


@click.command("create")
@click.argument("image")
@click.argument("name", type=INSTANCE)
@_define_options
@json_option
@_as_request
def create_command(request: Request, dry_run: bool) -> None:
    """Define instance NAME from IMAGE without starting it."""
    if dry_run:
        _dry_run(request)
        return
    record, runtime = lifecycle().create(request)
    _notices(runtime.notices)
    _say(record, f"Instance {record.name} created.")


def _dry_run(request: Request) -> None:
    """Print the runtime (QEMU command line) the request would get; make nothing."""
    runtime = lifecycle().preview(request)
    if get_context().json:
        print_json(runtime.to_dict())
    else:
        from virtkit.cli.instance import command_line

        _notices(runtime.notices)
        click.echo(command_line(runtime.argv))


def _many(func: F) -> F:
    """NAME... or --all or --label KEY=VALUE: one instance, or several in parallel."""
    for option in reversed([
        click.argument("names", nargs=-1, type=INSTANCE),
        click.option("--all", "every", is_flag=True, help="Every instance."),
        click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
                     help="The instances with this label (repeat: all of them)."),
        click.option("--parallel", type=click.IntRange(1, 64), default=8, show_default=True,
                     help="With several instances: how many at once."),
    ]):  # fmt: skip
        func = option(func)
    return func


def _each(names: tuple[str, ...], every: bool, labels: tuple[str, ...], parallel: int,
          act: Callable[[str], InstanceRecord], past: str) -> None:  # fmt: skip
    """One instance as ever (its error is the command's); several: one line each as they end,
    a summary, exit code 1 if any failed (the others still ran)."""
    import threading

    from virtkit.ops import bulk

    if len(names) == 1 and not every and not labels:
        _say(act(names[0]), f"Instance {names[0]} {past}.")
        return
    ctx = get_context()
    chosen = bulk.select(lifecycle(), names, every=every, labels=bulk.parse_labels(labels))
    guard = threading.Lock()

    def report(name: str, _record: InstanceRecord | None, error: VirtkitError | None) -> None:
        if ctx.json:
            return
        with guard:
            if error is None:
                click.echo(f"Instance {name} {past}.")
            else:
                click.echo(f"Error: {name}: {error.message}", err=True)

    outcome = bulk.run(chosen, act, parallel=parallel, report=report)
    if ctx.json:
        done = [record.model_dump(mode="json") for _, record in outcome.done]
        failed = [{"name": name, **error.to_dict()} for name, error in outcome.failed]
        print_json({"done": done, "failed": failed})
    elif not chosen:
        click.echo("No instances match.")
    else:
        click.echo(f"{len(outcome.done)} {past}, {len(outcome.failed)} failed.")
    if outcome.failed:
        click.get_current_context().exit(1)


@click.command("start")
@_many
@click.option("--wait", is_flag=True, help="Return once the guest says it is ready.")
@json_option
def start_command(names: tuple[str, ...], every: bool, labels: tuple[str, ...], parallel: int,
                  wait: bool) -> None:  # fmt: skip
    """Start stopped instances: NAME..., --all or --label KEY=VALUE."""
    life = lifecycle()
    _each(names, every, labels, parallel, lambda name: life.start(name, wait=wait), "started")


@click.command("stop")
@_many
@click.option("--force", "-f", is_flag=True, help="Stop at once (power cut), not gracefully.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, 3600),
    default=30,
    show_default=True,
    help="Seconds to wait for a graceful stop before forcing it.",
)
@json_option
def stop_command(names: tuple[str, ...], every: bool, labels: tuple[str, ...], parallel: int, force: bool,
                 timeout: float) -> None:  # fmt: skip
    """Stop instances (NAME..., --all, --label): gracefully (ACPI power button, guest agent,
    SIGTERM), then forced."""
    life = lifecycle()
    _each(names, every, labels, parallel, lambda name: life.stop(name, force=force, timeout=timeout),
          "stopped")


@click.command("restart")
@_many
@click.option("--force", "-f", is_flag=True, help="Stop at once, not gracefully.")
@click.option("--wait", is_flag=True, help="Return once the guest says it is ready.")
@json_option
def restart_command(names: tuple[str, ...], every: bool, labels: tuple[str, ...], parallel: int, force: bool,
                    wait: bool) -> None:  # fmt: skip
    """Stop then start instances: NAME..., --all or --label KEY=VALUE."""
    life = lifecycle()
    _each(names, every, labels, parallel, lambda name: life.restart(name, force=force, wait=wait),
          "restarted")


@click.command("pause")
@click.argument("name", type=INSTANCE)
@json_option
def pause_command(name: str) -> None:
    """Freeze a running instance (its CPUs stop; memory is kept)."""
    record = lifecycle().pause(name)
    _say(record, f"Instance {name} paused.")


@click.command("resume")
@click.argument("name", type=INSTANCE)
@json_option
def resume_command(name: str) -> None:
    """Unfreeze a paused instance."""
    record = lifecycle().resume(name)
    _say(record, f"Instance {name} resumed.")


@click.command("delete")
@_many
@click.option("--force", "-f", is_flag=True,
              help="Stop it first if it runs; delete it even if linked clones rest on it (they keep "
              "its layers).")  # fmt: skip
@json_option
def delete_command(names: tuple[str, ...], every: bool, labels: tuple[str, ...], parallel: int,
                   force: bool) -> None:  # fmt: skip
    """Delete instances and their files (their images stay): NAME..., --all or --label KEY=VALUE."""
    life = lifecycle()
    _each(names, every, labels, parallel, lambda name: life.delete(name, force=force), "deleted")


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--tty", "-t", is_flag=True, help="Give the command a terminal (containers).")
@click.option(
    "--timeout", type=click.FloatRange(0.1, 86400), default=60, show_default=True,
    help="VMs: seconds the guest agent may take. A container's command streams as long as it runs.",
)  # fmt: skip
@click.argument("name", type=INSTANCE)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(name: str, command: tuple[str, ...], tty: bool, timeout: float) -> None:
    """Run COMMAND inside instance NAME; its output and exit code become virtkit's.

    Put `--` before the command: virtkit exec web1 -- uname -a. In a container the command's
    input is virtkit's (pipe into it); in a VM it has none and its output comes when it ends.
    """
    if command[:1] == ("--",):
        command = command[1:]
    if not command:
        raise click.UsageError("no command to run: virtkit exec NAME -- COMMAND")
    if tty and not sys.stdin.isatty():
        from virtkit.errors import SpecError

        raise SpecError("--tty needs a terminal on standard input", hint="drop -t when input is a pipe")
    code = lifecycle().exec_attached(name, list(command), tty=tty, timeout=timeout)
    click.get_current_context().exit(code)
