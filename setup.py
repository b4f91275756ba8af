"""Build hook: generate the gRPC/protobuf modules from ``env_server/proto/*.proto`` with grpcio-tools."""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

_HERE = Path(__file__).resolve().parent


def _codegen():
    spec = importlib.util.spec_from_file_location("_codegen", _HERE / "env_server/proto/_codegen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithProtos(build_py):
    """Generate protobuf modules into the source tree before collecting package files."""

    def run(self):
        _codegen().generate(force=True)
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
