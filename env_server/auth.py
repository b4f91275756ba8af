"""Access control: loopback-only by default, bearer tokens in metadata, optional TLS."""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import grpc

TOKEN_ENV = "ENV_SERVER_TOKEN"
METADATA_KEY = "authorization"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


class InsecureBindError(ValueError):
    """A non-loopback bind was requested without a token."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name that may resolve anywhere


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose envs beyond this machine without authentication."""
    if not is_loopback(host) and not token:
        raise InsecureBindError(
            f"refusing to listen on {host!r} without a token: binding a non-loopback address "
            f"exposes the envs to the network. Pass --token / --token_file (or set ${TOKEN_ENV}), "
            "ideally with --tls_cert/--tls_key, or bind 127.0.0.1.")


def load_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """The token from an explicit value, a file (first line), or ``$ENV_SERVER_TOKEN``."""
    if token:
        return token
    if token_file:
        value = Path(token_file).read_text().strip()
        if not value:
            raise ValueError(f"token file {token_file} is empty")
        return value
    return os.environ.get(TOKEN_ENV) or None


def client_metadata(token: str | None) -> list[tuple[str, str]]:
    return [(METADATA_KEY, f"Bearer {token}")] if token else []


def _metadata_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == METADATA_KEY:
            value = value.decode() if isinstance(value, bytes) else value
            return value[7:] if value.startswith("Bearer ") else value
    return None


def _abort_handler(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that rejects the call."""

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    req_stream = bool(handler and handler.request_streaming)
    resp_stream = bool(handler and handler.response_streaming)
    if req_stream and resp_stream:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if req_stream:
        return grpc.stream_unary_rpc_method_handler(unary)
    if resp_stream:
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.unary_unary_rpc_method_handler(unary)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls whose ``authorization: Bearer <token>`` metadata is missing or wrong.

    Health checks stay open by default so load balancers and probes need no secret.
    """

    def __init__(self, token: str, allow_health: bool = True):
        if not token:
            raise ValueError("an empty token would accept everyone")
        self._token = token.encode()
        self._allow_health = allow_health

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if self._allow_health and details.method.startswith(HEALTH_PREFIX):
            return await continuation(details)
        given = _metadata_token(details.invocation_metadata)
        if given is not None and hmac.compare_digest(given.encode(), self._token):
            return await continuation(details)
        handler = await continuation(details)
        why = "missing bearer token" if given is None else "invalid token"
        return _abort_handler(handler, f"{why} (send metadata 'authorization: Bearer <token>')")


def server_credentials(cert_file: str, key_file: str) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(Path(key_file).read_bytes(), Path(cert_file).read_bytes())])


def channel_credentials(root_cert: str | bytes | None) -> grpc.ChannelCredentials:
    """TLS credentials trusting ``root_cert`` (a PEM path or bytes; None = system roots)."""
    if isinstance(root_cert, str):
        root_cert = Path(root_cert).read_bytes()
    return grpc.ssl_channel_credentials(root_certificates=root_cert)
