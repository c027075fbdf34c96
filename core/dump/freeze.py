"""Stage: check the target can be dumped, then seize and stop it."""

from __future__ import annotations

import errno
import logging
import os

from core import procfs
from core.dump.context import DumpContext, FrozenThread
from core.errors import LazarusError
from core.kernel import constants as K
from core.kernel import ptrace as pt

log = logging.getLogger("lazarus")

FREEZE_TIMEOUT = 5.0
MAX_SIGNAL_STOPS = 16


def check_target(pid: int) -> None:
    """Refuse, with a clear reason, a PID this version cannot dump."""
    if pid <= 0:
        raise LazarusError(f"invalid PID {pid}")
    if pid == os.getpid():
        raise LazarusError(f"PID {pid} is lazarus itself: it cannot dump itself")
    try:
        stat = procfs.read_stat(pid)
        status = procfs.read_status(pid)
    except (FileNotFoundError, ProcessLookupError):
        raise LazarusError(f"no process with PID {pid}") from None
    if stat.flags & K.PF_KTHREAD:
        raise LazarusError(f"PID {pid} ({stat.comm}) is a kernel thread: it cannot be dumped")
    if stat.state in ("Z", "X"):
        raise LazarusError(f"PID {pid} is a zombie: nothing to dump")
    if stat.state in ("T", "t"):
        raise LazarusError(
            f"PID {pid} is stopped or traced: stopped processes are not supported yet")
    tracer = int(status.get("TracerPid", "0"))
    if tracer:
        raise LazarusError(f"PID {pid} is already traced by PID {tracer}")
    kids = procfs.children(pid)
    if kids:
        raise LazarusError(
            f"PID {pid} has child processes ({', '.join(map(str, kids[:5]))}): process trees "
            "are not supported yet")


def seize(pid: int, tid: int) -> bool:
    """Seize one thread; False if it is already gone."""
    try:
        pt.seize(tid)
    except OSError as exc:
        if exc.errno == errno.ESRCH and tid != pid:
            return False
        raise LazarusError(f"cannot attach to PID {pid}: {exc.strerror}") from None
    return True


def stop(tid: int) -> tuple[pt.Regs, int] | None:
    """PTRACE_INTERRUPT a seized thread; its registers and signal mask, or None
    if it exited meanwhile."""
    pt.interrupt(tid)
    for _ in range(MAX_SIGNAL_STOPS):
        res = pt.wait(tid, FREEZE_TIMEOUT)
        if not res.stopped:
            return None
        if res.event == K.PTRACE_EVENT_STOP:
            return pt.get_regs(tid), pt.get_sigmask(tid)
        # A signal arrived first: deliver it as the kernel would have, the
        # interrupt stays pending and traps next.
        pt.cont(tid, res.stop_signal)
    raise LazarusError(f"thread {tid} keeps receiving signals: could not freeze it")


def freeze_sync(ctx: DumpContext) -> None:
    """Seize and stop every thread; threads born meanwhile are caught by listing
    again until a listing shows no new one (stopped threads cannot clone)."""
    pid = ctx.pid
    while True:
        new = [t for t in procfs.list_tids(pid) if t not in ctx.threads]
        if not new:
            break
        for tid in new:
            if seize(pid, tid):
                ctx.threads[tid] = FrozenThread(tid)
        for tid in new:
            if tid not in ctx.threads:
                continue
            got = stop(tid)
            if got is None:
                if tid == pid:
                    raise LazarusError(f"PID {pid} exited while being frozen")
                del ctx.threads[tid]
                continue
            ctx.threads[tid].regs, ctx.threads[tid].sigmask = got


def thaw(ctx: DumpContext) -> None:
    """Put back the registers and masks found at freeze time and let the threads go."""
    for t in list(ctx.threads.values()):
        try:
            if t.regs is not None:
                pt.set_regs(t.tid, t.regs)
                pt.set_sigmask(t.tid, t.sigmask)
            pt.detach(t.tid)
        except OSError as exc:
            log.warning("could not release thread %d: %s", t.tid, exc.strerror)
    ctx.threads.clear()


async def freeze(ctx: DumpContext) -> None:
    check_target(ctx.pid)
    await ctx.tracer.call(freeze_sync, ctx)
    return None


async def undo_freeze(ctx: DumpContext) -> None:
    await ctx.tracer.call(thaw, ctx)
