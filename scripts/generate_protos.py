"""Regenerate the Python stubs from protos/ (the one command: `python scripts/generate_protos.py`).

With `--check` it generates into a temporary directory and fails when the committed stubs
differ, so CI catches a .proto edited without regenerating (connect-python's checkgenerate).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    include = resources.files("grpc_tools") / "_proto"
    for proto in proto_files():
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto.relative_to(ROOT)}")


def generated_files(base: Path) -> set[Path]:
    return {
        path.relative_to(base)
        for path in base.rglob("*")
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        expected, actual = generated_files(fresh), generated_files(PROTO_ROOT)
        stale = sorted(
            str(rel)
            for rel in expected | actual
            if rel not in expected
            or rel not in actual
            or not filecmp.cmp(fresh / rel, PROTO_ROOT / rel, shallow=False)
        )
    if stale:
        print("generated stubs are stale; run: python scripts/generate_protos.py", file=sys.stderr)
        for rel in stale:
            print(f"  protos/{rel}", file=sys.stderr)
        return 1
    print("generated stubs are current")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed stubs are stale"
    )
    if parser.parse_args().check:
        return check()
    for rel in generated_files(PROTO_ROOT):
        (PROTO_ROOT / rel).unlink()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for rel in generated_files(Path(tmp)):
            (PROTO_ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / rel, PROTO_ROOT / rel)
    print("generated stubs written under protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
