"""Unix socket facts the kernel gives only through NETLINK_SOCK_DIAG:
each socket's peer and queue lengths."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
UDIAG_SHOW_NAME, UDIAG_SHOW_PEER, UDIAG_SHOW_RQLEN = 0x1, 0x4, 0x10
UNIX_DIAG_NAME, UNIX_DIAG_PEER, UNIX_DIAG_RQLEN = 0, 2, 4
TCP_LISTEN = 10

_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBHIIIII")        # unix_diag_req
_MSG = struct.Struct("=BBBBIII")         # unix_diag_msg
_RTA = struct.Struct("=HH")


@dataclass(frozen=True)
class UnixSocket:
    ino: int
    type: int           # socket.SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
    state: int          # TCP_ESTABLISHED (1), TCP_LISTEN (10), TCP_CLOSE (7)
    peer: int           # inode of the peer, 0 if none
    name: bytes         # bound address, b"" if none
    rqueue: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def unix_sockets() -> dict[int, UnixSocket]:
    """Every unix socket of this network namespace, by inode."""
    out: dict[int, UnixSocket] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        req = _REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0,
                        UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN, 0, 0)
        nl.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY,
                               NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        while True:
            data = nl.recv(1 << 16)
            off = 0
            while off < len(data):
                length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, off)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    raise OSError("sock_diag refused the unix socket dump")
                _, stype, state, _, ino, _, _ = _MSG.unpack_from(data, off + _NLMSGHDR.size)
                peer, rqueue, name = 0, 0, b""
                a = off + _NLMSGHDR.size + _MSG.size
                while a < off + length:
                    alen, atype = _RTA.unpack_from(data, a)
                    body = data[a + _RTA.size : a + alen]
                    if atype == UNIX_DIAG_PEER:
                        peer = struct.unpack("=I", body[:4])[0]
                    elif atype == UNIX_DIAG_RQLEN:
                        rqueue = struct.unpack("=I", body[:4])[0]
                    elif atype == UNIX_DIAG_NAME:
                        name = body
                    a += _align(alen)
                out[ino] = UnixSocket(ino, stype, state, peer, name, rqueue)
                off += _align(length)
