"""The sans-IO page server protocol: round trips, byte-by-byte feeding, bad frames.

No sockets here: bytes go from one connection object to the other by hand.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Sequence

import lz4.block
import pytest

from pageserver import wire_pb2 as wire
from pageserver.protocol import (
    HEADER,
    MAGIC,
    MAX_CONTROL,
    MAX_FRAME_PAGES,
    MAX_PAYLOAD,
    PAGE_HEADER,
    PAGE_SIZE,
    PROTOCOL_VERSION,
    BadMagic,
    Buffer,
    ClientConnection,
    CorruptPages,
    DataReceived,
    Event,
    Flag,
    FrameDecoder,
    FrameType,
    HelloReceived,
    PagesReceived,
    ProtocolError,
    RequestReceived,
    ResponseReceived,
    ServerConnection,
    ServerHelloReceived,
    VersionMismatch,
    encode_header,
    encode_pages_header,
)


def join(bufs: Sequence[Buffer] | bytes) -> bytes:
    if isinstance(bufs, bytes):
        return bufs
    return b"".join(bytes(b) for b in bufs)


def handshake(lz4: bool = True) -> tuple[ClientConnection, ServerConnection]:
    client, server = ClientConnection(), ServerConnection()
    evs = server.receive_data(client.send_hello("secret", ["lz4"] if lz4 else [], "test"))
    assert len(evs) == 1 and isinstance(evs[0], HelloReceived)
    hello = evs[0].hello
    assert (hello.protocol_version, hello.token, list(hello.features), hello.client) == (
        PROTOCOL_VERSION, "secret", ["lz4"] if lz4 else [], "test")
    evs = client.receive_data(server.send_server_hello(hello.features, "srv"))
    assert len(evs) == 1 and isinstance(evs[0], ServerHelloReceived)
    assert client.lz4 is lz4 and server.lz4 is lz4
    assert evs[0].hello.max_request_pages == MAX_FRAME_PAGES
    return client, server


def feed_in_place(conn: ClientConnection | ServerConnection, data: bytes,
                  sizes: Sequence[int]) -> list[Event]:
    """Receive through get_buffer()/buffer_updated() in pieces of the given sizes.

    Each event's payload is copied at once, as a real consumer must.
    """
    events: list[Event] = []
    pos = 0
    k = 0
    while pos < len(data):
        buf = conn.get_buffer()
        assert len(buf) > 0
        n = min(len(buf), len(data) - pos, sizes[k % len(sizes)])
        k += 1
        buf[:n] = data[pos : pos + n]
        pos += n
        for ev in conn.buffer_updated(n):
            if isinstance(ev, (PagesReceived, DataReceived)):
                ev.data = memoryview(bytes(ev.data))
            events.append(ev)
    return events


# ------------------------------------------------------------------ round trips


def test_handshake_round_trip_and_feature_negotiation() -> None:
    handshake(lz4=True)
    handshake(lz4=False)
    # The server may refuse a feature the client wants.
    client, server = ClientConnection(), ServerConnection()
    server.receive_data(client.send_hello(None, ["lz4"]))
    client.receive_data(server.send_server_hello([]))
    assert not client.lz4 and not server.lz4


def test_requests_and_responses_round_trip() -> None:
    client, server = handshake()
    requests = [
        wire.Request(list_images=wire.ListImages()),
        wire.Request(list_files=wire.ListFiles(image="img")),
        wire.Request(get_file=wire.GetFile(image="img", name="inventory.img")),
        wire.Request(get_pages=wire.GetPages(image="img", pid=42, vaddr=0x7F0000001000,
                                             nr_pages=64)),
        wire.Request(stream_pages=wire.StreamPages(image="img", pid=42)),
        wire.Request(put_image=wire.PutImage(name="new")),
        wire.Request(put_file=wire.PutFile(name="inventory.img", size=10)),
        wire.Request(put_commit=wire.PutCommit()),
        wire.Request(cancel=wire.Cancel()),
    ]
    data = b"".join(client.send_request(i + 1, r) for i, r in enumerate(requests))
    evs = server.receive_data(data)
    assert len(evs) == len(requests)
    assert [(e.request_id, e.request) for e in evs if isinstance(e, RequestReceived)] == [
        (i + 1, r) for i, r in enumerate(requests)]

    responses = [
        (5, wire.Response(images=wire.ImageList(names=["a", "b"])), True),
        (6, wire.Response(files=wire.FileList(files=[wire.FileInfo(name="x", size=3)])), True),
        (7, wire.Response(put_ready=wire.PutReady()), False),
        (8, wire.Response(error=wire.Error(code=wire.Error.OUT_OF_RANGE, message="no")), True),
        (9, wire.Response(stream_end=wire.StreamEnd(blocks=2, pages=3)), True),
    ]
    data = b"".join(server.send_response(rid, r, end=end) for rid, r, end in responses)
    evs = client.receive_data(data)
    assert [(e.request_id, e.response, e.end) for e in evs
            if isinstance(e, ResponseReceived)] == responses
    err = client.receive_data(server.send_error(3, wire.Error.NOT_FOUND, "no image x"))[0]
    assert isinstance(err, ResponseReceived) and err.end
    assert err.response.error.code == wire.Error.NOT_FOUND


def test_pages_frames_raw_lz4_zero_and_crc() -> None:
    client, server = handshake(lz4=True)
    raw = os.urandom(3 * PAGE_SIZE)
    text = (b"compressible page " * 1000)[: 2 * PAGE_SIZE]
    packed = lz4.block.compress(text, store_size=False)
    wire_bytes = (join(server.send_pages(1, 0x1000, 3, raw, crc32=zlib.crc32(raw)))
                  + join(server.send_pages(1, 0x4000, 2, packed, lz4=True,
                                           crc32=zlib.crc32(text)))
                  + server.send_zero_pages(1, 0x6000, 5, end=True))
    evs = client.receive_data(wire_bytes)
    assert all(isinstance(e, PagesReceived) for e in evs)
    pages = [e for e in evs if isinstance(e, PagesReceived)]
    assert [(p.vaddr, p.nr_pages, p.lz4, p.zero, p.end) for p in pages] == [
        (0x1000, 3, False, False, False), (0x4000, 2, True, False, False),
        (0x6000, 5, False, True, True)]
    assert pages[0].decode(verify=True) == raw
    assert pages[1].decode(verify=True) == text
    assert len(pages[1].data) == len(packed)          # compressed on the wire
    assert pages[2].decode() == bytes(5 * PAGE_SIZE)
    assert pages[2].crc32 is None and pages[0].crc32 == zlib.crc32(raw)


def test_pages_header_alone_matches_the_whole_frame() -> None:
    """What a sendfile sender writes (header, then the stored bytes) is the same frame."""
    client, server = handshake(lz4=True)
    text = (b"some text " * 1000)[: 2 * PAGE_SIZE]
    packed = lz4.block.compress(text, store_size=False)
    head = encode_pages_header(3, 0x5000, 2, len(packed), lz4=True, crc32=zlib.crc32(text),
                               end=True)
    assert head + packed == join(server.send_pages(3, 0x5000, 2, packed, lz4=True,
                                                   crc32=zlib.crc32(text), end=True))
    ev = client.receive_data(head + packed)[0]
    assert isinstance(ev, PagesReceived) and ev.decode(verify=True) == text
    with pytest.raises(ValueError):
        encode_pages_header(3, 0x5000, 2, 2 * PAGE_SIZE, lz4=True)


def test_data_frames_both_ways() -> None:
    client, server = handshake()
    chunk = os.urandom(100_000)
    evs = server.receive_data(join(client.send_data(4, chunk)) + join(client.send_data(
        4, b"", end=True)))
    assert [(type(e), e.request_id) for e in evs if isinstance(e, DataReceived)] == [
        (DataReceived, 4)] * 2
    assert isinstance(evs[0], DataReceived) and bytes(evs[0].data) == chunk
    evs = client.receive_data(join(server.send_data(9, chunk, end=True)))
    assert isinstance(evs[0], DataReceived) and evs[0].end and bytes(evs[0].data) == chunk


def _mixed_stream(server: ServerConnection) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """Interleaved replies of several requests (out of order), and what they carry."""
    rnd = random.Random(7)
    frames: list[bytes] = []
    expect: list[tuple[int, int, bytes]] = []
    for k in range(40):
        rid = rnd.choice([3, 1, 7, 2])
        n = rnd.choice([1, 2, 16, 64, 300, MAX_FRAME_PAGES])
        vaddr = 0x10000000 + k * 0x1000000
        if k % 5 == 4:
            frames.append(server.send_zero_pages(rid, vaddr, n))
            expect.append((rid, vaddr, bytes(n * PAGE_SIZE)))
        else:
            data = rnd.randbytes(PAGE_SIZE) * n
            frames.append(join(server.send_pages(rid, vaddr, n, data)))
            expect.append((rid, vaddr, data))
        if k % 7 == 0:
            frames.append(server.send_response(rid, wire.Response(
                stream_end=wire.StreamEnd(blocks=k)), end=True))
            expect.append((rid, -1, b""))
    return b"".join(frames), expect


def _summary(evs: list[Event]) -> list[tuple[int, int, bytes]]:
    out: list[tuple[int, int, bytes]] = []
    for e in evs:
        if isinstance(e, PagesReceived):
            out.append((e.request_id, e.vaddr, e.decode()))
        elif isinstance(e, ResponseReceived):
            out.append((e.request_id, -1, b""))
        else:
            raise AssertionError(e)
    return out


def test_interleaved_replies_in_one_piece() -> None:
    client, server = handshake()
    data, expect = _mixed_stream(server)
    assert _summary(client.receive_data(data)) == expect


def test_feeding_byte_by_byte() -> None:
    client, server = handshake(lz4=False)
    hello = ClientConnection().send_hello("t", ["lz4"])
    s2 = ServerConnection()
    evs: list[Event] = []
    for i in range(len(hello)):
        evs += s2.receive_data(hello[i : i + 1])
    assert len(evs) == 1 and isinstance(evs[0], HelloReceived)
    # Byte by byte, in place: small frames, and large ones (> 64 KiB) that are
    # read straight into the payload buffer.
    frames: list[bytes] = []
    expect: list[tuple[int, int, bytes]] = []
    for k, n in enumerate([1, 20, 2, 0, 3, 1]):
        vaddr = 0x7F0000000000 + k * 0x100000
        if n == 0:
            frames.append(server.send_zero_pages(k, vaddr, 7))
            expect.append((k, vaddr, bytes(7 * PAGE_SIZE)))
            continue
        data = os.urandom(n * PAGE_SIZE)
        frames.append(join(server.send_pages(k, vaddr, n, data)))
        expect.append((k, vaddr, data))
    frames.append(server.send_response(9, wire.Response(put_ready=wire.PutReady())))
    expect.append((9, -1, b""))
    assert _summary(feed_in_place(client, b"".join(frames), [1])) == expect


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_split_feeding(seed: int) -> None:
    client, server = handshake()
    data, expect = _mixed_stream(server)
    rnd = random.Random(seed)
    sizes = [rnd.choice([1, 2, 15, 16, 17, 4096, 65536, 300_000, 5_000_000]) for _ in range(500)]
    assert _summary(feed_in_place(client, data, sizes)) == expect


def test_views_survive_until_the_next_call() -> None:
    """Several frames out of one buffer_updated() are all intact at once."""
    client, server = handshake(lz4=False)
    a, b = os.urandom(PAGE_SIZE), os.urandom(PAGE_SIZE)
    data = join(server.send_pages(1, 0, 1, a)) + join(server.send_pages(2, 0, 1, b)) + \
        join(server.send_pages(3, 0, 1, a))[:20]          # a partial frame after them
    buf = client.get_buffer()
    buf[: len(data)] = data
    evs = client.buffer_updated(len(data))
    assert [bytes(e.data) for e in evs if isinstance(e, PagesReceived)] == [a, b]
    assert not client.decoder.idle


# ------------------------------------------------------------------ bad frames


def frame(ftype: int, payload: bytes = b"", flags: int = 0, rid: int = 1,
          length: int | None = None, magic: bytes = MAGIC,
          version: int = PROTOCOL_VERSION) -> bytes:
    return HEADER.pack(magic, version, ftype, flags, rid,
                       len(payload) if length is None else length) + payload


def ready_server() -> ServerConnection:
    server = ServerConnection()
    server.receive_data(ClientConnection().send_hello())
    return server


@pytest.mark.parametrize("data, message", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad frame magic"),
    (frame(FrameType.REQUEST, version=9), "protocol version 9"),
    (frame(77), "unknown frame type 77"),
    (frame(FrameType.REQUEST, flags=0x8000), "bad flags"),
    (frame(FrameType.PAGES), "unexpected PAGES frame"),          # the client's to receive
    (frame(FrameType.SERVER_HELLO), "unexpected SERVER_HELLO"),
    (frame(FrameType.REQUEST, b"\xff\xff\xff\xff"), "malformed REQUEST"),
    (frame(FrameType.REQUEST, b""), "REQUEST of no known kind"),
    (frame(FrameType.HELLO, ClientConnection().send_hello()[16:]), "unexpected HELLO"),
])
def test_malformed_frames_are_protocol_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        ready_server().receive_data(data)


def test_bad_magic_and_version_have_their_own_errors() -> None:
    with pytest.raises(BadMagic) as bm:
        ServerConnection().receive_data(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(8))
    assert bm.value.magic == b"\x16\x03\x01\x02"
    with pytest.raises(VersionMismatch) as vm:
        ClientConnection().receive_data(frame(FrameType.SERVER_HELLO, version=2))
    assert vm.value.version == 2


def test_hello_must_come_first() -> None:
    req = ClientConnection().send_request(1, wire.Request(list_images=wire.ListImages()))
    with pytest.raises(ProtocolError, match="expected HELLO first"):
        ServerConnection().receive_data(req)
    resp = ServerConnection().send_response(1, wire.Response(put_ready=wire.PutReady()))
    client = ClientConnection()
    client.receive_data(resp)           # a RESPONSE (an error) may come instead of the hello
    with pytest.raises(ProtocolError, match="expected SERVER_HELLO first"):
        ClientConnection().receive_data(ServerConnection().send_zero_pages(1, 0, 1))


@pytest.mark.parametrize("ftype, length", [
    (FrameType.DATA, MAX_PAYLOAD + 1),
    (FrameType.DATA, 0xFFFFFFFF),
    (FrameType.REQUEST, MAX_CONTROL + 1),
    (FrameType.HELLO, 64 << 20),
])
def test_oversized_frames_are_refused_from_the_header_alone(ftype: int, length: int) -> None:
    server = ready_server() if ftype != FrameType.HELLO else ServerConnection()
    # Only the 16 header bytes: the error must not wait for the payload.
    with pytest.raises(ProtocolError, match="exceeds"):
        server.receive_data(frame(ftype, length=length))


def test_bad_pages_frames() -> None:
    client, server = handshake(lz4=False)

    def pages(vaddr: int, nr: int, data: bytes, flags: int = 0) -> bytes:
        return frame(FrameType.PAGES, PAGE_HEADER.pack(vaddr, nr, 0) + data, flags=flags)

    cases = [
        (frame(FrameType.PAGES, b"short"), "no page header"),
        (pages(0x1000, 1, bytes(100)), "100 bytes for 1 pages"),
        (pages(0x1001, 1, bytes(PAGE_SIZE)), "bad page run"),
        (pages(0x1000, 0, b""), "bad page run"),
        (pages(0x1000, MAX_FRAME_PAGES + 1, b"", Flag.ZERO), "bad page run"),
        (pages(0x1000, 1, b"x", Flag.ZERO), "ZERO PAGES frame with data"),
        (pages(0x1000, 1, b"x", Flag.LZ4), "lz4 was not negotiated"),
    ]
    for data, message in cases:
        c = ClientConnection()
        c.receive_data(server.send_server_hello([]))
        with pytest.raises(ProtocolError, match=message):
            c.receive_data(data)


def test_corrupt_pages_are_detected() -> None:
    client, server = handshake(lz4=True)
    good = os.urandom(PAGE_SIZE)
    ev = client.receive_data(join(server.send_pages(1, 0, 1, good, crc32=zlib.crc32(good) ^ 1)))
    assert isinstance(ev[0], PagesReceived)
    ev[0].decode()                                  # not checked unless asked
    with pytest.raises(CorruptPages, match="checksum"):
        ev[0].decode(verify=True)
    ev = client.receive_data(join(server.send_pages(1, 0, 1, b"\xff" * 100, lz4=True)))
    assert isinstance(ev[0], PagesReceived)
    with pytest.raises(CorruptPages, match="decompress"):
        ev[0].decode()


@pytest.mark.parametrize("cut", [1, 15, 16, 17, 100, 70_000, 500_000])
def test_truncated_frame_at_eof(cut: int) -> None:
    client, server = handshake(lz4=False)
    whole = join(server.send_pages(1, 0, 128, os.urandom(128 * PAGE_SIZE), end=True))
    assert cut < len(whole)
    c = ClientConnection()
    c.receive_data(server.send_server_hello([]))
    c.receive_data(whole[:cut])
    with pytest.raises(ProtocolError, match="closed in the middle of a frame"):
        c.receive_eof()
    c2 = ClientConnection()
    c2.receive_data(server.send_server_hello([]))
    c2.receive_data(whole)
    c2.receive_eof()                   # a clean end between frames is fine


def test_encoders_refuse_bad_frames() -> None:
    assert len(encode_header(FrameType.DATA, 0, 1, 0)) == 16
    with pytest.raises(ValueError, match="bytes of page data for 2 pages"):
        ServerConnection().send_pages(1, 0x1000, 2, bytes(PAGE_SIZE))
    _, server = handshake(lz4=False)
    with pytest.raises(ValueError, match="not negotiated"):
        server.send_pages(1, 0, 1, b"x", lz4=True)
    with pytest.raises(ValueError):
        server.send_pages(1, 0, MAX_FRAME_PAGES + 1, bytes((MAX_FRAME_PAGES + 1) * PAGE_SIZE))
    with pytest.raises(ValueError):
        server.send_data(1 << 32, b"")
    with pytest.raises(ValueError, match="empty request"):
        ClientConnection().send_request(1, wire.Request())


def test_decoder_rejects_types_it_does_not_accept() -> None:
    dec = FrameDecoder([FrameType.DATA])
    assert bytes(dec.feed(frame(FrameType.DATA, b"abc"))[0].payload) == b"abc"
    with pytest.raises(ProtocolError, match="unexpected REQUEST"):
        dec.feed(frame(FrameType.REQUEST))
