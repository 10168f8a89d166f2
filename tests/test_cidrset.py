"""webhook.core.cidrset: kube-controller-manager's range allocator, restated and checked.

Rows marked ``upstream`` restate the vectors of kubernetes/kubernetes
``pkg/controller/nodeipam/ipam/cidrset/cidr_set_test.go`` (the Go test
function is named in each table's comment); they must give the same answers.
"""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook.core import cidrset
from webhook.core.cidr import IPNetwork
from webhook.core.cidrset import (
    CidrSet,
    CidrSetError,
    InvalidMaskError,
    MaskTooBigError,
    MaskTooSmallError,
    OutOfRangeError,
    RangeExhaustedError,
)
from webhook.core.dualstack import DualStackAllocator
from webhook.core.indexruns import IndexRuns
from webhook.core.nodeindex import NodeCidrIndex


def net(text: str) -> IPNetwork:
    """Parse as Go's ParseCIDR does: host bits are masked."""
    return ipaddress.ip_network(text, strict=False)


def check_invariants(s: CidrSet) -> None:
    """Runs are sorted, disjoint, non-adjacent, in range, and add up to `used`."""
    runs = s.occupied_index_ranges()
    total = 0
    prev_last = -2
    for first, last in runs:
        assert 0 <= first <= last < s.capacity
        assert first > prev_last + 1, f"runs {runs} overlap or touch"
        total += last - first + 1
        prev_last = last
    assert total == s.used
    assert s.full == (s.used == s.capacity)
    assert s.free == s.capacity - s.used
    assert 0 <= s.next_candidate < s.capacity


def test_public_names_are_pinned():
    assert sorted(cidrset.__all__) == sorted([
        "DEFAULT_NODE_MASK_V4", "DEFAULT_NODE_MASK_V6", "MAX_IPV6_MASK_DIFF", "CidrSet", "CidrSetError",
        "InvalidMaskError", "MaskTooBigError", "MaskTooSmallError",
        "OutOfRangeError", "RangeExhaustedError",
    ])


def test_every_error_is_a_cidrset_error_with_a_docstring():
    for cls in (InvalidMaskError, MaskTooSmallError, MaskTooBigError, OutOfRangeError, RangeExhaustedError):
        assert issubclass(cls, CidrSetError)
        assert cls.__doc__ and "\n" not in cls.__doc__.strip()


# --- constructor -------------------------------------------------------------

# TestCIDRSetv6 (upstream) plus the node_ipam_controller.go check (mask >= cluster prefix).
CONSTRUCTOR_ROWS = [
    pytest.param("127.0.0.0/8", 32, None, 1 << 24, id="upstream-max-cluster-subnet-size-ipv4-no-limit"),
    pytest.param("beef:1234::/32", 49, MaskTooBigError, 0, id="upstream-max-cluster-subnet-size-ipv6"),
    pytest.param("beef:1234::/32", 48, None, 1 << 16, id="ipv6-exactly-16-bits-is-allowed"),
    pytest.param("2001:beef:1234:369b::/60", 64, None, 16, id="upstream-allocate-a-few-ipv6"),
    pytest.param("10.0.0.0/26", 24, MaskTooSmallError, 0, id="node-cidr-bigger-than-range-ipv4"),
    pytest.param("fd00::/64", 48, MaskTooSmallError, 0, id="node-cidr-bigger-than-range-ipv6"),
    pytest.param("127.123.234.0/30", 30, None, 1, id="mask-equal-to-prefix-one-candidate-ipv4"),
    pytest.param("beef:1234::/30", 30, None, 1, id="mask-equal-to-prefix-one-candidate-ipv6"),
    pytest.param("10.0.0.0/8", 33, InvalidMaskError, 0, id="mask-longer-than-ipv4"),
    pytest.param("fd00::/120", 129, InvalidMaskError, 0, id="mask-longer-than-ipv6"),
    pytest.param("10.0.0.0/8", -1, InvalidMaskError, 0, id="negative-mask"),
]


@pytest.mark.parametrize(("cluster", "mask", "error", "capacity"), CONSTRUCTOR_ROWS)
def test_constructor_validates_the_mask(cluster, mask, error, capacity):
    if error is not None:
        with pytest.raises(error):
            CidrSet(net(cluster), mask)
        return
    s = CidrSet(net(cluster), mask)
    assert s.capacity == capacity and s.used == 0 and not s.full


