"""Dump: freeze a process, collect its state and memory, write an image."""

from __future__ import annotations

import os
import platform
import signal
import time

from core import __version__
from core.dump.collect import collect
from core.dump.context import DumpContext, DumpOptions
from core.dump.freeze import freeze, thaw, undo_freeze
from core.dump.memory import dump_memory
from core.images import FORMAT_VERSION, PAGE_SIZE, ImageWriter
from core.kernel import ptrace as pt
from core.kernel.tracer import Tracer
from core.pipeline import PipelineStats, Stage, run_pipeline

__all__ = ["DumpOptions", "dump"]

KILL_TIMEOUT = 5.0


async def open_image(ctx: DumpContext) -> None:
    ctx.writer = ImageWriter(ctx.opts.images_dir)
    return None


async def abort_image(ctx: DumpContext) -> None:
    if ctx.writer is not None:
        ctx.writer.abort()


async def write_image(ctx: DumpContext) -> None:
    assert ctx.writer is not None
    inv = ctx.inventory
    inv.format_version = FORMAT_VERSION
    inv.tool_version = __version__
    inv.kernel_release = os.uname().release
    inv.arch = platform.machine()
    inv.created_unix_ns = time.time_ns()
    inv.compression = "lz4" if ctx.opts.compress else "none"
    inv.page_size = PAGE_SIZE
    inv.leave_running = ctx.opts.leave_running
    ctx.writer.write_process(ctx.proc)
    ctx.writer.write_inventory(inv)
    ctx.writer.commit()
    return None


def finish_sync(ctx: DumpContext) -> None:
    if ctx.opts.leave_running:
        thaw(ctx)
        return
    os.kill(ctx.pid, signal.SIGKILL)
    ctx.seized = False
    # As its tracer we see the death first; the real parent can reap it only after.
    pt.wait(ctx.pid, KILL_TIMEOUT)


async def finish(ctx: DumpContext) -> None:
    await ctx.tracer.call(finish_sync, ctx)
    return None


DUMP_STAGES: list[Stage[DumpContext]] = [
    Stage("image-open", open_image, abort_image),
    Stage("freeze", freeze, undo_freeze),
    Stage("collect", collect),
    Stage("memory", dump_memory),
    Stage("write", write_image),
    Stage("finish", finish),
]


async def dump(opts: DumpOptions) -> tuple[DumpContext, PipelineStats]:
    tracer = Tracer()
    ctx = DumpContext(opts=opts, tracer=tracer)
    try:
        stats = await run_pipeline(DUMP_STAGES, ctx)
    finally:
        tracer.close()
    return ctx, stats
