"""Offline stand-in for @rules_proto: forwards to the proto rules built into Bazel 4."""

load(":provider.bzl", ProtoInfo = "PROTO_INFO")

def proto_lang_toolchain(**kwargs):
    native.proto_lang_toolchain(**kwargs)

def proto_library(**kwargs):
    native.proto_library(**kwargs)
