"""Stage: copy the memory that only the process holds into the page store.

Which pages: every present or swapped page of private anonymous and shared
anonymous VMAs, and the copy-on-written (anonymous) pages of private file
mappings; pagemap tells them apart. Zero pages are dropped by the store.
"""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Iterator

from core import procfs
from core.dump.context import DumpContext, ProcDump
from core.images import PAGE_SIZE, PageStoreWriter, pb, ranges
from core.kernel.dirty import is_uffd_marker
from core.kernel.memory import ProcMem

log = logging.getLogger("lazarus")

PM_PRESENT = 1 << 63
PM_SWAPPED = 1 << 62
PM_FILE = 1 << 61           # file page or shared anonymous page
READ_CHUNK = 4 << 20        # bytes read from the target per call

DUMPED_KINDS = (pb.Vma.ANON_PRIVATE, pb.Vma.ANON_SHARED, pb.Vma.FILE_PRIVATE)


def stored_runs(pagemap_fd: int, vma: pb.Vma) -> Iterator[tuple[int, int]]:
    """(address, npages) runs of pages of `vma` that belong in the image."""
    npages = (vma.end - vma.start) // PAGE_SIZE
    entries = array("Q")
    entries.frombytes(os.pread(pagemap_fd, npages * 8, vma.start // PAGE_SIZE * 8))
    file_private = vma.kind == pb.Vma.FILE_PRIVATE
    run_start = -1
    for i, e in enumerate(entries):
        if e & PM_SWAPPED:
            # A userfaultfd write-protect marker on a never-filled pte reads
            # as swapped: it holds no page.
            keep = not is_uffd_marker(e)
        elif e & PM_PRESENT:
            keep = not (file_private and e & PM_FILE)
        else:
            keep = False
        if keep and run_start < 0:
            run_start = i
        elif not keep and run_start >= 0:
            yield vma.start + run_start * PAGE_SIZE, i - run_start
            run_start = -1
    if run_start >= 0:
        yield vma.start + run_start * PAGE_SIZE, len(entries) - run_start


def copy_run(mem: ProcMem, store: PageStoreWriter, view: memoryview, addr: int, end: int,
             running: bool) -> None:
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
        addr += size


def dump_process_memory(ctx: DumpContext, p: ProcDump, shared_seen: set[int]) -> int:
    assert ctx.writer is not None
    pid = p.pid
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    path = ctx.writer.pages_path(pid)
    inherited: list[tuple[int, int]] = []
    pagemap_fd = os.open(procfs.proc(pid, "pagemap"), os.O_RDONLY)
    try:
        with ProcMem(pid) as mem, PageStoreWriter(path, ctx.opts.compress) as store:
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
                    # Tracked since the parent image: store what was written,
                    # the rest of what is there is the parent's.
                    inherited.extend(ranges.subtract(runs, written))
                    runs = ranges.intersect(runs, written)
                for start, end in runs:
                    copy_run(mem, store, view, start, end, ctx.opts.predump)
    finally:
        os.close(pagemap_fd)
    p.proc.inherited.extend(pb.PageRange(vaddr=s, nr_pages=(e - s) // PAGE_SIZE)
                            for s, e in ranges.normalize(inherited))
    p.proc.pages.extend(store.blocks)
    p.proc.pages_file = path.name
    p.proc.pages_bytes = store.bytes_raw
    return store.bytes_raw


def dump_memory_sync(ctx: DumpContext) -> int:
    shared_seen: set[int] = set()
    return sum(dump_process_memory(ctx, p, shared_seen) for p in ctx.procs.values()
               if not p.proc.zombie)


async def dump_memory(ctx: DumpContext) -> int:
    return await ctx.tracer.call(dump_memory_sync, ctx)
