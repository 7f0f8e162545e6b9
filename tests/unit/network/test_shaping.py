"""Rates as tc(8) writes them, parsed and formatted (round trip, hostile input), the ifb names, the
tbf parameters, and tc's failures translated (a stand-in `tc` on PATH; nothing touches the host).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtkit.errors import HostCapabilityError, NotFoundError, SpecError, ToolError
from virtkit.network import links, shaping


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("10mbit", 10_000_000),
        ("10Mbit", 10_000_000),
        ("8kbit", 8_000),
        ("1.5gbit", 1_500_000_000),
        ("100gbit", 100_000_000_000),
        ("0.1tbit", 100_000_000_000),
        ("9000bit", 9_000),
        ("8kibit", 8 * 1024),
        ("1mibit", 2**20),
        ("1000bps", 8_000),  # bytes per second, as in tc
        ("1kbps", 8_000),
        ("1mbps", 8_000_000),
        ("1MBps", 8_000_000),
        ("2gbps", 16_000_000_000),
        ("1kibps", 8 * 1024),
        ("12.5gbps", 100_000_000_000),
    ],
)
def test_rates_parse_as_tc_reads_them(text: str, bits: int) -> None:
    assert shaping.parse_rate(text) == bits


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10",  # a bare number: tc reads bits, people mean mbit
        "10m",
        "10k",
        "10g",
        "-10mbit",
        "+10mbit",
        "10 mbit",
        " 10mbit",
        "10mbit ",
        "10mbit\n",
        "1e9bit",
        "1e3kbit",
        "0x10mbit",
        "10mbits",
        "10mb",
        "mbit",
        ".5mbit",
        "5.mbit",
        "1.0000000001mbit",  # more decimals than a rate needs
        "10,5mbit",
        "\uff11\uff10mbit",  # full-width digits
        "10mbit;rm -rf /",
        "10mbit\0",
        "7kbit",  # below 8 kbit
        "7999bit",
        "100001mbit",  # above 100 gbit
        "1tbit",
        "99999999999999999999999999999999gbit",
        "9" * 40 + "bit",
        "0.5bit",  # not a whole number of bits
        "0bit",
        "nan",
        "inf",
    ],
)
def test_hostile_or_odd_rates_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(SpecError) as caught:
        shaping.parse_rate(text)
    assert repr(text) in caught.value.message
    message = caught.value.message
    assert "mbit" in message or "rates go from 8kbit to 100gbit" in message or "whole number" in message


def test_a_bare_number_says_to_add_a_unit() -> None:
    with pytest.raises(SpecError) as caught:
        shaping.parse_rate("10")
    assert caught.value.hint and "10mbit" in caught.value.hint


@pytest.mark.parametrize("value", [None, 10, 10.0, b"10mbit", ["10mbit"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(SpecError):
        shaping.parse_rate(value)  # type: ignore[arg-type]


@given(st.integers(min_value=shaping.MIN_RATE, max_value=shaping.MAX_RATE))
def test_format_then_parse_is_the_identity(bits: int) -> None:
    text = shaping.format_rate(bits)
    assert shaping.parse_rate(text) == bits
    assert text.endswith("bit") and text[0].isdigit()


@given(
    st.integers(min_value=1, max_value=100_000),
    st.sampled_from(["bit", "kbit", "mbit", "gbit", "bps", "kbps", "mbps", "gbps"]),
)
def test_parse_then_format_then_parse_agrees(number: int, unit: str) -> None:
    text = f"{number}{unit}"
    try:
        bits = shaping.parse_rate(text)
    except SpecError as exc:
        assert "rates go from" in exc.message
        return
    assert shaping.MIN_RATE <= bits <= shaping.MAX_RATE
    assert shaping.parse_rate(shaping.format_rate(bits)) == bits


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        bits = shaping.parse_rate(text)
    except SpecError:
        return
    assert shaping.MIN_RATE <= bits <= shaping.MAX_RATE


@pytest.mark.parametrize(
    ("bits", "text"),
    [
        (10_000_000, "10mbit"),
        (8_000, "8kbit"),
        (1_500_000, "1500kbit"),
        (8_001, "8001bit"),
        (10**11, "100gbit"),
    ],
)
def test_format_rate_is_the_shortest_exact_form(bits: int, text: str) -> None:
    assert shaping.format_rate(bits) == text


def test_format_rate_refuses_what_is_not_a_rate() -> None:
    for value in (-1, True, 1.5):
        with pytest.raises(ValueError):
            shaping.format_rate(value)  # type: ignore[arg-type]


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=15))
def test_ifb_names_are_valid_distinct_and_stable(device: str) -> None:
    if device in (".", ".."):
        return
    name = shaping.ifb_of(device)
    assert links.check_name(name) == name and len(name) == 15 and name.startswith("vkifb")
    assert shaping.ifb_of(device) == name
    assert shaping.ifb_of(device + "x" if len(device) < 15 else device[:-1]) != name


def test_ifb_of_checks_the_device_name() -> None:
    with pytest.raises(SpecError, match="device name"):
        shaping.ifb_of("a/b")


@pytest.mark.parametrize("rate", [0, 7_999, 100_000_000_001, True, 10.5, "10mbit"])
def test_limit_refuses_a_rate_out_of_bounds_before_touching_anything(rate: object) -> None:
    with pytest.raises(SpecError, match="rate"):
        shaping.limit("vkt0", rate)  # type: ignore[arg-type]


# --- tc, stood in for -------------------------------------------------------------------------


@pytest.fixture
def fake_tc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `tc` first on PATH that records its argv and answers as $FAKE_TC_* say."""
    script = tmp_path / "tc"
    script.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$FAKE_TC_LOG"\n'
        'printf "%s" "$FAKE_TC_OUT"\n'
        'printf "%s" "$FAKE_TC_ERR" >&2\n'
        'exit "${FAKE_TC_RC:-0}"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_TC_LOG", str(tmp_path / "log"))
    return tmp_path / "log"


