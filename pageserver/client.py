"""asyncio client of the page server, on the same sans-IO protocol module as the server.

One :class:`PageClient` is one connection. Its methods may be called
concurrently from several tasks: each call is a request with its own id, and
replies are matched by id whatever order they come in. Replies of different
requests share the connection, so a bulk stream and page faults on the same
connection wait behind each other's frames; for the lowest fault latency
give the stream its own connection.

    client = await PageClient.connect("127.0.0.1", 7070, token=..., tls_ca=...)
    data = await client.get_pages("img", pid, vaddr, 16)
    async for vaddr, data in client.stream_pages("img", pid): ...
    await client.close()
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import ssl
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

from . import wire_pb2 as wire
from .protocol import (
    DATA_CHUNK,
    FEATURE_LZ4,
    MAGIC,
    MAX_REQUEST_PAGES,
    PAGE_SIZE,
    PROTOCOL_VERSION,
    BadMagic,
    ClientConnection,
    CorruptPages,
    DataReceived,
    Event,
    PagesReceived,
    ProtocolError,
    ResponseReceived,
    ServerHelloReceived,
    VersionMismatch,
)

CLIENT_NAME = "lazarus-pageclient/0.1"

_HOSTPORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^:\[\]\s/]+)):(?P<port>\d{1,5})$")
_SAFE_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@=-]{0,199}")

# Stream blocks queued before the connection stops reading (backpressure).
# Kept small: besides bounding memory, a few blocks freed and allocated again
# reuse the same heap memory, while a deep queue makes malloc give memory
# back and fault it in again (on this project's VMs, ~4x the cost of the copy).
_STREAM_HIGH = 8
_STREAM_LOW = 2


class PageServerError(Exception):
    """Anything that went wrong talking to the page server; str() is one line for the user."""


class RemoteError(PageServerError):
    """The server answered a request with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.code_name = wire.Error.Code.Name(code) if code in wire.Error.Code.values() else "?"


def parse_hostport(value: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port)."""
    m = _HOSTPORT.match(value.strip())
    if not m:
        raise ValueError(f"{value!r}: expected HOST:PORT (IPv6 as [::1]:PORT)")
    port = int(m.group("port"))
    if port > 65535:
        raise ValueError(f"{value!r}: port {port} is out of range")
    return (m.group("v6") or m.group("host")), port


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- pending requests


class _Pending:
    """A request waiting for (the rest of) its reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[object] = loop.create_future()

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
            # Retrieved or not, never "exception was never retrieved" noise.
            self.future.exception()

    def response(self, ev: ResponseReceived) -> bool:
        """Handle a RESPONSE; True when the request is finished."""
        if ev.response.WhichOneof("kind") == "error":
            err = ev.response.error
            self.fail(RemoteError(err.code, err.message))
            return True
        if not self.future.done():
            self.future.set_result(ev.response)
        return ev.end

    def pages(self, ev: PagesReceived) -> bool:
        raise ProtocolError(f"unexpected PAGES frame for request {ev.request_id}")

    def data(self, ev: DataReceived) -> bool:
        raise ProtocolError(f"unexpected DATA frame for request {ev.request_id}")


class _PagesReply(_Pending):
    def __init__(self, loop: asyncio.AbstractEventLoop, vaddr: int, nr_pages: int,
                 verify: bool) -> None:
        super().__init__(loop)
        self.cursor = vaddr
        self.end = vaddr + nr_pages * PAGE_SIZE
        self.verify = verify
        self.parts: list[bytes] = []

    def pages(self, ev: PagesReceived) -> bool:
        if ev.vaddr != self.cursor or ev.vaddr + ev.size > self.end:
            raise ProtocolError(
                f"pages at {ev.vaddr:#x} ({ev.nr_pages}) in the reply for"
                f" [{self.cursor:#x}, {self.end:#x})")
        self.parts.append(ev.decode(self.verify))
        self.cursor += ev.size
        if not ev.end:
            return False
        if self.cursor != self.end:
            raise ProtocolError(f"reply ends at {self.cursor:#x}, before {self.end:#x}")
        parts = self.parts
        self.future.set_result(parts[0] if len(parts) == 1 else b"".join(parts))
        return True


