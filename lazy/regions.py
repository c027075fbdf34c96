"""Which lazy pages are still owed to the restored process, and where they now live.

A Region is a run of registered memory [start, end) whose page i holds the
image's page at src + i*PAGE_SIZE (they differ once the process mremaps).
`pending[i]` is 1 while the image still has content for page i that has
not been copied in; copied, removed (MADV_DONTNEED) and unmapped pages are 0.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

PAGE = 4096


@dataclass
class Region:
    start: int
    end: int
    src: int
    pending: bytearray
    left: int

    def page_index(self, addr: int) -> int:
        return (addr - self.start) // PAGE


class RegionMap:
    def __init__(self) -> None:
        self._regions: list[Region] = []   # sorted by start, not overlapping
        self.pending_pages = 0

    def __iter__(self) -> Iterator[Region]:
        return iter(list(self._regions))

    def copy(self) -> RegionMap:
        """An independent map with the same pages owed (for a forked child)."""
        out = RegionMap()
        out._regions = [Region(r.start, r.end, r.src, bytearray(r.pending), r.left)
                        for r in self._regions]
        out.pending_pages = self.pending_pages
        return out

    def add(self, start: int, end: int, stored: list[tuple[int, int]]) -> None:
        """Track [start, end); `stored` lists (vaddr, nr_pages) the image holds in it."""
        npages = (end - start) // PAGE
        pending = bytearray(npages)
        left = 0
        for vaddr, n in stored:
            i = (vaddr - start) // PAGE
            pending[i : i + n] = b"\1" * n
            left += n
        region = Region(start, end, start, pending, left)
        bisect.insort(self._regions, region, key=lambda r: r.start)
        self.pending_pages += left

    def find(self, addr: int) -> Region | None:
        i = bisect.bisect_right(self._regions, addr, key=lambda r: r.start) - 1
        if i >= 0 and self._regions[i].start <= addr < self._regions[i].end:
            return self._regions[i]
        return None

    def pending_runs(self, region: Region, addr: int, max_pages: int) -> list[tuple[int, int]]:
        """Runs (page index, count) of pending pages in [addr, addr + max_pages pages)."""
        first = region.page_index(addr)
        last = min(first + max_pages, len(region.pending))
        runs: list[tuple[int, int]] = []
        i = region.pending.find(1, first, last)
        while 0 <= i < last:
            j = region.pending.find(0, i, last)
            if j < 0:
                j = last
            runs.append((i, j - i))
            i = region.pending.find(1, j, last)
        return runs

    def mark_done(self, region: Region, index: int, count: int) -> int:
        """Mark pages done; returns how many were pending."""
        was = region.pending.count(1, index, index + count)
        region.pending[index : index + count] = bytes(count)
        region.left -= was
        self.pending_pages -= was
        return was

    def drop_range(self, start: int, end: int) -> None:
        """Pages in [start, end) are no longer owed (removed or unmapped)."""
        for region in self._regions:
            lo, hi = max(start, region.start), min(end, region.end)
            if lo < hi:
                self.mark_done(region, region.page_index(lo), (hi - lo) // PAGE)

    def _split(self, addr: int) -> None:
        region = self.find(addr)
        if region is None or region.start == addr:
            return
        i = region.page_index(addr)
        tail = Region(addr, region.end, region.src + i * PAGE, region.pending[i:], 0)
        tail.left = tail.pending.count(1)
        region.pending = region.pending[:i]
        region.left -= tail.left
        region.end = addr
        bisect.insort(self._regions, tail, key=lambda r: r.start)

    def remap(self, old: int, new: int, length: int) -> None:
        """mremap moved [old, old+length) to new: the owed pages moved with it."""
        for addr in (old, old + length, new, new + length):
            self._split(addr)
        moved = [r for r in self._regions if old <= r.start and r.end <= old + length]
        self.drop_range(new, new + length)   # whatever was at the target is gone
        self._regions = [r for r in self._regions
                         if not (old <= r.start and r.end <= old + length)
                         and not (new <= r.start and r.end <= new + length)]
        for r in moved:
            r.start += new - old
            r.end += new - old
            bisect.insort(self._regions, r, key=lambda x: x.start)
