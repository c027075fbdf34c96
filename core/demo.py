"""`make demo`: checkpoint a running program, kill it, bring it back, then
again lazily through a page server.

A small Python workload appends a numbered, timestamped line to a log file
every 100 ms. The demo shows its output, dumps it with `lazarus dump` (which
kills it), shows the image, waits so the pause is visible, restores it with
`lazarus restore -d` and shows it going on from the next number with the same
PID. It checks what it shows: the numbering must have no gap and no repeat,
the PID must be the same, and nothing may be written while the process is
gone. Then it sends the process to a `pageserver` on loopback (`dump
--page-server`) and restores it lazily from there (`restore --lazy`), with
the same checks. Exit status 0 if all of that holds, 1 otherwise. Everything it starts
is killed and its temporary directory removed, also on failure or ^C.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

TICK = 0.1            # the workload's period, seconds
SHOW_BEFORE = 1.0     # how long the output is shown before the dump
PAUSE = 1.5           # how long the process stays dead
SHOW_AFTER = 1.2      # how long the output is shown after the restore
CMD_TIMEOUT = 30.0    # bound on each lazarus command

WORKLOAD = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
while True:
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    os.write(fd, f"tick {n:4d}  {stamp}  pid {os.getpid()}\n".encode())
    n += 1
    time.sleep(0.1)
"""

LINE = re.compile(r"^tick +(\d+) +(\d\d:\d\d:\d\d\.\d{3}) +pid (\d+)$")


class DemoError(Exception):
    pass


def say(msg: str = "") -> None:
    print(msg, flush=True)


