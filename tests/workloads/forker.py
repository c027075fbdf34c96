"""Fork children continuously; each checks the memory it inherited.

``python forker.py DIR``: holds 32 MiB of random bytes and their SHA-256,
writes DIR/ready, then forever: fork a child that hashes the inherited bytes
and appends "ok" or "bad" to DIR/children.txt, wait for it, pause 50 ms.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

SIZE = 32 << 20


def main() -> None:
    directory = sys.argv[1]
    data = bytearray(os.urandom(SIZE))
    expected = hashlib.sha256(data).hexdigest()
    with open(os.path.join(directory, "ready"), "w") as f:
        f.write(expected)
    while True:
        pid = os.fork()
        if pid == 0:
            verdict = "ok" if hashlib.sha256(data).hexdigest() == expected else "bad"
            with open(os.path.join(directory, "children.txt"), "a") as f:
                f.write(verdict + "\n")
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
