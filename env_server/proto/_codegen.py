"""Generate Python protobuf/gRPC modules from the ``.proto`` files in this folder.

Used by the build (``setup.py``'s ``build_py``) and, as a fallback for source checkouts, at import time
when a generated module is missing or older than its ``.proto``. Imports nothing from the project so that
``setup.py`` can load it by path.
"""

from __future__ import annotations

import os
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent.parent  # the folder that holds the ``env_server`` package


def _outputs(proto: Path) -> list[Path]:
    stem = proto.stem
    return [proto.with_name(f"{stem}_pb2.py"), proto.with_name(f"{stem}_pb2_grpc.py")]


def stale_protos(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """The ``.proto`` files whose generated modules are missing or older than the source."""
    stale = []
    for proto in sorted(proto_dir.glob("*.proto")):
        outs = _outputs(proto)
        if any(not o.exists() or o.stat().st_mtime < proto.stat().st_mtime for o in outs):
            stale.append(proto)
    return stale


def generate(proto_dir: Path = PROTO_DIR, out_root: Path | None = None, force: bool = False) -> list[Path]:
    """Run grpc_tools.protoc on every (stale) ``.proto`` file; returns the files generated."""
    from grpc_tools import protoc  # build-time dependency

    root = proto_dir.parent.parent
    out_root = out_root or root
    protos = sorted(proto_dir.glob("*.proto")) if force else stale_protos(proto_dir)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    written = []
    for proto in protos:
        rel = proto.relative_to(root)
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{include}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            str(rel),
        ]
        cwd = os.getcwd()
        try:
            os.chdir(root)
            code = protoc.main(args)
        finally:
            os.chdir(cwd)
        if code != 0:
            raise RuntimeError(f"protoc failed ({code}) on {proto}")
        written.extend(_outputs(out_root / rel))
    return written


if __name__ == "__main__":
    for path in generate(force=True):
        print(path)
