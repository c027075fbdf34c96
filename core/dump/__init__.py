"""Dump: freeze a process, collect its state and memory, write an image."""

from __future__ import annotations

import os
import platform
import signal
import tempfile
import time
from pathlib import Path

from core import __version__
from core.dump.collect import collect
from core.dump.context import DumpContext, DumpOptions
from core.dump.freeze import freeze, thaw, undo_freeze
from core.dump.memory import dump_memory
from core.errors import LazarusError
from core.images import FORMAT_VERSION, PAGE_SIZE, ImageWriter
from core.kernel import ptrace as pt
from core.kernel.tracer import Tracer
from core.pipeline import PipelineStats, Stage, run_pipeline
from pageserver.client import PageServerError

__all__ = ["DumpOptions", "dump"]

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
        ctx.writer.write_process(p.proc)
    ctx.writer.write_inventory(inv)
    ctx.writer.commit()
    return None


def finish_sync(ctx: DumpContext) -> None:
    if ctx.opts.leave_running:
        thaw(ctx)
        return
    for p in ctx.procs.values():
        if not p.proc.zombie:
            os.kill(p.pid, signal.SIGKILL)
    # As their tracer we see each thread die first; the real parent can reap
    # a process only after (its leader is reported last).
    for p in ctx.procs.values():
        tids = sorted(p.threads, key=lambda t: t == p.pid)
        p.threads.clear()
        for tid in tids:
            pt.wait(tid, KILL_TIMEOUT)


async def finish(ctx: DumpContext) -> None:
    await ctx.tracer.call(finish_sync, ctx)
    return None


async def upload_image(ctx: DumpContext) -> int:
    """Send the image to the page server while the process is still frozen:
    only once the server holds it may the process be killed."""
    server, name = ctx.opts.server, ctx.opts.image_name
    assert server is not None and name is not None
    client = await server.connect()
    try:
        await client.put_image(name, ctx.opts.images_dir)
    except PageServerError as exc:
        raise LazarusError(f"cannot store the image on the page server: {exc}") from None
    finally:
        await client.close()
    return sum(f.stat().st_size for f in ctx.opts.images_dir.iterdir())


DUMP_STAGES: list[Stage[DumpContext]] = [
    Stage("image-open", open_image, abort_image),
    Stage("freeze", freeze, undo_freeze),
    Stage("collect", collect),
    Stage("memory", dump_memory),
    Stage("write", write_image),
    Stage("finish", finish),
]

REMOTE_DUMP_STAGES = [*DUMP_STAGES[:-1], Stage("upload", upload_image), DUMP_STAGES[-1]]


async def dump(opts: DumpOptions) -> tuple[DumpContext, PipelineStats]:
    tracer = Tracer()
    ctx = DumpContext(opts=opts, tracer=tracer)
    try:
        if opts.server is None:
            return ctx, await run_pipeline(DUMP_STAGES, ctx)
        if not opts.image_name:
            raise LazarusError("--page-server needs --image NAME to store the image under")
        # The image is written locally first, sent whole, then removed here.
        with tempfile.TemporaryDirectory(prefix="lazarus-dump-") as tmp:
            opts.images_dir = Path(tmp) / opts.image_name
            return ctx, await run_pipeline(REMOTE_DUMP_STAGES, ctx)
    finally:
        tracer.close()
