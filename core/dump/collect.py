"""Stage: collect everything but memory contents, from /proc and by injected syscalls."""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import socket
import stat as st
import struct

from core import procfs
from core.dump.context import DumpContext, ProcDump
from core.dump.injection import run_injected
from core.dump.tracking import find_tracking_fd
from core.errors import LazarusError
from core.images import pb
from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.inject import Injector
from core.kernel.libc import MASK64, syscall, to_signed
from core.kernel.memory import ProcMem
from core.kernel.process import get_robust_list, pidfd_open
from core.kernel.sockdiag import TCP_LISTEN, UnixSocket, unix_sockets
from core.kernel.structs import KernelSigaction

PR_GET_TID_ADDRESS = 40
VDSO_NAMES = ("[vvar]", "[vvar_vclock]", "[vdso]")
TTY_MAJORS = {4, 5} | set(range(136, 144))
DEV_NULL_RDEV = os.makedev(1, 3)
RLIMITS = range(16)
ALL_SIGNALS = MASK64
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
SPLICE_F_NONBLOCK = 2
SO_PEEK_OFF = 42
ITIMERS = (0, 1, 2)   # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF


def classify_vma(m: procfs.MapEntry) -> pb.Vma:
    vma = pb.Vma(start=m.start, end=m.end, prot=m.prot, pgoff=m.offset)
    path = m.path
    if path in VDSO_NAMES:
        vma.kind, vma.name = pb.Vma.VDSO, path
    elif path == "[vsyscall]":
        vma.kind, vma.name = pb.Vma.VSYSCALL, path
    elif not m.is_file or path == "/dev/zero (deleted)" or path.startswith("/SYSV"):
        vma.kind = pb.Vma.ANON_SHARED if m.shared else pb.Vma.ANON_PRIVATE
        vma.shmem_ino = m.inode if m.shared else 0
        vma.name = path if path.startswith("[") else ""
        vma.growsdown = path == "[stack]"
        if m.shared and path.startswith("/SYSV"):
            raise LazarusError("SysV shared memory is not supported yet")
    else:
        if path.endswith(" (deleted)"):
            raise LazarusError(f"the process maps a deleted file ({path}): not supported yet")
        vma.kind = pb.Vma.FILE_SHARED if m.shared else pb.Vma.FILE_PRIVATE
        vma.path = path
        try:
            info = os.stat(path)
        except OSError as exc:
            raise LazarusError(f"cannot stat mapped file {path}: {exc.strerror}") from None
        vma.file_size, vma.file_mtime_ns = info.st_size, info.st_mtime_ns
    return vma


def collect_fds(pid: int, unix: dict[int, UnixSocket], skip: int = -1,
                dropped: list[str] | None = None) -> list[pb.FileDesc]:
    """`skip`: lazarus's own dirty-tracking userfaultfd, not the process's.
    With `dropped` (remote fork), sockets other than unix ones are left out
    and named there instead of refused."""
    out = []
    kinds: dict[int, str] | None = None
    for fd in procfs.list_fds(pid):
        if fd == skip:
            continue
        link = os.readlink(procfs.proc(pid, "fd", str(fd)))
        info = os.stat(procfs.proc(pid, "fd", str(fd)))
        fdinfo = procfs.read_fdinfo(pid, fd)
        desc = pb.FileDesc(fd=fd, path=link, flags=fdinfo.flags, pos=fdinfo.pos)
        if st.S_ISREG(info.st_mode):
            if link.endswith(" (deleted)"):
                raise LazarusError(f"fd {fd} is a deleted file ({link}): not supported yet")
            desc.kind, desc.size = pb.FileDesc.REGULAR, info.st_size
        elif st.S_ISDIR(info.st_mode):
            desc.kind = pb.FileDesc.DIRECTORY
        elif st.S_ISCHR(info.st_mode):
            if info.st_rdev == DEV_NULL_RDEV:
                desc.kind = pb.FileDesc.DEV_NULL
            elif os.major(info.st_rdev) in TTY_MAJORS:
                desc.kind = pb.FileDesc.TTY
            else:  # other character devices (/dev/zero, /dev/urandom) reopen by path
                desc.kind = pb.FileDesc.REGULAR
        elif st.S_ISFIFO(info.st_mode):
            desc.kind = pb.FileDesc.PIPE
        elif st.S_ISSOCK(info.st_mode) and info.st_ino in unix:
            desc.kind, desc.socket_ino = pb.FileDesc.UNIX_SOCKET, info.st_ino
        elif st.S_ISSOCK(info.st_mode) and dropped is not None:
            if kinds is None:
                kinds = procfs.socket_kinds(pid)
            dropped.append(f"PID {pid} fd {fd} ({kinds.get(info.st_ino, 'socket')})")
            continue
        else:
            what = link.split(":")[0] if ":" in link else "special file"
            raise LazarusError(f"fd {fd} is a {what} ({link}): not supported yet")
        out.append(desc)
    return out


