"""Benchmark: dump and restore of process trees and of a many-threaded process.

    .venv/bin/python -m perf.bench_trees [--repeat N] [--lazy-size 100M] [--json]

1. Trees: a Python root forks N-1 children (N = 1, 10, 50) that sleep, and
   one process with 64 threads waiting on a condition variable. Per round and
   shape: start it, `lazarus dump --stats` (the tree is killed), `lazarus
   restore -d --stats`, check the tree is back, kill it. Figures: the dump's
   `freeze` (every thread of every process stopped) and `total`, the restore's
   `total`, from --stats (no interpreter start-up); baseline: the time the
   root took to fork the same tree (or to start the same threads) in the same
   round.
2. Lazy tree: a root forks 9 children, then every process (root included)
   fills its own 100 MiB with random data after the fork. Dumped once; per
   round it is restored eagerly and lazily (`--lazy -d --log-file`), the order
   alternating. Lazy: time to resume, and the daemon's time to last page with
   the processes idle. Baseline: a raw memcpy of the same bytes in this run.

A restored tree must have the same PIDs, the same parents, the same thread
IDs, and every process (and thread) must answer SIGUSR1 with its PID, parent,
the sha256 of its data (the same as before the dump) and the IDs of the
threads that woke up. Nothing here asserts a speed: the exit status is
non-zero only if a command failed or a check differed.

The benchmark makes itself a child subreaper, so the processes it dumps and
restores are reparented to it and reaped at once: otherwise a restore right
after a dump waits (in its `create` stage) until PID 1 has reaped the dumped
tree, which on the VMs here takes 1-2 s.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perf.bench_dump_restore import (
    BenchError,
    fmt_size,
    measure_baseline,
    parse_size,
    pid_alive,
)
from perf.bench_lazy import (
    RESTORED_PID,
    STAGE_LINE,
    LazyFigures,
    last_line,
    log_tail,
    med,
    parse_lazy_stats,
    rng,
    session_members,
)
from perf.harness import Children, starttime, wait_gone

MiB = 1 << 20
PR_SET_CHILD_SUBREAPER = 36
# (label, processes, extra threads in the root)
SHAPES = (("1 process", 1, 0), ("10 processes", 10, 0), ("50 processes", 50, 0),
          ("64 threads", 1, 64))
LAZY_PROCS = 10
LAZY_MODES = ("eager", "lazy")
DUMP_LINE = re.compile(r"^dump of PID \d+ \((\d+) process\(es\)\): ([\d.]+) MB of pages, "
                       r"([\d.]+) MB stored", re.M)
RESTORED_COUNT = re.compile(r"^restored PID \d+ \((\d+) process\(es\)\)", re.M)

# The workload: argv = processes, threads, bytes per process, state dir.
# The root forks processes-1 children (each reports on a pipe that it runs)
# and writes `fork` (seconds from the first fork until every child ran); then
# every process fills its own buffer with random data. With threads, the root
# starts them (writing `spawn`: seconds for all the Thread.start() calls); they
# wait on a condition variable. On SIGUSR1 (and once at start) each process
# wakes its threads, waits (bounded) until each has answered, and writes
# hb-PID: "PID PPID sha256-or-- TIDS-that-answered-or--".
WORKLOAD = r"""
import hashlib, os, signal, sys, threading, time
nproc, nthreads, size, state = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def put(name, text):
    tmp = os.path.join(state, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(state, name))
buf = None
cond = threading.Condition()
gen = 0
answered = set()
def worker():
    seen = 0
    with cond:
        while True:
            while gen == seen:
                cond.wait()
            seen = gen
            answered.add(threading.get_native_id())
            cond.notify_all()
def heartbeat(*_):
    global gen
    tids = "-"
    if nthreads:
        with cond:
            gen += 1
            answered.clear()
            cond.notify_all()
            deadline = time.monotonic() + 20
            while len(answered) < nthreads and time.monotonic() < deadline:
                cond.wait(0.1)
            tids = ",".join(map(str, sorted(answered))) or "-"
    digest = hashlib.sha256(buf).hexdigest() if buf is not None else "-"
    put(f"hb-{os.getpid()}", f"{os.getpid()} {os.getppid()} {digest} {tids}\n")
signal.signal(signal.SIGUSR1, heartbeat)
root = True
r, w = os.pipe()
t0 = time.perf_counter()
for _ in range(nproc - 1):
    if os.fork() == 0:
        root = False
        os.close(r)
        os.write(w, b"x")
        os.close(w)
        break
