"""Protocol buffers of the batched desktop service (generated from ``desktop.proto`` at build time).

A source checkout that has not been built yet regenerates the modules on first import.
"""

from env_server.proto import _codegen

if _codegen.stale_protos():
    _codegen.generate()
