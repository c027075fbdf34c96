"""Keep rewriting part of a large buffer; report whether the buffer is intact.

    rewriter.py OUT [--total MIB] [--hot MIB]

The buffer holds TOTAL MiB: the first HOT MiB are rewritten over and over in
64 KiB chunks, each stamped with (pass, chunk), so the process always knows
what every hot chunk must hold; the rest is random bytes written once, whose
sha256 the process remembers. Writes "ready" to OUT once filled.

SIGUSR1 toggles: the first stops the rewriting, checks the whole buffer
against what the process knows it wrote and appends "ok SHA256" (or
"bad ...") to OUT; the next one starts rewriting again, and so on. A
migrated process can so check its own memory on the other side.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import struct
import time

MIB = 1 << 20
CHUNK = 64 << 10

toggles = 0


def on_usr1(_sig: int, _frame: object) -> None:
    global toggles
    toggles += 1


def stamp(p: int, i: int) -> bytes:
    return struct.pack("<QQ", p + 1, i) * (CHUNK // 16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--total", type=int, default=64)
    ap.add_argument("--hot", type=int, default=16)
    args = ap.parse_args()
    total, hot = args.total * MIB, args.hot * MIB
    buf = bytearray(total)
    for off in range(hot, total, MIB):
        buf[off:off + MIB] = os.urandom(MIB)
    cold_sha = hashlib.sha256(memoryview(buf)[hot:]).hexdigest()
    nchunks = hot // CHUNK
    signal.signal(signal.SIGUSR1, on_usr1)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, b"ready\n")
    p, i = 0, 0       # pass, next chunk: chunks < i hold pass p, the rest pass p - 1
    reported = 0
    while True:
        if toggles % 2 == 0:
            buf[i * CHUNK:(i + 1) * CHUNK] = stamp(p, i)
            i += 1
            if i == nchunks:
                p, i = p + 1, 0
            continue
        if reported != toggles:
            reported = toggles
            view = memoryview(buf)
            bad = ""
            for j in range(nchunks):
                want = stamp(p if j < i else p - 1, j) if (p or j < i) else bytes(CHUNK)
                if view[j * CHUNK:(j + 1) * CHUNK] != want:
                    bad = f"bad chunk {j} (pass {p}, next {i})"
                    break
            if not bad and hashlib.sha256(view[hot:]).hexdigest() != cold_sha:
                bad = "bad cold region"
            line = bad or f"ok {hashlib.sha256(view).hexdigest()} pass {p}"
            os.write(fd, (line + "\n").encode())
        time.sleep(0.01)


if __name__ == "__main__":
    main()
