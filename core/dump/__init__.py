"""Dump: freeze a process, collect its state and memory, write an image."""

from __future__ import annotations

import os
import platform
import signal
import tempfile
import time
from pathlib import Path

from core import __version__
from core.dump.collect import collect, collect_vmas
from core.dump.context import DumpContext, DumpOptions
from core.dump.freeze import freeze, thaw, undo_freeze
from core.dump.memory import dump_memory
from core.dump.tracking import (
    close_our_fds,
    close_tracking_fd,
    end_tracking_sync,
    prev_stage,
    track,
    untrack,
)
from core.errors import LazarusError
from core.images import FORMAT_VERSION, PAGE_SIZE, ImageWriter
from core.kernel import ptrace as pt
from core.kernel.tracer import Tracer
from core.pipeline import PipelineStats, Stage, run_pipeline
from core.progress import Progress
from pageserver.client import PageServerError

__all__ = ["DumpOptions", "dump", "end_tracking", "predump"]

KILL_TIMEOUT = 5.0


async def open_image(ctx: DumpContext) -> None:
    ctx.writer = ImageWriter(ctx.opts.images_dir)
    return None


async def abort_image(ctx: DumpContext) -> None:
    if ctx.writer is not None:
        ctx.writer.abort()


def fill_inventory(ctx: DumpContext) -> None:
    inv = ctx.inventory
    inv.format_version = FORMAT_VERSION
    inv.tool_version = __version__
    inv.kernel_release = os.uname().release
    inv.arch = platform.machine()
    inv.created_unix_ns = time.time_ns()
    inv.compression = "lz4" if ctx.opts.compress else "none"
    inv.page_size = PAGE_SIZE
    inv.leave_running = ctx.opts.leave_running


async def write_image(ctx: DumpContext) -> None:
    assert ctx.writer is not None
    fill_inventory(ctx)
    inv = ctx.inventory
    for p in ctx.procs.values():
        if ctx.opts.predump and p.tracking_fd >= 0:
            p.proc.tracking_fd = p.tracking_fd
        ctx.writer.write_process(p.proc)
    ctx.writer.write_inventory(inv)
    ctx.writer.commit()
    return None


def finish_sync(ctx: DumpContext) -> None:
    if ctx.opts.leave_running:
        for p in ctx.procs.values():
            if p.tracking_fd >= 0:
                # The final dump ends dirty tracking: no fd of ours stays behind.
                close_tracking_fd(p)
        thaw(ctx)
        return
    for p in ctx.procs.values():
        if not p.proc.zombie:
            os.kill(p.pid, signal.SIGKILL)
    # Frozen until killed: the kernel's teardown of the memory after it is not
    # time the process waits for anything.
    ctx.killed_at = time.perf_counter()
    # As their tracer we see each thread die first; the real parent can reap
    # a process only after (its leader is reported last).
    for p in ctx.procs.values():
        tids = sorted(p.threads, key=lambda t: t == p.pid)
        p.threads.clear()
        for tid in tids:
            pt.wait(tid, KILL_TIMEOUT)


async def finish(ctx: DumpContext) -> None:
    await ctx.tracer.call(finish_sync, ctx)
    ctx.frozen_seconds = (ctx.killed_at or time.perf_counter()) - ctx.frozen_at
    return None


async def start_freeze(ctx: DumpContext) -> None:
    ctx.frozen_at = time.perf_counter()
    await freeze(ctx)
    return None


async def release(ctx: DumpContext) -> None:
    """Pre-dump: let the process run on once tracking is armed; its memory
    is copied while it runs (a page written meanwhile is written again after
    the write-protect, so the next round copies it again)."""
    await ctx.tracer.call(thaw, ctx)
    ctx.frozen_seconds = time.perf_counter() - ctx.frozen_at
    return None


async def upload_image(ctx: DumpContext) -> int:
    """Send the image to the page server while the process is still frozen:
    only once the server holds it may the process be killed."""
    server, name = ctx.opts.server, ctx.opts.image_name
    assert server is not None and name is not None
    total = sum(f.stat().st_size for f in ctx.opts.images_dir.iterdir())
    client = await server.connect()
    try:
        with Progress("upload", total, ctx.opts.progress) as bar:
            await client.put_image(name, ctx.opts.images_dir, bar.add)
    except PageServerError as exc:
        raise LazarusError(f"cannot store the image on the page server: {exc}") from None
    finally:
        await client.close()
    return sum(f.stat().st_size for f in ctx.opts.images_dir.iterdir())


DUMP_STAGES: list[Stage[DumpContext]] = [
    Stage("image-open", open_image, abort_image),
    Stage("freeze", start_freeze, undo_freeze),
    Stage("collect", collect),
    Stage("memory", dump_memory),
    Stage("write", write_image),
    Stage("finish", finish),
]

REMOTE_DUMP_STAGES = [*DUMP_STAGES[:-1], Stage("upload", upload_image), DUMP_STAGES[-1]]

# dump --prev: the parent image is checked before anything is frozen, and
# the pages written since it are found once the process is frozen.
INCREMENTAL_DUMP_STAGES: list[Stage[DumpContext]] = [
    Stage("prev", prev_stage),
    *DUMP_STAGES[:3],
    Stage("dirty", track),
    *DUMP_STAGES[3:],
]

PREDUMP_STAGES: list[Stage[DumpContext]] = [
    Stage("prev", prev_stage),
    Stage("image-open", open_image, abort_image),
    Stage("freeze", start_freeze, undo_freeze),
    Stage("collect-vmas", collect_vmas),
    Stage("dirty", track, untrack),
    Stage("release", release),
    Stage("memory", dump_memory),
    Stage("write", write_image),
]


async def dump(opts: DumpOptions) -> tuple[DumpContext, PipelineStats]:
    tracer = Tracer()
    ctx = DumpContext(opts=opts, tracer=tracer)
    try:
        if opts.prev is not None and opts.server is not None:
            raise LazarusError("--prev writes a local image chain: use `lazarus migrate` to "
                               "send one to a page server")
        if opts.server is None:
            stages = INCREMENTAL_DUMP_STAGES if opts.prev is not None else DUMP_STAGES
            return ctx, await run_pipeline(stages, ctx)
        if not opts.image_name:
            raise LazarusError("--page-server needs --image NAME to store the image under")
        # The image is written locally first, sent whole, then removed here.
        with tempfile.TemporaryDirectory(prefix="lazarus-dump-") as tmp:
            opts.images_dir = Path(tmp) / opts.image_name
            return ctx, await run_pipeline(REMOTE_DUMP_STAGES, ctx)
    finally:
        await tracer.call(close_our_fds, ctx)
        tracer.close()


async def predump(opts: DumpOptions) -> tuple[DumpContext, PipelineStats]:
    """Copy memory while the process runs, and leave dirty tracking armed in
    it for the next round (`pre-dump --prev` or `dump --prev`)."""
    opts.predump = True
    tracer = Tracer()
    ctx = DumpContext(opts=opts, tracer=tracer)
    try:
        return ctx, await run_pipeline(PREDUMP_STAGES, ctx)
    finally:
        await tracer.call(close_our_fds, ctx)
        tracer.close()


async def end_tracking(prev: Path) -> None:
    """Stop the dirty tracking a pre-dump left in its processes."""
    tracer = Tracer()
    try:
        await tracer.call(end_tracking_sync, prev)
    finally:
        tracer.close()