def test_constructor_refuses_wrong_types():
    with pytest.raises(TypeError):
        CidrSet("10.0.0.0/8", 24)  # type: ignore[arg-type]
    with pytest.raises(InvalidMaskError):
        CidrSet(net("10.0.0.0/8"), True)  # type: ignore[arg-type]
    with pytest.raises(InvalidMaskError):
        CidrSet(net("10.0.0.0/8"), "24")  # type: ignore[arg-type]


def test_mask_too_big_says_what_is_allowed():
    with pytest.raises(MaskTooBigError, match=r"at most 16.*/48 or shorter"):
        CidrSet(net("beef:1234::/32"), 49)


# TestCIDRSetv6 (upstream): the first two allocations.
@pytest.mark.parametrize(("cluster", "mask", "first", "second"), [
    pytest.param("127.0.0.0/8", 32, "127.0.0.0/32", "127.0.0.1/32", id="upstream-ipv4-max-subnet-size"),
    pytest.param("2001:beef:1234:369b::/60", 64, "2001:beef:1234:3690::/64", "2001:beef:1234:3691::/64",
                 id="upstream-allocate-a-few-ipv6"),
])
def test_first_allocations(cluster, mask, first, second):
    s = CidrSet(net(cluster), mask)
    assert s.allocate_next() == net(first)
    assert s.allocate_next() == net(second)


# --- index <-> CIDR ----------------------------------------------------------

# TestIndexToCIDRBlock (upstream).
@pytest.mark.parametrize(("cluster", "mask", "index", "cidr"), [
    pytest.param("127.123.3.0/16", 24, 0, "127.123.0.0/24", id="upstream-1st-ipv4"),
    pytest.param("127.123.0.0/16", 24, 15, "127.123.15.0/24", id="upstream-16th-ipv4"),
    pytest.param("192.168.5.219/28", 32, 5, "192.168.5.213/32", id="upstream-5th-ipv4"),
    pytest.param("2001:0db8:1234:3::/48", 64, 0, "2001:db8:1234::/64", id="upstream-1st-ipv6-64"),
    pytest.param("2001:0db8:1234::/48", 64, 15, "2001:db8:1234:f::/64", id="upstream-16th-ipv6-64"),
    pytest.param("2001:0db8:85a3::8a2e:0370:7334/50", 63, 6425, "2001:db8:85a3:3232::/63",
                 id="upstream-6426th-ipv6-63"),
    pytest.param("2001:0db8::/32", 48, 0, "2001:db8::/48", id="upstream-1st-ipv6-48"),
    pytest.param("2001:0db8::/32", 48, 15, "2001:db8:f::/48", id="upstream-16th-ipv6-48"),
    pytest.param("2001:0db8:85a3::8a2e:0370:7334/32", 48, 6425, "2001:db8:1919::/48",
                 id="upstream-6426th-ipv6-48"),
    pytest.param("2001:0db8:1234:ff00::/56", 72, 0, "2001:db8:1234:ff00::/72", id="upstream-1st-ipv6-72"),
    pytest.param("2001:0db8:1234:ff00::/56", 72, 15, "2001:db8:1234:ff00:f00::/72",
                 id="upstream-16th-ipv6-72"),
    pytest.param("2001:0db8:1234:ff00::0370:7334/56", 72, 6425, "2001:db8:1234:ff19:1900::/72",
                 id="upstream-6426th-ipv6-72"),
    pytest.param("2001:0db8:1234:0:1234::/80", 96, 0, "2001:db8:1234:0:1234::/96", id="upstream-1st-ipv6-96"),
    pytest.param("2001:0db8:1234:0:1234::/80", 96, 15, "2001:db8:1234:0:1234:f::/96",
                 id="upstream-16th-ipv6-96"),
    pytest.param("2001:0db8:1234:ff00::0370:7334/80", 96, 6425, "2001:db8:1234:ff00:0:1919::/96",
                 id="upstream-6426th-ipv6-96"),
])
def test_cidr_at(cluster, mask, index, cidr):
    s = CidrSet(net(cluster), mask)
    assert s.cidr_at(index) == net(cidr)
    assert s.index_of(net(cidr)) == index


def test_cidr_at_refuses_an_index_outside():
    s = CidrSet(net("10.0.0.0/16"), 24)
    with pytest.raises(IndexError):
        s.cidr_at(256)
    with pytest.raises(IndexError):
        s.cidr_at(-1)


