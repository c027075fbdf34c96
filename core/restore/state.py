"""Stage: everything but memory and registers: mm fields, comm, cwd, umask,
signal handlers, rlimits, files, rseq, credentials."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import socket
import stat
import struct

from core import procfs
from core.errors import LazarusError
from core.images import pb
from core.kernel import constants as K
from core.kernel.inject import Injector
from core.kernel.libc import MASK64
from core.kernel.structs import KernelSigaction, PrctlMmMap
from core.restore.addrspace import open_in_target, put_string
from core.restore.context import ProcRestore, RestoreContext

FILE_REOPEN_DROP = K.O_CREAT | K.O_EXCL | K.O_TRUNC
SEEK_SET = 0
F_SETFL = 4
SETFL_FLAGS = K.O_APPEND | 0o4000 | 0o20000   # O_APPEND, O_NONBLOCK, O_ASYNC
F_SETPIPE_SZ = 1031
F_DUPFD = 0


def restore_mm(ctx: ProcRestore) -> None:
    assert ctx.inj is not None and ctx.mem is not None
    mm = ctx.proc.mm
    # The kernel refuses to replace an exe that is still mapped: when the
    # process already runs the right file (forked from a Python init of
    # ours for a Python image), leave it (-1).
    current, wanted = os.stat(procfs.proc(ctx.pid, "exe")), os.stat(mm.exe)
    same = (current.st_dev, current.st_ino) == (wanted.st_dev, wanted.st_ino)
    exe_fd = -1 if same else open_in_target(ctx, mm.exe, K.O_RDONLY | K.O_CLOEXEC)
    auxv_addr = ctx.scratch + 1024
    ctx.mem.write(auxv_addr, mm.auxv)
    req = PrctlMmMap(
        start_code=mm.start_code, end_code=mm.end_code, start_data=mm.start_data,
        end_data=mm.end_data, start_brk=mm.start_brk, brk=mm.brk, start_stack=mm.start_stack,
        arg_start=mm.arg_start, arg_end=mm.arg_end, env_start=mm.env_start, env_end=mm.env_end,
        auxv=auxv_addr, auxv_size=len(mm.auxv), exe_fd=exe_fd)
    ctx.mem.write(ctx.scratch, bytes(req))
    try:
        ctx.inj.syscall(K.SYS_PRCTL, K.PR_SET_MM, K.PR_SET_MM_MAP, ctx.scratch,
                        ctypes.sizeof(req), 0)
    except OSError as exc:
        raise LazarusError(f"cannot restore the memory layout fields (prctl PR_SET_MM_MAP): "
                           f"{exc.strerror}") from None
    finally:
        if exe_fd >= 0:
            ctx.inj.syscall(K.SYS_CLOSE, exe_fd)


def restore_task_basics(ctx: ProcRestore) -> None:
    assert ctx.inj is not None and ctx.mem is not None
    inj, proc = ctx.inj, ctx.proc
    inj.syscall(K.SYS_PRCTL, K.PR_SET_NAME, put_string(ctx, proc.comm[:15]))
    try:
        inj.syscall(K.SYS_CHDIR, put_string(ctx, proc.cwd))
    except OSError as exc:
        raise LazarusError(f"cannot enter working directory {proc.cwd}: {exc.strerror}") \
            from None
    inj.syscall(K.SYS_UMASK, proc.umask)
    for act in proc.sigactions:
        raw = KernelSigaction(act.handler, act.flags, act.restorer, act.mask)
        ctx.mem.write(ctx.scratch, bytes(raw))
        inj.syscall(K.SYS_RT_SIGACTION, act.signo, ctx.scratch, 0, 8)


def restore_rlimits(ctx: ProcRestore) -> None:
    for lim in ctx.proc.rlimits:
        soft = resource.RLIM_INFINITY if lim.soft == MASK64 else lim.soft
        hard = resource.RLIM_INFINITY if lim.hard == MASK64 else lim.hard
        try:
            resource.prlimit(ctx.pid, lim.resource, (soft, hard))
        except (OSError, ValueError) as exc:
            if getattr(exc, "errno", None) not in (errno.EPERM, None):
                raise
            ctx.warnings.append(f"rlimit {lim.resource} not restored ({exc}): kept the default")


def describe_fd(fd: pb.FileDesc) -> str:
    return f"fd {fd.fd} ({fd.path})"


def close_all_but(ctx: ProcRestore, keep: list[int]) -> None:
    """close_range over every gap between the fds in `keep` (sorted)."""
    assert ctx.inj is not None
    first = 0
    for fd in [*sorted(keep), 0xFFFFFFFF + 1]:
        if fd > first:
            ctx.inj.syscall(K.SYS_CLOSE_RANGE, first, fd - 1, 0)
        first = fd + 1


def share_description(ctx: ProcRestore, fd: pb.FileDesc, cloexec: int) -> None:
    """The open file description another fd (of this process or of one restored
    before it) already has: dup3, or pidfd_getfd from that process."""
    assert ctx.inj is not None
    inj = ctx.inj
    if fd.share_pid == ctx.proc.pid:
        inj.syscall(K.SYS_DUP3, fd.share_fd, fd.fd, cloexec)
        return
    # PIDs as the process itself sees them (its PID namespace).
    pidfd = inj.syscall(K.SYS_PIDFD_OPEN, fd.share_pid, 0)
    try:
        tmp = inj.syscall(K.SYS_PIDFD_GETFD, pidfd, fd.share_fd, 0)
    finally:
        inj.syscall(K.SYS_CLOSE, pidfd)
    if tmp != fd.fd:
        inj.syscall(K.SYS_DUP3, tmp, fd.fd, cloexec)
        inj.syscall(K.SYS_CLOSE, tmp)


def restore_fds(ctx: ProcRestore) -> None:
    assert ctx.inj is not None
    inj, proc = ctx.inj, ctx.proc
    # What lazarus hands over, inherited at the same numbers as in lazarus:
    # --inherit-fd files (by the dumped name) and the tree's socket pairs.
    handover = dict(ctx.opts.inherit_fds)
    handover.update({f"socket:{f.socket_ino}": ctx.tree.sockets[f.socket_ino]
                     for f in proc.fds if f.kind == pb.FileDesc.UNIX_SOCKET})
    # Park them above every number in play, then close everything the helper
    # inherited below them.
    floor = max([f.fd for f in proc.fds] + list(handover.values()) + [2]) + 1
    parked: dict[str, int] = {}
    for key, lfd in sorted(handover.items(), key=lambda kv: kv[1]):
        parked[key] = inj.syscall(K.SYS_FCNTL, lfd, F_DUPFD, floor)
        floor = max(floor, parked[key] + 1)
    close_all_but(ctx, sorted(parked.values()))
    for fd in proc.fds:
        cloexec = fd.flags & K.O_CLOEXEC
        key = f"socket:{fd.socket_ino}" if fd.kind == pb.FileDesc.UNIX_SOCKET else fd.path
        if key in parked:
            inj.syscall(K.SYS_DUP3, parked[key], fd.fd, cloexec)
            inj.syscall(K.SYS_FCNTL, fd.fd, F_SETFL, fd.flags & SETFL_FLAGS)
            continue
        if fd.share_pid:
            share_description(ctx, fd, cloexec)
            continue
        if fd.internal:
            # The tree's own pipe: lazarus holds it, with its bytes, until resume.
            r, w = ctx.tree.pipe_ends[fd.pipe_ino]
            end = r if fd.flags & K.O_ACCMODE == K.O_RDONLY else w
            path, flags = f"/proc/{os.getpid()}/fd/{end}", fd.flags & ~FILE_REOPEN_DROP
        elif fd.kind in (pb.FileDesc.TTY, pb.FileDesc.PIPE):
            ctx.warnings.append(
                f"{describe_fd(fd)} came from outside the image: reattached to /dev/null "
                f"(use --inherit-fd fd[N]:{fd.path} to give it one)")
            path, flags = "/dev/null", fd.flags & (K.O_ACCMODE | K.O_CLOEXEC)
        elif fd.kind == pb.FileDesc.DIRECTORY:
            path, flags = fd.path, K.O_RDONLY | K.O_DIRECTORY | cloexec
        else:
            path, flags = fd.path, fd.flags & ~FILE_REOPEN_DROP
        try:
            tmp = open_in_target(ctx, path, flags)
        except OSError as exc:
            raise LazarusError(f"cannot reopen {describe_fd(fd)}: {exc.strerror}") from None
        if tmp != fd.fd:
            inj.syscall(K.SYS_DUP3, tmp, fd.fd, cloexec)
            inj.syscall(K.SYS_CLOSE, tmp)
        if fd.kind == pb.FileDesc.REGULAR and fd.pos:
            inj.syscall(K.SYS_LSEEK, fd.fd, fd.pos, SEEK_SET)
    close_all_but(ctx, [f.fd for f in proc.fds])


def restore_creds(ctx: ProcRestore, inj: Injector) -> None:
    """Credentials are per thread: run in each. Last, since dropping root
    forbids what comes before (clone3 with set_tid, PR_SET_MM)."""
    assert ctx.mem is not None
    c = ctx.proc.creds
    if (c.uid, c.euid, c.suid, c.gid, c.egid, c.sgid) == (0,) * 6 and not c.groups:
        return
    groups = b"".join(g.to_bytes(4, "little") for g in c.groups)
    ctx.mem.write(ctx.scratch, groups or b"\0")
    inj.syscall(K.SYS_SETGROUPS, len(c.groups), ctx.scratch)
    inj.syscall(K.SYS_SETRESGID, c.gid, c.egid, c.sgid)
    inj.syscall(K.SYS_SETRESUID, c.uid, c.euid, c.suid)


def restore_pending_signals(ctx: ProcRestore) -> None:
    """Queue again what was pending; the process sends them to itself, which
    lets every si_code through (they stay blocked until resume)."""
    assert ctx.inj is not None and ctx.mem is not None
    pid = ctx.proc.pid   # injected: the PID as the process itself sees it
    queued = [(0, info) for info in ctx.proc.shared_pending_signals] + \
        [(thread.tid, info) for thread in ctx.proc.threads for info in thread.pending_signals]
    for tid, info in queued:
        signo = int.from_bytes(info[:4], "little")
        ctx.mem.write(ctx.scratch, info)
        if tid == 0:
            ctx.inj.syscall(K.SYS_RT_SIGQUEUEINFO, pid, signo, ctx.scratch)
        else:
            ctx.inj.syscall(K.SYS_RT_TGSIGQUEUEINFO, pid, tid, signo, ctx.scratch)


def restore_itimers(ctx: ProcRestore) -> None:
    """Last before resume: a timer firing now only leaves its signal pending
    (every signal is blocked until the real mask is loaded)."""
    assert ctx.inj is not None and ctx.mem is not None
    for t in ctx.proc.itimers:
        value = struct.pack("<4q", *divmod(t.interval_us, 1_000_000),
                            *divmod(t.value_us, 1_000_000))
        ctx.mem.write(ctx.scratch, value)
        ctx.inj.syscall(K.SYS_SETITIMER, t.which, ctx.scratch, 0)


def restore_state_sync(ctx: ProcRestore) -> None:
    restore_mm(ctx)
    restore_task_basics(ctx)
    restore_rlimits(ctx)
    restore_fds(ctx)


def make_socket_pairs(ctx: RestoreContext) -> None:
    """A socket pair per dumped pair, each end loaded with what it had to read
    (sent from the other end). Made before the tree, which inherits them."""
    for pair in ctx.inventory.socket_pairs:
        a, b = socket.socketpair(socket.AF_UNIX, pair.type)
        with a, b:
            for msg in pair.queued_a:
                b.sendall(msg) if pair.type == socket.SOCK_STREAM else b.send(msg)
            for msg in pair.queued_b:
                a.sendall(msg) if pair.type == socket.SOCK_STREAM else a.send(msg)
            for ino, sock in ((pair.ino_a, a), (pair.ino_b, b)):
                ctx.sockets[ino] = sock.detach()
                os.set_inheritable(ctx.sockets[ino], True)


def make_unix_listeners(ctx: RestoreContext) -> None:
    """Bound and listening again; a stale socket file left by the dumped
    process (dead now) is replaced."""
    for lis in ctx.inventory.unix_listeners:
        sock = socket.socket(socket.AF_UNIX, lis.type)
        name: str | bytes = lis.name
        if lis.name and not lis.name.startswith(b"\0"):
            name = lis.name.rstrip(b"\0").decode()
            if os.path.exists(name) and stat.S_ISSOCK(os.stat(name).st_mode):
                os.unlink(name)
        try:
            sock.bind(name)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise LazarusError(f"cannot listen on unix socket {name!r} again: "
                               f"{exc.strerror}") from None
        ctx.sockets[lis.ino] = sock.detach()
        os.set_inheritable(ctx.sockets[lis.ino], True)


async def make_shared_objects(ctx: RestoreContext) -> None:
    try:
        make_socket_pairs(ctx)
        make_unix_listeners(ctx)
    except BaseException:
        await close_shared_objects(ctx)
        raise
    return None


async def close_shared_objects(ctx: RestoreContext) -> None:
    for fd in ctx.sockets.values():
        os.close(fd)
    ctx.sockets.clear()


def open_pipes_sync(ctx: RestoreContext) -> None:
    for pipe in ctx.inventory.pipes:
        if pipe.fifo_path:
            # The same FIFO again (a later open of its path must meet it).
            try:
                r = os.open(pipe.fifo_path, os.O_RDONLY | os.O_NONBLOCK)
                w = os.open(pipe.fifo_path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                raise LazarusError(f"cannot open FIFO {pipe.fifo_path}: {exc.strerror}") \
                    from None
        else:
            r, w = os.pipe()
        ctx.pipe_ends[pipe.ino] = (r, w)
        if pipe.capacity:
            fcntl.fcntl(w, F_SETPIPE_SZ, pipe.capacity)
        view = memoryview(pipe.data)
        while view:
            view = view[os.write(w, view):]


async def open_pipes(ctx: RestoreContext) -> None:
    open_pipes_sync(ctx)
    return None


async def close_pipe_ends(ctx: RestoreContext) -> None:
    for r, w in ctx.pipe_ends.values():
        os.close(r)
        os.close(w)
    ctx.pipe_ends.clear()


async def restore_state(ctx: RestoreContext) -> None:
    for p in ctx.live:
        await ctx.tracer.call(restore_state_sync, p)
    return None
