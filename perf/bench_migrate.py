"""Benchmark: how long a process is frozen when moved to a page server,
`lazarus migrate` (pre-copy) against a plain dump, in the same run.

    .venv/bin/python -m perf.bench_migrate [--total 1024] [--hot 64] [--repeat N]

The workload (tests/workloads/rewriter.py) holds TOTAL MiB, of which HOT MiB
are rewritten continuously. Per round, three fresh workloads:

1. `lazarus dump -t PID -D DIR`: frozen from the freeze to the kill (local image).
2. `lazarus dump -t PID --page-server ... --image NAME`: the plain way to move
   it to a page server; frozen until the server has the image.
3. `lazarus migrate -t PID --to ...`: pre-dump rounds while it runs, then the
   final dump; frozen from the final freeze to the kill. Also reported: the
   downtime until the merged image is on the server.

The migrated image is then restored lazily from the server and the process
checks every byte of its buffer against what it knows it wrote (it was
rewriting until frozen). Figures are lazarus's own (`frozen for`), without
interpreter start-up. Nothing here asserts a speed; the exit status is
non-zero only if a command failed or the migrated memory is wrong.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REWRITER = ROOT / "tests" / "workloads" / "rewriter.py"
PYTHON = sys.executable
LAZARUS = str(Path(sys.executable).parent / "lazarus")
CMD_TIMEOUT = 600.0      # one lazarus command on a 1 GiB process, on a slow shared VM
READY_TIMEOUT = 120.0    # filling 1 GiB with random bytes


def wait_for(pred: object, timeout: float, what: str) -> None:
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_migrate: timed out waiting for {what}")
        time.sleep(0.02)


class Bench:
    def __init__(self, work: Path, total: int, hot: int) -> None:
        self.work, self.total, self.hot = work, total, hot
        self.pids: list[int] = []
        self.popens: list[subprocess.Popen[bytes]] = []
        self.n = 0

    def start_server(self) -> str:
        images = self.work / "served"
        images.mkdir()
        log = self.work / "pageserver.log"
        with open(log, "wb") as err:
            p = subprocess.Popen([PYTHON, "-m", "pageserver.cli", "-D", str(images),
                                  "--listen", "127.0.0.1:0"], cwd=ROOT,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err)
        self.popens.append(p)
        wait_for(lambda: "listening on" in log.read_text(), 30, "the page server")
        m = re.search(r"listening on (\S+)", log.read_text())
        assert m is not None
        return m.group(1)

    def workload(self) -> tuple[subprocess.Popen[bytes], Path]:
        self.n += 1
        out = self.work / f"report-{self.n}"
        p = subprocess.Popen([PYTHON, str(REWRITER), str(out), "--total", str(self.total),
                              "--hot", str(self.hot)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        self.popens.append(p)
        wait_for(lambda: out.exists() and out.read_text() == "ready\n", READY_TIMEOUT,
                 "the workload to fill its memory")
        time.sleep(0.5)     # let it rewrite a while: a steady dirty rate
        return p, out

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([LAZARUS, *args], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=CMD_TIMEOUT)
        if res.returncode != 0:
            raise SystemExit(f"bench_migrate: `lazarus {' '.join(args)}` failed: "
                             f"{res.stderr.strip()}")
        return res

    def cleanup(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for pid in self.pids:      # restored processes: not our children
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def ms(pattern: str, text: str) -> float:
    m = re.search(pattern + r"[^\n]*?([\d.]+) ms", text)
    if m is None:
        raise SystemExit(f"bench_migrate: no {pattern!r} in output: {text!r}")
    return float(m.group(1))


def one_round(b: Bench, server: str, r: int) -> dict[str, float]:
    out: dict[str, float] = {}
    p, _ = b.workload()
    res = b.run("dump", "-t", str(p.pid), "-D", str(b.work / f"plain-{r}"), "--stats")
    out["dump_local"] = ms("frozen for", res.stderr)
    p.wait(10)
    shutil.rmtree(b.work / f"plain-{r}")

    p, _ = b.workload()
    res = b.run("dump", "-t", str(p.pid), "--page-server", server, "--image", f"plain-{r}",
                "--stats")
    out["dump_server"] = ms("frozen for", res.stderr)
    p.wait(10)

    p, report = b.workload()
    res = b.run("migrate", "-t", str(p.pid), "--to", server, "--name", f"mig-{r}")
    out["migrate"] = ms("final dump:", res.stdout)
    out["migrate_downtime"] = ms("downtime", res.stdout)
    out["rounds"] = float(res.stdout.count("pre-dump round"))
    out["final_mb"] = float(re.search(r"final dump: ([\d.]+) MB", res.stdout).group(1))  # type: ignore[union-attr]
    p.wait(10)
    # The migrated process checks its own memory on the other side.
    pidfile = b.work / f"pid-{r}"
    b.run("restore", "--lazy", "--page-server", server, "--image", f"mig-{r}", "-d",
          "--pidfile", str(pidfile))
    pid = int(pidfile.read_text())
    b.pids.append(pid)
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: len(report.read_text().splitlines()) >= 2, 300, "the migrated report")
    line = report.read_text().splitlines()[1]
    if not line.startswith("ok "):
        raise SystemExit(f"bench_migrate: migrated memory is wrong: {line}")
    os.kill(pid, signal.SIGKILL)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total", type=int, default=1024, help="MiB held (default 1024)")
    ap.add_argument("--hot", type=int, default=64, help="MiB rewritten continuously "
                    "(default 64)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lazarus-bench-migrate-"))
    b = Bench(work, args.total, args.hot)
    try:
        server = b.start_server()
        rounds = [one_round(b, server, r) for r in range(args.repeat)]
    finally:
        b.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def rng(key: str) -> str:
        vals = [r[key] for r in rounds]
        return f"({min(vals):.0f}-{max(vals):.0f})" if len(vals) > 1 else ""

    ratios = [r["dump_local"] / r["migrate"] for r in rounds]
    print(f"workload: {args.total} MiB, {args.hot} MiB rewritten continuously; "
          f"{args.repeat} round(s), medians (range)")
    print(f"  plain dump -D, frozen                  {med('dump_local'):9.1f} ms "
          f"{rng('dump_local')}")
    print(f"  plain dump --page-server, frozen       {med('dump_server'):9.1f} ms "
          f"{rng('dump_server')}")
    print(f"  migrate, final dump frozen             {med('migrate'):9.1f} ms "
          f"{rng('migrate')}  ({med('rounds'):.0f} pre-dump rounds, final dump "
          f"{med('final_mb'):.0f} MB)")
    print(f"  migrate downtime until on the server   {med('migrate_downtime'):9.1f} ms "
          f"{rng('migrate_downtime')}")
    print(f"  freeze ratio dump -D / migrate            {med('dump_local') / med('migrate'):6.1f}x"
          + (f" (per round {min(ratios):.1f}-{max(ratios):.1f}x)" if len(ratios) > 1 else ""))
    server_ratio = med("dump_server") / med("migrate")
    print(f"  freeze ratio dump --page-server / migrate {server_ratio:6.1f}x")
    print(f"  downtime ratio dump --page-server / migrate "
          f"{med('dump_server') / med('migrate_downtime'):4.1f}x")
    print("  migrated memory checked by the process itself: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
