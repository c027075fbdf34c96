"""Benchmark: lazy restore (userfaultfd) against eager restore, on loopback.

    .venv/bin/python -m perf.bench_lazy [--sizes 64M,1G] [--repeat N] [--json]

For each size a Python workload fills a bytearray of that size with random
data, computes its sha256 and waits; it is dumped once (`lazarus dump`, the
target is killed) into a directory that a `pageserver` on 127.0.0.1 serves.
Then, per round:

1. Time to resume: `lazarus restore -d --stats` eagerly, lazily from the
   local image (`--lazy -D DIR`) and lazily through the page server
   (`--lazy --page-server`), the order rotating between rounds. The figure is
   the pipeline's own total (the `time to resume` of --stats, no interpreter
   start-up); the command's wall time is shown too. A lazy restore is left
   alone until its daemon has pushed every page (`time to last page`), then
   the process recomputes its checksum on SIGUSR1 and is killed.
2. Raw loopback TCP: a plain socket pair (a sender process sendall()s one
   4 MiB buffer over and over, this process recv_into()s one reused 4 MiB
   buffer) moving as many bytes as the largest workload holds, 3 times.
3. Sequential touch: a lazy restore with the background push held back
   (`--push-delay`), then on SIGUSR2 the process reads one byte of each page
   of its buffer in order and reports how long that took: every page comes
   through the fault path. Largest size with the default fault-around, from
   both sources, with read-ahead (the default) and without (`--read-ahead
   0`), for the comparison in the same run; the smallest size with the
   defaults, and with fault-around 1 and no read-ahead, for per-fault
   latencies (p50/p99 from `--stats`, written to `--log-file` by the
   detached daemon when it ends). The checksum is checked after each.

Nothing here asserts a speed (the machines are shared and noisy); the exit
status is non-zero only if a restore failed or a checksum or PID differed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lazy.daemon import DEFAULT_FAULT_AROUND, DEFAULT_READ_AHEAD
from perf.bench_dump_restore import (
    BenchError,
    fmt_size,
    mbps,
    parse_size,
    pid_alive,
    read_sum,
    wait_file,
    wait_gone,
)
from perf.harness import Children, starttime

MiB = 1 << 20
PAGE = 4096
RAW_BLOCK = 4 * MiB
RAW_ROUNDS = 3
MODES = ("eager", "lazy local", "lazy server")
SOURCES = ("server", "local")
MEMORY_COLUMN = "memory|lazy-setup"

# The workload: argv = size, state dir. It writes `sum` (its PID and the sha256
# of its buffer, atomically) at start and on every SIGUSR1, and `ready` once.
# On SIGUSR2 it reads one byte of each page of the first `touch-bytes` bytes
# of its buffer, in order, and writes `touch`: seconds, pages, byte sum.
WORKLOAD = r"""
import hashlib, os, signal, sys, time
size, state = int(sys.argv[1]), sys.argv[2]
buf = bytearray(size)
chunk = 16 << 20
for off in range(0, size, chunk):
    n = min(chunk, size - off)
    buf[off:off + n] = os.urandom(n)
def put(name, text):
    tmp = os.path.join(state, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(state, name))
def publish(*_):
    put("sum", f"{os.getpid()} {hashlib.sha256(buf).hexdigest()}\n")
def touch(*_):
    with open(os.path.join(state, "touch-bytes")) as f:
        n = int(f.read())
    t0 = time.perf_counter()
    picked = buf[0:n:4096]
    dt = time.perf_counter() - t0
    put("touch", f"{dt!r} {len(picked)} {sum(picked)}\n")
signal.signal(signal.SIGUSR1, publish)
signal.signal(signal.SIGUSR2, touch)
publish()
open(os.path.join(state, "ready"), "w").close()
while True:
    time.sleep(3600)
"""

# Raw TCP sender: per connection, read the byte count (8 bytes, big endian),
# then sendall() one 4 MiB buffer over and over until that many are sent.
RAW_SENDER = r"""
import os, socket, struct
ls = socket.create_server(("127.0.0.1", 0))
print(ls.getsockname()[1], flush=True)
block = memoryview(os.urandom(4 << 20))
while True:
    c, _ = ls.accept()
    with c:
        (n,) = struct.unpack("!Q", c.recv(8, socket.MSG_WAITALL))
        while n > 0:
            k = min(n, len(block))
            c.sendall(block[:k])
            n -= k
