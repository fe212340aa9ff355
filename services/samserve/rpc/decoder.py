"""DecoderServicer: parse prompts, call core.Decoder, build the response."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator

import grpc
import numpy as np

from samserve.core.amg import AmgParams, AmgRecord
from samserve.core.decoder import Decoder, EncodedPrediction, MaskEncoding, PromptSpec
from samserve.core.errors import InvalidInput
from samserve.core.masks import coco_rle_counts, pack_bitmask_rle
from samserve_client.pb import common_pb2, decoder_pb2, decoder_pb2_grpc

SERVICE = decoder_pb2.DESCRIPTOR.services_by_name["DecoderService"].full_name

_ENCODINGS = {
    common_pb2.MASK_ENCODING_UNSPECIFIED: MaskEncoding.BITMASK,
    common_pb2.MASK_ENCODING_BITMASK: MaskEncoding.BITMASK,
    common_pb2.MASK_ENCODING_COCO_RLE: MaskEncoding.COCO_RLE,
    common_pb2.MASK_ENCODING_POLYGON: MaskEncoding.POLYGON,
}


#: Most dimensions a tensor in a request may have (a mask input has 2 or 3).
MAX_TENSOR_DIMS = 4


def tensor_from_proto(msg: common_pb2.Tensor, field: str) -> np.ndarray:
    """A float32 array from a Tensor message, checking its shape before touching its bytes.

    The element count is computed with Python integers (no overflow, whatever the shape) and
    must match the bytes sent, so no shape can make the server allocate more than it received.
    """
    dtypes = {common_pb2.D_TYPE_FLOAT32: "<f4", common_pb2.D_TYPE_FLOAT16: "<f2"}
    if msg.dtype not in dtypes:
        raise InvalidInput(f"{field}.dtype: must be FLOAT32 or FLOAT16")
    if len(msg.shape) > MAX_TENSOR_DIMS:
        raise InvalidInput(f"{field}.shape: {len(msg.shape)} dimensions, at most {MAX_TENSOR_DIMS}")
    dtype = np.dtype(dtypes[msg.dtype])
    shape = tuple(int(s) for s in msg.shape)
    if any(s < 0 for s in shape) or math.prod(shape) * dtype.itemsize != len(msg.data):
        raise InvalidInput(f"{field}: {len(msg.data)} bytes do not fit shape {shape}")
    return np.frombuffer(msg.data, dtype=dtype).reshape(shape).astype(np.float32)


def prompt_from_proto(msg: decoder_pb2.Prompt, index: int) -> PromptSpec:
    """A PromptSpec from the wire (shapes and values are checked by the core)."""
    points = labels = box = mask_input = None
    if msg.points:
        points = np.array([[p.x, p.y] for p in msg.points], dtype=np.float64)
        labels = np.array([p.label for p in msg.points], dtype=np.int64)
    if msg.HasField("box"):
        b = msg.box
        box = np.array([b.x0, b.y0, b.x1, b.y1], dtype=np.float64)
    if msg.HasField("mask_input"):
        mask_input = tensor_from_proto(msg.mask_input, f"prompts[{index}].mask_input")
        if mask_input.shape == (256, 256):
            mask_input = mask_input[None]
    return PromptSpec(points=points, labels=labels, box=box, mask_input=mask_input)


def result_to_proto(
    pred: EncodedPrediction, encoding: MaskEncoding, h: int, w: int
) -> decoder_pb2.PromptResult:
    """A PromptResult message from an encoded prediction."""
    masks = []
    for m in pred.masks:
        if isinstance(m, list):
            polygons = common_pb2.Polygons(
                polygons=[common_pb2.Polygon(xy=p.xy.ravel().tolist(), hole=p.hole) for p in m]
            )
            masks.append(common_pb2.Mask(height=h, width=w, polygons=polygons))
        elif encoding is MaskEncoding.COCO_RLE:
            masks.append(common_pb2.Mask(height=h, width=w, coco_rle=common_pb2.CocoRle(counts=m)))
        else:
            masks.append(
                common_pb2.Mask(height=h, width=w, bitmask=common_pb2.PackedBitmask(data=m))
            )
    result = decoder_pb2.PromptResult(masks=masks, scores=pred.scores.tolist())
    if pred.low_res_logits is not None:
        logits = np.ascontiguousarray(pred.low_res_logits, dtype="<f4")
        result.low_res_logits.CopyFrom(
            common_pb2.Tensor(
                shape=logits.shape, dtype=common_pb2.D_TYPE_FLOAT32, data=logits.tobytes()
            )
        )
    return result


#: Bytes of masks per streamed SegmentEverything message (well under any message limit).
STREAM_CHUNK_BYTES = 1 << 20


def amg_params_from_proto(
    msg: decoder_pb2.SegmentEverythingRequest, params_type: type[AmgParams] = AmgParams
) -> AmgParams:
    """The model family's parameters (``params_type``) from the request: each unset field keeps
    the official default of that family; a field the family does not have is refused."""
    names = {f.name for f in dataclasses.fields(params_type)}
    for f in msg.DESCRIPTOR.fields:
        if f.name not in names and f.has_presence and msg.HasField(f.name):
            raise InvalidInput(f"{f.name}: not a parameter of this model's family")
    return params_type(**{name: getattr(msg, name) for name in names if msg.HasField(name)})


def record_to_proto(r: AmgRecord, output_mode: str) -> decoder_pb2.MaskRecord:
    """A MaskRecord message: the mask as a packed bitmask, or COCO RLE for ``coco_rle``."""
    h, w = (int(v) for v in r.rle["size"])
    if output_mode == "coco_rle":
        mask = common_pb2.Mask(
            height=h, width=w, coco_rle=common_pb2.CocoRle(counts=coco_rle_counts(r.rle))
        )
    else:
        mask = common_pb2.Mask(
            height=h, width=w, bitmask=common_pb2.PackedBitmask(data=pack_bitmask_rle(r.rle))
        )
    return decoder_pb2.MaskRecord(
        segmentation=mask,
        area=r.area,
        bbox=r.bbox,
        predicted_iou=r.predicted_iou,
        point_coords=r.point_coords,
        stability_score=r.stability_score,
        crop_box=r.crop_box,
    )


class DecoderServicer(decoder_pb2_grpc.DecoderServiceServicer):
    """samserve.v1.DecoderService over a core :class:`Decoder`."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder

    async def Segment(  # noqa: N802
        self, request: decoder_pb2.SegmentRequest, context: grpc.aio.ServicerContext
    ) -> decoder_pb2.SegmentResponse:
        """Segment: INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE."""
        encoding = _ENCODINGS.get(request.mask_encoding)
        if encoding is None:
            raise InvalidInput("mask_encoding: unsupported value")
        prompts = [prompt_from_proto(p, i) for i, p in enumerate(request.prompts)]
        (h, w), preds = await self.decoder.segment(
            request.image_id,
            prompts,
            model=request.model,
            multimask_output=request.multimask_output,
            encoding=encoding,
            return_low_res_logits=request.return_low_res_logits,
        )
        return decoder_pb2.SegmentResponse(
            results=[result_to_proto(p, encoding, h, w) for p in preds],
            model_id=self.decoder.model_id,
            height=h,
            width=w,
        )

    async def SegmentEverything(  # noqa: N802
        self,
        request: decoder_pb2.SegmentEverythingRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[decoder_pb2.SegmentEverythingResponse]:
        """SegmentEverything: INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE.

        The masks are computed first (the official algorithm needs all of them for its NMS), then
        streamed in groups of about STREAM_CHUNK_BYTES; an empty answer is one empty group.
        """
        params = amg_params_from_proto(request, self.decoder.amg_params_type)
        (h, w), records = await self.decoder.segment_everything(
            request.image_id, params, model=request.model
        )
        group: list[decoder_pb2.MaskRecord] = []
        size = 0
        for r in records:
            msg = record_to_proto(r, params.output_mode)
            group.append(msg)
            size += msg.ByteSize()
            if size >= STREAM_CHUNK_BYTES:
                yield self._everything_response(group, h, w)
                group, size = [], 0
        if group or not records:
            yield self._everything_response(group, h, w)

    def _everything_response(
        self, records: list[decoder_pb2.MaskRecord], h: int, w: int
    ) -> decoder_pb2.SegmentEverythingResponse:
        return decoder_pb2.SegmentEverythingResponse(
            records=records, model_id=self.decoder.model_id, height=h, width=w
        )

    async def Refine(  # noqa: N802
        self,
        request_iterator: AsyncIterator[decoder_pb2.RefineRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[decoder_pb2.RefineResponse]:
        """Refine: one response per request; the first error ends the stream with its status
        (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE)."""
        session = self.decoder.refine_session()
        async for req in request_iterator:
            encoding = _ENCODINGS.get(req.mask_encoding)
            if encoding is None:
                raise InvalidInput("mask_encoding: unsupported value")
            point = None
            if req.HasField("point"):
                point = (float(req.point.x), float(req.point.y), int(req.point.label))
            box = None
            if req.HasField("box"):
                b = req.box
                box = np.array([b.x0, b.y0, b.x1, b.y1], dtype=np.float64)
            (h, w), pred = await session.step(
                req.image_id,
                point=point,
                box=box,
                model=req.model,
                multimask_output=req.multimask_output,
                encoding=encoding,
                return_low_res_logits=req.return_low_res_logits,
                reset=req.reset,
            )
            yield decoder_pb2.RefineResponse(
                result=result_to_proto(pred, encoding, h, w),
                step=session.steps,
                model_id=self.decoder.model_id,
                height=h,
                width=w,
            )
