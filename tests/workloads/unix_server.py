"""A unix stream server and its client child, connected through a path.

``python unix_server.py DIR``: listens on DIR/sock, forks a client that
connects and sends 0, 1, 2... one per line every 50 ms; the server appends
what it receives to DIR/got.txt.
"""

from __future__ import annotations

import os
import socket
import sys
import time


def main() -> None:
    directory = sys.argv[1]
    path = os.path.join(directory, "sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    if os.fork() == 0:
        server.close()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        i = 0
        while True:
            client.send(b"%d\n" % i)
            i += 1
            time.sleep(0.05)
    conn, _ = server.accept()
    buf = b""
    with open(os.path.join(directory, "got.txt"), "a") as f:
        while True:
            buf += conn.recv(4096)
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                f.write(line.decode() + "\n")
                f.flush()


if __name__ == "__main__":
    main()
