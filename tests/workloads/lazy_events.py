"""Change the memory layout right after a lazy restore, then check the data.

``python lazy_events.py DIR [--stream]``: maps four 16 MiB anonymous regions
filled with known bytes, writes DIR/ready, then waits for SIGUSR1. On it:
MADV_DONTNEED the second half of region 1 (must read zeros, the first half
intact), mremap region 2 to a new, larger place (data follows, grown part
zero), munmap most of region 3 (the kept MiB intact), and read region 4 whole.
Writes "ok" or "bad <what>" to DIR/result.

With --stream, each change comes right after reading the 128 pages before the
part it changes one at a time, in order (none of them touched before): a
lazy daemon's read-ahead, started by the second fault of that run, then has
a request in flight for the very pages the change removes, unmaps or moves.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import sys
import time
from types import FrameType

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

MB = 1 << 20
SIZE = 16 * MB
PROT_RW, MAP_PRIVATE_ANON, MADV_NORMAL, MADV_DONTNEED, MREMAP_MAYMOVE = 3, 0x22, 0, 4, 1
MAP_FAILED = ctypes.c_void_p(-1).value

go = False


def on_usr1(signum: int, frame: FrameType | None) -> None:
    global go
    go = True


def region(seed: int) -> tuple[int, bytes]:
    addr = libc.mmap(None, SIZE, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    assert addr not in (None, MAP_FAILED)
    data = hashlib.shake_256(bytes([seed])).digest(SIZE // 16) * 16
    ctypes.memmove(addr, data, SIZE)
    return addr, data


STREAM = 128 * 4096


def stream_up_to(addr: int) -> None:
    """Read one byte per page of the STREAM bytes below addr, in order."""
    for off in range(addr - STREAM, addr, 4096):
        ctypes.string_at(off, 1)


def main() -> None:
    out = sys.argv[1]
    streaming = "--stream" in sys.argv[2:]
    signal.signal(signal.SIGUSR1, on_usr1)
    (a1, d1), (a2, d2), (a3, d3), (a4, d4) = (region(i) for i in (1, 2, 3, 4))
    with open(os.path.join(out, "ready"), "w") as f:
        f.write("ready\n")
    while not go:
        time.sleep(0.01)
    bad = []
    half = SIZE // 2
    if streaming:
        # A dry run on region 4 (read whole below anyway): what the steps
        # use (code, objects) faults in now, so that between a stream and
        # its change only the stream's own faults come.
        stream_up_to(a4 + MB)
        libc.madvise(a4, MB, MADV_NORMAL)
        stream_up_to(a1 + half)
    libc.madvise(a1 + half, half, MADV_DONTNEED)
    if ctypes.string_at(a1, half) != d1[:half]:
        bad.append("region1-kept-half")
    if ctypes.string_at(a1 + half, half) != bytes(half):
        bad.append("region1-dontneed-half-not-zero")
    if streaming:
        stream_up_to(a2 + MB)
    b2 = libc.mremap(a2, SIZE, 2 * SIZE, MREMAP_MAYMOVE)
    if b2 in (None, MAP_FAILED):
        bad.append("mremap-failed")
    else:
        if ctypes.string_at(b2, SIZE) != d2:
            bad.append("region2-moved-data")
        if ctypes.string_at(b2 + SIZE, SIZE) != bytes(SIZE):
            bad.append("region2-grown-part-not-zero")
    if streaming:
        stream_up_to(a3 + MB)
    libc.munmap(a3 + MB, SIZE - MB)
    if ctypes.string_at(a3, MB) != d3[:MB]:
        bad.append("region3-kept-mib")
    if ctypes.string_at(a4, SIZE) != d4:
        bad.append("region4")
    tmp = os.path.join(out, "result.tmp")
    with open(tmp, "w") as f:
        f.write("ok\n" if not bad else "bad " + " ".join(bad) + "\n")
    os.rename(tmp, os.path.join(out, "result"))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
