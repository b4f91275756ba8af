"""protoc as shipped in grpcio-tools (the compiler pip's build uses), for Bazel actions.

Usage is protoc's own; the include folder of the well-known types bundled with grpcio-tools is
appended, so ``import "google/protobuf/...";`` resolves without @com_google_protobuf.
"""

import os
import sys

from grpc_tools import protoc


def main(argv: list[str]) -> int:
    """Run protoc with ``argv`` (without the program name); returns its exit code."""
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    return protoc.main(["protoc", *argv, f"--proto_path={include}"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
