"""The asyncio page server: serves the images of one directory to any number of clients.

One :class:`_Session` (an asyncio.BufferedProtocol) per connection drives a
sans-IO :class:`ServerConnection`. Page requests are answered synchronously
in the receive callback (lowest latency: no task, no thread); the bulk
stream, file downloads and uploads run as tasks, several per connection,
their replies interleaved frame by frame. Reads for the bulk stream go
through a small thread pool, a chunk ahead of what is being sent, and every
sender waits for the transport to drain (backpressure) before it queues more.

A client that breaks the protocol is dropped; every session, dropped or not,
ends with exactly one log line.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import shutil
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

from . import wire_pb2 as wire
from .catalog import Catalog, CatalogError, Piece, ProcessPages, Scratch, Upload
from .protocol import (
    DATA_CHUNK,
    FEATURE_LZ4,
    HEADER_SIZE,
    MAX_FRAME_PAGES,
    PAGE_HEADER_SIZE,
    PAGE_SIZE,
    PROTOCOL_VERSION,
    BadMagic,
    Buffer,
    DataReceived,
    Event,
    HelloReceived,
    ProtocolError,
    RequestReceived,
    ServerConnection,
    VersionMismatch,
    encode_pages_header,
)
from .restorer import RestoreFailed, restore_stored

log = logging.getLogger("pageserver")

SERVER_NAME = "lazarus-pageserver/0.1"
HELLO_TIMEOUT = 10.0          # a client must say hello within this
CLOSE_GRACE = 1.0             # a refused client gets this long to read why
STREAM_CHUNK = 4 << 20        # bytes read (one pread) per step of a bulk stream
STREAM_AHEAD = 2              # chunks of a bulk stream being read ahead, in parallel
GET_SCRATCH = 256 << 10       # initial read buffer for page requests, per connection
WRITE_HIGH = 4 << 20          # transport buffer high-water mark (backpressure)
WRITE_LOW = 1 << 20


class ServerError(Exception):
    """The server cannot start (one line for the user)."""


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Session(asyncio.BufferedProtocol):
    def __init__(self, server: PageServer) -> None:
        self.server = server
        self.conn = ServerConnection()
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.started = time.monotonic()
        self.requests = 0
        self.bytes_out = 0
        self.pages_served = 0
        self.reason: str | None = None       # why the session was dropped or refused
        # The restore this connection belongs to, from its hello (or itself alone).
        self.restore = f"connection-{id(self)}"
        self.closed = False
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.uploads: dict[int, Upload] = {}
        self.failed_uploads: set[int] = set()
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._scratch: Scratch | None = None
        # While a stream writes to the socket itself, other writes wait here.
        self._held: list[Buffer] | None = None

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = format_addr(str(peer[0]), int(peer[1]))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self.server.sessions.add(self)
        self._timer = self.loop.call_later(self.server.hello_timeout, self._hello_timeout)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return
        try:
            for ev in self.conn.buffer_updated(nbytes):
                self._handle(ev)
                if self.closed:
                    return
        except VersionMismatch as e:
            self._refuse(wire.Error.UNSUPPORTED, str(e))
        except BadMagic as e:
            hint = " (a TLS client? this server runs without --tls-cert)" \
                if e.magic[:2] == b"\x16\x03" else ""
            self.drop(f"protocol error: {e}{hint}")
        except ProtocolError as e:
            self.drop(f"protocol error: {e}")

    def eof_received(self) -> bool:
        try:
            self.conn.receive_eof()
        except ProtocolError as e:
            self.drop(f"protocol error: {e}")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reason is None and exc is not None:
            self.reason = f"connection lost: {exc}"
        self._shutdown()
        self.server.sessions.discard(self)
        dt = time.monotonic() - self.started
        how = f"dropped ({self.reason})" if self.reason else "ended"
        log.info("client %s: session %s after %.1f s: %d requests, %d bytes out, "
                 "%d pages served, %d bytes in", self.peer, how, dt, self.requests,
                 self.bytes_out, self.pages_served, self.conn.decoder.bytes_received)

    def pause_writing(self) -> None:
        # A client that does not read its replies stops being read: without
        # this, one sending requests and never reading would fill our memory.
        self._paused = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self._wake(None)

    # -- plumbing

    def _wake(self, exc: BaseException | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(exc)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("client gone")
        if not self._paused:
            return
        fut = self.loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.bytes_out += len(data)
            if self._held is not None:
                self._held.append(data)
            else:
                self.transport.write(data)

    def writelines(self, bufs: list[Buffer]) -> None:
        if self.transport is not None and not self.closed:
            self.bytes_out += sum(len(b) for b in bufs)
            if self._held is not None:
                # Views of reused buffers must not wait: copy them.
                self._held += [bytes(b) for b in bufs]
            else:
                self.transport.writelines(bufs)

    def drop(self, reason: str) -> None:
        """Cut the connection now (the one log line comes from connection_lost)."""
        if self.closed:
            return
        self.reason = reason
        self._shutdown()
        if self.transport is not None:
            self.transport.abort()

    def _refuse(self, code: wire.Error.Code, message: str) -> None:
        """Tell the client why, then close (it has CLOSE_GRACE to read it)."""
        if self.closed:
            return
        self.write(self.conn.send_error(0, code, message))
        self.reason = f"refused: {message}"
        self._shutdown()
        if self.transport is not None:
            transport = self.transport
            transport.close()
            self.loop.call_later(CLOSE_GRACE, transport.abort)

    def _hello_timeout(self) -> None:
        if self.conn.hello is None:
            self.drop(f"no hello within {self.server.hello_timeout:g} s")

    def _shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
        for up in self.uploads.values():
            up.abort()
        self.uploads.clear()
        self._wake(ConnectionResetError("client gone"))

    def _spawn(self, rid: int, coro: object) -> None:
        assert asyncio.iscoroutine(coro)
        task: asyncio.Task[None] = self.loop.create_task(coro)
        self.tasks[rid] = task

        def done(t: asyncio.Task[None]) -> None:
            if self.tasks.get(rid) is t:
                del self.tasks[rid]
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                if not isinstance(exc, ConnectionError):
                    log.error("client %s: request %d failed: %r", self.peer, rid, exc)
                    self.write(self.conn.send_error(rid, wire.Error.INTERNAL, f"{exc}"))

        task.add_done_callback(done)

    def _in_use(self, rid: int) -> bool:
        return rid in self.tasks or rid in self.uploads or rid in self.failed_uploads

    # -- requests

    def _handle(self, ev: Event) -> None:
        if isinstance(ev, HelloReceived):
            self._hello(ev.hello)
        elif isinstance(ev, RequestReceived):
            self.requests += 1
            try:
                self._request(ev.request_id, ev.request)
            except CatalogError as e:
                if ev.request_id in self.uploads:
                    self.uploads.pop(ev.request_id).abort()
                    self.failed_uploads.add(ev.request_id)
                self.write(self.conn.send_error(ev.request_id, e.code, str(e)))
            except ProtocolError:
                raise
            except Exception as e:  # noqa: BLE001 - one request fails, not the server
                log.error("client %s: request %d failed: %r", self.peer, ev.request_id, e)
                if ev.request_id in self.uploads:
                    self.uploads.pop(ev.request_id).abort()
                    self.failed_uploads.add(ev.request_id)
                self.write(self.conn.send_error(ev.request_id, wire.Error.INTERNAL,
                                                f"internal error: {e}"))
        elif isinstance(ev, DataReceived):
            self._data(ev.request_id, ev.data)

    def _hello(self, hello: wire.ClientHello) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if hello.protocol_version != PROTOCOL_VERSION:
            self._refuse(wire.Error.UNSUPPORTED,
                         f"client speaks protocol version {hello.protocol_version},"
                         f" this server speaks {PROTOCOL_VERSION}")
            return
        token = self.server.token
        if token is not None:
            if not hello.token:
                self._refuse(wire.Error.UNAUTHENTICATED, "this server requires a token")
                return
            if not hmac.compare_digest(hello.token.encode(), token.encode()):
                self._refuse(wire.Error.UNAUTHENTICATED, "wrong token")
                return
        if hello.restore:
            self.restore = hello.restore
        features = [f for f in hello.features if f == FEATURE_LZ4 and self.server.lz4]
        self.write(self.conn.send_server_hello(features, SERVER_NAME))

    def _request(self, rid: int, req: wire.Request) -> None:
        kind = req.WhichOneof("kind")
        catalog = self.server.catalog
        if kind in ("put_file", "put_commit", "cancel"):
            self._continuation(rid, kind, req)
            return
        if self._in_use(rid):
            raise ProtocolError(f"request id {rid} is already in use")
        if kind == "get_pages":
            g = req.get_pages
            entry = catalog.process(g.image, g.pid)
            scratch = self._scratch
            if scratch is None or len(scratch.buf) < g.nr_pages * PAGE_SIZE:
                scratch = self._scratch = Scratch(
                    max(GET_SCRATCH, min(g.nr_pages, MAX_FRAME_PAGES) * PAGE_SIZE))
            scratch.reset()
            pieces = entry.get_range(g.vaddr, g.nr_pages, self.conn.lz4, scratch)
            self.writelines(self._frames(rid, pieces, end=True))
            entry.note_sent(self.restore, pieces)
            if self.transport is not None and self.transport.get_write_buffer_size():
                # Not all sent at once: the transport still holds views of the
                # scratch buffer, so the next request gets a new one.
                self._scratch = None
        elif kind == "list_images":
            self.write(self.conn.send_response(
                rid, wire.Response(images=wire.ImageList(names=catalog.list_images()))))
        elif kind == "list_files":
            files = catalog.list_files(req.list_files.image)
            self.write(self.conn.send_response(rid, wire.Response(files=wire.FileList(
                files=[wire.FileInfo(name=n, size=s) for n, s in files]))))
        elif kind == "get_file":
            fd = catalog.open_file(req.get_file.image, req.get_file.name)
            self._spawn(rid, self._send_file(rid, fd))
        elif kind == "stream_pages":
            s = req.stream_pages
            entry = catalog.process(s.image, s.pid)
            self._spawn(rid, self._stream(rid, entry))
        elif kind == "put_working_set":
            w = req.put_working_set
            catalog.put_working_set(w.image, w.data)
            self.write(self.conn.send_response(rid, wire.Response(
                working_set_stored=wire.WorkingSetStored(bytes=len(w.data)))))
        elif kind == "restore_image":
            r = req.restore_image
            command = self.server.restore_command
            if command is None:
                raise CatalogError(wire.Error.UNSUPPORTED,
                                   "this page server does not restore images (start it with "
                                   "--allow-restore)")
            self._spawn(rid, self._restore(rid, command, catalog.image_dir(r.image), r.pidns))
        elif kind == "flatten_chain":
            f = req.flatten_chain
            catalog.check_new(f.name)
            dirs = catalog.chain_dirs(f.last)
            catalog.uploads.add(f.name)     # reserved until written
            self._spawn(rid, self._flatten(rid, f.last, f.name, dirs))
        elif kind == "remove_image":
            catalog.remove(req.remove_image.name)
            log.info("client %s: removed image %s", self.peer, req.remove_image.name)
            self.write(self.conn.send_response(rid, wire.Response(removed=wire.Removed())))
        elif kind == "put_image":
            self.failed_uploads.discard(rid)
            self.uploads[rid] = catalog.begin_upload(req.put_image.name)
            self.write(self.conn.send_response(rid, wire.Response(put_ready=wire.PutReady()),
                                               end=False))
        else:
            raise ProtocolError(f"unknown request {kind}")

    def _continuation(self, rid: int, kind: str | None, req: wire.Request) -> None:
        if kind == "cancel":
            task = self.tasks.pop(rid, None)
            up = self.uploads.pop(rid, None)
            if task is not None:
                task.cancel()
            if up is not None:
                up.abort()
            if task is not None or up is not None:
                self.write(self.conn.send_error(rid, wire.Error.CANCELLED, "cancelled"))
            self.failed_uploads.discard(rid)
            return
        if rid in self.failed_uploads:
            if kind == "put_commit":
                self.failed_uploads.discard(rid)
            return     # the client already has its error
        up = self.uploads.get(rid)
        if up is None:
            raise ProtocolError(f"{kind} for request {rid}, which is no upload")
        if kind == "put_file":
            up.begin_file(req.put_file.name, req.put_file.size)
        else:
            up.commit()
            del self.uploads[rid]
            log.info("client %s: stored image %s (%d files, %d bytes)", self.peer, up.name,
                     len(up.files), up.bytes)
            self.write(self.conn.send_response(rid, wire.Response(
                put_done=wire.PutDone(files=len(up.files), bytes=up.bytes))))

    def _data(self, rid: int, data: memoryview) -> None:
        if rid in self.failed_uploads:
            return
        up = self.uploads.get(rid)
        if up is None:
            raise ProtocolError(f"DATA for request {rid}, which is no upload")
        try:
            up.write(data)
        except CatalogError as e:
            self.uploads.pop(rid).abort()
            self.failed_uploads.add(rid)
            self.write(self.conn.send_error(rid, e.code, str(e)))

    def _frames(self, rid: int, pieces: list[Piece], end: bool) -> list[Buffer]:
        out: list[Buffer] = []
        last = len(pieces) - 1
        for k, p in enumerate(pieces):
            fin = end and k == last
            if p.data is None:
                out.append(self.conn.send_zero_pages(rid, p.vaddr, p.nr_pages, end=fin))
            else:
                out += self.conn.send_pages(rid, p.vaddr, p.nr_pages, p.data, lz4=p.lz4,
                                            crc32=p.crc32, end=fin)
            self.pages_served += p.nr_pages
        return out

    async def _flatten(self, rid: int, last: str, name: str, dirs: list[Path]) -> None:
        catalog = self.server.catalog
        try:
            size = await self.loop.run_in_executor(self.server.pool, catalog.flatten_chain,
                                                   last, name, dirs)
        except CatalogError as e:
            self.write(self.conn.send_error(rid, e.code, str(e)))
            return
        finally:
            catalog.uploads.discard(name)
        for d in dirs:       # the chain is spent: its oldest pages file is now name's
            catalog.forget(d.name)
            shutil.rmtree(d, ignore_errors=True)
        log.info("client %s: flattened %s (%d images) into %s, %d bytes", self.peer, last,
                 len(dirs), name, size)
        self.write(self.conn.send_response(rid, wire.Response(
            flattened=wire.Flattened(bytes=size))))

    async def _restore(self, rid: int, command: Sequence[str], directory: Path,
                       pidns: bool) -> None:
        try:
            pid, seconds = await restore_stored(command, directory, pidns)
        except RestoreFailed as e:
            log.warning("client %s: %s", self.peer, e)
            self.write(self.conn.send_error(rid, wire.Error.INTERNAL, str(e)))
            return
        log.info("client %s: restored image %s as PID %d in %.0f ms", self.peer,
                 directory.name, pid, seconds * 1000)
        self.write(self.conn.send_response(rid, wire.Response(
            restored=wire.Restored(pid=pid, seconds=seconds))))

    async def _send_file(self, rid: int, fd: int) -> None:
        try:
            size = os.fstat(fd).st_size
            off = 0
            while True:
                if size - off <= DATA_CHUNK:
                    chunk = os.pread(fd, DATA_CHUNK, off)       # small: no thread hop
                else:
                    chunk = await self.loop.run_in_executor(
                        self.server.pool, os.pread, fd, DATA_CHUNK, off)
                off += len(chunk)
                end = len(chunk) < DATA_CHUNK or off >= size
                self.writelines(self.conn.send_data(rid, chunk, end=end))
                if end:
                    return
                await self.drain()
        except OSError as e:
            self.write(self.conn.send_error(rid, wire.Error.INTERNAL, f"read failed: {e}"))
        finally:
            os.close(fd)

    async def _sent_through(self, mark: int) -> None:
        """Wait until every byte queued before ``mark`` (a bytes_out value) left the
        transport's buffer: what is still buffered is always the most recent bytes."""
        delay = 0.0005
        while True:
            if self.closed or self.transport is None:
                raise ConnectionResetError("client gone")
            if self.transport.get_write_buffer_size() <= self.bytes_out - mark:
                return
            if self._paused:
                await self.drain()          # woken by the transport itself
                continue
            # No callback for "buffer down to N bytes": poll, backing off for a
            # client that reads slowly.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _socket_fd(self) -> int | None:
        """A dup of the socket's fd, for writing to it directly; None under TLS."""
        t = self.transport
        if not self.server.sendfile or t is None or t.get_extra_info("sslcontext") is not None:
            return None
        sock = t.get_extra_info("socket")
        try:
            return os.dup(sock.fileno()) if sock is not None else None
        except (OSError, AttributeError):
            return None

    async def _writable(self, fd: int) -> None:
        fut = self.loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)
        self.loop.add_writer(fd, ready)
        try:
            await fut
        finally:
            self.loop.remove_writer(fd)

    async def _send_stored(self, rid: int, entry: ProcessPages, group: list[int],
                           lz4_ok: bool, sock: int, fd: int) -> int:
        """Send blocks as stored, straight from the file to the socket (sendfile):
        no read, no copy. Only while the transport has nothing buffered, other
        writes held back meanwhile so that frames stay whole and in order; those
        go out between two blocks. Returns the pages sent."""
        assert self.transport is not None
        opt = self.transport.get_extra_info("socket")
        pages = 0

        def release() -> None:
            held, self._held = self._held, None
            if not self.closed and self.transport is not None:
                try:
                    opt.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
                except OSError:
                    pass
                if held:
                    self.transport.writelines(held)

        for i in group:
            if self._held is None:
                await self._sent_through(self.bytes_out)   # the transport is empty
                self._held = []
                opt.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            try:
                b = entry.by_vaddr[i]
                head = memoryview(encode_pages_header(
                    rid, b.vaddr, b.nr_pages, b.length, lz4=b.lz4 and lz4_ok, crc32=b.crc32))
                while head:
                    try:
                        head = head[os.write(sock, head):]
                    except BlockingIOError:
                        await self._writable(sock)
                off, left = b.offset, b.length
                while left:
                    try:
                        n = os.sendfile(sock, fd, off, left)
                    except BlockingIOError:
                        await self._writable(sock)
                        continue
                    if n == 0:
                        # Half a frame is out: this connection cannot go on.
                        self.drop(f"image {entry.image}: pages file of {entry.pid} shrank"
                                  " while being sent")
                        raise ConnectionResetError("pages file shrank")
                    off += n
                    left -= n
            except BaseException:
                release()
                raise
            self.bytes_out += HEADER_SIZE + PAGE_HEADER_SIZE + b.length
            pages += b.nr_pages
            if self._held:
                release()          # replies that came meanwhile go out now
        if self._held is not None:
            release()
        self.pages_served += pages
        return pages

    async def _stream(self, rid: int, entry: ProcessPages) -> None:
        # Our own fd: the shared one may be closed if the index is evicted meanwhile.
        fd = os.dup(entry.fd)
        lz4_ok = self.conn.lz4
        pool = self.server.pool
        groups = entry.stream_chunks(STREAM_CHUNK)
        # Blocks are read (and, the first time, checked) by the pool, up to
        # STREAM_AHEAD chunks ahead of the one being sent, into buffers reused
        # in turn: the frames point into them, so a buffer is refilled only
        # once everything it held has left the transport.
        buffers = [Scratch(STREAM_CHUNK) for _ in range(STREAM_AHEAD + 2)]
        sent_mark = [0] * len(buffers)
        turn = 0
        # (read in the pool, buffer index) or, for blocks that go out as
        # stored and were checked before, (None, the block indexes).
        inflight: deque[tuple[asyncio.Future[list[Piece]] | None, int | list[int]]] = deque()
        sock = self._socket_fd()

        async def fill() -> None:
            nonlocal turn
            while len(inflight) < STREAM_AHEAD:
                group = next(groups, None)
                if group is None:
                    return
                if sock is not None and entry.sendable_as_stored(group, lz4_ok):
                    inflight.append((None, group))
                    continue
                j = turn % len(buffers)
                turn += 1
                await self._sent_through(sent_mark[j])
                inflight.append((self.loop.run_in_executor(
                    pool, entry.stream_pieces, fd, group, lz4_ok, buffers[j]), j))

        frames = pages = 0
        try:
            await fill()
            while inflight:
                fut, what = inflight[0]
                if fut is None:
                    assert isinstance(what, list) and sock is not None
                    inflight.popleft()
                    await fill()
                    # Straight from the file, once the transport has sent all it holds.
                    await self._sent_through(self.bytes_out)
                    pages += await self._send_stored(rid, entry, what, lz4_ok, sock, fd)
                    frames += len(what)
                    continue
                assert isinstance(what, int)
                pieces = await fut
                inflight.popleft()
                await fill()
                self.writelines(self._frames(rid, pieces, end=False))
                entry.note_sent(self.restore, pieces)
                sent_mark[what] = self.bytes_out
                frames += len(pieces)
                pages += sum(p.nr_pages for p in pieces)
                await self.drain()
            self.write(self.conn.send_response(rid, wire.Response(
                stream_end=wire.StreamEnd(blocks=frames, pages=pages))))
        except CatalogError as e:
            self.write(self.conn.send_error(rid, e.code, str(e)))
        finally:
            if sock is not None:
                os.close(sock)
            running = [f for f, _ in inflight if f is not None and not f.done()]
            if not running:
                os.close(fd)
            else:
                # Reads still running in the pool: close the fd after the last.
                left = [len(running)]

                def done(_: object) -> None:
                    left[0] -= 1
                    if left[0] == 0:
                        os.close(fd)
                for f in running:
                    f.add_done_callback(done)


