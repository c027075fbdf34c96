"""Stage: drop the trampoline, load registers and let the process run."""

from __future__ import annotations

from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.restore.context import TRAMPOLINE_SIZE, RestoreContext


def resume_sync(ctx: RestoreContext) -> None:
    assert ctx.inj is not None and ctx.mem is not None
    # Its return lands in the unmapped trampoline: an expected SIGSEGV stop.
    ctx.inj.syscall_unmapping_self(K.SYS_MUNMAP, ctx.trampoline, TRAMPOLINE_SIZE)
    tids = [ctx.pid, *ctx.thread_tids]
    for tid, thread in zip(tids, ctx.proc.threads, strict=True):
        pt.set_sigmask(tid, thread.sigmask)
        pt.set_xstate(tid, thread.xstate)
        pt.set_regs(tid, pt.regs_from_bytes(thread.regs))
    ctx.mem.close()
    ctx.mem = None
    # Every thread is ready before any runs; the signals that stopped them
    # (SIGSEGV, SIGTRAP) are discarded by detaching with signal 0.
    for tid in reversed(tids):
        pt.detach(tid)
    ctx.thread_tids.clear()
    if ctx.opts.pidfile is not None:
        ctx.opts.pidfile.write_text(f"{ctx.pid}\n")


async def resume(ctx: RestoreContext) -> None:
    await ctx.tracer.call(resume_sync, ctx)
    if ctx.daemon is not None:
        ctx.daemon.start_push()
    return None
