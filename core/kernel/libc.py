"""Raw syscalls through ctypes."""

from __future__ import annotations

import ctypes
import os
from ctypes import c_long, c_ulong

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = c_long

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


def to_signed(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value
