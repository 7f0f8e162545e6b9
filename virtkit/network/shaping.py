"""Rate limits on instance NICs (`--network-limit 10mbit`), applied with `tc` on the host side of
the NIC (the tap of a VM, the host end of a container's veth), where the instance cannot undo them.

- Toward the instance is the egress of that device: a token bucket (tbf) at the rate.
- From the instance is the device's ingress. Policing there (drop above the rate) needs act_police,
  which kernels built without it (this host's) lack, and makes TCP saw-tooth below the rate; so the
  ingress is redirected (u32 match-all, mirred) to an ifb device of its own, and shaped by a tbf
  on that ifb's egress. The ifb is a companion of the device (`links.create_ifb`): deleted with it
  by `links.delete`, or reaped once the device has vanished (a veth dies with its container).
- Burst: 10 ms of traffic (what a timer tick of HZ=100 lets through; tc(8) asks for rate/HZ), at
  least two full frames; queue: 50 ms of traffic, at least eight frames. TCP measures 95-96% of
  the rate both ways (the rest is Ethernet/IP/TCP headers, which tbf counts).

Rates are bits per second, written as tc(8) writes them (see `parse_rate`).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from fractions import Fraction
from typing import Any

from virtkit.errors import HostCapabilityError, NotFoundError, SpecError, ToolError, VirtkitError

# `links` (so pyroute2, 0.2 s to import) is imported by the functions that use it: the CLI checks
# --network-limit with parse_rate, which must stay cheap.

log = logging.getLogger(__name__)

MIN_RATE = 8_000  # 8 kbit/s: below it a frame takes seconds and TCP times out
MAX_RATE = 100_000_000_000  # 100 gbit/s
_SI = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_IEC = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
# tc(8) RATES, matched case-insensitively as tc does: so "mbps" is megaBYTES per second, as in tc
_UNITS = {
    **{f"{p}bit": m for p, m in (_SI | _IEC).items()},
    **{f"{p}bps": 8 * m for p, m in (_SI | _IEC).items()},
}
_RATE_RE = re.compile(r"([0-9]{1,15})(?:\.([0-9]{1,9}))?([a-z]{3,5})", re.ASCII | re.IGNORECASE)
_FORMS = (
    "a number and a tc unit: bit, kbit, mbit, gbit, tbit (bits/s; kibit... for powers of 2) or "
    "bps, kbps, mbps, gbps, tbps (BYTES/s, as in tc), e.g. 10mbit or 1.5gbit"
)
_FRAME_OVERHEAD = 18  # Ethernet header and a VLAN tag, on top of the MTU
_INGRESS = "ffff:"
_FILTER = "800::1"  # a fixed u32 handle, so `tc filter replace` replaces instead of adding another
_TIMEOUT = 15.0


def parse_rate(text: str) -> int:
    """Bits per second from a rate as tc(8) writes it: "10mbit" -> 10_000_000. Case does not
    matter; bps units are bytes per second. A bare number, or a bare k/m/g, is refused (tc reads a
    bare number as bits, which is rarely what is meant). Bounds: 8 kbit to 100 gbit."""
    if not isinstance(text, str) or len(text) > 32:
        raise SpecError(f"invalid rate {text!r}: expected {_FORMS}")
    match = _RATE_RE.fullmatch(text)
    unit = match.group(3).lower() if match else ""
    if match is None or unit not in _UNITS:
        hint = "add a unit: 10mbit is ten megabits per second" if text.isdigit() else None
        raise SpecError(f"invalid rate {text!r}: expected {_FORMS}", hint=hint)
    whole, frac = match.group(1), match.group(2) or ""
    value = Fraction(int(whole + frac), 10 ** len(frac)) * _UNITS[unit]
    if value.denominator != 1:
        raise SpecError(f"invalid rate {text!r}: not a whole number of bits per second")
    bits = int(value)
    if not MIN_RATE <= bits <= MAX_RATE:
        raise SpecError(
            f"invalid rate {text!r}: rates go from {format_rate(MIN_RATE)} to {format_rate(MAX_RATE)}"
        )
    return bits


def format_rate(bits: int) -> str:
    """The shortest exact tc form of `bits` per second, in bit units: 10_000_000 -> "10mbit"."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 0:
        raise ValueError(f"a rate is a non-negative number of bits per second, not {bits!r}")
    for prefix in ("t", "g", "m", "k"):
        if bits and bits % _SI[prefix] == 0:
            return f"{bits // _SI[prefix]}{prefix}bit"
    return f"{bits}bit"


def _check_rate(rate: int) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise SpecError(f"invalid rate {rate!r}: from {MIN_RATE} to {MAX_RATE} bits per second")
    return rate


def ifb_of(device: str) -> str:
    """The name of the ifb shaping what `device` receives: derived from the device's name (so
    `clear` finds it after the device is gone), 15 characters whatever the name's length."""
    from virtkit.network import links

    links.check_name(device, "device name")
    return links.companion_name(device)


# --- tc ---------------------------------------------------------------------------------------


