"""TLS, mutual TLS and bearer tokens on the real services, with real certificates (trustme).

Each refused case of the issue has a test here; the status each gets is the one a client sees.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from samserve.config import ServerSettings, StoreSettings
from samserve.core.errors import ConfigError
from samserve.core.models import LoadedModel
from samserve_client import SamClient, UnauthenticatedError, UnavailableError
from tests.conftest import png_bytes
from tests.pki import Pki, token_file
from tests.stack import StackThread
from tools.shapes import make_shapes_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def secure(tiny_random: LoadedModel, redis_url: str, pki: Pki, tmp_path: Path):
    """Both services with mutual TLS and two named tokens."""
    tokens = token_file(tmp_path, "# who may call\nalice sekret-a\nbob sekret-b\n")
    server = ServerSettings(
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
        auth_tokens=str(tokens),
    )
    stack = StackThread(tiny_random, redis_url, server=server).start()
    yield stack, tokens
    stack.close()


def _client(stack: StackThread, pki: Pki, token: str | None = "sekret-a", **tls) -> SamClient:
    kwargs = {"tls_ca": pki.ca, "tls_cert": pki.client_cert, "tls_key": pki.client_key, **tls}
    return SamClient(
        stack.embedding_address, stack.decoder_address, token=token, timeout=20,
        **{k: v for k, v in kwargs.items() if v is not None},
    )  # fmt: skip


IMAGE = png_bytes(make_shapes_image(seed=21, height=64, width=96).image)


def _embed(client: SamClient) -> None:
    with client:
        client.embed(IMAGE)


def test_mtls_with_a_token_works(secure, pki) -> None:
    stack, _ = secure
    with _client(stack, pki) as client:
        res = client.segment(IMAGE, points=[[10, 10]])
    assert res.masks.shape == (3, 64, 96)


def test_a_second_token_in_the_file_is_accepted(secure, pki) -> None:
    _embed(_client(secure[0], pki, token="sekret-b"))


def test_plaintext_client_is_refused(secure) -> None:
    stack, _ = secure
    with pytest.raises(UnavailableError):
        _embed(SamClient(stack.embedding_address, stack.decoder_address, timeout=10))


def test_server_certificate_from_an_unknown_ca_is_refused(secure, pki) -> None:
    with pytest.raises(UnavailableError):
        _embed(_client(secure[0], pki, tls_ca=pki.other_ca))


def test_mtls_without_a_client_certificate_is_refused(secure, pki) -> None:
    with pytest.raises(UnavailableError):
        _embed(
            SamClient(secure[0].embedding_address, secure[0].decoder_address, tls_ca=pki.ca,
                      token="sekret-a", timeout=10)
        )  # fmt: skip


def test_a_client_certificate_from_another_ca_is_refused(secure, pki) -> None:
    with pytest.raises(UnavailableError):
        _embed(_client(secure[0], pki, tls_cert=pki.other_client_cert,
                       tls_key=pki.other_client_key))  # fmt: skip


def test_an_expired_client_certificate_is_refused(secure, pki) -> None:
    with pytest.raises(UnavailableError):
        _embed(_client(secure[0], pki, tls_cert=pki.expired_cert, tls_key=pki.expired_key))


@pytest.mark.parametrize("token", [None, "wrong"])
def test_no_token_or_a_wrong_token_is_unauthenticated(secure, pki, token) -> None:
    with pytest.raises(UnauthenticatedError):
        _embed(_client(secure[0], pki, token=token))


def test_a_rotated_token_takes_effect_without_a_restart(secure, pki) -> None:
    stack, tokens = secure
    _embed(_client(stack, pki, token="sekret-a"))
    tokens.write_text("alice sekret-rotated\n")
    deadline = time.monotonic() + 10
    while True:
        try:
            _embed(_client(stack, pki, token="sekret-a"))
        except UnauthenticatedError:
            break
        assert time.monotonic() < deadline, "the old token was still accepted after 10 s"
        time.sleep(0.2)
    _embed(_client(stack, pki, token="sekret-rotated"))


def _secure_channel(stack: StackThread, pki: Pki) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    return grpc.secure_channel(stack.decoder_address, creds)


def test_health_needs_no_token_and_reflection_does(secure, pki) -> None:
    stack, _ = secure
    with _secure_channel(stack, pki) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_plaintext_health_port_serves_health_only(tiny_random, redis_url, pki) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ServerSettings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                            health_port=port)  # fmt: skip
    stack = StackThread(tiny_random, redis_url, server=server)
    stack.start_decoder()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            from samserve_client.pb import decoder_pb2, decoder_pb2_grpc

            with pytest.raises(grpc.RpcError) as only_health:
                decoder_pb2_grpc.DecoderServiceStub(channel).Segment(
                    decoder_pb2.SegmentRequest(), timeout=10
                )
        assert only_health.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        stack.close()


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        ({"tls_key": "KEY"}, "--tls-cert"),
        ({"tls_cert": "CERT"}, "--tls-key"),
        ({"tls_cert": "CERT", "tls_key": "/nonexistent.key"}, "--tls-key"),
        ({"tls_client_ca": "CERT"}, "--tls-client-ca"),
        ({"auth_tokens": "WORLD"}, "--auth-tokens"),
        ({"auth_tokens": "EMPTY"}, "--auth-tokens"),
    ],
)
def test_bad_security_settings_fail_closed(pki, tmp_path, settings, flag) -> None:
    world = token_file(tmp_path, "t0k3n\n")
    world.chmod(0o644)
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    empty.chmod(0o600)
    names = {"KEY": str(pki.server_key), "CERT": str(pki.server_cert), "WORLD": str(world),
             "EMPTY": str(empty)}  # fmt: skip
    resolved = {k: names.get(v, v) for k, v in settings.items()}
    with pytest.raises(ConfigError) as bad:
        ServerSettings(**resolved)
    message = str(bad.value)
    assert message.startswith(flag) and "\n" not in message
    assert "t0k3n" not in message


def test_fail_closed_at_start_is_one_line(pki, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "samserve", "decoder", "--checkpoint", "random",
         "--tls-key", str(pki.server_key)],
        capture_output=True, text=True, timeout=90,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("samserve: --tls-cert")
    assert "Traceback" not in result.stderr


# -- Redis: TLS and ACL users -------------------------------------------------------------------

_READ = "+get +getex +expire +exists +ping +hello +auth +client|setname +info"
#: The embedding service may read and write samserve:*; the decoder may only read it (GETEX and
#: EXPIRE restart an entry's TTL; SET is what it must not have).
ACL = f"""user default off
user samserve-embedding on >emb-pass ~samserve:* -@all {_READ} +set +pexpire +del +eval +evalsha
user samserve-decoder on >dec-pass ~samserve:* -@all {_READ}
user admin on >admin-pass ~* +@all
"""


@pytest.fixture(scope="module")
def tls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks only TLS, wants client certificates, and has ACL users."""
    folder = tmp_path_factory.mktemp("redis")
    acl = folder / "users.acl"
    acl.write_text(ACL)
    from samserve.procs.common import free_port

    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
         "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes",
         "--aclfile", str(acl), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _redis(port, pki, "admin", "admin-pass", wait=True)
        yield port, acl
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def _redis(port: int, pki: Pki, user: str, password: str, wait: bool = False) -> redis.Redis:
    client = redis.Redis(
        port=port, username=user, password=password, ssl=True, ssl_ca_certs=str(pki.ca),
        ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key),
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while wait:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server with TLS did not start"
            time.sleep(0.1)
    return client