# TestGetBitforCIDR (upstream).
@pytest.mark.parametrize(("cluster", "mask", "subnet", "index"), [
    pytest.param("127.0.0.0/8", 16, "127.0.0.0/16", 0, id="upstream-0-ipv4"),
    pytest.param("be00::/8", 16, "be00::/16", 0, id="upstream-0-ipv6"),
    pytest.param("127.0.0.0/8", 16, "127.123.0.0/16", 123, id="upstream-123-ipv4"),
    pytest.param("be00::/8", 16, "beef::/16", 0xEF, id="upstream-xef-ipv6"),
    pytest.param("127.0.0.0/8", 16, "127.168.0.0/16", 168, id="upstream-168-ipv4"),
    pytest.param("be00::/8", 16, "be68::/16", 0x68, id="upstream-x68-ipv6"),
    pytest.param("127.0.0.0/8", 16, "127.224.0.0/16", 224, id="upstream-224-ipv4"),
    pytest.param("be00::/8", 16, "be24::/16", 0x24, id="upstream-x24-ipv6"),
    pytest.param("192.168.0.0/16", 24, "192.168.12.0/24", 12, id="upstream-12-ipv4"),
    pytest.param("beef::/16", 24, "beef:1200::/24", 0x12, id="upstream-x12-ipv6"),
    pytest.param("192.168.0.0/16", 24, "192.168.151.0/24", 151, id="upstream-151-ipv4"),
    pytest.param("beef::/16", 24, "beef:9700::/24", 0x97, id="upstream-x97-ipv6"),
    pytest.param("192.168.0.0/16", 24, "127.168.224.0/24", None, id="upstream-error-ipv4"),
    pytest.param("beef::/16", 24, "2001:db00::/24", None, id="upstream-error-ipv6"),
    pytest.param("192.168.0.0/16", 24, "fd00::/24", None, id="other-family"),
])
def test_index_of(cluster, mask, subnet, index):
    s = CidrSet(net(cluster), mask)
    if index is None:
        with pytest.raises(OutOfRangeError):
            s.index_of(net(subnet))
    else:
        assert s.index_of(net(subnet)) == index


# --- occupy ------------------------------------------------------------------

# TestOccupy (upstream): which candidate indices a CIDR occupies.
OCCUPY_ROWS = [
    pytest.param("127.0.0.0/8", 16, "127.0.0.0/8", 0, 255, id="upstream-all-bits-ipv4"),
    pytest.param("2001:beef:1200::/40", 48, "2001:beef:1200::/40", 0, 255, id="upstream-all-bits-ipv6"),
    pytest.param("127.0.0.0/8", 16, "127.0.0.0/2", 0, 255, id="upstream-every-bit-bigger-cidr-ipv4"),
    pytest.param("2001:beef:1200::/40", 48, "2001:beef:1234::/34", 0, 255,
                 id="upstream-every-bit-bigger-cidr-ipv6"),
    pytest.param("127.0.0.0/8", 16, "127.0.0.0/16", 0, 0, id="upstream-1st-bit-ipv4"),
    pytest.param("2001:beef:1200::/40", 48, "2001:beef:1200::/48", 0, 0, id="upstream-1st-bit-ipv6"),
    pytest.param("127.0.0.0/8", 32, "127.0.0.0/16", 0, 65535, id="upstream-65535-bits-ipv4"),
    pytest.param("2001:beef:1200::/48", 64, "2001:beef:1200::/48", 0, 65535, id="upstream-65535-bits-ipv6"),
    pytest.param("127.0.0.0/7", 16, "127.0.0.0/15", 256, 257, id="upstream-257th-bit-ipv4"),
    pytest.param("2001:beef:7f00::/39", 48, "2001:beef:7f00::/47", 256, 257, id="upstream-257th-bit-ipv6"),
    pytest.param("127.0.0.0/7", 15, "127.0.0.0/15", 128, 128, id="upstream-128th-bit-ipv4"),
    pytest.param("2001:beef:7f00::/39", 47, "2001:beef:7f00::/47", 128, 128, id="upstream-128th-bit-ipv6"),
    pytest.param("127.0.0.0/7", 18, "127.0.0.0/15", 1024, 1031, id="upstream-1031st-bit-ipv4"),
    pytest.param("2001:beef:7f00::/39", 50, "2001:beef:7f00::/47", 1024, 1031, id="upstream-1031st-bit-ipv6"),
    pytest.param("10.0.0.0/16", 24, "10.0.7.64/26", 7, 7, id="smaller-than-a-candidate-occupies-its-own"),
]


