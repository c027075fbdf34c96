"""Syscalls run inside a frozen process during a dump (or a fork): from a
spot of its own executable code, every signal of every thread blocked
meanwhile (none may be delivered into our code), then its registers, masks
and code bytes put back."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from core import procfs
from core.dump.context import ProcDump
from core.errors import LazarusError
from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.inject import Injector
from core.kernel.libc import MASK64
from core.kernel.memory import ProcMem

T = TypeVar("T")


def code_address(pid: int, maps: list[procfs.MapEntry] | None = None) -> int:
    """Where in the process the injector may put its `syscall; int3`."""
    entries = maps if maps is not None else procfs.read_maps(pid)
    code = next((m for m in entries if m.prot & K.PROT_EXEC and m.is_file), None)
    if code is None:
        raise LazarusError(f"PID {pid} has no executable file mapping to run syscalls from")
    return code.start


def run_injected(p: ProcDump, fn: Callable[[Injector], T],
                 maps: list[procfs.MapEntry] | None = None) -> T:
    """Run ``fn`` with an injector on the frozen leader of ``p``."""
    code = code_address(p.pid, maps)
    leader = p.leader
    assert leader.regs is not None
    for t in p.threads.values():
        pt.set_sigmask(t.tid, MASK64)
    try:
        with ProcMem(p.pid, writable=True) as mem:
            inj = Injector(p.pid, mem, leader.regs, code)
            try:
                return fn(inj)
            finally:
                inj.restore_code()
    finally:
        for t in p.threads.values():
            if t.regs is not None:
                pt.set_regs(t.tid, t.regs)
            pt.set_sigmask(t.tid, t.sigmask)