if root:
    os.close(w)
    got = 0
    while got < nproc - 1:
        chunk = os.read(r, nproc - 1 - got)
        if not chunk:
            break
        got += len(chunk)
    forked = time.perf_counter() - t0
    os.close(r)
    put("fork", f"{forked!r} {got}\n")
if size:
    data = bytearray(size)
    for off in range(0, size, 16 << 20):
        n = min(16 << 20, size - off)
        data[off:off + n] = os.urandom(n)
    buf = data
if nthreads:
    t0 = time.perf_counter()
    for _ in range(nthreads):
        threading.Thread(target=worker, daemon=True).start()
    put("spawn", f"{time.perf_counter() - t0!r} {nthreads}\n")
heartbeat()
while True:
    time.sleep(3600)
"""


# ---------------------------------------------------------------- results


@dataclass
class Member:
    pid: int
    ppid: int
    digest: str
    tids: str           # comma-separated TIDs of the threads that answered, or "-"


@dataclass
class TreeResult:
    shape: str
    procs: int
    tasks: int                      # threads in all, every process's main thread included
    round: int
    create_s: float                 # baseline: fork the tree / start the threads
    pages_mb: float
    pss_before_mb: float            # the tree's memory before the dump and after the restore
    pss_after_mb: float
    dump_ms: dict[str, float]       # dump stages, "total" included
    restore_ms: dict[str, float]    # restore stages, "total" included
    dump_wall_s: float
    restore_wall_s: float
    ok: bool


@dataclass
class LazyResult:
    mode: str
    round: int
    pss_mb: float                   # the tree's, after the restore (lazy: daemon done)
    restore_ms: dict[str, float]
    wall_s: float
    ok: bool
    lazy: LazyFigures | None


@dataclass
class Run:
    trees: list[TreeResult] = field(default_factory=list)
    lazy_size: int = 0
    lazy_fork_s: float = 0.0
    lazy_fill_s: float = 0.0
    lazy_pages_mb: float = 0.0
    lazy_pss_mb: float = 0.0                # the tree's, before the dump
    lazy_dump_ms: dict[str, float] = field(default_factory=dict)
    memcpy_mbps: float = 0.0
    fresh_copy_mbps: float = 0.0
    lazies: list[LazyResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Tree:
    """A running workload tree, as it reported itself before the dump."""
    state: Path
    root: int
    members: dict[int, Member]
    tasks: dict[int, set[int]]      # PID -> its TIDs (/proc/PID/task)
    create_s: float
    pss_mb: float


# ---------------------------------------------------------------- helpers


def set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def task_ids(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except (FileNotFoundError, ProcessLookupError):
        return set()


def pss_mb(pids: list[int]) -> float:
    """Sum of the proportional set sizes of the processes, MB (shared pages split)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e6


def read_member(path: Path) -> Member:
    pid, ppid, digest, tids = path.read_text().split()
    return Member(int(pid), int(ppid), digest, tids)


def stages_of(text: str) -> dict[str, float]:
    stages = {name: float(v) for name, v in STAGE_LINE.findall(text)}
    if "total" not in stages:
        raise BenchError(f"no stage table in --stats: {text[-300:]!r}")
    return stages


def tree_timeout(procs: int, size: int) -> float:
    # generous: a busy 2-CPU host; ~20 MB/s worst case for the data, 1 s per process
    return 60.0 + procs * (1.0 + size / (20 * MiB))


# ---------------------------------------------------------------- the bench


