"""SamClient: the synchronous SDK, a blocking shell that runs the plans of :mod:`_plan`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import numpy.typing as npt

from samserve_client import _convert, _plan
from samserve_client._base import BaseClient
from samserve_client._channel import sync_channel
from samserve_client._embedding import EmbeddingTensors
from samserve_client._image import ImageLike, to_bytes
from samserve_client._plan import Call, Service, Unary
from samserve_client._refine import RefineSession
from samserve_client.types import EmbeddingRef, ModelInfo, Prompt, SegmentResult


class SamClient(BaseClient):
    """Synchronous client for the embedding and decoder services; a context manager.

    Args:
        embedding_address: gRPC target of the embedding service: ``host:port``, or several
            replicas (``dns:///name:port``, ``ipv4:a:p,b:p``) balanced round-robin.
        decoder_address: gRPC target of the decoder service.
        tls_ca: CA certificate (path or PEM bytes) the servers' certificates must chain to;
            giving it means TLS.
        tls_cert: client certificate (path or PEM bytes) for mutual TLS, with ``tls_key``.
        tls_key: the client certificate's private key (path or PEM bytes).
        token: sent on every call as ``authorization: Bearer <token>``; refused over plaintext
            unless the address is loopback.
        model: model variant to ask for; empty means each server's own model.
        timeout: default deadline of every call in seconds; None means 60 s.

    Every method's ``timeout`` is that call's deadline in seconds: None takes the client's,
    0 expires at once.

    Raises:
        ValueError: one of tls_cert/tls_key without the other, a token that would travel in
            plaintext, or a negative timeout.
        OSError: a TLS file that cannot be read.
    """

    _open_channel = staticmethod(sync_channel)

    def embed(self, image: ImageLike, *, timeout: float | None = None) -> EmbeddingRef:
        """Store the embedding of ``image`` (a no-op when it is already stored).

        Args:
            image: a path, encoded bytes, a PIL image or an (H, W, 3) uint8 RGB array.
            timeout: deadline in seconds.

        Returns:
            The stored embedding's reference; ``cached`` says whether the encoder ran.
        """
        return self._run(_plan.embed(to_bytes(image), self._options(timeout)))

    def embed_many(
        self, images: Iterable[ImageLike], *, timeout: float | None = None
    ) -> list[EmbeddingRef]:
        """Embed many images over one stream; raises on the first failed image."""
        return self._run(_plan.embed_many(images, self._options(timeout)))

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
        return self._run(
            _plan.segment_prompts(
                image,
                prompts,
                multimask_output=multimask_output,
                return_low_res_logits=return_low_res_logits,
                mask_encoding=mask_encoding,
                opts=self._options(timeout),
            )
        )

    def segment_everything(
        self,
        image: ImageLike | EmbeddingRef,
        *,
        timeout: float | None = None,
        **params: Any,
    ) -> list[dict[str, Any]]:
        """Segment everything, as the official automatic mask generator's ``generate()``.

        Args:
            image: the image (uploaded only when an embedding it needs is not stored) or an
                :class:`EmbeddingRef` (then crop embeddings must already be stored).
            timeout: deadline in seconds per call.
            **params: the generator's keyword parameters, same names
                (``SamAutomaticMaskGenerator``'s, or ``SAM2AutomaticMaskGenerator``'s for a
                SAM 2 model), e.g. ``points_per_side``, ``pred_iou_thresh``, ``crop_n_layers``,
                ``output_mode`` (``"binary_mask"`` or ``"coco_rle"``). Only what you pass is
                sent; the server applies the official defaults for the rest.

        Returns:
            What ``generate()`` returns: dicts with ``segmentation`` (bool (H, W), or a COCO RLE
            dict ``{"size": [H, W], "counts": str}``), ``area``, ``bbox`` (XYWH),
            ``predicted_iou``, ``point_coords`` ([[x, y]]), ``stability_score``, ``crop_box``
            (XYWH).

        Raises:
            InvalidArgumentError: an unknown parameter (before anything is sent), or a value
                the server refuses.
        """
        return self._run(_plan.segment_everything(image, params, self._options(timeout)))

    def refine(
        self,
        image: ImageLike | EmbeddingRef,
        *,
        multimask_output: bool = False,
        mask_encoding: str = "bitmask",
        return_low_res_logits: bool = False,
        timeout: float | None = None,
    ) -> RefineSession:
        """An interactive refinement session on ``image`` (one Refine stream).

        Each ``session.click(x, y, label)`` or ``session.box(xyxy)`` returns the refined
        :class:`SegmentResult`, predicted with every click so far and the previous best
        low-resolution logits as ``mask_input`` (the official demo's chained
        ``SamPredictor.predict`` calls). The image is uploaded only if a step finds no stored
        embedding. A stream that ends (a server's connection age, a restart) is resumed
        transparently. ``timeout`` bounds the whole session (None: 10 minutes). Use it as a
        context manager.
        """
        steps = self._refine_steps(
            image,
            multimask_output=multimask_output,
            mask_encoding=mask_encoding,
            return_low_res_logits=return_low_res_logits,
            timeout=timeout,
        )
        return RefineSession(steps, self._stubs[Service.DECODER].Refine, self._execute)

    def get_embedding(
        self, image: ImageLike | EmbeddingRef, *, timeout: float | None = None
    ) -> EmbeddingTensors:
        """The stored embedding of ``image`` as numpy arrays, for clients that decode
        themselves (e.g. with ``samserve_client.onnx.OnnxDecoder``).

        Args:
            image: the image (uploaded and embedded only when it is not stored) or an
                :class:`EmbeddingRef`.
            timeout: deadline in seconds per call.

        Returns:
            The (1, 256, 64, 64) embedding as stored (float16 or float32), SAM 2.1's
            high-resolution maps (empty for SAM 1), the model id and the image sizes.
        """
        return self._run(_plan.get_embedding(image, self._options(timeout)))

    def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        """The embedding service's model: variant, model_id, weights checksum, source, family."""
        return self._run(_plan.model_info(self._options(timeout)))

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

    def _run(self, plan: _plan.Plan[_plan.T]) -> _plan.T:
        return _plan.run_sync(plan, self._execute)

    def _execute(self, call: Call) -> Any:
        method = getattr(self._stubs[call.service], call.method)
        if isinstance(call, Unary):
            return method(call.request, timeout=call.timeout)
        responses = method(call.request, timeout=call.timeout)
        try:
            return [item for response in responses for item in call.parse(response)]
        finally:
            responses.cancel()  # a parse that raised ends the call; a finished call ignores it
