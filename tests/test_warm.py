"""Warm starts: a program dumped after its slow start-up is restored lazily,
several times at once; a first restore records the pages it faulted on
(workingset.img), later restores push them before the process runs and take
fewer faults. A corrupt or foreign working set is ignored with a warning."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.images import workingset
from pageserver import wire_pb2 as wire
from pageserver.client import RemoteError
from tests.conftest import (
    LAZARUS,
    Procs,
    Workload,
    dump,
    lazarus,
    ok,
    show_json,
    wait_until,
)
from tests.test_pageserver import ServerProc

ENTRIES = "200000"
READY_TIMEOUT = 60.0       # start-up of the workload: imports and a big dict
ANSWER_TIMEOUT = 30.0      # one request, lazily restored, on a busy 2-CPU machine
RESTORE_TIMEOUT = 120.0    # a restore run until its process quits
# Holds the background push back, so the faults counted are the process's own
# and do not depend on how fast the push happens to be.
PUSH_DELAY = "3"


def start_app(procs: Procs, d: Path, entries: str = ENTRIES) -> Workload:
    w = procs.python("warmapp", str(d), entries)
    wait_until(lambda: (d / "ready").exists(), READY_TIMEOUT, "warmapp to be ready")
    return w


def expected_answer(keys: Sequence[str], entries: int) -> int:
    rng = random.Random(7)
    data = {f"key{i}": rng.randrange(1_000_000) for i in range(entries)}
    return sum(data[k] for k in keys)


def request_keys(entries: int, n: int = 300) -> list[str]:
    rng = random.Random(11)
    return [f"key{rng.randrange(entries)}" for _ in range(n)]


@dataclass
class Run:
    """One `lazarus restore --lazy --pidns --stats` waiting for its process."""

    popen: subprocess.Popen[bytes]
    pidfile: Path

    def pid(self) -> int:
        wait_until(lambda: self.pidfile.exists() and self.pidfile.read_text().strip() != "",
                   RESTORE_TIMEOUT, f"the restore to write {self.pidfile.name}")
        return int(self.pidfile.read_text())

    def finish(self) -> str:
        try:
            _, err = self.popen.communicate(timeout=RESTORE_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"restore {self.pidfile.name} did not end within {RESTORE_TIMEOUT} s")
        text = err.decode(errors="replace")
        assert self.popen.returncode == 0, text
        return text


def start_restores(procs: Procs, d: Path, source: Sequence[str],
                   extras: Sequence[Sequence[str]], tag: str) -> list[Run]:
    runs: list[Run] = []
    for i, extra in enumerate(extras):
        pidfile = d / f"{tag}{i}.pid"
        popen = subprocess.Popen(
            [LAZARUS, "restore", *source, "--lazy", "--pidns", "--stats",
             "--push-delay", PUSH_DELAY, "--pidfile", str(pidfile), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.track(popen)
        runs.append(Run(popen, pidfile))
    return runs


def ask(d: Path, pids: Sequence[int], keys: Sequence[str]) -> dict[int, int]:
    """Send a request to every copy at once; their answers."""
    for pid in pids:
        (d / f"answer-{pid}").unlink(missing_ok=True)
    (d / "request").write_text("\n".join(keys) + "\n")
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    out: dict[int, int] = {}
    for pid in pids:
        path = d / f"answer-{pid}"
        wait_until(path.exists, ANSWER_TIMEOUT, f"restored copy {pid} to answer")
        out[pid] = int(path.read_text())
    return out


def quit_all(d: Path, runs: Sequence[Run], pids: Sequence[int]) -> list[str]:
    (d / "request").write_text("quit\n")
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    return [r.finish() for r in runs]


def faults(stats: str) -> int:
    m = re.search(r"^\s*faults\s+(\d+)", stats, re.M)
    assert m, f"no fault count in: {stats}"
    return int(m.group(1))


def prefetched(stats: str) -> int:
    m = re.search(r"^\s*pages prefetched\s+(\d+)", stats, re.M)
    assert m, f"no prefetch count in: {stats}"
    return int(m.group(1))


def restore_round(procs: Procs, d: Path, source: Sequence[str],
                  extras: Sequence[Sequence[str]], tag: str, keys: Sequence[str],
                  want: int, recorded: Path | None = None) -> list[str]:
    """Restore, ask, check the answers, quit; the restores' stderr. With
    `recorded`, quit only once that working set is saved (all pages in): the
    recording is of the request, not of the exit."""
    if recorded is not None:
        recorded.unlink(missing_ok=True)
    runs = start_restores(procs, d, source, extras, tag)
    pids = [r.pid() for r in runs]
    for pid in pids:
        procs.adopt(pid)
    answers = ask(d, pids, keys)
    assert answers == dict.fromkeys(pids, want), "a restored copy answered wrong"
    if recorded is not None:
        wait_until(recorded.exists, RESTORE_TIMEOUT, "the recorded working set to be saved")
    return quit_all(d, runs, pids)


@pytest.fixture
def warm_image(procs: Procs, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A warmapp dumped (left running) after its start-up, and its expected answer."""
    w = start_app(procs, tmp_path)
    keys = request_keys(int(ENTRIES))
    want = expected_answer(keys, int(ENTRIES))
    images = tmp_path / "img"
    dump(w, images, "--leave-running")
    yield images, want