def read_sigactions_brk(inj: Injector, mem: ProcMem, scratch: int,
                        proc: pb.ProcessImage) -> None:
    """The signal handlers and brk, by injection (scratch: a page of the task's)."""
    for sig in range(1, K.NSIG + 1):
        if sig in (K.SIGKILL, K.SIGSTOP):
            continue
        inj.syscall(K.SYS_RT_SIGACTION, sig, 0, scratch, 8)
        act = KernelSigaction.from_buffer_copy(mem.read(scratch, 32))
        if act.handler or act.flags or act.mask:
            proc.sigactions.append(pb.SigAction(
                signo=sig, handler=act.handler, flags=act.flags,
                restorer=act.restorer, mask=act.mask))
    proc.mm.brk = inj.syscall(K.SYS_BRK, 0)


def collect_by_injection(ctx: ProcDump, maps: list[procfs.MapEntry],
                         threads: dict[int, pb.ThreadState], sigactions: bool = True) -> None:
    """What can only be read from inside: sigactions, brk and timers from the
    process; clear-tid address and alternate signal stack from each thread.
    Without `sigactions`, no sigactions nor brk (a remote fork reads them
    from the twin, which has the same, once the process runs again)."""

    def collect(inj: Injector) -> None:
        mem = inj.mem
        scratch = inj.syscall(K.SYS_MMAP, 0, 4096, K.PROT_READ | K.PROT_WRITE,
                              K.MAP_PRIVATE | K.MAP_ANONYMOUS, -1, 0)
        try:
            if sigactions:
                read_sigactions_brk(inj, mem, scratch, ctx.proc)
            for which in ITIMERS:
                inj.syscall(K.SYS_GETITIMER, which, scratch)
                i_sec, i_usec, v_sec, v_usec = struct.unpack("<4q", mem.read(scratch, 32))
                if v_sec or v_usec:
                    ctx.proc.itimers.append(pb.ITimer(
                        which=which, interval_us=i_sec * 1_000_000 + i_usec,
                        value_us=v_sec * 1_000_000 + v_usec))
            for t in ctx.threads.values():
                assert t.regs is not None
                # The leader's injector put the code in place: threads share it.
                tinj = inj if t.tid == ctx.pid else \
                    Injector(t.tid, mem, t.regs, inj.code_addr, owns_code=True)
                state = threads[t.tid]
                tinj.syscall(K.SYS_PRCTL, PR_GET_TID_ADDRESS, scratch)
                state.clear_tid_address = int.from_bytes(mem.read(scratch, 8), "little")
                tinj.syscall(K.SYS_SIGALTSTACK, 0, scratch)
                sp, flags, size = _altstack(mem.read(scratch, 24))
                state.altstack_sp, state.altstack_flags, state.altstack_size = sp, flags, size
        finally:
            inj.syscall(K.SYS_MUNMAP, scratch, 4096)

    run_injected(ctx, collect, maps)


def _altstack(raw: bytes) -> tuple[int, int, int]:
    """stack_t: void *ss_sp; int ss_flags; (pad); size_t ss_size."""
    sp, flags, size = struct.unpack("<Qi4xQ", raw)
    return sp, flags, size


def fixed_up_regs(regs: pt.Regs) -> pt.Regs:
    """Registers as the restored task must resume: an interrupted syscall restarts."""
    out = pt.copy_regs(regs)
    if to_signed(out.orig_rax) >= 0:  # the task stopped inside a syscall
        err = to_signed(out.rax)
        if err in (-K.ERESTARTSYS, -K.ERESTARTNOINTR, -K.ERESTARTNOHAND):
            out.rip -= 2
            out.rax = out.orig_rax
        elif err == -K.ERESTART_RESTARTBLOCK:
            out.rax = -K.EINTR & MASK64
    out.orig_rax = MASK64
    return out


