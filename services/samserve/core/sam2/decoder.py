"""The decoder for SAM 2 / 2.1 image models: ``SAM2ImagePredictor.predict`` semantics over
stored embeddings (the image embedding and both high-resolution maps).

For one prompt this runs what ``SAM2ImagePredictor._prep_prompts`` and ``_predict`` run: the
official ``SAM2Transforms`` coordinate transform (normalised by the original size, then scaled
to 1024), a box as two points labelled 2 and 3 placed before the clicks, the official
``sam_prompt_encoder`` and ``sam_mask_decoder`` (high-resolution features included), bilinear
upsampling to the original size and the returned low-resolution logits clamped to [-32, 32].
Everything else (the LRU, admission, refinement sessions, the segment-everything job runner)
is :class:`~samserve.core.decoder.Decoder`'s.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from samserve.core import amg
from samserve.core.decoder import DEFAULT_WORK_BYTES, Decoder, Prediction, PromptSpec
from samserve.core.decoder_runtime import (
    OrtGraph,
    PrefixDecode,
    export_onnx,
    exported,
    resolve_runtime,
)
from samserve.core.fullres import Cancel, masks_per_piece
from samserve.core.prefix import ImagePrefix, ReadyEmbedding
from samserve.core.sam2.amg import Sam2AmgParams, Sam2EverythingRun
from samserve.core.sam2.encoder import transforms
from samserve.core.store import Embedding

#: ``SAM2ImagePredictor``'s default ``mask_threshold``.
MASK_THRESHOLD = 0.0


def prepare_sam2(emb: Embedding) -> ReadyEmbedding:
    """Float32 tensors of a stored SAM 2 entry (no prefix: SAM 2's decoder runs as is)."""
    return ReadyEmbedding(
        features=torch.from_numpy(emb.features.astype(np.float32))[None],
        prefix=None,
        original_size=emb.original_size,
        input_size=emb.input_size,
        high_res_features=tuple(
            torch.from_numpy(t.astype(np.float32))[None] for t in emb.high_res_features
        ),
    )


class Sam2OrtDecoder:
    """SAM 2's ``sam_mask_decoder`` for one prompt on ONNX Runtime (``--decoder-runtime``).

    The official module is exported once per model and output choice (one mask or three: the
    single-mask graph keeps SAM 2.1's choice by stability), with the image embedding, both
    high-resolution maps and the prompt embeddings as inputs; prompt tokens are dynamic. A
    batch of prompts (segment everything) runs the official module in torch.
    """

    def __init__(self, model: Any, model_id: str, dense_pe: Tensor) -> None:
        self.dense_pe = dense_pe.numpy()
        c = int(dense_pe.shape[1])
        h, w = (int(x) for x in dense_pe.shape[-2:])
        example = (
            torch.zeros(1, c, h, w),
            dense_pe,
            torch.zeros(1, 2, c),
            torch.zeros(1, c, h, w),
            torch.zeros(1, c // 8, 4 * h, 4 * w),
            torch.zeros(1, c // 4, 2 * h, 2 * w),
        )
        self.graphs = {
            multimask: OrtGraph(
                exported(
                    f"{model_id}:sam2-decoder-{'multi' if multimask else 'single'}",
                    functools.partial(self._export, model, example, multimask),
                )
            )
            for multimask in (True, False)
        }

    @staticmethod
    def _export(model: Any, example: tuple[Tensor, ...], multimask: bool) -> bytes:
        return export_onnx(
            _Sam2MaskDecoder(model, multimask),
            example,
            ["features", "image_pe", "sparse", "dense", "high_res_0", "high_res_1"],
            ["masks", "iou"],
            {"sparse": {1: "tokens"}},
        )

    def __call__(
        self, features: Tensor, sparse: Tensor, dense: Tensor, high_res: tuple[Tensor, ...],
        multimask_output: bool,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        feeds = {
            "features": features.numpy(),
            "image_pe": self.dense_pe,
            "sparse": sparse.detach().numpy(),
            "dense": dense.detach().numpy(),
            "high_res_0": high_res[0].numpy(),
            "high_res_1": high_res[1].numpy(),
        }
        masks, iou = self.graphs[multimask_output].run(feeds)
        return torch.from_numpy(masks), torch.from_numpy(iou)


class _Sam2MaskDecoder(torch.nn.Module):
    """``sam_mask_decoder`` for one prompt, as ``SAM2ImagePredictor._predict`` calls it."""

    def __init__(self, model: Any, multimask_output: bool) -> None:
        super().__init__()
        self.decoder = model.sam_mask_decoder
        self.multimask_output = multimask_output

    def forward(
        self, features: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
        high_res_0: Tensor, high_res_1: Tensor,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        low_res, iou, _, _ = self.decoder(
            image_embeddings=features,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask_output,
            repeat_image=False,
            high_res_features=[high_res_0, high_res_1],
        )
        return low_res, iou


def decode_sam2(
    model: Any,
    dense_pe: Tensor,
    loaded: ReadyEmbedding,
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
    mask_input: Tensor | None,
    multimask_output: bool,
    runtime: Sam2OrtDecoder | None = None,
) -> tuple[Tensor, Tensor]:
    """``SAM2ImagePredictor._predict`` up to the mask decoder: (B, K, 256, 256) unclamped
    low-resolution logits and (B, K) predicted IoU.

    ``points`` are (B, N, 2) coordinates already in the 1024 frame with (B, N) labels; ``boxes``
    (B, 4) in the same frame. ``runtime``: run one prompt's decoder on ONNX Runtime.
    """
    concat_points = points
    if boxes is not None:
        box_coords = boxes.reshape(-1, 2, 2)
        box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device)
        box_labels = box_labels.repeat(boxes.size(0), 1)
        if concat_points is not None:
            concat_coords = torch.cat([box_coords, concat_points[0]], dim=1)
            concat_labels = torch.cat([box_labels, concat_points[1]], dim=1)
            concat_points = (concat_coords, concat_labels)
        else:
            concat_points = (box_coords, box_labels)
    sparse, dense = model.sam_prompt_encoder(points=concat_points, boxes=None, masks=mask_input)
    batched_mode = concat_points is not None and concat_points[0].shape[0] > 1
    if runtime is not None and not batched_mode and sparse.shape[1] > 0:
        return runtime(loaded.features, sparse, dense, loaded.high_res_features, multimask_output)
    low_res, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=loaded.features,
        image_pe=dense_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
        repeat_image=batched_mode,
        high_res_features=list(loaded.high_res_features),
    )
    return low_res, iou


def upscaled_sam2(
    low_res: Tensor,
    original_size: tuple[int, int],
    budget_bytes: int,
    cancel: Cancel | None = None,
) -> Any:
    """``SAM2Transforms.postprocess_masks`` (no hole filling) of (N, 256, 256) logits, a few
    masks at a time: yields (index of the piece's first mask, (k, H, W) float32 logits)."""
    k = masks_per_piece(*original_size, budget_bytes)
    for start in range(0, low_res.shape[0], k):
        if cancel is not None:
            cancel.check()
        piece = low_res[start : start + k, None].float()
        up = F.interpolate(piece, original_size, mode="bilinear", align_corners=False)
        yield start, up[:, 0]


def predict_sam2(
    model: Any,
    sam2_transforms: Any,
    dense_pe: Tensor,
    loaded: ReadyEmbedding,
    prompt: PromptSpec,
    multimask_output: bool,
    work_bytes: int = DEFAULT_WORK_BYTES,
    mask_threshold: float = MASK_THRESHOLD,
    runtime: Sam2OrtDecoder | None = None,
) -> Prediction:
    """``SAM2ImagePredictor.predict`` for one prompt over a loaded SAM 2 embedding (its mask
    decoder on ONNX Runtime when ``runtime`` is given)."""
    orig_hw = loaded.original_size
    points = None
    if prompt.points is not None and prompt.labels is not None:
        coords = torch.as_tensor(prompt.points, dtype=torch.float)
        coords = sam2_transforms.transform_coords(coords, normalize=True, orig_hw=orig_hw)
        labels = torch.as_tensor(prompt.labels, dtype=torch.int)
        points = (coords[None, ...], labels[None, ...])
    boxes = None
    if prompt.box is not None:
        box = torch.as_tensor(prompt.box, dtype=torch.float)
        boxes = sam2_transforms.transform_boxes(box, normalize=True, orig_hw=orig_hw)
    masks_in = None
    if prompt.mask_input is not None:
        masks_in = torch.as_tensor(prompt.mask_input, dtype=torch.float)[None, :, :, :]
    with torch.inference_mode():
        low_res, iou = decode_sam2(
            model, dense_pe, loaded, points, boxes, masks_in, multimask_output, runtime
        )
        h, w = orig_hw
        masks = np.empty((low_res.shape[1], h, w), dtype=bool)
        for start, logits in upscaled_sam2(low_res[0], orig_hw, work_bytes):
            masks[start : start + len(logits)] = (logits > mask_threshold).numpy()
        clamped = torch.clamp(low_res[0], -32.0, 32.0)
    return Prediction(
        masks=masks, scores=iou[0].float().numpy(), low_res_logits=clamped.float().numpy()
    )


class Sam2Decoder(Decoder):
    """:class:`Decoder` for a SAM 2 / 2.1 model (``sam`` is the official ``SAM2Base``)."""

    amg_params_type = Sam2AmgParams

    def _make_dense_pe(self) -> Tensor:
        self._transforms = transforms(self.sam)
        dense_pe: Tensor = self.sam.sam_prompt_encoder.get_dense_pe()
        return dense_pe

    def _make_runtime(self, runtime: str) -> PrefixDecode:
        # One prompt's mask decoder may run on ONNX Runtime; SAM 2 has no prefix decoder.
        self._sam2_runtime = (
            Sam2OrtDecoder(self.sam, self.model_id, self._dense_pe)
            if resolve_runtime(runtime) == "onnxruntime"
            else None
        )

        def unused(prefix: ImagePrefix, sparse: Tensor, multimask_output: bool) -> Any:
            raise AssertionError("a SAM 2 decoder has no prefix decoder")

        return unused

    @property
    def runtime_label(self) -> str:
        return "torch" if self._sam2_runtime is None else "onnxruntime"

    def _prepare(self, emb: Embedding) -> ReadyEmbedding:
        return prepare_sam2(emb)

    def _predict(
        self, loaded: ReadyEmbedding, prompt: PromptSpec, multimask_output: bool
    ) -> Prediction:
        return predict_sam2(
            self.sam,
            self._transforms,
            self._dense_pe,
            loaded,
            prompt,
            multimask_output,
            self.work_bytes,
            runtime=self._sam2_runtime,
        )

    def _everything_run(
        self,
        params: amg.AmgParams,
        original_size: tuple[int, int],
        crops: list[tuple[list[int], int, ReadyEmbedding]],
    ) -> amg.EverythingRun:
        if not isinstance(params, Sam2AmgParams):
            params = Sam2AmgParams.from_sam1(params)
        return Sam2EverythingRun(
            self.sam, self._transforms, self._dense_pe, params, original_size, crops,
            self.work_bytes,
        )  # fmt: skip
