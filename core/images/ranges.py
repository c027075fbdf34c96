"""Sorted, disjoint [start, end) address ranges: the set algebra that
incremental images need (pages written since the parent, pages inherited)."""

from __future__ import annotations

from collections.abc import Iterable

Range = tuple[int, int]


def normalize(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, merged, empty ones dropped."""
    out: list[Range] = []
    for s, e in sorted(r for r in ranges if r[0] < r[1]):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def intersect(a: list[Range], b: list[Range]) -> list[Range]:
    """Both inputs sorted and disjoint."""
    out: list[Range] = []
    i = j = 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if s < e:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[Range], b: list[Range]) -> list[Range]:
    """a minus b, both sorted and disjoint."""
    out: list[Range] = []
    j = 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        k = j
        pos = s
        while k < len(b) and b[k][0] < e:
            if b[k][0] > pos:
                out.append((pos, b[k][0]))
            pos = max(pos, b[k][1])
            k += 1
        if pos < e:
            out.append((pos, e))
    return out


def total(ranges: Iterable[Range]) -> int:
    return sum(e - s for s, e in ranges)
