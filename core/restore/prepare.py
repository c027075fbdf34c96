"""Stages: read and check the image, then create the process with its PID."""

from __future__ import annotations

import errno
import mmap
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import DecodeError

from core import procfs
from core.errors import LazarusError
from core.images import pb, workingset
from core.images.chain import open_image
from core.images.workingset import PageBuffer, inventory_digest
from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.inject import SYSCALL_INT3, Injector
from core.kernel.libc import MASK64
from core.kernel.memory import ProcMem
from core.kernel.process import PIDNS_INIT, clone_traced, clone_traced_helper
from core.kernel.structs import CloneArgs
from core.restore.addrspace import find_hole
from core.restore.context import TRAMPOLINE_SIZE, ProcRestore, RestoreContext
from lazy.source import LocalPageSource, RemotePageSource
from pageserver import wire_pb2 as wire
from pageserver.client import PageClient, PageServerError, RemoteError

PID_WAIT = 3.0      # a killed target may be reaped late by its parent or PID 1
VDSO_NAMES = ("[vvar]", "[vvar_vclock]", "[vdso]")


def check_files(proc: pb.ProcessImage) -> None:
    """Every file the image needs must still be there, at the size it had."""
    for vma in proc.vmas:
        if vma.kind not in (pb.Vma.FILE_PRIVATE, pb.Vma.FILE_SHARED):
            continue
        try:
            size = os.stat(vma.path).st_size
        except OSError as exc:
            raise LazarusError(f"mapped file {vma.path} is gone: {exc.strerror}") from None
        if size != vma.file_size:
            raise LazarusError(
                f"mapped file {vma.path} changed size since the dump "
                f"({vma.file_size} -> {size} bytes)")
    if not os.path.exists(proc.mm.exe):
        raise LazarusError(f"executable {proc.mm.exe} is gone")


def read_image_sync(ctx: RestoreContext, images_dir: Path) -> None:
    reader = open_image(images_dir)
    ctx.inventory = reader.inventory()
    if ctx.inventory.predump:
        raise LazarusError(f"{images_dir} is a pre-dump (memory only): restore the image "
                           "made by `lazarus dump --prev` on top of it")
    ctx.inventory_sha256 = inventory_digest((images_dir / "inventory.img").read_bytes())
    reader.check_kernel()
    here = sum(m.end - m.start for m in procfs.read_maps(os.getpid()) if m.path in VDSO_NAMES)
    if ctx.inventory.vdso_size and ctx.inventory.vdso_size != here:
        raise LazarusError(f"the image's vdso is {ctx.inventory.vdso_size} bytes, this kernel's "
                           f"is {here}: restore needs the same kernel")
    ctx.procs = [ProcRestore(ctx, proc) for proc in reader.processes()]
    ctx.reader = reader
    pids = {p.proc.pid for p in ctx.procs}
    for p in ctx.procs[1:]:
        if p.proc.ppid not in pids:
            raise LazarusError(f"process {p.proc.pid} of the image has no parent in it")
    for p in ctx.live:
        check_files(p.proc)


def load_working_set(ctx: RestoreContext, data: PageBuffer | None) -> None:
    """Take a recorded working set for prefetching, if asked for and usable;
    an unusable one is ignored with a warning (pages still come from the image)."""
    if data is None or not ctx.opts.prefetch or ctx.opts.record_working_set:
        return
    try:
        recorded = workingset.check(data, ctx.inventory_sha256, [p.proc for p in ctx.live])
    except workingset.WorkingSetError as exc:
        ctx.warnings.append(f"{exc}: ignored, restoring without prefetch")
        return
    for p in ctx.live:
        p.working_set = recorded.get(p.proc.pid)


def read_local_working_set(images_dir: Path) -> PageBuffer | None:
    """The file mapped, not read: its pages go from the page cache straight
    into the process (a read would first copy megabytes into fresh memory)."""
    try:
        with open(images_dir / workingset.WORKINGSET, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # ACCESS_COPY: private and writable on our side, so ctypes can
            # take its address; nothing is ever written to it.
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) if size else b""
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LazarusError(f"{workingset.WORKINGSET}: cannot read: {exc.strerror}") from None


async def fetch_working_set(client: PageClient, image: str) -> bytes | None:
    try:
        return await client.get_file(image, workingset.WORKINGSET)
    except RemoteError as exc:
        if exc.code == wire.Error.NOT_FOUND:
            return None
        raise


async def fetch_metadata(client: PageClient, image: str, into: Path) -> None:
    """The image's metadata files from the server, into a local directory."""
    inventory = await client.get_file(image, "inventory.img")
    (into / "inventory.img").write_bytes(inventory)
    inv = pb.Inventory()
    try:
        inv.ParseFromString(inventory)
    except DecodeError:
        raise LazarusError(f"image {image} on the page server has a garbage inventory") \
            from None
    for pid in inv.pids:
        name = f"process-{pid}.img"
        (into / name).write_bytes(await client.get_file(image, name))


