"""Stage: rebuild the address space at the dumped addresses.

The helper's own mappings are replaced: a trampoline (code + scratch) goes
into a hole free in both layouts, everything else is unmapped, the kernel
recreates [vvar]/[vdso] at the dumped place, then each VMA is mapped.
"""

from __future__ import annotations

import bisect

from core.errors import LazarusError
from core.images import pb
from core.kernel import constants as K
from core.kernel.inject import BATCH_ENTRY, InjectedSyscallError
from core.restore.context import SCRATCH_SIZE, TRAMPOLINE_SIZE, ProcRestore, RestoreContext

LOWEST_TRAMPOLINE = 0x100000
MAPPED_KINDS = (pb.Vma.ANON_PRIVATE, pb.Vma.ANON_SHARED, pb.Vma.FILE_PRIVATE, pb.Vma.FILE_SHARED)


def find_hole(taken: list[tuple[int, int]], size: int) -> int:
    addr = LOWEST_TRAMPOLINE
    for start, end in sorted(taken):
        if start >= addr + size:
            return addr
        addr = max(addr, end)
    if addr + size <= K.TASK_SIZE:
        return addr
    raise LazarusError("no room for the restore trampoline in the address space")


def put_string(ctx: ProcRestore, text: str) -> int:
    """Copy a NUL-terminated string to the scratch area; returns its address."""
    assert ctx.mem is not None
    data = text.encode() + b"\0"
    if len(data) > 4096:
        raise LazarusError(f"path too long: {text[:60]}...")
    ctx.mem.write(ctx.scratch, data)
    return ctx.scratch


def open_in_target(ctx: ProcRestore, path: str, flags: int) -> int:
    assert ctx.inj is not None
    return ctx.inj.syscall(K.SYS_OPENAT, K.AT_FDCWD & ((1 << 64) - 1), put_string(ctx, path),
                           flags, 0)


def needs_fill(proc: pb.ProcessImage) -> set[int]:
    """Start addresses of VMAs that receive pages from the image."""
    starts = sorted(v.start for v in proc.vmas)
    out: set[int] = set()

    for block in proc.pages:
        i = bisect.bisect_right(starts, block.vaddr) - 1
        out.add(starts[i])
    return out


def mmap_args(vma: pb.Vma, writable: bool, fd: int, flags: int) -> tuple[int, ...]:
    prot = vma.prot | (K.PROT_READ | K.PROT_WRITE if writable else 0)
    return (vma.start, vma.end - vma.start, prot, flags | K.MAP_FIXED_NOREPLACE, fd,
            vma.pgoff if fd >= 0 else 0)


def check_mapped(vma: pb.Vma, got: int) -> None:
    if got != vma.start:
        raise LazarusError(f"mapping at {vma.start:#x} landed at {got:#x}")


def mapping_failed(vma: pb.Vma, exc: OSError) -> LazarusError:
    what = vma.path or vma.name or "anonymous memory"
    return LazarusError(f"cannot map {what} at {vma.start:#x}: {exc.strerror}")


def file_mode(vma: pb.Vma) -> int:
    shared = vma.kind == pb.Vma.FILE_SHARED
    return K.O_RDWR if shared and vma.prot & K.PROT_WRITE else K.O_RDONLY


def map_shared_anon(ctx: ProcRestore, vma: pb.Vma, writable: bool,
                    open_files: dict[tuple[str, int], int]) -> None:
    """Shared anonymous memory, one VMA at a time: the first process of the
    tree mapping it makes the object, the others (and further VMAs of the
    same object) map it through that process's /proc/PID/map_files."""
    assert ctx.inj is not None
    owner = ctx.tree.shmem_owner.get(vma.shmem_ino)
    if owner is not None:
        fd = open_in_target(ctx, owner, K.O_RDWR if vma.prot & K.PROT_WRITE else K.O_RDONLY)
        open_files[(owner, -1)] = fd
        flags = K.MAP_SHARED
    else:
        fd, flags = -1, K.MAP_ANONYMOUS | K.MAP_SHARED
    try:
        got = ctx.inj.syscall(K.SYS_MMAP, *mmap_args(vma, writable, fd, flags))
    except OSError as exc:
        raise mapping_failed(vma, exc) from None
    check_mapped(vma, got)
    if owner is None:
        ctx.tree.shmem_owner[vma.shmem_ino] = \
            f"/proc/{ctx.pid}/map_files/{vma.start:x}-{vma.end:x}"


