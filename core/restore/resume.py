"""Stage: zombies die as they had, then every process drops the trampoline,
loads its registers, and the whole tree is released at once."""

from __future__ import annotations

import os
import time

from core import procfs
from core.errors import LazarusError
from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.libc import MASK64
from core.restore.addrspace import put_string
from core.restore.context import TRAMPOLINE_SIZE, ProcRestore, RestoreContext

ZOMBIE_TIMEOUT = 5.0


def make_zombie(p: ProcRestore) -> None:
    """Let the process end the way it had: with its exit code or by its signal.
    Its parent, still stopped, finds it a zombie when it runs again."""
    assert p.inj is not None
    p.inj.syscall(K.SYS_PRCTL, K.PR_SET_NAME, put_string(p, p.proc.comm[:15]))
    status = p.proc.exit_status
    signo = status & 0x7F
    if signo:
        pt.set_sigmask(p.pid, 0)
        pt.detach(p.pid, signo)        # default action of a fresh helper: it dies of it
    else:
        regs = pt.get_regs(p.pid)
        regs.rip, regs.rax, regs.orig_rax = p.trampoline, K.SYS_EXIT_GROUP, MASK64
        regs.rdi = (status >> 8) & 0xFF
        pt.set_regs(p.pid, regs)
        pt.detach(p.pid)
    p.mem = None
    deadline = time.monotonic() + ZOMBIE_TIMEOUT
    while procfs.is_alive(p.pid):
        if time.monotonic() > deadline:
            raise LazarusError(f"process {p.pid} did not become a zombie again")
        time.sleep(0.005)


def prepare_resume(p: ProcRestore) -> list[int]:
    """Everything but the release itself; returns the process's tids."""
    assert p.inj is not None and p.mem is not None
    # Its return lands in the unmapped trampoline: an expected SIGSEGV stop.
    p.inj.syscall_unmapping_self(K.SYS_MUNMAP, p.trampoline, TRAMPOLINE_SIZE)
    tids = [p.pid, *p.thread_tids]
    for tid, thread in zip(tids, p.proc.threads, strict=True):
        pt.set_sigmask(tid, thread.sigmask)
        pt.set_xstate(tid, thread.xstate)
        pt.set_regs(tid, pt.regs_from_bytes(thread.regs))
    p.mem.close()
    p.mem = None
    return tids


def resume_sync(ctx: RestoreContext) -> None:
    for p in ctx.procs:
        if p.proc.zombie:
            make_zombie(p)
    ready = [(p, prepare_resume(p)) for p in ctx.live]
    # Every thread of every process is ready before any runs; the signals
    # that stopped them (SIGSEGV, SIGTRAP, SIGSTOP) are discarded by
    # detaching with signal 0.
    for p, tids in ready:
        if p.proc.stop_signal:
            # Stopped it was, stopped it stays (SIGCONT goes on); queued before
            # the release so it stops before running anything.
            os.kill(p.pid, p.proc.stop_signal)
        for tid in reversed(tids):
            pt.detach(tid)
        p.thread_tids.clear()
    for r, w in ctx.pipe_ends.values():
        os.close(r)
        os.close(w)
    ctx.pipe_ends.clear()
    for fd in ctx.sockets.values():
        os.close(fd)
    ctx.sockets.clear()
    if ctx.opts.pidfile is not None:
        ctx.opts.pidfile.write_text(f"{ctx.root.pid}\n")


async def resume(ctx: RestoreContext) -> None:
    await ctx.tracer.call(resume_sync, ctx)
    for p in ctx.live:
        if p.daemon is not None:
            p.daemon.start_push()
    return None
