"""A VM on a bridged network moved live between two hosts of one LAN (tests/fixtures/hosts.py):
a third machine on that LAN keeps talking to it over one TCP connection the whole time."""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import tiny_template  # noqa: F401  (the fixture)
from tests.fixtures.hosts import Hosts, entered, hosts  # noqa: F401  (the fixture)
from tests.integration.migration.test_move_live import move, names

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")]

PORT = 7000
LEASE_TIMEOUT = 60.0
GAP_BOUND = 1.5  # seconds: the switchover's pause plus one TCP retransmission, with room for load


def lease_of(leases: Path, mac: str) -> str:
    """The address the LAN's DHCP server gave `mac` (bounded wait)."""
    deadline = time.monotonic() + LEASE_TIMEOUT
    while time.monotonic() < deadline:
        for line in leases.read_text().splitlines() if leases.exists() else []:
            fields = line.split()
            if len(fields) >= 3 and fields[1] == mac:
                return fields[2]
        time.sleep(0.2)
    raise AssertionError(f"no DHCP lease for {mac} within {LEASE_TIMEOUT:g} s")


class Pinger(threading.Thread):
    """Sends a numbered line every 50 ms over one connection and reads each echo back; records
    when each came and the first error."""

    def __init__(self, conn: socket.socket) -> None:
        super().__init__(daemon=True)
        self.conn, self.stop, self.error = conn, threading.Event(), ""
        self.answers: list[tuple[float, int]] = []

    def run(self) -> None:
        reader = self.conn.makefile("r")
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                self.conn.sendall(f"{n}\n".encode())
                line = reader.readline()
                if not line:
                    self.error = "the connection closed"
                    return
                self.answers.append((time.monotonic(), int(line)))
                time.sleep(0.05)
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def gap(self) -> float:
        times = [at for at, _ in self.answers]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def test_a_tcp_connection_from_a_third_machine_survives_a_live_move(hosts: Hosts) -> None:  # noqa: F811
    a, b = hosts(2)
    leases = hosts.lan_dhcp()
    for host in (a, b):
        host.ok("network", "create", "lan", "--type", "bridged", "--parent", hosts.uplink(host))
    a.ok("launch", "tiny", "v1", "--vm", "--network", "lan", "--wait", timeout=180)
    nic = json.loads(a.ok("show", "v1", "--json"))["nics"][0]
    assert nic["ip"] == ""  # virtkit gives none on a bridged network: the LAN does
    ip = lease_of(leases, nic["mac"])
    a.ok("exec", "v1", "--", "sh", "-c", f"(nc -l -p {PORT} -e cat) >/dev/null 2>&1 &")
    with entered(hosts.client_ns):  # the socket belongs to the client's namespace from here on
        conn = socket.create_connection((ip, PORT), timeout=30)
    conn.settimeout(30)
    pinger = Pinger(conn)
    pinger.start()
    try:
        deadline = time.monotonic() + 30
        while len(pinger.answers) < 10 and not pinger.error and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pinger.answers) >= 10, pinger.error or "no echo from the guest"
        moved = move(a, b)
        before = len(pinger.answers)
        deadline = time.monotonic() + 30
        while len(pinger.answers) < before + 20 and not pinger.error and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pinger.stop.set()
        pinger.join(35)
        conn.close()
    assert not pinger.error, pinger.error
    assert len(pinger.answers) >= before + 20, "the echoes stopped after the move"
    assert [n for _, n in pinger.answers] == list(range(1, len(pinger.answers) + 1))  # none lost or reset
    gap = pinger.gap()
    print(f"longest silence seen by the third machine: {gap * 1000:.0f} ms "
          f"(QEMU downtime {moved['downtime_ms']} ms)")  # fmt: skip
    assert gap < GAP_BOUND, f"the connection stalled for {gap:.2f} s"
    assert names(a) == [] and names(b) == ["v1"]
    there = json.loads(b.ok("show", "v1", "--json"))["nics"][0]
    assert (there["mac"], there["network"], there["ip"]) == (nic["mac"], "lan", "")
    shown = json.loads(b.ok("network", "show", "lan", "--json"))
    assert shown["state"] == "up" and shown["parent"] == "uplink0"
