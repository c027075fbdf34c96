"""Restore: recreate a dumped process with its PID, memory and state."""

from __future__ import annotations

from core.kernel.tracer import Tracer
from core.pipeline import PipelineStats, Stage, run_pipeline
from core.restore.addrspace import build_address_space
from core.restore.context import RestoreContext, RestoreOptions
from core.restore.lazy import lazy_memory, undo_lazy_memory
from core.restore.memory import write_memory
from core.restore.prepare import close_sources, create_process, kill_process, read_image
from core.restore.resume import resume
from core.restore.state import restore_state
from core.restore.threads import restore_threads

__all__ = ["RestoreOptions", "RestoreContext", "restore"]

RESTORE_STAGES: list[Stage[RestoreContext]] = [
    Stage("read", read_image),
    Stage("create", create_process, kill_process),
    Stage("address-space", build_address_space),
    Stage("memory", write_memory),
    Stage("state", restore_state),
    Stage("threads", restore_threads),
    Stage("resume", resume),
]


LAZY_STAGES: list[Stage[RestoreContext]] = [
    Stage("read", read_image, close_sources),
    Stage("create", create_process, kill_process),
    Stage("address-space", build_address_space),
    Stage("lazy-setup", lazy_memory, undo_lazy_memory),
    Stage("state", restore_state),
    Stage("threads", restore_threads),
    Stage("resume", resume),
]


async def restore(opts: RestoreOptions) -> tuple[RestoreContext, PipelineStats]:
    """Run the restore; with opts.lazy the caller must then await ctx.daemon.wait()."""
    tracer = Tracer()
    ctx = RestoreContext(opts=opts, tracer=tracer)
    try:
        stats = await run_pipeline(LAZY_STAGES if opts.lazy else RESTORE_STAGES, ctx)
    finally:
        tracer.close()
    return ctx, stats
