"""The page server wire protocol, sans-IO: bytes in, events out; bytes out of send methods.

No sockets and no event loop here: the server, the client and the tests all
drive the same two classes, :class:`ServerConnection` and
:class:`ClientConnection`, by handing them received bytes and writing out
what their ``send_*`` methods return.

Framing
-------
Every frame is a 16-byte header followed by ``length`` payload bytes::

    magic    4s  b"LZPS"
    version  B   PROTOCOL_VERSION
    type     B   FrameType
    flags    H   Flag bits (unknown bits are an error)
    req_id   I   request id; 0 for the handshake and connection-level errors
    length   I   payload length, checked against the limits before any of
                 the payload is read

HELLO, SERVER_HELLO, REQUEST and RESPONSE frames carry a protobuf message
(wire.proto) of at most MAX_CONTROL bytes. PAGES frames carry a 16-byte page
header then the page bytes, which never go through protobuf::

    vaddr    Q   first page
    nr_pages I   pages covered (1..MAX_FRAME_PAGES)
    crc32    I   zlib.crc32 of the uncompressed bytes, valid when FLAG_CRC is set

followed by nr_pages*4096 raw bytes, or an lz4 block that decompresses to
that (FLAG_LZ4, only when negotiated), or nothing (FLAG_ZERO: a hole, the
pages read as zeros). DATA frames carry raw file bytes (get_file replies and
put uploads).

A connection starts with HELLO (client) and SERVER_HELLO (server, or a
RESPONSE error with request id 0 after which the server closes). Then the
client sends REQUESTs, each with a fresh request id; several may be
outstanding and replies may come in any order, frames of different replies
interleaved. A reply ends with the frame that carries FLAG_END. See
wire.proto for which frames make up each reply.

Anything that breaks these rules (bad magic, unknown type or flag, oversized
frame, undecodable protobuf, a frame the peer may not send, end of stream in
the middle of a frame) raises :class:`ProtocolError`: the connection cannot
be trusted any more and must be dropped.

Buffers
-------
:meth:`get_buffer`/:meth:`buffer_updated` follow asyncio.BufferedProtocol so
bytes are received in place: the socket is read into one linear buffer (grown
to two maximum frames once large frames come, so one read takes in many) and
frames are parsed where they landed, with no copy. The payload views of the
events these two return are valid only until the next call into the same
connection: copy (or decompress) what must be kept. :meth:`receive_data`
copies, for callers that prefer plain bytes in, and for tests.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message
from lz4 import block as lz4block

from . import wire_pb2 as wire

PROTOCOL_VERSION = 1
MAGIC = b"LZPS"
PAGE_SIZE = 4096

HEADER = struct.Struct("!4sBBHII")
PAGE_HEADER = struct.Struct("!QII")
HEADER_SIZE = HEADER.size            # 16
PAGE_HEADER_SIZE = PAGE_HEADER.size  # 16

MAX_FRAME_PAGES = 1024                              # 4 MiB of pages in one PAGES frame
MAX_PAGE_DATA = MAX_FRAME_PAGES * PAGE_SIZE
MAX_PAYLOAD = PAGE_HEADER_SIZE + MAX_PAGE_DATA      # the hard limit for any frame
MAX_CONTROL = 1 << 20                               # protobuf messages
MAX_REQUEST_PAGES = MAX_FRAME_PAGES                 # largest GetPages.nr_pages
DATA_CHUNK = 1 << 20                                # file bytes per DATA frame when sending

FEATURE_LZ4 = "lz4"
KNOWN_FEATURES = frozenset({FEATURE_LZ4})

# Receive buffer: small for connections that only see small frames, grown to
# two largest frames as soon as a large one comes (a read then takes in many).
_RECV_BUFFER = 256 * 1024
_BIG_BUFFER = 2 * (HEADER_SIZE + MAX_PAYLOAD)
_MIN_READ = 64 * 1024

Buffer = bytes | bytearray | memoryview


class FrameType(enum.IntEnum):
    HELLO = 1
    SERVER_HELLO = 2
    REQUEST = 3
    RESPONSE = 4
    PAGES = 5
    DATA = 6


class Flag(enum.IntFlag):
    LZ4 = 1     # PAGES: the data is an lz4 block
    ZERO = 2    # PAGES: no data, the pages are zeros
    CRC = 4     # PAGES: the crc32 field is valid
    END = 8     # last frame of a reply


# The same bits as plain ints: IntFlag arithmetic is slow on the per-frame path.
F_LZ4, F_ZERO, F_CRC, F_END = int(Flag.LZ4), int(Flag.ZERO), int(Flag.CRC), int(Flag.END)
_TYPES = {int(t): t for t in FrameType}

_CONTROL_TYPES = frozenset(
    {FrameType.HELLO, FrameType.SERVER_HELLO, FrameType.REQUEST, FrameType.RESPONSE})
_ALLOWED_FLAGS = {
    FrameType.HELLO: 0,
    FrameType.SERVER_HELLO: 0,
    FrameType.REQUEST: 0,
    FrameType.RESPONSE: int(Flag.END),
    FrameType.PAGES: int(Flag.LZ4 | Flag.ZERO | Flag.CRC | Flag.END),
    FrameType.DATA: int(Flag.END),
}
_CLIENT_SENDS = frozenset({FrameType.HELLO, FrameType.REQUEST, FrameType.DATA})
_SERVER_SENDS = frozenset(
    {FrameType.SERVER_HELLO, FrameType.RESPONSE, FrameType.PAGES, FrameType.DATA})


class ProtocolError(Exception):
    """The peer broke the protocol; the connection must be dropped."""


class BadMagic(ProtocolError):
    """The bytes received are not frames of this protocol at all."""

    def __init__(self, magic: bytes) -> None:
        super().__init__(f"bad frame magic {magic!r}")
        self.magic = magic


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"peer speaks protocol version {version}, this side speaks {PROTOCOL_VERSION}")
        self.version = version


class CorruptPages(ProtocolError):
    """Page data that does not decompress or fails its checksum."""


# ---------------------------------------------------------------- frames


@dataclass(slots=True)
class Frame:
    type: FrameType
    flags: int
    request_id: int
    payload: memoryview


def encode_header(ftype: FrameType, flags: int, request_id: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, ftype, flags, request_id, length)


def _check_id(request_id: int) -> None:
    if not 0 <= request_id <= 0xFFFFFFFF:
        raise ValueError(f"request id {request_id} does not fit in 32 bits")


def encode_control(ftype: FrameType, request_id: int, msg: Message, flags: int = 0) -> bytes:
    _check_id(request_id)
    body = msg.SerializeToString()
    if len(body) > MAX_CONTROL:
        raise ValueError(f"{type(msg).__name__} of {len(body)} bytes exceeds {MAX_CONTROL}")
    return encode_header(ftype, flags, request_id, len(body)) + body


def encode_pages(request_id: int, vaddr: int, nr_pages: int, data: Buffer, *,
                 lz4: bool = False, crc32: int | None = None,
                 end: bool = False) -> list[Buffer]:
    """A PAGES frame as [header, data]: write both (writelines) and the data is never copied."""
    _check_id(request_id)
    n = nr_pages * PAGE_SIZE
    if not 1 <= nr_pages <= MAX_FRAME_PAGES or vaddr % PAGE_SIZE or vaddr + n > 1 << 64:
        raise ValueError(f"bad page run {vaddr:#x} + {nr_pages} pages")
    size = len(data) if not isinstance(data, memoryview) else data.nbytes
    if lz4:
        if not 0 < size < n:
            raise ValueError(f"lz4 page data of {size} bytes for {nr_pages} pages")
    elif size != n:
        raise ValueError(f"{size} bytes of page data for {nr_pages} pages")
    flags = (F_LZ4 if lz4 else 0) | (F_CRC if crc32 is not None else 0) | (F_END if end else 0)
    head = encode_header(FrameType.PAGES, flags, request_id, PAGE_HEADER_SIZE + size)
    head += PAGE_HEADER.pack(vaddr, nr_pages, crc32 or 0)
    return [head, data]


def encode_pages_header(request_id: int, vaddr: int, nr_pages: int, size: int, *,
                        lz4: bool = False, crc32: int | None = None,
                        end: bool = False) -> bytes:
    """The 32 bytes that go before ``size`` bytes of page data in a PAGES frame
    (for a sender that writes the data itself, e.g. with sendfile)."""
    n = nr_pages * PAGE_SIZE
    if not 1 <= nr_pages <= MAX_FRAME_PAGES or vaddr % PAGE_SIZE or vaddr + n > 1 << 64:
        raise ValueError(f"bad page run {vaddr:#x} + {nr_pages} pages")
    if (lz4 and not 0 < size < n) or (not lz4 and size != n):
        raise ValueError(f"{size} bytes of page data for {nr_pages} pages")
    flags = (F_LZ4 if lz4 else 0) | (F_CRC if crc32 is not None else 0) | (F_END if end else 0)
    return encode_header(FrameType.PAGES, flags, request_id, PAGE_HEADER_SIZE + size) + \
        PAGE_HEADER.pack(vaddr, nr_pages, crc32 or 0)


def encode_zero_pages(request_id: int, vaddr: int, nr_pages: int, *, end: bool = False) -> bytes:
    """A PAGES frame for a hole: no data, the pages read as zeros."""
    _check_id(request_id)
    if not 1 <= nr_pages <= MAX_FRAME_PAGES or vaddr % PAGE_SIZE:
        raise ValueError(f"bad page run {vaddr:#x} + {nr_pages} pages")
    flags = F_ZERO | (F_END if end else 0)
    return encode_header(FrameType.PAGES, flags, request_id, PAGE_HEADER_SIZE) + \
        PAGE_HEADER.pack(vaddr, nr_pages, 0)


def encode_data(request_id: int, data: Buffer, *, end: bool = False) -> list[Buffer]:
    _check_id(request_id)
    size = len(data) if not isinstance(data, memoryview) else data.nbytes
    if size > MAX_PAYLOAD:
        raise ValueError(f"DATA frame of {size} bytes exceeds {MAX_PAYLOAD}")
    return [encode_header(FrameType.DATA, F_END if end else 0, request_id, size), data]


class FrameDecoder:
    """Cuts a byte stream into frames, checking each header before reading its payload.

    Receive in place with get_buffer()/buffer_updated(), or hand in bytes
    with feed(). Frames are parsed where they were received, in one linear
    buffer: payloads are views into it, valid until the next call into the
    decoder. The buffer starts small and grows (once, to two maximum frames)
    when large frames come, so that each read takes in many of them.
    """

    def __init__(self, accept: Iterable[FrameType]) -> None:
        self._accept = frozenset(accept)
        self._buf = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0             # first byte not yet returned as part of a frame
        self._end = 0               # end of the bytes received
        self._need = HEADER_SIZE    # bytes from _start that the next frame needs
        self.bytes_received = 0

    # -- receiving

    def get_buffer(self) -> memoryview:
        """Where the next received bytes must go (never empty)."""
        start, end = self._start, self._end
        if start == end:
            self._start = self._end = start = end = 0
        cap = len(self._buf)
        need = self._need
        if need > cap or (need > cap // 4 and cap < _BIG_BUFFER):
            self._move(max(need, _BIG_BUFFER))
        elif start + need > cap or cap - end < _MIN_READ:
            self._move(cap)
        return self._view[self._end :]

    def _move(self, capacity: int) -> None:
        """Put the partial frame at the start of a buffer of ``capacity`` bytes."""
        start, end = self._start, self._end
        n = end - start
        if capacity != len(self._buf):
            # Views handed out before keep the old buffer alive as long as needed.
            buf = bytearray(capacity)
            buf[:n] = self._view[start:end]
            self._buf, self._view = buf, memoryview(buf)
        elif n <= start:
            self._buf[:n] = self._view[start:end]     # no overlap
        else:
            self._buf[:n] = bytes(self._view[start:end])
        self._start, self._end = 0, n

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        """``nbytes`` were written at the start of the last get_buffer(); return whole frames."""
        self.bytes_received += nbytes
        self._end += nbytes
        if self._end - self._start < self._need:
            return []
        return self._parse()

    def feed(self, data: Buffer) -> list[Frame]:
        """Hand in bytes; return the complete frames, their payloads copied."""
        src = memoryview(data).cast("B")
        frames: list[Frame] = []
        while src:
            dst = self.get_buffer()
            n = min(len(dst), len(src))
            dst[:n] = src[:n]
            src = src[n:]
            for f in self.buffer_updated(n):
                f.payload = memoryview(bytes(f.payload))
                frames.append(f)
        return frames

    def eof(self) -> None:
        """The peer closed its side: an error if it did so in the middle of a frame."""
        have = self._end - self._start
        if have:
            what = f"{have} of {self._need} bytes" if self._need > HEADER_SIZE \
                else f"{have} bytes of its header"
            raise ProtocolError(f"connection closed in the middle of a frame ({what})")

    def peek(self, n: int = 16) -> bytes:
        """Up to ``n`` bytes of a partial frame waiting in the buffer (for diagnostics)."""
        return bytes(self._view[self._start : min(self._end, self._start + n)])

    @property
    def idle(self) -> bool:
        """No partial frame is buffered."""
        return self._end == self._start

    # -- internals

    def _check(self, magic: bytes, version: int, ftype: int, flags: int, length: int) -> FrameType:
        if magic != MAGIC:
            raise BadMagic(magic)
        if version != PROTOCOL_VERSION:
            raise VersionMismatch(version)
        t = _TYPES.get(ftype)
        if t is None:
            raise ProtocolError(f"unknown frame type {ftype}")
        if t not in self._accept:
            raise ProtocolError(f"unexpected {t.name} frame")
        if flags & ~_ALLOWED_FLAGS[t]:
            raise ProtocolError(f"bad flags {flags:#x} on a {t.name} frame")
        limit = MAX_CONTROL if t in _CONTROL_TYPES else MAX_PAYLOAD
        if length > limit:
            raise ProtocolError(
                f"{t.name} frame of {length} bytes exceeds the {limit}-byte limit")
        return t

    def _parse(self) -> list[Frame]:
        frames: list[Frame] = []
        buf, view = self._buf, self._view
        start, end = self._start, self._end
        need = HEADER_SIZE
        while end - start >= HEADER_SIZE:
            magic, version, ftype, flags, rid, length = HEADER.unpack_from(buf, start)
            t = self._check(magic, version, ftype, flags, length)
            total = HEADER_SIZE + length
            if end - start < total:
                need = total
                break
            frames.append(Frame(t, flags, rid, view[start + HEADER_SIZE : start + total]))
            start += total
        # Nothing before _end is overwritten before the next get_buffer(), so
        # the payload views returned here stay valid until then.
        self._start, self._need = start, need
        return frames


# ---------------------------------------------------------------- events


@dataclass(slots=True)
class HelloReceived:
    hello: wire.ClientHello


@dataclass(slots=True)
class ServerHelloReceived:
    hello: wire.ServerHello


@dataclass(slots=True)
class RequestReceived:
    request_id: int
    request: wire.Request


@dataclass(slots=True)
class ResponseReceived:
    request_id: int
    response: wire.Response
    end: bool


@dataclass(slots=True)
class PagesReceived:
    request_id: int
    vaddr: int
    nr_pages: int
    data: memoryview      # raw, lz4 or empty: see lz4/zero; valid until the next call
    lz4: bool
    zero: bool
    crc32: int | None
    end: bool

    @property
    def size(self) -> int:
        """Bytes these pages take uncompressed."""
        return self.nr_pages * PAGE_SIZE

    def decode(self, verify: bool = False) -> bytes:
        """The pages as bytes (a copy): decompressed, zeros for a hole, crc checked if asked."""
        return decode_pages(self.data, self.nr_pages, lz4=self.lz4, zero=self.zero,
                            crc32=self.crc32 if verify else None, where=self.vaddr)


@dataclass(slots=True)
class DataReceived:
    request_id: int
    data: memoryview      # valid until the next call
    end: bool


Event = (HelloReceived | ServerHelloReceived | RequestReceived | ResponseReceived
         | PagesReceived | DataReceived)


def decode_pages(data: Buffer, nr_pages: int, *, lz4: bool, zero: bool,
                 crc32: int | None = None, where: int = 0) -> bytes:
    """Uncompressed bytes of a PAGES payload; checks ``crc32`` when given."""
    n = nr_pages * PAGE_SIZE
    if zero:
        return bytes(n)
    if lz4:
        try:
            out: bytes = lz4block.decompress(data, uncompressed_size=n)
        except lz4block.LZ4BlockError:
            raise CorruptPages(f"pages at {where:#x} do not decompress") from None
        if len(out) != n:
            raise CorruptPages(f"pages at {where:#x} decompress to {len(out)} bytes, not {n}")
    else:
        out = bytes(data)
    if crc32 is not None and zlib.crc32(out) != crc32:
        raise CorruptPages(f"pages at {where:#x} fail their checksum")
    return out


def _parse_msg(msg: Message, payload: memoryview, what: str) -> None:
    try:
        msg.ParseFromString(bytes(payload))
    except DecodeError:
        raise ProtocolError(f"malformed {what} message") from None


def _pages_event(frame: Frame) -> PagesReceived:
    p = frame.payload
    if len(p) < PAGE_HEADER_SIZE:
        raise ProtocolError(f"PAGES frame of {len(p)} bytes has no page header")
    vaddr, nr_pages, crc = PAGE_HEADER.unpack_from(p)
    data = p[PAGE_HEADER_SIZE:]
    flags = frame.flags
    lz4, zero = bool(flags & F_LZ4), bool(flags & F_ZERO)
    n = nr_pages * PAGE_SIZE
    if not 1 <= nr_pages <= MAX_FRAME_PAGES or vaddr % PAGE_SIZE or vaddr + n > 1 << 64:
        raise ProtocolError(f"PAGES frame with a bad page run {vaddr:#x} + {nr_pages} pages")
    if zero:
        if lz4 or flags & F_CRC or len(data):
            raise ProtocolError("ZERO PAGES frame with data, lz4 or crc")
    elif lz4:
        if not 0 < len(data) < n:
            raise ProtocolError(f"lz4 PAGES frame of {len(data)} bytes for {nr_pages} pages")
    elif len(data) != n:
        raise ProtocolError(f"PAGES frame of {len(data)} bytes for {nr_pages} pages")
    return PagesReceived(frame.request_id, vaddr, nr_pages, data, lz4, zero,
                         crc if flags & F_CRC else None, bool(flags & F_END))


# ---------------------------------------------------------------- connections


class _Connection:
    def __init__(self, accept: frozenset[FrameType]) -> None:
        self.decoder = FrameDecoder(accept)
        self.lz4 = False            # negotiated

    def get_buffer(self) -> memoryview:
        return self.decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> list[Event]:
        return [self._event(f) for f in self.decoder.buffer_updated(nbytes)]

    def receive_data(self, data: Buffer) -> list[Event]:
        """Hand in bytes; the events' payloads are copies, valid for good."""
        return [self._event(f) for f in self.decoder.feed(data)]

    def receive_eof(self) -> None:
        """The peer closed: raises ProtocolError if it did so mid-frame."""
        self.decoder.eof()

    def _event(self, frame: Frame) -> Event:
        raise NotImplementedError


