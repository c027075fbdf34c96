"""Benchmark: the page server's bulk stream and page-request latency on loopback.

    .venv/bin/python -m perf.bench_pageserver [--size 1G] [--repeat 3]
                                              [--requests 2000] [--json]

Builds images of one synthetic process holding SIZE bytes (default 1 GiB)
with the real image writers: `random` (incompressible; lz4 blocks are stored
raw) and `text` (compressible, stored lz4). A real `pageserver` subprocess
serves them on 127.0.0.1.

Bulk stream: `PageClient.stream_pages()` of every block (data delivered
uncompressed, as bytes), against raw loopback TCP throughput of the same
uncompressed bytes measured in the same run: a separate process sendfile()s
them and this one receives them with recv_into() into one reused buffer, the
best a plain TCP transfer does here. The first stream of an image is shown
apart ("cold"): the server checks each block's crc32 the first time it
sends it. MB = 10^6 bytes; ratio = stream MB/s / raw MB/s.

Latency: `get_pages()` of 1 and 64 pages at random page-aligned places, one
request outstanding at a time, p50/p99 over --requests requests, next to the
round trip of a 16-byte ping on a plain loopback TCP connection.

Nothing here asserts a speed: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.images import FORMAT_VERSION, PAGE_SIZE, ImageWriter, PageStoreWriter, pb
from pageserver.client import PageClient

MiB = 1 << 20
BASE = 0x7F0000000000
FILL = 16 * MiB
PID = 4242

# Raw TCP sender: for each connection, read a path line, sendfile() it, close.
# The ping server echoes 16-byte messages.
RAW_SERVER = r"""
import os, socket, sys, threading
def sender(ls):
    while True:
        c, _ = ls.accept()
        with c, c.makefile("rb") as f:
            path = f.readline().strip().decode()
            with open(path, "rb") as src:
                c.sendfile(src)
def echo(ls):
    while True:
        c, _ = ls.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with c:
            while True:
                m = c.recv(16)
                if not m:
                    break
                c.sendall(m)
