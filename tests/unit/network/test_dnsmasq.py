"""dnsmasq config rendering, the validation that keeps hostile values out of it, lease parsing."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.permissions import reachable
from virtkit.errors import SpecError
from virtkit.network.dnsconfig import _reverse_zones
from virtkit.network.dnsmasq import (
    Config,
    DaemonUser,
    Dnsmasq,
    Host,
    Lease,
    _unreachable,
    parse_leases,
    render,
)

DIRECTORY = Path("/var/lib/virtkit/networks/web")
USER = DaemonUser("dnsmasq", "nogroup", 999, 65534)
WEB = Host("52:54:00:00:00:0a", "10.20.30.10", "web")
DB = Host("52:54:00:00:00:0b", "10.20.30.11", "db")


def config(**changes: object) -> Config:
    base = Config(network="web", bridge="vk-web", gateway="10.20.30.1", subnet="10.20.30.0/24",
                  domain="virtkit", upstream=True, hosts=(WEB, DB))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def options(conf: str) -> list[str]:
    return [line for line in conf.splitlines() if line and not line.startswith("#")]


def test_nat_network_config() -> None:
    files = render(config(), DIRECTORY, USER)
    assert options(files.conf) == [
        "interface=vk-web",
        "listen-address=10.20.30.1",
        "except-interface=lo",
        "bind-interfaces",
        "user=dnsmasq",
        "group=nogroup",
        "pid-file=/var/lib/virtkit/networks/web/dnsmasq.pid",
        "log-facility=/var/lib/virtkit/networks/web/dnsmasq.log",
        "no-hosts",
        "addn-hosts=/var/lib/virtkit/networks/web/dns-hosts",
        "domain=virtkit",
        "expand-hosts",
        "local=/virtkit/",
        "local=/30.20.10.in-addr.arpa/",
        "domain-needed",
        "bogus-priv",
        "strict-order",
        "resolv-file=/etc/resolv.conf",
        "dhcp-range=10.20.30.0,static,255.255.255.0,1h",
        "dhcp-hostsfile=/var/lib/virtkit/networks/web/dhcp-hosts",
        "dhcp-ignore=tag:!known",
        "dhcp-ignore-names",
        "dhcp-authoritative",
        "dhcp-leasefile=/var/lib/virtkit/networks/web/leases",
        "dhcp-option=option:dns-server,10.20.30.1",
        "dhcp-option=option:router,10.20.30.1",
        "dhcp-option=tag:vk-secondary,option:router",
        "dhcp-option=tag:vk-secondary,option:dns-server",
    ]
    assert files.dhcp_hosts == (
        "52:54:00:00:00:0a,10.20.30.10,web.virtkit\n52:54:00:00:00:0b,10.20.30.11,db.virtkit\n"
    )
    assert files.dns_hosts == (
        "10.20.30.1 gateway.virtkit gateway\n10.20.30.10 web.virtkit web\n10.20.30.11 db.virtkit db\n"
    )


def test_isolated_network_forwards_nothing_and_gives_no_route() -> None:
    conf = options(render(config(upstream=False), DIRECTORY, USER).conf)
    assert {"no-resolv", "no-poll", "local=/#/"} <= set(conf)
    assert "dhcp-option=option:router" in conf  # no data: no router option at all
    assert not any(line.startswith(("resolv-file=", "server=")) for line in conf)
    assert "dhcp-option=option:dns-server,10.20.30.1" in conf


def test_config_never_reads_other_files() -> None:
    conf = options(render(config(), DIRECTORY, USER).conf)
    assert not any(line.startswith(("conf-file", "conf-dir", "servers-file", "dhcp-script")) for line in conf)


def test_root_when_no_user() -> None:
    conf = options(render(config(), DIRECTORY, None).conf)
    assert "user=root" in conf
    assert not any(line.startswith("group=") for line in conf)


def test_no_hosts_still_names_the_gateway() -> None:
    files = render(config(hosts=(), domain="lab.example"), DIRECTORY, USER)
    assert files.dhcp_hosts == ""
    assert files.dns_hosts == "10.20.30.1 gateway.lab.example gateway\n"


def test_uppercase_mac_written_lowercase() -> None:
    files = render(config(hosts=(Host("52:54:00:AA:BB:CC", "10.20.30.10", "web"),)), DIRECTORY, USER)
    assert files.dhcp_hosts == "52:54:00:aa:bb:cc,10.20.30.10,web.virtkit\n"


def test_keyword_names_are_written_qualified() -> None:
    # dnsmasq reads a bare "ignore" or "infinite" in a dhcp-host line as a keyword, not a name.
    hosts = (Host("52:54:00:00:00:0a", "10.20.30.10", "ignore"),
             Host("52:54:00:00:00:0b", "10.20.30.11", "infinite"))
    files = render(config(hosts=hosts), DIRECTORY, USER)
    assert files.dhcp_hosts.splitlines() == ["52:54:00:00:00:0a,10.20.30.10,ignore.virtkit",
                                             "52:54:00:00:00:0b,10.20.30.11,infinite.virtkit"]


@pytest.mark.parametrize(("subnet", "zones"), [
    ("10.0.0.0/8", ["10.in-addr.arpa"]),
    ("172.16.0.0/16", ["16.172.in-addr.arpa"]),
    ("10.20.30.0/24", ["30.20.10.in-addr.arpa"]),
    ("10.20.28.0/22", ["28.20.10.in-addr.arpa", "29.20.10.in-addr.arpa", "30.20.10.in-addr.arpa",
                       "31.20.10.in-addr.arpa"]),
])
def test_reverse_zones(subnet: str, zones: list[str]) -> None:
    import ipaddress

    assert _reverse_zones(ipaddress.IPv4Network(subnet)) == zones


HOSTILE = "web\nconf-file=/etc/shadow"


@pytest.mark.parametrize("changes", [
    {"bridge": "vk-web\ninterface=eth0"},
    {"bridge": "vk,web"},
    {"bridge": "--conf-dir=/x"},
    {"bridge": "-vkweb"},
    {"bridge": "a-very-long-bridge-name"},
    {"bridge": "vk web"},
    {"bridge": "vk*"},
    {"bridge": "lo"},
    {"bridge": ""},
    {"gateway": "10.20.30.1\nserver=8.8.8.8"},
    {"gateway": "10.20.30.1,8.8.8.8"},
    {"gateway": "010.20.30.1"},
    {"gateway": "10.20.30.0"},
    {"gateway": "10.20.30.255"},
    {"gateway": "10.20.31.1"},
    {"gateway": "fe80::1"},
    {"subnet": "10.20.30.1/24"},
    {"subnet": "10.20.30.0/24\nport=0"},
    {"subnet": "10.20.30.0/31"},
    {"subnet": "10.0.0.0/7"},
    {"subnet": "10.20.30.0"},
    {"domain": "virtkit\nserver=8.8.8.8"},
    {"domain": "virt/kit"},
    {"domain": "virtkit/"},
    {"domain": "a,b"},
    {"domain": "--local"},
    {"domain": "-virtkit"},
    {"domain": "virtkit."},
    {"domain": ".virtkit"},
    {"domain": "vir..tkit"},
    {"domain": "Virtkit"},
    {"domain": "x" * 64},
    {"domain": ".".join(["abcdefgh"] * 22)},
    {"domain": "lab.123"},
    {"domain": ""},
    {"domain": "#"},
    {"network": "web\nuser=root"},
    {"network": "Web"},
    {"upstream": "yes"},
    {"hosts": [WEB]},
    {"hosts": ("web",)},
])
def test_hostile_network_values_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(SpecError):
        render(config(**changes), DIRECTORY, USER)


@pytest.mark.parametrize("host", [
    Host("52:54:00:00:00:0a", "10.20.30.10", HOSTILE),
    Host("52:54:00:00:00:0a", "10.20.30.10", "web,ignore"),
    Host("52:54:00:00:00:0a", "10.20.30.10", "web.virtkit"),
    Host("52:54:00:00:00:0a", "10.20.30.10", "--dhcp-script=/bin/sh"),
    Host("52:54:00:00:00:0a", "10.20.30.10", "x" * 64),
    Host("52:54:00:00:00:0a", "10.20.30.10", "1h"),
    Host("52:54:00:00:00:0a", "10.20.30.10", "web-"),
    Host("52:54:00:00:00:0a", "10.20.30.10", "Web"),
    Host("52:54:00:00:00:0a", "10.20.30.10", "gateway"),
    Host("52:54:00:00:00:0a", "10.20.30.10", ""),
    Host("52:54:00:00:00:0a", "10.20.30.10 10.20.30.12", "web"),
    Host("52:54:00:00:00:0a", "10.20.30.10\n10.20.30.12 evil", "web"),
    Host("52:54:00:00:00:0a", "10.20.30.1", "web"),
    Host("52:54:00:00:00:0a", "10.20.31.10", "web"),
    Host("52:54:00:00:00:0a", "10.20.30.255", "web"),
    Host("52:54:00:00:00:0a,10.20.30.12", "10.20.30.10", "web"),
    Host("52:54:00:00:00:0a\n", "10.20.30.10", "web"),
    Host("52-54-00-00-00-0a", "10.20.30.10", "web"),
    Host("01:00:5e:00:00:01", "10.20.30.10", "web"),
    Host("00:00:00:00:00:00", "10.20.30.10", "web"),
    Host("id:01", "10.20.30.10", "web"),
])
def test_hostile_host_values_rejected(host: Host) -> None:
    with pytest.raises(SpecError):
        render(config(hosts=(host,)), DIRECTORY, USER)


@pytest.mark.parametrize("second", [
    Host(WEB.mac, "10.20.30.12", "other"),
    Host("52:54:00:00:00:0c", WEB.ip, "other"),
    Host("52:54:00:00:00:0c", "10.20.30.12", WEB.name),
    Host(WEB.mac.upper(), "10.20.30.12", "other"),
])
def test_duplicates_rejected(second: Host) -> None:
    with pytest.raises(SpecError, match="same"):
        render(config(hosts=(WEB, second)), DIRECTORY, USER)


@pytest.mark.parametrize("directory", ["/var/lib/vk root/networks/web", "/var/lib/virtkit#x/networks/web",
                                       "/var/lib/virtkit\n/networks/web", "/var/lib/a,b/web", 'relative"dir'])
def test_directory_that_cannot_be_written_in_a_config_rejected(directory: str) -> None:
    with pytest.raises(SpecError):
        render(config(), Path(directory), USER)


def test_every_rendered_line_is_one_option() -> None:
    """Whatever passed validation: no line of any file holds a second option or comment."""
    files = render(config(), DIRECTORY, USER)
    for line in options(files.conf):
        assert line.isprintable() and " " not in line
    for line in files.dhcp_hosts.splitlines():
        assert line.count(",") == 2 and " " not in line


LEASES = """\
1796210760 52:54:00:00:00:0a 10.20.30.10 web 01:52:54:00:00:00:0a
1796210761 52:54:00:00:00:0b 10.20.30.11 * *
0 52:54:00:00:00:0c 10.20.30.12 db *
duid 00:01:00:01:2c:00:00:00:52:54:00:00:00:01
this is not a lease
1796210760 52:54:00:00:00:0d
x796210760 52:54:00:00:00:0e 10.20.30.14 bad-expiry *
² 52:54:00:00:00:0e 10.20.30.14 superscript-expiry *
-5 52:54:00:00:00:0e 10.20.30.14 negative-expiry *
1796210760 not-a-mac 10.20.30.15 bad-mac *
1796210760 52:54:00:00:00:0f 10.20.30.300 bad-ip *
1796210760 52:54:00:00:00:10 fe80::1 ipv6 *
1796210760 52:54:00:00:00:11 10.20.30.17 we\x1bird *