def open_mapped_files(ctx: ProcRestore,
                      wanted: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Open every (path, mode) in the target, in as few stops as the scratch
    area allows (the paths and the syscall table share it)."""
    assert ctx.inj is not None and ctx.mem is not None
    fds: dict[tuple[str, int], int] = {}
    i = 0
    while i < len(wanted):
        blob = bytearray()
        calls: list[tuple[int, tuple[int, ...]]] = []
        chunk: list[tuple[str, int]] = []
        while i < len(wanted):
            path, mode = wanted[i]
            data = path.encode() + b"\0"
            if len(data) > 4096:
                raise LazarusError(f"path too long: {path[:60]}...")
            if len(blob) + len(data) + (len(calls) + 1) * BATCH_ENTRY.size > SCRATCH_SIZE:
                break
            calls.append((K.SYS_OPENAT, (K.AT_FDCWD, ctx.scratch + len(blob),
                                         mode | K.O_CLOEXEC, 0)))
            chunk.append(wanted[i])
            blob += data
            i += 1
        ctx.mem.write(ctx.scratch, bytes(blob))
        table = ctx.scratch + (len(blob) + 7) // 8 * 8
        try:
            got = ctx.inj.syscall_batch(calls, table, ctx.scratch + SCRATCH_SIZE - table)
        except InjectedSyscallError as exc:
            # The files opened before the failing one are closed with the rest.
            fds.update(zip(chunk[:exc.index], exc.partial, strict=True))
            raise LazarusError(f"cannot open mapped file {chunk[exc.index][0]}: "
                               f"{exc.strerror}") from None
        fds.update(zip(chunk, got, strict=True))
    return fds


def build_address_space_sync(ctx: ProcRestore) -> None:
    proc, inj = ctx.proc, ctx.inj
    assert inj is not None
    tramp_end = ctx.trampoline + TRAMPOLINE_SIZE
    inj.syscall(K.SYS_MUNMAP, 0, ctx.trampoline)
    inj.syscall(K.SYS_MUNMAP, tramp_end, K.TASK_SIZE - tramp_end)
    vvar = next((v for v in proc.vmas if v.kind == pb.Vma.VDSO), None)
    if vvar is not None:
        inj.syscall(K.SYS_ARCH_PRCTL, K.ARCH_MAP_VDSO_64, vvar.start)
    filled = needs_fill(proc)
    vmas = [v for v in proc.vmas if v.kind in MAPPED_KINDS]
    # One open per file, not per VMA: a library has four or five VMAs.
    wanted = list(dict.fromkeys((v.path, file_mode(v)) for v in vmas
                                if v.kind in (pb.Vma.FILE_PRIVATE, pb.Vma.FILE_SHARED)))
    open_files: dict[tuple[str, int], int] = {}
    try:
        open_files.update(open_mapped_files(ctx, wanted))
        # Every other VMA in batches: they do not overlap, so order is free.
        batched: list[pb.Vma] = []
        calls: list[tuple[int, tuple[int, ...]]] = []
        for vma in vmas:
            writable = vma.start in filled
            if vma.kind == pb.Vma.ANON_SHARED or vma.shmem_ino:
                map_shared_anon(ctx, vma, writable, open_files)
                continue
            if vma.kind == pb.Vma.ANON_PRIVATE:
                flags = K.MAP_ANONYMOUS | K.MAP_PRIVATE
                if vma.growsdown:
                    flags |= K.MAP_GROWSDOWN
                fd = -1
            else:
                flags = K.MAP_SHARED if vma.kind == pb.Vma.FILE_SHARED else K.MAP_PRIVATE
                fd = open_files[(vma.path, file_mode(vma))]
            batched.append(vma)
            calls.append((K.SYS_MMAP, mmap_args(vma, writable, fd, flags)))
        try:
            got = inj.syscall_batch(calls, ctx.scratch, SCRATCH_SIZE)
        except InjectedSyscallError as exc:
            raise mapping_failed(batched[exc.index], exc) from None
        for vma, addr in zip(batched, got, strict=True):
            check_mapped(vma, addr)
    finally:
        if open_files:
            inj.syscall_batch([(K.SYS_CLOSE, (fd,)) for fd in open_files.values()],
                              ctx.scratch, SCRATCH_SIZE)


async def build_address_space(ctx: RestoreContext) -> None:
    """Parents first: shared memory is mapped from the first process that has it."""
    for p in ctx.live:
        await ctx.tracer.call(build_address_space_sync, p)
    return None
