"""Tokens, TLS, loopback-only binding, message-size limits and health checks."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from dm_env_rpc.v1 import connection, dm_env_adaptor
from fake_backend import PATH, fake_config
from grpc_health.v1 import health_pb2, health_pb2_grpc

from env_server.auth import InsecureBindError, check_bind, is_loopback
from env_server.client import BatchedClient
from env_server.server import DesktopServer, ServerThread

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def secured():
    with ServerThread(fake_config(token=TOKEN, max_message_bytes=1 << 20)) as st:
        yield st


def _health(address: str, service: str = "", credentials=None) -> int:
    channel = (grpc.secure_channel(address, credentials) if credentials
               else grpc.insecure_channel(address))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    finally:
        channel.close()


def test_token_required(secured):
    for token in (None, "wrong"):
        with BatchedClient(secured.address, token=token) as c:
            with pytest.raises(grpc.RpcError) as err:
                c.create(1)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                c.info()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # the stock dm_env_rpc client passes metadata too
    channel = grpc.insecure_channel(secured.address)
    with connection.Connection(channel, metadata=[("authorization", "Bearer nope")]) as conn:
        with pytest.raises(grpc.RpcError) as err:
            dm_env_adaptor.create_world(conn, {})
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with connection.Connection(channel, metadata=[("authorization", f"Bearer {TOKEN}")]) as conn:
        assert dm_env_adaptor.create_world(conn, {}).startswith("desktop-")
    channel.close()
    # and the server keeps serving the right token
    with BatchedClient(secured.address, token=TOKEN) as c:
        [e] = c.create(1)
        assert c.reset([e], [1])[0].ok


def test_health_serving_without_token(secured):
    serving = health_pb2.HealthCheckResponse.SERVING
    assert _health(secured.address) == serving
    assert _health(secured.address, "desktop.v1.DesktopEnv") == serving
    assert _health(secured.address, "dm_env_rpc.v1.Environment") == serving
    with pytest.raises(grpc.RpcError) as err:
        _health(secured.address, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_oversized_request_is_rejected_and_server_keeps_serving(secured):
    with BatchedClient(secured.address, token=TOKEN) as c:
        ids = c.create(2)
        c.reset(ids, [1, 2])
        with pytest.raises(grpc.RpcError) as err:
            c.step(ids, ["x" * (2 << 20), "y"])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with BatchedClient(secured.address, token=TOKEN) as c:
        ids = c.create(2)
        assert all(r.ok for r in c.reset(ids, [1, 2]))
        assert all(r.ok for r in c.step(ids, ["x" * 1000, "y"]))


def test_oversized_result_is_a_per_item_error():
    big = fake_config(max_message_bytes=1 << 20, backend_kwargs={"payload_bytes": 2 << 20})
    with ServerThread(big) as st, BatchedClient(st.address) as c:
        [e] = c.create(1)
        [r] = c.reset([e], [1])
        assert r.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max message size" in r.message
        assert c.info().envs == 1


def test_non_loopback_bind_requires_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        with pytest.raises(InsecureBindError, match="without a token"):
            check_bind(host, None)
        with pytest.raises(InsecureBindError):
            DesktopServer(fake_config(host=host))
        check_bind(host, "t")  # fine with a token (not bound here: tests stay on loopback)
    # the command line refuses before binding anything
    proc = subprocess.run(
        [sys.executable, "-m", "env_server.serve", "--host", "0.0.0.0", "--port", "0",
         "--backend", "fake", "--backend_module", PATH],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "refusing to listen on '0.0.0.0' without a token" in proc.stderr


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_tls_with_token(tmp_path):
    cert, key = _self_signed(tmp_path)
    with ServerThread(fake_config(token=TOKEN, tls_cert=cert, tls_key=key)) as st:
        with BatchedClient(st.address, token=TOKEN, root_cert=cert) as c:
            [e] = c.create(1)
            assert c.step([e], ["x"])[0].code == grpc.StatusCode.FAILED_PRECONDITION
            assert c.reset([e], [1])[0].ok
        with BatchedClient(st.address, token="wrong", root_cert=cert) as c:
            with pytest.raises(grpc.RpcError) as err:
                c.create(1)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.FutureTimeoutError):  # plaintext cannot talk to a TLS port
            BatchedClient(st.address, token=TOKEN, connect_timeout=1.0)
        creds = grpc.ssl_channel_credentials(Path(cert).read_bytes())
        assert _health(st.address, credentials=creds) == health_pb2.HealthCheckResponse.SERVING
