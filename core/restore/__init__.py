"""Restore: recreate a dumped process tree with its PIDs, memory and state."""

from __future__ import annotations

from core.kernel.tracer import Tracer
from core.pipeline import PipelineStats, Stage, run_pipeline
from core.restore.addrspace import build_address_space
from core.restore.context import ProcRestore, RestoreContext, RestoreOptions
from core.restore.lazy import lazy_memory, prefetch_working_sets, undo_lazy_memory
from core.restore.memory import write_memory
from core.restore.prepare import close_sources, create_tree, kill_tree, read_image
from core.restore.resume import resume
from core.restore.state import (
    close_pipe_ends,
    close_shared_objects,
    make_shared_objects,
    open_pipes,
    restore_state,
)
from core.restore.threads import restore_threads

__all__ = ["RestoreOptions", "RestoreContext", "ProcRestore", "restore"]

RESTORE_STAGES: list[Stage[RestoreContext]] = [
    Stage("read", read_image),
    Stage("sockets", make_shared_objects, close_shared_objects),
    Stage("create", create_tree, kill_tree),
    Stage("address-space", build_address_space),
    Stage("memory", write_memory),
    Stage("pipes", open_pipes, close_pipe_ends),
    Stage("state", restore_state),
    Stage("threads", restore_threads),
    Stage("resume", resume),
]

LAZY_STAGES: list[Stage[RestoreContext]] = [
    Stage("read", read_image, close_sources),
    Stage("sockets", make_shared_objects, close_shared_objects),
    Stage("create", create_tree, kill_tree),
    Stage("address-space", build_address_space),
    Stage("lazy-setup", lazy_memory, undo_lazy_memory),
    Stage("prefetch", prefetch_working_sets),
    Stage("pipes", open_pipes, close_pipe_ends),
    Stage("state", restore_state),
    Stage("threads", restore_threads),
    Stage("resume", resume),
]


async def restore(opts: RestoreOptions) -> tuple[RestoreContext, PipelineStats]:
    """Run the restore; with opts.lazy the caller must then await each process's
    daemon (`p.daemon.wait()` for p in ctx.live)."""
    tracer = Tracer()
    ctx = RestoreContext(opts=opts, tracer=tracer)
    try:
        stats = await run_pipeline(LAZY_STAGES if opts.lazy else RESTORE_STAGES, ctx)
    finally:
        tracer.close()
    return ctx, stats
