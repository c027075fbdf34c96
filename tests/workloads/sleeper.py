"""Sleep once for a long time, then go on: for dumping mid-sleep.

Writes "start T0" (CLOCK_MONOTONIC seconds), sleeps SECONDS in one
time.sleep() call, writes "end T1", then five "tick N" lines 50 ms apart and
"done". CLOCK_MONOTONIC keeps counting while the process is dumped, so
T1 - T0 is the sleep's real duration whatever happened in between.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    out, seconds = sys.argv[1], float(sys.argv[2])
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    os.write(fd, f"start {time.monotonic():.6f}\n".encode())
    time.sleep(seconds)
    os.write(fd, f"end {time.monotonic():.6f}\n".encode())
    for i in range(5):
        time.sleep(0.05)
        os.write(fd, f"tick {i}\n".encode())
    os.write(fd, b"done\n")


if __name__ == "__main__":
    main()
