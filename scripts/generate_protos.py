"""Regenerate the committed gRPC stubs in server/_proto from protos/ (never hand-edit them).

Usage: python scripts/generate_protos.py [OUT_DIR]   (default: the repository root)
The -I mapping puts the stubs under server/_proto with absolute imports, no sed needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def generate(out_dir: Path) -> None:
    protos = sorted(p.relative_to(ROOT) for p in (ROOT / "protos").rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-Iserver/_proto={ROOT / 'protos'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(ROOT / p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Package markers so setuptools ships the stubs.
    for directory in (out_dir / "server" / "_proto").rglob("*"):
        if directory.is_dir():
            (directory / "__init__.py").touch()
    (out_dir / "server" / "_proto" / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