def _store(port: int, pki: Pki, user: str, password: str) -> StoreSettings:
    return StoreSettings(
        redis_url=f"rediss://{user}:{password}@127.0.0.1:{port}/0",
        redis_tls_ca=str(pki.ca),
        redis_tls_cert=str(pki.client_cert),
        redis_tls_key=str(pki.client_key),
    )


def test_a_decoder_acl_user_cannot_set(tls_redis, pki) -> None:
    port, _ = tls_redis
    decoder = _redis(port, pki, "samserve-decoder", "dec-pass")
    with pytest.raises(redis.exceptions.NoPermissionError):
        decoder.set("samserve:x", b"1")
    assert decoder.get("samserve:x") is None
    with pytest.raises(redis.exceptions.NoPermissionError):
        decoder.get("elsewhere")
    decoder.close()


def test_redis_over_tls_with_acl_users_end_to_end(tiny_random, tls_redis, pki) -> None:
    """Embedding (read-write user) and decoder (read-only user) over TLS to Redis."""
    port, _ = tls_redis
    stack = StackThread(tiny_random, "", store=_store(port, pki, "samserve-embedding", "emb-pass"))
    stack.start_embedding()
    stack.store = _store(port, pki, "samserve-decoder", "dec-pass")
    stack.start_decoder()
    try:
        with stack.client() as client:
            ref = client.embed(IMAGE)
            assert not ref.cached
            res = client.segment(ref, points=[[20, 20]])
            assert client.embed(IMAGE).cached
        assert res.masks.shape == (3, 64, 96) and np.isfinite(res.scores).all()
    finally:
        stack.close()


