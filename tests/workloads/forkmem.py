"""Memory that changes every tick in a way a test can replay: for remote fork.

``python forkmem.py DIR [HEAP_MIB [dontfork|wipeonfork]]`` (DIR only marks
the process as the test's): a heap of HEAP_MIB (default 64) MiB and a 4 MiB
shared anonymous mapping, both filled from a fixed seed. With dontfork or
wipeonfork the heap is a private anonymous mapping so advised (which a
forked child does not get, or gets empty). Tick i rewrites one page of each
with bytes made from i, then prints ``i`` on stdout. On SIGUSR1 it prints
``sha N DIGEST``: N ticks done, DIGEST of both areas, which
``expected_digest(N)`` recomputes. So a copy of the process, taken at any
moment, must print the next tick after the last one it had done, and its
memory must hash as the replay says. On SIGUSR2 it overwrites its whole heap
once and prints ``scribbled`` (after which its own digest no longer replays:
for a test that checks a copy made before).
"""

from __future__ import annotations

import hashlib
import mmap
import random
import signal
import sys
import time
from types import FrameType

PAGE = mmap.PAGESIZE
SHARED_SIZE = 4 << 20
INTERVAL = 0.02
CHUNK = 64 << 20
ADVICE = {"dontfork": 10, "wipeonfork": 18}   # MADV_*: Python 3.11 lacks WIPEONFORK

requested = False
scribble = False


def on_usr1(signum: int, frame: FrameType | None) -> None:
    global requested
    requested = True


def on_usr2(signum: int, frame: FrameType | None) -> None:
    global scribble
    scribble = True


def initial(heap_mib: int) -> tuple[bytearray, bytearray]:
    rng = random.Random(1234)
    heap = bytearray()
    # In chunks: randbytes of more than 256 MiB overflows (n * 8 bits in a C int).
    for left in range(heap_mib << 20, 0, -CHUNK):
        heap += rng.randbytes(min(left, CHUNK))
    return heap, bytearray(rng.randbytes(SHARED_SIZE))


def tick(i: int, heap: bytearray | mmap.mmap, shared: bytearray | mmap.mmap) -> None:
    page = (str(i).encode() * PAGE)[:PAGE]
    h = (i * 7919) % (len(heap) // PAGE)
    s = (i * 104729) % (len(shared) // PAGE)
    heap[h * PAGE : (h + 1) * PAGE] = page
    shared[s * PAGE : (s + 1) * PAGE] = page[::-1]


def digest(heap: bytearray | mmap.mmap, shared: bytearray | mmap.mmap) -> str:
    return hashlib.sha256(bytes(heap) + bytes(shared)).hexdigest()


def expected_digest(done: int, heap_mib: int = 64) -> str:
    heap, shared = initial(heap_mib)
    for i in range(done):
        tick(i, heap, shared)
    return digest(heap, shared)


def main() -> None:
    global requested, scribble
    heap: bytearray | mmap.mmap
    heap_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, on_usr2)
    heap, first = initial(heap_mib)
    advice = sys.argv[3] if len(sys.argv) > 3 else ""
    if advice:
        private = mmap.mmap(-1, len(heap), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        private[:] = heap
        private.madvise(ADVICE[advice])
        heap = private
    shared = mmap.mmap(-1, SHARED_SIZE)
    shared[:] = first
    del first
    i = 0
    while True:
        if requested:
            requested = False
            print(f"sha {i} {digest(heap, shared)}", flush=True)
        if scribble:
            scribble = False
            heap[:] = b"\xa5" * len(heap)
            print("scribbled", flush=True)
        tick(i, heap, shared)
        print(i, flush=True)
        i += 1
        time.sleep(INTERVAL)


if __name__ == "__main__":
    main()
