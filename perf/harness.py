"""What the benchmarks share to start processes and to kill every one of
them again, by PID (checked by start time), also on failure or ^C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (tells a PID's processes apart), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until PID is gone: reaped if it is (or becomes) our child, as the
    orphans of a subreaper do, else until /proc/PID goes (or is a zombie)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        return True
            except (FileNotFoundError, ProcessLookupError):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


class Children:
    """The processes a benchmark starts, and the lazy daemons its restores
    leave running (PID -> start time)."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.children: list[subprocess.Popen[bytes]] = []
        self.daemons: dict[int, int | None] = {}

    def say(self, msg: str) -> None:
        if self.verbose:
            print(f"  .. {msg}", file=sys.stderr, flush=True)

    def spawn(self, argv: list[str], out: Path | int = subprocess.DEVNULL,
              err: Path | int | None = subprocess.DEVNULL,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """A child in its own session (no terminal signals), stdout/stderr to files."""
        err = subprocess.DEVNULL if err is None else err
        fo = open(out, "wb") if isinstance(out, Path) else out
        fe = open(err, "wb") if isinstance(err, Path) else err
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                    cwd=cwd, start_new_session=True)
        finally:
            for f in (fo, fe):
                if not isinstance(f, int):
                    f.close()
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0,
             gently: bool = True) -> None:
        """Stop a child we started (SIGTERM first if ``gently``, then SIGKILL)
        and wait for it."""
        signals = (proc.terminate, proc.kill) if gently else (proc.kill,)
        for send in signals:
            if proc.poll() is not None:
                break
            send()
            try:
                proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is None:
            print(f"warning: PID {proc.pid} did not exit", file=sys.stderr)
            return
        if proc in self.children:
            self.children.remove(proc)

    def stop_daemons(self, timeout: float = 10.0) -> None:
        """Daemons end with their processes; kill any that did not (same start time)."""
        for pid, start in list(self.daemons.items()):
            if not wait_gone(pid, timeout) and starttime(pid) == start:
                print(f"warning: lazy daemon PID {pid} still there: killing it", file=sys.stderr)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                wait_gone(pid, 10.0)
            self.daemons.pop(pid, None)
