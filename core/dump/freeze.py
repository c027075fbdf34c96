"""Stage: check the target can be dumped, then seize and stop it."""

from __future__ import annotations

import os

from core import procfs
from core.dump.context import DumpContext
from core.errors import LazarusError
from core.kernel import constants as K
from core.kernel import ptrace as pt

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
    if stat.num_threads != 1:
        raise LazarusError(
            f"PID {pid} has {stat.num_threads} threads: multi-threaded processes are not "
            "supported yet")
    kids = procfs.children(pid)
    if kids:
        raise LazarusError(
            f"PID {pid} has child processes ({', '.join(map(str, kids[:5]))}): process trees "
            "are not supported yet")


def seize(pid: int) -> None:
    try:
        pt.seize(pid)
    except OSError as exc:
        raise LazarusError(f"cannot attach to PID {pid}: {exc.strerror}") from None


def stop(pid: int) -> tuple[pt.Regs, int]:
    """PTRACE_INTERRUPT a seized task; returns its registers and signal mask."""
    pt.interrupt(pid)
    for _ in range(MAX_SIGNAL_STOPS):
        res = pt.wait(pid, FREEZE_TIMEOUT)
        if not res.stopped:
            raise LazarusError(f"PID {pid} {res.describe()} while being frozen")
        if res.event == K.PTRACE_EVENT_STOP:
            return pt.get_regs(pid), pt.get_sigmask(pid)
        # A signal arrived first: deliver it as the kernel would have, the
        # interrupt stays pending and traps next.
        pt.cont(pid, res.stop_signal)
    raise LazarusError(f"PID {pid} keeps receiving signals: could not freeze it")


def thaw(ctx: DumpContext) -> None:
    """Put back the registers and mask found at freeze time and let the task go."""
    if not ctx.seized:
        return
    if ctx.regs is not None:
        pt.set_regs(ctx.pid, ctx.regs)
        pt.set_sigmask(ctx.pid, ctx.sigmask)
    pt.detach(ctx.pid)
    ctx.seized = False


async def freeze(ctx: DumpContext) -> None:
    check_target(ctx.pid)
    await ctx.tracer.call(seize, ctx.pid)
    ctx.seized = True
    ctx.regs, ctx.sigmask = await ctx.tracer.call(stop, ctx.pid)
    return None


async def undo_freeze(ctx: DumpContext) -> None:
    await ctx.tracer.call(thaw, ctx)
