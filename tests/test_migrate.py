"""`lazarus migrate`: pre-copy rounds, a short final freeze, the image on a
real page server on loopback, and a lazy restore from there."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pageserver import wire_pb2 as wire
from pageserver.client import RemoteError
from tests.conftest import LAZARUS, Procs, error_line, is_alive, lazarus, ok, wait_until
from tests.test_lazy_remote import restore_lazy, served  # noqa: F401  (fixture)
from tests.test_pageserver import ServerProc
from tests.test_predump import report_lines, uffd_fds


def test_migrate_process_rewriting_its_memory(procs: Procs, tmp_path: Path,
                                              served: ServerProc) -> None:  # noqa: F811
    out = tmp_path / "report"
    # 64 MiB rewritten continuously, 32 MiB more written once.
    w = procs.python("rewriter", str(out), "--total", "96", "--hot", "64")
    wait_until(lambda: report_lines(out) == ["ready"], 60, "the rewriter to fill its buffer")
    res = ok(lazarus("migrate", "-t", str(w.pid), "--to", f"{served.host}:{served.port}",
                     "--name", "mig", timeout=300))
    assert w.popen is not None
    w.reap()
    text = res.stdout
    assert "pre-dump round 1:" in text and "final dump:" in text and "frozen for" in text
    assert f"lazarus restore --lazy --page-server {served.host}:{served.port} --image mig" \
        in text
    # This server was not started with --allow-restore: the command says so.
    assert "not restored there" in text and "--allow-restore" in text
    assert (served.images / "mig" / "inventory.img").is_file()
    # The rounds went up while it ran; the server made one image of them.
    assert sorted(p.name for p in served.images.iterdir()) == ["mig"]
    assert "made of the chain by the page server" in text

    pid = restore_lazy(served, "mig", tmp_path / "pid")
    procs.adopt(pid)
    assert pid == w.pid
    assert uffd_fds(pid) == []
    # It was rewriting when frozen and goes on rewriting; now it stops and
    # checks every byte against what it knows it wrote.
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: len(report_lines(out)) == 2, 120, "the migrated rewriter's report")
    line = report_lines(out)[1]
    assert line.startswith("ok "), line
    assert int(line.split()[-1]) >= 1, "it should have rewritten its hot memory several times"


def test_migrate_to_nowhere_leaves_process_running(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "report"
    w = procs.python("rewriter", str(out), "--total", "8", "--hot", "4")
    wait_until(lambda: report_lines(out) == ["ready"], 30, "the rewriter to fill its buffer")
    # A port nothing listens on (bound, never listening).
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        line = error_line(lazarus("migrate", "-t", str(w.pid), "--to", f"127.0.0.1:{port}"))
    assert "127.0.0.1" in line
    assert is_alive(w.pid) and uffd_fds(w.pid) == []
    os.kill(w.pid, signal.SIGUSR1)
    wait_until(lambda: len(report_lines(out)) == 2, 30, "the rewriter's report")
    assert report_lines(out)[1].startswith("ok ")


def test_migrate_failing_at_final_dump_leaves_process_running(
        procs: Procs, tmp_path: Path, served: ServerProc) -> None:  # noqa: F811
    out = tmp_path / "report"
    w = procs.python("rewriter", str(out), "--total", "8", "--hot", "4")
    wait_until(lambda: report_lines(out) == ["ready"], 30, "the rewriter to fill its buffer")
    env = dict(os.environ, LAZARUS_TEST_FAIL_AFTER="collect")    # a stage of the final dump
    res = subprocess.run([LAZARUS, "migrate", "-t", str(w.pid), "--to",
                          f"{served.host}:{served.port}", "--name", "x"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                         env=env)
    assert "failing after stage collect" in error_line(res)
    # Pre-dump rounds ran; the failed final dump leaves no tracking fd behind.
    assert is_alive(w.pid) and uffd_fds(w.pid) == []
    # The rounds it had sent are removed again.
    assert list(served.images.iterdir()) == []
    os.kill(w.pid, signal.SIGUSR1)
    wait_until(lambda: len(report_lines(out)) == 2, 30, "the rewriter's report")
    assert report_lines(out)[1].startswith("ok ")


@pytest.fixture
def restoring_server(tmp_path: Path) -> Iterator[tuple[ServerProc, Path]]:
    """A page server that restores images on request (needs a token)."""
    token = tmp_path / "token"
    token.write_text("s3cret-migrate\n")
    images = tmp_path / "dest"
    images.mkdir()
    s = ServerProc(images, tmp_path / "dest.log", "--token-file", str(token), "--allow-restore")
    yield s, token
    s.kill()


def test_migrate_ends_running_on_the_other_side(procs: Procs, tmp_path: Path,
                                                restoring_server: tuple[ServerProc, Path]) -> None:
    server, token = restoring_server
    out = tmp_path / "report"
    w = procs.python("rewriter", str(out), "--total", "48", "--hot", "16")
    wait_until(lambda: report_lines(out) == ["ready"], 60, "the rewriter to fill its buffer")
    res = ok(lazarus("migrate", "-t", str(w.pid), "--to", f"{server.host}:{server.port}",
                     "--name", "moved", "--token-file", str(token), "--pidns", timeout=300))
    assert w.popen is not None
    w.reap()
    m = re.search(r"running on the page server's host as PID (\d+); downtime until then: "
                  r"(\d+) ms", res.stdout)
    assert m is not None, res.stdout
    pid = int(m.group(1))
    procs.adopt(pid)
    # In its own PID namespace (the original's PID may not be free yet on
    # this host: it is our child), where it has its own PID again.
    nspid = next(ln for ln in open(f"/proc/{pid}/status") if ln.startswith("NSpid:"))
    assert int(nspid.split()[-1]) == w.pid, nspid
    assert "frozen for" in res.stdout
    server.wait_log(f"restored image moved as PID {pid}")
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: len(report_lines(out)) == 2, 120, "the migrated rewriter's report")
    assert report_lines(out)[1].startswith("ok "), report_lines(out)


def test_restore_requests_refused_or_checked(tmp_path: Path,
                                             restoring_server: tuple[ServerProc, Path],
                                             served: ServerProc) -> None:  # noqa: F811
    server, token = restoring_server

    async def ask(s: ServerProc, name: str, **kw: str) -> RemoteError:
        client = await s.connect(**kw)
        try:
            with pytest.raises(RemoteError) as info:
                await client.restore_image(name)
            return info.value
        finally:
            await client.close()

    err = asyncio.run(ask(served, "anything"))
    assert err.code == wire.Error.UNSUPPORTED and "--allow-restore" in str(err)
    err = asyncio.run(ask(server, "nope", token=token.read_text().strip()))
    assert err.code == wire.Error.NOT_FOUND
    # A directory that is no image: the restore runs and fails, the reason comes back.
    (server.images / "junk").mkdir()
    err = asyncio.run(ask(server, "junk", token=token.read_text().strip()))
    assert "restore of junk failed" in str(err) and "inventory" in str(err), str(err)
    assert server.alive()
    # --allow-restore without a token is refused at start.
    res = subprocess.run([sys.executable, "-m", "pageserver.cli", "-D", str(tmp_path),
                          "--allow-restore"], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert res.stderr.strip() == "pageserver: error: --allow-restore needs --token-file"


def test_migrate_to_a_taken_name_leaves_process_running(
        procs: Procs, tmp_path: Path, served: ServerProc) -> None:  # noqa: F811
    out = tmp_path / "report"
    w = procs.python("rewriter", str(out), "--total", "8", "--hot", "4")
    wait_until(lambda: report_lines(out) == ["ready"], 30, "the rewriter to fill its buffer")
    (served.images / "taken").mkdir()
    (served.images / "taken" / "inventory.img").write_bytes(b"")
    line = error_line(lazarus("migrate", "-t", str(w.pid), "--to",
                              f"{served.host}:{served.port}", "--name", "taken"))
    assert "image taken already exists on the page server" in line
    assert is_alive(w.pid) and uffd_fds(w.pid) == []
    os.kill(w.pid, signal.SIGUSR1)
    wait_until(lambda: len(report_lines(out)) == 2, 30, "the rewriter's report")
    assert report_lines(out)[1].startswith("ok ")


def test_flatten_and_remove_requests_are_checked(procs: Procs, tmp_path: Path,
                                                 served: ServerProc) -> None:  # noqa: F811
    w = procs.python("rewriter", str(tmp_path / "report"), "--total", "8", "--hot", "4")
    wait_until(lambda: report_lines(tmp_path / "report") == ["ready"], 30, "the rewriter")
    # A chain whose parent lies outside the served directory.
    outside = tmp_path / "outside"
    outside.mkdir()
    ok(lazarus("pre-dump", "-t", str(w.pid), "-D", str(outside / "pre")))
    ok(lazarus("dump", "-t", str(w.pid), "-D", str(served.images / "evil"),
               "--prev", str(outside / "pre")))
    w.reap()
    (served.images / "other").mkdir()
    (served.images / "other" / "inventory.img").write_bytes(b"")

    async def ask(call: str, *args: str) -> RemoteError:
        client = await served.connect()
        try:
            with pytest.raises(RemoteError) as info:
                await getattr(client, call)(*args)
            return info.value
        finally:
            await client.close()

    err = asyncio.run(ask("flatten_chain", "evil", "flat"))
    assert err.code == wire.Error.BAD_REQUEST and "beyond the stored images" in str(err)
    assert asyncio.run(ask("flatten_chain", "nope", "flat")).code == wire.Error.NOT_FOUND
    assert asyncio.run(ask("flatten_chain", "evil", "other")).code == wire.Error.EXISTS
    assert asyncio.run(ask("remove_image", "nope")).code == wire.Error.NOT_FOUND
    assert (outside / "pre" / "inventory.img").is_file(), "nothing outside was touched"

    async def remove(name: str) -> None:
        client = await served.connect()
        try:
            await client.remove_image(name)
        finally:
            await client.close()

    asyncio.run(remove("evil"))
    assert sorted(p.name for p in served.images.iterdir()) == ["other"]
    assert served.alive()
