"""The committed pb2 modules must be exactly what lazarus.proto generates."""

import subprocess
import sys
from pathlib import Path

import pytest

IMAGES = Path(__file__).resolve().parent.parent / "core" / "images"


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pb2")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{IMAGES}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            str(IMAGES / "lazarus.proto"),
        ],
        check=True,
    )
    return out


@pytest.mark.parametrize("name", ["lazarus_pb2.py", "lazarus_pb2.pyi"])
def test_pb2_matches_proto(generated_dir: Path, name: str) -> None:
    fresh = (generated_dir / name).read_bytes()
    committed = (IMAGES / name).read_bytes()
    assert fresh == committed, f"core/images/{name} differs from lazarus.proto: run make proto"
