"""ptrace calls: python-ptrace for the common requests, its generic
`ptrace()` entry for the ones it lacks (SEIZE, INTERRUPT, regsets, sigmask, rseq).

Every call for one tracee must come from the thread that attached it
(see core.kernel.tracer).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from ctypes import addressof, c_uint64, sizeof
from dataclasses import dataclass
from typing import Protocol, cast

from ptrace import PtraceError
from ptrace.binding import func as _pt
from ptrace.binding.linux_struct import user_regs_struct

from core.errors import LazarusError
from core.kernel import constants as K
from core.kernel.structs import IoVec, PeekSiginfoArgs, RseqConfiguration


class Regs(Protocol):
    """The x86-64 user_regs_struct fields lazarus touches (a ctypes struct at run time)."""

    rax: int
    rdi: int
    orig_rax: int
    rip: int
    rsp: int
    rbx: int
    r12: int
    fs_base: int


REGS_SIZE = sizeof(user_regs_struct)
XSTATE_MAX = 16384
SPIN_SECONDS = 0.002


class TraceError(LazarusError):
    """A ptrace-level failure, with a message fit for the user."""


def _req(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    try:
        return int(_pt.ptrace(request, pid, addr, data))
    except PtraceError as exc:
        errno = exc.errno if exc.errno is not None else 0
        raise OSError(errno, f"ptrace request {request:#x} on {pid}: {os.strerror(errno)}") from exc


def seize(pid: int, options: int = 0) -> None:
    _req(K.PTRACE_SEIZE, pid, 0, options)


def interrupt(pid: int) -> None:
    _req(K.PTRACE_INTERRUPT, pid)


def set_options(pid: int, options: int) -> None:
    _req(K.PTRACE_SETOPTIONS, pid, 0, options)


def cont(pid: int, sig: int = 0) -> None:
    _req(K.PTRACE_CONT, pid, 0, sig)


def detach(pid: int, sig: int = 0) -> None:
    _req(K.PTRACE_DETACH, pid, 0, sig)


def get_regs(pid: int) -> Regs:
    return cast(Regs, _pt.ptrace_getregs(pid))


def set_regs(pid: int, regs: Regs) -> None:
    _pt.ptrace_setregs(pid, regs)


def regs_to_bytes(regs: Regs) -> bytes:
    return bytes(cast(user_regs_struct, regs))


def regs_from_bytes(data: bytes) -> Regs:
    if len(data) != REGS_SIZE:
        raise ValueError(f"register record is {len(data)} bytes, expected {REGS_SIZE}")
    return cast(Regs, user_regs_struct.from_buffer_copy(data))


def copy_regs(regs: Regs) -> Regs:
    return cast(Regs, user_regs_struct.from_buffer_copy(regs_to_bytes(regs)))


def get_xstate(pid: int) -> bytes:
    buf = ctypes.create_string_buffer(XSTATE_MAX)
    iov = IoVec(addressof(buf), XSTATE_MAX)
    _req(K.PTRACE_GETREGSET, pid, K.NT_X86_XSTATE, addressof(iov))
    return buf.raw[: iov.len]


def set_xstate(pid: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    iov = IoVec(addressof(buf), len(data))
    _req(K.PTRACE_SETREGSET, pid, K.NT_X86_XSTATE, addressof(iov))


def get_sigmask(pid: int) -> int:
    mask = c_uint64()
    _req(K.PTRACE_GETSIGMASK, pid, 8, addressof(mask))
    return int(mask.value)


def set_sigmask(pid: int, mask: int) -> None:
    value = c_uint64(mask)
    _req(K.PTRACE_SETSIGMASK, pid, 8, addressof(value))


@dataclass(frozen=True)
class RseqConfig:
    ptr: int
    size: int
    signature: int


def get_rseq(pid: int) -> RseqConfig:
    conf = RseqConfiguration()
    _req(K.PTRACE_GET_RSEQ_CONFIGURATION, pid, sizeof(conf), addressof(conf))
    return RseqConfig(int(conf.rseq_abi_pointer), int(conf.rseq_abi_size), int(conf.signature))


SIGINFO_SIZE = 128


def peek_siginfo(pid: int, shared: bool) -> list[bytes]:
    """Queued signals (raw siginfo), of the process (shared) or of the thread."""
    out: list[bytes] = []
    batch = 32
    buf = ctypes.create_string_buffer(SIGINFO_SIZE * batch)
    while True:
        args = PeekSiginfoArgs(len(out), K.PTRACE_PEEKSIGINFO_SHARED if shared else 0, batch)
        got = _req(K.PTRACE_PEEKSIGINFO, pid, addressof(args), addressof(buf))
        out += [buf.raw[i * SIGINFO_SIZE : (i + 1) * SIGINFO_SIZE] for i in range(got)]
        if got < batch:
            return out


def get_event_msg(pid: int) -> int:
    value = c_uint64()
    _req(K.PTRACE_GETEVENTMSG, pid, 0, addressof(value))
    return int(value.value)


@dataclass(frozen=True)
class WaitResult:
    status: int

    @property
    def stopped(self) -> bool:
        return os.WIFSTOPPED(self.status)

    @property
    def stop_signal(self) -> int:
        return os.WSTOPSIG(self.status)

    @property
    def event(self) -> int:
        return (self.status >> 16) & 0xFF

    def describe(self) -> str:
        if os.WIFEXITED(self.status):
            return f"exited with status {os.WEXITSTATUS(self.status)}"
        if os.WIFSIGNALED(self.status):
            return f"killed by {signal.Signals(os.WTERMSIG(self.status)).name}"
        if os.WIFSTOPPED(self.status):
            return f"stopped by signal {self.stop_signal} (event {self.event})"
        return f"wait status {self.status:#x}"


def wait(pid: int, timeout: float | None = None) -> WaitResult:
    """waitpid(pid, __WALL), bounded by `timeout` seconds when given."""
    if timeout is None:
        _, status = os.waitpid(pid, K.WALL)
        return WaitResult(status)
    deadline = time.monotonic() + timeout
    spin_until = time.perf_counter() + SPIN_SECONDS
    delay = 0.0001
    while True:
        got, status = os.waitpid(pid, K.WALL | os.WNOHANG)
        if got == pid:
            return WaitResult(status)
        # Injected syscalls finish in tens of microseconds: spin briefly before sleeping.
        if time.perf_counter() < spin_until:
            continue
        if time.monotonic() >= deadline:
            raise TraceError(f"process {pid} did not stop within {timeout:.1f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
