"""Other tables' forward chains that drop (Docker's), opened to virtkit's bridges.

Foreign firewalls: a packet is forwarded only if every base chain at the forward hook accepts
it, in every table. Docker (iptables-nft) sets ``ip filter FORWARD`` to policy drop, which drops
our traffic whatever our table accepts. `foreign_forward_drops()` finds such chains,
`open_foreign(bridges)` inserts ``iifname BR accept`` / ``oifname BR accept`` rules with the
comment "virtkit" in them (in ``DOCKER-USER``, Docker's documented place for user rules, when the
table has it; else in the dropping chain itself), replacing in the same transaction every rule it
added before, and `close_foreign()` removes exactly the rules carrying that comment. Accepting
there is safe because our own tables still do the real filtering: the packet must pass ``forward``
in ``inet virtkit`` too. Those rules are written as JSON, so foreign table and chain names are
never parsed as nft syntax. With br_netfilter such a chain also drops traffic within one bridge.
Whoever reloads that firewall (iptables-restore, a Docker restart outside DOCKER-USER) may drop
our rules: callers open again on reconcile. Rules of iptables-legacy are invisible to nft and not
handled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from virtkit.errors import ToolError
from virtkit.network import nft

log = logging.getLogger(__name__)


def _ruleset() -> list[dict[str, Any]]:
    out = nft.run_nft(["-j", "list", "ruleset"], "reading the host's firewall")
    try:
        items = json.loads(out)["nftables"]
    except (ValueError, KeyError, TypeError):
        raise ToolError(
            "reading the host's firewall: nft -j printed no valid JSON", argv=["nft", "-j"]
        ) from None
    return [item for item in items if isinstance(item, dict)]


def _is_ours(obj: dict[str, Any]) -> bool:
    return (obj.get("family"), obj.get("table")) in nft.TABLES


def _dropping_chains(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # Only ip and inet chains see our (IPv4-only) forwarded traffic.
    chains = (item["chain"] for item in items if "chain" in item)
    return [
        c
        for c in chains
        if c.get("family") in ("ip", "inet")
        and c.get("hook") == "forward"
        and c.get("policy") == "drop"
        and not _is_ours(c)
    ]


def foreign_forward_drops() -> list[str]:
    """Base chains of other tables at the forward hook with policy drop, as "family table chain"."""
    return [f"{c['family']} {c['table']} {c['name']}" for c in _dropping_chains(_ruleset())]


def _our_foreign_rules(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rules = (item["rule"] for item in items if "rule" in item)
    return [
        {"delete": {"rule": {k: r[k] for k in ("family", "table", "chain", "handle")}}}
        for r in rules
        if r.get("comment") == nft.COMMENT and not _is_ours(r)
    ]


def _accept(family: str, table: str, chain: str, key: str, bridge: str) -> dict[str, Any]:
    match = {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": bridge}}
    rule = {
        "family": family,
        "table": table,
        "chain": chain,
        "comment": nft.COMMENT,
        "expr": [match, {"accept": None}],
    }
    return {"insert": {"rule": rule}}


def _open_targets(items: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Where to accept our bridges: per dropping chain, its table's DOCKER-USER if any, else itself."""
    chains = {
        (c.get("family"), c.get("table"), c.get("name")) for c in (i["chain"] for i in items if "chain" in i)
    }
    targets: list[tuple[str, str, str]] = []
    for c in _dropping_chains(items):
        user = (c["family"], c["table"], "DOCKER-USER")
        target = user if user in chains else (c["family"], c["table"], c["name"])
        if target not in targets:
            targets.append(target)
    return targets


def open_foreign(bridges: Sequence[str]) -> list[str]:
    """Let our bridges' traffic past other tables' forward chains with policy drop (see module docstring);
    the chains ("family table chain") that were not open to all of them before, e.g. after a Docker
    restart remade its tables.

    Safe to call alone, every time the firewall is refreshed: in one transaction it deletes every
    rule an earlier call added and inserts those for `bridges` now, so rules never pile up, stale
    ones go (bridges gone, a chain no longer dropping), and nothing is ever half-open. With no
    dropping chain it only removes our old rules; with nothing to remove either, it runs no nft.
    A change of those tables between its read and its write (a Docker restart) can make nft
    refuse the transaction (ToolError, nothing changed): calling it again is then right.
    """
    names = sorted({nft.ifname(b, "open_foreign") for b in bridges})
    items = _ruleset()
    commands = _our_foreign_rules(items)
    targets = _open_targets(items)
    for family, table, chain in targets:
        for bridge in reversed(names):  # each insert goes first: reversed keeps the listing sorted
            commands += [_accept(family, table, chain, key, bridge) for key in ("oifname", "iifname")]
    if commands:
        nft.run_nft(
            ["-j", "-f", "-"],
            "opening other firewalls to virtkit bridges",
            json.dumps({"nftables": commands}),
        )
    if targets:
        log.info("opened %s to bridges %s", ", ".join(" ".join(t) for t in targets), ", ".join(names))
    return [" ".join(t) for t in targets if _ours_in(items, t) < 2 * len(names)]


def _ours_in(items: Sequence[dict[str, Any]], target: tuple[str, str, str]) -> int:
    """How many of our accept rules chain `target` holds."""
    rules = (item["rule"] for item in items if "rule" in item)
    return sum(
        1
        for r in rules
        if r.get("comment") == nft.COMMENT and (r.get("family"), r.get("table"), r.get("chain")) == target
    )


def close_foreign() -> None:
    """Remove every rule carrying the comment "virtkit" from other tables; idempotent.

    For when no virtkit network is left (after `remove()`): while there are networks,
    `open_foreign` is the call to make, as it replaces these rules itself. This is
    ``open_foreign([])`` without reading which chains drop.
    """
    commands = _our_foreign_rules(_ruleset())
    if commands:
        nft.run_nft(
            ["-j", "-f", "-"],
            "removing virtkit rules from other firewalls",
            json.dumps({"nftables": commands}),
        )
        log.info("removed %d virtkit rules from other firewalls", len(commands))