class ServerConnection(_Connection):
    """The server's side of one connection."""

    def __init__(self) -> None:
        super().__init__(_CLIENT_SENDS)
        self.hello: wire.ClientHello | None = None

    def _event(self, frame: Frame) -> Event:
        t = frame.type
        if self.hello is None:
            if t != FrameType.HELLO:
                raise ProtocolError(f"expected HELLO first, got {t.name}")
            hello = wire.ClientHello()
            _parse_msg(hello, frame.payload, "HELLO")
            self.hello = hello
            return HelloReceived(hello)
        if t == FrameType.REQUEST:
            req = wire.Request()
            _parse_msg(req, frame.payload, "REQUEST")
            if req.WhichOneof("kind") is None:
                raise ProtocolError("REQUEST of no known kind")
            return RequestReceived(frame.request_id, req)
        if t == FrameType.DATA:
            return DataReceived(frame.request_id, frame.payload, bool(frame.flags & F_END))
        raise ProtocolError(f"unexpected {t.name} frame after the handshake")

    # -- sending

    def send_server_hello(self, features: Iterable[str], server: str = "") -> bytes:
        """Accept the hello; ``features`` are those of the client's we take."""
        feats = sorted(set(features))
        self.lz4 = FEATURE_LZ4 in feats
        msg = wire.ServerHello(protocol_version=PROTOCOL_VERSION, features=feats, server=server,
                               max_frame_payload=MAX_PAYLOAD,
                               max_request_pages=MAX_REQUEST_PAGES)
        return encode_control(FrameType.SERVER_HELLO, 0, msg)

    def send_response(self, request_id: int, response: wire.Response, end: bool = True) -> bytes:
        return encode_control(FrameType.RESPONSE, request_id, response, F_END if end else 0)

    def send_error(self, request_id: int, code: wire.Error.Code, message: str) -> bytes:
        """An error reply (ends the request). Request id 0: the connection itself."""
        return self.send_response(
            request_id, wire.Response(error=wire.Error(code=code, message=message[:4000])))

    def send_pages(self, request_id: int, vaddr: int, nr_pages: int, data: Buffer, *,
                   lz4: bool = False, crc32: int | None = None,
                   end: bool = False) -> list[Buffer]:
        if lz4 and not self.lz4:
            raise ValueError("lz4 was not negotiated on this connection")
        return encode_pages(request_id, vaddr, nr_pages, data, lz4=lz4, crc32=crc32, end=end)

    def send_zero_pages(self, request_id: int, vaddr: int, nr_pages: int, *,
                        end: bool = False) -> bytes:
        return encode_zero_pages(request_id, vaddr, nr_pages, end=end)

    def send_data(self, request_id: int, data: Buffer, *, end: bool = False) -> list[Buffer]:
        return encode_data(request_id, data, end=end)


