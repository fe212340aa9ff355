"""What both clients share besides their plans: arguments, credentials, per-call options."""

from __future__ import annotations

from typing import Any

import grpc

from samserve_client._channel import DEFAULT_TIMEOUT, TlsFile, credentials
from samserve_client._image import ImageLike
from samserve_client._plan import Options, Service, source, timeout_of
from samserve_client._proto.samserve.v1 import decoder_pb2_grpc, embedding_pb2_grpc
from samserve_client._refine import SESSION_TIMEOUT, RefineSteps
from samserve_client.types import EmbeddingRef


class BaseClient:
    """Arguments checked once for both clients (documented on :class:`SamClient`); each
    subclass names its kind of channel in ``_open_channel``."""

    def __init__(
        self,
        embedding_address: str,
        decoder_address: str,
        *,
        tls_ca: TlsFile | None = None,
        tls_cert: TlsFile | None = None,
        tls_key: TlsFile | None = None,
        token: str | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> None:
        self.model = model
        self.timeout = timeout_of(timeout, DEFAULT_TIMEOUT)
        embedding_credentials, decoder_credentials = (
            credentials(address, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token)
            for address in (embedding_address, decoder_address)
        )
        self._embedding_channel: Any = self._open_channel(embedding_address, embedding_credentials)
        self._decoder_channel: Any = self._open_channel(decoder_address, decoder_credentials)
        self._stubs: dict[Service, Any] = {
            Service.EMBEDDING: embedding_pb2_grpc.EmbeddingServiceStub(self._embedding_channel),
            Service.DECODER: decoder_pb2_grpc.DecoderServiceStub(self._decoder_channel),
        }

    @staticmethod
    def _open_channel(target: str, creds: grpc.ChannelCredentials | None) -> Any:
        """A channel to ``target``: a sync one for SamClient, an asyncio one for the other."""
        raise NotImplementedError

    def _options(self, timeout: float | None) -> Options:
        return Options(self.model, timeout_of(timeout, self.timeout))

    def _refine_steps(
        self,
        image: ImageLike | EmbeddingRef,
        *,
        multimask_output: bool,
        mask_encoding: str,
        return_low_res_logits: bool,
        timeout: float | None,
    ) -> RefineSteps:
        data, key = source(image)
        return RefineSteps(
            data,
            key,
            self._options(None),
            timeout_of(timeout, SESSION_TIMEOUT),
            multimask_output=multimask_output,
            mask_encoding=mask_encoding,
            return_low_res_logits=return_low_res_logits,
        )
