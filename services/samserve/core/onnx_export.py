"""The official ONNX decoder (``SamOnnxModel``), exported so it is right for every image size.

``segment_anything.utils.onnx.SamOnnxModel.mask_postprocessing`` crops the upsampled masks with
``int(prepadded_size[0])``. The legacy (TorchScript) exporter turns that ``int()`` into a
constant taken from the example ``orig_im_size``, while the final resize stays dynamic: a decoder
exported with a 2:3 example answers a square image with a wrong crop and no error (IoU 0.60,
docs/onnx.md). :class:`SizeGeneralSamOnnxModel` keeps every other line of the official model and
slices with the 0-d tensors themselves, which the tracer records as graph values, so the crop
follows the ``orig_im_size`` input. tests/parity/test_onnx_parity.py runs one exported file on
square, landscape and portrait images.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F  # noqa: N812

from samserve.core.models import LoadedModel

#: File names inside an export directory (the SDK's OnnxDecoder reads the same).
DECODER_FILE = "decoder.onnx"
QUANT_FILE = "decoder.quant.onnx"
META_FILE = "model.json"
#: The official export script's names, in its order.
INPUT_NAMES = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
OUTPUT_NAMES = ("masks", "iou_predictions", "low_res_masks")
DEFAULT_OPSET = 17


class SizeGeneralSamOnnxModel(SamOnnxModel):  # type: ignore[misc]  # untyped package
    """``SamOnnxModel`` whose crop to the pre-padding size follows the ``orig_im_size`` input."""

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        masks = F.interpolate(
            masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        prepadded_size = self.resize_longest_image_size(orig_im_size, self.img_size)
        # Tensor bounds, not int(): the tracer keeps them as inputs of the Slice node.
        masks = masks[..., : prepadded_size[0], : prepadded_size[1]]
        orig_im_size = orig_im_size.to(torch.int64)
        h, w = orig_im_size[0], orig_im_size[1]
        # 0-d tensors as the size keep the output size dynamic too (as in the official model).
        return F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)  # type: ignore[arg-type]


def example_inputs(sam: Sam, num_points: int = 5) -> dict[str, torch.Tensor]:
    """Inputs to trace with (the official script's; the 2:3 size is the one that used to
    freeze)."""
    embed_dim = sam.prompt_encoder.embed_dim
    eh, ew = sam.prompt_encoder.image_embedding_size
    generator = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, embed_dim, eh, ew, generator=generator),
        "point_coords": torch.randint(0, 1024, (1, num_points, 2), generator=generator).float(),
        "point_labels": torch.randint(0, 4, (1, num_points), generator=generator).float(),
        "mask_input": torch.randn(1, 1, 4 * eh, 4 * ew, generator=generator),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }


def export_decoder(sam: Sam, path: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """Write the decoder of ``sam`` to ``path`` as ONNX and check it with ``onnx.checker``.

    Inputs and outputs are the official script's (``return_single_mask=False``: all four masks),
    with a dynamic number of points.
    """
    import onnx

    model = SizeGeneralSamOnnxModel(sam, return_single_mask=False).eval()
    inputs = example_inputs(sam)
    with warnings.catch_warnings():
        # The tracer warns about the Python-level shape arithmetic of the official model, and
        # newer torch about the legacy exporter itself; neither applies to the graph we keep.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(inputs[name] for name in INPUT_NAMES),
            str(path),
            export_params=True,
            opset_version=opset,
            do_constant_folding=True,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                "point_coords": {1: "num_points"},
                "point_labels": {1: "num_points"},
            },
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))


def quantize_decoder(source: Path, target: Path) -> None:
    """Write an int8 (dynamic, weights QUInt8) copy of ``source``, as the official script."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        model_input=str(source),
        model_output=str(target),
        per_channel=False,
        reduce_range=False,
        weight_type=QuantType.QUInt8,
    )


