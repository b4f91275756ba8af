"""Bazel-only check: the env server's protobuf modules really come from the build's genrule.

Run by `bazel test //tools/bazel:proto_codegen_test`; plain pytest does not collect this folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import descriptor_pb2

from env_server.proto import desktop_pb2, desktop_pb2_grpc

RUNFILES = Path(os.environ["TEST_SRCDIR"]) / os.environ["TEST_WORKSPACE"]


def _descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set written by the native proto_library //env_server/proto:protos."""
    path = RUNFILES / "env_server/proto/protos-descriptor-set.proto.bin"
    assert path.exists(), f"proto_library output missing from runfiles: {path}"
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def test_modules_are_build_outputs():
    for module in (desktop_pb2, desktop_pb2_grpc):
        here = Path(os.path.abspath(module.__file__))
        assert here.is_relative_to(RUNFILES), f"{module.__name__} imported from {here}, not the runfiles"
        real = Path(os.path.realpath(module.__file__))
        # A genrule output lives under bazel-out/<config>/bin/, never in the source tree.
        assert "/bin/env_server/proto/" in real.as_posix(), f"{module.__name__} is not a build output: {real}"


def _strip_json_names(messages) -> None:
    """protoc fills ``json_name`` in descriptor sets; the embedded descriptor leaves it out."""
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _strip_json_names(message.nested_type)


def test_generated_module_matches_proto_library():
    generated = descriptor_pb2.FileDescriptorProto()
    desktop_pb2.DESCRIPTOR.CopyToProto(generated)
    (checked,) = [f for f in _descriptor_set().file if f.name == "env_server/proto/desktop.proto"]
    checked.ClearField("source_code_info")
    _strip_json_names(checked.message_type)
    _strip_json_names(generated.message_type)
    assert generated.package == checked.package == "desktop.v1"
    assert generated == checked


def test_grpc_stubs_cover_every_service():
    services = desktop_pb2.DESCRIPTOR.services_by_name
    assert services, "desktop.proto declares no service"
    for name in services:
        assert hasattr(desktop_pb2_grpc, f"{name}Stub"), f"no {name}Stub in desktop_pb2_grpc"
        assert hasattr(desktop_pb2_grpc, f"{name}Servicer"), f"no {name}Servicer in desktop_pb2_grpc"
