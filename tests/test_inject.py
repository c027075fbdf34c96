"""The syscall injector's batches, in a real stopped process: every call runs,
in order, across several stops when the table is small, and the first failing
call ends the batch with its index and the results before it."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import procfs
from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.inject import BATCH_ENTRY, InjectedSyscallError, Injector
from core.kernel.memory import ProcMem
from tests.conftest import Procs, is_alive, lazarus, ok, proc_state, tracer_pid, wait_until

PAGE = 4096


@pytest.fixture
def stopped(procs: Procs) -> Iterator[tuple[int, Injector]]:
    """A seized `sleep` with a page of code of ours mapped in it."""
    w = procs.start(["sleep", "60"])
    pt.seize(w.pid)
    mem = ProcMem(w.pid, writable=True)
    try:
        pt.interrupt(w.pid)
        assert pt.wait(w.pid, 10).stopped
        regs = pt.get_regs(w.pid)
        boot = Injector(w.pid, mem, regs, regs.rip)
        try:
            area = boot.syscall(K.SYS_MMAP, 0, 2 * PAGE,
                                K.PROT_READ | K.PROT_WRITE | K.PROT_EXEC,
                                K.MAP_PRIVATE | K.MAP_ANONYMOUS, -1, 0)
        finally:
            boot.restore_code()
        yield w.pid, Injector(w.pid, mem, regs, area, owns_code=True, batches=True)
        pt.set_regs(w.pid, regs)
        pt.detach(w.pid)
    finally:
        mem.close()


def test_batch_runs_every_call_in_order_across_stops(stopped: tuple[int, Injector]) -> None:
    pid, inj = stopped
    table = inj.code_addr + PAGE
    before = inj.count
    # Room for 3 entries per stop: 10 calls take 4 stops.
    got = inj.syscall_batch([(K.SYS_GETPID, ())] * 9 + [(K.SYS_GETPPID, ())], table,
                            3 * BATCH_ENTRY.size)
    assert got == [pid] * 9 + [os.getpid()]
    assert inj.count - before == 4
    assert inj.syscall_batch([], table, PAGE) == []


def test_batch_stops_at_the_first_failing_call(stopped: tuple[int, Injector]) -> None:
    pid, inj = stopped
    table = inj.code_addr + PAGE
    area = inj.syscall(K.SYS_MMAP, 0, PAGE, K.PROT_READ | K.PROT_WRITE,
                       K.MAP_PRIVATE | K.MAP_ANONYMOUS, -1, 0)
    calls = [(K.SYS_GETPID, ()), (K.SYS_MPROTECT, (area, PAGE, K.PROT_READ)),
             (K.SYS_CLOSE, (12345,)),                        # EBADF: ends the batch
             (K.SYS_MUNMAP, (area, PAGE))]                   # never runs
    with pytest.raises(InjectedSyscallError) as info:
        inj.syscall_batch(calls, table, PAGE)
    assert info.value.errno == errno.EBADF and info.value.index == 2
    assert info.value.partial == [pid, 0]
    maps = open(f"/proc/{pid}/maps").read()
    assert f"{area:x}-{area + PAGE:x} r--p" in maps, "the calls before the failure took effect"
    # The process is fine afterwards.
    assert inj.syscall(K.SYS_GETPID) == pid
    assert is_alive(pid) and proc_state(pid) == "t"


def test_dump_leaves_the_code_it_borrowed_as_it_was(procs: Procs, tmp_path: Path) -> None:
    """The dump runs its syscalls from the process's own code (every thread of
    it): afterwards those bytes must be the original ones again."""
    w = procs.python("counter", str(tmp_path / "count.log"), "--thread")
    wait_until(lambda: len(os.listdir(f"/proc/{w.pid}/task")) == 2, 10, "the second thread")
    code = next(m for m in procfs.read_maps(w.pid) if m.prot & K.PROT_EXEC and m.is_file)

    def text() -> bytes:
        with ProcMem(w.pid) as mem:
            return mem.read(code.start, PAGE)

    before = text()
    ok(lazarus("dump", "-t", str(w.pid), "-D", str(tmp_path / "img"), "--leave-running"))
    assert text() == before
    assert is_alive(w.pid) and tracer_pid(w.pid) == 0