async def read_remote_image(ctx: RestoreContext) -> None:
    server, image = ctx.opts.server, ctx.opts.image_name
    assert server is not None
    if not image:
        raise LazarusError("--page-server needs --image NAME")
    client = await server.connect()
    try:
        with tempfile.TemporaryDirectory(prefix="lazarus-meta-") as tmp:
            await fetch_metadata(client, image, Path(tmp))
            read_image_sync(ctx, Path(tmp))
            if ctx.opts.prefetch and not ctx.opts.record_working_set:
                load_working_set(ctx, await fetch_working_set(client, image))
    except PageServerError as exc:
        await client.close()
        raise LazarusError(str(exc)) from None
    except BaseException:
        await client.close()
        raise
    for i, p in enumerate(ctx.live):
        pid = p.proc.pid
        p.source = RemotePageSource(server.host, server.port, image, pid, token=server.token,
                                    tls_ca=server.tls_ca, lazy_timeout=ctx.opts.lazy_timeout,
                                    client=client if i == 0 else None,
                                    restore_id=server.restore_id)
        # A second connection for the bulk push, so faults never wait behind it.
        p.push_source = RemotePageSource(server.host, server.port, image, pid,
                                         token=server.token, tls_ca=server.tls_ca,
                                         lazy_timeout=ctx.opts.lazy_timeout,
                                         restore_id=server.restore_id)


async def read_image(ctx: RestoreContext) -> None:
    if ctx.opts.server is not None:
        await read_remote_image(ctx)
        return None
    read_image_sync(ctx, ctx.opts.images_dir)
    if ctx.opts.lazy:
        assert ctx.reader is not None
        if ctx.opts.prefetch and not ctx.opts.record_working_set:
            load_working_set(ctx, read_local_working_set(ctx.opts.images_dir))
        for p in ctx.live:
            p.source = LocalPageSource(ctx.reader, p.proc)
    return None


async def close_sources(ctx: RestoreContext) -> None:
    for p in ctx.procs:
        for source in (p.source, p.push_source):
            if source is not None:
                await source.close()


def with_free_pid(pid: int, make: Callable[[], int]) -> int:
    """Run `make` (which creates PID `pid`), waiting, bounded, while a dead
    process that held the PID is still being reaped."""
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    if pid >= pid_max:
        raise LazarusError(f"PID {pid} is above this host's pid_max ({pid_max})")
    deadline = time.monotonic() + PID_WAIT
    while True:
        try:
            return make()
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise LazarusError(f"cannot create process with PID {pid}: {exc.strerror}") \
                    from None
            if procfs.is_alive(pid):
                comm = procfs.read_stat(pid).comm
                raise LazarusError(f"PID {pid} is in use by a live process ({comm}): restore "
                                   "into a new PID namespace with --pidns") from None
            if time.monotonic() > deadline:
                raise LazarusError(f"PID {pid} is still held by a dead process not yet reaped "
                                   f"after {PID_WAIT:.0f} s") from None
            time.sleep(0.01)


def map_trampoline(ctx: RestoreContext, root: ProcRestore) -> None:
    """Code and scratch at an address free in the helper and in every process
    of the image; the children, forked from the root, inherit it."""
    assert root.mem is not None
    regs = pt.get_regs(root.pid)
    taken = [(m.start, m.end) for m in procfs.read_maps(root.pid)]
    taken += [(v.start, v.end) for p in ctx.live for v in p.proc.vmas]
    ctx.trampoline = find_hole(taken, TRAMPOLINE_SIZE)
    # First injection from the helper's own code, only to map the trampoline.
    boot = Injector(root.pid, root.mem, regs, regs.rip)
    try:
        boot.syscall(K.SYS_MMAP, ctx.trampoline, TRAMPOLINE_SIZE,
                     K.PROT_READ | K.PROT_WRITE | K.PROT_EXEC,
                     K.MAP_PRIVATE | K.MAP_ANONYMOUS | K.MAP_FIXED_NOREPLACE, -1, 0)
    finally:
        boot.restore_code()
    root.mem.write(ctx.trampoline, SYSCALL_INT3)
    root.inj = Injector(root.pid, root.mem, regs, ctx.trampoline, owns_code=True, batches=True)


def fork_child(parent: ProcRestore, child: ProcRestore) -> None:
    """clone3 in the parent with the child's PID: a copy of the parent as it
    is now (the helper with its trampoline), traced by us from birth."""
    inj = parent.inj
    assert inj is not None
    child.pid = with_free_pid(child.proc.pid, lambda: inj.clone3(
        parent.scratch, CloneArgs(exit_signal=K.SIGCHLD), child.proc.pid))
    res = pt.wait(child.pid, 5.0)
    if not res.stopped:
        raise LazarusError(f"new process {child.pid} {res.describe()}")
    child.mem = ProcMem(child.pid, writable=True)
    child.inj = Injector(child.pid, child.mem, pt.get_regs(child.pid), child.trampoline,
                         owns_code=True, batches=True)


