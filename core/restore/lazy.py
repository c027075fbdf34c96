"""Stage (lazy restore): write what must be there up front, hand private
anonymous memory to the lazy daemon through a userfaultfd made in the target."""

from __future__ import annotations

import asyncio
import bisect
import logging
import os

from core.errors import LazarusError
from core.images import PAGE_SIZE, pb, workingset
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
                                     ctx.opts.lazy_timeout)
    if ctx.opts.record_working_set:
        daemon.start_recording(ctx.opts.record_window)
    daemon.start()   # serving before REGISTER: the kernel may touch these pages itself
    for region in regions:
        uffd.register_missing(fd, region.start, region.end - region.start)
    await ctx.tracer.call(set_final_protections, ctx)
    return total


async def prefetch_working_sets(ctx: RestoreContext) -> int:
    """Push each process's recorded working set before any process runs:
    big sorted runs, all requested at once, one UFFDIO_COPY each."""
    jobs = []
    for p in ctx.live:
        if p.daemon is None or not p.working_set:
            continue
        _, lazy = split_blocks(p.proc)
        stored = sorted((b.vaddr, b.nr_pages) for blocks in lazy.values() for b in blocks)
        runs = workingset.coalesce(p.working_set, stored, PREFETCH_RUN_PAGES)
        jobs.append(p.daemon.prefetch(runs))
    copied = sum(await asyncio.gather(*jobs))
    if jobs:
        log.info("prefetched %d pages of the recorded working set", copied)
    return copied * PAGE_SIZE


async def undo_lazy_memory(ctx: RestoreContext) -> None:
    for p in ctx.procs:
        if p.daemon is not None:
            p.daemon.close()
            p.daemon = None
