"""The only SDK module that builds or reads protobuf messages (numpy <-> proto)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.descriptor import FieldDescriptor

from samserve_client.errors import InvalidArgumentError, from_status
from samserve_client.pb import common_pb2, decoder_pb2, embedding_pb2
from samserve_client.types import EmbeddingRef, ModelInfo, Prompt, SegmentResult

MASK_ENCODINGS: dict[str, int] = {
    "bitmask": common_pb2.MASK_ENCODING_BITMASK,
    "coco_rle": common_pb2.MASK_ENCODING_COCO_RLE,
    "polygon": common_pb2.MASK_ENCODING_POLYGON,
}
_DTYPES = {common_pb2.D_TYPE_FLOAT32: np.float32, common_pb2.D_TYPE_FLOAT16: np.float16}


def tensor_to_proto(array: npt.ArrayLike) -> common_pb2.Tensor:
    """A float32 little-endian Tensor message from an array."""
    arr = np.ascontiguousarray(np.asarray(array, dtype="<f4"))
    return common_pb2.Tensor(shape=arr.shape, dtype=common_pb2.D_TYPE_FLOAT32, data=arr.tobytes())


def tensor_from_proto(msg: common_pb2.Tensor) -> np.ndarray:
    """A float32 array from a Tensor message."""
    dtype = _DTYPES.get(msg.dtype)
    if dtype is None:
        raise ValueError(f"unsupported tensor dtype {msg.dtype}")
    arr = np.frombuffer(msg.data, dtype=np.dtype(dtype).newbyteorder("<"))
    return arr.reshape(tuple(msg.shape)).astype(np.float32)


def prompt_to_proto(prompt: Prompt) -> decoder_pb2.Prompt:
    """Build a Prompt message; values are checked by the server, which owns the rules.

    Raises:
        InvalidArgumentError: points and labels differ in number (the wire pairs each point
            with its label, so such a prompt cannot be sent).
    """
    msg = decoder_pb2.Prompt()
    if prompt.points is not None:
        points = np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2)
        labels = (
            np.ones(len(points), dtype=np.int64)
            if prompt.labels is None
            else np.asarray(prompt.labels).reshape(-1)
        )
        if len(labels) != len(points):
            raise InvalidArgumentError(f"{len(points)} points but {len(labels)} labels")
        msg.points.extend(
            common_pb2.Point(x=float(x), y=float(y), label=int(lab))
            for (x, y), lab in zip(points, labels, strict=True)
        )
    elif prompt.labels is not None and len(np.asarray(prompt.labels).reshape(-1)):
        raise InvalidArgumentError("labels given without points")
    if prompt.box is not None:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(prompt.box, dtype=np.float64).reshape(4))
        msg.box.CopyFrom(common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1))
    if prompt.mask_input is not None:
        msg.mask_input.CopyFrom(tensor_to_proto(prompt.mask_input))
    return msg


def segment_request(
    image_id: str,
    prompts: Sequence[Prompt],
    *,
    model: str,
    multimask_output: bool,
    return_low_res_logits: bool,
    mask_encoding: str,
) -> decoder_pb2.SegmentRequest:
    """Build a SegmentRequest for ``prompts`` against a stored image."""
    if mask_encoding not in MASK_ENCODINGS:
        raise InvalidArgumentError(f"mask_encoding must be one of {sorted(MASK_ENCODINGS)}")
    return decoder_pb2.SegmentRequest(
        image_id=image_id,
        model=model,
        prompts=[prompt_to_proto(p) for p in prompts],
        multimask_output=multimask_output,
        mask_encoding=MASK_ENCODINGS[mask_encoding],  # type: ignore[arg-type]
        return_low_res_logits=return_low_res_logits,
    )


def mask_from_proto(msg: common_pb2.Mask) -> np.ndarray:
    """Decode one Mask message into a bool (H, W) array."""
    h, w = msg.height, msg.width
    kind = msg.WhichOneof("encoding")
    if kind == "bitmask":
        bits = np.unpackbits(np.frombuffer(msg.bitmask.data, dtype=np.uint8), count=h * w)
        return bits.reshape(h, w).view(bool)
    if kind == "coco_rle":
        from pycocotools import mask as mask_utils  # the `rle` extra

        rle = {"size": [h, w], "counts": msg.coco_rle.counts}
        return np.asarray(mask_utils.decode(rle), dtype=bool)
    if kind == "polygons":
        return polygons_to_mask(
            [
                (np.asarray(p.xy, dtype=np.int32).reshape(-1, 2), p.hole)
                for p in msg.polygons.polygons
            ],
            h,
            w,
        )
    raise ValueError(f"mask without an encoding ({kind})")


def polygons_to_mask(
    polygons: Sequence[tuple[np.ndarray, bool]], height: int, width: int
) -> np.ndarray:
    """Rasterise (vertices (N, 2) int (x, y), is_hole) polygons into a bool (H, W) mask.

    Outer polygons are filled with their edges (``cv2.fillPoly`` + ``cv2.polylines``); hole
    interiors are cleared, their edges (pixels of the mask) kept. Polygons are lossy at the
    pixel boundary (thin parts); needs OpenCV (``opencv-python-headless``).
    """
    import cv2  # the `polygon` extra

    outer = [xy.reshape(-1, 1, 2) for xy, hole in polygons if not hole]
    holes = [xy.reshape(-1, 1, 2) for xy, hole in polygons if hole]
    mask = np.zeros((height, width), dtype=np.uint8)
    if outer:
        cv2.fillPoly(mask, outer, (1,))
        cv2.polylines(mask, outer, True, (1,))
    if holes:
        inside = np.zeros_like(mask)
        cv2.fillPoly(inside, holes, (1,))
        cv2.polylines(inside, holes, True, (0,))
        mask[inside.astype(bool)] = 0
    return mask.astype(bool)


def masks_from_proto(masks: Sequence[common_pb2.Mask], height: int, width: int) -> np.ndarray:
    """Decode masks into one bool (K, H, W) array."""
    out = np.empty((len(masks), height, width), dtype=bool)
    for i, m in enumerate(masks):
        out[i] = mask_from_proto(m)
    return out


def segment_results(resp: decoder_pb2.SegmentResponse) -> list[SegmentResult]:
    """One SegmentResult per prompt, in request order."""
    results = []
    for r in resp.results:
        logits = (
            tensor_from_proto(r.low_res_logits)
            if r.HasField("low_res_logits")
            else np.zeros((0, 256, 256), dtype=np.float32)
        )
        results.append(
            SegmentResult(
                masks=masks_from_proto(r.masks, resp.height, resp.width),
                scores=np.asarray(r.scores, dtype=np.float32),
                low_res_logits=logits,
            )
        )
    return results


def embed_request(data: bytes, model: str) -> embedding_pb2.EmbedRequest:
    """Build an EmbedRequest for encoded image bytes."""
    return embedding_pb2.EmbedRequest(image=data, model=model)


def embed_stream_request(data: bytes, model: str) -> embedding_pb2.EmbedStreamRequest:
    """One image of an EmbedStream."""
    return embedding_pb2.EmbedStreamRequest(request=embed_request(data, model))


def model_info_request() -> embedding_pb2.GetModelInfoRequest:
    """A GetModelInfoRequest (it has no fields)."""
    return embedding_pb2.GetModelInfoRequest()


def stream_item(item: embedding_pb2.EmbedStreamResponse) -> EmbeddingRef:
    """The EmbeddingRef of one stream item, or the typed error it carries."""
    if item.code:
        raise from_status(item.code, item.message)
    return embedding_ref(item.response)


def embedding_ref(resp: embedding_pb2.EmbedResponse) -> EmbeddingRef:
    """An EmbeddingRef from an EmbedResponse."""
    return EmbeddingRef(
        image_id=resp.image_id,
        cached=resp.cached,
        model_id=resp.model_id,
        height=resp.height,
        width=resp.width,
    )


def single_prompt(
    points: npt.ArrayLike | None,
    labels: npt.ArrayLike | None,
    box: npt.ArrayLike | None,
    mask_input: npt.ArrayLike | None,
) -> Prompt:
    """The Prompt for ``segment``'s keyword arguments."""
    return Prompt(points=points, labels=labels, box=box, mask_input=mask_input)


