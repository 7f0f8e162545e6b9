"""The multi-host topology (tests/fixtures/hosts.py) the migration and cluster tests stand on:
each host's API answers on its own address with its own state, hosts reach each other over the lab
bridge, and the namespace the suite runs in reaches none of it."""

from __future__ import annotations

import os

import pytest

from tests.e2e.conftest import tiny_template  # noqa: F401  (the fixture)
from tests.fixtures.hosts import Hosts, entered, hosts  # noqa: F401  (the fixture)
from virtkit.api.client import Client
from virtkit.errors import AuthError, RemoteError

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")]


def test_hosts_serve_their_own_state_and_reach_each_other(hosts: Hosts) -> None:  # noqa: F811
    a, b = hosts(2)
    a.ok("launch", "tiny", "c1", "--container")
    with entered(hosts.client_ns):
        seen_a = a.client().info()
        assert seen_a["root"] == str(a.root) and seen_a["caller"]["role"] == "admin"
        assert [i["name"] for i in a.client().instances()] == ["c1"]
        assert b.client().instances() == []
        with pytest.raises(AuthError):  # b's token is b's alone
            a.client(token=b.token).info()
    with a.inside():  # host a reaches host b's API over the bridge
        assert b.client().info()["root"] == str(b.root)


def test_the_suites_own_namespace_reaches_no_host(hosts: Hosts) -> None:  # noqa: F811
    (a,) = hosts(1)
    # This machine's own network may accept any TCP connection (a proxy): what must fail is
    # reaching *the server*, its TLS certificate and its API.
    with pytest.raises(RemoteError), Client(a.url, token=a.token, certificate=a.cert, timeout=3) as outside:
        outside.info()
    with entered(hosts.client_ns), Client(a.url, token=a.token, certificate=a.cert, timeout=3) as inside:
        assert inside.info()["root"] == str(a.root)
