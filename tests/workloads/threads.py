"""Four threads, each appending its own counter to DIR/tN.txt every 50 ms;
the main thread joins them. Every counter must go on exactly after a restore."""

from __future__ import annotations

import sys
import threading
import time

THREADS = 4


def worker(directory: str, n: int) -> None:
    with open(f"{directory}/t{n}.txt", "a") as f:
        i = 0
        while True:
            f.write(f"{i}\n")
            f.flush()
            i += 1
            time.sleep(0.05)


def main() -> None:
    threads = [threading.Thread(target=worker, args=(sys.argv[1], n), name=f"counter-{n}")
               for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
