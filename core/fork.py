"""Remote fork (`lazarus fork`): a copy of a running tree on another host,
while the original runs on.

The tree is frozen only for as long as it takes to collect its state and
inject a fork() into each process (core/dump/twin.py); then it runs on. The
stopped copy-on-write twins hold its memory as it was, and a page server
embedded here serves the image from them: metadata from a private directory,
pages from the twins' memory. The destination restores it lazily, as any
image on a page server. Once the wanted number of restores have each
received every page and the clients have gone, the twins are killed (and
reaped in their parents); also on `lazarus fork --release NAME` (SIGUSR1 to
this command, found through its state file), on SIGINT/SIGTERM/SIGHUP, or
after the serve timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core import procfs
from core.dump import fill_inventory
from core.dump.collect import collect
from core.dump.context import DumpContext, DumpOptions
from core.dump.freeze import freeze, thaw, undo_freeze
from core.dump.twin import (
    check_twin,
    kill_twins,
    make_twins,
    open_twin_memory,
    page_list,
    prescan,
    read_twin_state,
)
from core.errors import LazarusError
from core.images import ImageWriter
from core.kernel.tracer import Tracer
from core.pipeline import PipelineStats, Stage, run_pipeline
from pageserver.catalog import CatalogError, check_name
from pageserver.live import LiveProcessPages
from pageserver.server import PageServer, ServerError

log = logging.getLogger("lazarus")

POLL = 0.05     # how often the end of serving is checked
# Where a running fork leaves its PID and start time, by name, for --release.
FORKS_DIR = Path("/run/lazarus/forks")
FORKS_DIR_ENV = "LAZARUS_FORKS_DIR"      # another place (tests run side by side)


def forks_dir() -> Path:
    return Path(os.environ.get(FORKS_DIR_ENV) or FORKS_DIR)


def _running(path: Path) -> int:
    """The PID of the live fork command a state file names, or 0 if it is
    gone (or the PID now belongs to another process: the start time differs)."""
    try:
        pid_s, start_s = path.read_text().split()
        pid, start = int(pid_s), int(start_s)
        if procfs.read_stat(pid).start_time == start and procfs.is_alive(pid):
            return pid
    except (OSError, ValueError):
        pass
    return 0


def claim_name(name: str) -> Path:
    """Write this command's state file for fork NAME (0600); refuse a name a
    live fork already holds. Returns the path, to remove on exit."""
    d = forks_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = d / f"{name}.pid"
    me = f"{os.getpid()} {procfs.read_stat(os.getpid()).start_time}\n"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            other = _running(path)
            if other:
                raise LazarusError(f"a fork named {name} is already running (PID {other}): "
                                   f"release it first (lazarus fork --release {name})") from None
            path.unlink(missing_ok=True)    # left by a fork that died: stale
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return path
    raise LazarusError(f"cannot claim the fork name {name} in {d}")


def release_fork(name: str) -> int:
    """`lazarus fork --release NAME`: tell the running fork to kill its twins
    and end (SIGUSR1). Returns its PID."""
    try:
        check_name(name)
    except CatalogError as exc:
        raise LazarusError(str(exc)) from None
    path = forks_dir() / f"{name}.pid"
    pid = _running(path)
    if not pid:
        raise LazarusError(f"no running fork named {name}")
    os.kill(pid, signal.SIGUSR1)
    return pid


@dataclass
class ForkOptions:
    pid: int
    image_name: str
    listen: list[tuple[str, int]]
    serve_timeout: float                 # give up (and kill the twins) after this long
    restores: int = 1                    # restores that must each receive every page
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None


@dataclass
class ForkResult:
    ctx: DumpContext
    frozen: PipelineStats                # the stages the source was frozen for
    addresses: list[tuple[str, int]]
    pages: int = 0                       # pages served from the twins
    serve_seconds: float = 0.0
    restores: int = 0                    # restores that received every page
    # Work kept out of the freeze: before it (VmFlags) and after the release
    # (sigactions, brk and page lists from the twins, metadata written).
    prescan_seconds: float = 0.0
    publish_seconds: float = 0.0
    released: bool = False               # ended by `lazarus fork --release`


async def release(ctx: DumpContext) -> None:
    await ctx.tracer.call(thaw, ctx)
    return None


FORK_STAGES: list[Stage[DumpContext]] = [
    Stage("freeze", freeze, undo_freeze),
    Stage("collect", collect),
    Stage("twins", make_twins, kill_twins),
    Stage("release", release),
]


def publish(ctx: DumpContext, server: PageServer, name: str) -> list[LiveProcessPages]:
    """Write the metadata (page lists from the twins) into the server's
    images dir and serve each process's pages from its twin."""
    fill_inventory(ctx)
    writer = ImageWriter(server.catalog.root / name)
    entries: list[LiveProcessPages] = []
    with writer:
        for p in ctx.procs.values():
            twin = ctx.twins.get(p.pid)
            if twin is not None:
                check_twin(ctx, twin)
                read_twin_state(ctx, twin)
                p.proc.pages.extend(page_list(ctx, twin))
                p.proc.pages_bytes = sum(b.length for b in p.proc.pages)
            writer.write_process(p.proc)
        writer.write_inventory(ctx.inventory)
        writer.commit()
    for p in ctx.procs.values():
        twin = ctx.twins.get(p.pid)
        if twin is None:
            continue
        fd = open_twin_memory(twin)
        entry = LiveProcessPages(name, p.pid, fd, p.proc, twin.frozen)
        server.catalog.add_live(entry)
        entries.append(entry)
    return entries


