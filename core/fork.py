"""Remote fork (`lazarus fork`): a copy of a running tree on another host,
while the original runs on.

The tree is frozen only for as long as it takes to collect its state and
inject a fork() into each process (core/dump/twin.py); then it runs on. The
stopped copy-on-write twins hold its memory as it was, and a page server
embedded here serves the image from them: metadata from a private directory,
pages from the twins' memory. The destination restores it lazily, as any
image on a page server. Once every page has been sent and the clients have
gone, the twins are killed (and reaped in their parents).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.dump import fill_inventory
from core.dump.collect import collect
from core.dump.context import DumpContext, DumpOptions
from core.dump.freeze import freeze, thaw, undo_freeze
from core.dump.twin import kill_twins, make_twins, open_twin_memory, page_list
from core.errors import LazarusError
from core.images import ImageWriter
from core.kernel.tracer import Tracer
from core.pipeline import PipelineStats, Stage, run_pipeline
from pageserver.catalog import CatalogError, check_name
from pageserver.live import LiveProcessPages
from pageserver.server import PageServer, ServerError

log = logging.getLogger("lazarus")

POLL = 0.05     # how often the end of serving is checked


@dataclass
class ForkOptions:
    pid: int
    image_name: str
    listen: list[tuple[str, int]]
    serve_timeout: float                 # give up (and kill the twins) after this long
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None


@dataclass
class ForkResult:
    ctx: DumpContext
    frozen: PipelineStats                # the stages the source was frozen for
    addresses: list[tuple[str, int]]
    pages: int = 0                       # pages served from the twins
    serve_seconds: float = 0.0


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


async def serve_until_taken(server: PageServer, entries: list[LiveProcessPages],
                            timeout: float, stop: asyncio.Event) -> None:
    """Until every page has been sent and no client is connected any more."""
    deadline = time.monotonic() + timeout
    seen_client = False
    while True:
        seen_client = seen_client or bool(server.sessions)
        if seen_client and not server.sessions and all(e.all_sent for e in entries):
            return
        if stop.is_set():
            raise LazarusError("interrupted: the fork was abandoned and its twins killed")
        if time.monotonic() > deadline:
            sent = sum(e.pages_sent for e in entries)
            total = sum(e.total_pages for e in entries)
            raise LazarusError(f"no client took the fork within {timeout:g} s ({sent} of "
                               f"{total} pages sent): its twins were killed")
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
                                       leave_running=True, compress=False), tracer=tracer)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Listen first: a bad address must fail before the process is touched.
        try:
            addresses = await server.start(opts.listen)
        except ServerError as exc:
            raise LazarusError(str(exc)) from None
        stats = await run_pipeline(FORK_STAGES, ctx)
        result = ForkResult(ctx, stats, addresses)
        entries = await tracer.call(publish, ctx, server, opts.image_name)
        if ready is not None:
            ready(result)
        t0 = time.monotonic()
        await serve_until_taken(server, entries, opts.serve_timeout, stop)
        result.serve_seconds = time.monotonic() - t0
        result.pages = sum(e.pages_sent for e in entries)
        return result
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.close()
        await kill_twins(ctx)
        tracer.close()
        shutil.rmtree(root, ignore_errors=True)
