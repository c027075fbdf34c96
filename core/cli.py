"""`lazarus` command line: check, dump, restore, show."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shlex
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from core.check import run_checks
from core.errors import LazarusError
from core.images import ImageError, describe_image, format_description
from core.progress import Progress, terminal_stream
from core.remote import ServerAddress
from core.restore.context import RestoreOptions
from lazy.daemon import DEFAULT_READ_AHEAD, LazyDaemon, LazyError, LazyStats

T = TypeVar("T")
log = logging.getLogger("lazarus")

INHERIT_FD = re.compile(r"^fd\[(\d+)\]:(.+)$")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_inherit(values: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        m = INHERIT_FD.match(value)
        if not m:
            raise LazarusError(
                f"--inherit-fd {value!r}: expected fd[N]:KEY, e.g. fd[1]:pipe:[1234]")
        fd = int(m.group(1))
        try:
            os.fstat(fd)
        except OSError:
            raise LazarusError(f"--inherit-fd {value!r}: fd {fd} is not open in lazarus") from None
        out[m.group(2)] = fd
    return out


def add_compress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compress", choices=("lz4", "none"), default="lz4",
                   help="page block compression (default lz4)")


def add_quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (there is none either when stderr is not a terminal)")


def cmd_check(args: argparse.Namespace) -> int:
    lines, ok = run_checks()
    print("\n".join(lines))
    print("dump and restore can work here" if ok else "dump and restore cannot work here")
    return 0 if ok else 1


def cmd_dump(args: argparse.Namespace) -> int:
    from core.dump import DumpOptions, dump

    if bool(args.images_dir) == bool(args.page_server):
        raise LazarusError("dump needs -D DIR or --page-server HOST:PORT --image NAME "
                           "(one of them, not both)")
    opts = DumpOptions(pid=args.tree, images_dir=Path(args.images_dir or "."),
                       leave_running=args.leave_running, compress=args.compress == "lz4",
                       server=server_of(args), image_name=args.image,
                       prev=Path(args.prev) if args.prev else None,
                       progress=terminal_stream(args.quiet))
    ctx, stats = run_async(dump(opts))
    for w in ctx.warnings:
        log.warning("%s", w)
    if args.stats:
        print(f"frozen for {ctx.frozen_seconds * 1000:.1f} ms", file=sys.stderr)
        procs = [p.proc for p in ctx.procs.values()]
        stored = sum(b.length for proc in procs for b in proc.pages)
        raw = sum(proc.pages_bytes for proc in procs)
        print(f"dump of PID {opts.pid} ({len(procs)} process(es)): {raw / 1e6:.1f} MB of "
              f"pages, {stored / 1e6:.1f} MB stored", file=sys.stderr)
        print(stats.format(), file=sys.stderr)
    return 0


def cmd_predump(args: argparse.Namespace) -> int:
    from core.dump import DumpOptions, predump

    opts = DumpOptions(pid=args.tree, images_dir=Path(args.images_dir),
                       compress=args.compress == "lz4",
                       prev=Path(args.prev) if args.prev else None,
                       progress=terminal_stream(args.quiet))
    ctx, stats = run_async(predump(opts))
    for w in ctx.warnings:
        log.warning("%s", w)
    procs = [p.proc for p in ctx.procs.values()]
    raw = sum(proc.pages_bytes for proc in procs)
    print(f"pre-dump of PID {opts.pid}: {raw / 1e6:.1f} MB of pages copied, frozen for "
          f"{ctx.frozen_seconds * 1000:.1f} ms", file=sys.stderr)
    if args.stats:
        print(stats.format(), file=sys.stderr)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from core.migrate import MigrateOptions, format_result, migrate

    server = ServerAddress.from_options(args.to, args.token_file, args.tls_ca)
    opts = MigrateOptions(pid=args.tree, server=server, name=args.name or f"migrate-{args.tree}",
                          max_rounds=args.max_rounds, compress=args.compress == "lz4",
                          work_dir=Path(args.work_dir) if args.work_dir else None,
                          progress=terminal_stream(args.quiet),
                          restore=not args.no_restore, pidns=args.pidns)
    res = run_async(migrate(opts))
    access = "".join(f" {flag} {shlex.quote(value)}" for flag, value in
                     (("--token-file", args.token_file), ("--tls-ca", args.tls_ca)) if value)
    print(format_result(opts, res, args.to, access))
    return 0


def exit_status(status: int) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 1


def wait_restored(pid: int, report: int = -1) -> int:
    """Wait for the restored child like its parent would, passing on signals meant for it."""
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    if report >= 0:
        # In its own PID namespace the process is the init's child: the init
        # tells its wait status.
        with os.fdopen(report, "rb") as pipe:
            word = pipe.read().strip()
        return exit_status(int(word)) if word.isdigit() else 1
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return exit_status(status)
        except InterruptedError:
            continue


class Detacher:
    """`restore --lazy -d`: the lazy daemon must outlive the command, so the
    command forks first (before any thread or event loop exists); the parent
    exits once the child reports the process running, the child serves pages."""

    def __init__(self) -> None:
        self._write_fd: int | None = None

    def fork(self) -> int | None:
        """In the parent: wait for the child's word and return the exit status.
        In the child: return None and carry on."""
        read_fd, write_fd = os.pipe()
        if os.fork() == 0:
            os.close(read_fd)
            self._write_fd = write_fd
            return None
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            word = pipe.read().decode(errors="replace")
        if word.startswith("ok"):
            return 0
        if word:
            print(word.rstrip("\n"), file=sys.stderr)
        else:
            print("lazarus: error: the restore daemon ended without a word", file=sys.stderr)
        return 1

    @property
    def waiting(self) -> bool:
        """In the child, before it has reported to the parent."""
        return self._write_fd is not None

    def report(self, word: str, log_file: str | None = None) -> None:
        """Tell the waiting parent; then stop holding the caller's stdout and
        stderr (a caller reading them would otherwise wait for the last page)."""
        if self._write_fd is None:
            return
        os.write(self._write_fd, word.encode())
        os.close(self._write_fd)
        self._write_fd = None
        if not word.startswith("ok"):
            return
        sys.stdout.flush()
        sys.stderr.flush()
        target = os.open(log_file or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(target, 1)
        os.dup2(target, 2)
        os.close(target)
        os.close(devnull)


def format_lazy_stats(resume_seconds: float, lazy: LazyStats, fetched: int, wire: int) -> str:
    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v * 1000:.2f} ms"

    return "\n".join([
        f"  time to resume    {ms(resume_seconds)}",
        f"  faults            {lazy.faults} ({lazy.pages_faulted} pages, "
        f"{lazy.zero_pages} zero pages), latency p50 {ms(lazy.latency(0.5))}, "
        f"p99 {ms(lazy.latency(0.99))}",
        f"  pages prefetched  {lazy.pages_prefetched} (working set, "
        f"{ms(lazy.prefetch_seconds)} before the release)",
        f"  pages pushed      {lazy.pages_pushed}",
        f"  pages read ahead  {lazy.pages_readahead}",
        f"  layout events     {lazy.events}",
        f"  pages fetched     {fetched / 1e6:.1f} MB, {wire / 1e6:.1f} MB over the wire",
        "  time to last page " + ("n/a (the process ended first)" if lazy.process_gone
                                  else ms(lazy.time_to_last_page)),
    ])


async def restore_and_serve(opts: RestoreOptions, args: argparse.Namespace,
                            detacher: Detacher) -> tuple[int, int]:
    """Restore; in lazy mode keep serving pages until all are in. Returns the
    root's PID and, with --pidns, the fd on which the namespace's init reports
    the root's wait status (else -1)."""
    from core.restore import restore

    ctx, stats = await restore(opts)
    for w in dict.fromkeys(ctx.warnings):   # once each: a tree repeats inherited fds
        log.warning("%s", w)
    root = ctx.root
    if args.stats:
        print(f"restored PID {root.pid} ({len(ctx.procs)} process(es))", file=sys.stderr)
        print(stats.format(), file=sys.stderr)
    detacher.report(f"ok {root.pid}\n", args.log_file)
    daemons = [p.daemon for p in ctx.live if p.daemon is not None]
    recorders = {p.proc.pid: p.daemon for p in ctx.live if p.daemon is not None}
    if daemons:
        sources = [s for p in ctx.live for s in (p.source, p.push_source) if s is not None]
        try:
            results = await serve_all(daemons)
        finally:
            for source in sources:
                await source.close()
        errors = [r for r in results if isinstance(r, BaseException)]
        if args.stats:
            lazy_stats = LazyStats.merge([r for r in results if isinstance(r, LazyStats)])
            print(format_lazy_stats(stats.total_seconds, lazy_stats,
                                    sum(s.bytes_fetched for s in sources),
                                    sum(s.wire_bytes for s in sources)), file=sys.stderr)
        if errors:
            raise errors[0]
        if opts.record_working_set:
            await save_working_set(opts, ctx.inventory_sha256,
                                   {pid: d.recording or [] for pid, d in recorders.items()})
    return root.pid, ctx.init_report


