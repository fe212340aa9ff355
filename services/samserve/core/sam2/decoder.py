"""The decoder for SAM 2 / 2.1 image models: ``SAM2ImagePredictor.predict`` semantics over
stored embeddings (the image embedding and both high-resolution maps).

For one prompt this runs what ``SAM2ImagePredictor._prep_prompts`` and ``_predict`` run: the
official ``SAM2Transforms`` coordinate transform (normalised by the original size, then scaled
to 1024), a box as two points labelled 2 and 3 placed before the clicks, the official
``sam_prompt_encoder`` and ``sam_mask_decoder`` (high-resolution features included), bilinear
upsampling to the original size and the returned low-resolution logits clamped to [-32, 32].
Prompts without a mask input take SAM 1's treatment: the per-image prefix and folded attention
(SAM 2's decoder transformer has the same shape; the upscaling adds the high-resolution maps in
the folded pixel order), on ONNX Runtime by default (``--decoder-runtime``); results equal the
official module's up to float32 rounding (``tests/unit/test_decoder_runtime.py``).
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

from samserve.core import amg, folded
from samserve.core.decoder import DEFAULT_WORK_BYTES, Decoder, Prediction, PromptSpec
from samserve.core.decoder_runtime import (
    PREFIX_INPUTS,
    OrtGraph,
    PrefixDecode,
    PrefixGraph,
    export_onnx,
    exported,
    prefix_feeds,
    resolve_runtime,
)
from samserve.core.fullres import Cancel, masks_per_piece
from samserve.core.prefix import ImagePrefix, ReadyEmbedding, prefix_of, transform
from samserve.core.sam2.amg import Sam2AmgParams, Sam2EverythingRun
from samserve.core.sam2.encoder import transforms
from samserve.core.store import Embedding

#: ``SAM2ImagePredictor``'s default ``mask_threshold``.
MASK_THRESHOLD = 0.0


def prepare_sam2(model: Any, dense_pe: Tensor, emb: Embedding) -> ReadyEmbedding:
    """Float32 tensors of a stored SAM 2 entry, with the decoder's per-image prefix and the
    high-resolution maps in the folded upscaling's order."""
    features = torch.from_numpy(emb.features.astype(np.float32))[None]
    high_res = tuple(torch.from_numpy(t.astype(np.float32))[None] for t in emb.high_res_features)
    with torch.inference_mode():
        prefix = prefix_of(
            model.sam_mask_decoder.transformer,
            model.sam_prompt_encoder.no_mask_embed.weight,
            features,
            dense_pe,
        )
        pixels = folded.high_res_pixels(*high_res) if len(high_res) == 2 else ()
    # The maps are kept once, in the folded order (an LRU entry is ~26 MiB, not ~38);
    # the official path (a mask input) puts them back (:func:`high_res_features`).
    return ReadyEmbedding(
        features=features,
        prefix=prefix,
        original_size=emb.original_size,
        input_size=emb.input_size,
        high_res_features=() if pixels else high_res,
        high_res_pixels=pixels,
    )


def high_res_features(loaded: ReadyEmbedding) -> list[Tensor]:
    """The high-resolution maps in the official layout, (1, C2, 4h, 4w) and (1, C1, 2h, 2w)."""
    if loaded.high_res_features or not loaded.high_res_pixels:
        return list(loaded.high_res_features)
    size = (int(loaded.features.shape[-2]), int(loaded.features.shape[-1]))
    p0, p1 = loaded.high_res_pixels
    return list(folded.high_res_maps(p0, p1, size))


def foldable_sam2(model: Any, tokens: int) -> bool:
    """Whether the folded decoder pays for a prompt of ``tokens`` sparse embeddings."""
    dec = model.sam_mask_decoder
    output_tokens = dec.num_mask_tokens + 1 + int(dec.pred_obj_scores)
    attn = dec.transformer.layers[0].cross_attn_image_to_token
    return dec.use_high_res_features and folded.foldable(attn, output_tokens + tokens)


