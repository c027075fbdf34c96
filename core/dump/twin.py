"""Remote fork: a stopped copy-on-write twin of each frozen process.

While the tree is frozen, a fork() injected into each process makes a twin
that never runs: copy-on-write keeps its memory as it was at the freeze while
the process itself runs on at once, and pages are read from the twin
(/proc/TWIN/mem) at leisure. Memory the twin does not hold as it was is
copied while the tree is still frozen: shared mappings (the process keeps
writing them) and mappings fork does not copy or wipes (MADV_DONTFORK,
MADV_WIPEONFORK). Which mappings those are is read from smaps before the
freeze (smaps walks the page tables: 20 ms per GiB); a mapping that became
one meanwhile is caught after the release, from the twin, and fails the fork.

A twin is a clone child with no exit signal: its parent is not signalled
about it and a plain wait() never sees it. It is traced by us with
PTRACE_O_EXITKILL, so it dies with lazarus whatever happens; once killed, its
zombie is reaped by a wait4 injected into its parent.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field

from core import procfs
from core.dump.collect import read_sigactions_brk
from core.dump.context import DumpContext, ProcDump
from core.dump.freeze import freeze_process, thaw_process
from core.dump.injection import run_injected
from core.dump.memory import DUMPED_KINDS, stored_runs
from core.errors import LazarusError
from core.images import PAGE_SIZE, pb
from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.inject import Injector
from core.kernel.memory import ProcMem

log = logging.getLogger("lazarus")


TWIN_TIMEOUT = 5.0           # a new twin reports its first stop, a killed one its death
BLOCK_PAGES = 256            # pages per block of the page list: 1 MiB reads and frames
NOT_INHERITED = {"dc", "wf"}  # VmFlags of MADV_DONTFORK and MADV_WIPEONFORK mappings
WNOHANG = 1
CLOSE_ALL = 0xFFFFFFFF       # close_range: up to the highest fd


@dataclass
class Twin:
    source: int                  # PID of the process it is the twin of
    pid: int                     # 0 once it is killed
    # Pages copied while frozen (vaddr -> bytes), for what the twin cannot hold.
    frozen: dict[int, bytes] = field(default_factory=dict)
    frozen_vmas: set[int] = field(default_factory=set)   # starts of VMAs handled so


def make_twin(p: ProcDump) -> int:
    """fork() inside the frozen process; returns the stopped twin's PID."""
    pid = p.pid
    pt.set_options(pid, K.PTRACE_O_TRACECLONE)   # the twin is ours from its birth

    def clone(inj: Injector) -> tuple[int, int, bytes]:
        # The bytes the injector saved: the twin gets a copy of our code instead.
        original = inj.saved
        assert original is not None
        # Flags 0: a plain fork whose exit signal is none.
        twin = inj.syscall_traced_clone(K.SYS_CLONE, 0, 0, 0, 0, 0)
        return twin, inj.code_addr, original

    try:
        twin, addr, original = run_injected(p, clone)
    finally:
        pt.set_options(pid, 0)
    res = pt.wait(twin, TWIN_TIMEOUT)
    if not res.stopped:
        raise LazarusError(f"the twin of PID {pid} {res.describe()}")
    # Until its code bytes are put back below, a twin that ran would only hit
    # our int3 and die; after, it must die with us.
    pt.set_options(twin, K.PTRACE_O_EXITKILL)
    with ProcMem(twin, writable=True) as tmem:
        # It holds a copy of every fd: closed, or a pipe or socket the process
        # closes would stay open (no EOF for the peer) while the twin lives.
        # Memory is not touched by this: mappings hold their own references.
        tinj = Injector(twin, tmem, pt.get_regs(twin), addr, owns_code=True)
        tinj.syscall(K.SYS_CLOSE_RANGE, 0, CLOSE_ALL, 0)
        tmem.write(addr, original)
    return twin


