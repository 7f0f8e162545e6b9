"""Network namespaces for tests: every test that makes bridges, rules or dnsmasq does it in its own.

`own_netns` moves the calling thread into a fresh network namespace for the duration of a `with`
block (so pyroute2 sockets, `nft` and every subprocess started inside see only that namespace),
then back. `Namespace` is a named namespace (`/run/netns/NAME`) standing for another machine or a
guest: commands run in it with `ns.run([...])` (nsenter, network namespace only).
Nothing here touches the namespace the test suite itself runs in.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _lo_up() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


@contextlib.contextmanager
def own_netns() -> Iterator[None]:
    """Run the block in a new, empty network namespace (loopback up); back to the old one after."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            _lo_up()
            yield
        finally:
            _check(_libc.setns(original, CLONE_NEWNET), "setns back")
    finally:
        os.close(original)


class Namespace:
    """A named network namespace, deleted (with every interface in it) by `delete`."""

    def __init__(self, prefix: str = "vkt") -> None:
        self.name = f"{prefix}{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.path = f"/run/netns/{self.name}"
        self.run(["ip", "link", "set", "lo", "up"], check=True)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = False, timeout: float = 30, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # type: ignore[call-overload,no-any-return]
            self.argv(argv), capture_output=True, text=True, timeout=timeout, check=check, **kwargs
        )

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(argv), **kwargs)  # type: ignore[call-overload,no-any-return]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)


@contextlib.contextmanager
def namespaces(count: int = 1, prefix: str = "vkt") -> Iterator[list[Namespace]]:
    made = [Namespace(prefix) for _ in range(count)]
    try:
        yield made
    finally:
        for ns in made:
            ns.delete()


CARRIER = frozenset({"LOWER_UP", "NO-CARRIER"})  # set by the kernel's link watch, up to ~1 s late


def without_carrier(links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`ip -j link` output without what the links' carrier makes of them: a bridge's carrier follows
    its ports' asynchronously, so it may still be settling from an earlier change when a test
    compares the links before and after something."""
    settled = []
    for link in links:
        flags = link.get("flags", [])
        kept = [flag for flag in flags if flag not in CARRIER] if isinstance(flags, list) else flags
        settled.append({**{k: v for k, v in link.items() if k != "operstate"}, "flags": kept})
    return settled