class ClientConnection(_Connection):
    """The client's side of one connection."""

    def __init__(self) -> None:
        super().__init__(_SERVER_SENDS)
        self.server_hello: wire.ServerHello | None = None
        self.features: frozenset[str] = frozenset()

    def _event(self, frame: Frame) -> Event:
        t = frame.type
        if self.server_hello is None:
            if t == FrameType.SERVER_HELLO:
                hello = wire.ServerHello()
                _parse_msg(hello, frame.payload, "SERVER_HELLO")
                if hello.protocol_version != PROTOCOL_VERSION:
                    raise VersionMismatch(hello.protocol_version)
                self.server_hello = hello
                self.features = frozenset(hello.features)
                self.lz4 = FEATURE_LZ4 in self.features
                return ServerHelloReceived(hello)
            if t != FrameType.RESPONSE:
                raise ProtocolError(f"expected SERVER_HELLO first, got {t.name}")
        elif t == FrameType.SERVER_HELLO:
            raise ProtocolError("second SERVER_HELLO")
        if t == FrameType.RESPONSE:
            resp = wire.Response()
            _parse_msg(resp, frame.payload, "RESPONSE")
            if resp.WhichOneof("kind") is None:
                raise ProtocolError("RESPONSE of no known kind")
            return ResponseReceived(frame.request_id, resp, bool(frame.flags & F_END))
        if t == FrameType.PAGES:
            ev = _pages_event(frame)
            if ev.lz4 and not self.lz4:
                raise ProtocolError("lz4 PAGES frame, but lz4 was not negotiated")
            return ev
        return DataReceived(frame.request_id, frame.payload, bool(frame.flags & F_END))

    # -- sending

    def send_hello(self, token: str | None = None, features: Iterable[str] = (),
                   client: str = "", restore: str = "") -> bytes:
        msg = wire.ClientHello(protocol_version=PROTOCOL_VERSION, token=token or "",
                               features=sorted(set(features)), client=client,
                               restore=restore)
        return encode_control(FrameType.HELLO, 0, msg)

    def send_request(self, request_id: int, request: wire.Request) -> bytes:
        if request.WhichOneof("kind") is None:
            raise ValueError("empty request")
        return encode_control(FrameType.REQUEST, request_id, request)

    def send_data(self, request_id: int, data: Buffer, *, end: bool = False) -> list[Buffer]:
        return encode_data(request_id, data, end=end)