@pytest.mark.parametrize(("cluster", "mask", "cidr", "first", "last"), OCCUPY_ROWS)
def test_occupy_marks_every_candidate_the_cidr_touches(cluster, mask, cidr, first, last):
    s = CidrSet(net(cluster), mask)
    assert s.occupy(net(cidr)) == last - first + 1
    assert s.occupied_index_ranges() == ((first, last),)
    assert s.used == last - first + 1
    assert s.is_occupied(s.cidr_at(first)) and s.is_occupied(s.cidr_at(last))
    check_invariants(s)


@pytest.mark.parametrize(("cluster", "cidr"), [
    pytest.param("192.168.0.0/16", "127.168.224.0/24", id="ipv4-elsewhere"),
    pytest.param("beef::/16", "2001:db00::/24", id="ipv6-elsewhere"),
    pytest.param("192.168.0.0/16", "fd00::/8", id="other-family"),
])
def test_occupy_and_release_outside_the_range_are_errors(cluster, cidr):
    s = CidrSet(net(cluster), 24)
    with pytest.raises(OutOfRangeError, match="out of the range"):
        s.occupy(net(cidr))
    with pytest.raises(OutOfRangeError):
        s.release(net(cidr))
    assert not s.is_occupied(net(cidr))
    assert s.used == 0


# TestDoubleOccupyRelease (upstream): occupancy after every step, then exactly 256 - 3 allocatable.
DOUBLE_OCCUPY_RELEASE_STEPS = [
    ("occupy", "10.42.5.0/24", 1),   # one candidate: +1
    ("occupy", "10.42.9.0/24", 2),   # another: +1
    ("occupy", "10.42.8.0/22", 5),   # four, one of them already occupied: +3
    ("occupy", "10.42.9.0/24", 5),   # already occupied: no change
    ("release", "10.42.9.0/24", 4),  # -1
    ("release", "10.42.9.0/24", 4),  # already free: no change
    ("release", "10.42.4.0/22", 3),  # four, only one of them occupied: -1
]


def test_double_occupy_release_step_table():
    s = CidrSet(net("10.42.0.0/16"), 24)
    model: set[int] = set()
    for op, cidr, expected in DOUBLE_OCCUPY_RELEASE_STEPS:
        touched = set(range(*_bounds(s, net(cidr))))
        if op == "occupy":
            assert s.occupy(net(cidr)) == len(touched - model)
            model |= touched
        else:
            assert s.release(net(cidr)) == len(touched & model)
            model -= touched
        assert s.used == expected, (op, cidr)
        assert {i for a, b in s.occupied_index_ranges() for i in range(a, b + 1)} == model
        check_invariants(s)
    for _ in range(256 - 3):
        s.allocate_next()
        check_invariants(s)
    with pytest.raises(RangeExhaustedError):
        s.allocate_next()


def _bounds(s: CidrSet, cidr: IPNetwork) -> tuple[int, int]:
    """Half-open index range a CIDR inside the range touches (test helper, by brute force)."""
    touched = [i for i in range(s.capacity) if s.cidr_at(i).overlaps(cidr)]
    return touched[0], touched[-1] + 1


# --- allocate / release ------------------------------------------------------

# TestCIDRSetFullyAllocated (upstream).
@pytest.mark.parametrize(("cluster", "mask", "expected"), [
    pytest.param("127.123.234.0/30", 30, "127.123.234.0/30", id="upstream-fully-allocated-ipv4"),
    pytest.param("beef:1234::/30", 30, "beef:1234::/30", id="upstream-fully-allocated-ipv6"),
])
def test_fully_allocated(cluster, mask, expected):
    s = CidrSet(net(cluster), mask)
    assert s.allocate_next() == net(expected)
    assert s.full
    with pytest.raises(RangeExhaustedError):
        s.allocate_next()
    s.release(net(expected))
    assert s.allocate_next() == net(expected)
    with pytest.raises(RangeExhaustedError):
        s.allocate_next()


# TestCIDRSet_RandomishAllocation (upstream).
@pytest.mark.parametrize("cluster", [
    pytest.param("127.123.234.0/16", id="upstream-randomish-ipv4"),
    pytest.param("beef:1234::/16", id="upstream-randomish-ipv6"),
])
def test_release_all_then_reallocate_gives_the_same_sequence(cluster):
    s = CidrSet(net(cluster), 24)
    first = [s.allocate_next() for _ in range(256)]
    assert len(set(first)) == 256
    with pytest.raises(RangeExhaustedError):
        s.allocate_next()
    for c in first:
        s.release(c)
    again = [s.allocate_next() for _ in range(256)]
    with pytest.raises(RangeExhaustedError):
        s.allocate_next()
    assert again == first


