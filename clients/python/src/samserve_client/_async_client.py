"""AsyncSamClient: the asyncio twin of SamClient (same methods, as coroutines)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Any

import grpc
import numpy.typing as npt

from samserve_client import _convert
from samserve_client._channel import DEFAULT_TIMEOUT, aio_channel
from samserve_client._image import ImageLike, encode, to_bytes
from samserve_client._refine import SESSION_TIMEOUT, AsyncRefineSession
from samserve_client.errors import NotFoundError, from_rpc_error
from samserve_client.pb import decoder_pb2, decoder_pb2_grpc, embedding_pb2, embedding_pb2_grpc
from samserve_client.types import EmbeddingRef, Prompt, SegmentResult


class AsyncSamClient:
    """Asyncio client for the embedding and decoder services; see :class:`SamClient`."""

    def __init__(
        self,
        embedding_address: str,
        decoder_address: str,
        *,
        model: str = "",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self._embedding_channel = aio_channel(embedding_address)
        self._decoder_channel = aio_channel(decoder_address)
        self._embedding = embedding_pb2_grpc.EmbeddingServiceStub(self._embedding_channel)
        self._decoder = decoder_pb2_grpc.DecoderServiceStub(self._decoder_channel)

    async def embed(self, image: ImageLike, *, timeout: float | None = None) -> EmbeddingRef:
        """Store the embedding of ``image``; see :meth:`SamClient.embed`."""
        return await self._embed_bytes(to_bytes(image), timeout)

    async def embed_many(
        self, images: Iterable[ImageLike], *, timeout: float | None = None
    ) -> list[EmbeddingRef]:
        """Embed many images over one stream; raises on the first failed image."""

        async def requests() -> AsyncIterator[embedding_pb2.EmbedStreamRequest]:
            for image in images:
                yield embedding_pb2.EmbedStreamRequest(
                    request=_convert.embed_request(to_bytes(image), self.model)
                )

        refs = []
        try:
            call = self._embedding.EmbedStream(requests(), timeout=timeout or self.timeout)
            async for item in call:
                refs.append(_convert.stream_item(item))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return refs

    async def segment(
        self,
        image: ImageLike | EmbeddingRef,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask_output: bool = True,
        *,
        return_low_res_logits: bool = True,
        mask_encoding: str = "bitmask",
        timeout: float | None = None,
    ) -> SegmentResult:
        """Segment with one prompt; see :meth:`SamClient.segment`."""
        prompt = _convert.single_prompt(points, labels, box, mask_input)
        results = await self.segment_prompts(
            image,
            [prompt],
            multimask_output=multimask_output,
            return_low_res_logits=return_low_res_logits,
            mask_encoding=mask_encoding,
            timeout=timeout,
        )
        return results[0]

    async def segment_prompts(
        self,
        image: ImageLike | EmbeddingRef,
        prompts: Sequence[Prompt],
        *,
        multimask_output: bool = True,
        return_low_res_logits: bool = True,
        mask_encoding: str = "bitmask",
        timeout: float | None = None,
    ) -> list[SegmentResult]:
        """Segment with several prompts in one call; see :meth:`SamClient.segment_prompts`."""
        data, key = (None, image.image_id) if isinstance(image, EmbeddingRef) else encode(image)
        request = _convert.segment_request(
            key,
            prompts,
            model=self.model,
            multimask_output=multimask_output,
            return_low_res_logits=return_low_res_logits,
            mask_encoding=mask_encoding,
        )
        try:
            return await self._segment(request, timeout)
        except NotFoundError:
            if data is None:
                raise
        await self._embed_bytes(data, timeout)
        return await self._segment(request, timeout)

    async def segment_everything(
        self,
        image: ImageLike | EmbeddingRef,
        *,
        timeout: float | None = None,
        **params: Any,
    ) -> list[dict[str, Any]]:
        """Segment everything; see :meth:`SamClient.segment_everything`."""
        data, key = (None, image.image_id) if isinstance(image, EmbeddingRef) else encode(image)
        request = _convert.segment_everything_request(key, self.model, params)
        try:
            return await self._everything(request, timeout)
        except NotFoundError:
            if data is None:
                raise
        # Hash-first: upload once (with the crops this call needs), then ask again.
        if int(request.crop_n_layers) > 0:
            await self._embed_crops(data, params, timeout)
        else:
            await self._embed_bytes(data, timeout)
        return await self._everything(request, timeout)

    def refine(
        self,
        image: ImageLike | EmbeddingRef,
        *,
        multimask_output: bool = False,
        mask_encoding: str = "bitmask",
        return_low_res_logits: bool = False,
        timeout: float = SESSION_TIMEOUT,
    ) -> AsyncRefineSession:
        """An interactive refinement session on ``image`` (one Refine stream).

        Each ``session.click(x, y, label)`` or ``session.box(xyxy)`` returns the refined
        :class:`SegmentResult`, predicted with every click so far and the previous best
        low-resolution logits as ``mask_input`` (the official demo's chained
        ``SamPredictor.predict`` calls). The image is uploaded only if the first step finds no
        stored embedding. ``timeout`` bounds the whole session. Use it as a context manager.
        """
        data, key = (None, image.image_id) if isinstance(image, EmbeddingRef) else encode(image)
        upload = None if data is None else functools.partial(self._embed_bytes, data, None)
        return AsyncRefineSession(
            self._decoder,
            key,
            upload,
            timeout,
            model=self.model,
            multimask_output=multimask_output,
            mask_encoding=mask_encoding,
            return_low_res_logits=return_low_res_logits,
        )

    async def model_info(
        self, *, timeout: float | None = None
    ) -> embedding_pb2.GetModelInfoResponse:
        """The embedding service's model; see :meth:`SamClient.model_info`."""
        try:
            info: embedding_pb2.GetModelInfoResponse = await self._embedding.GetModelInfo(
                embedding_pb2.GetModelInfoRequest(), timeout=timeout or self.timeout
            )
            return info
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    async def close(self) -> None:
        """Close both channels."""
        await self._embedding_channel.close()
        await self._decoder_channel.close()

    async def __aenter__(self) -> AsyncSamClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _embed_bytes(self, data: bytes, timeout: float | None) -> EmbeddingRef:
        try:
            resp = await self._embedding.Embed(
                _convert.embed_request(data, self.model), timeout=timeout or self.timeout
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return _convert.embedding_ref(resp)

    async def _segment(
        self, request: decoder_pb2.SegmentRequest, timeout: float | None
    ) -> list[SegmentResult]:
        try:
            resp = await self._decoder.Segment(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return _convert.segment_results(resp)

    async def _everything(
        self, request: decoder_pb2.SegmentEverythingRequest, timeout: float | None
    ) -> list[dict[str, Any]]:
        try:
            call = self._decoder.SegmentEverything(request, timeout=timeout or self.timeout)
            return _convert.everything_records([resp async for resp in call])
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    async def _embed_crops(
        self, data: bytes, params: dict[str, Any], timeout: float | None
    ) -> None:
        try:
            await self._embedding.EmbedCrops(
                _convert.embed_crops_request(data, self.model, params),
                timeout=timeout or self.timeout,
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
