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
from core.restore.context import TRAMPOLINE_SIZE, ProcRestore, RestoreContext

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


def map_vma(ctx: ProcRestore, vma: pb.Vma, writable: bool,
            open_files: dict[tuple[str, int], int]) -> None:
    assert ctx.inj is not None
    inj = ctx.inj
    size = vma.end - vma.start
    prot = vma.prot | (K.PROT_READ | K.PROT_WRITE if writable else 0)
    flags = K.MAP_FIXED_NOREPLACE
    fd = -1
    owner = ctx.tree.shmem_owner.get(vma.shmem_ino) if vma.shmem_ino else None
    if owner is not None:
        # Shared memory another process of the tree already has: map the same
        # object, reached through that process's /proc/PID/map_files.
        flags |= K.MAP_SHARED
        fd = open_in_target(ctx, owner, K.O_RDWR if vma.prot & K.PROT_WRITE else K.O_RDONLY)
        open_files[(owner, -1)] = fd
    elif vma.kind in (pb.Vma.ANON_PRIVATE, pb.Vma.ANON_SHARED):
        flags |= K.MAP_ANONYMOUS
        flags |= K.MAP_SHARED if vma.kind == pb.Vma.ANON_SHARED else K.MAP_PRIVATE
        if vma.growsdown:
            flags |= K.MAP_GROWSDOWN
    else:
        shared = vma.kind == pb.Vma.FILE_SHARED
        flags |= K.MAP_SHARED if shared else K.MAP_PRIVATE
        mode = K.O_RDWR if shared and vma.prot & K.PROT_WRITE else K.O_RDONLY
        # One open per file, not per VMA: a library has four or five VMAs.
        fd = open_files.get((vma.path, mode), -1)
        if fd < 0:
            try:
                fd = open_in_target(ctx, vma.path, mode | K.O_CLOEXEC)
            except OSError as exc:
                raise LazarusError(f"cannot open mapped file {vma.path}: {exc.strerror}") \
                    from None
            open_files[(vma.path, mode)] = fd
    try:
        got = inj.syscall(K.SYS_MMAP, vma.start, size, prot, flags, fd,
                          vma.pgoff if fd >= 0 else 0)
    except OSError as exc:
        what = vma.path or vma.name or "anonymous memory"
        raise LazarusError(f"cannot map {what} at {vma.start:#x}: {exc.strerror}") from None
    if got != vma.start:
        raise LazarusError(f"mapping at {vma.start:#x} landed at {got:#x}")
    if vma.shmem_ino and owner is None:
        ctx.tree.shmem_owner[vma.shmem_ino] = \
            f"/proc/{ctx.pid}/map_files/{vma.start:x}-{vma.end:x}"


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
    open_files: dict[tuple[str, int], int] = {}
    try:
        for vma in proc.vmas:
            if vma.kind in MAPPED_KINDS:
                map_vma(ctx, vma, vma.start in filled, open_files)
    finally:
        for fd in open_files.values():
            inj.syscall(K.SYS_CLOSE, fd)


async def build_address_space(ctx: RestoreContext) -> None:
    """Parents first: shared memory is mapped from the first process that has it."""
    for p in ctx.live:
        await ctx.tracer.call(build_address_space_sync, p)
    return None