# TestCIDRSet_AllocationOccupied (upstream).
@pytest.mark.parametrize("cluster", [
    pytest.param("127.123.234.0/16", id="upstream-allocation-occupied-ipv4"),
    pytest.param("beef:1234::/16", id="upstream-allocation-occupied-ipv6"),
])
def test_allocation_skips_occupied(cluster):
    s = CidrSet(net(cluster), 24)
    cidrs = [s.allocate_next() for _ in range(256)]
    with pytest.raises(RangeExhaustedError):
        s.allocate_next()
    for c in cidrs:
        s.release(c)
    for c in cidrs[128:]:
        s.occupy(c)
    s.occupy(cidrs[128])  # again: idempotent
    again = [s.allocate_next() for _ in range(128)]
    with pytest.raises(RangeExhaustedError):
        s.allocate_next()
    assert again + cidrs[128:] == cidrs


# TestCidrSetMetrics / TestCidrSetMetricsDual (upstream): whole-range release and occupy.
@pytest.mark.parametrize(("cluster", "mask", "capacity"), [
    pytest.param("10.0.0.0/16", 24, 256, id="upstream-metrics-ipv4"),
    pytest.param("2001:db8::/48", 64, 65536, id="upstream-metrics-dual-ipv6"),
])
def test_release_and_occupy_of_the_whole_range(cluster, mask, capacity):
    s = CidrSet(net(cluster), mask)
    for _ in range(256):
        s.allocate_next()
    assert s.release(net(cluster)) == 256
    assert s.used == 0
    assert s.occupy(net(cluster)) == capacity
    assert s.full and s.occupied_index_ranges() == ((0, capacity - 1),)
    assert s.release(net(cluster)) == capacity
    assert s.used == 0 and s.occupied_index_ranges() == ()


def test_occupy_does_not_move_the_pointer_and_allocation_jumps_the_run():
    """TestCidrSetMetricsHistogram (upstream): after occupying the first half, the next is the 129th."""
    s = CidrSet(net("10.0.0.0/16"), 24)
    s.occupy(net("10.0.0.0/17"))
    assert s.next_candidate == 0
    assert s.allocate_next() == net("10.0.128.0/24")
    assert s.used == 129
    assert s.inspected == 2  # upstream probes 128 occupied bits one by one; one run here


def test_next_fit_does_not_reuse_a_released_cidr_until_it_wraps():
    s = CidrSet(net("10.0.0.0/22"), 24)
    a, b, c = (s.allocate_next() for _ in range(3))
    s.release(a)
    assert s.allocate_next() == net("10.0.3.0/24")  # next-fit, not first-fit
    assert s.next_candidate == 0
    assert s.allocate_next() == a  # wrapped around
    assert s.full
    check_invariants(s)
    assert (b, c) == (net("10.0.1.0/24"), net("10.0.2.0/24"))


def test_exhaustion_message_says_capacity_and_what_to_change():
    s = CidrSet(net("10.0.0.0/22"), 24)
    s.occupy(net("10.0.0.0/22"))
    with pytest.raises(RangeExhaustedError) as info:
        s.allocate_next()
    err = info.value
    text = str(err)
    assert "no remaining CIDRs left to allocate" in text
    assert "10.0.0.0/22 holds 4 node CIDR(s) of /24" in text
    assert "larger cluster-cidr" in text and "mask size" in text
    assert (err.cluster, err.mask, err.capacity, err.used) == (net("10.0.0.0/22"), 24, 4, 4)


def test_exhaustion_message_for_ipv6_at_the_limit_only_suggests_a_larger_range():
    s = CidrSet(net("fd00::/48"), 64)
    s.occupy(net("fd00::/48"))
    with pytest.raises(RangeExhaustedError, match="65536 node CIDR") as info:
        s.allocate_next()
    assert "mask size" not in str(info.value)


# --- is_taken ----------------------------------------------------------------