def test_tbf_bursts_and_queues_follow_the_rate(fake_tc: Path) -> None:
    shaping._tbf("vkt0", 10_000_000, 1500)
    shaping._tbf("vkt0", 8_000, 1500)
    shaping._tbf("vkt0", 100_000_000_000, 9000)
    lines = fake_tc.read_text().splitlines()
    # 10 mbit: 10 ms of traffic is 12500 bytes; 50 ms of queue on top of the burst
    assert lines[0] == "qdisc replace dev vkt0 root tbf rate 10000000bit burst 12500 limit 75000"
    # 8 kbit: at least two frames of burst and eight of queue
    assert lines[1] == "qdisc replace dev vkt0 root tbf rate 8000bit burst 3036 limit 15180"
    assert lines[2] == "qdisc replace dev vkt0 root tbf rate 100000000000bit burst 125000000 limit 750000000"


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        ('Cannot find device "vkt0"\n', NotFoundError),
        ("RTNETLINK answers: Operation not permitted\n", HostCapabilityError),
        ("Error: Specified qdisc kind is unknown.\n", ToolError),
    ],
)
def test_tc_failures_are_translated(
    fake_tc: Path, monkeypatch: pytest.MonkeyPatch, stderr: str, error: type[Exception]
) -> None:
    monkeypatch.setenv("FAKE_TC_RC", "2")
    monkeypatch.setenv("FAKE_TC_ERR", stderr)
    with pytest.raises(error) as caught:
        shaping._tc("qdisc", "show", "dev", "vkt0", what="read the queues of vkt0")
    assert "vkt0" in str(caught.value)
    if isinstance(caught.value, ToolError) and type(caught.value) is ToolError:
        assert caught.value.argv[:2] == ["tc", "qdisc"] and caught.value.returncode == 2
        assert "unknown" in caught.value.message


def test_no_tc_is_a_host_capability(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostCapabilityError, match="tc is not installed") as caught:
        shaping._tc("qdisc", "show", what="read the queues of vkt0")
    assert caught.value.hint and "iproute2" in caught.value.hint


def test_the_rate_is_read_back_from_tc_json(fake_tc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FAKE_TC_OUT",
        '[{"kind":"tbf","handle":"8001:","root":true,"options":{"rate":1250000,"burst":12500,"lat":50000}},'
        '{"kind":"ingress","handle":"ffff:","parent":"ffff:fff1","options":{}}]',
    )
    assert shaping._root_tbf_rate("vkt0") == 10_000_000
    monkeypatch.setenv("FAKE_TC_OUT", '[{"kind":"noqueue","handle":"0:","root":true,"options":{}}]')
    assert shaping._root_tbf_rate("vkt0") is None
    monkeypatch.setenv("FAKE_TC_OUT", "")
    assert shaping._root_tbf_rate("vkt0") is None
