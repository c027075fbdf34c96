"""Moving memory between lazarus and a tracee: /proc/PID/mem and process_vm_*."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

from core.kernel import constants as K
from core.kernel.libc import syscall
from core.kernel.structs import IoVec

IOV_MAX = 1024


class ProcMem:
    """/proc/PID/mem: works on any mapping, read-only and PROT_NONE included (FOLL_FORCE)."""

    def __init__(self, pid: int, writable: bool = False) -> None:
        self.pid = pid
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR if writable else os.O_RDONLY)

    def read(self, addr: int, size: int) -> bytes:
        data = os.pread(self.fd, size, addr)
        if len(data) != size:
            raise OSError(f"short read of {size} bytes at {addr:#x} in {self.pid}")
        return data

    def read_into(self, addr: int, buf: bytearray | memoryview) -> None:
        got = os.preadv(self.fd, [buf], addr)
        if got != len(buf):
            raise OSError(f"short read of {len(buf)} bytes at {addr:#x} in {self.pid}")

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, addr)
            if done <= 0:
                raise OSError(f"short write at {addr:#x} in {self.pid}")
            view = view[done:]
            addr += done

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> ProcMem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _iovecs(chunks: Sequence[tuple[int, int]]) -> ctypes.Array[IoVec]:
    arr = (IoVec * len(chunks))()
    for i, (addr, size) in enumerate(chunks):
        arr[i].base = addr
        arr[i].len = size
    return arr


def _address_of(data: bytes | bytearray) -> tuple[int, object]:
    """Address of a Python buffer without copying it, plus the object keeping it alive."""
    if isinstance(data, bytes):
        ptr = ctypes.c_char_p(data)
        return ctypes.cast(ptr, ctypes.c_void_p).value or 0, ptr
    arr = (ctypes.c_char * len(data)).from_buffer(data)
    return ctypes.addressof(arr), arr


def vm_writev(pid: int, chunks: Sequence[tuple[int, bytes | bytearray]]) -> int:
    """process_vm_writev of (remote address, data) pairs; needs writable target pages."""
    total = 0
    for start in range(0, len(chunks), IOV_MAX):
        part = chunks[start : start + IOV_MAX]
        held = [_address_of(d) for _, d in part]
        local = _iovecs([(addr, len(d)) for (addr, _), (_, d) in zip(held, part, strict=True)])
        remote = _iovecs([(addr, len(d)) for addr, d in part])
        want = sum(len(d) for _, d in part)
        done = syscall(
            K.SYS_PROCESS_VM_WRITEV, pid, ctypes.addressof(local), len(part),
            ctypes.addressof(remote), len(part), 0,
        )
        del held
        if done != want:
            raise OSError(f"process_vm_writev wrote {done} of {want} bytes in {pid}")
        total += done
    return total


def vm_readv_into(pid: int, addr: int, buf: bytearray) -> None:
    """process_vm_readv of one range into `buf`; needs readable target pages."""
    local_buf = (ctypes.c_char * len(buf)).from_buffer(buf)
    local = _iovecs([(ctypes.addressof(local_buf), len(buf))])
    remote = _iovecs([(addr, len(buf))])
    done = syscall(K.SYS_PROCESS_VM_READV, pid, ctypes.addressof(local), 1,
                   ctypes.addressof(remote), 1, 0)
    del local_buf
    if done != len(buf):
        raise OSError(f"process_vm_readv read {done} of {len(buf)} bytes in {pid}")