def test_is_taken_skips_a_candidate_without_occupying_it():
    s = CidrSet(net("10.0.0.0/16"), 24)
    seen: list[IPNetwork] = []

    def taken(c: IPNetwork) -> bool:
        seen.append(c)
        return c == net("10.0.0.0/24")

    assert s.allocate_next(taken) == net("10.0.1.0/24")
    assert seen == [net("10.0.0.0/24"), net("10.0.1.0/24")]
    assert not s.is_occupied(net("10.0.0.0/24"))
    assert s.used == 1 and s.inspected == 2
    # The rejected one is only met again after wrapping around.
    assert s.allocate_next() == net("10.0.2.0/24")


def test_all_free_candidates_taken_elsewhere_is_exhaustion_and_changes_nothing():
    s = CidrSet(net("10.0.0.0/22"), 24)
    s.occupy(net("10.0.1.0/24"))
    s.allocate_next()  # 10.0.0.0/24; pointer at 1
    calls: list[IPNetwork] = []
    with pytest.raises(RangeExhaustedError, match="reserved elsewhere") as info:
        s.allocate_next(lambda c: calls.append(c) or True)
    assert calls == [net("10.0.2.0/24"), net("10.0.3.0/24")]  # each free one once
    assert info.value.used == 2
    assert s.used == 2 and s.next_candidate == 1


def test_candidates_and_take_allow_reserving_outside_the_set():
    s = CidrSet(net("10.0.0.0/22"), 24)
    s.occupy(net("10.0.0.0/24"))
    assert list(s.candidates()) == [net("10.0.1.0/24"), net("10.0.2.0/24"), net("10.0.3.0/24")]
    assert s.used == 1
    s.take(net("10.0.2.0/24"))
    assert s.next_candidate == 3
    assert list(s.candidates()) == [net("10.0.3.0/24"), net("10.0.1.0/24")]
    with pytest.raises(OutOfRangeError):
        s.take(net("10.0.0.0/23"))


# --- algorithmic shape (counts, never the clock) -----------------------------


def test_shape_empty_slash8_inspects_one_candidate():
    s = CidrSet(net("10.0.0.0/8"), 24)
    assert s.capacity == 65536
    assert s.allocate_next() == net("10.0.0.0/24")
    assert s.inspected == 1


def test_shape_after_ten_occupied_inspects_at_most_eleven():
    s = CidrSet(net("10.0.0.0/8"), 24)
    for i in range(10):
        s.occupy(s.cidr_at(i))
    assert s.allocate_next() == s.cidr_at(10)
    assert s.inspected <= 11
    assert s.inspected == 2  # one run, one free candidate


@pytest.mark.parametrize(("cluster", "mask"), [
    pytest.param("10.0.0.0/8", 24, id="ipv4-65536"),
    pytest.param("fd00:1::/48", 64, id="ipv6-65536"),
])
def test_shape_nearly_full_range_inspects_a_few_candidates(cluster, mask):
    s = CidrSet(net(cluster), mask)
    s.occupy(net(cluster))
    last = s.cidr_at(s.capacity - 1)
    s.release(last)
    # pointer at 0: one run, then the free one
    assert s.allocate_next() == last and s.inspected == 2
    s.release(s.cidr_at(0))
    # pointer at 0 again (wrapped): the free one at once
    assert s.allocate_next() == s.cidr_at(0) and s.inspected == 1
    with pytest.raises(RangeExhaustedError):
        s.allocate_next()
    assert s.inspected == 0  # `full` is answered from the counter


def test_shape_checkerboard_runs_stay_cheap():
    s = CidrSet(net("10.0.0.0/8"), 24)
    for i in range(0, s.capacity, 2):
        s.occupy(s.cidr_at(i))
    assert s.used == 32768 and len(s.occupied_index_ranges()) == 32768
    assert s.allocate_next() == s.cidr_at(1) and s.inspected == 2
    check_invariants(s)


# --- dual stack --------------------------------------------------------------


def test_dual_stack_gives_one_cidr_per_family_in_cluster_cidr_order():
    a = DualStackAllocator((net("fd00:10::/56"), net("10.244.0.0/16")))
    assert [s.mask for s in a.sets] == [64, 24]  # defaults per family, in cluster-cidr order
    assert a.allocate() == (net("fd00:10::/64"), net("10.244.0.0/24"))
    assert a.allocate() == (net("fd00:10:0:1::/64"), net("10.244.1.0/24"))


