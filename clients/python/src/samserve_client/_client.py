"""SamClient: the synchronous SDK (thin I/O over _convert)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import grpc
import numpy.typing as npt

from samserve_client import _convert
from samserve_client._channel import DEFAULT_TIMEOUT, sync_channel
from samserve_client._image import ImageLike, encode, to_bytes
from samserve_client._refine import SESSION_TIMEOUT, RefineSession
from samserve_client.errors import NotFoundError, from_rpc_error
from samserve_client.pb import decoder_pb2, decoder_pb2_grpc, embedding_pb2, embedding_pb2_grpc
from samserve_client.types import EmbeddingRef, Prompt, SegmentResult


class SamClient:
    """Synchronous client for the embedding and decoder services.

    Args:
        embedding_address: ``host:port`` (or ``dns:///name:port``) of the embedding service.
        decoder_address: ``host:port`` of the decoder service.
        model: model variant to ask for; empty means each server's own model.
        timeout: default deadline of every call, in seconds.
    """

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
        self._embedding_channel = sync_channel(embedding_address)
        self._decoder_channel = sync_channel(decoder_address)
        self._embedding = embedding_pb2_grpc.EmbeddingServiceStub(self._embedding_channel)
        self._decoder = decoder_pb2_grpc.DecoderServiceStub(self._decoder_channel)

    def embed(self, image: ImageLike, *, timeout: float | None = None) -> EmbeddingRef:
        """Store the embedding of ``image`` (a no-op when it is already stored).

        Args:
            image: a path, encoded bytes, a PIL image or an (H, W, 3) uint8 RGB array.
            timeout: deadline in seconds (default: the client's).

        Returns:
            The stored embedding's reference; ``cached`` says whether the encoder ran.
        """
        return self._embed_bytes(to_bytes(image), timeout)

    def embed_many(
        self, images: Iterable[ImageLike], *, timeout: float | None = None
    ) -> list[EmbeddingRef]:
        """Embed many images over one stream; raises on the first failed image."""
        requests = (
            embedding_pb2.EmbedStreamRequest(
                request=_convert.embed_request(to_bytes(i), self.model)
            )
            for i in images
        )
        refs = []
        try:
            for item in self._embedding.EmbedStream(requests, timeout=timeout or self.timeout):
                refs.append(_convert.stream_item(item))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return refs

    def segment(
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
        """Segment with one prompt, as ``SamPredictor.predict`` does.

        Args:
            image: the image (uploaded only when its embedding is not stored) or an
                :class:`EmbeddingRef`.
            points: (N, 2) (x, y) pixel coordinates in the original image.
            labels: (N,) 1 = foreground, 0 = background (default: all 1).
            box: (4,) XYXY pixel box.
            mask_input: (1, 256, 256) logits from a previous result's ``low_res_logits[i]``.
            multimask_output: three masks (True) or one (False).
            return_low_res_logits: also fetch the (K, 256, 256) logits.
            mask_encoding: ``"bitmask"``, ``"coco_rle"`` or ``"polygon"`` (lossy at the pixel
                boundary) on the wire; all decode to arrays.
            timeout: deadline in seconds per call.

        Returns:
            Masks bool (K, H, W), scores float32 (K,), low_res_logits float32 (K, 256, 256).
        """
        prompt = _convert.single_prompt(points, labels, box, mask_input)
        return self.segment_prompts(
            image,
            [prompt],
            multimask_output=multimask_output,
            return_low_res_logits=return_low_res_logits,
            mask_encoding=mask_encoding,
            timeout=timeout,
        )[0]

    def segment_prompts(
        self,
        image: ImageLike | EmbeddingRef,
        prompts: Sequence[Prompt],
        *,
        multimask_output: bool = True,
        return_low_res_logits: bool = True,
        mask_encoding: str = "bitmask",
        timeout: float | None = None,
    ) -> list[SegmentResult]:
        """Segment with several prompts in one call; one result per prompt, in order."""
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
            return self._segment(request, timeout)
        except NotFoundError:
            if data is None:
                raise
        # Hash-first flow: the decoder did not have it, so upload once and ask again.
        self._embed_bytes(data, timeout)
        return self._segment(request, timeout)

    def segment_everything(
        self,
        image: ImageLike | EmbeddingRef,
        *,
        timeout: float | None = None,
        **params: Any,
    ) -> list[dict[str, Any]]:
        """Segment everything, as ``SamAutomaticMaskGenerator(model, **params).generate(image)``.

        Args:
            image: the image (uploaded only when an embedding it needs is not stored) or an
                :class:`EmbeddingRef` (then crop embeddings must already be stored).
            timeout: deadline in seconds per call.
            **params: ``SamAutomaticMaskGenerator``'s keyword parameters, same names and
                defaults (points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88,
                stability_score_thresh=0.95, stability_score_offset=1.0, box_nms_thresh=0.7,
                crop_n_layers=0, crop_nms_thresh=0.7, crop_overlap_ratio=512/1500,
                crop_n_points_downscale_factor=1, min_mask_region_area=0,
                output_mode="binary_mask" or "coco_rle").

        Returns:
            What ``generate()`` returns: dicts with ``segmentation`` (bool (H, W), or a COCO RLE
            dict ``{"size": [H, W], "counts": str}``), ``area``, ``bbox`` (XYWH),
            ``predicted_iou``, ``point_coords`` ([[x, y]]), ``stability_score``, ``crop_box``
            (XYWH).
        """
        data, key = (None, image.image_id) if isinstance(image, EmbeddingRef) else encode(image)
        request = _convert.segment_everything_request(key, self.model, params)
        try:
            return self._everything(request, timeout)
        except NotFoundError:
            if data is None:
                raise
        # Hash-first: upload once (with the crops this call needs), then ask again.
        if int(request.crop_n_layers) > 0:
            self._embed_crops(data, params, timeout)
        else:
            self._embed_bytes(data, timeout)
        return self._everything(request, timeout)

    def refine(
        self,
        image: ImageLike | EmbeddingRef,
        *,
        multimask_output: bool = False,
        mask_encoding: str = "bitmask",
        return_low_res_logits: bool = False,
        timeout: float = SESSION_TIMEOUT,
    ) -> RefineSession:
        """An interactive refinement session on ``image`` (one Refine stream).

        Each ``session.click(x, y, label)`` or ``session.box(xyxy)`` returns the refined
        :class:`SegmentResult`, predicted with every click so far and the previous best
        low-resolution logits as ``mask_input`` (the official demo's chained
        ``SamPredictor.predict`` calls). The image is uploaded only if the first step finds no
        stored embedding. ``timeout`` bounds the whole session. Use it as a context manager.
        """
        data, key = (None, image.image_id) if isinstance(image, EmbeddingRef) else encode(image)
        upload = None if data is None else functools.partial(self._embed_bytes, data, None)
        return RefineSession(
            self._decoder,
            key,
            upload,
            timeout,
            model=self.model,
            multimask_output=multimask_output,
            mask_encoding=mask_encoding,
            return_low_res_logits=return_low_res_logits,
        )

    def model_info(self, *, timeout: float | None = None) -> embedding_pb2.GetModelInfoResponse:
        """The embedding service's model: variant, model_id, weights checksum and source."""
        try:
            info: embedding_pb2.GetModelInfoResponse = self._embedding.GetModelInfo(
                embedding_pb2.GetModelInfoRequest(), timeout=timeout or self.timeout
            )
            return info
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def close(self) -> None:
        """Close both channels."""
        self._embedding_channel.close()
        self._decoder_channel.close()

    def __enter__(self) -> SamClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _embed_bytes(self, data: bytes, timeout: float | None) -> EmbeddingRef:
        try:
            resp = self._embedding.Embed(
                _convert.embed_request(data, self.model), timeout=timeout or self.timeout
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return _convert.embedding_ref(resp)

    def _segment(
        self, request: decoder_pb2.SegmentRequest, timeout: float | None
    ) -> list[SegmentResult]:
        try:
            resp = self._decoder.Segment(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return _convert.segment_results(resp)

    def _everything(
        self, request: decoder_pb2.SegmentEverythingRequest, timeout: float | None
    ) -> list[dict[str, Any]]:
        try:
            stream = self._decoder.SegmentEverything(request, timeout=timeout or self.timeout)
            return _convert.everything_records(stream)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def _embed_crops(self, data: bytes, params: dict[str, Any], timeout: float | None) -> None:
        try:
            self._embedding.EmbedCrops(
                _convert.embed_crops_request(data, self.model, params),
                timeout=timeout or self.timeout,
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
