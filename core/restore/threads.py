"""Stage: per-thread state of the leader, and every other thread recreated
with its TID by an injected clone3(CLONE_THREAD)."""

from __future__ import annotations

import struct

from core.errors import LazarusError
from core.images import pb
from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.inject import Injector
from core.kernel.structs import CloneArgs
from core.restore.addrspace import put_string
from core.restore.context import SCRATCH_SIZE, ProcRestore, RestoreContext
from core.restore.state import restore_creds, restore_itimers, restore_pending_signals

THREAD_FLAGS = (K.CLONE_VM | K.CLONE_FS | K.CLONE_FILES | K.CLONE_SIGHAND | K.CLONE_THREAD
                | K.CLONE_SYSVSEM | K.CLONE_CHILD_CLEARTID)
# Scratch layout for clone3: its args, the set_tid array, and a small stack
# the new thread never really uses (its registers are replaced before it runs).
ARGS_OFFSET, STACK_OFFSET = 1024, 2048
STACK_SIZE = SCRATCH_SIZE - STACK_OFFSET
THREAD_START_TIMEOUT = 5.0


def restore_thread_state(ctx: ProcRestore, inj: Injector, state: pb.ThreadState,
                         leader: bool) -> None:
    """What each thread registers for itself: rseq, robust futexes, its
    alternate signal stack, its name, and (the leader) its clear-tid address."""
    assert ctx.mem is not None
    if state.rseq.ptr:
        inj.syscall(K.SYS_RSEQ, state.rseq.ptr, state.rseq.size, 0, state.rseq.signature)
    if state.robust_list:
        inj.syscall(K.SYS_SET_ROBUST_LIST, state.robust_list, state.robust_list_len)
    if state.altstack_size and not state.altstack_flags & K.SS_DISABLE:
        ctx.mem.write(ctx.scratch, struct.pack("<Qi4xQ", state.altstack_sp, 0,
                                               state.altstack_size))
        inj.syscall(K.SYS_SIGALTSTACK, ctx.scratch, 0)
    if leader:
        inj.syscall(K.SYS_SET_TID_ADDRESS, state.clear_tid_address)
    elif state.comm:
        inj.syscall(K.SYS_PRCTL, K.PR_SET_NAME, put_string(ctx, state.comm[:15]))


def create_thread(ctx: ProcRestore, state: pb.ThreadState) -> int:
    assert ctx.inj is not None and ctx.mem is not None
    args = CloneArgs(flags=THREAD_FLAGS, child_tid=state.clear_tid_address, exit_signal=0,
                     stack=ctx.scratch + STACK_OFFSET, stack_size=STACK_SIZE)
    try:
        tid = ctx.inj.clone3(ctx.scratch + ARGS_OFFSET, args, state.tid)
    except OSError as exc:
        raise LazarusError(f"cannot recreate thread {state.tid}: {exc.strerror}") from None
    ctx.thread_tids.append(tid)
    res = pt.wait(tid, THREAD_START_TIMEOUT)
    if not res.stopped:
        raise LazarusError(f"recreated thread {state.tid} {res.describe()}")
    return tid


def restore_threads_sync(ctx: ProcRestore) -> None:
    assert ctx.inj is not None and ctx.mem is not None
    threads = list(ctx.proc.threads)
    restore_thread_state(ctx, ctx.inj, threads[0], leader=True)
    injectors = [ctx.inj]
    for state in threads[1:]:
        tid = create_thread(ctx, state)
        inj = Injector(tid, ctx.mem, pt.get_regs(tid), ctx.trampoline, owns_code=True)
        restore_thread_state(ctx, inj, state, leader=False)
        injectors.append(inj)
    for inj in injectors:
        restore_creds(ctx, inj)
    restore_pending_signals(ctx)
    restore_itimers(ctx)


async def restore_threads(ctx: RestoreContext) -> None:
    for p in ctx.live:
        await ctx.tracer.call(restore_threads_sync, p)
    return None