async def save_working_set(opts: RestoreOptions, digest: bytes,
                           recorded: dict[int, list[tuple[int, int]]]) -> None:
    """Keep the recorded faults beside the image: in the image directory, or
    on the page server the image came from. A failure is a warning: the
    process runs on, only the recording is lost."""
    from core.images import workingset
    from pageserver.client import PageServerError

    pages = sum(workingset.unique_pages(r) for r in recorded.values())
    if opts.server is None:
        from core.restore.lazy import embed_pages

        try:
            data = workingset.encode(digest, embed_pages(opts.images_dir, recorded),
                                     opts.record_window)
            workingset.write_local(opts.images_dir, data)
        except (OSError, ImageError) as exc:
            # The process runs on: only the recording is lost.
            log.warning("cannot save the working set in %s: %s", opts.images_dir,
                        getattr(exc, "strerror", None) or exc)
            return
        where = str(opts.images_dir / workingset.WORKINGSET)
    else:
        # Ranges only: the pages stay on the server (a control message is small).
        data = workingset.encode(digest, {pid: workingset.ProcessPlan(r)
                                          for pid, r in recorded.items()}, opts.record_window)
        assert opts.image_name is not None
        try:
            client = await opts.server.connect()
            try:
                await client.put_working_set(opts.image_name, data)
            finally:
                await client.close()
        except (PageServerError, OSError) as exc:
            log.warning("cannot save the working set on the page server: %s", exc)
            return
        where = f"image {opts.image_name} on the page server"
    log.info("recorded working set: %d pages of %d process(es), saved as %s",
             pages, len(recorded), where)


