"""A parent and a child talking over a stream and a datagram socket pair.

``python sockpair.py DIR``: the parent sends "s1" on the stream pair and "d1",
"d2" as datagrams, then writes DIR/ready; the child reads nothing until
SIGUSR1, so those stay queued. On SIGUSR1 the child reads what is there,
writes it to DIR/child.txt and answers "ack" on the stream; on SIGUSR1 the
parent reads that answer into DIR/parent.txt.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from types import FrameType

go = False


def on_usr1(signum: int, frame: FrameType | None) -> None:
    global go
    go = True


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


def main() -> None:
    global go
    directory = sys.argv[1]
    signal.signal(signal.SIGUSR1, on_usr1)
    s_parent, s_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    d_parent, d_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    if os.fork() == 0:
        s_parent.close()
        d_parent.close()
        while True:
            while not go:
                time.sleep(0.01)
            go = False
            got = drain(s_child) + drain(d_child)
            with open(os.path.join(directory, "child.txt"), "a") as f:
                f.write(" ".join(g.decode() for g in got) + "\n")
            s_child.send(b"ack")
    s_child.close()
    d_child.close()
    s_parent.send(b"s1")
    d_parent.send(b"d1")
    d_parent.send(b"d2")
    with open(os.path.join(directory, "ready"), "w") as f:
        f.write("ready\n")
    while True:
        while not go:
            time.sleep(0.01)
        go = False
        with open(os.path.join(directory, "parent.txt"), "a") as f:
            f.write(" ".join(g.decode() for g in drain(s_parent)) + "\n")


if __name__ == "__main__":
    main()