class Bench(Children):
    def __init__(self, root: Path, verbose: bool) -> None:
        super().__init__(verbose)
        self.root = root
        self.workload_py = root / "workload.py"
        self.workload_py.write_text(WORKLOAD)
        self.tracked: dict[int, int | None] = {}   # other PIDs we may kill: PID -> start time
        self.serial = 0

    def kill_tracked(self, pids: list[int] | None = None) -> None:
        """SIGKILL tracked PIDs still held by the process we saw (same start
        time), then reap them all."""
        pids = list(self.tracked) if pids is None else pids
        for pid in pids:
            start = self.tracked.get(pid)
            if start is not None and starttime(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in pids:
            if not wait_gone(pid, 10.0):
                print(f"warning: PID {pid} killed but still there after 10 s", file=sys.stderr)
            self.tracked.pop(pid, None)

    def cleanup(self) -> None:
        for proc in list(self.children):
            self.stop(proc, gently=False)
        self.kill_tracked()
        self.stop_daemons()

    # -- workload ------------------------------------------------------------

    def is_workload(self, pid: int) -> bool:
        """PID runs our workload script (its path is in our own temporary directory)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            return False
        return str(self.workload_py).encode() in argv

    def start_tree(self, tag: str, procs: int, threads: int, size: int) -> Tree:
        self.serial += 1
        state = self.root / f"state-{self.serial}"
        state.mkdir()
        proc = self.spawn([sys.executable, str(self.workload_py), str(procs), str(threads),
                           str(size), str(state)])
        deadline = time.monotonic() + tree_timeout(procs, size)
        while len(list(state.glob("hb-*"))) < procs:
            if proc.poll() is not None:
                raise BenchError(f"{tag}: workload exited ({proc.returncode}) before it was "
                                 "ready")
            if time.monotonic() > deadline:
                raise BenchError(f"{tag}: workload not ready within "
                                 f"{tree_timeout(procs, size):.0f} s")
            time.sleep(0.02)
        members = {m.pid: m for m in (read_member(p) for p in state.glob("hb-*"))}
        for pid in members:
            if pid != proc.pid and self.is_workload(pid):
                self.tracked[pid] = starttime(pid)
        if proc.pid not in members:
            raise BenchError(f"{tag}: the root PID {proc.pid} did not report")
        bad = [m.pid for m in members.values() if m.pid != proc.pid and m.ppid != proc.pid]
        if bad:
            raise BenchError(f"{tag}: processes {bad} are not children of the root")
        if threads:
            create_s = float((state / "spawn").read_text().split()[0])
            answered = members[proc.pid].tids.split(",")
            if len(answered) != threads:
                raise BenchError(f"{tag}: {len(answered)} of {threads} threads answered")
        else:
            create_s = float((state / "fork").read_text().split()[0])
        tasks = {pid: task_ids(pid) for pid in members}
        return Tree(state, proc.pid, members, tasks, create_s, pss_mb(list(members)))

    def lazarus(self, args: list[str], timeout: float) -> tuple[int, float, str]:
        """Run `lazarus ARGS`; returns (exit status, wall seconds, stderr)."""
        self.serial += 1
        err = self.root / f"cmd-{self.serial}.err"
        t0 = time.perf_counter()
        proc = self.spawn([sys.executable, "-m", "core.cli", *args], err=err)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in session_members(proc.pid):
                if pid != proc.pid:
                    self.daemons[pid] = starttime(pid)
            self.stop(proc, gently=False)
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

    def dump(self, tag: str, tree: Tree, images: Path,
             timeout: float) -> tuple[dict[str, float], float, float]:
        """Dump the tree (which is killed); returns (stage ms, wall s, pages MB)."""
        rc, wall, err = self.lazarus(["dump", "-t", str(tree.root), "-D", str(images),
                                      "--stats"], timeout)
        if rc != 0:
            raise BenchError(f"{tag}: dump failed ({rc}): {last_line(err)}")
        m = DUMP_LINE.search(err)
        if not m:
            raise BenchError(f"{tag}: no summary line in the dump's --stats: {err[-300:]!r}")
        if int(m[1]) != len(tree.members):
            raise BenchError(f"{tag}: dump saw {m[1]} processes, the tree has "
                             f"{len(tree.members)}")
        for proc in list(self.children):
            if proc.pid == tree.root:
                try:
                    proc.wait(10)      # the dump kills it; we are its parent
                except subprocess.TimeoutExpired:
                    raise BenchError(f"{tag}: dumped root {tree.root} still there after the "
                                     "dump") from None
                self.children.remove(proc)
        # Its children were reparented to us (a subreaper): free their PIDs now.
        self.kill_tracked([p for p in tree.members if p != tree.root])
        return stages_of(err), wall, float(m[2])

    def restore(self, tag: str, tree: Tree, images: Path, extra: list[str],
                timeout: float) -> tuple[dict[str, float], float, int | None]:
        """restore -d --stats; returns (stage ms, wall s, lazy daemon PID or None)."""
        before = set(self.daemons)
        try:
            rc, wall, err = self.lazarus(["restore", "-D", str(images), "-d", "--stats",
                                          *extra], timeout)
        finally:
            # Ours to kill from now on, whatever happened: the tree's PIDs that run
            # our workload (not some other process that took a PID meanwhile).
            for pid in tree.members:
                if self.is_workload(pid):
                    self.tracked[pid] = starttime(pid)
        if rc != 0:
            raise BenchError(f"{tag}: restore failed ({rc}): {last_line(err)}")
        m, n = RESTORED_PID.search(err), RESTORED_COUNT.search(err)
        if not m or int(m[1]) != tree.root:
            raise BenchError(f"{tag}: restored as PID {m[1] if m else '?'}, not {tree.root}")
        if not n or int(n[1]) != len(tree.members):
            raise BenchError(f"{tag}: restored {n[1] if n else '?'} processes, not "
                             f"{len(tree.members)}")
        new = [p for p in self.daemons if p not in before]
        return stages_of(err), wall, (new[0] if new else None)

    def wait_daemon(self, tag: str, pid: int | None, log: Path, timeout: float) -> LazyFigures:
        """Until the detached daemon has ended, then its --stats from the log file."""
        if pid is not None:
            if not wait_gone(pid, timeout):
                raise BenchError(f"{tag}: lazy daemon PID {pid} still running after "
                                 f"{timeout:.0f} s")
            self.daemons.pop(pid, None)
        return parse_lazy_stats(log.read_text(errors="replace") if log.exists() else "")

    def verify(self, tag: str, tree: Tree, timeout: float) -> list[str]:
        """What differs in the restored tree from the tree before the dump
        (/proc: PIDs, parents, TIDs; then each process's answer to SIGUSR1)."""
        problems = []
        for pid, m in tree.members.items():
            if not pid_alive(pid):
                problems.append(f"PID {pid} is not running")
                continue
            if pid != tree.root and ppid_of(pid) != m.ppid:
                problems.append(f"PID {pid} has parent {ppid_of(pid)}, not {m.ppid}")
            if task_ids(pid) != tree.tasks[pid]:
                problems.append(f"PID {pid} has {len(task_ids(pid))} threads "
                                f"({len(task_ids(pid) - tree.tasks[pid])} new TIDs), "
                                f"not {len(tree.tasks[pid])}")
        if problems:
            return problems
        for pid in tree.members:
            (tree.state / f"hb-{pid}").unlink(missing_ok=True)
            os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        waiting = set(tree.members)
        while waiting:
            waiting = {p for p in waiting if not (tree.state / f"hb-{p}").exists()}
            dead = [p for p in waiting if not pid_alive(p)]
            if dead:
                return [f"PID {p} died before answering SIGUSR1" for p in dead]
            if waiting and time.monotonic() > deadline:
                return [f"PIDs {sorted(waiting)[:5]} (of {len(waiting)}) did not answer SIGUSR1 "
                        f"within {timeout:.0f} s"]
            time.sleep(0.01)
        for pid, m in tree.members.items():
            got = read_member(tree.state / f"hb-{pid}")
            if pid != tree.root and got.ppid != m.ppid:
                problems.append(f"PID {pid} says its parent is {got.ppid}, not {m.ppid}")
            if got.digest != m.digest:
                problems.append(f"PID {pid}: sha256 of its data differs")
            if got.tids != m.tids:
                problems.append(f"PID {pid}: threads that answered {got.tids[:60]} differ "
                                f"from before the dump")
        return problems

    # -- measurements --------------------------------------------------------

    def tree_round(self, shape: str, procs: int, threads: int, rnd: int, run: Run) -> None:
        tag = f"{shape} #{rnd}"
        self.say(tag)
        timeout = tree_timeout(procs, 0) + threads
        tree = self.start_tree(tag, procs, threads, 0)
        images = self.root / f"img-{self.serial}"
        try:
            dump_ms, dump_wall, pages = self.dump(tag, tree, images, timeout)
            restore_ms, restore_wall, _ = self.restore(tag, tree, images, [], timeout)
            problems = self.verify(tag, tree, timeout)
            run.failures += [f"{tag}: {p}" for p in problems]
            run.trees.append(TreeResult(shape, procs, sum(len(t) for t in tree.tasks.values()),
                                        rnd, tree.create_s, pages, tree.pss_mb,
                                        pss_mb(list(tree.members)), dump_ms, restore_ms,
                                        dump_wall, restore_wall, not problems))
        finally:
            self.kill_tracked()
            shutil.rmtree(images, ignore_errors=True)
            shutil.rmtree(tree.state, ignore_errors=True)

    def lazy_setup(self, size: int, run: Run) -> tuple[Tree, Path]:
        tag = f"lazy tree {LAZY_PROCS} x {fmt_size(size)}"
        self.say(f"{tag}: starting and filling")
        t0 = time.perf_counter()
        tree = self.start_tree(tag, LAZY_PROCS, 0, size)
        run.lazy_fill_s = time.perf_counter() - t0
        run.lazy_fork_s = tree.create_s
        run.lazy_pss_mb = tree.pss_mb
        images = self.root / "img-lazy"
        self.say(f"{tag}: dumping")
        run.lazy_dump_ms, _, run.lazy_pages_mb = self.dump(
            tag, tree, images, tree_timeout(LAZY_PROCS, size))
        return tree, images

    def lazy_round(self, tree: Tree, images: Path, size: int, mode: str, rnd: int,
                   run: Run) -> None:
        tag = f"lazy tree {mode} #{rnd}"
        self.say(tag)
        timeout = tree_timeout(LAZY_PROCS, size)
        self.serial += 1
        log = self.root / f"lazy-{self.serial}.log"
        extra = ["--lazy", "--log-file", str(log)] if mode == "lazy" else []
        try:
            stages, wall, daemon = self.restore(tag, tree, images, extra, timeout)
            lazy = None
            if mode == "lazy":
                # Processes idle: the push brings every page in; then check them.
                lazy = self.wait_daemon(tag, daemon, log, timeout)
            problems = self.verify(tag, tree, timeout)
            run.failures += [f"{tag}: {p}" for p in problems]
            run.lazies.append(LazyResult(mode, rnd, pss_mb(list(tree.members)), stages, wall,
                                         not problems, lazy))
        except BenchError as exc:
            raise BenchError(f"{exc}{log_tail(log)}") from None
        finally:
            self.kill_tracked()
            self.stop_daemons()
            log.unlink(missing_ok=True)


# ---------------------------------------------------------------- report


def cell(values: list[float], fmt: str = "8.1f") -> str:
    return f"{med(values):{fmt}}" if values else f"{'-':>{fmt.split('.')[0]}}"


def slope(small: list[float], big: list[float], units: int) -> float | None:
    """Median cost per extra unit between two shapes (a crude marginal cost)."""
    if not small or not big or units <= 0:
        return None
    return (med(big) - med(small)) / units


def report(run: Run, repeat: int) -> str:
    lines = [f"lazarus process-tree benchmark, {repeat} round(s): medians (range over rounds); "
             "ms from --stats", "(the pipeline's own times, no interpreter start-up); "
             "MB = 10^6 bytes", ""]
    shapes = [s for s in SHAPES if any(t.shape == s[0] for t in run.trees)]
    if shapes:
        lines += ["dump (tree killed after it) and restore -d; create = the root forking the "
                  "same tree (until every",
                  "child ran) or starting the same threads, in the same round; "
                  "x create = restore total / create",
                  "PSS = the tree's proportional set size before the dump / after the "
                  "restore (pages shared after a fork",
                  "count once in it); check = same PIDs, parents and TIDs, every process and "
                  "thread answering",
                  f"{'tree':>13} {'procs':>5} {'tasks':>5} {'pages MB':>8} {'PSS MB':>11} "
                  f"{'freeze ms':>9} {'range':>9} {'dump ms':>8} {'range':>9} "
                  f"{'restore ms':>10} {'range':>11} {'create ms':>9} {'x create':>8} "
                  f"{'check':>6}"]
        for label, _, _ in shapes:
            ts = [t for t in run.trees if t.shape == label]
            fr = [t.dump_ms["freeze"] for t in ts]
            dt = [t.dump_ms["total"] for t in ts]
            rt = [t.restore_ms["total"] for t in ts]
            cr = [t.create_s * 1000 for t in ts]
            pss = (f"{med([t.pss_before_mb for t in ts]):.0f}/"
                   f"{med([t.pss_after_mb for t in ts]):.0f}")
            # one process forks nothing: no baseline to compare with
            xc = f"{med(rt) / med(cr):8.0f}" if ts[0].tasks > 1 else f"{'-':>8}"
            lines.append(f"{label:>13} {ts[0].procs:5d} {ts[0].tasks:5d} "
                         f"{med([t.pages_mb for t in ts]):8.1f} {pss:>11} {med(fr):9.1f} "
                         f"{rng(fr, '.1f'):>9} {med(dt):8.0f} {rng(dt):>9} {med(rt):10.0f} "
                         f"{rng(rt):>11} {med(cr):9.2f} {xc} "
                         f"{'ok' if all(t.ok for t in ts) else 'FAILED':>6}")

        def col(label: str, get: str, stage: str) -> list[float]:
            return [getattr(t, get)[stage] for t in run.trees
                    if t.shape == label and stage in getattr(t, get)]

        lines += ["", "cost per extra process (1 -> 50 processes) and per extra thread "
                  "(1 process -> 64 threads), ms:"]
        for what, get, stage in (("freeze", "dump_ms", "freeze"), ("dump", "dump_ms", "total"),
                                 ("restore", "restore_ms", "total")):
            per_p = slope(col("1 process", get, stage), col("50 processes", get, stage), 49)
            per_t = slope(col("1 process", get, stage), col("64 threads", get, stage), 64)
            lines.append(f"  {what:>8}: per process "
                         f"{'-' if per_p is None else f'{per_p:6.2f}'}, per thread "
                         f"{'-' if per_t is None else f'{per_t:6.2f}'}")
        cp = slope([t.create_s * 1000 for t in run.trees if t.shape == "1 process"],
                   [t.create_s * 1000 for t in run.trees if t.shape == "50 processes"], 49)
        ct = med([t.create_s * 1000 / 64 for t in run.trees if t.shape == "64 threads"] or [0])
        lines.append(f"  baseline: fork per process {'-' if cp is None else f'{cp:6.3f}'}, "
                     f"Thread.start() per thread {ct:6.3f}")

        for title, get in (("dump", "dump_ms"), ("restore", "restore_ms")):
            names: list[str] = []
            for t in run.trees:
                for n in getattr(t, get):
                    if n not in names and n != "total":
                        names.append(n)
            width = max(9, *(len(n) for n in names))
            lines += ["", f"{title} stages, median ms",
                      f"{'tree':>13} " + " ".join(f"{n:>{width}}" for n in names + ["total"])]
            for label, _, _ in shapes:
                cells = [cell(col(label, get, n), f"{width}.1f") for n in names + ["total"]]
                lines.append(f"{label:>13} " + " ".join(cells))

    if run.lazies:
        total_mb = LAZY_PROCS * run.lazy_size / 1e6
        copy_ms = total_mb / run.memcpy_mbps * 1000 if run.memcpy_mbps else 0.0
        fresh_ms = total_mb / run.fresh_copy_mbps * 1000 if run.fresh_copy_mbps else 0.0
        lines += ["", f"lazy tree: {LAZY_PROCS} processes x {fmt_size(run.lazy_size)} random "
                  f"data each (filled after the fork), {run.lazy_pages_mb:.1f} MB of pages; "
                  "dumped once",
                  f"  dump: freeze {run.lazy_dump_ms.get('freeze', 0):.1f} ms, total "
                  f"{run.lazy_dump_ms.get('total', 0):.0f} ms; fork of the tree "
                  f"{run.lazy_fork_s * 1000:.2f} ms; PSS before the dump "
                  f"{run.lazy_pss_mb:.0f} MB",
                  f"  baseline: memcpy of {total_mb:.0f} MB {copy_ms:.0f} ms "
                  f"({run.memcpy_mbps:.0f} MB/s, best of 3); copy into fresh memory "
                  f"{fresh_ms:.0f} ms ({run.fresh_copy_mbps:.0f} MB/s)",
                  "  resume = restore total (--stats); x eager = eager median / this median; "
                  "last page = lazy daemon done",
                  "  with the processes idle; x memcpy = memcpy time / time until every page "
                  "is in (eager: resume,",
                  "  lazy: last page); PSS after the restore (lazy: daemon done); check: "
                  "PIDs, parents, every sha256",
                  f"  {'mode':>6} {'resume ms':>10} {'range':>11} {'x eager':>8} "
                  f"{'wall ms':>8} {'last page ms':>13} {'range':>11} {'push MB/s':>10} "
                  f"{'x memcpy':>9} {'PSS MB':>7} {'check':>6}"]
        eager = [r.restore_ms["total"] for r in run.lazies if r.mode == "eager"]
        for mode in LAZY_MODES:
            rs = [r for r in run.lazies if r.mode == mode]
            if not rs:
                continue
            tot = [r.restore_ms["total"] for r in rs]
            wall = [r.wall_s * 1000 for r in rs]
            last = [r.lazy.last_page_ms for r in rs if r.lazy and r.lazy.last_page_ms]
            push = [r.lazy.fetched_mb / r.lazy.last_page_ms * 1000 for r in rs
                    if r.lazy and r.lazy.last_page_ms]
            # x memcpy: the time until every page is in (eager: resume; lazy: last
            # page) against a memcpy of the same bytes
            done = tot if mode == "eager" else last
            xm = f"{copy_ms / med(done):9.3f}" if done and copy_ms else f"{'-':>9}"
            lines.append(f"  {mode:>6} {med(tot):10.1f} {rng(tot):>11} "
                         f"{(med(eager) / med(tot) if eager else 0):8.1f} {med(wall):8.0f} "
                         f"{cell(last, '13.0f') if mode == 'lazy' else '-':>13} "
                         f"{rng(last) if mode == 'lazy' else '-':>11} "
                         f"{cell(push, '10.0f') if mode == 'lazy' else '-':>10} {xm} "
                         f"{med([r.pss_mb for r in rs]):7.0f} "
                         f"{'ok' if all(r.ok for r in rs) else 'FAILED':>6}")
        names = []
        for r in run.lazies:
            for n in r.restore_ms:
                n = "memory|lazy-setup" if n in ("memory", "lazy-setup") else n
                if n not in names and n != "total":
                    names.append(n)
        lines += ["  restore stages, median ms",
                  f"  {'mode':>6} " + " ".join(f"{n:>9}" for n in names + ["total"])]
        for mode in LAZY_MODES:
            rs = [r for r in run.lazies if r.mode == mode]
            cells = []
            for n in names + ["total"]:
                keys = ("memory", "lazy-setup") if n == "memory|lazy-setup" else (n,)
                vals = [v for r in rs for k, v in r.restore_ms.items() if k in keys]
                cells.append(cell(vals, f"{max(9, len(n))}.1f"))
            if rs:
                lines.append(f"  {mode:>6} " + " ".join(cells))
        lz = [r.lazy for r in run.lazies if r.lazy]
        if lz:
            lines.append(f"  lazy daemon: faults {med([float(x.faults) for x in lz]):.0f}, "
                         f"pages pushed {med([float(x.pages_pushed) for x in lz]):.0f}, "
                         f"fetched {med([x.fetched_mb for x in lz]):.1f} MB (medians)")
    if run.failures:
        lines += ["", "FAILURES:"] + [f"  {f}" for f in run.failures]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_trees",
                                description="Benchmark dump and restore of process trees.")
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds (default 3); medians and ranges are shown")
    p.add_argument("--lazy-size", default="100M",
                   help="data per process of the 10-process lazy tree (default 100M)")
    p.add_argument("--no-lazy", action="store_true", help="skip the lazy tree")
    p.add_argument("--no-trees", action="store_true", help="skip the small trees")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    size = parse_size(a.lazy_size)
    signal.signal(signal.SIGTERM, on_sigterm)   # clean up on kill as on ^C
    run = Run(lazy_size=size)
    root = Path(tempfile.mkdtemp(prefix="lazarus-bench-trees-"))
    bench = Bench(root, not a.quiet)
    try:
        set_subreaper()
        if not a.no_trees:
            for rnd in range(1, a.repeat + 1):
                order = SHAPES if rnd % 2 else SHAPES[::-1]
                for label, procs, threads in order:
                    try:
                        bench.tree_round(label, procs, threads, rnd, run)
                    except BenchError as exc:
                        run.failures.append(str(exc))
                        bench.cleanup()
        if not a.no_lazy:
            bench.say(f"memcpy baseline, {fmt_size(LAZY_PROCS * size)}")
            base = measure_baseline(LAZY_PROCS * size)
            run.memcpy_mbps, run.fresh_copy_mbps = base.memcpy_mbps, base.fresh_copy_mbps
            tree, images = bench.lazy_setup(size, run)
            for rnd in range(1, a.repeat + 1):
                for mode in LAZY_MODES if rnd % 2 else LAZY_MODES[::-1]:
                    try:
                        bench.lazy_round(tree, images, size, mode, rnd, run)
                    except BenchError as exc:
                        run.failures.append(str(exc))
                        bench.cleanup()
    except BenchError as exc:
        run.failures.append(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    print(report(run, a.repeat))
    if a.json:
        print(json.dumps(asdict(run), indent=2))
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
