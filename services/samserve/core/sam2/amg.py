"""Segment everything for SAM 2 / 2.1 == ``SAM2AutomaticMaskGenerator.generate`` over stored
embeddings.

The generation is :class:`~samserve.core.amg.EverythingRun`'s (crops, batches, per-crop NMS,
cross-crop NMS, records): ``sam2.utils.amg`` is a copy of ``segment_anything.utils.amg``, so
the same helpers serve both. What differs is one batch, here as the official
``SAM2AutomaticMaskGenerator._process_batch``: SAM 2's prompt transform and decoder, its
``mask_threshold``, ``multimask_output`` and the optional one-step mask-to-mask refinement
(``use_m2m``). As for SAM 1, the predicted-IoU filter is applied before any upsampling (it
reads only the IoU), and upsampling happens a few masks at a time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from segment_anything.utils.amg import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    calculate_stability_score,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    uncrop_masks,
)
from torch import Tensor

from samserve.core import amg
from samserve.core.errors import InvalidInput
from samserve.core.fullres import Cancel
from samserve.core.prefix import ReadyEmbedding


@dataclasses.dataclass(frozen=True, slots=True)
class Sam2AmgParams(amg.AmgParams):
    """``SAM2AutomaticMaskGenerator``'s parameters, same names and defaults (SAM 2 keeps SAM 1's
    except ``pred_iou_thresh`` 0.8, and adds ``mask_threshold``, ``use_m2m`` and
    ``multimask_output``)."""

    pred_iou_thresh: float = 0.8
    mask_threshold: float = 0.0
    use_m2m: bool = False
    multimask_output: bool = True

    def validate(self) -> None:
        """:meth:`AmgParams.validate`, and SAM 2's own parameters.

        ``min_mask_region_area`` must be 0: SAM 2 applies it inside its predictor with its CUDA
        extension, which the CPU install (``SAM2_BUILD_CUDA=0``) lacks, so the official
        generator skips it there with a warning.
        """
        amg.AmgParams.validate(self)  # (slots dataclasses cannot use zero-argument super)
        if not math.isfinite(self.mask_threshold):
            raise InvalidInput("mask_threshold: must be finite")
        if self.min_mask_region_area != 0:
            raise InvalidInput(
                "min_mask_region_area: SAM 2 models support only 0 (the official generator "
                "needs sam2's CUDA extension for it)"
            )

    @classmethod
    def from_sam1(cls, params: amg.AmgParams) -> Sam2AmgParams:
        """The same values, SAM 2's defaults for SAM 2's own parameters."""
        return cls(**{f.name: getattr(params, f.name) for f in dataclasses.fields(amg.AmgParams)})


class Sam2EverythingRun(amg.EverythingRun):
    """``SAM2AutomaticMaskGenerator(model, **params).generate(image)`` given each crop's stored
    embedding, as jobs (see :class:`~samserve.core.amg.EverythingRun`).

    Args:
        model: the official ``SAM2Base``.
        sam2_transforms: the official ``SAM2Transforms`` (coordinate transform).
        dense_pe: the prompt encoder's dense positional encoding.
        params: validated parameters.
        original_size, crops, work_bytes: as for :class:`~samserve.core.amg.EverythingRun`.
        sam2_runtime: the folded decoder on ONNX Runtime (``Sam2OrtDecoder``), or None: torch.
    """

    def __init__(
        self,
        model: Any,
        sam2_transforms: Any,
        dense_pe: Tensor,
        params: Sam2AmgParams,
        original_size: tuple[int, int],
        crops: list[tuple[list[int], int, ReadyEmbedding]],
        work_bytes: int,
        sam2_runtime: Any = None,
    ) -> None:
        super().__init__(model, params, original_size, crops, work_bytes)
        self.sam2_runtime = sam2_runtime
        self.sam2_params = params
        self.transforms = sam2_transforms
        self.dense_pe = dense_pe

    def _decode_points(
        self,
        emb: ReadyEmbedding,
        in_points: Tensor,
        mask_input: Tensor | None,
        multimask_output: bool,
        cancel: Cancel,
    ) -> tuple[Tensor, Tensor]:
        """``predictor._predict(in_points[:, None], ones, mask_input, multimask_output)`` a few
        points at a time: unclamped (N, K, 256, 256) logits and (N, K) IoU."""
        from samserve.core.sam2.decoder import decode_sam2

        step = max(1, self.work_bytes // amg.DECODE_BYTES_PER_POINT)
        logits, ious = [], []
        for start in range(0, len(in_points), step):
            cancel.check()
            c = in_points[start : start + step]
            labels = torch.ones(c.shape[0], dtype=torch.int)
            m = None if mask_input is None else mask_input[start : start + step]
            low_res, iou = decode_sam2(
                self.sam, self.dense_pe, emb, (c[:, None, :], labels[:, None]), None, m,
                multimask_output, self.sam2_runtime,
            )  # fmt: skip
            logits.append(low_res)
            ious.append(iou)
        return torch.cat(logits), torch.cat(ious)

    def _process_batch(
        self, emb: ReadyEmbedding, points: np.ndarray, crop_box: list[int], cancel: Cancel
    ) -> MaskData:
        """The official ``SAM2AutomaticMaskGenerator._process_batch``, per mask where it works at
        full resolution."""
        from samserve.core.sam2.decoder import upscaled_sam2

        params = self.sam2_params
        orig_h, orig_w = self.original_size
        im_size = emb.original_size
        points_t = torch.as_tensor(points)
        in_points = self.transforms.transform_coords(points_t, normalize=True, orig_hw=im_size)
        low_res, iou_preds = self._decode_points(
            emb, in_points, None, params.multimask_output, cancel
        )
        k = low_res.shape[1]
        low_res = low_res.flatten(0, 1)
        iou_preds = iou_preds.flatten(0, 1)
        point_rows = points_t.repeat_interleave(k, dim=0)
        if params.use_m2m:
            # One step of refinement: each mask's clamped logits as the mask input of its point.
            in_points = self.transforms.transform_coords(
                point_rows, normalize=True, orig_hw=im_size
            )
            clamped = torch.clamp(low_res, -32.0, 32.0)
            refined, ious = [], []
            for cur_points, cur_masks in batch_iterator(
                params.points_per_batch, in_points, clamped
            ):
                lr, iou = self._decode_points(emb, cur_points, cur_masks[:, None], False, cancel)
                refined.append(lr)
                ious.append(iou)
            low_res = torch.cat(refined).squeeze(1)
            iou_preds = torch.cat(ious).squeeze(1)
        if params.pred_iou_thresh > 0.0:
            keep = iou_preds > params.pred_iou_thresh
            low_res, iou_preds, point_rows = low_res[keep], iou_preds[keep], point_rows[keep]
        out = MaskData(
            iou_preds=iou_preds[:0],
            points=point_rows[:0],
            stability_score=iou_preds[:0],
            boxes=torch.zeros((0, 4), dtype=torch.int64),
            rles=[],
        )
        for start, masks in upscaled_sam2(low_res, im_size, self.work_bytes, cancel):
            piece = MaskData(
                masks=masks,
                iou_preds=iou_preds[start : start + len(masks)],
                points=point_rows[start : start + len(masks)],
            )
            piece["stability_score"] = calculate_stability_score(
                piece["masks"], params.mask_threshold, params.stability_score_offset
            )
            if params.stability_score_thresh > 0.0:
                piece.filter(piece["stability_score"] >= params.stability_score_thresh)
            piece["masks"] = piece["masks"] > params.mask_threshold
            piece["boxes"] = batched_mask_to_box(piece["masks"])
            keep = ~is_box_near_crop_edge(piece["boxes"], crop_box, [0, 0, orig_w, orig_h])
            if not torch.all(keep):
                piece.filter(keep)
            piece["masks"] = uncrop_masks(piece["masks"], crop_box, orig_h, orig_w)
            piece["rles"] = amg._compact(mask_to_rle_pytorch(piece["masks"]))
            del piece["masks"]
            out.cat(piece)
        return out