def collect_process(ctx: ProcDump, unix: dict[int, UnixSocket], skip: int = -1,
                    dropped: list[str] | None = None, sigactions: bool = True) -> None:
    pid = ctx.pid
    proc = ctx.proc
    stat = procfs.read_stat(pid)
    proc.start_time = stat.start_time
    status = procfs.read_status(pid)
    proc.pid, proc.ppid = pid, stat.ppid
    proc.pgid, proc.sid = stat.pgrp, stat.session
    proc.comm = procfs.proc(pid, "comm").read_text().rstrip("\n")
    proc.cwd = os.readlink(procfs.proc(pid, "cwd"))
    proc.umask = int(status.get("Umask", "022"), 8)
    uids = [int(x) for x in status["Uid"].split()]
    gids = [int(x) for x in status["Gid"].split()]
    proc.creds.CopyFrom(pb.Creds(
        uid=uids[0], euid=uids[1], suid=uids[2], fsuid=uids[3],
        gid=gids[0], egid=gids[1], sgid=gids[2], fsgid=gids[3],
        groups=[int(g) for g in status.get("Groups", "").split()]))
    exe = os.readlink(procfs.proc(pid, "exe"))
    if exe.endswith(" (deleted)"):
        raise LazarusError(f"the executable of PID {pid} was deleted ({exe}): not supported yet")
    mm = proc.mm
    mm.start_code, mm.end_code, mm.start_stack = stat.start_code, stat.end_code, stat.start_stack
    mm.start_data, mm.end_data, mm.start_brk = stat.start_data, stat.end_data, stat.start_brk
    mm.arg_start, mm.arg_end = stat.arg_start, stat.arg_end
    mm.env_start, mm.env_end = stat.env_start, stat.env_end
    mm.auxv, mm.exe = procfs.read_auxv(pid), exe
    for res in RLIMITS:
        soft, hard = resource.prlimit(pid, res)
        proc.rlimits.append(pb.Rlimit(resource=res, soft=soft & MASK64, hard=hard & MASK64))
    proc.fds.extend(collect_fds(pid, unix, skip, dropped))

    proc.shared_pending_signals.extend(
        info for info in pt.peek_siginfo(pid, shared=True)
        # Not the SIGCONT lazarus sent to hold a stopped process.
        if not (proc.stop_signal and int.from_bytes(info[:4], "little") == signal.SIGCONT))
    states: dict[int, pb.ThreadState] = {}
    for t in sorted(ctx.threads.values(), key=lambda t: t.tid != pid):   # the leader first
        assert t.regs is not None
        thread = states[t.tid] = proc.threads.add()
        thread.tid = t.tid
        thread.comm = procfs.proc(pid, "task", str(t.tid), "comm").read_text().rstrip("\n")
        thread.xstate = pt.get_xstate(t.tid)
        thread.sigmask = t.sigmask
        thread.pending_signals.extend(pt.peek_siginfo(t.tid, shared=False))
        rseq = pt.get_rseq(t.tid)
        if rseq.ptr:
            thread.rseq.CopyFrom(pb.Rseq(ptr=rseq.ptr, size=rseq.size,
                                         signature=rseq.signature))
        thread.robust_list, thread.robust_list_len = get_robust_list(t.tid)
        thread.regs = pt.regs_to_bytes(fixed_up_regs(t.regs))

    collect_by_injection(ctx, procfs.read_maps(pid), states, sigactions)
    # Maps are read after the injection has cleaned up after itself.
    maps = procfs.read_maps(pid)
    proc.vmas.extend(classify_vma(m) for m in maps)

    proc.vdso_size = sum(m.end - m.start for m in maps if m.path in VDSO_NAMES)


def queued_bytes(pid: int, fd: int) -> tuple[bytes, int]:
    """What a pipe holds, read without taking it: tee(2) copies it into a pipe
    of ours. Also the pipe's capacity."""
    src = os.open(procfs.proc(pid, "fd", str(fd)), os.O_RDONLY | os.O_NONBLOCK)
    r, w = os.pipe()
    try:
        capacity = fcntl.fcntl(src, F_GETPIPE_SZ)
        fcntl.fcntl(w, F_SETPIPE_SZ, capacity)
        try:
            n = _tee(src, w, capacity)
        except BlockingIOError:   # empty
            n = 0
        data = os.read(r, n) if n else b""
        return data, capacity
    finally:
        for f in (src, r, w):
            os.close(f)


