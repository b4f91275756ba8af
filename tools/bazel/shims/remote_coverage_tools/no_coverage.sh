#!/bin/sh
echo "bazel coverage is not supported offline: its tools (@remote_coverage_tools) are downloaded from the internet. Use pytest for coverage." >&2
exit 1
