"""Run syscalls inside a stopped tracee: `syscall; int3` at a chosen address,
registers set for the call, PTRACE_CONT, wait for the trap, read rax."""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence

from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.libc import MASK64, to_signed
from core.kernel.memory import ProcMem
from core.kernel.structs import CloneArgs

SYSCALL_INT3 = b"\x0f\x05\xcc"
# A batch of syscalls in one stop (only where the code area is ours): rbx
# points at a table of BATCH_ENTRY (nr, six arguments, result), r12 holds the
# count. Assembled from:
#   1: mov rax,[rbx]; mov rdi,[rbx+8]; mov rsi,[rbx+16]; mov rdx,[rbx+24]
#      mov r10,[rbx+32]; mov r8,[rbx+40]; mov r9,[rbx+48]; syscall
#      mov [rbx+56],rax; cmp rax,-4095; jae 2f      # an error ends the batch
#      add rbx,64; dec r12; jnz 1b
#   2: int3
BATCH_CODE = bytes.fromhex(
    "488b03" "488b7b08" "488b7310" "488b5318" "4c8b5320" "4c8b4328" "4c8b4b30" "0f05"
    "48894338" "483d01f0ffff" "7309" "4883c340" "49ffcc" "75ce" "cc")
BATCH_OFFSET = 64                 # where BATCH_CODE sits, after SYSCALL_INT3
BATCH_ENTRY = struct.Struct("<7qq")
ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
INJECT_TIMEOUT = 10.0
NOTIFY_RETRIES = 4

_NAMES = {v: k[4:].lower() for k, v in vars(K).items() if k.startswith("SYS_")}


class InjectedSyscallError(OSError):
    index = 0                       # in a batch: which call failed
    partial: list[int] = []         # in a batch: the results of the calls before it