a = socket.create_server(("127.0.0.1", 0)); b = socket.create_server(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1], flush=True)
threading.Thread(target=echo, args=(b,), daemon=True).start()
sender(a)
"""


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)(?:I?B)?", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def fmt_size(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 and n % (1 << 30) == 0 else f"{n >> 20} MiB"


_TEXT_POOL: list[bytes] = []


def text_chunk(seed: int, n: int) -> bytes:
    """Compressible data: lines of words and numbers (lz4 ratio about 2.5x).

    Slices at random places of a 4 MiB pool of text, so that no two pages
    are alike but each compresses like text.
    """
    if not _TEXT_POOL:
        rnd = random.Random(0)
        words = [rnd.randbytes(rnd.randint(2, 6)).hex() for _ in range(300)]
        lines = []
        size = 0
        while size < 4 * MiB:
            line = " ".join(rnd.choice(words) for _ in range(8)) + f" {rnd.randrange(10**9)}\n"
            lines.append(line)
            size += len(line)
        _TEXT_POOL.append("".join(lines).encode())
    pool = _TEXT_POOL[0]
    rnd = random.Random(seed)
    piece = 3000
    starts = [rnd.randrange(len(pool) - piece) for _ in range(n // piece + 1)]
    return b"".join(pool[s : s + piece] for s in starts)[:n]


def make_image(directory: Path, size: int, kind: str, compress: bool) -> Path:
    """An image of one process holding ``size`` bytes; returns its pages file."""
    with ImageWriter(directory) as w:
        with PageStoreWriter(w.pages_path(PID), compress=compress) as ps:
            for off in range(0, size, FILL):
                n = min(FILL, size - off)
                data = os.urandom(n) if kind == "random" else text_chunk(off, n)
                ps.add(BASE + off, data)
        w.write_process(pb.ProcessImage(
            pid=PID, comm="bench", vmas=[pb.Vma(start=BASE, end=BASE + size, prot=3)],
            pages=ps.blocks, pages_bytes=ps.bytes_raw))
        w.write_inventory(pb.Inventory(
            format_version=FORMAT_VERSION, tool_version="bench",
            kernel_release=os.uname().release, arch=platform.machine(), page_size=PAGE_SIZE,
            root_pid=PID, pids=[PID], compression="lz4" if compress else "none"))
        w.commit()
    return directory / f"pages-{PID}.img"


@contextmanager
def child(argv: list[str], **kw: Any) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, text=True, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_pageserver: timed out waiting for {what}")
        time.sleep(0.02)


# ------------------------------------------------------------------ measurements


def raw_tcp(port: int, path: Path) -> tuple[float, int]:
    """Seconds to receive the file over plain TCP (sendfile -> recv_into), bytes."""
    buf = bytearray(MiB)
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        t0 = time.perf_counter()
        s.sendall(f"{path}\n".encode())
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
        dt = time.perf_counter() - t0
    return dt, got


async def stream(port: int, image: str, lz4: bool) -> tuple[float, int, int]:
    """Seconds for stream_pages() of the whole image, uncompressed bytes, wire bytes."""
    c = await PageClient.connect("127.0.0.1", port, lz4=lz4)
    try:
        got = 0
        t0 = time.perf_counter()
        async for _vaddr, data in c.stream_pages(image, PID):
            got += len(data)
        dt = time.perf_counter() - t0
        return dt, got, c.bytes_received
    finally:
        await c.close()


async def latency(port: int, image: str, nr_pages: int, count: int, size: int,
                  lz4: bool) -> list[float]:
    c = await PageClient.connect("127.0.0.1", port, lz4=lz4)
    rnd = random.Random(nr_pages)
    last = size // PAGE_SIZE - nr_pages
    out: list[float] = []
    try:
        for i in range(count + 50):
            vaddr = BASE + rnd.randrange(last) * PAGE_SIZE
            t0 = time.perf_counter()
            data = await c.get_pages(image, PID, vaddr, nr_pages)
            dt = time.perf_counter() - t0
            assert len(data) == nr_pages * PAGE_SIZE
            if i >= 50:                        # warm-up
                out.append(dt)
    finally:
        await c.close()
    return out


def ping(port: int, count: int) -> list[float]:
    out: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = bytes(16)
        for i in range(count + 50):
            t0 = time.perf_counter()
            s.sendall(msg)
            got = 0
            while got < 16:
                got += len(s.recv(16 - got))
            if i >= 50:
                out.append(time.perf_counter() - t0)
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_pageserver", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"))
    ap.add_argument("--repeat", type=int, default=3, help="rounds of each stream measurement")
    ap.add_argument("--requests", type=int, default=2000, help="get_pages per latency figure")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)
    size = args.size - args.size % PAGE_SIZE

    tmp = Path(tempfile.mkdtemp(prefix="bench-pageserver-"))
    results: dict[str, Any] = {"size": size, "streams": [], "latency": []}
    try:
        images = tmp / "images"
        images.mkdir()
        t0 = time.perf_counter()
        print(f"building images of {fmt_size(size)} in {tmp} ...", flush=True)
        raw_of = {
            "random": make_image(images / "random", size, "random", compress=True),
            "text": make_image(images / "text-raw", size, "text", compress=False),
        }
        make_image(images / "text", size, "text", compress=True)
        stored = {name: (images / name / f"pages-{PID}.img").stat().st_size
                  for name in ("random", "text")}
        print(f"  done in {time.perf_counter() - t0:.1f} s; pages files: random"
              f" {stored['random'] / 1e6:.0f} MB, text {stored['text'] / 1e6:.0f} MB (lz4)",
              flush=True)

        log = tmp / "pageserver.log"
        with open(log, "w") as err, \
                child([sys.executable, "-m", "pageserver.cli", "-D", str(images),
                       "--listen", "127.0.0.1:0"], stderr=err, stdout=subprocess.DEVNULL), \
                child([sys.executable, "-c", RAW_SERVER], stdout=subprocess.PIPE) as raw:
            wait_for(lambda: "listening on" in log.read_text(), 20, "the page server")
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
            assert m is not None and raw.stdout is not None
            port = int(m.group(1))
            raw_port, ping_port = map(int, raw.stdout.readline().split())
            bench_streams(args, port, raw_port, raw_of, results)
            bench_latency(args, port, ping_port, size, results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def bench_streams(args: argparse.Namespace, port: int, raw_port: int,
                  raw_of: dict[str, Path], results: dict[str, Any]) -> None:
    print("\nbulk stream (stream_pages, data delivered uncompressed) vs raw loopback TCP "
          "(sendfile -> recv_into) of the same bytes")
    print(f"  {'data':<7}{'wire':<6}{'round':<7}{'raw MB/s':>9}{'stream MB/s':>12}"
          f"{'wire MB':>9}{'ratio':>7}")
    for name in ("random", "text"):
        modes = [True, False] if name == "text" else [True]
        # Cold: the server reads and checks every block's crc for the first time.
        raw_dt, raw_n = raw_tcp(raw_port, raw_of[name])
        dt, n, wire_n = run_async(stream(port, name, True))
        print(f"  {name:<7}{'lz4':<6}{'cold':<7}{raw_n / raw_dt / 1e6:>9.0f}"
              f"{n / dt / 1e6:>12.0f}{wire_n / 1e6:>9.0f}{raw_dt / dt:>7.2f}")
        results["streams"].append({"data": name, "lz4": True, "round": "cold",
                                   "raw_mbs": raw_n / raw_dt / 1e6, "stream_mbs": n / dt / 1e6,
                                   "wire_bytes": wire_n, "ratio": raw_dt / dt})
        for lz4 in modes:
            ratios, raws, streams = [], [], []
            for _ in range(args.repeat):
                raw_dt, raw_n = raw_tcp(raw_port, raw_of[name])
                dt, n, wire_n = run_async(stream(port, name, lz4))
                assert n == raw_n, f"stream delivered {n} bytes, raw {raw_n}"
                raws.append(raw_n / raw_dt / 1e6)
                streams.append(n / dt / 1e6)
                ratios.append(raw_dt / dt)
            wire = "lz4" if lz4 else "raw"
            print(f"  {name:<7}{wire:<6}{'warm':<7}{statistics.median(raws):>9.0f}"
                  f"{statistics.median(streams):>12.0f}{wire_n / 1e6:>9.0f}"
                  f"{statistics.median(ratios):>7.2f}   (median of {args.repeat}; ratio range"
                  f" {min(ratios):.2f}-{max(ratios):.2f})")
            results["streams"].append({"data": name, "lz4": lz4, "round": "warm",
                                       "raw_mbs": statistics.median(raws),
                                       "stream_mbs": statistics.median(streams),
                                       "wire_bytes": wire_n,
                                       "ratio": statistics.median(ratios),
                                       "ratio_min": min(ratios), "ratio_max": max(ratios)})


def bench_latency(args: argparse.Namespace, port: int, ping_port: int, size: int,
                  results: dict[str, Any]) -> None:
    pings = ping(ping_port, args.requests)
    print(f"\nget_pages latency, one request outstanding, {args.requests} requests each"
          f" (plain TCP 16-byte ping round trip: p50 {pct(pings, 50) * 1e6:.0f} us,"
          f" p99 {pct(pings, 99) * 1e6:.0f} us)")
    print(f"  {'data':<7}{'wire':<6}{'pages':>6}{'p50 us':>9}{'p99 us':>9}{'p50/ping':>10}")
    results["ping_p50_us"] = pct(pings, 50) * 1e6
    results["ping_p99_us"] = pct(pings, 99) * 1e6
    for name, lz4 in (("random", True), ("text", True), ("text", False)):
        for nr in (1, 64):
            lat = run_async(latency(port, name, nr, args.requests, size, lz4))
            p50, p99 = pct(lat, 50), pct(lat, 99)
            print(f"  {name:<7}{'lz4' if lz4 else 'raw':<6}{nr:>6}{p50 * 1e6:>9.0f}"
                  f"{p99 * 1e6:>9.0f}{p50 / pct(pings, 50):>10.1f}")
            results["latency"].append({"data": name, "lz4": lz4, "pages": nr,
                                       "p50_us": p50 * 1e6, "p99_us": p99 * 1e6})


if __name__ == "__main__":
    sys.exit(main())
