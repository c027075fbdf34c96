"""Private anonymous memory emptied with MADV_DONTNEED between two dumps.

    dontneed.py OUT

Maps 256 pages, fills them with 0xAB and writes "ready" to OUT. SIGUSR1:
MADV_DONTNEED on the first half, then reads every page of it (they map the
zero page now), writes "zapped". SIGUSR2: checks the first half reads zeros
and the second 0xAB, writes "ok" or "bad ...".
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
import time

PAGES = 256
HALF = PAGES // 2 * mmap.PAGESIZE
events: list[int] = []


def main() -> None:
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    m = mmap.mmap(-1, PAGES * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m[:] = b"\xab" * len(m)
    signal.signal(signal.SIGUSR1, lambda s, f: events.append(s))
    signal.signal(signal.SIGUSR2, lambda s, f: events.append(s))
    os.write(out, b"ready\n")
    while True:
        while events:
            sig = events.pop(0)
            if sig == signal.SIGUSR1:
                m.madvise(mmap.MADV_DONTNEED, 0, HALF)
                total = sum(m[off] for off in range(0, HALF, mmap.PAGESIZE))
                os.write(out, f"zapped {total}\n".encode())
            else:
                good = m[:HALF] == bytes(HALF) and m[HALF:] == b"\xab" * HALF
                os.write(out, b"ok\n" if good else b"bad memory\n")
        time.sleep(0.01)


if __name__ == "__main__":
    main()
