"""Benchmark: warm starts. Time to ready of a Python program with a slow
start-up, run from scratch (cold) against restores of its image taken after
the start-up: eager, lazy, and lazy with the recorded working set prefetched.

    .venv/bin/python -m perf.bench_warm [--entries 1000000] [--repeat 3] [--json]

The program is tests/workloads/warmapp.py: it imports ~50 stdlib modules and
builds a dict of `--entries` entries, then waits for SIGUSR1 and answers a
request (the sum of the values of `--keys` keys) into a file. *Time to ready*
is from the start (of the program, or of the restore) until the answer file
exists; the answer must be the same in every run.

Set-up: the program is started once, dumped after its start-up (`lazarus
dump`, the target is killed), and restored once with `--lazy
--record-working-set` to answer one request (the recording is kept once
every page is in). Then, per round, in an order that rotates:

- cold: start the program, wait for its `ready` file, send the request.
- eager: `restore -d --pidns`, then the request.
- lazy: `restore --lazy -d --pidns --no-prefetch`, then the request.
- prefetch: `restore --lazy -d --pidns` (the working set goes in before the
  process runs), then the request.

Restores run the real command line code (`core.cli.main`) in an interpreter
that has already imported it and waits for a go: the interpreter start-up of
the `lazarus` command (shown in the header, measured in the same run) is not
counted, as it does not depend on the program restored. Lazy runs log their
`--stats` (faults, pages prefetched) once every page is in; the benchmark
waits for that before it stops the process. Every process it starts is killed
by PID at the end, also on failure or ^C; the temporary directory is removed.
Nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "tests" / "workloads" / "warmapp.py"
PYTHON = sys.executable
LAZARUS = str(Path(sys.executable).parent / "lazarus")
MODES = ("cold", "eager", "lazy", "prefetch")
POLL = 0.001                 # answer-file poll interval: the timing resolution
READY_TIMEOUT = 120.0        # the program's start-up on a busy machine
STEP_TIMEOUT = 120.0         # any restore, answer or page push

# The driver: imports the command line code, says "armed", waits for "go",
# runs one `lazarus` command line in-process.
DRIVER = r"""
import os, sys
import core.cli, core.restore, core.restore.lazy, lazy.daemon, pageserver.client
try:
    import uvloop
except ImportError:
    pass
me = os.getpid()
print("armed", flush=True)
if sys.stdin.readline().strip() == "go":
    rc = core.cli.main(sys.argv[1:])
    if os.getpid() == me:
        print(f"rc {rc}", flush=True)
    sys.stdout.flush()
    os._exit(rc)
