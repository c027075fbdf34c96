"""Restore a stored image on the page server's own host (`pageserver
--allow-restore`): the end of `lazarus migrate`, which then needs no shell on
the destination.

The restore is the ordinary command line, `lazarus restore -D DIR --lazy -d`,
run as a child in its own session: it returns once the process runs, its
lazy daemon goes on alone, and nothing of it lives in the server.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

RESTORE_TIMEOUT = 120.0      # a restore -d returns once the process runs: seconds at most


class RestoreFailed(Exception):
    """str() is one line for the client."""


def last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("lazarus: error:")]
    line = (errors or lines or ["no message"])[-1]
    return line.removeprefix("lazarus: error:").strip()


async def restore_stored(command: Sequence[str], directory: Path, pidns: bool,
                         timeout: float = RESTORE_TIMEOUT) -> tuple[int, float]:
    """Run `COMMAND restore -D DIRECTORY --lazy -d`; (restored PID, seconds)."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pageserver-restore-") as tmp:
        pidfile, errfile = Path(tmp) / "pid", Path(tmp) / "stderr"
        argv = [*command, "restore", "-D", str(directory), "--lazy", "-d",
                "--pidfile", str(pidfile), *(["--pidns"] if pidns else [])]
        with open(errfile, "wb") as err:
            # stderr to a file, not a pipe: the detached lazy daemon may keep
            # it open long after the command has returned.
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True)
        # A client that goes away does not stop a restore half-way: shielded.
        waiting = asyncio.ensure_future(proc.wait())
        try:
            status = await asyncio.wait_for(asyncio.shield(waiting), timeout)
        except TimeoutError:
            proc.kill()
            await waiting
            raise RestoreFailed(f"the restore of {directory.name} did not finish within "
                                f"{timeout:g} s") from None
        text = errfile.read_text(errors="replace")
        if status != 0:
            raise RestoreFailed(f"the restore of {directory.name} failed: {last_error(text)}")
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            raise RestoreFailed(f"the restore of {directory.name} wrote no PID") from None
    return pid, time.monotonic() - t0
