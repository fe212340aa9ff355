"""AsyncSamClient: the asyncio twin of SamClient (same methods, as coroutines)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import numpy.typing as npt

from samserve_client import _convert, _plan
from samserve_client._base import BaseClient
from samserve_client._channel import aio_channel
from samserve_client._embedding import EmbeddingTensors
from samserve_client._image import ImageLike, to_bytes
from samserve_client._plan import Call, Service, Unary
from samserve_client._refine import AsyncRefineSession
from samserve_client.types import EmbeddingRef, ModelInfo, Prompt, SegmentResult


class AsyncSamClient(BaseClient):
    """Asyncio client for the embedding and decoder services; see :class:`SamClient` (the same
    arguments, the same methods as coroutines, ``async with``)."""

    _open_channel = staticmethod(aio_channel)

    async def embed(self, image: ImageLike, *, timeout: float | None = None) -> EmbeddingRef:
        """Store the embedding of ``image``; see :meth:`SamClient.embed`."""
        return await self._run(_plan.embed(to_bytes(image), self._options(timeout)))

    async def embed_many(
        self, images: Iterable[ImageLike], *, timeout: float | None = None
    ) -> list[EmbeddingRef]:
        """Embed many images over one stream; raises on the first failed image."""
        return await self._run(_plan.embed_many(images, self._options(timeout)))

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
        return await self._run(
            _plan.segment_prompts(
                image,
                prompts,
                multimask_output=multimask_output,
                return_low_res_logits=return_low_res_logits,
                mask_encoding=mask_encoding,
                opts=self._options(timeout),
            )
        )

    async def segment_everything(
        self,
        image: ImageLike | EmbeddingRef,
        *,
        timeout: float | None = None,
        **params: Any,
    ) -> list[dict[str, Any]]:
        """Segment everything; see :meth:`SamClient.segment_everything`."""
        return await self._run(_plan.segment_everything(image, params, self._options(timeout)))

    def refine(
        self,
        image: ImageLike | EmbeddingRef,
        *,
        multimask_output: bool = False,
        mask_encoding: str = "bitmask",
        return_low_res_logits: bool = False,
        timeout: float | None = None,
    ) -> AsyncRefineSession:
        """An interactive refinement session; see :meth:`SamClient.refine` (``async with``)."""
        steps = self._refine_steps(
            image,
            multimask_output=multimask_output,
            mask_encoding=mask_encoding,
            return_low_res_logits=return_low_res_logits,
            timeout=timeout,
        )
        return AsyncRefineSession(steps, self._stubs[Service.DECODER].Refine, self._execute)

    async def get_embedding(
        self, image: ImageLike | EmbeddingRef, *, timeout: float | None = None
    ) -> EmbeddingTensors:
        """The stored embedding as arrays; see :meth:`SamClient.get_embedding`."""
        return await self._run(_plan.get_embedding(image, self._options(timeout)))

    async def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        """The embedding service's model; see :meth:`SamClient.model_info`."""
        return await self._run(_plan.model_info(self._options(timeout)))

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

    async def _run(self, plan: _plan.Plan[_plan.T]) -> _plan.T:
        return await _plan.run_async(plan, self._execute)

    async def _execute(self, call: Call) -> Any:
        method = getattr(self._stubs[call.service], call.method)
        if isinstance(call, Unary):
            return await method(call.request, timeout=call.timeout)
        responses = method(call.request, timeout=call.timeout)
        try:
            return [item async for response in responses for item in call.parse(response)]
        finally:
            responses.cancel()