def _tee(src: int, dst: int, size: int) -> int:
    return syscall(K.SYS_TEE, src, dst, size, SPLICE_F_NONBLOCK)


def find_internal_pipes(ctx: DumpContext) -> None:
    """A pipe or FIFO with a read end and a write end inside the tree is the
    tree's own: restored with its queued bytes. Any other came from outside."""
    ends: dict[int, set[int]] = {}
    holder: dict[int, tuple[int, int]] = {}
    fifo_paths: dict[int, str] = {}
    for p in ctx.procs.values():
        for fd in p.proc.fds:
            if fd.kind == pb.FileDesc.PIPE:
                fd.pipe_ino = os.stat(procfs.proc(p.pid, "fd", str(fd.fd))).st_ino
                if not fd.path.startswith("pipe:["):
                    fifo_paths[fd.pipe_ino] = fd.path
                ends.setdefault(fd.pipe_ino, set()).add(fd.flags & K.O_ACCMODE)
                if fd.flags & K.O_ACCMODE in (K.O_RDONLY, K.O_RDWR):
                    holder.setdefault(fd.pipe_ino, (p.pid, fd.fd))
    internal = {ino for ino, modes in ends.items()
                if K.O_RDWR in modes or {K.O_RDONLY, K.O_WRONLY} <= modes}
    for p in ctx.procs.values():
        for fd in p.proc.fds:
            fd.internal = fd.pipe_ino in internal
    for ino in sorted(internal):
        data, capacity = queued_bytes(*holder[ino])
        ctx.inventory.pipes.append(pb.PipeData(ino=ino, data=data, capacity=capacity,
                                               fifo_path=fifo_paths.get(ino, "")))


def peek_queue(pid: int, fd: int, kind: int, size: int) -> list[bytes]:
    """What a socket has to read, taken without consuming it: a copy of the
    socket (pidfd_getfd) and MSG_PEEK, with a peek offset for messages."""
    if size == 0:
        return []
    pidfd = pidfd_open(pid)
    try:
        sock = socket.socket(fileno=syscall(K.SYS_PIDFD_GETFD, pidfd, fd, 0))
    finally:
        os.close(pidfd)
    with sock:
        flags = socket.MSG_PEEK | socket.MSG_DONTWAIT
        if kind == socket.SOCK_STREAM:
            return [sock.recv(size, flags)]
        out: list[bytes] = []
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        try:
            while True:
                try:
                    out.append(sock.recv(1 << 20, flags))
                except BlockingIOError:
                    return out
        finally:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)


def drop_socket(ctx: DumpContext, ino: int, why: str, dropped: list[str]) -> None:
    """Remote fork: leave unix socket `ino` out of the image, in every process."""
    for p in ctx.procs.values():
        keep = [d for d in p.proc.fds if not (d.kind == pb.FileDesc.UNIX_SOCKET and
                                              d.socket_ino == ino)]
        for d in p.proc.fds:
            if d not in keep:
                dropped.append(f"PID {p.pid} fd {d.fd} (unix, {why})")
        del p.proc.fds[:]
        p.proc.fds.extend(keep)


def find_socket_pairs(ctx: DumpContext, unix: dict[int, UnixSocket],
                      dropped: list[str] | None = None) -> None:
    """Unix sockets are supported as connected pairs whose both ends are in the
    tree (socketpair(2), or connect(2) to a listener of the tree: restored as a
    pair, their names aside), with their queued messages, and as listeners.
    With `dropped` (remote fork), the others are left out and named there."""
    holders: dict[int, tuple[int, int]] = {}
    for p in ctx.procs.values():
        for desc in p.proc.fds:
            if desc.kind == pb.FileDesc.UNIX_SOCKET:
                holders.setdefault(desc.socket_ino, (p.pid, desc.fd))
    done: set[int] = set()
    for ino, (pid, fd) in sorted(holders.items()):
        if ino in done:
            continue
        sock = unix[ino]
        if sock.state == TCP_LISTEN:
            if sock.rqueue and dropped is not None:
                drop_socket(ctx, ino, "listening, connections not yet accepted", dropped)
                done.add(ino)
                continue
            if sock.rqueue:
                raise LazarusError(f"fd {fd} of PID {pid} is a listening unix socket with "
                                   "connections not yet accepted: not supported yet")
            ctx.inventory.unix_listeners.append(
                pb.UnixListener(ino=ino, type=sock.type, name=sock.name))
            done.add(ino)
            continue
        if sock.peer not in holders and dropped is not None:
            drop_socket(ctx, ino, "connected outside the tree", dropped)
            done.add(ino)
            continue
        if sock.peer not in holders:
            raise LazarusError(f"fd {fd} of PID {pid} is a unix socket connected outside the "
                               "tree: not supported yet")
        peer = unix[sock.peer]
        pair = pb.SocketPair(ino_a=ino, ino_b=peer.ino, type=sock.type)
        pair.queued_a.extend(peek_queue(pid, fd, sock.type, sock.rqueue))
        pair.queued_b.extend(peek_queue(*holders[peer.ino], sock.type, peer.rqueue))
        ctx.inventory.socket_pairs.append(pair)
        done |= {ino, peer.ino}