def _tc(*args: str, what: str) -> str:
    """Run `tc ARGS` in the calling thread's network namespace; its failures translated."""
    argv = ["tc", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise HostCapabilityError(
            f"cannot {what}: tc is not installed", hint="apt-get install iproute2"
        ) from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"cannot {what}: tc did not answer in {_TIMEOUT:.0f} s", argv=argv) from None
    if done.returncode == 0:
        return done.stdout
    stderr = done.stderr.strip()
    if "Cannot find device" in stderr:
        raise NotFoundError(f"cannot {what}: the device does not exist")
    if "Operation not permitted" in stderr:
        raise HostCapabilityError(
            f"cannot {what}: permission denied", hint="virtkit needs root to shape traffic"
        )
    last = stderr.splitlines()[-1] if stderr else f"exit status {done.returncode}"
    raise ToolError(
        f"cannot {what}: tc failed: {last}",
        argv=argv,
        returncode=done.returncode,
        stderr=stderr,
    )


def _qdiscs(device: str) -> list[dict[str, Any]]:
    out = _tc("-j", "qdisc", "show", "dev", device, what=f"read the queues of {device}")
    found = json.loads(out or "[]")
    return [q for q in found if isinstance(q, dict)]


def _root_tbf_rate(device: str) -> int | None:
    """The rate (bits/s) of the tbf at the root of `device`, None if there is none."""
    for qdisc in _qdiscs(device):
        if qdisc.get("root") and qdisc.get("kind") == "tbf":
            return int(qdisc.get("options", {}).get("rate", 0)) * 8  # tc -j prints bytes/s
    return None


def _tbf(device: str, rate: int, mtu: int) -> None:
    frame = mtu + _FRAME_OVERHEAD
    per_second = rate // 8
    burst = max(per_second // 100, 2 * frame)
    queue = max(per_second // 20, 8 * frame) + burst
    _tc(
        "qdisc", "replace", "dev", device, "root", "tbf",
        "rate", f"{rate}bit", "burst", str(burst), "limit", str(queue),
        what=f"limit the traffic of {device}",
    )  # fmt: skip


def _redirect_ingress(device: str, ifb: str) -> None:
    what = f"limit the traffic from {device}"
    _tc("qdisc", "replace", "dev", device, "handle", _INGRESS, "ingress", what=what)
    _tc(
        "filter", "replace", "dev", device, "parent", _INGRESS, "protocol", "all", "prio", "1",
        "handle", _FILTER, "u32", "match", "u32", "0", "0",
        "action", "mirred", "egress", "redirect", "dev", ifb,
        what=what,
    )  # fmt: skip


def _redirects_to(device: str) -> str | None:
    out = _tc("-j", "filter", "show", "dev", device, "ingress", what=f"read the filters of {device}")
    for rule in json.loads(out or "[]"):
        options = rule.get("options", {}) if isinstance(rule, dict) else {}
        if options.get("fh") == _FILTER:
            for action in options.get("actions", []):
                if action.get("kind") == "mirred" and action.get("mirred_action") == "redirect":
                    return str(action.get("to_dev"))
    return None


# --- the API ----------------------------------------------------------------------------------


def limit(device: str, rate: int) -> None:
    """Limit both directions of the instance NIC whose host side is `device` to `rate` bits/s
    (replacing any limit there). A failure leaves the device unlimited, not half-limited."""
    from virtkit.network import links

    links.check_name(device, "device name")
    _check_rate(rate)
    mtu = links.mtu(device)  # NotFoundError names the device
    ifb = ifb_of(device)
    try:
        links.reap_companions()
    except VirtkitError:
        log.warning("could not remove leftover ifb devices", exc_info=True)
    try:
        _tbf(device, rate, mtu)
        links.create_ifb(ifb, companion_of=device)
        _tbf(ifb, rate, mtu)  # before the redirect, so nothing passes unshaped
        _redirect_ingress(device, ifb)
    except BaseException:
        try:
            clear(device)
        except VirtkitError:
            log.warning("could not undo the half-made limit on %s", device, exc_info=True)
        raise
    log.info("limited %s to %s each way", device, format_rate(rate))


def clear(device: str) -> None:
    """Remove the limit on `device` (nothing to do if there is none, or no device any more)."""
    from virtkit.network import links

    ifb = ifb_of(device)
    if links.exists(device):
        qdiscs = _qdiscs(device)
        if any(q.get("root") and q.get("kind") == "tbf" for q in qdiscs):
            _tc("qdisc", "del", "dev", device, "root", what=f"remove the limit on {device}")
        if any(q.get("kind") == "ingress" for q in qdiscs):
            _tc("qdisc", "del", "dev", device, "ingress", what=f"remove the limit on {device}")
    links.delete(ifb)


def current(device: str) -> int | None:
    """The rate (bits/s) limiting `device` now, None if it is not limited (or only half: then
    `limit` again, or `clear`); NotFoundError if there is no such device. The kernel keeps bytes
    per second: a rate not a multiple of 8 reads back rounded down."""
    from virtkit.network import links

    links.check_name(device, "device name")
    egress = _root_tbf_rate(device)
    ifb = ifb_of(device)
    if egress is None or not links.exists(ifb) or _redirects_to(device) != ifb:
        return None
    return egress if _root_tbf_rate(ifb) == egress else None
