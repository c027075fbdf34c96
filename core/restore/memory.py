"""Stage: write the stored pages into the new address space, then set final protections."""

from __future__ import annotations

from core.errors import LazarusError
from core.images import ImageError
from core.kernel import constants as K
from core.kernel.memory import vm_writev
from core.restore.addrspace import needs_fill
from core.restore.context import RestoreContext

VMWRITEV_BATCH = 16 << 20   # bytes gathered before one process_vm_writev


def write_memory_sync(ctx: RestoreContext) -> int:
    assert ctx.reader is not None and ctx.mem is not None and ctx.inj is not None
    reader = ctx.reader.page_reader(ctx.proc)
    total = 0
    pending: list[tuple[int, bytes]] = []
    pending_bytes = 0
    try:
        for vaddr, data in reader.iter_blocks():
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
    filled = needs_fill(ctx.proc)
    for vma in ctx.proc.vmas:
        if vma.start in filled and vma.prot != (vma.prot | K.PROT_READ | K.PROT_WRITE):
            ctx.inj.syscall(K.SYS_MPROTECT, vma.start, vma.end - vma.start, vma.prot)
    return total


async def write_memory(ctx: RestoreContext) -> int:
    return await ctx.tracer.call(write_memory_sync, ctx)
