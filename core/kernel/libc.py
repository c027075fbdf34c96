"""Raw syscalls through ctypes."""

from __future__ import annotations

import ctypes
import os
from ctypes import c_long, c_ulong

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = c_long

# PyDLL keeps the GIL held across the call: needed in a raw clone3 child,
# where no other thread exists to hand the GIL back.
_pylibc = ctypes.PyDLL(None, use_errno=True)
py_syscall = _pylibc.syscall
py_syscall.restype = c_long

MASK64 = (1 << 64) - 1


def _args(args: tuple[int, ...]) -> list[c_ulong]:
    return [c_ulong(a & MASK64) for a in args]


def syscall(nr: int, *args: int) -> int:
    """Call syscall `nr` in this process; raise OSError on failure."""
    ret = _syscall(c_long(nr), *_args(args))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def syscall_args(args: tuple[int, ...]) -> list[c_ulong]:
    """Arguments converted ahead of time, for calls made where allocation is unsafe."""
    return _args(args)


def to_signed(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value
