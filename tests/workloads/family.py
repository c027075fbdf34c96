"""A parent and three children sharing a MAP_SHARED anonymous page and a pipe,
plus a zombie child (exit 7) and a child stopped by SIGTSTP in its own group.

``python family.py DIR``: writes DIR/ready with the children's PIDs (three
readers, the zombie, the stopped one). On SIGUSR1 the parent writes "vN" into
the shared page and three bytes into the pipe; each reader that gets a byte
appends "<byte> <what the shared page says>" to DIR/childN.txt.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
import time
from types import FrameType

READERS = 3


def reader(directory: str, n: int, shm: mmap.mmap, r: int) -> None:
    while True:
        b = os.read(r, 1)
        with open(f"{directory}/child{n}.txt", "a") as f:
            f.write(f"{b.decode()} {shm[:8].rstrip(bytes(1)).decode()}\n")


def main() -> None:
    directory = sys.argv[1]
    shm = mmap.mmap(-1, mmap.PAGESIZE)           # MAP_SHARED | MAP_ANONYMOUS
    r, w = os.pipe()
    kids = []
    for n in range(READERS):
        pid = os.fork()
        if pid == 0:
            os.close(w)
            reader(directory, n, shm, r)
        kids.append(pid)
    zombie = os.fork()
    if zombie == 0:
        os._exit(7)
    stopped = os.fork()
    if stopped == 0:
        # Its own group in our session, as a shell job: not orphaned, so
        # SIGTSTP does stop it.
        os.setpgid(0, 0)
        os.kill(os.getpid(), signal.SIGTSTP)
        while True:
            time.sleep(1)
    kids += [zombie, stopped]
    tmp = f"{directory}/ready.tmp"
    with open(tmp, "w") as f:
        f.write(" ".join(map(str, kids)))
    os.rename(tmp, f"{directory}/ready")

    def poke(signum: int, frame: FrameType | None) -> None:
        poke.count += 1                           # type: ignore[attr-defined]
        shm[:8] = f"v{poke.count}".encode().ljust(8, b"\0")   # type: ignore[attr-defined]
        os.write(w, b"abc")

    poke.count = 0                                # type: ignore[attr-defined]
    signal.signal(signal.SIGUSR1, poke)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