def test_dual_stack_mask_sizes_are_per_family_and_validated():
    a = DualStackAllocator((net("10.0.0.0/16"), net("fd00::/48")), mask_v4=26, mask_v6=60)
    assert [s.capacity for s in a.sets] == [1024, 4096]
    with pytest.raises(MaskTooBigError):
        DualStackAllocator((net("10.0.0.0/16"), net("fd00::/32")))  # /64 is 32 bits longer
    with pytest.raises(MaskTooSmallError):
        DualStackAllocator((net("10.0.0.0/25"),))


@pytest.mark.parametrize("cidrs", [
    pytest.param((), id="none"),
    pytest.param(("10.0.0.0/16", "10.1.0.0/16"), id="two-ipv4"),
    pytest.param(("10.0.0.0/16", "fd00::/48", "10.1.0.0/16"), id="three"),
])
def test_dual_stack_refuses_a_bad_cluster_cidr_list(cidrs):
    with pytest.raises(ValueError):
        DualStackAllocator(tuple(net(c) for c in cidrs))


def test_dual_stack_is_all_or_nothing():
    a = DualStackAllocator((net("10.0.0.0/22"), net("fd00::/63")))
    a.allocate()
    a.allocate()  # the IPv6 range (2 x /64) is now full
    v4 = a.sets[0]
    before = (v4.used, v4.next_candidate, v4.occupied_index_ranges())
    with pytest.raises(RangeExhaustedError) as info:
        a.allocate()
    assert info.value.cluster == net("fd00::/63")
    assert (v4.used, v4.next_candidate, v4.occupied_index_ranges()) == before
    assert a.full


def test_dual_stack_seeds_from_the_node_index_and_reports_what_it_ignored():
    index = NodeCidrIndex()
    index.set("a", [net("10.244.0.0/24"), net("fd00::/64")])
    index.set("b", [net("10.244.1.0/24")])
    index.set("stray", [net("192.168.0.0/24")])          # outside the range
    index.set("v6-elsewhere", [net("2001:db8::/64")])     # outside the range
    index.set("big", [net("10.244.2.0/23")])              # occupies two candidates
    a = DualStackAllocator((net("10.244.0.0/16"), net("fd00::/48")))
    skipped = a.seed(index)
    assert sorted(skipped, key=str) == sorted(
        [("stray", net("192.168.0.0/24")), ("v6-elsewhere", net("2001:db8::/64"))], key=str)
    assert a.sets[0].used == 4 and a.sets[1].used == 1
    assert a.allocate() == (net("10.244.4.0/24"), net("fd00:0:0:1::/64"))


def test_dual_stack_single_family_ignores_the_other_family():
    index = NodeCidrIndex()
    index.set("a", [net("10.244.0.0/24"), net("fd00::/64")])
    a = DualStackAllocator.from_index((net("10.244.0.0/16"),), index)
    assert a.sets[0].used == 1
    assert a.allocate() == (net("10.244.1.0/24"),)
    a.release([net("10.244.1.0/24"), net("fd00::/64"), net("192.168.0.0/24")])
    assert a.sets[0].used == 1


def test_dual_stack_is_taken_applies_to_every_family():
    a = DualStackAllocator((net("10.0.0.0/16"), net("fd00::/48")))
    reserved = {net("10.0.0.0/24"), net("fd00::/64")}
    assert a.allocate(reserved.__contains__) == (net("10.0.1.0/24"), net("fd00:0:0:1::/64"))


# --- properties --------------------------------------------------------------


@st.composite
def ranges(draw: st.DrawFn, max_diff: int = 8) -> tuple[IPNetwork, int]:
    """A cluster-cidr of either family and a node mask at most ``max_diff`` bits longer."""
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    prefix = draw(st.integers(min_value=1, max_value=bits))
    mask = draw(st.integers(min_value=prefix, max_value=min(bits, prefix + max_diff)))
    address = draw(st.integers(min_value=0, max_value=(1 << bits) - 1))
    family = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    cluster = family((address >> (bits - prefix) << (bits - prefix), prefix))
    return cluster, mask


