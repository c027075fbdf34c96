"""`lazarus migrate`: live migration with pre-copy.

Pre-dump rounds copy memory while the process runs, each round only what
was written since the one before, until the amount stops shrinking (or a
round limit); then the final `dump --prev` freezes the process, stores what
changed since the last round and kills it, so the process is frozen only
for that last, small copy. The chain is then flattened into one image (the
page server serves stand-alone images; flattening appends what the newer
images add to the oldest one's pages file instead of copying it all) and
uploaded.

The process is killed once the final image is on local disk, before the
upload: an upload that fails keeps the chain in its work directory (and says
where) so that it can still be restored or sent again.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from core.dump import DumpOptions, dump, end_tracking, predump
from core.errors import LazarusError
from core.images.chain import flatten_own_chain
from core.progress import Progress
from core.remote import ServerAddress
from pageserver import wire_pb2 as wire
from pageserver.client import PageServerError, RemoteError

log = logging.getLogger("lazarus")

SHRINK = 0.9            # a round must copy under 90% of the one before to be worth another
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
SMALL = 1 << 20         # a round this small needs no other before the final dump


@dataclass
class MigrateOptions:
    pid: int
    server: ServerAddress
    name: str
    max_rounds: int = 5
    compress: bool = True
    work_dir: Path | None = None      # where the chain is written (default: a new temp dir)
    progress: TextIO | None = None    # where to draw progress bars (a terminal), if anywhere
    restore: bool = True              # have the page server restore it on its host
    pidns: bool = False               # ... into a new PID namespace


@dataclass
class Round:
    bytes_copied: int
    frozen_seconds: float
    seconds: float


@dataclass
class MigrateResult:
    rounds: list[Round] = field(default_factory=list)
    final_bytes: int = 0
    frozen_seconds: float = 0.0       # the final dump: frozen until killed
    merge_seconds: float = 0.0
    upload_seconds: float = 0.0
    uploaded_bytes: int = 0
    downtime_seconds: float = 0.0     # frozen until the image is on the server
    restored_pid: int = 0             # restored by the page server, as its host sees it
    running_seconds: float = 0.0      # frozen until it runs again on the other side
    restore_refused: str = ""         # why the page server did not restore it


def worth_another(rounds: list[Round]) -> bool:
    last = rounds[-1].bytes_copied
    if last <= SMALL:
        return False
    return len(rounds) < 2 or last < rounds[-2].bytes_copied * SHRINK


async def migrate(opts: MigrateOptions) -> MigrateResult:
    if opts.max_rounds < 1:
        raise LazarusError("--max-rounds must be at least 1")
    if not NAME.fullmatch(opts.name):
        raise LazarusError(f"--name {opts.name!r}: use letters, digits, '.', '_' and '-' "
                           "(not starting with '.')")
    work = opts.work_dir or Path(tempfile.mkdtemp(prefix="lazarus-migrate-"))
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    res = MigrateResult()
    keep = False
    try:
        # Checked before anything is frozen: an unreachable server ends the
        # migration while the process still runs untouched.
        client = await opts.server.connect()
        try:
            # Checked now too: the final upload comes after the process is gone.
            if opts.name in await client.list_images():
                raise LazarusError(f"image {opts.name} already exists on the page server: "
                                   "choose another --name")
        except PageServerError as exc:
            raise LazarusError(f"page server: {exc}") from None
        finally:
            await client.close()
        prev: Path | None = None
        while len(res.rounds) < opts.max_rounds:
            d = work / f"pre-{len(res.rounds)}"
            t0 = time.perf_counter()
            try:
                ctx, _ = await predump(DumpOptions(pid=opts.pid, images_dir=d,
                                                   compress=opts.compress, prev=prev,
                                                   progress=opts.progress))
            except BaseException:
                if prev is not None:
                    await end_tracking(prev)
                raise
            res.rounds.append(Round(sum(p.proc.pages_bytes for p in ctx.procs.values()),
                                    ctx.frozen_seconds, time.perf_counter() - t0))
            prev = d
            if not worth_another(res.rounds):
                break
        final = work / "final"
        assert prev is not None     # max_rounds >= 1
        try:
            ctx, _ = await dump(DumpOptions(pid=opts.pid, images_dir=final,
                                            compress=opts.compress, prev=prev,
                                            progress=opts.progress))
        except BaseException:
            # The process runs on: it keeps nothing of ours.
            await end_tracking(prev)
            raise
        # From here the process is gone: the chain on disk is all there is.
        keep = True
        frozen_at = ctx.frozen_at
        res.frozen_seconds = ctx.frozen_seconds
        res.final_bytes = sum(p.proc.pages_bytes for p in ctx.procs.values())
        t0 = time.perf_counter()
        merged = work / "upload" / opts.name
        merged.parent.mkdir(mode=0o700)
        flatten_own_chain(final, merged, opts.compress)
        res.merge_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        total = sum(f.stat().st_size for f in merged.iterdir())
        client = await opts.server.connect()
        try:
            with Progress("upload", total, opts.progress) as bar:
                await client.put_image(opts.name, merged, bar.add)
        except PageServerError as exc:
            raise LazarusError(f"cannot store the image on the page server: {exc}; the "
                               f"process was dumped: its image chain is kept in {final}")\
                from None
        finally:
            await client.close()
        res.upload_seconds = time.perf_counter() - t0
        res.uploaded_bytes = sum(f.stat().st_size for f in merged.iterdir())
        res.downtime_seconds = time.perf_counter() - frozen_at
        keep = False
        if opts.restore:
            await restore_there(opts, res, frozen_at)
        return res
    except BaseException:
        if keep:
            log.warning("image chain kept in %s (restore it with lazarus restore -D %s)",
                        work, work / "final")
        raise
    finally:
        if not keep and opts.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


async def restore_there(opts: MigrateOptions, res: MigrateResult, frozen_at: float) -> None:
    """Ask the page server to restore the image on its host; a server not
    allowed to is no failure: the image is there, to restore by hand."""
    client = await opts.server.connect()
    try:
        res.restored_pid, _ = await client.restore_image(opts.name, opts.pidns)
        res.running_seconds = time.perf_counter() - frozen_at
    except RemoteError as exc:
        if exc.code != wire.Error.UNSUPPORTED:
            raise LazarusError(f"the image is on the page server as {opts.name}, but its "
                               f"restore there failed: {exc}") from None
        res.restore_refused = str(exc)
    except PageServerError as exc:
        raise LazarusError(f"the image is on the page server as {opts.name}, but asking "
                           f"for its restore failed: {exc}") from None
    finally:
        await client.close()


def format_result(opts: MigrateOptions, res: MigrateResult, hostport: str,
                  access: str = "") -> str:
    """What migrate prints; ``access``: the client options the printed restore
    command needs (--token-file, --tls-ca), as typed."""
    lines = [f"pre-dump round {i + 1}: {r.bytes_copied / 1e6:.1f} MB copied in "
             f"{r.seconds * 1000:.0f} ms, frozen for {r.frozen_seconds * 1000:.1f} ms"
             for i, r in enumerate(res.rounds)]
    lines += [
        f"final dump: {res.final_bytes / 1e6:.1f} MB, frozen for "
        f"{res.frozen_seconds * 1000:.1f} ms",
        f"image {opts.name}: flattened in {res.merge_seconds * 1000:.0f} ms, "
        f"{res.uploaded_bytes / 1e6:.1f} MB uploaded in {res.upload_seconds * 1000:.0f} ms",
        f"downtime until the image was on the page server: "
        f"{res.downtime_seconds * 1000:.0f} ms",
    ]
    if res.restored_pid:
        lines.append(f"running on the page server's host as PID {res.restored_pid}; downtime "
                     f"until then: {res.running_seconds * 1000:.0f} ms")
        return "\n".join(lines)
    if res.restore_refused:
        lines.append(f"not restored there: {res.restore_refused}")
    pidns = " --pidns" if opts.pidns else ""
    lines += ["restore it on the other side with:",
              f"  lazarus restore --lazy --page-server {hostport} --image {opts.name}"
              f"{access}{pidns}"]
    return "\n".join(lines)
