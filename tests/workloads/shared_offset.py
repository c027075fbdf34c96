"""A parent and a child writing lines through one inherited fd (no O_APPEND):
only a shared file offset keeps their lines from overwriting each other.

``python shared_offset.py FILE``: each writes "p N" or "c N" every 20 ms.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    who = "c" if os.fork() == 0 else "p"
    i = 0
    while True:
        os.write(fd, f"{who} {i}\n".encode())
        i += 1
        time.sleep(0.02)


if __name__ == "__main__":
    main()
