"""EmbeddingServicer: parse, call core.Embedder, build the response."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np

from samserve.core.amg import AmgParams
from samserve.core.embedding import Embedder, EmbedResult
from samserve.core.models import LoadedModel
from samserve.rpc.interceptors import deadline_of, log_failure
from samserve_client.pb import common_pb2, embedding_pb2, embedding_pb2_grpc

SERVICE = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


def _response(r: EmbedResult, model_id: str) -> embedding_pb2.EmbedResponse:
    return embedding_pb2.EmbedResponse(
        image_id=r.image_id,
        cached=r.cached,
        model_id=model_id,
        height=r.original_size[0],
        width=r.original_size[1],
        encode_ms=r.encode_seconds * 1000.0,
    )


_WIRE_DTYPES = {"float16": common_pb2.D_TYPE_FLOAT16, "float32": common_pb2.D_TYPE_FLOAT32}


def _tensor(array: np.ndarray) -> common_pb2.Tensor:
    """A stored array as a little-endian C-order Tensor, in the dtype it is stored in."""
    name = array.dtype.name
    wire = np.ascontiguousarray(array, dtype=np.dtype(name).newbyteorder("<"))
    return common_pb2.Tensor(shape=list(wire.shape), dtype=_WIRE_DTYPES[name], data=wire.tobytes())


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    """samserve.v1.EmbeddingService over a core :class:`Embedder`."""

    def __init__(self, embedder: Embedder, model: LoadedModel) -> None:
        self.embedder = embedder
        self.model = model

    async def Embed(  # noqa: N802
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        """Embed: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE."""
        result = await self.embedder.embed(request.image, request.model, deadline_of(context))
        return _response(result, self.embedder.model_id)

    async def EmbedStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[embedding_pb2.EmbedStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[embedding_pb2.EmbedStreamResponse]:
        """EmbedStream: one item per image, each with its own status (the stream goes on)."""
        async for item in request_iterator:
            try:
                result = await self.embedder.embed(
                    item.request.image, item.request.model, deadline_of(context)
                )
            except Exception as e:  # this item's status travels in the item; the stream goes on
                code, message = log_failure(f"{SERVICE}/EmbedStream", e)
                yield embedding_pb2.EmbedStreamResponse(code=code.value[0], message=message)
                continue
            yield embedding_pb2.EmbedStreamResponse(
                response=_response(result, self.embedder.model_id)
            )

    async def EmbedCrops(  # noqa: N802
        self, request: embedding_pb2.EmbedCropsRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedCropsResponse:
        """EmbedCrops: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE."""
        overlap = (
            request.crop_overlap_ratio
            if request.HasField("crop_overlap_ratio")
            else AmgParams().crop_overlap_ratio
        )
        r = await self.embedder.embed_crops(
            request.image, request.crop_n_layers, overlap, request.model, deadline_of(context)
        )
        return embedding_pb2.EmbedCropsResponse(
            image_id=r.image_id,
            model_id=self.embedder.model_id,
            crops=r.crops,
            encoded=r.encoded,
            height=r.original_size[0],
            width=r.original_size[1],
        )

    async def GetEmbedding(  # noqa: N802
        self, request: embedding_pb2.GetEmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.GetEmbeddingResponse:
        """GetEmbedding: INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE."""
        emb = await self.embedder.stored(request.image_id, request.model)
        return embedding_pb2.GetEmbeddingResponse(
            image_id=request.image_id,
            model_id=self.embedder.model_id,
            # The decoder's image_embeddings input is batched: (1, 256, 64, 64).
            embedding=_tensor(emb.features[np.newaxis]),
            height=emb.original_size[0],
            width=emb.original_size[1],
            input_height=emb.input_size[0],
            input_width=emb.input_size[1],
            high_res_features=[_tensor(t[np.newaxis]) for t in emb.high_res_features],
        )

    async def GetModelInfo(  # noqa: N802
        self, request: embedding_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.GetModelInfoResponse:
        """GetModelInfo: always OK."""
        return embedding_pb2.GetModelInfoResponse(
            variant=self.model.variant,
            model_id=self.model.model_id,
            weights_sha256=self.model.weights_sha256,
            source=self.model.public_source,
            family=self.model.family,
        )