"""

STAGE_LINE = re.compile(r"^\s+([a-z][\w-]*)\s+([\d.]+) ms\b", re.M)
RESTORED_PID = re.compile(r"^restored PID (\d+)\b", re.M)
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
MS = r"(n/a|[\d.]+ ms)"
LAZY_LINES = {
    "resume": re.compile(rf"time to resume\s+{MS}"),
    "faults": re.compile(rf"faults\s+(\d+) \((\d+) pages, (\d+) zero pages\), "
                         rf"latency p50 {MS}, p99 {MS}"),
    "pushed": re.compile(r"pages pushed\s+(\d+)"),
    "readahead": re.compile(r"pages read ahead\s+(\d+)"),
    "fetched": re.compile(r"pages fetched\s+([\d.]+) MB, ([\d.]+) MB over the wire"),
    "last": re.compile(rf"time to last page\s+{MS}"),
}


# ---------------------------------------------------------------- results


@dataclass
class LazyFigures:
    """What the detached daemon's --stats say when it ends."""
    faults: int
    pages_faulted: int
    zero_pages: int
    p50_ms: float | None
    p99_ms: float | None
    pages_pushed: int
    pages_readahead: int
    fetched_mb: float
    wire_mb: float
    last_page_ms: float | None


@dataclass
class ResumeResult:
    size: int
    mode: str
    round: int
    stages_ms: dict[str, float]     # pipeline stages, "total" included
    wall_s: float                   # the command, interpreter start-up included
    checksum_ok: bool
    lazy: LazyFigures | None


@dataclass
class RawResult:
    round: int
    bytes: int
    seconds: float


@dataclass
class TouchResult:
    size: int
    source: str
    fault_around: int
    read_ahead: int                 # largest read-ahead window, pages (0: off)
    round: int
    bytes: int                      # pages touched x 4096
    seconds: float                  # as the process measured it
    checksum_ok: bool
    lazy: LazyFigures | None


