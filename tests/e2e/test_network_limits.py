"""`--network-limit 10mbit`, measured: a TCP transfer each way between an instance's NIC and the
stand-in internet runs at 10 Mbit/s within ±20%.

The transfers are made by host Python run in the instance's network namespace (busybox has no
measuring tool): its packets go through the instance's own NIC and its host-side device, where the
limit is, exactly as the instance's would."""

from __future__ import annotations

import subprocess

from tests.e2e.netlab import UPLINK_HOST, UPLINK_INTERNET, Lab, lab  # noqa: F401

SECONDS = 4

RECEIVE = """
import socket, sys, time
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
c, _ = s.accept()
total, first = 0, None
while True:
    data = c.recv(65536)
    if not data:
        break
    first = first or time.monotonic()
    total += len(data)
print(total * 8 / (time.monotonic() - first))
"""

SEND = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
end = time.monotonic() + float(sys.argv[3])
chunk = bytes(65536)
while time.monotonic() < end:
    c.sendall(chunk)
c.close()
"""


def _python(prefix: list[str], code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*prefix, "python3", "-c", code, *args], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip


def _measure(receiver: list[str], bind: str, sender: list[str], target: str, port: int) -> float:
    receiving = _python(receiver, RECEIVE, bind, str(port))
    assert receiving.stdout is not None and receiving.stdout.readline().strip() == "ready"
    sending = _python(sender, SEND, target, str(port), str(SECONDS))
    assert sending.wait(SECONDS + 30) == 0, sending.stderr.read() if sending.stderr else ""
    out, err = receiving.communicate(timeout=30)
    assert out.strip(), err
    return float(out)


def test_a_rate_limit_holds_both_ways(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "lan", "--subnet", "10.20.30.0/24")
    lab.ok("launch", "tiny", "slow", "--network", "lan", "--network-limit", "10mbit", "--wait")
    ip = lab.wait_address("slow")
    assert "limit 10mbit" in lab.ok("show", "slow").stdout
    instance = ["nsenter", "-t", str(lab.show("slow")["pid"]), "-n"]
    internet = lab.internet.argv([])

    upload = _measure(internet, UPLINK_INTERNET, instance, UPLINK_INTERNET, 8100)
    lab.ok("network", "forward", "add", "lan", "8101", "slow:8101")  # the way in from outside
    download = _measure(instance, ip, internet, UPLINK_HOST, 8101)
    print(f"upload {upload / 1e6:.2f} Mbit/s, download {download / 1e6:.2f} Mbit/s")
    assert 8e6 <= upload <= 12e6, upload
    assert 8e6 <= download <= 12e6, download
