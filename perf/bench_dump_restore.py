"""Benchmark: eager dump and restore of a process holding N bytes of data.

    .venv/bin/python -m perf.bench_dump_restore [--sizes 64M,1G] [--repeat N]
                                                [--data random|half] [--json]

For each size a Python workload fills a bytearray of that size (random data
by default: incompressible, the worst case for lz4; `--data half` makes each
64-byte record half random, half constant, which lz4 compresses to ~60 %),
computes its sha256 and waits. It is dumped (`--compress lz4` and `none`, the
target is killed), then restored (`-d`) once per page write method
(`procmem`: pwrite to /proc/PID/mem, `vmwritev`: process_vm_writev). After
each restore the process recomputes its checksum on SIGUSR1 and the
benchmark compares it with the one from before the dump.

Dump and restore run in a child interpreter that calls the lazarus API and
prints its per-stage stats as JSON, so the figures are the pipeline's own
(no interpreter start-up in them). Speeds are shown next to a raw memory copy
of the same size measured in the same run; nothing here asserts a speed. The
exit status is non-zero only if a dump or restore failed or a checksum differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
COMPRESSIONS = ("lz4", "none")
WRITE_METHODS = ("procmem", "vmwritev")
FILL_CHUNK = 16 * MiB

# The workload: argv = size, data kind, state dir. It writes `sum` (sha256 of
# its buffer, atomically) at start and again on every SIGUSR1, and `ready` once.
WORKLOAD = r"""
import hashlib, os, signal, sys, time
size, kind, state = int(sys.argv[1]), sys.argv[2], sys.argv[3]
buf = bytearray(size)
chunk = 16 << 20
for off in range(0, size, chunk):
    n = min(chunk, size - off)
    if kind == "random":
        buf[off:off + n] = os.urandom(n)
    else:  # half: 64-byte records, 32 random bytes then 32 constant ones
        rnd = os.urandom(n // 2)
        rec = bytearray(n)
        view = memoryview(rec)
        for i in range(32):
            view[i::64] = rnd[i::32]
        for i in range(32, 64):
            view[i::64] = bytes([0x41 + i % 26]) * len(view[i::64])
        buf[off:off + n] = rec
        view.release()
        del rnd, rec, view
def publish(*_):
    digest = hashlib.sha256(buf).hexdigest()
    tmp = os.path.join(state, "sum.tmp")
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {digest}\n")
    os.rename(tmp, os.path.join(state, "sum"))
signal.signal(signal.SIGUSR1, publish)
publish()
open(os.path.join(state, "ready"), "w").close()
while True:
    time.sleep(3600)
"""


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def fmt_size(n: int) -> str:
    if n >= 1 << 30 and n % (1 << 30) == 0:
        return f"{n >> 30} GiB"
    return f"{n / MiB:.0f} MiB"


# ---------------------------------------------------------------- worker side


def worker_main(argv: list[str]) -> int:
    """Run one dump or restore through the API and print its stats as JSON."""
    from core.cli import run_async

    p = argparse.ArgumentParser(prog="bench worker")
    p.add_argument("op", choices=("dump", "restore"))
    p.add_argument("--dir", required=True)
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--compress", default="lz4")
    p.add_argument("--write-method", default="procmem")
    a = p.parse_args(argv)
    out: dict[str, Any] = {}
    if a.op == "dump":
        from core.dump import DumpOptions, dump

        dctx, stats = run_async(dump(DumpOptions(pid=a.pid, images_dir=Path(a.dir),
                                                 compress=a.compress == "lz4")))
        out["pages_bytes"] = dctx.root.proc.pages_bytes
        out["stored_bytes"] = sum(b.length for b in dctx.root.proc.pages)
        out["warnings"] = list(dctx.warnings)
    else:
        from core.restore import RestoreOptions, restore

        rctx, stats = run_async(restore(RestoreOptions(images_dir=Path(a.dir), detach=True,
                                                       write_method=a.write_method)))
        out["pid"] = rctx.root.pid
        out["warnings"] = list(rctx.warnings)
    out["stages"] = {s.name: [s.seconds, s.nbytes] for s in stats.stages}
    out["total_seconds"] = stats.total_seconds
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------- driver side


@dataclass
class Baseline:
    size: int
    memcpy_mbps: float        # memoryview slice assignment into a pre-faulted buffer
    fresh_copy_mbps: float    # bytearray(src): allocate, fault in and copy (best round)
    fresh_first_mbps: float   # the same, first round (memory the guest may have handed back)


@dataclass
class DumpResult:
    size: int
    compress: str
    pages_bytes: int
    stored_bytes: int
    image_bytes: int
    memory_s: float
    total_s: float


@dataclass
class RestoreResult:
    size: int
    compress: str
    method: str
    round: int
    bytes: int
    memory_s: float
    total_s: float
    checksum_ok: bool


@dataclass
class Run:
    baselines: list[Baseline] = field(default_factory=list)
    dumps: list[DumpResult] = field(default_factory=list)
    restores: list[RestoreResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class BenchError(Exception):
    pass


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


def measure_baseline(size: int, rounds: int = 3) -> Baseline:
    src = bytearray(size)
    for off in range(0, size, FILL_CHUNK):
        n = min(FILL_CHUNK, size - off)
        src[off:off + n] = os.urandom(n)
    dst = bytearray(size)
    view = memoryview(dst)
    view[:] = src                       # fault the destination in once
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        view[:] = src
        best = min(best, time.perf_counter() - t0)
    view.release()
    del dst
    fresh: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        copy = bytearray(src)
        fresh.append(time.perf_counter() - t0)
        del copy
    return Baseline(size, mbps(size, best), mbps(size, min(fresh)), mbps(size, fresh[0]))


def pid_alive(pid: int) -> bool:
    """True while /proc/PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until /proc/PID is gone (reaped by whoever is its parent)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_file(path: Path, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"workload exited with status {proc.returncode} before {path.name}")
        if time.monotonic() > deadline:
            raise BenchError(f"{path.name} did not appear within {timeout:.0f} s")
        time.sleep(0.02)


def read_sum(state: Path) -> tuple[int, str]:
    pid, digest = (state / "sum").read_text().split()
    return int(pid), digest


def run_worker(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "perf.bench_dump_restore", "--worker", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{args[0]} did not finish within {timeout:.0f} s") from None
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()
        raise BenchError(f"{args[0]} failed (exit {res.returncode}): "
                         f"{err[-1] if err else 'no message'}")
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


class Bench:
    def __init__(self, root: Path, data: str, verbose: bool) -> None:
        self.root = root
        self.data = data
        self.verbose = verbose
        self.workloads: list[subprocess.Popen[bytes]] = []
        self.restored: set[int] = set()
        self.workload_py = root / "workload.py"
        self.workload_py.write_text(WORKLOAD)

    def say(self, msg: str) -> None:
        if self.verbose:
            print(f"  .. {msg}", file=sys.stderr, flush=True)

    def timeout_for(self, size: int) -> float:
        return 60.0 + size / (20 * MiB)     # generous: ~20 MB/s worst case on a busy host

    def start_workload(self, size: int, state: Path) -> tuple[subprocess.Popen[bytes], str]:
        state.mkdir()
        proc = subprocess.Popen([sys.executable, str(self.workload_py), str(size), self.data,
                                 str(state)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=state, start_new_session=True)
        self.workloads.append(proc)
        wait_file(state / "ready", self.timeout_for(size), proc)
        pid, digest = read_sum(state)
        if pid != proc.pid:
            raise BenchError(f"workload reports pid {pid}, expected {proc.pid}")
        return proc, digest

    def kill_restored(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not wait_gone(pid, 10.0):
            print(f"warning: restored PID {pid} killed but not reaped after 10 s",
                  file=sys.stderr)
        self.restored.discard(pid)

    def verify(self, pid: int, state: Path, digest: str, size: int) -> bool:
        (state / "sum").unlink()
        os.kill(pid, signal.SIGUSR1)
        wait_file(state / "sum", self.timeout_for(size))
        got_pid, got = read_sum(state)
        return got_pid == pid and got == digest

    def one_round(self, size: int, compress: str, rnd: int, run: Run) -> None:
        tag = f"{fmt_size(size)} {compress} #{rnd}"
        state = self.root / f"state-{size}-{compress}-{rnd}"
        images = self.root / f"img-{size}-{compress}-{rnd}"
        self.say(f"{tag}: starting workload")
        proc, digest = self.start_workload(size, state)
        self.say(f"{tag}: dumping PID {proc.pid}")
        out = run_worker(["dump", "--pid", str(proc.pid), "--dir", str(images),
                          "--compress", compress], self.timeout_for(size))
        try:
            proc.wait(timeout=10)          # dump kills it; we are its parent and reap it
        except subprocess.TimeoutExpired:
            raise BenchError(f"dumped PID {proc.pid} still there after the dump") from None
        self.workloads.remove(proc)
        stages = out["stages"]
        run.dumps.append(DumpResult(size, compress, int(out["pages_bytes"]),
                                    int(out["stored_bytes"]), dir_bytes(images),
                                    float(stages["memory"][0]), float(out["total_seconds"])))
        # Alternate which method goes first: the second restore of a round may find
        # memory the first one just freed, which is cheaper to fault in on this VM.
        for method in WRITE_METHODS if rnd % 2 else WRITE_METHODS[::-1]:
            self.say(f"{tag}: restoring with {method}")
            out = run_worker(["restore", "--dir", str(images), "--write-method", method],
                             self.timeout_for(size))
            pid = int(out["pid"])
            self.restored.add(pid)
            if pid != proc.pid:
                run.failures.append(f"{tag} {method}: restored as PID {pid}, not {proc.pid}")
            ok = pid_alive(pid) and self.verify(pid, state, digest, size)
            if not ok:
                run.failures.append(f"{tag} {method}: checksum after restore differs")
            stages = out["stages"]
            run.restores.append(RestoreResult(size, compress, method, rnd,
                                              int(stages["memory"][1]),
                                              float(stages["memory"][0]),
                                              float(out["total_seconds"]), ok))
            self.kill_restored(pid)
        shutil.rmtree(images)
        shutil.rmtree(state)

    def cleanup(self) -> None:
        for proc in self.workloads:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"warning: workload PID {proc.pid} did not exit", file=sys.stderr)
        self.workloads.clear()
        for pid in list(self.restored):
            self.kill_restored(pid)


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    return f"{min(values):.0f}-{max(values):.0f}"


def report(run: Run, repeat: int, data: str) -> str:
    base = {b.size: b for b in run.baselines}
    lines = [f"lazarus eager dump/restore benchmark, {data} data, {repeat} round(s): median "
             f"MB/s (range over rounds); MB = 10^6 bytes;",
             "x memcpy = median total speed / memcpy speed of the same size in the same run", ""]
    for b in run.baselines:
        lines.append(f"baseline {fmt_size(b.size):>8}: memcpy {b.memcpy_mbps:6.0f} MB/s "
                     f"(best of 3); copy into fresh memory {b.fresh_copy_mbps:6.0f} MB/s "
                     f"best of 3, {b.fresh_first_mbps:6.0f} MB/s first")

    lines += ["", "dump (target killed after the dump)",
              f"{'size':>8} {'compress':>8} {'pages MB':>9} {'image MB':>9} "
              f"{'memory MB/s':>12} {'total MB/s':>11} {'range':>9} {'x memcpy':>9}"]
    dump_keys = sorted({(d.size, d.compress) for d in run.dumps},
                       key=lambda k: (k[0], COMPRESSIONS.index(k[1])))
    for size, compress in dump_keys:
        ds = [d for d in run.dumps if (d.size, d.compress) == (size, compress)]
        mem = [mbps(d.pages_bytes, d.memory_s) for d in ds]
        tot = [mbps(d.pages_bytes, d.total_s) for d in ds]
        lines.append(f"{fmt_size(size):>8} {compress:>8} {ds[0].pages_bytes / 1e6:9.1f} "
                     f"{med([d.image_bytes for d in ds]) / 1e6:9.1f} {med(mem):12.0f} "
                     f"{med(tot):11.0f} {spread(tot):>9} "
                     f"{med(tot) / base[size].memcpy_mbps:9.3f}")

    lines += ["", "restore -d (checksum recomputed by the restored process)",
              f"{'size':>8} {'compress':>8} {'method':>9} {'memory MB/s':>12} {'range':>9} "
              f"{'total MB/s':>11} {'x memcpy':>9} {'total s':>8} {'checksum':>9}"]
    rest_keys = sorted({(r.size, r.compress, r.method) for r in run.restores},
                       key=lambda k: (k[0], COMPRESSIONS.index(k[1]), k[2]))
    for size, compress, method in rest_keys:
        rs = [r for r in run.restores if (r.size, r.compress, r.method) == (size, compress, method)]
        mem = [mbps(r.bytes, r.memory_s) for r in rs]
        tot = [mbps(r.bytes, r.total_s) for r in rs]
        ok = all(r.checksum_ok for r in rs)
        lines.append(f"{fmt_size(size):>8} {compress:>8} {method:>9} {med(mem):12.0f} "
                     f"{spread(mem):>9} {med(tot):11.0f} "
                     f"{med(tot) / base[size].memcpy_mbps:9.3f} "
                     f"{med([r.total_s for r in rs]):8.3f} {'ok' if ok else 'DIFFERS':>9}")

    lines += ["", "restore memory stage, vmwritev time / procmem time on the same image "
              "(< 1: vmwritev faster); median (range)"]
    pairs: dict[tuple[int, str], list[float]] = {}
    for r in run.restores:
        if r.method != "procmem":
            continue
        for v in run.restores:
            if (v.method == "vmwritev" and (v.size, v.compress, v.round) ==
                    (r.size, r.compress, r.round)):
                pairs.setdefault((r.size, r.compress), []).append(v.memory_s / r.memory_s)
    for (size, compress), ratios in sorted(pairs.items(),
                                           key=lambda kv: (kv[0][0],
                                                           COMPRESSIONS.index(kv[0][1]))):
        rng = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        lines.append(f"{fmt_size(size):>8} {compress:>8}: {med(ratios):.2f}{rng}")
    if run.failures:
        lines += ["", "FAILURES:"] + [f"  {f}" for f in run.failures]
    return "\n".join(lines)


def on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m perf.bench_dump_restore",
                                description="Benchmark eager dump and restore.")
    p.add_argument("--sizes", default="64M,1G", help="comma-separated sizes (default 64M,1G)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds (a fresh workload, a dump, a restore per method) per size and "
                        "compression; medians and ranges are shown")
    p.add_argument("--data", choices=("random", "half"), default="random",
                   help="random (incompressible) or half (64-byte records, half constant)")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(argv)
    sizes = [parse_size(s) for s in a.sizes.split(",") if s.strip()]
    signal.signal(signal.SIGTERM, on_sigterm)   # clean up on kill as on ^C
    run = Run()
    root = Path(tempfile.mkdtemp(prefix="lazarus-bench-"))
    bench = Bench(root, a.data, not a.quiet)
    try:
        for size in sizes:
            bench.say(f"{fmt_size(size)}: measuring memcpy baseline")
            run.baselines.append(measure_baseline(size))
            for rnd in range(1, a.repeat + 1):
                for compress in COMPRESSIONS:
                    try:
                        bench.one_round(size, compress, rnd, run)
                    except BenchError as exc:
                        run.failures.append(f"{fmt_size(size)} {compress} #{rnd}: {exc}")
                        bench.cleanup()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    print(report(run, a.repeat, a.data))
    if a.json:
        print(json.dumps(asdict(run), indent=2))
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
