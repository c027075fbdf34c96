"""Stage: check the target can be dumped, then seize and stop it."""

from __future__ import annotations

import errno
import logging
import os
import signal
from pathlib import Path

from core import procfs
from core.dump.context import DumpContext, FrozenThread, ProcDump
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
    tgid = int(status.get("Tgid", str(pid)))
    if tgid != pid:
        raise LazarusError(f"PID {pid} is a thread of process {tgid}: dump -t {tgid}")
    if status.get("NSpid", "").split()[-1:] == ["1"]:
        raise LazarusError(f"PID {pid} ({stat.comm}) is the init of a PID namespace: it "
                           "cannot be dumped (its namespace would have to be dumped whole)")
    if pid in ancestors(os.getpid()):
        raise LazarusError(f"PID {pid} ({stat.comm}) is an ancestor of lazarus: its tree "
                           "would hold lazarus itself")
    tracer = int(status.get("TracerPid", "0"))
    if tracer:
        raise LazarusError(f"PID {pid} is already traced by PID {tracer} "
                           f"({describe_tracer(tracer)})")


def ancestors(pid: int) -> set[int]:
    """The parent of ``pid``, its parent, ... up to PID 1."""
    out: set[int] = set()
    while True:
        try:
            pid = procfs.read_stat(pid).ppid
        except OSError:
            return out
        if pid <= 0 or pid in out:
            return out
        out.add(pid)


def seize(pid: int, tid: int) -> bool:
    """Seize one thread; False if it is already gone."""
    try:
        pt.seize(tid)
    except OSError as exc:
        if exc.errno == errno.ESRCH and tid != pid:
            return False
        raise LazarusError(f"cannot attach to PID {pid}: {exc.strerror}") from None
    return True


def stop(tid: int) -> tuple[pt.Regs, int, int] | None:
    """PTRACE_INTERRUPT a seized thread; its registers, signal mask and the
    signal of the job-control stop it was in (0 if running), or None if it
    exited meanwhile."""
    pt.interrupt(tid)
    for _ in range(MAX_SIGNAL_STOPS):
        res = pt.wait(tid, FREEZE_TIMEOUT)
        if not res.stopped:
            return None
        if res.event == K.PTRACE_EVENT_STOP:
            # A group-stopped task reports its stop signal; ours reports SIGTRAP.
            job_stop = res.stop_signal if res.stop_signal != K.SIGTRAP else 0
            return pt.get_regs(tid), pt.get_sigmask(tid), job_stop
        # A signal arrived first: deliver it as the kernel would have, the
        # interrupt stays pending and traps next.
        pt.cont(tid, res.stop_signal)
    raise LazarusError(f"thread {tid} keeps receiving signals: could not freeze it")


def freeze_process(p: ProcDump) -> bool:
    """Seize and stop every thread; threads born meanwhile are caught by listing
    again until a listing shows no new one (stopped threads cannot clone).
    False if the process exited meanwhile."""
    pid = p.pid
    while True:
        new = [t for t in procfs.list_tids(pid) if t not in p.threads]
        if not new:
            break
        for tid in new:
            if seize(pid, tid):
                p.threads[tid] = FrozenThread(tid)
        for tid in new:
            if tid not in p.threads:
                continue
            got = stop(tid)
            if got is None:
                del p.threads[tid]
                if tid == pid:
                    return False
                continue
            p.threads[tid].regs, p.threads[tid].sigmask, job_stop = got
            if tid == pid and job_stop:
                # A stopped process would stop again at once if we ran code in
                # it: end the job-control stop while we hold it (thaw and
                # restore stop it again with the same signal).
                p.proc.stop_signal = job_stop
                os.kill(pid, signal.SIGCONT)
    return True


def check_member(pid: int) -> procfs.Stat:
    """A descendant must be freezable too, or the whole dump is refused."""
    stat = procfs.read_stat(pid)
    tracer = int(procfs.read_status(pid).get("TracerPid", "0"))
    if tracer:
        raise LazarusError(f"PID {pid} ({stat.comm}) in the tree is traced by PID {tracer} "
                           f"({describe_tracer(tracer)}): it cannot be dumped")
    return stat


def describe_tracer(pid: int) -> str:
    """Who traces: a debugger, or a `lazarus fork` holding its twins (say so)."""
    try:
        with open(procfs.proc(pid, "cmdline"), "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "gone"
    if "fork" in argv and any(Path(a).name in ("lazarus", "cli.py") or a == "core.cli"
                              for a in argv[:3]):
        return "a `lazarus fork` holding its twin: release it first with lazarus fork --release"
    return " ".join(argv)[:80] or "?"


def freeze_sync(ctx: DumpContext) -> None:
    """The root, then each frozen process's children: a frozen process cannot
    fork, so its list of children is final once it is frozen."""
    queue = [ctx.pid]
    while queue:
        pid = queue.pop(0)
        if pid == os.getpid():
            raise LazarusError(f"lazarus itself is in the tree of PID {ctx.pid}")
        stat = procfs.read_stat(pid) if pid == ctx.pid else check_member(pid)
        p = ctx.procs[pid] = ProcDump(pid)
        if stat.state in ("Z", "X"):
            p.proc.zombie = True
            p.proc.exit_status = stat.exit_code
            continue
        if freeze_process(p):
            queue.extend(c for c in procfs.children(pid) if c not in ctx.procs)
            continue
        # It exited while we froze it: an error for the root; a child that
        # exited is now a zombie of its frozen parent, or already gone.
        thaw_process(p)
        if pid == ctx.pid:
            raise LazarusError(f"PID {pid} exited while being frozen")
        try:
            stat = procfs.read_stat(pid)
        except (FileNotFoundError, ProcessLookupError):
            del ctx.procs[pid]
            continue
        p.proc.zombie, p.proc.exit_status = True, stat.exit_code


def thaw_process(p: ProcDump) -> None:
    if p.proc.stop_signal:
        # Queued before the release, so the process stops again before it
        # runs a single instruction.
        os.kill(p.pid, p.proc.stop_signal)
    for t in list(p.threads.values()):
        try:
            if t.regs is not None:
                pt.set_regs(t.tid, t.regs)
                pt.set_sigmask(t.tid, t.sigmask)
            pt.detach(t.tid)
        except OSError as exc:
            log.warning("could not release thread %d: %s", t.tid, exc.strerror)
    p.threads.clear()


def thaw(ctx: DumpContext) -> None:
    """Put back the registers and masks found at freeze time and let every thread go."""
    for p in ctx.procs.values():
        thaw_process(p)


async def freeze(ctx: DumpContext) -> None:
    check_target(ctx.pid)
    await ctx.tracer.call(freeze_sync, ctx)
    return None


async def undo_freeze(ctx: DumpContext) -> None:
    await ctx.tracer.call(thaw, ctx)
