"""A set of non-negative integers kept as sorted, maximal runs: the occupancy behind a CidrSet.

kube-controller-manager's ``cidr_set.go`` keeps one bit per candidate CIDR; a /8 cut
into /24s is 65,536 bits, and IPv6 ranges go to 2**16 candidates per set. Here the
occupied candidates are runs ``first -> last`` (inclusive), never overlapping and
never adjacent, so memory grows with the number of runs and every query is a
bisection: a nearly full range costs O(log runs), not O(candidates). Pure, no I/O;
the candidate arithmetic and the allocation policy are :mod:`webhook.core.cidrset`'s.
"""

from __future__ import annotations

from sortedcontainers import SortedDict

__all__ = ["IndexRuns"]


class IndexRuns:
    """Integers as maximal runs; :attr:`count` is how many are in the set (O(1))."""

    def __init__(self) -> None:
        # first index -> last index of each maximal run.
        self._runs: SortedDict = SortedDict()
        self.count = 0

    def ranges(self) -> tuple[tuple[int, int], ...]:
        """Every run as ``(first, last)``, in order."""
        return tuple(self._runs.items())

    def run_end(self, index: int) -> int | None:
        """The last index of the run holding ``index``, or None when ``index`` is not in the set."""
        runs = self._runs
        i = runs.bisect_right(index) - 1
        if i >= 0:
            last = runs.peekitem(i)[1]
            if last >= index:
                return last
        return None

    def any_in(self, first: int, last: int) -> bool:
        """Whether any of ``first..last`` is in the set."""
        i = self._runs.bisect_right(last) - 1
        return i >= 0 and self._runs.peekitem(i)[1] >= first

    def add(self, first: int, last: int) -> int:
        """Put ``first..last`` in the set; return how many of them were not in it."""
        runs = self._runs
        lo, hi = first, last
        i = runs.bisect_right(first) - 1
        if i >= 0:
            start, end = runs.peekitem(i)
            if end >= first - 1:  # overlapping or adjacent on the left: merge
                lo = start
        covered = 0
        for start in list(runs.irange(lo, last + 1)):
            end = runs.pop(start)
            covered += max(0, min(end, last) - max(start, first) + 1)
            hi = max(hi, end)
        runs[lo] = hi
        added = (last - first + 1) - covered
        self.count += added
        return added

    def remove(self, first: int, last: int) -> int:
        """Take ``first..last`` out of the set; return how many of them were in it."""
        runs = self._runs
        freed = 0
        i = runs.bisect_right(first) - 1
        if i >= 0:
            start, end = runs.peekitem(i)
            if start < first <= end:  # a run that begins on the left: cut it
                runs[start] = first - 1
                freed += min(end, last) - first + 1
                if end > last:
                    runs[last + 1] = end
        for start in list(runs.irange(first, last)):
            end = runs.pop(start)
            freed += min(end, last) - start + 1
            if end > last:
                runs[last + 1] = end
        self.count -= freed
        return freed