def decode_sam2_folded(
    model: Any,
    prefix: ImagePrefix,
    high_res_pixels: tuple[Tensor, ...],
    sparse: Tensor,
) -> tuple[Tensor, Tensor]:
    """SAM 2's ``MaskDecoder.predict_masks`` for prompts without a mask input, over the image
    of ``prefix``, folded (``core/folded.py``): all four masks' (B, 4, 256, 256) logits and
    (B, 4) predicted IoU. :func:`select_masks` then picks what ``forward`` returns."""
    dec = model.sam_mask_decoder
    b = sparse.shape[0]
    weights = [dec.iou_token.weight, dec.mask_tokens.weight]
    if dec.pred_obj_scores:
        weights.insert(0, dec.obj_score_token.weight)
    s = int(dec.pred_obj_scores)
    tokens = torch.cat([torch.cat(weights, dim=0).unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    hs, keys = transform(dec.transformer, prefix, tokens, True)
    mask_tokens_out = hs[:, s + 1 : s + 1 + dec.num_mask_tokens, :]
    hyper = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
        dim=1,
    )
    pixels = (high_res_pixels[0], high_res_pixels[1])
    masks = folded.upscaling_of(dec.output_upscaling).masks(keys, prefix.size, hyper, pixels)
    iou: Tensor = dec.iou_prediction_head(hs[:, s, :])
    return masks, iou


def select_masks(
    model: Any, masks: Tensor, iou: Tensor, multimask_output: bool
) -> tuple[Tensor, Tensor]:
    """What SAM 2's ``MaskDecoder.forward`` returns from all four masks: the three multimask
    outputs, or one (SAM 2.1: the best of them when the single-mask output is unstable)."""
    dec = model.sam_mask_decoder
    if multimask_output:
        return masks[:, 1:], iou[:, 1:]
    if dec.dynamic_multimask_via_stability and not dec.training:
        chosen: tuple[Tensor, Tensor] = dec._dynamic_multimask_via_stability(masks, iou)
        return chosen
    return masks[:, 0:1], iou[:, 0:1]


class Sam2OrtDecoder:
    """:func:`decode_sam2_folded` on ONNX Runtime (``--decoder-runtime``).

    Exported once per model with the per-image prefix and the high-resolution maps as inputs;
    prompts and prompt tokens are dynamic.
    """

    def __init__(self, model: Any, model_id: str, dense_pe: Tensor) -> None:
        self.model = model
        c = int(dense_pe.shape[1])
        h, w = (int(x) for x in dense_pe.shape[-2:])
        with torch.inference_mode():
            example = prepare_sam2(
                model,
                dense_pe,
                Embedding(
                    np.zeros((c, h, w), np.float32), (4 * h, 4 * w), (16 * h, 16 * w),
                    (np.zeros((c // 8, 4 * h, 4 * w), np.float32),
                     np.zeros((c // 4, 2 * h, 2 * w), np.float32)),
                ),
            )  # fmt: skip
        self.size = (h, w)
        self.graph = OrtGraph(
            exported(f"{model_id}:sam2-folded", functools.partial(self._export, example))
        )

    def _export(self, example: ReadyEmbedding) -> bytes:
        assert example.prefix is not None
        p = example.prefix
        sparse = torch.zeros(2, 2, p.keys.shape[-1])  # neither dynamic axis traced as 1

        def folded_decode(prefix: ImagePrefix, sparse: Tensor, s0: Tensor, s1: Tensor) -> Any:
            return decode_sam2_folded(self.model, prefix, (s0, s1), sparse)

        return export_onnx(
            PrefixGraph(self.model.sam_mask_decoder, folded_decode, p.size),
            (sparse, p.keys, p.key_pe, p.t2i_k, p.t2i_v, p.i2t_q, *example.high_res_pixels),
            [*PREFIX_INPUTS, "s0", "s1"],
            ["masks", "iou"],
            {"sparse": {0: "prompts", 1: "tokens"}},
        )

    def __call__(
        self, prefix: ImagePrefix, high_res_pixels: tuple[Tensor, ...], sparse: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:func:`decode_sam2_folded`, on ONNX Runtime."""
        if prefix.size != self.size:
            return decode_sam2_folded(self.model, prefix, high_res_pixels, sparse)
        feeds = prefix_feeds(prefix, sparse)
        feeds["s0"], feeds["s1"] = high_res_pixels[0].numpy(), high_res_pixels[1].numpy()
        masks, iou = self.graph.run(feeds)
        return torch.from_numpy(masks), torch.from_numpy(iou)


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
    (B, 4) in the same frame. Prompts without a mask input run the folded decoder over the
    per-image prefix (on ``runtime``, ONNX Runtime, when given); others the official one.
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
    if (
        mask_input is None
        and loaded.prefix is not None
        and loaded.high_res_pixels
        and foldable_sam2(model, sparse.shape[1])
    ):
        run = runtime or functools.partial(decode_sam2_folded, model)
        masks, iou = run(loaded.prefix, loaded.high_res_pixels, sparse)
        return select_masks(model, masks, iou, multimask_output)
    low_res, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=loaded.features,
        image_pe=dense_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
        repeat_image=batched_mode,
        high_res_features=high_res_features(loaded),
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
        return prepare_sam2(self.sam, self._dense_pe, emb)

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
            self.work_bytes, self._sam2_runtime,
        )  # fmt: skip
