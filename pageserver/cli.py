"""`pageserver` command: serve the images of a directory over TCP (lazy restore, pull, put).

    pageserver -D /srv/images --listen 0.0.0.0:7070 --listen [::]:7070 \\
        --token-file /etc/lazarus/token --tls-cert cert.pem --tls-key key.pem

Logs to stderr: the addresses it listens on, one line per client session,
one line per stored image. SIGTERM or SIGINT stops it cleanly (exit 0).
Bad options and start-up failures are one `pageserver: error: ...` line and
exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import ssl
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .client import parse_hostport
from .server import HELLO_TIMEOUT, PageServer, ServerError, format_addr

T = TypeVar("T")
log = logging.getLogger("pageserver")

DEFAULT_LISTEN = "127.0.0.1:7070"


class UsageError(Exception):
    pass


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pageserver",
        description="Serve lazarus images (metadata, pages on demand, bulk page streams, "
                    "uploads) to lazy restores and pulls over TCP.")
    p.add_argument("-D", "--images", required=True, metavar="DIR",
                   help="directory of image directories, each served by its name")
    p.add_argument("--listen", action="append", metavar="HOST:PORT",
                   help=f"address to listen on (repeatable; IPv6 as [::1]:7070;"
                        f" default {DEFAULT_LISTEN})")
    p.add_argument("--token-file", metavar="FILE",
                   help="clients must present the token this file holds")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--no-lz4", action="store_true",
                   help="never send lz4-compressed pages, even to clients that accept them")
    p.add_argument("--hello-timeout", type=float, default=HELLO_TIMEOUT, metavar="SECONDS",
                   help=f"drop a client that has not said hello by then"
                        f" (default {HELLO_TIMEOUT:g})")
    p.add_argument("--allow-restore", action="store_true",
                   help="let clients have a stored image restored on this host (lazily, "
                        "as root): the last step of `lazarus migrate`; needs --token-file")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise UsageError(f"--token-file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--token-file {path}: not a text file") from None
    if not token:
        raise UsageError(f"--token-file {path} is empty")
    return token


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError("--tls-cert and --tls-key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise UsageError(f"TLS: {e.filename}: no such file") from None
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"TLS: cannot load {cert} / {key}: {e}") from None
    return ctx


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Failed TLS handshakes and the like: one line, not a traceback."""
    exc = context.get("exception")
    msg = context.get("message", "error")
    peer = ""
    transport = context.get("transport")
    if transport is not None:
        try:
            addr = transport.get_extra_info("peername")
            if isinstance(addr, tuple):
                peer = f"client {format_addr(str(addr[0]), int(addr[1]))}: "
        except Exception:   # noqa: BLE001 - diagnostics only
            peer = ""
    log.warning("%s%s%s", peer, msg, f": {exc!r}" if exc is not None else "")


async def _serve(images: Path, listen: list[tuple[str, int]], token: str | None,
                 ctx: ssl.SSLContext | None, lz4: bool, hello_timeout: float,
                 restore_command: list[str] | None) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_exception)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = PageServer(images, token=token, ssl_context=ctx, lz4=lz4,
                        hello_timeout=hello_timeout, restore_command=restore_command)
    try:
        addresses = await server.start(listen)
    except ServerError as e:
        print(f"pageserver: error: {e}", file=sys.stderr)
        return 1
    for host, port in addresses:
        log.info("listening on %s%s", format_addr(host, port), " (TLS)" if ctx else "")
        if token is None and not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            log.warning("warning: no --token-file: anyone who reaches %s can read the "
                        "images and upload new ones", format_addr(host, port))
    log.info("serving images from %s%s%s", server.catalog.root,
             ", token required" if token else "",
             ", restores them on request" if restore_command else "")
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await server.close()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="pageserver: %(message)s")
    try:
        images = Path(args.images)
        if not images.exists():
            raise UsageError(f"images directory {images} does not exist")
        if not images.is_dir():
            raise UsageError(f"{images} is not a directory")
        listen: list[tuple[str, int]] = []
        for value in args.listen or [DEFAULT_LISTEN]:
            try:
                listen.append(parse_hostport(value))
            except ValueError as e:
                raise UsageError(f"--listen {e}") from None
        if not args.hello_timeout > 0:
            raise UsageError("--hello-timeout must be more than 0")
        token = read_token(args.token_file) if args.token_file else None
        ctx = tls_context(args.tls_cert, args.tls_key)
        if args.allow_restore and token is None:
            # Whoever may upload and restore images runs code here as root.
            raise UsageError("--allow-restore needs --token-file")
        restore_command = [sys.executable, "-m", "core.cli"] if args.allow_restore else None
    except UsageError as e:
        print(f"pageserver: error: {e}", file=sys.stderr)
        return 1
    try:
        return _run(_serve(images, listen, token, ctx, not args.no_lz4, args.hello_timeout,
                           restore_command))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