class Injector:
    """Syscall injector for one stopped tracee.

    `code_addr` must lie in an executable mapping; the bytes there are saved
    and put back by `restore_code` (unless `owns_code` says the area is ours).
    """

    def __init__(self, pid: int, mem: ProcMem, base_regs: pt.Regs, code_addr: int,
                 owns_code: bool = False, batches: bool = False) -> None:
        self.pid = pid
        self.mem = mem
        self.base_regs = pt.copy_regs(base_regs)
        self.code_addr = code_addr
        self._saved = None if owns_code else mem.read(code_addr, len(SYSCALL_INT3))
        mem.write(code_addr, SYSCALL_INT3)
        # Batches need room for their loop after the `syscall; int3`: only in
        # a code area of ours (the restore's trampoline), never in the
        # process's own code, which the loop would overwrite for good.
        if batches and not owns_code:
            raise ValueError("syscall batches need a code area of our own")
        self.batches = batches
        if batches:
            mem.write(code_addr + BATCH_OFFSET, BATCH_CODE)
        self.count = 0

    def _prepare(self, nr: int, args: tuple[int, ...]) -> pt.Regs:
        if len(args) > len(ARG_REGS):
            raise ValueError("at most 6 syscall arguments")
        regs = pt.copy_regs(self.base_regs)
        regs.rax = nr
        # orig_rax = -1: the kernel must not treat the stop as a restartable syscall.
        regs.orig_rax = MASK64
        regs.rip = self.code_addr
        for name, value in zip(ARG_REGS, args, strict=False):
            setattr(regs, name, value & MASK64)
        return regs

    def _run(self, nr: int, args: tuple[int, ...]) -> pt.WaitResult:
        """Set up the call, let the task go, and return its next stop."""
        return self._run_regs(self._prepare(nr, args))

    def _run_regs(self, regs: pt.Regs) -> pt.WaitResult:
        for _ in range(NOTIFY_RETRIES):
            pt.set_regs(self.pid, regs)
            pt.cont(self.pid)
            res = pt.wait(self.pid, INJECT_TIMEOUT)
            # A job-control notification (a SIGCONT we sent) traps before our
            # code runs: the same call again.
            if not (res.stopped and res.event == K.PTRACE_EVENT_STOP):
                break
        self.count += 1
        return res

    def _unexpected(self, nr: int, res: pt.WaitResult) -> pt.TraceError:
        return pt.TraceError(f"injected {_NAMES.get(nr, nr)} in process {self.pid}: "
                             f"{res.describe()}")

    def _result(self, nr: int, check: bool = True) -> int:
        """rax at our int3: the call's result, an error raised as such."""
        ret = to_signed(pt.get_regs(self.pid).rax)
        if check and -4096 < ret < 0:
            raise InjectedSyscallError(
                -ret, f"{_NAMES.get(nr, nr)} in process {self.pid}: {os.strerror(-ret)}")
        return ret

    @staticmethod
    def _at_int3(res: pt.WaitResult) -> bool:
        return res.stopped and res.stop_signal == K.SIGTRAP and res.event == 0

    def syscall(self, nr: int, *args: int, check: bool = True) -> int:
        res = self._run(nr, args)
        if not self._at_int3(res):
            raise self._unexpected(nr, res)
        return self._result(nr, check)

    def syscall_batch(self, calls: Sequence[tuple[int, Sequence[int]]], table: int,
                      table_size: int) -> list[int]:
        """Run ``calls`` (nr, args) in order, as few stops as the table area at
        ``table`` (``table_size`` bytes, in the tracee) allows: a ptrace round
        trip costs ~60 us, a syscall far less. The first failing call ends the
        batch: InjectedSyscallError with its ``index``; the calls before it
        took effect."""
        if not self.batches:
            raise ValueError("syscall batches need a code area of our own")
        per_stop = table_size // BATCH_ENTRY.size
        if per_stop < 1:
            raise ValueError("no room for a syscall table")
        results: list[int] = []
        for first in range(0, len(calls), per_stop):
            chunk = calls[first:first + per_stop]
            entries = []
            for nr, args in chunk:
                if len(args) > len(ARG_REGS):
                    raise ValueError("at most 6 syscall arguments")
                padded = [to_signed(a & MASK64) for a in args] + [0] * (6 - len(args))
                entries.append(BATCH_ENTRY.pack(nr, *padded, 0))
            self.mem.write(table, b"".join(entries))
            regs = self._prepare(0, ())
            regs.rip = self.code_addr + BATCH_OFFSET
            regs.rbx, regs.r12 = table, len(chunk)
            res = self._run_regs(regs)
            if not self._at_int3(res):
                raise self._unexpected(chunk[0][0], res)
            raw = self.mem.read(table, len(chunk) * BATCH_ENTRY.size)
            for i, (nr, _) in enumerate(chunk):
                ret = BATCH_ENTRY.unpack_from(raw, i * BATCH_ENTRY.size)[7]
                if -4096 < ret < 0:
                    err = InjectedSyscallError(
                        -ret, f"{_NAMES.get(nr, nr)} in process {self.pid}: {os.strerror(-ret)}")
                    err.index, err.partial = first + i, list(results)
                    raise err
                results.append(ret)
        return results

    def syscall_traced_clone(self, nr: int, *args: int) -> int:
        """clone/clone3 with PTRACE_O_TRACECLONE/TRACEFORK set: first the clone
        or fork event stop, then the trap after the syscall. Returns the new tid."""
        res = self._run(nr, args)
        if self._at_int3(res):
            self._result(nr)             # straight to our int3: it failed, made nothing
            raise self._unexpected(nr, res)
        if not (res.stopped and res.event in (K.PTRACE_EVENT_CLONE, K.PTRACE_EVENT_FORK)):
            raise self._unexpected(nr, res)
        tid = pt.get_event_msg(self.pid)
        pt.cont(self.pid)
        res = pt.wait(self.pid, INJECT_TIMEOUT)
        if not self._at_int3(res):
            raise self._unexpected(nr, res)
        self._result(nr)
        return tid

    def clone3(self, scratch: int, args: CloneArgs, tid: int) -> int:
        """clone3 with set_tid = [tid] (its id in the task's PID namespace);
        args and the tid array are written at `scratch`. Returns the new tid."""
        tid_addr = scratch + ctypes.sizeof(CloneArgs)
        args.set_tid, args.set_tid_size = tid_addr, 1
        self.mem.write(tid_addr, struct.pack("<i", tid))
        self.mem.write(scratch, bytes(args))
        return self.syscall_traced_clone(K.SYS_CLONE3, scratch, ctypes.sizeof(CloneArgs))

    def syscall_unmapping_self(self, nr: int, *args: int) -> None:
        """A syscall that unmaps the injected code: its return faults with SIGSEGV,
        which is expected and swallowed (the task stays stopped for us)."""
        res = self._run(nr, args)
        if not (res.stopped and res.stop_signal == K.SIGSEGV):
            raise self._unexpected(nr, res)

    @property
    def saved(self) -> bytes | None:
        """The code bytes our `syscall; int3` replaced (None if the area is ours)."""
        return self._saved

    def restore_code(self) -> None:
        if self._saved is not None:
            self.mem.write(self.code_addr, self._saved)
            self._saved = None
