"""Stage: write the stored pages into the new address space, then set final protections.

Eager restore writes every page. Lazy restore writes only the pages outside
private anonymous memory here and hands the rest to the lazy daemon.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.errors import LazarusError
from core.images import ImageError, pb
from core.kernel import constants as K
from core.kernel.memory import vm_writev
from core.restore.addrspace import needs_fill
from core.restore.context import SCRATCH_SIZE, ProcRestore, RestoreContext

VMWRITEV_BATCH = 16 << 20   # bytes gathered before one process_vm_writev


def write_pages(ctx: ProcRestore, blocks: Iterable[tuple[int, bytes]]) -> int:
    assert ctx.mem is not None
    total = 0
    pending: list[tuple[int, bytes]] = []
    pending_bytes = 0
    try:
        for vaddr, data in blocks:
            total += len(data)
            if ctx.opts.write_method == "vmwritev":
                pending.append((vaddr, data))
                pending_bytes += len(data)
                if pending_bytes >= VMWRITEV_BATCH:
                    vm_writev(ctx.pid, pending)
                    pending, pending_bytes = [], 0
            else:
                ctx.mem.write(vaddr, data)
        if pending:
            vm_writev(ctx.pid, pending)
    except ImageError as exc:
        raise LazarusError(str(exc)) from None
    return total


def set_final_protections(ctx: ProcRestore) -> None:
    """VMAs mapped writable for filling get their dumped protection back."""
    assert ctx.inj is not None
    filled = needs_fill(ctx.proc)
    calls = [(K.SYS_MPROTECT, (vma.start, vma.end - vma.start, vma.prot))
             for vma in ctx.proc.vmas
             if vma.start in filled and vma.prot != (vma.prot | K.PROT_READ | K.PROT_WRITE)]
    ctx.inj.syscall_batch(calls, ctx.scratch, SCRATCH_SIZE)


def write_memory_sync(ctx: ProcRestore) -> int:
    assert ctx.reader is not None
    with ctx.reader.page_reader(ctx.proc) as pages:
        total = write_pages(ctx, pages.iter_blocks())
    set_final_protections(ctx)
    return total


async def write_memory(ctx: RestoreContext) -> int:
    return sum([await ctx.tracer.call(write_memory_sync, p) for p in ctx.live])


def is_lazy(vma: pb.Vma) -> bool:
    """Private anonymous memory is served lazily; the rest is written up front."""
    return vma.kind == pb.Vma.ANON_PRIVATE
