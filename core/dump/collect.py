"""Stage: collect everything but memory contents, from /proc and by injected syscalls."""

from __future__ import annotations

import os
import resource
import stat as st
import struct

from core import procfs
from core.dump.context import DumpContext
from core.errors import LazarusError
from core.images import pb
from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.inject import Injector
from core.kernel.libc import MASK64, to_signed
from core.kernel.memory import ProcMem
from core.kernel.structs import KernelSigaction

PR_GET_TID_ADDRESS = 40
VDSO_NAMES = ("[vvar]", "[vvar_vclock]", "[vdso]")
TTY_MAJORS = {4, 5} | set(range(136, 144))
DEV_NULL_RDEV = os.makedev(1, 3)
RLIMITS = range(16)
ALL_SIGNALS = MASK64
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


def collect_fds(pid: int) -> list[pb.FileDesc]:
    out = []
    for fd in procfs.list_fds(pid):
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
        else:
            what = link.split(":")[0] if ":" in link else "special file"
            raise LazarusError(f"fd {fd} is a {what} ({link}): not supported yet")
        out.append(desc)
    return out


def collect_by_injection(ctx: DumpContext, maps: list[procfs.MapEntry]) -> None:
    """Sigactions, brk and the clear-tid address can only be read from inside."""
    assert ctx.regs is not None
    pid = ctx.pid
    code = next((m for m in maps if m.prot & K.PROT_EXEC and m.is_file), None)
    if code is None:
        raise LazarusError(f"PID {pid} has no executable file mapping to run syscalls from")
    # Block every signal while we run code in the task, so none is delivered
    # into our injected calls; the real mask is put back by thaw.
    pt.set_sigmask(pid, ALL_SIGNALS)
    with ProcMem(pid, writable=True) as mem:
        inj = Injector(pid, mem, ctx.regs, code.start)
        scratch = 0
        try:
            scratch = inj.syscall(K.SYS_MMAP, 0, 4096, K.PROT_READ | K.PROT_WRITE,
                                  K.MAP_PRIVATE | K.MAP_ANONYMOUS, -1, 0)
            for sig in range(1, K.NSIG + 1):
                if sig in (K.SIGKILL, K.SIGSTOP):
                    continue
                inj.syscall(K.SYS_RT_SIGACTION, sig, 0, scratch, 8)
                act = KernelSigaction.from_buffer_copy(mem.read(scratch, 32))
                if act.handler or act.flags or act.mask:
                    ctx.proc.sigactions.append(pb.SigAction(
                        signo=sig, handler=act.handler, flags=act.flags,
                        restorer=act.restorer, mask=act.mask))
            ctx.proc.mm.brk = inj.syscall(K.SYS_BRK, 0)
            for which in ITIMERS:
                inj.syscall(K.SYS_GETITIMER, which, scratch)
                i_sec, i_usec, v_sec, v_usec = struct.unpack("<4q", mem.read(scratch, 32))
                if v_sec or v_usec:
                    ctx.proc.itimers.append(pb.ITimer(
                        which=which, interval_us=i_sec * 1_000_000 + i_usec,
                        value_us=v_sec * 1_000_000 + v_usec))
            inj.syscall(K.SYS_PRCTL, PR_GET_TID_ADDRESS, scratch)
            ctx.proc.threads[0].clear_tid_address = int.from_bytes(mem.read(scratch, 8), "little")
        finally:
            if scratch > 0:
                inj.syscall(K.SYS_MUNMAP, scratch, 4096)
            inj.restore_code()
            pt.set_regs(pid, ctx.regs)
            pt.set_sigmask(pid, ctx.sigmask)


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


def collect_sync(ctx: DumpContext) -> None:
    pid = ctx.pid
    assert ctx.regs is not None
    proc = ctx.proc
    stat = procfs.read_stat(pid)
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
    proc.fds.extend(collect_fds(pid))

    thread = proc.threads.add()
    thread.tid = pid
    thread.xstate = pt.get_xstate(pid)
    thread.sigmask = ctx.sigmask
    thread.pending_signals.extend(pt.peek_siginfo(pid, shared=False))
    proc.shared_pending_signals.extend(pt.peek_siginfo(pid, shared=True))
    rseq = pt.get_rseq(pid)
    if rseq.ptr:
        thread.rseq.CopyFrom(pb.Rseq(ptr=rseq.ptr, size=rseq.size, signature=rseq.signature))
    thread.regs = pt.regs_to_bytes(fixed_up_regs(ctx.regs))

    collect_by_injection(ctx, procfs.read_maps(pid))
    # Maps are read after the injection has cleaned up after itself.
    maps = procfs.read_maps(pid)
    proc.vmas.extend(classify_vma(m) for m in maps)

    inv = ctx.inventory
    inv.root_pid = pid
    inv.pids.append(pid)
    inv.vdso_size = sum(m.end - m.start for m in maps if m.path in VDSO_NAMES)


async def collect(ctx: DumpContext) -> None:
    await ctx.tracer.call(collect_sync, ctx)
    return None
