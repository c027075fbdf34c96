"""Stages: read and check the image, then create the process with its PID."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from google.protobuf.message import DecodeError

from core import procfs
from core.errors import LazarusError
from core.images import ImageReader, pb
from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.libc import MASK64
from core.kernel.process import clone_traced_helper
from core.restore.context import RestoreContext
from lazy.source import LocalPageSource, RemotePageSource
from pageserver.client import PageClient, PageServerError

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
    reader = ImageReader(images_dir)
    ctx.inventory = reader.inventory()
    reader.check_kernel()
    here = sum(m.end - m.start for m in procfs.read_maps(os.getpid()) if m.path in VDSO_NAMES)
    if ctx.inventory.vdso_size and ctx.inventory.vdso_size != here:
        raise LazarusError(f"the image's vdso is {ctx.inventory.vdso_size} bytes, this kernel's "
                           f"is {here}: restore needs the same kernel")
    procs = reader.processes()
    if len(procs) != 1:
        raise LazarusError(f"the image holds {len(procs)} processes: only one is supported yet")
    ctx.proc = procs[0]
    ctx.reader = reader
    check_files(ctx.proc)


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
    except PageServerError as exc:
        await client.close()
        raise LazarusError(str(exc)) from None
    except BaseException:
        await client.close()
        raise
    pid = ctx.proc.pid
    ctx.source = RemotePageSource(server.host, server.port, image, pid, token=server.token,
                                  tls_ca=server.tls_ca, lazy_timeout=ctx.opts.lazy_timeout,
                                  client=client)
    # A second connection for the bulk push, so faults never wait behind it.
    ctx.push_source = RemotePageSource(server.host, server.port, image, pid,
                                       token=server.token, tls_ca=server.tls_ca,
                                       lazy_timeout=ctx.opts.lazy_timeout)


async def read_image(ctx: RestoreContext) -> None:
    if ctx.opts.server is not None:
        await read_remote_image(ctx)
        return None
    read_image_sync(ctx, ctx.opts.images_dir)
    if ctx.opts.lazy:
        assert ctx.reader is not None
        ctx.source = LocalPageSource(ctx.reader, ctx.proc)
    return None


async def close_sources(ctx: RestoreContext) -> None:
    for source in (ctx.source, ctx.push_source):
        if source is not None:
            await source.close()


def create_process_sync(ctx: RestoreContext) -> None:
    pid = ctx.proc.pid
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    if pid >= pid_max:
        raise LazarusError(f"PID {pid} is above this host's pid_max ({pid_max})")
    for fd in ctx.opts.inherit_fds.values():
        os.set_inheritable(fd, True)
    deadline = time.monotonic() + PID_WAIT
    while True:
        try:
            ctx.pid = clone_traced_helper(pid)
            break
        except OSError as exc:
            if exc.errno != 17:  # EEXIST: the PID is still taken
                raise LazarusError(f"cannot create process with PID {pid}: {exc.strerror}") \
                    from None
            if procfs.is_alive(pid):
                comm = procfs.read_stat(pid).comm
                raise LazarusError(f"PID {pid} is in use by a live process ({comm})") from None
            if time.monotonic() > deadline:
                raise LazarusError(f"PID {pid} is still held by a dead process not yet reaped "
                                   f"after {PID_WAIT:.0f} s") from None
            time.sleep(0.01)
    res = pt.wait(ctx.pid, 5.0)
    if not (res.stopped and res.stop_signal == K.SIGTRAP):
        raise LazarusError(f"restore helper {res.describe()} before it could be set up")
    # If lazarus dies half-way, the kernel kills the half-made process.
    pt.set_options(ctx.pid, K.PTRACE_O_EXITKILL | K.PTRACE_O_TRACECLONE)
    # No signal may interrupt the injected syscalls; resume loads the real mask.
    pt.set_sigmask(ctx.pid, MASK64)


async def create_process(ctx: RestoreContext) -> None:
    await ctx.tracer.call(create_process_sync, ctx)
    return None


def kill_process_sync(ctx: RestoreContext) -> None:
    if ctx.mem is not None:
        ctx.mem.close()
        ctx.mem = None
    if ctx.pid:
        os.kill(ctx.pid, 9)
        # Traced threads are ours to wait for; the leader is reported last.
        for tid in [*ctx.thread_tids, ctx.pid]:
            pt.wait(tid, PID_WAIT)
        ctx.thread_tids.clear()
        ctx.pid = 0


async def kill_process(ctx: RestoreContext) -> None:
    await ctx.tracer.call(kill_process_sync, ctx)
