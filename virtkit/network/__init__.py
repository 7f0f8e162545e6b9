"""Host networking for instances: bridges, taps and veths (pyroute2), the `inet virtkit` nftables
table, dnsmasq per network, tc rate limits, and the address plan (subnets, IPs, MACs).

Each module talks to one tool; ops/networks.py orchestrates them.
"""