@st.composite
def nearby_cidrs(draw: st.DrawFn, cluster: IPNetwork, mask: int) -> IPNetwork:
    """A CIDR of the cluster's family, usually inside or around the range, of any nearby length."""
    bits = cluster.max_prefixlen
    prefixlen = draw(st.integers(min_value=max(0, cluster.prefixlen - 2), max_value=min(bits, mask + 3)))
    span = 1 << (bits - cluster.prefixlen)
    base = int(cluster.network_address)
    top = min((1 << bits) - 1, base + 2 * span - 1)
    address = draw(st.integers(min_value=max(0, base - span), max_value=top))
    return type(cluster)((address >> (bits - prefixlen) << (bits - prefixlen), prefixlen))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_allocations_are_inside_sized_and_disjoint_until_exactly_full(data):
    cluster, mask = data.draw(ranges())
    existing = data.draw(st.lists(nearby_cidrs(cluster, mask), max_size=6))
    index = NodeCidrIndex()
    for n, cidr in enumerate(existing):
        index.set(f"node-{n}", [cidr])
    a = DualStackAllocator.from_index((cluster,), index, mask_v4=mask, mask_v6=mask)
    s = a.sets[0]
    # Brute force: a candidate is free when no existing CIDR overlaps it.
    free = [i for i in range(s.capacity) if not any(s.cidr_at(i).overlaps(e) for e in existing)]
    assert s.used == s.capacity - len(free)
    allocated: list[IPNetwork] = []
    for _ in range(len(free)):
        (got,) = a.allocate()
        assert got.subnet_of(cluster)
        assert got.prefixlen == mask
        assert not any(got.overlaps(e) for e in existing)
        assert not any(got.overlaps(p) for p in allocated)
        allocated.append(got)
        check_invariants(s)
    assert s.full
    with pytest.raises(RangeExhaustedError):
        a.allocate()
    if allocated:
        victim = data.draw(st.sampled_from(allocated))
        a.release([victim])
        assert not s.full
        assert a.allocate() == (victim,)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_property_matches_a_set_of_indices_model_after_every_step(data):
    cluster, mask = data.draw(ranges(max_diff=6))
    s = CidrSet(cluster, mask)
    model: set[int] = set()
    pointer = 0
    steps = data.draw(st.lists(st.sampled_from(["occupy", "release", "allocate", "allocate-taken"]),
                               max_size=25))
    for step in steps:
        if step in ("occupy", "release"):
            cidr = data.draw(nearby_cidrs(cluster, mask))
            touched = {i for i in range(s.capacity) if s.cidr_at(i).overlaps(cidr)}
            if not touched:
                with pytest.raises(OutOfRangeError):
                    getattr(s, step)(cidr)
                continue
            if step == "occupy":
                assert s.occupy(cidr) == len(touched - model)
                model |= touched
            else:
                assert s.release(cidr) == len(touched & model)
                model -= touched
        else:
            rejected = (
                set(data.draw(st.lists(st.integers(0, s.capacity - 1), max_size=4)))
                if step == "allocate-taken" else set()
            )
            order = list(range(pointer, s.capacity)) + list(range(pointer))
            want = next((i for i in order if i not in model and i not in rejected), None)
            if want is None:
                with pytest.raises(RangeExhaustedError):
                    s.allocate_next(lambda c, r=rejected: s.index_of(c) in r)
            else:
                assert s.allocate_next(lambda c, r=rejected: s.index_of(c) in r) == s.cidr_at(want)
                model.add(want)
                pointer = (want + 1) % s.capacity
        assert s.used == len(model)
        assert {i for a, b in s.occupied_index_ranges() for i in range(a, b + 1)} == model
        assert s.next_candidate == pointer
        check_invariants(s)


def test_candidates_of_an_ipv6_range_near_zero_stay_ipv6():
    s = CidrSet(net("::/112"), 120)
    assert s.cidr_at(1) == net("::100/120")
    assert s.allocate_next().version == 6


@settings(max_examples=500)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(0, 8)), max_size=40),
       st.integers(0, 70))
def test_index_runs_are_the_set_they_stand_for(ops, probe):
    """IndexRuns against a plain set: counts, membership and maximal, non-adjacent runs after every change."""
    runs, plain = IndexRuns(), set()
    for adding, first, width in ops:
        span = set(range(first, first + width + 1))
        if adding:
            assert runs.add(first, first + width) == len(span - plain)
            plain |= span
        else:
            assert runs.remove(first, first + width) == len(span & plain)
            plain -= span
        assert runs.count == len(plain)
        ranges = runs.ranges()
        assert {i for a, b in ranges for i in range(a, b + 1)} == plain
        assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(ranges))
    end = runs.run_end(probe)
    assert (end is not None) == (probe in plain)
    if end is not None:
        assert all(i in plain for i in range(probe, end + 1)) and end + 1 not in plain
    assert runs.any_in(probe, probe + 3) == bool(plain & set(range(probe, probe + 4)))
