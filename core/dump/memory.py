"""Stage: copy the memory that only the process holds into the page store.

Which pages: every present or swapped page of private anonymous and shared
anonymous VMAs, and the copy-on-written (anonymous) pages of private file
mappings; pagemap tells them apart. Zero pages are dropped by the store.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator

from core import procfs
from core.dump.context import DumpContext, ProcDump
from core.images import PAGE_SIZE, PageStoreWriter, pb, ranges
from core.kernel import dirty
from core.kernel.dirty import SWP_PTE_MARKER, SWP_TYPE_MASK
from core.kernel.memory import ProcMem
from core.progress import Progress

log = logging.getLogger("lazarus")

PM_PRESENT = 1 << 63
PM_SWAPPED = 1 << 62
PM_FILE = 1 << 61           # file page or shared anonymous page
READ_CHUNK = 4 << 20        # bytes read from the target per call

DUMPED_KINDS = (pb.Vma.ANON_PRIVATE, pb.Vma.ANON_SHARED, pb.Vma.FILE_PRIVATE)


def _table(pred: Callable[[int], bool]) -> bytes:
    return bytes(1 if pred(b) else 0 for b in range(256))


# Per pagemap entry, its top byte (bits 56-63) and its low byte (the swap
# type of a swap entry): mapped to 0/1 by bytes.translate, so a whole VMA
# is classified at C speed instead of one Python step per page.
_TOP_PRESENT = _table(lambda b: bool(b & 0x80))
_TOP_PRESENT_ANON = _table(lambda b: bool(b & 0x80) and not b & 0x20)  # PM_FILE is bit 61
_TOP_SWAPPED = _table(lambda b: bool(b & 0x40) and not b & 0x80)
_LOW_NOT_MARKER = _table(lambda b: b & SWP_TYPE_MASK != SWP_PTE_MARKER)
_KEEP = re.compile(b"\x01+")


def stored_runs(pagemap_fd: int, vma: pb.Vma) -> Iterator[tuple[int, int]]:
    """(address, npages) runs of pages of `vma` that belong in the image:
    present (for a private file mapping: copied-on-write, not file pages) or
    swapped; a userfaultfd write-protect marker on a never-filled pte reads
    as swapped but holds no page."""
    npages = (vma.end - vma.start) // PAGE_SIZE
    data = os.pread(pagemap_fd, npages * 8, vma.start // PAGE_SIZE * 8)
    npages = len(data) // 8
    top, low = data[7::8], data[0::8]
    present = top.translate(_TOP_PRESENT_ANON if vma.kind == pb.Vma.FILE_PRIVATE
                            else _TOP_PRESENT)
    swapped = top.translate(_TOP_SWAPPED)
    if swapped.count(0) != npages:
        keep = int.from_bytes(present, "little") | (
            int.from_bytes(swapped, "little") &
            int.from_bytes(low.translate(_LOW_NOT_MARKER), "little"))
        present = keep.to_bytes(npages, "little")
    for m in _KEEP.finditer(present):
        yield vma.start + m.start() * PAGE_SIZE, m.end() - m.start()


def copy_run(mem: ProcMem, store: PageStoreWriter, view: memoryview, addr: int, end: int,
             running: bool, progress: Progress) -> None:
    while addr < end:
        size = min(READ_CHUNK, end - addr)
        try:
            mem.read_into(addr, view[:size])
        except OSError as exc:
            if not running:
                raise
            # A pre-dump copies while the process runs: it may unmap memory
            # meanwhile. A mapping made again there is untracked, hence
            # stored whole by the next round, so skipping is safe.
            log.info("pre-dump: %#x-%#x unreadable (%s), skipped", addr, addr + size, exc)
        else:
            store.add(addr, view[:size])
        progress.add(size)
        addr += size


def plan_process_memory(p: ProcDump, pagemap_fd: int,
                        shared_seen: set[int]) -> tuple[list[tuple[int, int]],
                                                        list[tuple[int, int]]]:
    """The runs of ``p``'s memory to store, and those it inherits from the
    parent image, as (start, end) address pairs."""
    stored: list[tuple[int, int]] = []
    inherited: list[tuple[int, int]] = []
    for vma in p.proc.vmas:
        if vma.kind not in DUMPED_KINDS:
            continue
        if vma.kind == pb.Vma.ANON_SHARED:
            # Shared memory is stored once, by the first process mapping it.
            if vma.shmem_ino in shared_seen:
                continue
            shared_seen.add(vma.shmem_ino)
        runs = [(a, a + n * PAGE_SIZE) for a, n in stored_runs(pagemap_fd, vma)]
        written = p.written.get(vma.start)
        if written is not None:
            # Tracked since the parent image: store what was written, the
            # rest of what is there is the parent's, except pages mapping
            # the zero page (emptied, e.g. by MADV_DONTNEED, then only
            # read): zeros, whatever the parent holds there.
            zero = dirty.zero_page_ranges(pagemap_fd, vma.start, vma.end)
            inherited.extend(ranges.subtract(ranges.subtract(runs, written), zero))
            runs = ranges.intersect(runs, written)
        stored.extend(runs)
    return stored, inherited


def dump_process_memory(ctx: DumpContext, p: ProcDump, runs: list[tuple[int, int]],
                        inherited: list[tuple[int, int]], progress: Progress) -> int:
    assert ctx.writer is not None
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    path = ctx.writer.pages_path(p.pid)
    with ProcMem(p.pid) as mem, PageStoreWriter(path, ctx.opts.compress) as store:
        for start, end in runs:
            copy_run(mem, store, view, start, end, ctx.opts.predump, progress)
    p.proc.inherited.extend(pb.PageRange(vaddr=s, nr_pages=(e - s) // PAGE_SIZE)
                            for s, e in ranges.normalize(inherited))
    p.proc.pages.extend(store.blocks)
    p.proc.pages_file = path.name
    p.proc.pages_bytes = store.bytes_raw
    return store.bytes_raw


def dump_memory_sync(ctx: DumpContext) -> int:
    shared_seen: set[int] = set()
    procs = [p for p in ctx.procs.values() if not p.proc.zombie]
    plans = []
    for p in procs:
        pagemap_fd = os.open(procfs.proc(p.pid, "pagemap"), os.O_RDONLY)
        try:
            plans.append(plan_process_memory(p, pagemap_fd, shared_seen))
        finally:
            os.close(pagemap_fd)
    total = sum(end - start for runs, _ in plans for start, end in runs)
    label = "pre-dump" if ctx.opts.predump else "dump"
    with Progress(label, total, ctx.opts.progress) as progress:
        return sum(dump_process_memory(ctx, p, runs, inherited, progress)
                   for p, (runs, inherited) in zip(procs, plans, strict=True))


async def dump_memory(ctx: DumpContext) -> int:
    return await ctx.tracer.call(dump_memory_sync, ctx)
