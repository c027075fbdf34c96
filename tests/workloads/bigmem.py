"""Hold a lot of memory and check it on demand.

``python bigmem.py DIR [HEAP_MIB]``: fills a 256 MiB (or HEAP_MIB) bytearray
with random bytes and a 32 MiB shared anonymous mmap (mmap.mmap(-1, ...)) with
a mix of random, compressible and all-zero pages, writes the SHA-256 of both
to DIR/before.sha, then idles. On SIGUSR1 it hashes the same memory again and
writes DIR/after.sha (atomically, via rename).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import signal
import sys
import time
from types import FrameType

HEAP_SIZE = 256 << 20
MMAP_SIZE = 32 << 20
PAGE = mmap.PAGESIZE
CHUNK = 1 << 20

requested = False


def on_usr1(signum: int, frame: FrameType | None) -> None:
    global requested
    requested = True


def fill_heap(size: int) -> bytearray:
    heap = bytearray(size)
    for off in range(0, size, CHUNK):
        heap[off : off + CHUNK] = os.urandom(CHUNK)
    return heap


def fill_mmap() -> mmap.mmap:
    region = mmap.mmap(-1, MMAP_SIZE)
    for i in range(MMAP_SIZE // PAGE):
        if i % 8 == 7:
            continue  # left all zero: a hole in the image
        if i % 3 == 0:
            page = os.urandom(PAGE)  # incompressible: stored raw
        else:
            page = (f"page {i} ".encode() * PAGE)[:PAGE]  # compressible: lz4
        region[i * PAGE : (i + 1) * PAGE] = page
    return region


def digest(heap: bytearray, region: mmap.mmap) -> str:
    h = hashlib.sha256()
    h.update(heap)
    h.update(region)
    return h.hexdigest()


def publish(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.rename(tmp, path)


def main() -> None:
    global requested
    out = sys.argv[1]
    signal.signal(signal.SIGUSR1, on_usr1)
    heap = fill_heap(int(sys.argv[2]) << 20 if len(sys.argv) > 2 else HEAP_SIZE)
    region = fill_mmap()
    publish(os.path.join(out, "before.sha"), digest(heap, region))
    while True:
        time.sleep(0.02)
        if requested:
            requested = False
            publish(os.path.join(out, "after.sha"), digest(heap, region))


if __name__ == "__main__":
    main()
