"""The built-in ProtoInfo provider under another name, so defs.bzl can re-export it."""

PROTO_INFO = ProtoInfo