def test_the_ready_line_never_shows_a_redis_password() -> None:
    from samserve.cli.up import redact

    assert redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("rediss://:s3cret@host:6380/0") == "rediss://:***@host:6380/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


def test_model_info_reports_no_path(tmp_path, redis_url) -> None:
    import torch

    from samserve.core.models import load_model

    path = tmp_path / "weights.pth"
    torch.save(load_model("tiny", "random").sam.state_dict(), path)
    model = load_model("tiny", path)
    stack = StackThread(model, redis_url).start()
    try:
        with stack.client() as client:
            info = client.model_info()
    finally:
        stack.close()
    assert info.source == "checkpoint" and str(tmp_path) not in repr(info)


def test_token_file_permissions_are_checked_as_deployed(tmp_path) -> None:
    """Secrets mounted with mode 0440 (group-readable, not world-readable) are accepted."""
    path = token_file(tmp_path, "svc t0k3n\n")
    path.chmod(0o440)
    assert not os.stat(path).st_mode & stat.S_IROTH
    ServerSettings(auth_tokens=str(path))


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_up_with_tls_runs_its_private_triton_over_mutual_tls(pki, tmp_path) -> None:
    """`samserve up --encoder triton` with --tls-*: Triton serves gRPC over mutual TLS, the
    services over mutual TLS with tokens, and the ready line says so."""
    import json

    from samserve.procs.triton import find_tritonserver

    if find_tritonserver() is None:
        pytest.skip("no tritonserver (pip install 'samserve[triton]')")
    tokens = token_file(tmp_path, "me sekret\n")
    args = [sys.executable, "-m", "samserve", "up", "--checkpoint", "random",
            "--encoder", "triton", "--tls-cert", str(pki.server_cert),
            "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca),
            "--auth-tokens", str(tokens)]  # fmt: skip
    log = tmp_path / "up.log"
    with log.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, log.read_text()[-3000:]
        ready = json.loads(line)
        assert ready["tls"] is True and "triton" in ready
        client = SamClient(ready["embedding"], ready["decoder"], tls_ca=pki.ca,
                           tls_cert=pki.client_cert, tls_key=pki.client_key, token="sekret",
                           timeout=120)  # fmt: skip
        with client:
            assert not client.embed(IMAGE).cached
        host, port = ready["triton"]["grpc"].rsplit(":", 1)
        with (
            grpc.insecure_channel(f"{host}:{port}") as plain,
            pytest.raises(grpc.FutureTimeoutError),
        ):
            grpc.channel_ready_future(plain).result(timeout=3)
    finally:
        proc.terminate()
        proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()