@dataclass
class Run:
    startup_s: list[float] = field(default_factory=list)   # `lazarus restore --help`
    resumes: list[ResumeResult] = field(default_factory=list)
    raws: list[RawResult] = field(default_factory=list)
    touches: list[TouchResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Image:
    size: int
    name: str
    path: Path
    state: Path
    pid: int
    digest: str


# ---------------------------------------------------------------- helpers


def session_members(sid: int) -> list[int]:
    """PIDs of the processes in session `sid` (one a lazarus command started)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry))
    return out


def ms_value(text: str) -> float | None:
    return None if text == "n/a" else float(text.removesuffix(" ms"))


def parse_lazy_stats(text: str) -> LazyFigures:
    found = {k: rx.search(text) for k, rx in LAZY_LINES.items()}
    missing = [k for k, m in found.items() if m is None and k != "readahead"]
    if missing:
        raise BenchError(f"lazy --stats incomplete (no {', '.join(missing)}): {text[-300:]!r}")
    faults, pushed, fetched, last = (found["faults"], found["pushed"], found["fetched"],
                                     found["last"])
    assert faults and pushed and fetched and last
    return LazyFigures(int(faults[1]), int(faults[2]), int(faults[3]), ms_value(faults[4]),
                       ms_value(faults[5]), int(pushed[1]),
                       int(found["readahead"][1]) if found["readahead"] else 0,
                       float(fetched[1]),
                       float(fetched[2]), ms_value(last[1]))


def timeout_for(size: int) -> float:
    return 60.0 + size / (20 * MiB)     # generous: ~20 MB/s worst case on a busy host


def touch_timeout(size: int, fault_around: int) -> float:
    per_page = 0.004 if fault_around == 1 else 0.0005
    return 60.0 + size / PAGE * per_page


# ---------------------------------------------------------------- the bench


class Bench(Children):
    def __init__(self, root: Path, verbose: bool, push_delay: float) -> None:
        super().__init__(verbose)
        self.root = root
        self.push_delay = push_delay
        self.images_dir = root / "images"
        self.images_dir.mkdir()
        self.workload_py = root / "workload.py"
        self.workload_py.write_text(WORKLOAD)
        self.restored: dict[int, int | None] = {}    # PID -> start time
        self.server: subprocess.Popen[bytes] | None = None
        self.server_port = 0
        self.raw: subprocess.Popen[bytes] | None = None
        self.raw_port = 0
        self.serial = 0

    # -- servers -------------------------------------------------------------

    def start_pageserver(self) -> None:
        log = self.root / "pageserver.log"
        self.server = self.spawn([sys.executable, "-m", "pageserver.cli", "-D",
                                  str(self.images_dir), "--listen", "127.0.0.1:0"], err=log)
        deadline = time.monotonic() + 30
        while True:
            m = LISTENING.search(log.read_text(errors="replace"))
            if m:
                self.server_port = int(m[1])
                return
            if self.server.poll() is not None:
                raise BenchError(f"pageserver exited ({self.server.returncode}): "
                                 f"{log.read_text(errors='replace').strip()[-300:]}")
            if time.monotonic() > deadline:
                raise BenchError("pageserver did not say where it listens within 30 s")
            time.sleep(0.02)

    def start_raw_sender(self) -> None:
        out = self.root / "raw.port"
        self.raw = self.spawn([sys.executable, "-c", RAW_SENDER], out=out)
        wait_file(out, 30, self.raw)
        deadline = time.monotonic() + 30
        while not out.read_text().strip():
            if time.monotonic() > deadline or self.raw.poll() is not None:
                raise BenchError("raw TCP sender did not start")
            time.sleep(0.02)
        self.raw_port = int(out.read_text())

    def raw_tcp(self, nbytes: int) -> float:
        """Seconds to receive nbytes over a plain loopback TCP connection."""
        buf = bytearray(RAW_BLOCK)
        view = memoryview(buf)
        got = 0
        with socket.create_connection(("127.0.0.1", self.raw_port),
                                      timeout=timeout_for(nbytes)) as s:
            t0 = time.perf_counter()
            s.sendall(struct.pack("!Q", nbytes))
            while got < nbytes:
                n = s.recv_into(view, min(RAW_BLOCK, nbytes - got))
                if not n:
                    raise BenchError(f"raw TCP: connection closed after {got} bytes")
                got += n
            dt = time.perf_counter() - t0
        view.release()
        return dt

    def startup(self) -> float:
        """Wall seconds of `lazarus restore --help`: interpreter start-up and the CLI's imports."""
        rc, wall, err = self.lazarus(["restore", "--help"], 60.0)
        if rc != 0:
            raise BenchError(f"lazarus restore --help failed ({rc}): {last_line(err)}")
        return wall

    # -- images --------------------------------------------------------------

    def make_image(self, size: int) -> Image:
        name = f"bench-{fmt_size(size).replace(' ', '').lower()}"
        state = self.root / f"state-{name}"
        state.mkdir()
        proc = self.spawn([sys.executable, str(self.workload_py), str(size), str(state)],
                          cwd=state)
        wait_file(state / "ready", timeout_for(size), proc)
        pid, digest = read_sum(state)
        if pid != proc.pid:
            raise BenchError(f"workload reports pid {pid}, expected {proc.pid}")
        path = self.images_dir / name
        self.say(f"{fmt_size(size)}: dumping PID {pid}")
        rc, _, err = self.lazarus(["dump", "-t", str(pid), "-D", str(path)], timeout_for(size))
        if rc != 0:
            raise BenchError(f"dump failed ({rc}): {last_line(err)}")
        try:
            proc.wait(timeout=10)          # dump kills it; we are its parent and reap it
        except subprocess.TimeoutExpired:
            raise BenchError(f"dumped PID {pid} still there after the dump") from None
        self.children.remove(proc)
        return Image(size, name, path, state, pid, digest)

    # -- lazarus commands ----------------------------------------------------

    def lazarus(self, args: list[str], timeout: float) -> tuple[int, float, str]:
        """Run `lazarus ARGS`; returns (exit status, wall seconds, stderr)."""
        self.serial += 1
        err = self.root / f"cmd-{self.serial}.err"
        t0 = time.perf_counter()
        proc = self.spawn([sys.executable, "-m", "core.cli", *args], err=err)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_session(proc.pid)
            self.stop(proc)
            raise BenchError(f"lazarus {args[0]} did not finish within {timeout:.0f} s") \
                from None
        wall = time.perf_counter() - t0
        self.children.remove(proc)
        # A detached lazy daemon stays in the command's session: keep track of it.
        for pid in session_members(proc.pid):
            self.daemons[pid] = starttime(pid)
        text = err.read_text(errors="replace")
        err.unlink()
        return rc, wall, text

    def log_path(self) -> Path:
        self.serial += 1
        return self.root / f"lazy-{self.serial}.log"

    def kill_session(self, sid: int) -> None:
        for pid in session_members(sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restore(self, img: Image, mode: str, extra: list[str],
                log: Path | None) -> tuple[float, dict[str, float], int | None]:
        """Restore img with -d --stats; returns (wall s, stage ms, daemon PID or None)."""
        args = ["restore", "-d", "--stats", *extra]
        if mode == "eager":
            args += ["-D", str(img.path)]
        elif mode == "lazy local":
            args += ["--lazy", "-D", str(img.path)]
        else:
            args += ["--lazy", "--page-server", f"127.0.0.1:{self.server_port}",
                     "--image", img.name]
        if log is not None:
            args += ["--log-file", str(log)]
        before = set(self.daemons)
        rc, wall, err = self.lazarus(args, timeout_for(img.size))
        m = RESTORED_PID.search(err)
        if m:
            pid = int(m[1])
            self.restored[pid] = starttime(pid)
        if rc != 0:
            raise BenchError(f"restore failed ({rc}): {last_line(err)}")
        if not m or int(m[1]) != img.pid:
            raise BenchError(f"restored as PID {m[1] if m else '?'}, not {img.pid}")
        stages = {name: float(v) for name, v in STAGE_LINE.findall(err)}
        if "total" not in stages:
            raise BenchError(f"no stage table in the restore's --stats: {err[-300:]!r}")
        new = [p for p in self.daemons if p not in before]
        return wall, stages, (new[0] if new else None)

    def wait_daemon(self, pid: int | None, log: Path, timeout: float) -> LazyFigures:
        """Until the detached daemon has ended, then its --stats from the log file."""
        if pid is not None:
            if not wait_gone(pid, timeout):
                raise BenchError(f"lazy daemon PID {pid} still running after {timeout:.0f} s")
            self.daemons.pop(pid, None)
        return parse_lazy_stats(log.read_text(errors="replace") if log.exists() else "")

    def verify(self, img: Image) -> bool:
        (img.state / "sum").unlink(missing_ok=True)
        if not pid_alive(img.pid):
            return False
        os.kill(img.pid, signal.SIGUSR1)
        wait_reply(img.pid, img.state / "sum", timeout_for(img.size))
        got_pid, got = read_sum(img.state)
        return got_pid == img.pid and got == img.digest

    def kill_restored(self, pid: int) -> None:
        start = self.restored.pop(pid, None)
        if start is not None and starttime(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not wait_gone(pid, 10.0):
            print(f"warning: restored PID {pid} killed but not reaped after 10 s",
                  file=sys.stderr)

    def cleanup_restores(self) -> None:
        for pid in list(self.restored):
            self.kill_restored(pid)
        self.stop_daemons()

    def cleanup(self) -> None:
        self.cleanup_restores()
        for proc in list(self.children):
            self.stop(proc)

    # -- measurements --------------------------------------------------------

    def resume_run(self, img: Image, mode: str, rnd: int, run: Run) -> None:
        tag = f"resume {fmt_size(img.size)} {mode} #{rnd}"
        self.say(tag)
        log = self.log_path() if mode != "eager" else None
        try:
            wall, stages, daemon = self.restore(img, mode, [], log)
            lazy = None
            if log is not None:
                # Idle process: the push brings every page in; then check them.
                lazy = self.wait_daemon(daemon, log, timeout_for(img.size))
            ok = self.verify(img)
            if not ok:
                run.failures.append(f"{tag}: checksum after restore differs")
            run.resumes.append(ResumeResult(img.size, mode, rnd, stages, wall, ok, lazy))
        except BenchError as exc:
            raise BenchError(f"{exc}{log_tail(log)}") from None
        finally:
            self.cleanup_restores()
            if log is not None:
                log.unlink(missing_ok=True)

    def touch_run(self, img: Image, source: str, fault_around: int, read_ahead: int,
                  rnd: int, run: Run) -> None:
        tag = (f"touch {fmt_size(img.size)} {source} fault-around {fault_around} "
               f"read-ahead {read_ahead} #{rnd}")
        self.say(tag)
        log = self.log_path()
        extra = ["--push-delay", f"{self.push_delay:g}", "--read-ahead", str(read_ahead)]
        if fault_around != DEFAULT_FAULT_AROUND:
            extra += ["--fault-around", str(fault_around)]
        try:
            _, _, daemon = self.restore(img, f"lazy {source}", extra, log)
            (img.state / "touch").unlink(missing_ok=True)
            (img.state / "touch-bytes").write_text(str(img.size))
            os.kill(img.pid, signal.SIGUSR2)
            wait_reply(img.pid, img.state / "touch", touch_timeout(img.size, fault_around))
            seconds, pages, _ = (img.state / "touch").read_text().split()
            ok = self.verify(img)
            if not ok:
                run.failures.append(f"{tag}: checksum after restore differs")
            self.kill_restored(img.pid)    # the daemon ends with it and writes its --stats
            lazy = self.wait_daemon(daemon, log, 30.0)
            run.touches.append(TouchResult(img.size, source, fault_around, read_ahead, rnd,
                                           int(pages) * PAGE, float(seconds), ok, lazy))
        except BenchError as exc:
            raise BenchError(f"{exc}{log_tail(log)}") from None
        finally:
            self.cleanup_restores()
            log.unlink(missing_ok=True)


def wait_reply(pid: int, path: Path, timeout: float) -> None:
    """Wait for the restored process to write `path`; fail fast if it dies,
    say where it is stuck if it does not answer."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not pid_alive(pid):
            raise BenchError(f"restored PID {pid} died before writing {path.name}")
        if time.monotonic() > deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = Path(f"/proc/{pid}/wchan").read_text()
            except OSError:
                state, wchan = "?", "?"
            raise BenchError(f"restored PID {pid} wrote no {path.name} within {timeout:.0f} s "
                             f"(state {state}, wchan {wchan or '-'})")
        time.sleep(0.02)


def log_tail(log: Path | None) -> str:
    """The detached daemon's last words, to go with a failure."""
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").strip().splitlines()[-3:]
    return f"; daemon log: {' | '.join(lines)}" if lines else ""


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"


# ---------------------------------------------------------------- report


def med(values: list[float]) -> float:
    return statistics.median(values)


def rng(values: list[float], fmt: str = ".0f") -> str:
    if len(values) < 2:
        return "-"
    return f"{min(values):{fmt}}-{max(values):{fmt}}"


def opt_med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return med(vals) if vals else None


def fmt_opt(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else f"{v:{fmt}}"


def report(run: Run, repeat: int, push_delay: float) -> str:
    lines = [f"lazarus lazy restore benchmark, random data, {repeat} round(s): medians "
             f"(range over rounds); MB = 10^6 bytes", ""]
    raw_mbps = [mbps(r.bytes, r.seconds) for r in run.raws]
    raw = med(raw_mbps) if raw_mbps else None
    if run.raws:
        lines.append(f"baseline: raw loopback TCP, {fmt_size(run.raws[0].bytes)} "
                     f"({len(run.raws)} transfers, 4 MiB sendall/recv_into): "
                     f"{raw:.0f} MB/s ({rng(raw_mbps)})")
    if run.startup_s:
        st = [v * 1000 for v in run.startup_s]
        lines.append(f"baseline: `lazarus restore --help` wall time (interpreter start-up, CLI "
                     f"imports): {med(st):.0f} ms ({rng(st)})")
    lines.append("")
    sizes = sorted({r.size for r in run.resumes})
    lines += ["time to resume, restore -d: pipeline total as --stats shows it (no interpreter "
              "start-up), and the",
              "command's wall time; x eager = eager median / this median; last page = lazy "
              "daemon done with",
              "the process idle (push MB/s = MB fetched / that time)",
              f"{'size':>8} {'mode':>12} {'resume ms':>10} {'range':>9} {'x eager':>8} "
              f"{'wall ms':>8} {'x eager':>8} {'last page ms':>13} {'push MB/s':>10} "
              f"{'checksum':>9}"]
    for size in sizes:
        eager = [r for r in run.resumes if r.size == size and r.mode == "eager"]
        e_tot = med([r.stages_ms["total"] for r in eager]) if eager else None
        e_wall = med([r.wall_s * 1000 for r in eager]) if eager else None
        for mode in MODES:
            rs = [r for r in run.resumes if r.size == size and r.mode == mode]
            if not rs:
                continue
            tot = [r.stages_ms["total"] for r in rs]
            wall = [r.wall_s * 1000 for r in rs]
            last = opt_med([r.lazy.last_page_ms if r.lazy else None for r in rs])
            push = opt_med([r.lazy.fetched_mb / r.lazy.last_page_ms * 1000
                            if r.lazy and r.lazy.last_page_ms else None for r in rs])
            ok = all(r.checksum_ok for r in rs)
            x_tot = f"{e_tot / med(tot):8.1f}" if e_tot else f"{'-':>8}"
            x_wall = f"{e_wall / med(wall):8.2f}" if e_wall else f"{'-':>8}"
            lines.append(f"{fmt_size(size):>8} {mode:>12} {med(tot):10.1f} "
                         f"{rng(tot):>9} {x_tot} {med(wall):8.0f} {x_wall} "
                         f"{fmt_opt(last, '13.0f') if mode != 'eager' else '-':>13} "
                         f"{fmt_opt(push, '10.0f') if mode != 'eager' else '-':>10} "
                         f"{'ok' if ok else 'DIFFERS':>9}")
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        flat = []
        for mode in MODES:
            a = [r.stages_ms["total"] for r in run.resumes if r.size == lo and r.mode == mode]
            b = [r.stages_ms["total"] for r in run.resumes if r.size == hi and r.mode == mode]
            if a and b:
                flat.append(f"{mode} {med(b) / med(a):.2f}")
        lines.append(f"resume time {fmt_size(hi)} / {fmt_size(lo)}: {', '.join(flat)}")

    # Eager "memory" and lazy "lazy-setup" hold the same place in the pipeline: one column.
    stage_names: list[str] = []
    for r in run.resumes:
        for name in r.stages_ms:
            name = MEMORY_COLUMN if name in ("memory", "lazy-setup") else name
            if name not in stage_names and name != "total":
                stage_names.append(name)
    if stage_names:
        lines += ["", "restore stages, median ms (memory: eager page writes; lazy-setup: pages "
                  "of non-lazy VMAs, userfaultfd)",
                  f"{'size':>8} {'mode':>12} " + " ".join(f"{n:>17}" for n in stage_names)
                  + f" {'total':>9}"]
        for size in sizes:
            for mode in MODES:
                rs = [r for r in run.resumes if r.size == size and r.mode == mode]
                if not rs:
                    continue
                cells = []
                for n in stage_names + ["total"]:
                    names = ("memory", "lazy-setup") if n == MEMORY_COLUMN else (n,)
                    vals = [v for r in rs for k, v in r.stages_ms.items() if k in names]
                    width = 9 if n == "total" else 17
                    cells.append(f"{med(vals):{width}.1f}" if vals else f"{'-':>{width}}")
                lines.append(f"{fmt_size(size):>8} {mode:>12} " + " ".join(cells))

    if run.touches:
        lines += ["", f"sequential touch (one byte read per page, in order; push held back "
                  f"{push_delay:g} s, so every page comes",
                  "through the fault path); x raw = MB/s / raw loopback TCP MB/s; latency = "
                  "daemon-side fault service time",
                  "from --stats (all faults of the run, the checksum's included); us/fault = "
                  "touch time / (pages / fault-around),",
                  "the process's mean wait per fault (--stats has no mean; the tail is heavy);",
                  "with read-ahead (ra: largest window, pages; 0 = off) it is the time per "
                  "fault-around of pages, and ra pages = pages the daemon copied ahead",
                  f"{'size':>8} {'source':>7} {'fault-around':>12} {'ra':>5} {'MB':>7} {'s':>7} "
                  f"{'MB/s':>7} {'range':>9} {'x raw':>6} {'faults':>7} {'ra pages':>8} "
                  f"{'p50 ms':>7} {'p99 ms':>7} {'us/fault':>9} {'checksum':>9}"]
        keys = sorted({(t.size, t.source, t.fault_around, t.read_ahead) for t in run.touches},
                      key=lambda k: (-k[0], SOURCES.index(k[1]), -k[2], -k[3]))
        for size, source, fa, ra in keys:
            ts = [t for t in run.touches if (t.size, t.source, t.fault_around, t.read_ahead) ==
                  (size, source, fa, ra)]
            speeds = [mbps(t.bytes, t.seconds) for t in ts]
            x_raw = f"{med(speeds) / raw:6.2f}" if raw else f"{'-':>6}"
            per_fault = med([t.seconds / -(-t.bytes // (PAGE * fa)) * 1e6 for t in ts])
            faults = med([float(t.lazy.faults) for t in ts if t.lazy] or [0.0])
            ra_pages = med([float(t.lazy.pages_readahead) for t in ts if t.lazy] or [0.0])
            p50 = opt_med([t.lazy.p50_ms if t.lazy else None for t in ts])
            p99 = opt_med([t.lazy.p99_ms if t.lazy else None for t in ts])
            ok = all(t.checksum_ok for t in ts)
            lines.append(f"{fmt_size(size):>8} {source:>7} {fa:>12} {ra:>5} "
                         f"{ts[0].bytes / 1e6:7.1f} "
                         f"{med([t.seconds for t in ts]):7.3f} {med(speeds):7.0f} "
                         f"{rng(speeds):>9} {x_raw} {faults:7.0f} {ra_pages:8.0f} "
                         f"{fmt_opt(p50, '7.2f'):>7} "
                         f"{fmt_opt(p99, '7.2f'):>7} {per_fault:9.0f} "
                         f"{'ok' if ok else 'DIFFERS':>9}")
    if run.failures:
        lines += ["", "FAILURES:"] + [f"  {f}" for f in run.failures]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def one_round(bench: Bench, images: list[Image], rnd: int, run: Run,
              skip_touch: bool) -> None:
    for _ in range(3):
        run.startup_s.append(bench.startup())
    for img in images:
        shift = (rnd - 1) % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            try:
                bench.resume_run(img, mode, rnd, run)
            except BenchError as exc:
                run.failures.append(f"resume {fmt_size(img.size)} {mode} #{rnd}: {exc}")
    if skip_touch:
        return
    big, small = images[-1], images[0]
    bench.say(f"raw loopback TCP, {fmt_size(big.size)} x {RAW_ROUNDS}")
    for _ in range(RAW_ROUNDS):
        run.raws.append(RawResult(rnd, big.size, bench.raw_tcp(big.size)))
    # Read-ahead on (the default) and off at the largest size, for the
    # comparison in the same run; the fault-around 1 latency run without it,
    # so that every page is one fault.
    cases = [(big, DEFAULT_FAULT_AROUND, DEFAULT_READ_AHEAD), (big, DEFAULT_FAULT_AROUND, 0)]
    if small is not big:
        cases.append((small, DEFAULT_FAULT_AROUND, DEFAULT_READ_AHEAD))
    cases.append((small, 1, 0))
    sources = SOURCES if rnd % 2 else SOURCES[::-1]
    for img, fa, ra in cases:
        for source in sources:
            try:
                bench.touch_run(img, source, fa, ra, rnd, run)
            except BenchError as exc:
                run.failures.append(f"touch {fmt_size(img.size)} {source} fault-around {fa} "
                                    f"read-ahead {ra} #{rnd}: {exc}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_lazy",
                                description="Benchmark lazy against eager restore.")
    p.add_argument("--sizes", default="64M,1G",
                   help="comma-separated sizes (default 64M,1G); the sequential touch uses the "
                        "largest, the fault-around 1 latency run the smallest")
    p.add_argument("--repeat", type=int, default=1, help="rounds; medians and ranges are shown")
    p.add_argument("--push-delay", type=float, default=3600.0,
                   help="seconds the background push is held back in touch runs (default 3600)")
    p.add_argument("--no-touch", action="store_true", help="time to resume only")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    sizes = sorted({parse_size(s) for s in a.sizes.split(",") if s.strip()})
    if not sizes:
        p.error("no sizes")
    signal.signal(signal.SIGTERM, on_sigterm)   # clean up on kill as on ^C
    run = Run()
    root = Path(tempfile.mkdtemp(prefix="lazarus-bench-lazy-"))
    bench = Bench(root, not a.quiet, a.push_delay)
    try:
        images = []
        for size in sizes:
            images.append(bench.make_image(size))
        bench.start_pageserver()
        if not a.no_touch:
            bench.start_raw_sender()
        for rnd in range(1, a.repeat + 1):
            one_round(bench, images, rnd, run, a.no_touch)
    except BenchError as exc:
        run.failures.append(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    print(report(run, a.repeat, a.push_delay))
    if a.json:
        print(json.dumps(asdict(run), indent=2))
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
