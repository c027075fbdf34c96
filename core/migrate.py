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
    upload_seconds: float = 0.0       # sent to the server while the process ran on


@dataclass
class MigrateResult:
    rounds: list[Round] = field(default_factory=list)
    final_bytes: int = 0
    frozen_seconds: float = 0.0       # the final dump: frozen until killed
    merge_seconds: float = 0.0        # the server's flattening of the chain
    upload_seconds: float = 0.0       # of the final image, after the freeze
    uploaded_bytes: int = 0           # every round and the final image
    image_bytes: int = 0              # the flattened image on the server
    downtime_seconds: float = 0.0     # frozen until the image is on the server
    restored_pid: int = 0             # restored by the page server, as its host sees it
    running_seconds: float = 0.0      # frozen until it runs again on the other side
    restore_refused: str = ""         # why the page server did not restore it


def worth_another(rounds: list[Round]) -> bool:
    last = rounds[-1].bytes_copied
    if last <= SMALL:
        return False
    return len(rounds) < 2 or last < rounds[-2].bytes_copied * SHRINK


async def upload(opts: MigrateOptions, directory: Path) -> int:
    """Store an image directory on the page server under its own name; its bytes."""
    total = sum(f.stat().st_size for f in directory.iterdir())
    client = await opts.server.connect()
    try:
        with Progress("upload", total, opts.progress) as bar:
            await client.put_image(directory.name, directory, bar.add)
    finally:
        await client.close()
    return total


async def remove_uploaded(opts: MigrateOptions, names: list[str]) -> None:
    """Best effort: a migration given up leaves no rounds on the server."""
    try:
        client = await opts.server.connect()
        try:
            for name in names:
                try:
                    await client.remove_image(name)
                except RemoteError as exc:
                    if exc.code != wire.Error.NOT_FOUND:    # never got there: fine
                        raise
        finally:
            await client.close()
    except (PageServerError, OSError) as exc:
        log.warning("could not remove %s from the page server: %s", ", ".join(names), exc)


async def check_names_free(opts: MigrateOptions, names: list[str]) -> None:
    """Before anything is frozen: the server answers and the names are free
    (the final upload comes after the process is gone)."""
    client = await opts.server.connect()
    try:
        taken = set(await client.list_images()).intersection(names)
    except PageServerError as exc:
        raise LazarusError(f"page server: {exc}") from None
    finally:
        await client.close()
    if opts.name in taken:
        raise LazarusError(f"image {opts.name} already exists on the page server: "
                           "choose another --name")
    if taken:
        raise LazarusError(f"the page server holds {', '.join(sorted(taken))} (left by an "
                           "earlier migration?): remove them or choose another --name")


async def migrate(opts: MigrateOptions) -> MigrateResult:
    """Pre-dump rounds, each sent to the page server while the process runs
    on; the final dump, sent after the freeze (only what changed since); the
    server flattens the chain into image NAME and restores it if allowed."""
    if opts.max_rounds < 1:
        raise LazarusError("--max-rounds must be at least 1")
    if not NAME.fullmatch(opts.name):
        raise LazarusError(f"--name {opts.name!r}: use letters, digits, '.', '_' and '-' "
                           "(not starting with '.')")
    # Named as they are on the server, where each names its parent as a sibling.
    rounds = [f"{opts.name}.pre{i}" for i in range(opts.max_rounds)]
    final = f"{opts.name}.final"
    work = opts.work_dir or Path(tempfile.mkdtemp(prefix="lazarus-migrate-"))
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    res = MigrateResult()
    keep = False
    uploaded: list[str] = []
    try:
        await check_names_free(opts, [opts.name, final, *rounds])
        prev: Path | None = None
        while len(res.rounds) < opts.max_rounds:
            d = work / rounds[len(res.rounds)]
            t0 = time.perf_counter()
            try:
                ctx, _ = await predump(DumpOptions(pid=opts.pid, images_dir=d,
                                                   compress=opts.compress, prev=prev,
                                                   progress=opts.progress))
            except BaseException:
                if prev is not None:
                    await end_tracking(prev)
                raise
            copied = sum(p.proc.pages_bytes for p in ctx.procs.values())
            res.rounds.append(Round(copied, ctx.frozen_seconds, time.perf_counter() - t0))
            prev = d
            # Sent while the process runs on: only the last image waits for its upload.
            t0 = time.perf_counter()
            # Listed before it is sent: an interrupt may land once the server has it.
            uploaded.append(d.name)
            try:
                res.uploaded_bytes += await upload(opts, d)
            except BaseException as exc:
                await end_tracking(prev)
                if isinstance(exc, PageServerError):
                    raise LazarusError(f"cannot store pre-dump round {len(res.rounds)} on the "
                                       f"page server: {exc}") from None
                raise
            res.rounds[-1].upload_seconds = time.perf_counter() - t0
            if not worth_another(res.rounds):
                break
        assert prev is not None     # max_rounds >= 1
        last = work / final
        try:
            ctx, _ = await dump(DumpOptions(pid=opts.pid, images_dir=last,
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
        try:
            uploaded.append(last.name)
            res.uploaded_bytes += await upload(opts, last)
            res.upload_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            client = await opts.server.connect()
            try:
                res.image_bytes = await client.flatten_chain(last.name, opts.name)
            finally:
                await client.close()
            uploaded = []           # the server removed the chain
            res.merge_seconds = time.perf_counter() - t0
        except PageServerError as exc:
            raise LazarusError(f"cannot store the image on the page server: {exc}; the "
                               f"process was dumped: its image chain is kept in {last}")\
                from None
        res.downtime_seconds = time.perf_counter() - frozen_at
        keep = False
        if opts.restore:
            await restore_there(opts, res, frozen_at)
        return res
    except BaseException:
        if uploaded:
            await remove_uploaded(opts, uploaded)
        if keep:
            log.warning("image chain kept in %s (restore it with lazarus restore -D %s)",
                        work, work / final)
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
             f"{r.seconds * 1000:.0f} ms, frozen for {r.frozen_seconds * 1000:.1f} ms, "
             f"sent in {r.upload_seconds * 1000:.0f} ms"
             for i, r in enumerate(res.rounds)]
    lines += [
        f"final dump: {res.final_bytes / 1e6:.1f} MB, frozen for "
        f"{res.frozen_seconds * 1000:.1f} ms, sent in {res.upload_seconds * 1000:.0f} ms",
        f"image {opts.name}: {res.image_bytes / 1e6:.1f} MB, made of the chain by the "
        f"page server in {res.merge_seconds * 1000:.0f} ms "
        f"({res.uploaded_bytes / 1e6:.1f} MB sent in all)",
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