def split_run(addr: int, npages: int) -> list[tuple[int, int]]:
    return [(addr + i * PAGE_SIZE, min(BLOCK_PAGES, npages - i))
            for i in range(0, npages, BLOCK_PAGES)]


def prescan(ctx: DumpContext) -> None:
    """Before the freeze, while the tree runs: the VmFlags of each process."""
    queue = [ctx.pid]
    while queue:
        pid = queue.pop()
        try:
            ctx.vmflags[pid] = procfs.read_vmflags(pid)
            queue += procfs.children(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue      # gone (or no such PID: the freeze says so)


def check_twin(ctx: DumpContext, twin: Twin) -> None:
    """After the release: every mapping whose pages are read from the twin
    must be in the twin as it was (a mapping made MADV_DONTFORK or
    WIPEONFORK after the pre-scan is missing or empty there)."""
    held = procfs.read_vmflags(twin.pid)
    for vma in ctx.procs[twin.source].proc.vmas:
        if vma.kind not in DUMPED_KINDS or vma.start in twin.frozen_vmas:
            continue
        flags = held.get(vma.start)
        if flags is None or flags & NOT_INHERITED:
            raise LazarusError(
                f"PID {twin.source} made its mapping at {vma.start:#x} MADV_DONTFORK or "
                "MADV_WIPEONFORK during the fork: its twin does not hold it; fork again")


def read_twin_state(ctx: DumpContext, twin: Twin) -> None:
    """After the release: the signal handlers and brk of the process, from
    its twin (fork copies both), so the frozen tree does not wait for 64
    injected rt_sigaction calls."""
    proc = ctx.procs[twin.source].proc
    code = next((m for m in procfs.read_maps(twin.pid) if m.prot & K.PROT_EXEC and m.is_file),
                None)
    if code is None:
        raise LazarusError(f"the twin of PID {twin.source} has no executable file mapping")
    regs = pt.get_regs(twin.pid)
    # Every signal is blocked in the twin (it was forked from our injected code).
    try:
        with ProcMem(twin.pid, writable=True) as mem:
            inj = Injector(twin.pid, mem, regs, code.start)
            scratch = 0
            try:
                scratch = inj.syscall(K.SYS_MMAP, 0, PAGE_SIZE, K.PROT_READ | K.PROT_WRITE,
                                      K.MAP_PRIVATE | K.MAP_ANONYMOUS, -1, 0)
                read_sigactions_brk(inj, mem, scratch, proc)
            finally:
                if scratch > 0:
                    inj.syscall(K.SYS_MUNMAP, scratch, PAGE_SIZE)
                inj.restore_code()
    finally:
        pt.set_regs(twin.pid, regs)


def copy_frozen_pages(p: ProcDump, twin: Twin, shared_seen: set[int],
                      flags: dict[int, set[str]] | None) -> int:
    """Copy now, from the frozen process, the pages of the mappings the twin
    does not hold as they are; returns the bytes copied. `flags`: VmFlags
    from the pre-scan (None: read now)."""
    if flags is None:
        flags = procfs.read_vmflags(p.pid)
    total = 0
    pagemap_fd = os.open(procfs.proc(p.pid, "pagemap"), os.O_RDONLY)
    try:
        with ProcMem(p.pid) as mem:
            for vma in p.proc.vmas:
                if vma.kind not in DUMPED_KINDS:
                    continue
                if vma.kind != pb.Vma.ANON_SHARED and not flags.get(vma.start, set()) & \
                        NOT_INHERITED:
                    continue
                twin.frozen_vmas.add(vma.start)
                if vma.kind == pb.Vma.ANON_SHARED:
                    # Stored once, by the first process mapping it (as a dump does).
                    if vma.shmem_ino in shared_seen:
                        continue
                    shared_seen.add(vma.shmem_ino)
                for addr, npages in stored_runs(pagemap_fd, vma):
                    for start, n in split_run(addr, npages):
                        twin.frozen[start] = mem.read(start, n * PAGE_SIZE)
                        total += n * PAGE_SIZE
    finally:
        os.close(pagemap_fd)
    return total


def make_twins_sync(ctx: DumpContext) -> int:
    shared_seen: set[int] = set()
    total = 0
    for p in ctx.procs.values():
        if p.proc.zombie:
            continue
        twin = ctx.twins[p.pid] = Twin(p.pid, 0)
        total += copy_frozen_pages(p, twin, shared_seen, ctx.vmflags.get(p.pid))
        twin.pid = make_twin(p)
    return total


async def make_twins(ctx: DumpContext) -> int:
    return await ctx.tracer.call(make_twins_sync, ctx)


def page_list(ctx: DumpContext, twin: Twin) -> list[pb.PageBlock]:
    """The blocks of pages the image holds, from the twin's pagemap (and the
    frozen copies): at most BLOCK_PAGES pages each, raw, offset = vaddr."""
    p = ctx.procs[twin.source]
    out = [pb.PageBlock(vaddr=a, nr_pages=len(d) // PAGE_SIZE, offset=a, length=len(d))
           for a, d in twin.frozen.items()]
    pagemap_fd = os.open(procfs.proc(twin.pid, "pagemap"), os.O_RDONLY)
    try:
        for vma in p.proc.vmas:
            if vma.kind not in DUMPED_KINDS or vma.start in twin.frozen_vmas:
                continue
            for addr, npages in stored_runs(pagemap_fd, vma):
                out += [pb.PageBlock(vaddr=a, nr_pages=n, offset=a, length=n * PAGE_SIZE)
                        for a, n in split_run(addr, npages)]
    finally:
        os.close(pagemap_fd)
    return sorted(out, key=lambda b: b.vaddr)


def open_twin_memory(twin: Twin) -> int:
    """A read-only fd on the twin's memory (/proc/TWIN/mem): pread at a vaddr."""
    return os.open(procfs.proc(twin.pid, "mem"), os.O_RDONLY | os.O_CLOEXEC)


def reap_in_parent(p: ProcDump, twin_pid: int) -> None:
    """wait4 the dead twin from inside its frozen parent."""
    run_injected(p, lambda inj: inj.syscall(K.SYS_WAIT4, twin_pid, 0, K.WALL | WNOHANG, 0))


def kill_twin(ctx: DumpContext, twin: Twin) -> None:
    """Kill the twin and reap it in its parent: frozen now (a failed fork),
    or frozen again for the time of one wait4."""
    if not twin.pid:
        return
    pid, twin.pid = twin.pid, 0
    try:
        # If the process is gone, the twin was adopted by a reaper that will reap it.
        parent = procfs.read_stat(pid).ppid
        os.kill(pid, signal.SIGKILL)
        res = pt.wait(pid, TWIN_TIMEOUT)     # as its tracer we see it die first
    except (FileNotFoundError, ProcessLookupError, ChildProcessError):
        return
    if res.stopped:
        log.warning("twin %d of PID %d did not die", pid, twin.source)
        return
    p = ctx.procs[twin.source]
    if parent != twin.source or not procfs.is_alive(parent):
        return
    try:
        if p.threads:
            reap_in_parent(p, pid)
            return
        again = ProcDump(twin.source)
        if not freeze_process(again):
            return            # the parent is gone: init reaps the twin
        try:
            reap_in_parent(again, pid)
        finally:
            thaw_process(again)
    except (OSError, LazarusError) as exc:
        log.warning("could not reap twin %d in PID %d: %s", pid, twin.source, exc)


def kill_twins_sync(ctx: DumpContext) -> None:
    for twin in ctx.twins.values():
        kill_twin(ctx, twin)


async def kill_twins(ctx: DumpContext) -> None:
    await ctx.tracer.call(kill_twins_sync, ctx)