\x00\x00\x00
1796210760 52:54:00:00:00:12 10.20.30.18 tail
"""


def test_parse_leases_keeps_good_lines_only() -> None:
    assert parse_leases(LEASES) == [
        Lease(1796210760, "52:54:00:00:00:0a", "10.20.30.10", "web"),
        Lease(1796210761, "52:54:00:00:00:0b", "10.20.30.11", None),
        Lease(None, "52:54:00:00:00:0c", "10.20.30.12", "db"),
        Lease(1796210760, "52:54:00:00:00:11", "10.20.30.17", None),
        Lease(1796210760, "52:54:00:00:00:12", "10.20.30.18", "tail"),
    ]


def test_parse_leases_empty() -> None:
    assert parse_leases("") == []


def test_leases_of_a_network_never_started(tmp_path: Path) -> None:
    assert Dnsmasq(tmp_path / "none").leases() == []


def test_pidfile_naming_another_process_is_not_trusted(tmp_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
        try:
            dnsmasq = Dnsmasq(tmp_path)
            dnsmasq.pid_file.write_text(f"{other.pid}\n")
            assert dnsmasq.pid() is None
            (tmp_path / "garbage").write_text("x")
            for text in ("not a pid\n", "\u00b2\n", "", "-1\n", "99999999999999999999999\n"):
                dnsmasq.pid_file.write_text(text)
                assert dnsmasq.pid() is None
            assert other.poll() is None
        finally:
            other.kill()


def test_pidfile_of_another_networks_dnsmasq_is_not_trusted(tmp_path: Path) -> None:
    # Stands for a dnsmasq of another network: argv[0] "dnsmasq", another directory's config.
    other = tmp_path / "other"
    argv = ["dnsmasq", "-c", "import time; time.sleep(30)", f"--conf-file={other / 'dnsmasq.conf'}"]
    with subprocess.Popen(argv, executable=sys.executable) as fake:
        try:
            # Popen returns at close-on-exec, a moment before the kernel sets the new cmdline.
            deadline = time.monotonic() + 5
            while not Path(f"/proc/{fake.pid}/cmdline").read_bytes().startswith(b"dnsmasq\0"):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            mine = tmp_path / "mine"
            mine.mkdir()
            dnsmasq = Dnsmasq(mine)
            dnsmasq.pid_file.write_text(f"{fake.pid}\n")
            assert dnsmasq.pid() is None
            assert Dnsmasq(other).pid() == fake.pid  # found without a pidfile, by its cmdline
        finally:
            fake.kill()


def test_unreachable_directory(tmp_path: Path) -> None:
    stranger = DaemonUser("stranger", "strangers", 54321, 54321)
    closed = tmp_path / "closed"
    (closed / "networks").mkdir(parents=True)
    closed.chmod(0o700)
    assert _unreachable(closed / "networks" / "web", stranger) is not None  # pytest's basetemp is 0700
    reachable(tmp_path / "x")
    assert _unreachable(closed / "networks" / "web", stranger) == closed
    opened = tmp_path / "open"
    (opened / "networks").mkdir(parents=True)
    opened.chmod(0o711)
    assert _unreachable(opened / "networks" / "web", stranger) is None
    assert _unreachable(opened / "missing" / "web", stranger) == opened / "missing"
    owned = DaemonUser("stranger", "strangers", closed.stat().st_uid, 54321)
    assert _unreachable(closed / "networks" / "web", owned) is None  # its owner may enter it


def test_leases_of_hosts_gone_or_changed_are_pruned(tmp_path: Path) -> None:
    dnsmasq = Dnsmasq(tmp_path)
    dnsmasq.leases_file.write_text(
        "duid 00:01:00:01:2c:00:00:00:52:54:00:00:00:01\n"
        "1796210760 52:54:00:00:00:0a 10.20.30.10 web *\n"  # kept
        "1796210760 52:54:00:00:00:0b 10.20.30.11 * *\n"  # kept: no name yet
        "1796210760 52:54:00:00:00:0c 10.20.30.12 gone *\n"  # its host left
        "1796210760 52:54:00:00:00:0d 10.20.30.99 moved *\n"  # its host has another address now
        "1796210760 52:54:00:00:00:0e 10.20.30.14 oldname *\n"  # renamed
        "garbage\n")
    hosts = [("52:54:00:00:00:0a", "10.20.30.10", "web"), ("52:54:00:00:00:0b", "10.20.30.11", "db"),
             ("52:54:00:00:00:0d", "10.20.30.13", "moved"), ("52:54:00:00:00:0e", "10.20.30.14", "newname")]
    assert dnsmasq._stale_leases(hosts)
    dnsmasq._prune_leases(hosts)
    assert dnsmasq.leases_file.read_text() == (
        "duid 00:01:00:01:2c:00:00:00:52:54:00:00:00:01\n"
        "1796210760 52:54:00:00:00:0a 10.20.30.10 web *\n"
        "1796210760 52:54:00:00:00:0b 10.20.30.11 * *\n")
    assert not dnsmasq._stale_leases(hosts)


def test_a_secondary_nic_gets_neither_route_nor_dns_server() -> None:
    files = render(config(hosts=(WEB, dataclasses.replace(DB, primary=False))), DIRECTORY, USER)
    assert files.dhcp_hosts.splitlines() == [
        "52:54:00:00:00:0a,10.20.30.10,web.virtkit",
        "52:54:00:00:00:0b,set:vk-secondary,10.20.30.11,db.virtkit",
    ]
    with pytest.raises(SpecError, match="primary"):
        render(config(hosts=(dataclasses.replace(DB, primary="yes"),)), DIRECTORY, USER)