async def serve_all(daemons: list[LazyDaemon]) -> list[LazyStats | BaseException]:
    """Every lazy daemon until its process has all its pages or is gone,
    including daemons of children forked meanwhile."""
    tasks: set[asyncio.Task[LazyStats]] = set()

    def add(daemon: LazyDaemon) -> None:
        daemon.on_fork = add
        tasks.add(asyncio.get_running_loop().create_task(serve_daemon(daemon)))

    for daemon in daemons:
        add(daemon)
    results: list[LazyStats | BaseException] = []
    while tasks:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            tasks.discard(task)
            exc = task.exception()
            results.append(exc if exc is not None else task.result())
    return results


async def serve_daemon(daemon: LazyDaemon) -> LazyStats:
    from core.kernel.process import pidfd_open

    if not daemon.pid:
        return await daemon.wait()
    try:
        pidfd = pidfd_open(daemon.pid)
    except OSError:        # gone already
        daemon.process_gone()
        return await daemon.wait()
    loop = asyncio.get_running_loop()
    loop.add_reader(pidfd, daemon.process_gone)
    try:
        return await daemon.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def cmd_restore(args: argparse.Namespace) -> int:
    if args.page_server and not args.lazy:
        raise LazarusError("--page-server restores lazily: add --lazy (or `lazarus pull` "
                           "the image first for an eager restore)")
    if not args.page_server and not args.images_dir:
        raise LazarusError("restore needs -D DIR, or --lazy --page-server HOST:PORT --image NAME")
    if args.record_working_set and not args.lazy:
        raise LazarusError("--record-working-set records the faults of a lazy restore: "
                           "add --lazy")
    if args.record_seconds <= 0:
        raise LazarusError("--record-seconds must be positive")
    if args.read_ahead < 0:
        raise LazarusError("--read-ahead must be 0 (off) or a number of pages")
    opts = RestoreOptions(images_dir=Path(args.images_dir or "."), detach=args.detach,
                          pidfile=Path(args.pidfile) if args.pidfile else None,
                          inherit_fds=parse_inherit(args.inherit_fd),
                          write_method=args.write_method, lazy=args.lazy,
                          fault_around=args.fault_around, read_ahead=args.read_ahead,
                          lazy_timeout=args.lazy_timeout,
                          push_delay=args.push_delay, server=server_of(args),
                          image_name=args.image, pidns=args.pidns, prefetch=args.prefetch,
                          record_working_set=args.record_working_set,
                          record_window=args.record_seconds)
    detacher = Detacher()
    if args.lazy and args.detach:
        status = detacher.fork()
        if status is not None:
            return status
    try:
        pid, report = run_async(restore_and_serve(opts, args, detacher))
    except (LazarusError, ImageError, LazyError) as exc:
        if detacher.waiting:
            # The parent is still attached to the caller: it says it, once.
            detacher.report(f"lazarus: error: {exc}\n")
            return 1
        raise
    if args.detach:
        if report >= 0:
            os.close(report)
        return 0
    return wait_restored(pid, report)


