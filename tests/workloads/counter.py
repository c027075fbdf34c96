"""Append 0, 1, 2, ... one per line to a file, one every INTERVAL seconds.

The counter lives only in memory and the file is opened once, O_APPEND, so a
restored process must carry on with the next value: no gap, no repeat.

Options for the tests of limits and of exit status:
  --exit-flag PATH --exit-code N   exit with status N once PATH exists
  --thread                         run a second (sleeping) thread
  --child                          fork a child that lives as long as we do
  --socket                         hold a TCP socket listening on loopback
  --eventfd                        hold an eventfd (which nothing restores)
  --no-append                      write through a plain O_WRONLY fd (its offset matters)
  --quirks                         change comm, umask, an rlimit, signal dispositions
                                   and mask, so that restore must put them all back
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import sys
import threading
import time

KEEP: list[object] = []   # objects that must stay open for the life of the process


def keep_child_alive(parent: int) -> None:
    """Child body: stay until the parent is gone, so nothing outlives a test."""
    while os.getppid() == parent:
        time.sleep(0.05)
    os._exit(0)


def quirks() -> None:
    with open("/proc/self/comm", "w") as f:
        f.write("lz-quirky")
    os.umask(0o027)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--exit-flag")
    p.add_argument("--exit-code", type=int, default=7)
    p.add_argument("--thread", action="store_true")
    p.add_argument("--child", action="store_true")
    p.add_argument("--socket", action="store_true")
    p.add_argument("--eventfd", action="store_true")
    p.add_argument("--quirks", action="store_true")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()

    if args.quirks:
        quirks()
    if args.eventfd:
        KEEP.append(os.eventfd(0))
    if args.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        KEEP.append(listener)

    if args.thread:
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    if args.child:
        parent = os.getpid()
        if os.fork() == 0:
            keep_child_alive(parent)

    mode = os.O_TRUNC if args.no_append else os.O_APPEND
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | mode | os.O_CLOEXEC, 0o644)
    i = 0
    while True:
        if args.exit_flag and os.path.exists(args.exit_flag):
            return int(args.exit_code)
        os.write(fd, f"{i}\n".encode())
        i += 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