def test_warm_restores_record_then_prefetch(procs: Procs, tmp_path: Path,
                                            warm_image: tuple[Path, int]) -> None:
    images, want = warm_image
    keys = request_keys(int(ENTRIES))
    source = ["-D", str(images)]
    # Three at once: the first records, the others are plain lazy restores.
    cold = restore_round(procs, tmp_path, source,
                         [["--record-working-set"], ["--no-prefetch"], []], "cold", keys, want,
                         recorded=images / "workingset.img")
    ws = images / "workingset.img"
    assert ws.exists(), "the recording restore saved no working set"
    assert stat.S_IMODE(ws.stat().st_mode) == 0o600
    desc = show_json(images)["working_set"]
    assert isinstance(desc, dict) and desc["processes"] == 1 and desc["pages"] > 0
    assert desc["matches_image"] is True
    assert "working set" in ok(lazarus("show", str(images))).stdout
    # Three at once again, prefetching the recorded set (on by default).
    warm = restore_round(procs, tmp_path, source, [[], [], []], "warm", keys, want)
    cold_faults = [faults(s) for s in cold]
    warm_faults = [faults(s) for s in warm]
    assert all(prefetched(s) > 0 for s in warm), warm
    assert all(prefetched(s) == 0 for s in cold)
    assert max(warm_faults) < min(cold_faults[1:]), (cold_faults, warm_faults)
    # --no-prefetch really turns it off.
    plain = restore_round(procs, tmp_path, source, [["--no-prefetch"]], "plain", keys, want)
    assert prefetched(plain[0]) == 0


def test_corrupt_or_foreign_working_set_is_ignored(procs: Procs, tmp_path: Path) -> None:
    w = start_app(procs, tmp_path, "20000")
    keys = request_keys(20000, 50)
    want = expected_answer(keys, 20000)
    first, second = tmp_path / "img1", tmp_path / "img2"
    dump(w, first, "--leave-running")
    dump(w, second, "--leave-running")
    source = ["-D", str(first)]
    restore_round(procs, tmp_path, source, [["--record-working-set"]], "rec", keys, want,
                  recorded=first / "workingset.img")
    # A working set recorded for another image (another dump of the same program).
    shutil.copy(first / "workingset.img", second / "workingset.img")
    (err,) = restore_round(procs, tmp_path, ["-D", str(second)], [[]], "foreign", keys, want)
    assert "workingset.img was recorded for another image: ignored" in err, err
    assert prefetched(err) == 0
    shown = show_json(second)["working_set"]
    assert isinstance(shown, dict) and shown["matches_image"] is False
    # A page of the copy changed: its checksum says so.
    data = bytearray((first / "workingset.img").read_bytes())
    data[-1] ^= 0xFF
    (first / "workingset.img").write_bytes(bytes(data))
    (err,) = restore_round(procs, tmp_path, source, [[]], "flipped", keys, want)
    assert "pages of process" in err and "are corrupt" in err and "ignored" in err, err
    assert prefetched(err) == 0
    # Garbage.
    (first / "workingset.img").write_bytes(b"\xff\x00garbage" * 10)
    (err,) = restore_round(procs, tmp_path, source, [[]], "garbage", keys, want)
    assert "workingset.img is corrupt" in err and "ignored" in err, err
    assert prefetched(err) == 0
    assert "unusable" in ok(lazarus("show", str(first))).stdout
    # Asking to record without --lazy is refused in one line.
    res = lazarus("restore", "-D", str(first), "--record-working-set")
    assert res.returncode == 1 and "add --lazy" in res.stderr


def test_working_set_on_the_page_server(procs: Procs, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    w = start_app(procs, tmp_path, "50000")
    keys = request_keys(50000, 100)
    want = expected_answer(keys, 50000)
    dump(w, served / "warm", "--leave-running")
    server = ServerProc(served, tmp_path / "pageserver.log")
    try:
        source = ["--page-server", f"{server.host}:{server.port}", "--image", "warm"]
        ws = served / "warm" / "workingset.img"
        cold = restore_round(procs, tmp_path, source, [["--record-working-set"], []], "rcold",
                             keys, want, recorded=ws)
        assert ws.exists(), "the working set was not saved beside the image on the server"
        assert stat.S_IMODE(ws.stat().st_mode) == 0o600
        warm = restore_round(procs, tmp_path, source, [[], []], "rwarm", keys, want)
        assert all(prefetched(s) > 0 for s in warm), warm
        assert max(faults(s) for s in warm) < faults(cold[1]), (cold, warm)
        # The server keeps only a working set that parses and is this image's.
        good = ws.read_bytes()
        asyncio.run(refused_puts(server, good))
        assert ws.read_bytes() == good
    finally:
        server.kill()


async def refused_puts(server: ServerProc, good: bytes) -> None:
    client = await server.connect()
    try:
        ws, _ = workingset.parse(good)
        ws.inventory_sha256 = bytes(32)      # another image's
        body = ws.SerializeToString()
        foreign = b"LZWS" + len(body).to_bytes(4, "little") + body
        for data, why in ((b"\xffgarbage" * 8, "corrupt"), (foreign, "not recorded for image")):
            with pytest.raises(RemoteError) as info:
                await client.put_working_set("warm", data)
            assert info.value.code == wire.Error.BAD_REQUEST and why in str(info.value)
        with pytest.raises(RemoteError) as info:
            await client.put_working_set("nosuch", good)
        assert info.value.code == wire.Error.NOT_FOUND
    finally:
        await client.close()
