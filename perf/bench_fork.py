"""Benchmark: how long remote fork stops the original, against a dump that
leaves it running (the baseline, measured in the same run on the same process).

    .venv/bin/python -m perf.bench_fork [--sizes 64M,1G] [--repeat N]

For each size a Python workload fills a bytearray with random data and runs
a ticker thread that records the longest gap between two of its ticks (1 ms
sleeps): the stall the process itself saw. Per round:

1. `lazarus dump --leave-running -D DIR --stats` (the tree is frozen from
   the freeze to the end of the write): frozen time and the stall seen.
2. `lazarus fork --page-server 127.0.0.1:0 --stats`: frozen time and the stall
   seen; then `restore --lazy --pidns -d` from it (time until the copy runs),
   the fork command's end (every page served, twins gone), and the copy's
   sha256 of its buffer checked against the original's.

Nothing here asserts a speed; the exit status is non-zero only if a command
failed or a checksum differs. Every process started is killed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
LAZARUS = str(Path(sys.executable).parent / "lazarus")
TIMEOUT = 300.0

# argv: size, state dir. Writes `sum` on SIGUSR1 and `gap` (longest tick gap
# in ms since the last SIGUSR2, which resets it) on SIGUSR2; `ready` once.
WORKLOAD = r"""
import hashlib, os, signal, sys, threading, time
size, state = int(sys.argv[1]), sys.argv[2]
buf = bytearray(size)
for off in range(0, size, 16 << 20):
    n = min(16 << 20, size - off)
    buf[off:off + n] = os.urandom(n)
gap = [0.0]
def ticker():
    last = time.monotonic()
    while True:
        time.sleep(0.001)
        now = time.monotonic()
        gap[0] = max(gap[0], now - last)
        last = now
threading.Thread(target=ticker, daemon=True).start()
def publish(name, text):
    tmp = os.path.join(state, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(state, name))
def on_usr1(*_):
    publish("sum", hashlib.sha256(buf).hexdigest())
def on_usr2(*_):
    publish("gap", f"{gap[0] * 1000:.2f}")
    gap[0] = 0.0
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGUSR2, on_usr2)
on_usr1()
open(os.path.join(state, "ready"), "w").close()
while True:
    time.sleep(3600)
"""


@dataclass
class Round:
    dump_frozen_ms: float
    dump_stall_ms: float
    fork_frozen_ms: float
    fork_stall_ms: float
    copy_runs_s: float
    all_pages_s: float


@dataclass
class Bench:
    tmp: Path
    started: list[int] = field(default_factory=list)

    def wait_file(self, path: Path, what: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: timed out waiting for {what}")
            time.sleep(0.01)
        return path.read_text()

    def ask(self, pid: int, sig: int, state: Path, name: str) -> str:
        (state / name).unlink(missing_ok=True)
        os.kill(pid, sig)
        return self.wait_file(state / name, f"{name} from {pid}")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([LAZARUS, *args], capture_output=True, text=True, timeout=TIMEOUT,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise SystemExit(f"bench: lazarus {args[0]} failed ({res.returncode}): "
                             f"{res.stderr.strip()}")
        return res

    def round(self, pid: int, state: Path, digest: str, n: int) -> Round:
        self.ask(pid, signal.SIGUSR2, state, "gap")
        img = self.tmp / f"img{n}"
        res = self.run("dump", "-t", str(pid), "-D", str(img), "--leave-running", "--stats")
        dump_frozen = float(re.findall(r"total\s+([\d.]+) ms", res.stderr)[-1])
        dump_stall = float(self.ask(pid, signal.SIGUSR2, state, "gap"))
        shutil.rmtree(img)

        fork = subprocess.Popen([LAZARUS, "fork", "-t", str(pid), "--name", f"b{n}",
                                 "--page-server", "127.0.0.1:0", "--stats"], text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.started.append(fork.pid)
        assert fork.stdout is not None
        if not select.select([fork.stdout], [], [], 60)[0]:
            raise SystemExit("bench: lazarus fork did not get ready within 60 s")
        m = re.search(r"served on 127\.0\.0\.1:(\d+)", fork.stdout.readline())
        if m is None:
            raise SystemExit(f"bench: lazarus fork failed: {fork.communicate()[1]}")
        t0 = time.monotonic()
        pidfile = self.tmp / f"copy{n}"
        self.run("restore", "--lazy", "--page-server", f"127.0.0.1:{m.group(1)}",
                 "--image", f"b{n}", "--pidns", "-d", "--pidfile", str(pidfile))
        copy_runs = time.monotonic() - t0
        copy = int(pidfile.read_text())
        init = int(Path(f"/proc/{copy}/stat").read_text().rsplit(")", 1)[1].split()[1])
        self.started += [copy, init]
        _, err = fork.communicate(timeout=TIMEOUT)
        all_pages = time.monotonic() - t0
        if fork.returncode != 0:
            raise SystemExit(f"bench: lazarus fork failed: {err.strip()}")
        fork_frozen = float(re.search(r"frozen ([\d.]+) ms", err).group(1))  # type: ignore[union-attr]
        fork_stall = float(self.ask(pid, signal.SIGUSR2, state, "gap"))
        if self.ask(copy, signal.SIGUSR1, state, "sum") != digest:
            raise SystemExit("bench: the copy's memory differs from the original's")
        for p in (copy, init):
            os.kill(p, signal.SIGKILL)
        return Round(dump_frozen, dump_stall, fork_frozen, fork_stall, copy_runs, all_pages)

    def kill_all(self) -> None:
        for pid in self.started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": MiB, "G": 1 << 30}.get(t[-1:], 1)
    return int(t.rstrip("KMG")) * mult


def med(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64M,1G")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fork-"))
    bench = Bench(tmp)
    try:
        print("frozen = pipeline time the tree was stopped; stall = longest gap the process's "
              "own 1 ms ticker saw; medians (range)")
        print(f"{'size':>6} {'dump --leave-running':>40} {'fork':>40} {'fork/dump':>10}"
              f" {'copy runs s':>12} {'all pages s':>12}")
        print(f"{'':>6} {'frozen ms':>19} {'stall ms':>20} {'frozen ms':>19} {'stall ms':>20}")
        for size_text in args.sizes.split(","):
            size = parse_size(size_text)
            state = tmp / f"state-{size}"
            state.mkdir()
            w = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(size), str(state)],
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            bench.started.append(w.pid)
            bench.wait_file(state / "ready", "the workload to fill its memory")
            digest = (state / "sum").read_text()
            rounds = [bench.round(w.pid, state, digest, i) for i in range(args.repeat)]
            ratio = [r.fork_frozen_ms / r.dump_frozen_ms for r in rounds]
            print(f"{size_text:>6} {med([r.dump_frozen_ms for r in rounds]):>19} "
                  f"{med([r.dump_stall_ms for r in rounds]):>20} "
                  f"{med([r.fork_frozen_ms for r in rounds]):>19} "
                  f"{med([r.fork_stall_ms for r in rounds]):>20} "
                  f"{statistics.median(ratio):10.3f} "
                  f"{statistics.median([r.copy_runs_s for r in rounds]):12.2f} "
                  f"{statistics.median([r.all_pages_s for r in rounds]):12.2f}", flush=True)
            os.kill(w.pid, signal.SIGKILL)
            w.wait()
    finally:
        bench.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
