"""The committed pb2 modules must be exactly what their .proto files generate."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "core" / "images"
PAGESERVER = ROOT / "pageserver"


def _generate(src_dir: Path, proto: str, out: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{src_dir}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            str(src_dir / proto),
        ],
        check=True,
    )


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pb2")
    _generate(IMAGES, "lazarus.proto", out)
    return out


@pytest.fixture(scope="module")
def generated_wire_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wire_pb2")
    _generate(PAGESERVER, "wire.proto", out)
    return out


@pytest.mark.parametrize("name", ["lazarus_pb2.py", "lazarus_pb2.pyi"])
def test_pb2_matches_proto(generated_dir: Path, name: str) -> None:
    fresh = (generated_dir / name).read_bytes()
    committed = (IMAGES / name).read_bytes()
    assert fresh == committed, f"core/images/{name} differs from lazarus.proto: run make proto"


@pytest.mark.parametrize("name", ["wire_pb2.py", "wire_pb2.pyi"])
def test_wire_pb2_matches_proto(generated_wire_dir: Path, name: str) -> None:
    fresh = (generated_wire_dir / name).read_bytes()
    committed = (PAGESERVER / name).read_bytes()
    assert fresh == committed, f"pageserver/{name} differs from wire.proto: run make proto"