def lazarus(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the lazarus CLI; show the command; fail with its error line."""
    say(f"  $ lazarus {' '.join(args)}")
    cmd = [sys.executable, "-m", "core.cli", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DemoError(f"lazarus {args[0]} did not finish within {CMD_TIMEOUT:.0f} s") from None
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()
        raise DemoError(f"lazarus {args[0]} failed (exit {res.returncode}): "
                        f"{err[-1] if err else 'no message'}")
    return res


class LogTail:
    """Reads the lines the workload appends, as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines: list[str] = []

    def poll(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1            # only whole lines
        self.offset += end
        new = data[:end].decode().splitlines()
        self.lines += new
        return new

    def show_for(self, seconds: float) -> list[str]:
        shown: list[str] = []
        deadline = time.monotonic() + seconds
        while True:
            for line in self.poll():
                say(f"  | {line}")
                shown.append(line)
            if time.monotonic() >= deadline:
                return shown
            time.sleep(TICK / 4)


def parse(line: str) -> tuple[int, str, int]:
    m = LINE.match(line)
    if not m:
        raise DemoError(f"unexpected line in the log: {line!r}")
    return int(m.group(1)), m.group(2), int(m.group(3))


def check_sequence(lines: Sequence[str]) -> None:
    numbers = [parse(line)[0] for line in lines]
    for prev, cur in zip(numbers, numbers[1:], strict=False):
        if cur != prev + 1:
            kind = "repeat" if cur <= prev else "gap"
            raise DemoError(f"counter {kind}: tick {prev} is followed by tick {cur}")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def ours(pid: int, marker: str) -> bool:
    """True if PID runs a command line naming `marker` (our workload script)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


def kill_restored(pid: int, marker: str) -> None:
    """Kill a restored process (not our child: PID 1 reaps it) and wait until it is gone."""
    if not ours(pid, marker):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not wait_gone(pid, 5.0):
        say(f"  warning: PID {pid} killed but still not reaped after 5 s")


class Cleanup:
    """What the demo started, to be ended whatever happens."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.children: list[subprocess.Popen[bytes]] = []
        self.restored: list[int] = []

    def run(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                say(f"  warning: PID {proc.pid} did not exit")
        for pid in self.restored:
            kill_restored(pid, self.marker)


def run_demo(work: Path, cleanup: Cleanup) -> None:
    log = work / "counter.log"
    images = work / "image"
    script = Path(cleanup.marker)
    script.write_text(WORKLOAD)
    tail = LogTail(log)

    say("lazarus demo: checkpoint a running program, kill it, restore it, watch it go on")
    say()
    say(f"[1/7] start a workload that appends a numbered line every {TICK * 1000:.0f} ms "
        f"to {log}")
    proc = subprocess.Popen([sys.executable, str(script), str(log)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=work, start_new_session=True)
    cleanup.children.append(proc)
    pid = proc.pid
    say(f"      running as PID {pid}")
    before = tail.show_for(SHOW_BEFORE)
    if not before:
        raise DemoError(f"the workload wrote nothing in {SHOW_BEFORE:.1f} s")

    say()
    say("[2/7] checkpoint it; lazarus kills it once the image is written")
    t0 = time.monotonic()
    lazarus("dump", "-t", str(pid), "-D", str(images))
    try:
        status = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        raise DemoError(f"PID {pid} is still running after the dump") from None
    dump_s = time.monotonic() - t0
    late = tail.poll()                 # written while lazarus started, before the freeze
    if late:
        say("      written while lazarus was starting, before the freeze:")
        for line in late:
            say(f"  | {line}")
    how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    before = tail.lines[:]             # everything it wrote before it died
    if not before:
        raise DemoError("no log lines before the dump")
    last_n, last_stamp, _ = parse(before[-1])
    say(f"      dumped in {dump_s:.2f} s; PID {pid} is gone ({how}); "
        f"last line: tick {last_n} at {last_stamp}")

    say()
    say("[3/7] what the image holds")
    shown = lazarus("show", str(images)).stdout.splitlines()
    for line in shown:
        if line.strip().endswith("VMAs:"):
            say(f"  | {line.strip()} (list left out)")
            break
        say(f"  | {line}")

    say()
    say(f"[4/7] nothing runs for {PAUSE:.1f} s")
    time.sleep(PAUSE)
    if tail.poll():
        raise DemoError("the log grew while the process was dead")
    if os.path.exists(f"/proc/{pid}"):
        raise DemoError(f"PID {pid} exists while the process should be dead")
    say(f"      the log is still at tick {last_n}")

    say()
    say("[5/7] restore it (-d: lazarus returns once the process runs)")
    pidfile = work / "restored.pid"
    t1 = time.monotonic()
    try:
        lazarus("restore", "-D", str(images), "-d", "--pidfile", str(pidfile))
    finally:
        if pidfile.exists():
            cleanup.restored.append(int(pidfile.read_text().strip()))
    restore_s = time.monotonic() - t1
    new_pid = cleanup.restored[-1] if cleanup.restored else 0
    if new_pid != pid:
        raise DemoError(f"restored as PID {new_pid}, not {pid}")
    say(f"      restored in {restore_s:.2f} s as PID {new_pid}; its output goes on:")
    after = tail.show_for(SHOW_AFTER)
    if not after:
        raise DemoError(f"the restored process wrote nothing in {SHOW_AFTER:.1f} s")

    check_sequence(tail.lines)
    first_n, first_stamp, first_pid = parse(after[0])
    if first_n != last_n + 1:
        raise DemoError(f"after the restore the counter went on at {first_n}, "
                        f"expected {last_n + 1}")
    if any(parse(line)[2] != pid for line in after):
        raise DemoError(f"the restored process reports a PID other than {pid}")

    say()
    say("[6/7] now lazily: send it to a page server (it is killed once the server has it)")
    port = start_pageserver(work, cleanup)
    server = f"127.0.0.1:{port}"
    say(f"      pageserver -D {work / 'served'} --listen {server}")
    lazarus("dump", "-t", str(pid), "--page-server", server, "--image", "counter")
    if not wait_gone(pid, 5.0) and ours(pid, cleanup.marker):
        raise DemoError(f"PID {pid} is still running after the dump to the page server")
    tail.poll()
    lazy_last = parse(tail.lines[-1])[0]
    say(f"      the log stops at tick {lazy_last}")

    say()
    say("[7/7] restore it from the page server: it runs at once, its memory comes on demand")
    pidfile.unlink()
    res = lazarus("restore", "--lazy", "--page-server", server, "--image", "counter", "-d",
                  "--pidfile", str(pidfile), "--stats")
    cleanup.restored.append(int(pidfile.read_text().strip()))
    total = re.search(r"total\s+([\d.]+) ms", res.stderr)
    say(f"      running again as PID {cleanup.restored[-1]} after "
        f"{total.group(1) if total else '?'} ms; its output goes on:")
    lazy_after = tail.show_for(SHOW_AFTER)
    if not lazy_after:
        raise DemoError(f"the lazily restored process wrote nothing in {SHOW_AFTER:.1f} s")
    check_sequence(tail.lines)
    if parse(lazy_after[0])[0] != lazy_last + 1 or cleanup.restored[-1] != pid:
        raise DemoError("the lazily restored process did not go on from where it was")
    kill_restored(pid, cleanup.marker)

    say()
    say(f"OK: ticks 0..{last_n} before the dump, {first_n}..{lazy_last} after the "
        f"restore, {lazy_last + 1}..{parse(lazy_after[-1])[0]} after the lazy restore: "
        f"no gap, no repeat, same PID {first_pid}.")
    say(f"    The timestamps jump from {last_stamp} to {first_stamp}: the time it spent "
        f"as an image.")


def start_pageserver(work: Path, cleanup: Cleanup) -> int:
    """A page server on a free loopback port; returns the port."""
    served, log = work / "served", work / "pageserver.log"
    served.mkdir()
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pageserver.cli", "-D", str(served),
                                 "--listen", "127.0.0.1:0"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    cleanup.children.append(proc)
    deadline = time.monotonic() + CMD_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise DemoError(f"the page server did not start: {log.read_text(errors='replace')!r}")


def on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="lazarus-demo-"))
    cleanup = Cleanup(str(work / "counter.py"))
    try:
        run_demo(work, cleanup)
        return 0
    except DemoError as exc:
        say()
        say(f"demo FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say()
        say("demo interrupted")
        return 130
    finally:
        cleanup.run()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