#: The parameters segment_everything takes: every SegmentEverythingRequest field but the image
#: and the model, so fields added to the proto (SAM 2's among them) need no SDK change. Their
#: defaults live on the server only (the official generator's, for the model's family).
EVERYTHING_PARAMETERS: dict[str, FieldDescriptor] = {
    f.name: f
    for f in decoder_pb2.SegmentEverythingRequest.DESCRIPTOR.fields
    if f.name not in ("image_id", "model")
}


def segment_everything_request(
    image_id: str, model: str, params: Mapping[str, Any]
) -> decoder_pb2.SegmentEverythingRequest:
    """Build a SegmentEverythingRequest carrying only the parameters the caller set.

    Raises:
        InvalidArgumentError: an unknown parameter name, or a value of the wrong type.
    """
    unknown = sorted(set(params) - set(EVERYTHING_PARAMETERS))
    if unknown:
        raise InvalidArgumentError(f"unknown segment_everything parameters: {unknown}")
    msg = decoder_pb2.SegmentEverythingRequest(image_id=image_id, model=model)
    for name, value in params.items():
        try:
            setattr(msg, name, value)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"{name}: {e}") from None
    return msg


def needs_crops(request: decoder_pb2.SegmentEverythingRequest) -> bool:
    """Whether the call asks for crop layers (their embeddings come from EmbedCrops)."""
    return request.HasField("crop_n_layers") and request.crop_n_layers > 0


