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

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from samserve.core import amg
from samserve.core.decoder import DEFAULT_WORK_BYTES, Decoder, Prediction, PromptSpec
from samserve.core.decoder_runtime import PrefixDecode
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


def decode_sam2(
    model: Any,
    dense_pe: Tensor,
    loaded: ReadyEmbedding,
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
    mask_input: Tensor | None,
    multimask_output: bool,
) -> tuple[Tensor, Tensor]:
    """``SAM2ImagePredictor._predict`` up to the mask decoder: (B, K, 256, 256) unclamped
    low-resolution logits and (B, K) predicted IoU.

    ``points`` are (B, N, 2) coordinates already in the 1024 frame with (B, N) labels; ``boxes``
    (B, 4) in the same frame.
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
) -> Prediction:
    """``SAM2ImagePredictor.predict`` for one prompt over a loaded SAM 2 embedding."""
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
            model, dense_pe, loaded, points, boxes, masks_in, multimask_output
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
        # SAM 2's decoder runs as the official one (no prefix, no export): torch whatever asked.
        def unused(prefix: ImagePrefix, sparse: Tensor, multimask_output: bool) -> Any:
            raise AssertionError("a SAM 2 decoder has no prefix decoder")

        return unused

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
