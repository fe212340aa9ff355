"""Decode prompts locally with the official ONNX decoder (``pip install samserve-client[onnx]``).

``samserve export-onnx --out DIR`` writes ``DIR/decoder.onnx`` (``SamOnnxModel``'s graph) and
``DIR/model.json`` (the model id and the input conventions). :class:`OnnxDecoder` runs it with
onnxruntime on an embedding from ``GetEmbedding`` and answers what the decoder service's
``Segment`` answers, with no round trip per click: for edge and offline clients, and the same
conventions a browser (onnxruntime-web) or an annotation tool follows.

Conventions (model.json spells them out for other languages):

- coordinates go from original-image pixels to the resized 1024 frame with
  ``ResizeLongestSide(1024).apply_coords``;
- a box is two more points, its corners, with labels 2 and 3;
- without a box, one padding point (0, 0) with label -1 is appended;
- ``masks`` are logits at the original size (a mask is ``logit > 0``); output 0 is the
  single-mask answer, outputs 1-3 the multimask ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from samserve_client._embedding import EmbeddingTensors
from samserve_client.types import SegmentResult

#: Side of the square frame the encoder sees (SAM's ``image_encoder.img_size``).
IMAGE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class DecoderInfo:
    """What model.json says about an exported decoder.

    Attributes:
        model_id: identity of the weights it was exported from (must match the embedding's).
        image_size: the encoder's square input side (1024).
        mask_threshold: logits above it are inside a mask (0.0).
        int8_iou: mean IoU of the int8 decoder against fp32 measured at export, when exported.
    """

    model_id: str
    image_size: int
    mask_threshold: float
    int8_iou: float | None


def preprocess_shape(height: int, width: int, long_side: int = IMAGE_SIZE) -> tuple[int, int]:
    """(h, w) of an image resized so its long side is ``long_side`` (``ResizeLongestSide``)."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def apply_coords(
    coords: np.ndarray, size: tuple[int, int], long_side: int = IMAGE_SIZE
) -> np.ndarray:
    """(..., 2) (x, y) original-image pixels to the resized frame (``apply_coords``)."""
    new_h, new_w = preprocess_shape(size[0], size[1], long_side)
    out = np.array(coords, dtype=np.float64)
    out[..., 0] = out[..., 0] * (new_w / size[1])
    out[..., 1] = out[..., 1] * (new_h / size[0])
    return out


def decoder_inputs(
    embedding: np.ndarray,
    size: tuple[int, int],
    points: npt.ArrayLike | None = None,
    labels: npt.ArrayLike | None = None,
    box: npt.ArrayLike | None = None,
    mask_input: npt.ArrayLike | None = None,
    long_side: int = IMAGE_SIZE,
) -> dict[str, np.ndarray]:
    """The exported decoder's feeds for one prompt (the official conventions).

    Args:
        embedding: (1, 256, 64, 64) or (256, 64, 64) image embedding, any float dtype.
        size: (H, W) of the original image.
        points: (N, 2) (x, y) pixels in the original image.
        labels: (N,) 1 = foreground, 0 = background (default: all 1).
        box: (4,) XYXY pixels.
        mask_input: (1, 256, 256) or (256, 256) logits, e.g. a previous ``low_res_logits[i]``.
        long_side: the encoder's input side.

    Raises:
        ValueError: no point and no box, or arrays of the wrong shape.
    """
    emb = np.asarray(embedding, dtype=np.float32)
    if emb.ndim == 3:
        emb = emb[np.newaxis]
    if emb.ndim != 4 or emb.shape[0] != 1:
        raise ValueError(f"embedding: expected (1, C, H, W), got {emb.shape}")
    coords = np.zeros((0, 2), dtype=np.float64)
    point_labels = np.zeros((0,), dtype=np.float64)
    if points is not None:
        coords = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        point_labels = (
            np.ones(len(coords)) if labels is None else np.asarray(labels, dtype=np.float64)
        )
        if point_labels.shape != (len(coords),):
            raise ValueError(f"labels: expected ({len(coords)},), got {point_labels.shape}")
    if box is not None:
        corners = np.asarray(box, dtype=np.float64).reshape(2, 2)
        coords = np.concatenate([coords, corners])
        point_labels = np.concatenate([point_labels, [2.0, 3.0]])
    elif len(coords):
        coords = np.concatenate([coords, np.zeros((1, 2))])
        point_labels = np.concatenate([point_labels, [-1.0]])
    else:
        raise ValueError("give points or a box")
    if mask_input is None:
        mask = np.zeros((1, 1, 4 * emb.shape[2], 4 * emb.shape[3]), dtype=np.float32)
        has_mask = np.zeros((1,), dtype=np.float32)
    else:
        mask = np.asarray(mask_input, dtype=np.float32).reshape(1, 1, *np.shape(mask_input)[-2:])
        has_mask = np.ones((1,), dtype=np.float32)
    return {
        "image_embeddings": emb,
        "point_coords": apply_coords(coords, size, long_side)[np.newaxis].astype(np.float32),
        "point_labels": point_labels[np.newaxis].astype(np.float32),
        "mask_input": mask,
        "has_mask_input": has_mask,
        "orig_im_size": np.array(size, dtype=np.float32),
    }


