"""Create restore helpers the way lazarus does, while another thread wants the GIL.

``python clone_race.py ATTEMPTS [MARK]``: like `lazarus restore`, a single worker
thread (the tracer) calls core.kernel.process.clone_traced_helper() and waits,
bounded, for the helper's exec stop; meanwhile the main thread keeps running
Python code, as lazarus's event-loop thread may. The switch interval is made
tiny so that GIL hand-off requests come at once, and 256 MiB of touched
memory makes each clone3 slower: that only widens a window that exists at
the default interval too (seen under load as restores failing
with "process N did not stop within 5.0 s").

MARK is ignored: it names the test's directory in the command line (which
the helpers inherit) so that test teardown can find strays.

Prints "ok N" and exits 0 if every helper stopped; on the first helper that
did not stop, prints "stuck PID wchan=..." and exits 1. Every helper is
killed and reaped before exit.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.kernel import constants as K
from core.kernel import ptrace as pt
from core.kernel.process import clone_traced_helper

STOP_TIMEOUT = 1.0   # /bin/true stops after exec within milliseconds
BALLAST = 256 << 20


def free_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 2000, 300, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise SystemExit("no free PID")


def attempt() -> str | None:
    """On the tracer thread: make one helper; None if it stopped, else a description."""
    pid = clone_traced_helper(free_pid())
    try:
        pt.wait(pid, STOP_TIMEOUT)
        return None
    except pt.TraceError:
        return f"stuck {pid} wchan={Path(f'/proc/{pid}/wchan').read_text()}"
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, K.WALL)


def main() -> int:
    attempts = int(sys.argv[1])
    # Touched memory makes each clone3 copy more page tables: a longer window.
    ballast = bytearray(BALLAST)
    for off in range(0, BALLAST, 4096):
        ballast[off] = 1
    sys.setswitchinterval(1e-6)
    done = threading.Event()
    tracer = ThreadPoolExecutor(max_workers=1)

    def run() -> str | None:
        try:
            for _ in range(attempts):
                problem = attempt()
                if problem:
                    return problem
            return None
        finally:
            done.set()

    future = tracer.submit(run)
    spins = 0
    while not done.is_set():
        spins += 1   # Python code on the main thread: it wants the GIL back
    problem = future.result()
    tracer.shutdown()
    print(problem or f"ok {attempts}")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