"""


class BenchError(Exception):
    pass


@dataclass
class Sample:
    mode: str
    seconds: float
    faults: int | None = None
    pages_faulted: int | None = None
    prefetched: int | None = None
    resume_ms: float | None = None


@dataclass
class Results:
    entries: int
    keys: int
    cli_startup_s: float = 0.0
    image_mb: float = 0.0
    recorded_pages: int = 0
    samples: list[Sample] = field(default_factory=list)


class Bench:
    def __init__(self, work: Path, entries: int, nkeys: int) -> None:
        self.work = work
        self.entries = entries
        rng = random.Random(11)
        self.keys = [f"key{rng.randrange(entries)}" for _ in range(nkeys)]
        self.state = work / "state"
        self.state.mkdir()
        (self.state / "request").write_text("\n".join(self.keys) + "\n")
        self.images = work / "img"
        self.answer: int | None = None
        self.pids: set[int] = set()          # everything to kill at the end
        self.popens: list[subprocess.Popen[bytes]] = []

    # -- processes

    def spawn(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        p: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            argv, cwd=self.work, start_new_session=True, **kw)
        self.popens.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait_path(self, path: Path, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(POLL)

    def request(self, pid: int) -> float:
        """Signal the program, wait for its answer; when it came (monotonic)."""
        answer = self.state / f"answer-{pid}"
        os.kill(pid, signal.SIGUSR1)
        self.wait_path(answer, STEP_TIMEOUT, f"PID {pid} to answer")
        t = time.monotonic()
        value = int(answer.read_text())
        if self.answer is None:
            self.answer = value
        elif value != self.answer:
            raise BenchError(f"PID {pid} answered {value}, expected {self.answer}")
        answer.unlink()
        return t

    def quit(self, pid: int) -> None:
        """Ask the program to exit (it shares the request file: write, signal, put back)."""
        req = self.state / "request"
        req.write_text("quit\n")
        try:
            os.kill(pid, signal.SIGUSR1)
            deadline = time.monotonic() + STEP_TIMEOUT
            while os.path.exists(f"/proc/{pid}") and _state(pid) not in ("Z", "X"):
                if time.monotonic() > deadline:
                    raise BenchError(f"PID {pid} did not quit")
                time.sleep(0.005)
        finally:
            req.write_text("\n".join(self.keys) + "\n")
        self.pids.discard(pid)

    # -- the runs

    def cold(self) -> Sample:
        ready = self.state / "ready"
        ready.unlink(missing_ok=True)
        t0 = time.monotonic()
        p = self.spawn([PYTHON, str(APP), str(self.state), str(self.entries)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.wait_path(ready, READY_TIMEOUT, "the program to start")
        t1 = self.request(p.pid)
        self.quit(p.pid)
        p.wait(STEP_TIMEOUT)
        return Sample("cold", t1 - t0)

    def make_image(self) -> None:
        ready = self.state / "ready"
        ready.unlink(missing_ok=True)
        p = self.spawn([PYTHON, str(APP), str(self.state), str(self.entries)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.wait_path(ready, READY_TIMEOUT, "the program to start")
        self.cli(["dump", "-t", str(p.pid), "-D", str(self.images)])
        p.wait(STEP_TIMEOUT)

    def cli(self, args: list[str]) -> float:
        t0 = time.monotonic()
        res = subprocess.run([LAZARUS, *args], capture_output=True, text=True,
                             timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise BenchError(f"lazarus {' '.join(args)}: {res.stderr.strip()}")
        return time.monotonic() - t0

    def restore(self, mode: str, extra: list[str], tag: str) -> tuple[Sample, Path, int]:
        """Restore through the armed driver and ask once; the sample, the
        daemon's log and the restored PID."""
        pidfile, log = self.work / f"{tag}.pid", self.work / f"{tag}.log"
        pidfile.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        argv = ["restore", "-D", str(self.images), "-d", "--pidns", "--pidfile", str(pidfile),
                *extra]
        if mode != "eager":
            argv += ["--lazy", "--stats", "--log-file", str(log)]
        driver = self.spawn([PYTHON, "-c", DRIVER, *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert driver.stdin is not None and driver.stdout is not None
        if driver.stdout.readline().strip() != b"armed":
            raise BenchError(f"driver: {driver.communicate(timeout=10)[1].decode()}")
        t0 = time.monotonic()
        driver.stdin.write(b"go\n")
        driver.stdin.flush()
        self.wait_path(pidfile, STEP_TIMEOUT, f"{mode} restore to write its pidfile")
        while not pidfile.read_text().strip():
            time.sleep(POLL)
        pid = int(pidfile.read_text())
        self.pids.add(pid)
        t1 = self.request(pid)
        _, err = driver.communicate(timeout=STEP_TIMEOUT)
        if driver.returncode != 0:
            raise BenchError(f"{mode} restore failed: {err.decode().strip()}")
        return Sample(mode, t1 - t0), log, pid

    def warm(self, mode: str, tag: str) -> Sample:
        extra = {"eager": [], "lazy": ["--no-prefetch"], "prefetch": []}[mode]
        sample, log, pid = self.restore(mode, extra, tag)
        if mode != "eager":
            self.wait_log(log)
            text = log.read_text()
            sample.faults, sample.pages_faulted = _ints(
                r"faults\s+(\d+) \((\d+) pages", text)
            (sample.prefetched,) = _ints(r"pages prefetched\s+(\d+)", text)
            m = re.search(r"time to resume\s+([\d.]+) ms", text)
            sample.resume_ms = float(m.group(1)) if m else None
        self.quit(pid)
        return sample

    def wait_log(self, log: Path) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not (log.exists() and "time to last page" in log.read_text()):
            if time.monotonic() > deadline:
                raise BenchError(f"the lazy daemon did not finish ({log.name})")
            time.sleep(0.01)

    def record(self) -> int:
        ws = self.images / "workingset.img"
        _, log, pid = self.restore("lazy", ["--record-working-set"], "record")
        self.wait_path(ws, STEP_TIMEOUT, "the working set to be recorded")
        self.wait_log(log)
        self.quit(pid)
        desc = json.loads(subprocess.run([LAZARUS, "show", "--json", str(self.images)],
                                         capture_output=True, text=True, check=True,
                                         timeout=STEP_TIMEOUT).stdout)
        return int(desc["working_set"]["pages"])


def _state(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2]


def _ints(pattern: str, text: str) -> tuple[int, ...]:
    m = re.search(pattern, text)
    if not m:
        raise BenchError(f"no {pattern!r} in the daemon's stats: {text!r}")
    return tuple(int(g) for g in m.groups())


def med(values: list[float]) -> float:
    return statistics.median(values)


def report(r: Results) -> str:
    by: dict[str, list[Sample]] = {m: [s for s in r.samples if s.mode == m] for m in MODES}
    cold = med([s.seconds for s in by["cold"]])
    lines = [
        f"program: warmapp, {r.entries} dict entries, request of {r.keys} keys; "
        f"image {r.image_mb:.1f} MB; recorded working set {r.recorded_pages} pages "
        f"({r.recorded_pages * 4096 / 1e6:.1f} MB)",
        f"baseline: cold start (run from scratch until it answers), median "
        f"{cold * 1000:.0f} ms",
        f"not counted: `lazarus restore --help` wall time (interpreter start-up, CLI "
        f"imports) {r.cli_startup_s * 1000:.0f} ms",
        "",
        "    mode       time to ready ms      range  x cold  resume ms  faults  "
        "pages faulted  prefetched",
    ]
    for m in MODES:
        ss = by[m]
        if not ss:
            continue
        t = med([s.seconds for s in ss])
        rng = f"{min(s.seconds for s in ss) * 1000:.0f}-{max(s.seconds for s in ss) * 1000:.0f}"

        def opt(vals: list[float | int | None], fmt: str) -> str:
            got = [v for v in vals if v is not None]
            return format(med([float(v) for v in got]), fmt) if got else "-"

        lines.append(
            f"    {m:<9} {t * 1000:16.0f} {rng:>10} {cold / t:7.1f} "
            f"{opt([s.resume_ms for s in ss], '10.1f')} "
            f"{opt([s.faults for s in ss], '7.0f')} "
            f"{opt([s.pages_faulted for s in ss], '14.0f')} "
            f"{opt([s.prefetched for s in ss], '11.0f')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=300, help="keys per request")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    bench = Bench(work, args.entries, args.keys)
    results = Results(args.entries, args.keys)
    try:
        t0 = time.monotonic()
        subprocess.run([LAZARUS, "restore", "--help"], capture_output=True, check=True,
                       timeout=STEP_TIMEOUT)
        results.cli_startup_s = time.monotonic() - t0
        bench.make_image()
        results.image_mb = sum(f.stat().st_size for f in bench.images.iterdir()) / 1e6
        results.recorded_pages = bench.record()
        for rnd in range(args.repeat):
            order = MODES[rnd % len(MODES):] + MODES[: rnd % len(MODES)]
            for mode in order:
                s = bench.cold() if mode == "cold" else bench.warm(mode, f"{mode}{rnd}")
                results.samples.append(s)
                print(f"round {rnd + 1}: {mode:<8} {s.seconds * 1000:7.0f} ms"
                      + (f", {s.faults} faults, {s.prefetched} pages prefetched"
                         if s.faults is not None else ""), file=sys.stderr)
    except BenchError as exc:
        print(f"bench_warm: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(asdict(results), indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