def find_shared_files(ctx: DumpContext) -> None:
    """Fds (of one process or several) that are one open file description,
    as kcmp(2) tells: restored as one, so they keep sharing an offset."""
    seen: dict[tuple[int, int], list[tuple[int, pb.FileDesc]]] = {}
    for p in ctx.procs.values():
        for desc in p.proc.fds:
            if desc.kind not in (pb.FileDesc.REGULAR, pb.FileDesc.DIRECTORY):
                continue
            info = os.stat(procfs.proc(p.pid, "fd", str(desc.fd)))
            group = seen.setdefault((info.st_dev, info.st_ino), [])
            for pid, first in group:
                if syscall(K.SYS_KCMP, pid, p.pid, K.KCMP_FILE, first.fd, desc.fd) == 0:
                    desc.share_pid, desc.share_fd = pid, first.fd
                    break
            else:
                group.append((p.pid, desc))


def collect_sync(ctx: DumpContext) -> None:
    unix = unix_sockets()
    dropped: list[str] | None = [] if ctx.opts.drop_unshareable else None
    for p in ctx.procs.values():
        if p.proc.zombie:
            p.proc.pid = p.pid
            stat = procfs.read_stat(p.pid)
            p.proc.ppid, p.proc.pgid, p.proc.sid = stat.ppid, stat.pgrp, stat.session
            p.proc.comm = stat.comm
        else:
            prev = ctx.prev_procs.get(p.pid)
            if prev is not None and prev.tracking_fd > 0:
                skip = prev.tracking_fd
            else:
                # A full dump of a pre-dumped process: tracking ends with it.
                skip = p.tracking_fd = find_tracking_fd(p.pid)
            collect_process(p, unix, skip, dropped, not ctx.opts.state_from_twin)
    find_internal_pipes(ctx)
    find_socket_pairs(ctx, unix, dropped)
    if dropped:
        ctx.warnings.append("the copy will not have these sockets (closed in it; the "
                            "original keeps them): " + ", ".join(dropped))
    find_shared_files(ctx)
    inv = ctx.inventory
    inv.root_pid = ctx.pid
    inv.pids.extend(ctx.procs)
    inv.vdso_size = ctx.root.proc.vdso_size


def collect_vmas_sync(ctx: DumpContext) -> None:
    """Pre-dump: only what memory needs (VMAs) and what identifies the
    process for the next round."""
    for p in ctx.procs.values():
        stat = procfs.read_stat(p.pid)
        proc = p.proc
        proc.pid, proc.ppid, proc.comm, proc.start_time = p.pid, stat.ppid, stat.comm, \
            stat.start_time
        if not proc.zombie:
            maps = procfs.read_maps(p.pid)
            proc.vmas.extend(classify_vma(m) for m in maps)
            proc.vdso_size = sum(m.end - m.start for m in maps if m.path in VDSO_NAMES)
    inv = ctx.inventory
    inv.root_pid = ctx.pid
    inv.pids.extend(ctx.procs)
    inv.vdso_size = ctx.root.proc.vdso_size
    inv.predump = True


async def collect_vmas(ctx: DumpContext) -> None:
    await ctx.tracer.call(collect_vmas_sync, ctx)
    return None


async def collect(ctx: DumpContext) -> None:
    await ctx.tracer.call(collect_sync, ctx)
    return None
