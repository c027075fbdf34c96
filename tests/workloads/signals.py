"""Signal state that only the kernel holds: a pending blocked signal, an interval timer.

``python signals.py OUT pending``: blocks SIGUSR1, writes "ready", waits until
OUT.go exists, then unblocks it; the handler writes "usr1" when the signal,
sent by the test while blocked, is delivered. Then writes "unblocked".

``python signals.py OUT itimer SECONDS``: arms ITIMER_REAL for SECONDS, writes
"ready"; the SIGALRM handler writes "alarm".

Both then idle, writing nothing more.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType


def main() -> None:
    out, mode = sys.argv[1], sys.argv[2]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    def note(signum: int, frame: FrameType | None) -> None:
        os.write(fd, b"usr1\n" if signum == signal.SIGUSR1 else b"alarm\n")

    signal.signal(signal.SIGUSR1, note)
    signal.signal(signal.SIGALRM, note)
    if mode == "pending":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        os.write(fd, b"ready\n")
        while not os.path.exists(out + ".go"):
            time.sleep(0.02)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        os.write(fd, b"unblocked\n")
    else:
        signal.setitimer(signal.ITIMER_REAL, float(sys.argv[3]))
        os.write(fd, b"ready\n")
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