def set_session_and_group(p: ProcRestore) -> None:
    """A session or group the process led is made anew; a child inherits its
    parent's. A group led by another tree member is joined in a second pass."""
    assert p.inj is not None
    if p.proc.sid == p.proc.pid:
        p.inj.syscall(K.SYS_SETSID)
    elif p.proc.pgid == p.proc.pid:
        p.inj.syscall(K.SYS_SETPGID, 0, 0)


def make_pid_namespace(ctx: RestoreContext) -> None:
    """A new PID namespace whose init is ours (a small reaper, traced and
    stopped at its exec until the root is forked from it)."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        ctx.init_pid = clone_traced(
            [sys.executable, "-c", PIDNS_INIT, str(ctx.root.proc.pid), str(w)],
            flags=K.CLONE_NEWPID)
    finally:
        os.close(w)
    ctx.init_report = r
    res = pt.wait(ctx.init_pid, 5.0)
    if not (res.stopped and res.stop_signal == K.SIGTRAP):
        raise LazarusError(f"the PID namespace's init {res.describe()}")
    pt.set_options(ctx.init_pid, K.PTRACE_O_EXITKILL | K.PTRACE_O_TRACEFORK)


def fork_root_from_init(ctx: RestoreContext) -> int:
    """The root is forked by the namespace's init (so the init is its parent
    and reaps it), with the root's PID inside the namespace; then the init runs."""
    init, root = ctx.init_pid, ctx.root
    regs = pt.get_regs(init)
    with ProcMem(init, writable=True) as mem:
        inj = Injector(init, mem, regs, regs.rip)
        try:
            scratch = inj.syscall(K.SYS_MMAP, 0, 4096, K.PROT_READ | K.PROT_WRITE,
                                  K.MAP_PRIVATE | K.MAP_ANONYMOUS, -1, 0)
            pid = inj.clone3(scratch, CloneArgs(exit_signal=K.SIGCHLD), root.proc.pid)
            inj.syscall(K.SYS_MUNMAP, scratch, 4096)
        finally:
            inj.restore_code()
            pt.set_regs(init, regs)
    pt.detach(init)
    return pid


def create_tree_sync(ctx: RestoreContext) -> None:
    root = ctx.root
    for fd in ctx.opts.inherit_fds.values():
        os.set_inheritable(fd, True)
    if ctx.opts.pidns:
        make_pid_namespace(ctx)
        root.pid = fork_root_from_init(ctx)
    else:
        root.pid = with_free_pid(root.proc.pid, lambda: clone_traced_helper(root.proc.pid))
    res = pt.wait(root.pid, 5.0)
    if not res.stopped:
        raise LazarusError(f"restore helper {res.describe()} before it could be set up")
    # If lazarus dies half-way, the kernel kills the half-made processes;
    # children and threads made by injection are traced from birth.
    pt.set_options(root.pid, K.PTRACE_O_EXITKILL | K.PTRACE_O_TRACECLONE |
                   K.PTRACE_O_TRACEFORK)
    # No signal may interrupt the injected syscalls; resume loads the real masks.
    pt.set_sigmask(root.pid, MASK64)
    root.mem = ProcMem(root.pid, writable=True)
    map_trampoline(ctx, root)
    set_session_and_group(root)
    for p in ctx.procs[1:]:
        parent = ctx.find(p.proc.ppid)
        assert parent is not None and parent.pid
        fork_child(parent, p)
        set_session_and_group(p)
    for p in ctx.procs:
        leader = ctx.find(p.proc.pgid)
        if p.proc.pgid != p.proc.pid and leader is not None and \
                os.getpgid(p.pid) != os.getpgid(leader.pid):
            assert p.inj is not None
            p.inj.syscall(K.SYS_SETPGID, 0, p.proc.pgid)   # ids as the tree sees them


async def create_tree(ctx: RestoreContext) -> None:
    await ctx.tracer.call(create_tree_sync, ctx)
    return None


def kill_tree_sync(ctx: RestoreContext) -> None:
    for p in reversed(ctx.procs):
        if p.mem is not None:
            p.mem.close()
            p.mem = None
        if p.pid:
            try:
                os.kill(p.pid, 9)
            except ProcessLookupError:
                pass
            # Traced threads are ours to wait for; the leader is reported last.
            for tid in [*p.thread_tids, p.pid]:
                try:
                    pt.wait(tid, PID_WAIT)
                except (ChildProcessError, pt.TraceError):
                    pass
            p.thread_tids.clear()
            p.pid = 0
    if ctx.init_pid:
        kill_pidns_init(ctx)


def kill_pidns_init(ctx: RestoreContext) -> None:
    """SIGKILL to a PID namespace's init ends everything in it."""
    try:
        os.kill(ctx.init_pid, 9)
        os.waitpid(ctx.init_pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    ctx.init_pid = 0
    if ctx.init_report >= 0:
        os.close(ctx.init_report)
        ctx.init_report = -1


async def kill_tree(ctx: RestoreContext) -> None:
    await ctx.tracer.call(kill_tree_sync, ctx)