class PageServer:
    """Serves the image directories under ``images`` (see the module docstring)."""

    def __init__(self, images: Path, *, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, lz4: bool = True,
                 hello_timeout: float = HELLO_TIMEOUT, sendfile: bool = True,
                 restore_command: Sequence[str] | None = None) -> None:
        self.catalog = Catalog(images)
        # `lazarus` to run for RestoreImage requests; None: they are refused.
        self.restore_command = restore_command
        self.hello_timeout = hello_timeout
        self.sendfile = sendfile
        self.token = token
        self.ssl_context = ssl_context
        self.lz4 = lz4
        self.sessions: set[_Session] = set()
        self.addresses: list[tuple[str, int]] = []
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pageserver-io")
        self._servers: list[asyncio.Server] = []

    async def start(self, listen: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        """Listen on every (host, port); returns the bound addresses (port 0 resolved)."""
        loop = asyncio.get_running_loop()
        try:
            for host, port in listen:
                try:
                    srv = await loop.create_server(
                        lambda: _Session(self), host, port, ssl=self.ssl_context,
                        reuse_address=True, backlog=128)
                except OSError as e:
                    why = os.strerror(e.errno).lower() if e.errno else str(e)
                    raise ServerError(
                        f"cannot listen on {format_addr(host, port)}: {why}") from e
                self._servers.append(srv)
                for sock in srv.sockets:
                    name = sock.getsockname()
                    self.addresses.append((str(name[0]), int(name[1])))
        except BaseException:
            await self.close()
            raise
        return self.addresses

    async def close(self) -> None:
        """Stop listening, drop every client, release everything."""
        for srv in self._servers:
            srv.close()
        for session in list(self.sessions):
            session.drop("server stopping")
        for srv in self._servers:
            await srv.wait_closed()
        self._servers.clear()
        # Let the transports run connection_lost (and log their line).
        for _ in range(3):
            await asyncio.sleep(0)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.catalog.close()
