"""workingset.img: the pages each process faulted on during a recorded lazy
restore, kept beside the image so later lazy restores can push them before
the process runs (a warm start with few faults).

The file names the recorded page ranges and, for a local image, holds a
copy of those pages uncompressed (read in one go, where the image would
decompress every block they touch). A file that does not parse, was
recorded for another image (inventory digest), names memory the image's
process does not have, or whose pages fail their checksum is refused with a
warning and the restore goes on without it: it never serves wrong pages.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError

from . import lazarus_pb2 as pb
from .pagestore import PAGE_SIZE

WORKINGSET = "workingset.img"
WORKINGSET_VERSION = 1
# Ranges kept per process: the file must stay small (it travels in one page
# server control message of at most 1 MiB).
MAX_RANGES = 20000
# Pages copied into the file per process (256 MiB); a bigger working set is
# kept as ranges only.
MAX_EMBEDDED_PAGES = 65536
_MAGIC = b"LZWS"
_HEADER = struct.Struct("<4sI")

Ranges = list[tuple[int, int]]     # (image vaddr, nr_pages)
PageBuffer = bytes | mmap.mmap     # a working-set file, read or mapped


class WorkingSetError(Exception):
    """A working-set file that cannot be used for this image."""


def inventory_digest(inventory_bytes: bytes) -> bytes:
    """Which image a working set belongs to: the digest of its inventory.img
    (it holds the dump time, pids and options, so every dump differs)."""
    return hashlib.sha256(inventory_bytes).digest()


@dataclass
class ProcessPlan:
    """What to prefetch for one process: the recorded ranges, and the copy
    of their pages when the file holds one: `runs` in order in `pages` (the
    whole file, page-aligned) from its page `first`."""

    ranges: Ranges
    runs: Ranges = field(default_factory=list)
    pages: PageBuffer = b""
    first: int = 0


def _page_area(header_size: int) -> int:
    return -(-header_size // PAGE_SIZE) * PAGE_SIZE


def encode(digest: bytes, recorded: dict[int, ProcessPlan], window: float) -> bytes:
    """The file; a plan's `pages` is its copy alone here (first = 0)."""
    ws = pb.WorkingSet(format_version=WORKINGSET_VERSION, inventory_sha256=digest,
                       recorded_unix_ns=time.time_ns(), window_seconds=window)
    copies: list[PageBuffer] = []
    offset = 0
    for pid, plan in sorted(recorded.items()):
        p = ws.processes.add(pid=pid)
        for vaddr, n in plan.ranges[:MAX_RANGES]:
            p.ranges.add(vaddr=vaddr, nr_pages=n)
        if plan.runs:
            for vaddr, n in plan.runs:
                p.runs.add(vaddr=vaddr, nr_pages=n)
            p.pages_offset = offset
            p.pages_crc32 = zlib.crc32(plan.pages)
            copies.append(plan.pages)
            offset += len(plan.pages)
    body = ws.SerializeToString()
    head = _HEADER.pack(_MAGIC, len(body)) + body
    if not copies:
        return head
    return b"".join([head, bytes(_page_area(len(head)) - len(head)), *copies])


def write_local(directory: Path, data: bytes) -> None:
    """Write (or replace) DIR/workingset.img atomically, 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{WORKINGSET}.tmp-", dir=directory)
    try:
        with open(fd, "wb") as f:     # mkstemp makes it 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, directory / WORKINGSET)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def parse(data: PageBuffer) -> tuple[pb.WorkingSet, int]:
    """The file's WorkingSet, and where its page area starts."""
    if len(data) < _HEADER.size:
        raise WorkingSetError(f"{WORKINGSET} is corrupt (truncated)")
    magic, size = _HEADER.unpack_from(data)
    if magic != _MAGIC or _HEADER.size + size > len(data):
        raise WorkingSetError(f"{WORKINGSET} is corrupt (not a working set, or truncated)")
    try:
        ws = pb.WorkingSet.FromString(data[_HEADER.size : _HEADER.size + size])
    except DecodeError:
        raise WorkingSetError(f"{WORKINGSET} is corrupt (does not parse)") from None
    if ws.format_version != WORKINGSET_VERSION or len(ws.inventory_sha256) != 32:
        raise WorkingSetError(f"{WORKINGSET} is corrupt or of an unknown format "
                              f"(version {ws.format_version})")
    return ws, _page_area(_HEADER.size + size)