# What get_pages_into hands each part of the reply to, as it arrives: (vaddr,
# data, offset, nbytes), the pages being data[offset:offset+nbytes]; data is
# a writable view of the receive buffer (raw pages, no copy made) or bytes
# (decompressed or zeros), valid only during the call.
PageSink = Callable[[int, bytes | memoryview, int, int], None]


class _SinkReply(_Pending):
    """GetPages whose pages go to a callback as they arrive, not into bytes:
    the lazy daemon copies them into the process straight from the buffer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, vaddr: int, nr_pages: int,
                 verify: bool, sink: PageSink) -> None:
        super().__init__(loop)
        self.cursor = vaddr
        self.end = vaddr + nr_pages * PAGE_SIZE
        self.verify = verify
        self.sink = sink

    def pages(self, ev: PagesReceived) -> bool:
        if ev.vaddr != self.cursor or ev.vaddr + ev.size > self.end:
            raise ProtocolError(
                f"pages at {ev.vaddr:#x} ({ev.nr_pages}) in the reply for"
                f" [{self.cursor:#x}, {self.end:#x})")
        self.cursor += ev.size
        if not self.future.done():      # a failed sink: the rest is only drained
            try:
                if ev.lz4 or ev.zero or self.verify or ev.data.readonly:
                    data = ev.decode(self.verify)
                    self.sink(ev.vaddr, data, 0, len(data))
                else:
                    self.sink(ev.vaddr, ev.data, 0, ev.size)
            except CorruptPages:
                raise
            except Exception as exc:    # the sink's own failure: the caller's to see
                self.fail(exc)
        if not ev.end:
            return False
        if self.cursor != self.end:
            raise ProtocolError(f"reply ends at {self.cursor:#x}, before {self.end:#x}")
        if not self.future.done():
            self.future.set_result(None)
        return True


class _FileReply(_Pending):
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 sink: Callable[[memoryview], None]) -> None:
        super().__init__(loop)
        self.sink = sink
        self.size = 0

    def data(self, ev: DataReceived) -> bool:
        self.sink(ev.data)
        self.size += len(ev.data)
        if ev.end:
            self.future.set_result(self.size)
        return ev.end


class _StreamReply(_Pending):
    def __init__(self, loop: asyncio.AbstractEventLoop, client: PageClient) -> None:
        super().__init__(loop)
        self.loop = loop
        self.client = client
        self.verify = client.verify
        self.queue: deque[tuple[int, bytes]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.frames = 0
        self.pages_seen = 0
        self.finished = False

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def pages(self, ev: PagesReceived) -> bool:
        if ev.zero:
            raise ProtocolError("hole in a page stream")
        # Decoded here, straight from the receive buffer: one copy (or one
        # decompression) per block, into the bytes object handed out.
        self.queue.append((ev.vaddr, ev.decode(self.verify)))
        self.frames += 1
        self.pages_seen += ev.nr_pages
        if len(self.queue) >= _STREAM_HIGH:
            self.client._pause(self)
        self._wake()
        if ev.end:
            raise ProtocolError("page stream ended without its StreamEnd")
        return False

    def response(self, ev: ResponseReceived) -> bool:
        done = super().response(ev)
        kind = ev.response.WhichOneof("kind")
        if kind == "stream_end":
            end = ev.response.stream_end
            if (end.blocks, end.pages) != (self.frames, self.pages_seen):
                self.fail(PageServerError(
                    f"page stream incomplete: got {self.frames} blocks/{self.pages_seen} pages,"
                    f" server sent {end.blocks}/{end.pages}"))
        elif kind != "error":
            raise ProtocolError(f"unexpected {kind} response in a page stream")
        self.finished = True
        self._wake()
        return done

    def fail(self, exc: BaseException) -> None:
        super().fail(exc)
        self.finished = True
        self._wake()


class _PutReply(_Pending):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.ready: asyncio.Future[None] = loop.create_future()

    def response(self, ev: ResponseReceived) -> bool:
        kind = ev.response.WhichOneof("kind")
        if kind == "put_ready" and not ev.end:
            if not self.ready.done():
                self.ready.set_result(None)
            return False
        done = super().response(ev)
        if not self.ready.done():
            # An error before ready: let the uploader see it.
            self.ready.set_result(None)
        return done

    def fail(self, exc: BaseException) -> None:
        super().fail(exc)
        if not self.ready.done():
            self.ready.set_result(None)


# ---------------------------------------------------------------- the connection


class _Protocol(asyncio.BufferedProtocol):
    def __init__(self, client: PageClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.client.conn.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.client._received(nbytes)

    def eof_received(self) -> bool:
        self.client._eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)

    def pause_writing(self) -> None:
        self.client._write_paused = True

    def resume_writing(self) -> None:
        self.client._write_paused = False
        self.client._wake_writers(None)


class PageClient:
    """One connection to a page server. Create with :meth:`connect`."""

    def __init__(self, host: str, port: int, verify: bool) -> None:
        self.host = host
        self.port = port
        self.where = _where(host, port)
        self.verify = verify
        self.loop = asyncio.get_running_loop()
        self.conn = ClientConnection()
        self.transport: asyncio.Transport | None = None
        self.server_hello: wire.ServerHello | None = None
        self.max_request_pages = MAX_REQUEST_PAGES
        self.bytes_sent = 0
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._hello: asyncio.Future[None] = self.loop.create_future()
        self._error: PageServerError | None = None
        self._closing = False
        self._write_paused = False
        self._writers: list[asyncio.Future[None]] = []
        self._paused_by: set[_StreamReply] = set()
        self._reading_paused = False

    @property
    def bytes_received(self) -> int:
        return self.conn.decoder.bytes_received

    @property
    def lz4(self) -> bool:
        """Whether lz4 was negotiated."""
        return self.conn.lz4

    # -- connecting

    @classmethod
    async def connect(cls, host: str, port: int, *, token: str | None = None,
                      tls_ca: str | None = None, lz4: bool = True, timeout: float = 10.0,
                      verify: bool = False, restore: str = "") -> PageClient:
        """Connect, (TLS,) and do the handshake, all within ``timeout`` seconds.

        ``verify``: also check the stored checksum of every whole block
        received (the server already checks each block before it first
        sends it; this adds an end-to-end check at some CPU cost).
        ``restore``: the id of the restore this connection serves (see
        ClientHello.restore).
        """
        self = cls(host, port, verify)
        ctx: ssl.SSLContext | None = None
        if tls_ca is not None:
            try:
                ctx = ssl.create_default_context(cafile=tls_ca)
            except (OSError, ssl.SSLError) as e:
                raise PageServerError(f"cannot use TLS CA file {tls_ca}: {e}") from None
        try:
            async with asyncio.timeout(timeout):
                await self.loop.create_connection(
                    lambda: _Protocol(self), host, port, ssl=ctx,
                    server_hostname=host if ctx is not None else None)
                assert self.transport is not None
                self._send(self.conn.send_hello(
                    token, [FEATURE_LZ4] if lz4 else [], CLIENT_NAME, restore))
                await self._hello
        except TimeoutError:
            self._abort()
            raise PageServerError(
                f"page server {self.where}: no answer within {timeout:g} s") from None
        except ssl.SSLCertVerificationError as e:
            self._abort()
            raise PageServerError(
                f"page server {self.where}: TLS certificate not trusted"
                f" ({e.verify_message or e.reason})") from None
        except ssl.SSLError as e:
            self._abort()
            raise PageServerError(
                f"page server {self.where}: TLS handshake failed ({e.reason or e})"
                " (is it a TLS server? is it using TLS?)") from None
        except ConnectionRefusedError:
            raise PageServerError(
                f"cannot connect to page server {self.where}: connection refused") from None
        except OSError as e:
            self._abort()
            if self._error is not None:
                raise self._error from None
            if ctx is not None and self.transport is None:
                raise PageServerError(
                    f"page server {self.where}: TLS handshake failed (connection closed:"
                    " is it a TLS server?)") from None
            raise PageServerError(
                f"cannot connect to page server {self.where}: {e.strerror or e}") from None
        except BaseException:       # PageServerError, or the caller cancelled us
            self._abort()
            raise
        return self

    def _made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    # -- receiving

    def _received(self, nbytes: int) -> None:
        if self._error is not None:
            return
        try:
            events = self.conn.buffer_updated(nbytes)
            for ev in events:
                self._dispatch(ev)
        except VersionMismatch as e:
            self._fatal(PageServerError(
                f"page server {self.where} speaks protocol version {e.version},"
                f" this client speaks {PROTOCOL_VERSION}"))
        except CorruptPages as e:
            self._fatal(PageServerError(f"page server {self.where}: corrupted pages: {e}"))
        except BadMagic as e:
            self._fatal(self._not_ours(e.magic))
        except ProtocolError as e:
            self._fatal(PageServerError(f"page server {self.where}: protocol error: {e}"))

    def _not_ours(self, first: bytes) -> PageServerError:
        if self.server_hello is None and first[:1] in (b"\x15", b"\x16"):
            return PageServerError(f"page server {self.where} speaks TLS: give its CA"
                                   " certificate (--tls-ca)")
        return PageServerError(f"{self.where} does not speak the page server protocol")

    def _dispatch(self, ev: Event) -> None:
        if isinstance(ev, ServerHelloReceived):
            self.server_hello = ev.hello
            if ev.hello.max_request_pages:
                self.max_request_pages = min(ev.hello.max_request_pages, MAX_REQUEST_PAGES)
            if not self._hello.done():
                self._hello.set_result(None)
            return
        if not isinstance(ev, (ResponseReceived, PagesReceived, DataReceived)):
            raise ProtocolError(f"unexpected {type(ev).__name__}")
        rid = ev.request_id
        if rid == 0 and isinstance(ev, ResponseReceived):
            err = ev.response.error
            msg = err.message or "closed the connection"
            if err.code == wire.Error.UNAUTHENTICATED:
                self._fatal(PageServerError(f"page server {self.where} refused us: {msg}"))
            else:
                self._fatal(PageServerError(f"page server {self.where}: {msg}"))
            return
        pending = self._pending.get(rid)
        if pending is None:
            return      # a cancelled request: its last frames are still arriving
        if isinstance(ev, ResponseReceived):
            done = pending.response(ev)
        elif isinstance(ev, PagesReceived):
            done = pending.pages(ev)
        else:
            done = pending.data(ev)
        if done:
            del self._pending[rid]
            if self._paused_by:
                self._update_reading()

    def _eof(self) -> None:
        first = self.conn.decoder.peek()
        try:
            self.conn.receive_eof()
        except ProtocolError as e:
            if self.server_hello is None:
                self._fatal(self._not_ours(first) if first[:4] != MAGIC[: len(first)]
                            else PageServerError(f"page server {self.where}: {e}"))
            else:
                self._fatal(PageServerError(f"page server {self.where}: {e}"))

    def _lost(self, exc: Exception | None) -> None:
        if self._error is None:
            if self._closing:
                self._error = PageServerError(f"connection to page server {self.where} closed")
            elif self.server_hello is None:
                self._error = PageServerError(
                    f"page server {self.where} closed the connection during the handshake"
                    " (a TLS server? then give --tls-ca)")
            else:
                why = f": {exc}" if exc else ""
                self._error = PageServerError(
                    f"connection to page server {self.where} lost{why}")
        self._fail_all(self._error)

    def _fatal(self, exc: PageServerError) -> None:
        if self._error is None:
            self._error = exc
        self._fail_all(exc)
        self._abort()

    def _fail_all(self, exc: PageServerError) -> None:
        if not self._hello.done():
            self._hello.set_exception(exc)
            self._hello.exception()
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.fail(exc)
        self._wake_writers(exc)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- sending

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise PageServerError(f"connection to page server {self.where} closed")

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.bytes_sent += len(data)
        self.transport.write(data)

    def _new_id(self) -> int:
        rid = self._next_id
        while rid in self._pending or rid == 0:
            rid = (rid + 1) & 0xFFFFFFFF
        self._next_id = (rid + 1) & 0xFFFFFFFF
        return rid

    def _start(self, request: wire.Request, pending: _Pending) -> int:
        self._check()
        rid = self._new_id()
        self._pending[rid] = pending
        self._send(self.conn.send_request(rid, request))
        if self._reading_paused:
            self._update_reading()
        return rid

    def _cancel(self, rid: int) -> None:
        """Forget a request; tell the server to stop it."""
        if self._pending.pop(rid, None) is not None and self._error is None \
                and not self._closing and self.transport is not None:
            self._send(self.conn.send_request(rid, wire.Request(cancel=wire.Cancel())))
            if self._paused_by:
                self._update_reading()

    async def _wait(self, rid: int, pending: _Pending) -> object:
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._cancel(rid)
            raise

    async def _drain(self) -> None:
        self._check()
        if not self._write_paused:
            return
        fut = self.loop.create_future()
        self._writers.append(fut)
        await fut

    def _wake_writers(self, exc: BaseException | None) -> None:
        writers, self._writers = self._writers, []
        for w in writers:
            if not w.done():
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(exc)
                    w.exception()

    def _pause(self, stream: _StreamReply) -> None:
        """A stream's queue is full: stop reading (unless other requests wait)."""
        self._paused_by.add(stream)
        self._update_reading()

    def _resume(self, stream: _StreamReply) -> None:
        if stream in self._paused_by:
            self._paused_by.discard(stream)
            self._update_reading()

    def _update_reading(self) -> None:
        """Read unless a full stream queue says stop. Never stop while any other
        request waits for its reply: its frames may be behind the stream's, and
        whoever would drain the stream may be waiting for that very reply."""
        t = self.transport
        if t is None or t.is_closing():
            return
        stop = bool(self._paused_by) and all(
            isinstance(p, _StreamReply) for p in self._pending.values())
        if stop != self._reading_paused:
            self._reading_paused = stop
            if stop:
                t.pause_reading()
            else:
                t.resume_reading()

    # -- requests

    async def _simple(self, request: wire.Request, kind: str) -> wire.Response:
        pending = _Pending(self.loop)
        rid = self._start(request, pending)
        resp = await self._wait(rid, pending)
        assert isinstance(resp, wire.Response)
        if resp.WhichOneof("kind") != kind:
            raise PageServerError(f"page server {self.where}: unexpected reply to {kind}")
        return resp

    async def list_images(self) -> list[str]:
        resp = await self._simple(wire.Request(list_images=wire.ListImages()), "images")
        return list(resp.images.names)

    async def list_files(self, image: str) -> list[tuple[str, int]]:
        """(name, size) of every file of an image."""
        resp = await self._simple(wire.Request(list_files=wire.ListFiles(image=image)), "files")
        return [(f.name, f.size) for f in resp.files.files]

    async def put_working_set(self, image: str, data: bytes) -> None:
        """Store (or replace) the recorded working set (a serialized
        lazarus.images.WorkingSet) beside an image on the server."""
        await self._simple(wire.Request(put_working_set=wire.PutWorkingSet(
            image=image, data=data)), "working_set_stored")

    async def flatten_chain(self, last: str, name: str) -> int:
        """Have the server make image ``name`` of the uploaded chain ending at
        ``last`` (which it then removes); the new image's bytes."""
        resp = await self._simple(wire.Request(flatten_chain=wire.FlattenChain(
            last=last, name=name)), "flattened")
        return resp.flattened.bytes

    async def remove_image(self, name: str) -> None:
        await self._simple(wire.Request(remove_image=wire.RemoveImage(name=name)), "removed")

    async def restore_image(self, image: str, pidns: bool = False) -> tuple[int, float]:
        """Have the server restore a stored image on its host (lazily, from its
        copy); (restored PID as the server's host sees it, seconds it took)."""
        resp = await self._simple(wire.Request(restore_image=wire.RestoreImage(
            image=image, pidns=pidns)), "restored")
        return resp.restored.pid, resp.restored.seconds

    async def get_file(self, image: str, name: str) -> bytes:
        """The raw bytes of one file of an image (inventory.img, process-PID.img, ...)."""
        parts: list[bytes] = []
        await self._fetch(image, name, lambda mv: parts.append(bytes(mv)))
        return b"".join(parts)

    async def _fetch(self, image: str, name: str, sink: Callable[[memoryview], None]) -> int:
        pending = _FileReply(self.loop, sink)
        rid = self._start(wire.Request(get_file=wire.GetFile(image=image, name=name)), pending)
        size = await self._wait(rid, pending)
        assert isinstance(size, int)
        return size

    async def get_pages(self, image: str, pid: int, vaddr: int, nr_pages: int) -> bytes:
        """Exactly nr_pages*4096 bytes of process memory from vaddr; holes read as zeros."""
        if nr_pages <= 0:
            if nr_pages == 0:
                return b""
            raise ValueError(f"nr_pages {nr_pages} < 0")
        step = self.max_request_pages
        if nr_pages > step:
            parts = await asyncio.gather(*(
                self.get_pages(image, pid, vaddr + p * PAGE_SIZE, min(step, nr_pages - p))
                for p in range(0, nr_pages, step)))
            return b"".join(parts)
        pending = _PagesReply(self.loop, vaddr, nr_pages, self.verify)
        rid = self._start(wire.Request(get_pages=wire.GetPages(
            image=image, pid=pid, vaddr=vaddr, nr_pages=nr_pages)), pending)
        data = await self._wait(rid, pending)
        assert isinstance(data, bytes)
        return data

    async def get_pages_into(self, image: str, pid: int, vaddr: int, nr_pages: int,
                             sink: PageSink) -> None:
        """As get_pages, but each part of the reply goes to ``sink`` as it
        arrives (see PageSink), without being gathered into bytes."""
        if nr_pages <= 0:
            if nr_pages == 0:
                return
            raise ValueError(f"nr_pages {nr_pages} < 0")
        step = self.max_request_pages
        if nr_pages > step:
            await asyncio.gather(*(
                self.get_pages_into(image, pid, vaddr + p * PAGE_SIZE,
                                    min(step, nr_pages - p), sink)
                for p in range(0, nr_pages, step)))
            return
        pending = _SinkReply(self.loop, vaddr, nr_pages, self.verify, sink)
        rid = self._start(wire.Request(get_pages=wire.GetPages(
            image=image, pid=pid, vaddr=vaddr, nr_pages=nr_pages)), pending)
        await self._wait(rid, pending)

    async def stream_pages(self, image: str, pid: int) -> AsyncIterator[tuple[int, bytes]]:
        """(vaddr, data) for every stored block of a process, data uncompressed.

        Breaking out of the loop early cancels the stream on the server.
        """
        pending = _StreamReply(self.loop, self)
        rid = self._start(wire.Request(stream_pages=wire.StreamPages(image=image, pid=pid)),
                          pending)
        try:
            while True:
                if pending.queue:
                    item = pending.queue.popleft()
                    if len(pending.queue) <= _STREAM_LOW:
                        self._resume(pending)
                    yield item
                    continue
                if pending.finished:
                    if pending.future.done():
                        exc = pending.future.exception()
                        if exc is not None:
                            raise exc
                    return
                pending.waiter = self.loop.create_future()
                await pending.waiter
        finally:
            self._resume(pending)
            if not pending.finished:
                self._cancel(rid)

    async def put_image(self, name: str, directory: Path,
                        progress: Callable[[int], None] | None = None) -> None:
        """Upload an image directory; the server stores it (atomically) as ``name``.
        ``progress`` is called with the size of each chunk sent."""
        directory = Path(directory)
        try:
            files = sorted(e.name for e in os.scandir(directory)
                           if e.is_file(follow_symlinks=False))
        except OSError as e:
            raise PageServerError(f"cannot read image {directory}: {e.strerror}") from e
        if "inventory.img" not in files:
            raise PageServerError(f"{directory} is not a lazarus image (no inventory.img)")
        for f in files:
            if not _SAFE_FILE.fullmatch(f):
                raise PageServerError(f"{directory}: unexpected file {f!r} in an image")
        pending = _PutReply(self.loop)
        rid = self._start(wire.Request(put_image=wire.PutImage(name=name)), pending)
        try:
            await pending.ready
            for fname in files:
                if pending.future.done():
                    break
                await self._upload_file(rid, directory / fname, fname, pending, progress)
            if not pending.future.done():
                self._send(self.conn.send_request(rid, wire.Request(
                    put_commit=wire.PutCommit())))
            await pending.future
        except BaseException:
            self._cancel(rid)
            raise

    async def _upload_file(self, rid: int, path: Path, fname: str, pending: _PutReply,
                           progress: Callable[[int], None] | None) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as e:
            raise PageServerError(f"cannot read {path}: {e.strerror}") from e
        try:
            size = os.fstat(fd).st_size
            self._send(self.conn.send_request(rid, wire.Request(
                put_file=wire.PutFile(name=fname, size=size))))
            off = 0
            while off < size and not pending.future.done():
                want = min(DATA_CHUNK, size - off)
                if want < DATA_CHUNK:
                    chunk = os.pread(fd, want, off)
                else:
                    chunk = await self.loop.run_in_executor(None, os.pread, fd, want, off)
                if not chunk:
                    raise PageServerError(f"{path} shrank during the upload")
                off += len(chunk)
                assert self.transport is not None
                bufs = self.conn.send_data(rid, chunk)
                self.bytes_sent += len(chunk) + len(bufs[0])
                self.transport.writelines(bufs)
                await self._drain()
                if progress is not None:
                    progress(len(chunk))
        finally:
            os.close(fd)

    async def close(self) -> None:
        """Close the connection; pending requests fail with PageServerError."""
        if self._closing:
            return
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._fail_all(PageServerError(f"connection to page server {self.where} closed"))

    async def __aenter__(self) -> PageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def pull_image(client: PageClient, name: str, dest: Path,
                     progress: Callable[[int, int], None] | None = None) -> None:
    """Download image ``name`` into ``dest`` as a normal local image directory.
    ``progress(total, n)`` is called for each chunk received (total: the
    image's size in bytes).

    Like ImageWriter: written to a private sibling DEST.tmp-XXXX, files 0600,
    synced, then renamed to ``dest``, which must not exist or be empty.
    """
    dest = Path(dest)
    if dest.is_symlink():
        raise PageServerError(f"{dest} is a symbolic link: give the real directory")
    if dest.exists():
        if not dest.is_dir():
            raise PageServerError(f"{dest} exists and is not a directory")
        if any(dest.iterdir()):
            raise PageServerError(f"{dest} exists and is not empty")
    parent = dest.absolute().parent
    if not parent.is_dir():
        raise PageServerError(f"{parent} does not exist: cannot create {dest.name} in it")
    files = await client.list_files(name)
    for fname, _ in files:
        if not _SAFE_FILE.fullmatch(fname):
            raise PageServerError(f"page server sent a bad file name {fname!r}")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-", dir=parent))
    except OSError as e:
        raise PageServerError(f"cannot create an image directory in {parent}: {e.strerror}") \
            from e
    total = sum(size for _, size in files)
    try:
        for fname, size in files:
            fd = os.open(tmp / fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o600)
            try:
                def sink(mv: memoryview, fd: int = fd) -> None:
                    if progress is not None:
                        progress(total, len(mv))
                    while mv:
                        mv = mv[os.write(fd, mv):]
                got = await client._fetch(name, fname, sink)
                if got != size:
                    raise PageServerError(
                        f"image {name}: {fname} is {got} bytes, the server listed {size}")
                os.fsync(fd)
            finally:
                os.close(fd)
        dfd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        try:
            os.rename(tmp, dest)
        except OSError as e:
            if dest.is_dir() and any(dest.iterdir()):
                raise PageServerError(f"{dest} exists and is not empty") from e
            raise PageServerError(f"{dest}: cannot store the image: {e.strerror}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(pfd)
    finally:
        os.close(pfd)