def read_info(directory: str | os.PathLike[str]) -> DecoderInfo:
    """The :class:`DecoderInfo` in ``directory/model.json``."""
    meta: dict[str, Any] = json.loads((Path(directory) / "model.json").read_text())
    int8 = meta.get("int8") or {}
    return DecoderInfo(
        model_id=str(meta["model_id"]),
        image_size=int(meta["image_size"]),
        mask_threshold=float(meta["mask_threshold"]),
        int8_iou=None if "iou_vs_fp32" not in int8 else float(int8["iou_vs_fp32"]["mean"]),
    )


class OnnxDecoder:
    """The exported SAM decoder on onnxruntime: ``SamPredictor.predict`` on a fetched embedding.

    Args:
        directory: what ``samserve export-onnx --out`` wrote (model.json, decoder.onnx).
        quantized: run ``decoder.quant.onnx``, the int8 export (smaller, slightly different).
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads (0: onnxruntime's default).

    Raises:
        FileNotFoundError: the directory lacks model.json or the decoder file.
        ImportError: onnxruntime is not installed (``pip install samserve-client[onnx]``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        quantized: bool = False,
        providers: list[str] | None = None,
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.info = read_info(self.directory)
        path = self.directory / ("decoder.quant.onnx" if quantized else "decoder.onnx")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (run samserve export-onnx)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(path), options, providers=providers or ["CPUExecutionProvider"]
        )

    def predict(
        self,
        embedding: EmbeddingTensors | np.ndarray,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask_output: bool = True,
        *,
        image_size: tuple[int, int] | None = None,
    ) -> SegmentResult:
        """Segment with one prompt, as ``SamPredictor.predict`` and the served ``Segment`` do.

        Args:
            embedding: what ``get_embedding`` returned, or a (1, 256, 64, 64) array with
                ``image_size``.
            points: (N, 2) (x, y) pixel coordinates in the original image.
            labels: (N,) 1 = foreground, 0 = background (default: all 1).
            box: (4,) XYXY pixel box.
            mask_input: (1, 256, 256) logits from a previous result's ``low_res_logits[i]``.
            multimask_output: three masks (True) or one (False).
            image_size: (H, W) of the original image, when ``embedding`` is an array.

        Returns:
            Masks bool (K, H, W), scores float32 (K,), low_res_logits float32 (K, 256, 256).

        Raises:
            ValueError: the embedding comes from other weights than the decoder, no point and
                no box, or arrays of the wrong shape.
        """
        if isinstance(embedding, EmbeddingTensors):
            if embedding.model_id and embedding.model_id != self.info.model_id:
                raise ValueError(
                    f"embedding of model {embedding.model_id}, decoder exported from "
                    f"{self.info.model_id}: export the decoder from the served weights"
                )
            array, size = embedding.embedding, (embedding.height, embedding.width)
        elif image_size is None:
            raise ValueError("image_size: required with an array embedding")
        else:
            array, size = embedding, image_size
        feeds = decoder_inputs(
            array, size, points, labels, box, mask_input, long_side=self.info.image_size
        )
        masks, scores, low_res = self._session.run(None, feeds)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return SegmentResult(
            masks=masks[0, chosen] > self.info.mask_threshold,
            scores=scores[0, chosen].astype(np.float32),
            low_res_logits=low_res[0, chosen].astype(np.float32),
        )
