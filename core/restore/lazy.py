"""Stage (lazy restore): write what must be there up front, hand private
anonymous memory to the lazy daemon through a userfaultfd made in the target."""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import time
from pathlib import Path

from core.errors import LazarusError
from core.images import PAGE_SIZE, ImageReader, pb, workingset
from core.images.workingset import PageBuffer
from core.kernel import constants as K
from core.kernel import uffd
from core.kernel.libc import syscall
from core.kernel.process import pidfd_open
from core.restore.context import ProcRestore, RestoreContext
from core.restore.memory import is_lazy, set_final_protections, write_pages
from lazy.daemon import LazyDaemon
from lazy.regions import RegionMap

log = logging.getLogger("lazarus.lazy")

# Pages per prefetch request: the page server's largest GetPages, and one
# big UFFDIO_COPY.
PREFETCH_RUN_PAGES = 1024
# Recorded pages this close together are fetched and copied as one run (the
# pages between are the image's too): fewer requests and ioctls.
PREFETCH_GAP = 16

UFFD_FEATURES = uffd.UFFD_FEATURE_EVENT_REMAP | uffd.UFFD_FEATURE_EVENT_REMOVE | \
    uffd.UFFD_FEATURE_EVENT_UNMAP | uffd.UFFD_FEATURE_EVENT_FORK


def split_blocks(proc: pb.ProcessImage) -> tuple[list[pb.PageBlock], dict[int, list[pb.PageBlock]]]:
    """Blocks to write now, and blocks of each lazy VMA (by VMA start)."""
    vmas = sorted(proc.vmas, key=lambda v: v.start)
    starts = [v.start for v in vmas]
    eager: list[pb.PageBlock] = []
    lazy: dict[int, list[pb.PageBlock]] = {}
    for block in proc.pages:
        vma = vmas[bisect.bisect_right(starts, block.vaddr) - 1]
        if is_lazy(vma):
            lazy.setdefault(vma.start, []).append(block)
        else:
            eager.append(block)
    return eager, lazy


def create_uffd_sync(ctx: ProcRestore) -> int:
    """userfaultfd() inside the target (so it serves the target's mm), then
    take it over with pidfd_getfd and close the target's copy."""
    assert ctx.inj is not None
    try:
        target_fd = ctx.inj.syscall(K.SYS_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise LazarusError(f"cannot create a userfaultfd in the process: {exc.strerror}") \
            from None
    pidfd = pidfd_open(ctx.pid)
    try:
        fd = syscall(K.SYS_PIDFD_GETFD, pidfd, target_fd, 0)
    finally:
        os.close(pidfd)
        ctx.inj.syscall(K.SYS_CLOSE, target_fd)
    return fd


async def lazy_memory(ctx: RestoreContext) -> int:
    return sum([await lazy_process_memory(p) for p in ctx.live])


async def lazy_process_memory(ctx: ProcRestore) -> int:
    assert ctx.source is not None
    eager, lazy = split_blocks(ctx.proc)
    data = [(b.vaddr, await ctx.source.get_pages(b.vaddr, b.nr_pages)) for b in eager]
    total = await ctx.tracer.call(write_pages, ctx, data)
    fd = await ctx.tracer.call(create_uffd_sync, ctx)
    try:
        uffd.api(fd, UFFD_FEATURES)
    except OSError as exc:
        os.close(fd)
        raise LazarusError(f"userfaultfd handshake failed: {exc.strerror}") from None
    regions = RegionMap()
    for vma in ctx.proc.vmas:
        if vma.start in lazy:
            regions.add(vma.start, vma.end, [(b.vaddr, b.nr_pages) for b in lazy[vma.start]])
    daemon = ctx.daemon = LazyDaemon(fd, ctx.pid, regions, ctx.source, ctx.push_source,
                                     ctx.opts.fault_around, ctx.opts.push_delay,
                                     ctx.opts.lazy_timeout, read_ahead=ctx.opts.read_ahead)
    if ctx.opts.record_working_set:
        # The push waits for the end of the recording: pages it brought would
        # never fault, and the recording would miss them.
        daemon.start_recording(ctx.opts.record_window)
        daemon.push_delay = max(daemon.push_delay, ctx.opts.record_window)
    daemon.start()   # serving before REGISTER: the kernel may touch these pages itself
    for region in regions:
        uffd.register_missing(fd, region.start, region.end - region.start)
    await ctx.tracer.call(set_final_protections, ctx)
    return total


def lazy_stored(proc: pb.ProcessImage) -> list[tuple[int, int]]:
    """(vaddr, nr_pages) of the stored pages of lazy VMAs, sorted."""
    _, lazy = split_blocks(proc)
    return sorted((b.vaddr, b.nr_pages) for blocks in lazy.values() for b in blocks)


def embed_pages(images_dir: Path, recorded: dict[int, list[tuple[int, int]]]
                ) -> dict[int, workingset.ProcessPlan]:
    """Plans for a local image's working set: the recorded ranges with a copy
    of their pages (read once now, so warm restores need not decompress)."""
    reader = ImageReader(images_dir)
    plans: dict[int, workingset.ProcessPlan] = {}
    for pid, ranges in recorded.items():
        proc = reader.process(pid)
        # No holes filled here: a bigger file costs more to read than the
        # extra runs (one ioctl each) cost to copy.
        runs = workingset.coalesce(ranges, lazy_stored(proc), PREFETCH_RUN_PAGES)
        if sum(n for _, n in runs) > workingset.MAX_EMBEDDED_PAGES:
            plans[pid] = workingset.ProcessPlan(ranges)   # too big to copy: ranges only
            continue
        pages = reader.page_reader(proc)
        try:
            data = b"".join(pages.read_range(v, n) for v, n in runs)
        finally:
            pages.close()
        plans[pid] = workingset.ProcessPlan(ranges, runs, data)
    return plans


async def fetch_plan(p: ProcRestore) -> list[tuple[int, int, PageBuffer, int]]:
    """The runs to prefetch with their pages: from the working-set file when
    it holds them, else from the page source, all asked at once (a remote
    source pipelines the requests on one connection)."""
    plan = p.working_set
    assert plan is not None
    if plan.runs:
        out: list[tuple[int, int, PageBuffer, int]] = []
        first = plan.first
        for vaddr, n in plan.runs:
            out.append((vaddr, n, plan.pages, first))
            first += n
        return out
    runs = workingset.coalesce(plan.ranges, lazy_stored(p.proc), PREFETCH_RUN_PAGES,
                               PREFETCH_GAP)
    source = p.push_source or p.source
    assert source is not None
    datas = await asyncio.gather(*(source.get_pages(v, n) for v, n in runs))
    return [(v, n, data, 0) for (v, n), data in zip(runs, datas, strict=True)]


async def prefetch_working_sets(ctx: RestoreContext) -> int:
    """Copy each process's recorded working set in before any process runs:
    big sorted runs, one UFFDIO_COPY each."""
    t0 = time.monotonic()
    copied = 0
    for p in ctx.live:
        if p.working_set is not None and p.daemon is not None:
            copied += await p.daemon.prefetch(await fetch_plan(p), t0)
    if copied:
        log.info("prefetched %d pages of the recorded working set in %.1f ms", copied,
                 (time.monotonic() - t0) * 1000)
    return copied * PAGE_SIZE


async def undo_lazy_memory(ctx: RestoreContext) -> None:
    for p in ctx.procs:
        if p.daemon is not None:
            p.daemon.close()
            p.daemon = None
