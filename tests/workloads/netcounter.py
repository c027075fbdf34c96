"""A counter that holds TCP sockets, for remote fork: its copy must run
without them.

``python netcounter.py DIR PORT`` (DIR only marks the process as the test's):
listens on 127.0.0.1 (a free port) and connects to 127.0.0.1:PORT; prints
``listening P`` and then 0, 1, 2, ... on stdout, one every INTERVAL. A client
of the listener is greeted with ``hello N`` (N: ticks so far); a line read on
the connected socket is answered with ``pong N``. Once its sockets fail (a
copy made without them: the fds are closed) it prints ``sockets gone`` once
and counts on.
"""

from __future__ import annotations

import select
import socket
import sys
import time

INTERVAL = 0.02


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=10)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    alive = True
    i = 0
    while True:
        if alive:
            try:
                ready, _, _ = select.select([listener, client], [], [], INTERVAL)
                if listener in ready:
                    conn, _ = listener.accept()
                    conn.sendall(f"hello {i}\n".encode())
                    conn.close()
                if client in ready and client.recv(100):
                    client.sendall(f"pong {i}\n".encode())
            except OSError:
                alive = False
                print("sockets gone", flush=True)
        else:
            time.sleep(INTERVAL)
        print(i, flush=True)
        i += 1


if __name__ == "__main__":
    main()