def complete_restores(entries: list[LiveProcessPages]) -> int:
    """How many restores (by the id their connections give) received every
    page of every process."""
    who = {w for e in entries for w in e.by_restore}
    return sum(all(e.complete_for(w) for e in entries) for w in who)


async def serve_until_taken(server: PageServer, entries: list[LiveProcessPages],
                            opts: ForkOptions, stop: asyncio.Event,
                            released: asyncio.Event) -> int:
    """Until `opts.restores` restores have each received every page and no
    client is connected any more (a restore started meanwhile is served to
    its end). Returns the restores served in full; -1 if released."""
    deadline = time.monotonic() + opts.serve_timeout
    while True:
        done = complete_restores(entries)
        if done >= opts.restores and not server.sessions:
            return done
        if released.is_set():
            return -1
        if stop.is_set():
            raise LazarusError("interrupted: the fork was abandoned and its twins killed")
        if time.monotonic() > deadline:
            sent = sum(e.pages_sent for e in entries)
            total = sum(e.total_pages for e in entries)
            who = "no client" if not done else f"only {done} of {opts.restores} restores"
            raise LazarusError(f"{who} took the fork within {opts.serve_timeout:g} s ({sent} "
                               f"of {total} pages sent at least once): its twins were killed")
        try:
            await asyncio.wait_for(stop.wait(), POLL)
        except TimeoutError:
            pass


async def fork(opts: ForkOptions,
               ready: Callable[[ForkResult], None] | None = None) -> ForkResult:
    """Fork PID's tree and serve it until a client has taken it all. `ready`
    is called once the image can be restored (the source already runs)."""
    try:
        check_name(opts.image_name)
    except CatalogError as exc:
        raise LazarusError(str(exc)) from None
    root = Path(tempfile.mkdtemp(prefix="lazarus-fork-"))   # 0700: holds process state
    server = PageServer(root, token=opts.token, ssl_context=opts.ssl_context)
    tracer = Tracer()
    ctx = DumpContext(opts=DumpOptions(pid=opts.pid, images_dir=root / opts.image_name,
                                       leave_running=True, compress=False,
                                       drop_unshareable=True, state_from_twin=True),
                    tracer=tracer)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()         # abandoned: exit 1
    released = asyncio.Event()     # `lazarus fork --release NAME`: exit 0
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, released.set)
    state: Path | None = None
    try:
        state = claim_name(opts.image_name)
        # Listen first: a bad address must fail before the process is touched.
        try:
            addresses = await server.start(opts.listen)
        except ServerError as exc:
            raise LazarusError(str(exc)) from None
        # Read while the tree runs: only what a frozen tree must not wait for.
        t0 = time.perf_counter()
        await tracer.call(prescan, ctx)
        t1 = time.perf_counter()
        stats = await run_pipeline(FORK_STAGES, ctx)
        t2 = time.perf_counter()
        result = ForkResult(ctx, stats, addresses, prescan_seconds=t1 - t0)
        entries = await tracer.call(publish, ctx, server, opts.image_name)
        result.publish_seconds = time.perf_counter() - t2
        if ready is not None:
            ready(result)
        t0 = time.monotonic()
        done = await serve_until_taken(server, entries, opts, stop, released)
        result.serve_seconds = time.monotonic() - t0
        result.pages = sum(e.pages_sent for e in entries)
        result.released = done < 0
        result.restores = complete_restores(entries)
        return result
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        if state is not None:
            state.unlink(missing_ok=True)
        await server.close()
        await kill_twins(ctx)
        tracer.close()
        shutil.rmtree(root, ignore_errors=True)