def cmd_fork(args: argparse.Namespace) -> int:
    from core.fork import ForkOptions, ForkResult, fork, release_fork
    from pageserver.cli import UsageError, read_token, tls_context
    from pageserver.client import parse_hostport
    from pageserver.server import format_addr

    if args.release is not None:
        if args.tree is not None or args.image or args.listen:
            raise LazarusError("--release NAME takes no -t, --name or --page-server")
        pid = release_fork(args.release)
        print(f"released fork {args.release} (lazarus fork PID {pid})")
        return 0
    if args.tree is None or not args.image or not args.listen:
        raise LazarusError("fork needs -t PID, --name NAME and --page-server HOST:PORT "
                           "(or --release NAME)")
    if args.restores < 1:
        raise LazarusError("--restores must be 1 or more")
    try:
        listen = [parse_hostport(v) for v in args.listen]
        token = read_token(args.token_file) if args.token_file else None
        tls = tls_context(args.tls_cert, args.tls_key)
    except ValueError as exc:
        raise LazarusError(f"--page-server {exc}") from None
    except UsageError as exc:
        raise LazarusError(str(exc)) from None
    if not args.serve_timeout > 0:
        raise LazarusError("--serve-timeout must be more than 0")
    opts = ForkOptions(pid=args.tree, image_name=args.image, listen=listen,
                       serve_timeout=args.serve_timeout, restores=args.restores,
                       token=token, ssl_context=tls)

    def ready(res: ForkResult) -> None:
        for w in res.ctx.warnings:
            log.warning("%s", w)
        where = " ".join(format_addr(h, p) for h, p in res.addresses)
        print(f"forked PID {opts.pid} ({len(res.ctx.procs)} process(es)): image "
              f"{opts.image_name} served on {where}\n"
              f"restore the copy with: lazarus restore --lazy --page-server "
              f"{format_addr(*res.addresses[0])} --image {opts.image_name} [--pidns]",
              flush=True)
        if args.stats:
            print(f"the tree was frozen {res.frozen.total_seconds * 1000:.1f} ms:\n"
                  f"{res.frozen.format()}\n"
                  f"  not frozen: VmFlags read before {res.prescan_seconds * 1000:.1f} ms, "
                  f"twins read after {res.publish_seconds * 1000:.1f} ms",
                  file=sys.stderr, flush=True)

    res = run_async(fork(opts, ready))
    if args.stats:
        print(f"  served {res.pages * 4096 / 1e6:.1f} MB of pages from the twins in "
              f"{res.serve_seconds:.2f} s to {res.restores} complete restore(s)",
              file=sys.stderr)
    if res.released:
        print(f"lazarus: fork {opts.image_name} released ({res.restores} complete "
              "restore(s)): its twins were killed", file=sys.stderr)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from pageserver.client import PageServerError, pull_image

    server = server_of(args)
    if server is None or not args.image:
        raise LazarusError("pull needs --page-server HOST:PORT and --image NAME")

    stream = terminal_stream(args.quiet)
    bar: Progress | None = None

    def on_chunk(total: int, nbytes: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress("pull", total, stream)
        bar.add(nbytes)

    async def run() -> None:
        client = await server.connect()
        try:
            await pull_image(client, args.image, Path(args.images_dir), on_chunk)
        except PageServerError as exc:
            raise LazarusError(str(exc)) from None
        finally:
            if bar is not None:
                bar.finish()
            await client.close()

    run_async(run())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    desc = describe_image(Path(args.images_dir))
    if args.json:
        print(json.dumps(desc, indent=2))
    else:
        print(format_description(desc))
    return 0


def server_of(args: argparse.Namespace) -> ServerAddress | None:
    if not args.page_server:
        return None
    return ServerAddress.from_options(args.page_server, args.token_file, args.tls_ca)


def add_server_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--page-server", metavar="HOST:PORT", help=what)
    p.add_argument("--image", metavar="NAME", help="the image's name on the page server")
    p.add_argument("--token-file", metavar="FILE", help="token the page server asks for")
    p.add_argument("--tls-ca", metavar="FILE", help="CA to check the page server's TLS "
                   "certificate with (turns TLS on)")


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def whole_number(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{value} is not {lowest} or more")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="lazarus", description="Checkpoint and restore Linux processes.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="kernel features needed, one line each")
    c.set_defaults(func=cmd_check)

    d = sub.add_parser("dump", help="checkpoint a process into an image directory")
    d.add_argument("-t", "--tree", type=int, required=True, metavar="PID", help="process to dump")
    d.add_argument("-D", "--images-dir", metavar="DIR",
                   help="image directory to create (must not exist or be empty)")
    add_server_options(d, "send the image to this page server instead of a directory")
    d.add_argument("--leave-running", action="store_true",
                   help="let the process run on after the dump instead of killing it")
    add_compress_option(d)
    d.add_argument("--prev", metavar="DIR",
                   help="store only the pages written since this pre-dump image (which "
                        "becomes the parent of the new image)")
    d.add_argument("--stats", action="store_true", help="print per-stage times and bytes")
    add_quiet_option(d)
    d.set_defaults(func=cmd_dump)

    pd = sub.add_parser("pre-dump", help="copy memory while the process runs and start "
                        "dirty tracking, for a later `dump --prev`")
    pd.add_argument("-t", "--tree", type=int, required=True, metavar="PID",
                    help="process to pre-dump")
    pd.add_argument("-D", "--images-dir", required=True, metavar="DIR",
                    help="image directory to create (must not exist or be empty)")
    pd.add_argument("--prev", metavar="DIR",
                    help="the previous pre-dump: copy only the pages written since")
    add_compress_option(pd)
    pd.add_argument("--stats", action="store_true", help="print per-stage times and bytes")
    add_quiet_option(pd)
    pd.set_defaults(func=cmd_predump)

    m = sub.add_parser("migrate", help="live-migrate a process to a page server: pre-copy "
                       "rounds while it runs, then a short final freeze")
    m.add_argument("-t", "--tree", type=int, required=True, metavar="PID",
                   help="process to migrate")
    m.add_argument("--to", required=True, metavar="HOST:PORT", help="the page server")
    m.add_argument("--name", metavar="NAME", help="the image's name there (default "
                   "migrate-PID)")
    m.add_argument("--token-file", metavar="FILE", help="token the page server asks for")
    m.add_argument("--tls-ca", metavar="FILE", help="CA to check the page server's TLS "
                   "certificate with (turns TLS on)")
    m.add_argument("--max-rounds", type=positive_int, default=5, metavar="N",
                   help="pre-dump rounds at most (default 5; fewer once the pages written "
                        "per round stop shrinking)")
    m.add_argument("--work-dir", metavar="DIR",
                   help="keep the image chain in DIR (default: a temporary directory, "
                        "removed once the image is on the server)")
    add_compress_option(m)
    m.add_argument("--no-restore", action="store_true",
                   help="only store the image on the page server (by default the server "
                        "is asked to restore it on its host, if it was started with "
                        "--allow-restore)")
    m.add_argument("--pidns", action="store_true",
                   help="restore it there into a new PID namespace")
    add_quiet_option(m)
    m.set_defaults(func=cmd_migrate)

    r = sub.add_parser("restore", help="bring a dumped process back")
    r.add_argument("-D", "--images-dir", metavar="DIR", help="the image directory")
    add_server_options(r, "take metadata and pages from this page server (with --lazy)")
    r.add_argument("-d", "--detach", action="store_true",
                   help="return once the process runs instead of waiting for it")
    r.add_argument("--pidfile", metavar="FILE", help="write the restored PID here")
    r.add_argument("--inherit-fd", action="append", default=[], metavar="fd[N]:KEY",
                   help="give the restored process lazarus's fd N where the image had the "
                        "outside file KEY (as `lazarus show` names it, e.g. pipe:[1234])")
    r.add_argument("--write-method", choices=("procmem", "vmwritev"), default="procmem",
                   help=argparse.SUPPRESS)
    r.add_argument("--pidns", action="store_true",
                   help="restore into a new PID namespace (with an init of lazarus's that "
                        "reaps), where the processes get their own PIDs: the same image can "
                        "then be restored several times at once")
    r.add_argument("--lazy", action="store_true",
                   help="start the process at once and fault its memory in on demand")
    r.add_argument("--fault-around", type=positive_int, default=64, metavar="PAGES",
                   help="pages served per page fault in lazy mode (default 64)")
    r.add_argument("--read-ahead", type=non_negative_int, default=DEFAULT_READ_AHEAD,
                   metavar="PAGES",
                   help="in lazy mode, the largest read-ahead window for sequential faults: "
                        "pages requested ahead of a process that reads its memory in order "
                        f"(default {DEFAULT_READ_AHEAD}; 0 turns read-ahead off)")
    r.add_argument("--lazy-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                   help="how long a lost page server may stay lost before the restored "
                        "process is killed (default 30)")
    r.add_argument("--record-working-set", action="store_true",
                   help="with --lazy: record the pages the process faults on and keep them "
                        "beside the image (workingset.img) for later warm restores")
    r.add_argument("--record-seconds", type=positive_float, default=5.0, metavar="SECONDS",
                   help="with --record-working-set: record faults for this long after the "
                        "release; the background push waits until then (default 5)")
    r.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=True,
                   help="with --lazy: push the recorded working set, if the image has one, "
                        "before the process runs (default on)")
    r.add_argument("--log-file", metavar="FILE",
                   help="with --lazy -d: where the page daemon writes its messages and "
                        "--stats once detached (default: nowhere)")
    # Tests use it to see faults and events hit pages that are still lazy.
    r.add_argument("--push-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    r.add_argument("--stats", action="store_true", help="print per-stage times and bytes")
    r.set_defaults(func=cmd_restore)

    f = sub.add_parser(
        "fork", help="copy a running process to another host while it runs on",
        description="Freeze the tree briefly, fork a stopped copy-on-write twin of each "
        "process, let the tree run on, and serve the copy as image NAME. This command is "
        "itself the page server on the source host (pages are read from the twins, "
        "nothing is written to disk); restore anywhere with `lazarus restore --lazy "
        "--page-server HOST:PORT --image NAME`.")
    f.add_argument("-t", "--tree", type=int, metavar="PID",
                   help="process to fork (with its descendants)")
    f.add_argument("--name", "--image", dest="image", metavar="NAME",
                   help="the name the fork is served under (restore --image NAME)")
    f.add_argument("--page-server", "--listen", dest="listen", action="append",
                   metavar="HOST:PORT",
                   help="where this command serves the fork's pages itself, as the page "
                        "server of the source host (repeatable; port 0 picks one, printed)")
    f.add_argument("--restores", type=positive_int, default=1, metavar="N",
                   help="keep the twins until N restores have each received every page "
                        "(default 1; restores started meanwhile are served to the end)")
    f.add_argument("--release", metavar="NAME",
                   help="end the running fork NAME now (from another shell): its twins are "
                        "killed and it exits 0")
    f.add_argument("--token-file", metavar="FILE", help="clients must present this token")
    f.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    f.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    f.add_argument("--serve-timeout", type=positive_float, default=300.0, metavar="SECONDS",
                   help="give up, killing the twins, if no client has taken every page by "
                        "then (default 300)")
    f.add_argument("--stats", action="store_true",
                   help="print how long the tree was frozen, and what was served")
    f.set_defaults(func=cmd_fork)

    pl = sub.add_parser("pull", help="download a whole image from a page server")
    add_server_options(pl, "the page server to download from")
    pl.add_argument("-D", "--images-dir", required=True, metavar="DIR",
                    help="image directory to create (must not exist or be empty)")
    add_quiet_option(pl)
    pl.set_defaults(func=cmd_pull)

    s = sub.add_parser("show", help="describe an image directory")
    s.add_argument("images_dir", metavar="DIR")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_show)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="lazarus: %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except (LazarusError, ImageError, LazyError) as exc:
        print(f"lazarus: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:   # before OSError, of which it is one
        # The reader went away (`lazarus show DIR | head`): stop quietly, like cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:   # a kernel call failed where no stage gave it a better name
        print(f"lazarus: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lazarus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
