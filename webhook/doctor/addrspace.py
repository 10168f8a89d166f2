"""The cluster-cidr as a grid of node blocks, for ``doctor --html`` and ``-o json``. Pure.

Each family of the cluster-cidr is cut into blocks of the node mask, in address
order; a block is used (one node holds exactly it), conflicting (more than one node,
or a node whose podCIDR is not one whole block), reserved (a flannel-guard Lease, no
node yet) or free. Nodes whose podCIDR lies outside the family are listed apart.
The states are run-length encoded and each block's owner is the index of its node in
the report's node table (sorted by name), so that 15,000 nodes stay small.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from webhook.core.cidr import CidrError, IPNetwork, parse_cidr
from webhook.doctor.report import AddressFamilyMap

__all__ = ["MAX_CELLS", "address_space"]

#: At most this many blocks are drawn per family (an IPv6 /48 of /64s has 65,536; a /32, 2^32).
MAX_CELLS = 65536


def _runs(states: list[str]) -> tuple[tuple[str, int], ...]:
    runs: list[list[object]] = []
    for s in states:
        if runs and runs[-1][0] == s:
            runs[-1][1] = int(runs[-1][1]) + 1  # type: ignore[call-overload]
        else:
            runs.append([s, 1])
    return tuple((str(s), int(n)) for s, n in runs)  # type: ignore[call-overload]


def _family(net: IPNetwork, mask: int, nodes: Mapping[str, tuple[IPNetwork, ...]],
            reservations: Iterable[tuple[str, str]], order: Mapping[str, int]) -> AddressFamilyMap:
    blocks = 1 << max(0, mask - net.prefixlen) if mask >= net.prefixlen else 0
    shown = min(blocks, MAX_CELLS)
    size = 1 << (net.max_prefixlen - mask)
    base = int(net.network_address)
    owners: dict[int, list[str]] = {}
    whole: set[int] = set()  # blocks a node holds exactly
    outside: list[tuple[str, str]] = []

    def index(addr: int) -> int:
        return (addr - base) // size

    for name in sorted(nodes):
        for n in nodes[name]:
            if n.version != net.version:
                continue
            if not (n.subnet_of(net) if n.prefixlen >= net.prefixlen else False):  # type: ignore[arg-type]
                outside.append((name, str(n)))
                continue
            first = index(int(n.network_address))
            last = index(int(n.broadcast_address))
            for i in range(first, min(last, shown - 1) + 1):
                owners.setdefault(i, []).append(name)
            if n.prefixlen == mask:
                whole.add(first)
    reserved: dict[int, str] = {}
    for holder, text in reservations:
        try:
            r = parse_cidr(text).network
        except CidrError:
            continue
        if r.version == net.version and r.prefixlen == mask and r.subnet_of(net):  # type: ignore[arg-type]
            i = index(int(r.network_address))
            if i < shown and i not in owners:
                reserved[i] = holder or "reserved"
    states: list[str] = []
    names: list[int | str] = []
    for i in range(shown):
        who = list(dict.fromkeys(owners.get(i, ())))
        if who:
            states.append("u" if len(who) == 1 and i in whole else "c")
            names.append(order[who[0]] if len(who) == 1 else " + ".join(who))
        elif i in reserved:
            states.append("r")
            names.append(reserved[i])
        else:
            states.append("f")
    return AddressFamilyMap(net, mask, blocks, shown, _runs(states), tuple(names), tuple(outside))


def address_space(target: Iterable[IPNetwork] | None, masks: Mapping[int, int],
                  nodes: Mapping[str, tuple[IPNetwork, ...]],
                  reservations: Iterable[tuple[str, str]] = ()) -> tuple[AddressFamilyMap, ...]:
    """One map per family of ``target``; ``masks`` by IP version."""
    held = list(reservations)
    order = {name: i for i, name in enumerate(sorted(nodes))}
    return tuple(_family(net, masks[net.version], nodes, held, order) for net in target or ())