def _checked(ranges: Iterable[pb.WorkingSetRange], proc: pb.ProcessImage) -> Ranges:
    """The ranges, each inside one VMA of the process, page-aligned."""
    vmas = sorted((v.start, v.end) for v in proc.vmas)
    starts = [s for s, _ in vmas]
    out: Ranges = []
    for r in ranges:
        end = r.vaddr + r.nr_pages * PAGE_SIZE
        i = bisect.bisect_right(starts, r.vaddr) - 1
        if r.vaddr % PAGE_SIZE or not r.nr_pages or i < 0 or end > vmas[i][1]:
            raise WorkingSetError(f"{WORKINGSET}: pages {r.vaddr:#x}+{r.nr_pages} are "
                                  f"not memory of process {proc.pid} in the image")
        out.append((r.vaddr, r.nr_pages))
    return out


def check(data: PageBuffer, digest: bytes,
          procs: list[pb.ProcessImage]) -> dict[int, ProcessPlan]:
    """The per-process plans of a working-set file, checked against the image
    it is meant for; raises WorkingSetError saying why it cannot be used."""
    ws, area = parse(data)
    if ws.inventory_sha256 != digest:
        raise WorkingSetError(f"{WORKINGSET} was recorded for another image")
    by_pid = {p.pid: p for p in procs}
    out: dict[int, ProcessPlan] = {}
    for pws in ws.processes:
        proc = by_pid.get(pws.pid)
        if proc is None:
            raise WorkingSetError(f"{WORKINGSET} names process {pws.pid}, "
                                  "which is not in the image")
        runs = _checked(pws.runs, proc)
        plan = ProcessPlan(_checked(pws.ranges, proc), runs)
        if runs:
            lo = area + pws.pages_offset
            hi = lo + sum(n for _, n in runs) * PAGE_SIZE
            if pws.pages_offset % PAGE_SIZE or hi > len(data) or \
                    zlib.crc32(memoryview(data)[lo:hi]) != pws.pages_crc32:
                raise WorkingSetError(f"{WORKINGSET}: the pages of process {pws.pid} are "
                                      "corrupt (size or checksum)")
            plan.pages, plan.first = data, lo // PAGE_SIZE
        out[pws.pid] = plan
    return out


def coalesce(ranges: Ranges, stored: Ranges, max_run: int, gap: int = 0) -> Ranges:
    """The recorded ranges as few, large runs (sorted, merged, holes of up to
    `gap` pages filled in), clipped to the pages the image stores (`stored`,
    sorted (vaddr, nr_pages)) and cut at `max_run` pages: what to fetch and
    copy in one batch."""
    merged: list[list[int]] = []
    for vaddr, n in sorted(ranges):
        end = vaddr + n * PAGE_SIZE
        if merged and vaddr <= merged[-1][1] + gap * PAGE_SIZE:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([vaddr, end])
    out: Ranges = []
    i = 0
    for lo, hi in merged:
        while i < len(stored) and stored[i][0] + stored[i][1] * PAGE_SIZE <= lo:
            i += 1
        j = i
        while j < len(stored) and stored[j][0] < hi:
            s = max(lo, stored[j][0])
            e = min(hi, stored[j][0] + stored[j][1] * PAGE_SIZE)
            if out and out[-1][0] + out[-1][1] * PAGE_SIZE == s:
                s = out.pop()[0]    # continues the previous run: one run
            while s < e:
                n = min(max_run, (e - s) // PAGE_SIZE)
                out.append((s, n))
                s += n * PAGE_SIZE
            j += 1
    return out


def unique_pages(ranges: Ranges) -> int:
    """Pages named at least once (fault-around ranges overlap)."""
    total, reach = 0, 0
    for vaddr, n in sorted(ranges):
        end = vaddr + n * PAGE_SIZE
        if end > reach:
            total += (end - max(vaddr, reach)) // PAGE_SIZE
            reach = end
    return total


def describe(directory: Path) -> dict[str, object] | None:
    """For `lazarus show`: the recorded working set in DIR, if any."""
    path = Path(directory) / WORKINGSET
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        return {"error": f"cannot read {WORKINGSET}: {e.strerror}"}
    try:
        ws, _ = parse(data)
    except WorkingSetError as e:
        return {"error": str(e)}
    try:
        digest = inventory_digest((Path(directory) / "inventory.img").read_bytes())
    except OSError:
        digest = b""
    return {
        "processes": len(ws.processes),
        "pages": sum(unique_pages([(r.vaddr, r.nr_pages) for r in p.ranges])
                     for p in ws.processes),
        "ranges": sum(len(p.ranges) for p in ws.processes),
        "pages_copied": sum(r.nr_pages for p in ws.processes for r in p.runs),
        "recorded_unix_ns": ws.recorded_unix_ns,
        "window_seconds": ws.window_seconds,
        "matches_image": ws.inventory_sha256 == digest,
    }