def _probe_image(size: int = 256) -> np.ndarray:
    """A fixed image of bright shapes on a dark background (what the shipped tiny knows)."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size, 3), 30, dtype=np.uint8)
    img[(xx - 80) ** 2 + (yy - 90) ** 2 < 45**2] = (230, 60, 60)
    img[(xx > 140) & (xx < 220) & (yy > 40) & (yy < 120)] = (60, 200, 80)
    img[(np.abs(xx - 170) + np.abs(yy - 190)) < 45] = (70, 90, 240)
    return img


@dataclass(frozen=True, slots=True)
class QuantIou:
    """IoU of the int8 decoder's masks against the fp32 decoder's, on a fixed probe."""

    mean: float
    min: float
    prompts: int


#: Points on the probe's three shapes (x, y): what a person would click.
_PROBE_POINTS = ((80, 90), (60, 70), (100, 110), (180, 80), (150, 60), (210, 110),
                 (170, 190), (150, 185), (185, 200))  # fmt: skip


def measure_quant_iou(sam: Sam, fp32: Path, int8: Path) -> QuantIou:
    """Run both decoders on the probe image's embedding, one point on a shape per prompt, and
    compare every returned mask (all four outputs)."""
    import onnxruntime as ort

    image = _probe_image()
    resize = ResizeLongestSide(sam.image_encoder.img_size)
    with torch.no_grad():
        x = torch.as_tensor(resize.apply_image(image)).permute(2, 0, 1).contiguous()[None]
        embedding = sam.image_encoder(sam.preprocess(x.float())).numpy()
    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)
    ]
    size = image.shape[:2]
    ious = []
    for point in _PROBE_POINTS:
        coords = resize.apply_coords(np.array([point, (0.0, 0.0)], dtype=np.float64), size)
        feeds: dict[str, Any] = {
            "image_embeddings": embedding,
            "point_coords": coords[None].astype(np.float32),
            "point_labels": np.array([[1.0, -1.0]], dtype=np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32),
            "has_mask_input": np.zeros(1, dtype=np.float32),
            "orig_im_size": np.array(size, dtype=np.float32),
        }
        a, b = (s.run(["masks"], feeds)[0][0] > sam.mask_threshold for s in sessions)
        for ma, mb in zip(a, b, strict=True):
            union = np.logical_or(ma, mb).sum()
            ious.append(1.0 if union == 0 else np.logical_and(ma, mb).sum() / union)
    return QuantIou(mean=float(np.mean(ious)), min=float(np.min(ious)), prompts=len(_PROBE_POINTS))


def metadata(model: LoadedModel, opset: int, quant: QuantIou | None) -> dict[str, Any]:
    """model.json: the model identity and the input conventions, for any client language."""
    sam = model.sam
    embed_dim = sam.prompt_encoder.embed_dim
    eh, ew = sam.prompt_encoder.image_embedding_size
    meta: dict[str, Any] = {
        "format": "samserve-onnx-decoder/1",
        "model_id": model.model_id,
        "variant": model.variant,
        "weights_sha256": model.weights_sha256,
        "decoder": DECODER_FILE,
        "opset": opset,
        "image_size": int(sam.image_encoder.img_size),
        "embedding_shape": [1, embed_dim, eh, ew],
        "mask_input_shape": [1, 1, 4 * eh, 4 * ew],
        "mask_threshold": float(sam.mask_threshold),
        "inputs": {
            "image_embeddings": "GetEmbedding's embedding as float32, (1, 256, 64, 64)",
            "point_coords": (
                "(1, N, 2) float32 (x, y) in the resized frame: original pixels times "
                "(new_w / width, new_h / height), new = round(size * 1024 / max(height, width))"
                " (ResizeLongestSide.apply_coords)"
            ),
            "point_labels": (
                "(1, N) float32: 1 foreground, 0 background, 2 and 3 a box's top-left and "
                "bottom-right corners; without a box append the point (0, 0) with label -1"
            ),
            "mask_input": "(1, 1, 256, 256) float32 logits of a previous low_res_masks, or zeros",
            "has_mask_input": "(1,) float32: 1 when mask_input is given, else 0",
            "orig_im_size": "(2,) float32 (height, width) of the original image",
        },
        "outputs": {
            "masks": "(1, 4, height, width) float32 logits; inside a mask where > mask_threshold",
            "iou_predictions": "(1, 4) float32 predicted IoU",
            "low_res_masks": "(1, 4, 256, 256) float32 logits (the next mask_input)",
            "order": "output 0 is the single-mask answer, outputs 1-3 the multimask answers",
        },
    }
    if quant is not None:
        meta["int8"] = {
            "file": QUANT_FILE,
            "iou_vs_fp32": {"mean": quant.mean, "min": quant.min, "prompts": quant.prompts},
        }
    return meta


def export(
    model: LoadedModel, out: Path, *, quantize: bool, opset: int = DEFAULT_OPSET
) -> dict[str, Any]:
    """Write decoder.onnx, model.json and, with ``quantize``, decoder.quant.onnx to ``out``.

    Returns:
        The metadata written to model.json.
    """
    out.mkdir(parents=True, exist_ok=True)
    export_decoder(model.sam, out / DECODER_FILE, opset=opset)
    quant = None
    if quantize:
        quantize_decoder(out / DECODER_FILE, out / QUANT_FILE)
        quant = measure_quant_iou(model.sam, out / DECODER_FILE, out / QUANT_FILE)
    meta = metadata(model, opset, quant)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
