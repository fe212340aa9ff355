"""The SDK's channel security against a minimal real grpc.aio server: TLS, mutual TLS and a
bearer token (certificates made by trustme in the test). The server here is the test's own (a
GetModelInfo stub plus an interceptor that records the authorization header), not samserve's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from samserve_client import AsyncSamClient, ModelInfo, SamClient, UnavailableError
from samserve_client.pb import embedding_pb2, embedding_pb2_grpc

pytestmark = pytest.mark.integration


class _Info(embedding_pb2_grpc.EmbeddingServiceServicer):
    async def GetModelInfo(  # noqa: N802
        self, request: embedding_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.GetModelInfoResponse:
        return embedding_pb2.GetModelInfoResponse(variant="tiny", family="sam1")


class _RecordAuthorization(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        metadata = dict(handler_call_details.invocation_metadata or ())
        self.seen.append(metadata.get("authorization"))
        return await continuation(handler_call_details)


class Pki:
    """A CA with a server certificate for 127.0.0.1 and a client certificate, as PEM bytes."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        client = self.ca.issue_cert("client.samserve.test")
        self.ca_pem = self.ca.cert_pem.bytes()
        self.server_key = server.private_key_pem.bytes()
        self.server_cert = b"".join(p.bytes() for p in server.cert_chain_pems)
        self.client_key = client.private_key_pem.bytes()
        self.client_cert = b"".join(p.bytes() for p in client.cert_chain_pems)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def other_pki() -> Pki:
    return Pki()


class Server:
    def __init__(self) -> None:
        self.recorder = _RecordAuthorization()
        self.server = grpc.aio.server(interceptors=[self.recorder])
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(_Info(), self.server)
        self.target = ""

    async def start(self, credentials: grpc.ServerCredentials | None) -> Server:
        address = "127.0.0.1:0"
        port = (
            self.server.add_insecure_port(address)
            if credentials is None
            else self.server.add_secure_port(address, credentials)
        )
        await self.server.start()
        self.target = f"127.0.0.1:{port}"
        return self


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(credentials: grpc.ServerCredentials | None = None) -> Server:
        servers.append(await Server().start(credentials))
        return servers[-1]

    yield start
    for s in servers:
        await s.server.stop(None)


def _tls(pki: Pki, *, mutual: bool = False) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)],
        root_certificates=pki.ca_pem if mutual else None,
        require_client_auth=mutual,
    )


def _sync_info(target: str, **security: Any) -> ModelInfo:
    with SamClient(target, target, **security) as client:
        return client.model_info(timeout=20)


async def _info(target: str, **security: Any) -> ModelInfo:
    """model_info through both clients; both must agree."""
    sync = await asyncio.to_thread(_sync_info, target, **security)
    async with AsyncSamClient(target, target, **security) as client:
        assert await client.model_info(timeout=20) == sync
    return sync


async def _refused(target: str, **security: Any) -> None:
    with pytest.raises(UnavailableError):
        await asyncio.to_thread(_sync_info, target, **security)
    with pytest.raises(UnavailableError):
        async with AsyncSamClient(target, target, **security) as client:
            await client.model_info(timeout=20)


async def test_tls_with_the_right_ca(serve, pki: Pki, tmp_path: Path) -> None:
    server = await serve(_tls(pki))
    assert (await _info(server.target, tls_ca=pki.ca_pem)).family == "sam1"
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.ca_pem)
    assert (await _info(server.target, tls_ca=str(ca_file))).variant == "tiny"  # a path works
    assert (await _info(server.target, tls_ca=ca_file)).variant == "tiny"


async def test_tls_refusals(serve, pki: Pki, other_pki: Pki) -> None:
    server = await serve(_tls(pki))
    await _refused(server.target)  # plaintext client against a TLS server
    await _refused(server.target, tls_ca=other_pki.ca_pem)  # server cert from an unknown CA


async def test_mutual_tls(serve, pki: Pki, other_pki: Pki, tmp_path: Path) -> None:
    server = await serve(_tls(pki, mutual=True))
    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    key.write_bytes(pki.client_key)
    cert.write_bytes(pki.client_cert)
    info = await _info(server.target, tls_ca=pki.ca_pem, tls_cert=cert, tls_key=key)
    assert info.variant == "tiny"
    await _refused(server.target, tls_ca=pki.ca_pem)  # no client certificate
    await _refused(  # a client certificate from another CA
        server.target,
        tls_ca=pki.ca_pem,
        tls_cert=other_pki.client_cert,
        tls_key=other_pki.client_key,
    )


async def test_token_arrives_over_tls_and_over_loopback_plaintext(serve, pki: Pki) -> None:
    tls = await serve(_tls(pki))
    await _info(tls.target, tls_ca=pki.ca_pem, token="s3cret")
    assert tls.recorder.seen == ["Bearer s3cret", "Bearer s3cret"]  # sync, then async

    plain = await serve()
    await _info(plain.target, token="t0ken")
    assert plain.recorder.seen == ["Bearer t0ken", "Bearer t0ken"]
    await _info(plain.target)
    assert plain.recorder.seen[-2:] == [None, None]
