"""``python -m <module> args...`` as the main of a Bazel py_binary (see py_module_binary).

A py_binary whose main file sits inside a package would put that package's folder first on
sys.path (so ``env_server/types.py`` would shadow the standard ``types`` module); running the
module by name, as ``python -m`` does, avoids that. Under ``bazel run`` the working directory is
the caller's (BUILD_WORKING_DIRECTORY), so relative paths such as ``--config=configs/x.py`` work.
"""

import os
import runpy
import sys


def main() -> None:
    """Run the module named by the first argument with the remaining arguments."""
    if len(sys.argv) < 2:
        sys.exit("run_module: usage: run_module.py <module> [args...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    os.environ["ENV_SERVER_SKIP_PROTO_CODEGEN"] = "1"  # Bazel generated the protobuf modules
    if os.environ.get("BUILD_WORKING_DIRECTORY"):
        os.chdir(os.environ["BUILD_WORKING_DIRECTORY"])
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