def embed_crops_request(
    data: bytes, request: decoder_pb2.SegmentEverythingRequest
) -> embedding_pb2.EmbedCropsRequest:
    """The EmbedCropsRequest storing the crops ``request`` needs; an unset overlap stays unset
    (the server applies its default to both calls)."""
    msg = embedding_pb2.EmbedCropsRequest(
        image=data, model=request.model, crop_n_layers=request.crop_n_layers
    )
    if request.HasField("crop_overlap_ratio"):
        msg.crop_overlap_ratio = request.crop_overlap_ratio
    return msg


def model_info(resp: embedding_pb2.GetModelInfoResponse) -> ModelInfo:
    """A ModelInfo from a GetModelInfoResponse."""
    return ModelInfo(
        variant=resp.variant,
        model_id=resp.model_id,
        weights_sha256=resp.weights_sha256,
        source=resp.source,
        family=resp.family,
    )


def everything_records(resp: decoder_pb2.SegmentEverythingResponse) -> list[dict[str, Any]]:
    """The ``generate()``-style dicts of one SegmentEverything message (a stream's group)."""
    return [everything_record(r) for r in resp.records]


def everything_record(r: decoder_pb2.MaskRecord) -> dict[str, Any]:
    """One ``generate()`` record: a bool (H, W) mask, or a COCO RLE dict for coco_rle."""
    seg = r.segmentation
    segmentation: Any
    if seg.WhichOneof("encoding") == "coco_rle":
        segmentation = {"size": [seg.height, seg.width], "counts": seg.coco_rle.counts.decode()}
    else:
        segmentation = mask_from_proto(seg)
    return {
        "segmentation": segmentation,
        "area": int(r.area),
        "bbox": [int(v) for v in r.bbox],
        "predicted_iou": float(r.predicted_iou),
        "point_coords": [[float(v) for v in r.point_coords]],
        "stability_score": float(r.stability_score),
        "crop_box": [int(v) for v in r.crop_box],
    }


def refine_request(
    image_id: str,
    *,
    model: str,
    point: tuple[float, float, int] | None,
    box: npt.ArrayLike | None,
    multimask_output: bool,
    mask_encoding: str,
    return_low_res_logits: bool,
) -> decoder_pb2.RefineRequest:
    """One refinement step: a click (x, y, label) and/or a box XYXY."""
    if mask_encoding not in MASK_ENCODINGS:
        raise InvalidArgumentError(f"mask_encoding must be one of {sorted(MASK_ENCODINGS)}")
    msg = decoder_pb2.RefineRequest(
        image_id=image_id,
        model=model,
        multimask_output=multimask_output,
        mask_encoding=MASK_ENCODINGS[mask_encoding],  # type: ignore[arg-type]
        return_low_res_logits=return_low_res_logits,
    )
    if point is not None:
        x, y, label = point
        msg.point.CopyFrom(common_pb2.Point(x=float(x), y=float(y), label=int(label)))
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
        msg.box.CopyFrom(common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1))
    return msg


def refine_result(resp: decoder_pb2.RefineResponse) -> SegmentResult:
    """The SegmentResult of one refinement step."""
    wrapped = decoder_pb2.SegmentResponse(
        results=[resp.result], height=resp.height, width=resp.width
    )
    return segment_results(wrapped)[0]
