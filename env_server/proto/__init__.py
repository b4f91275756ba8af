"""Protocol buffers of the batched desktop service (generated from ``desktop.proto`` at build time).

A source checkout that has not been built yet regenerates the modules on first import. Build systems
that generate them themselves (Bazel's genrule, see docs/bazel.md) set ENV_SERVER_SKIP_PROTO_CODEGEN=1.
"""

import os

from env_server.proto import _codegen

if os.environ.get("ENV_SERVER_SKIP_PROTO_CODEGEN") != "1" and _codegen.stale_protos():
    _codegen.generate()
