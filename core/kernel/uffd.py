"""userfaultfd: ioctls, structs and messages (x86-64 layouts)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from ctypes import c_int64, c_uint64
from dataclasses import dataclass

UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_UNREGISTER = 0x8010AA01
UFFDIO_WAKE = 0x8010AA02
UFFDIO_COPY = 0xC028AA03
UFFDIO_ZEROPAGE = 0xC020AA04

UFFDIO_REGISTER_MODE_MISSING = 1

UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_EVENT_UNMAP = 1 << 6

UFFD_EVENT_PAGEFAULT = 0x12
UFFD_EVENT_FORK = 0x13
UFFD_EVENT_REMAP = 0x14
UFFD_EVENT_REMOVE = 0x15
UFFD_EVENT_UNMAP = 0x16

MSG_SIZE = 32
_MSG = struct.Struct("<B7xQQQ")


class UffdioApi(ctypes.Structure):
    _fields_ = [("api", c_uint64), ("features", c_uint64), ("ioctls", c_uint64)]


class UffdioRange(ctypes.Structure):
    _fields_ = [("start", c_uint64), ("len", c_uint64)]


class UffdioRegister(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", c_uint64), ("ioctls", c_uint64)]


class UffdioCopy(ctypes.Structure):
    _fields_ = [("dst", c_uint64), ("src", c_uint64), ("len", c_uint64), ("mode", c_uint64),
                ("copy", c_int64)]


class UffdioZeropage(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", c_uint64), ("zeropage", c_int64)]


assert ctypes.sizeof(UffdioCopy) == 40 and ctypes.sizeof(UffdioZeropage) == 32


def api(fd: int, features: int) -> int:
    """UFFDIO_API handshake; returns the features the kernel granted."""
    arg = UffdioApi(UFFD_API, features, 0)
    fcntl.ioctl(fd, UFFDIO_API, arg)
    return int(arg.features)


def register_missing(fd: int, start: int, length: int) -> None:
    arg = UffdioRegister(UffdioRange(start, length), UFFDIO_REGISTER_MODE_MISSING, 0)
    fcntl.ioctl(fd, UFFDIO_REGISTER, arg)


def wake(fd: int, start: int, length: int) -> None:
    fcntl.ioctl(fd, UFFDIO_WAKE, UffdioRange(start, length))


def _retrying(fd: int, request: int, arg: ctypes.Structure, field: str) -> int:
    """Run a fill ioctl; return bytes done (>= 0) or -errno as the kernel reports it."""
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        done = int(getattr(arg, field))
        if done > 0:
            return done
        return -(exc.errno or errno.EIO)
    return int(getattr(arg, field))


def copy(fd: int, dst: int, src: int, length: int) -> int:
    """UFFDIO_COPY: bytes copied, or -errno (-EEXIST: a page there already, -EAGAIN:
    the layout changed under us, -ESRCH: the process is gone)."""
    return _retrying(fd, UFFDIO_COPY, UffdioCopy(dst, src, length, 0, 0), "copy")


def zeropage(fd: int, start: int, length: int) -> int:
    return _retrying(fd, UFFDIO_ZEROPAGE, UffdioZeropage(UffdioRange(start, length), 0, 0),
                     "zeropage")


@dataclass(frozen=True)
class Message:
    event: int
    a: int      # pagefault: flags; remap: from; remove/unmap: start; fork: new uffd
    b: int      # pagefault: address; remap: to; remove/unmap: end
    c: int      # remap: len


def read_messages(fd: int, max_messages: int = 64) -> list[Message]:
    """All messages ready now (the fd is non-blocking)."""
    try:
        data = os.read(fd, MSG_SIZE * max_messages)
    except BlockingIOError:
        return []
    return [Message(*_MSG.unpack_from(data, off)) for off in range(0, len(data), MSG_SIZE)]
