"""DecoderServicer: parse prompts, call core.Decoder, build the response."""

from __future__ import annotations

import grpc
import numpy as np

from samserve.core.decoder import Decoder, EncodedPrediction, MaskEncoding, PromptSpec
from samserve.core.errors import InvalidInput
from samserve.core.metrics import Metrics
from samserve.grpc.status import rpc
from samserve_client.pb import common_pb2, decoder_pb2, decoder_pb2_grpc

SERVICE = decoder_pb2.DESCRIPTOR.services_by_name["DecoderService"].full_name

_ENCODINGS = {
    common_pb2.MASK_ENCODING_UNSPECIFIED: MaskEncoding.BITMASK,
    common_pb2.MASK_ENCODING_BITMASK: MaskEncoding.BITMASK,
    common_pb2.MASK_ENCODING_COCO_RLE: MaskEncoding.COCO_RLE,
}


def tensor_from_proto(msg: common_pb2.Tensor, field: str) -> np.ndarray:
    """A float32 array from a Tensor message, checking that its bytes fit its shape."""
    dtypes = {common_pb2.D_TYPE_FLOAT32: "<f4", common_pb2.D_TYPE_FLOAT16: "<f2"}
    if msg.dtype not in dtypes:
        raise InvalidInput(f"{field}.dtype: must be FLOAT32 or FLOAT16")
    dtype = np.dtype(dtypes[msg.dtype])
    shape = tuple(int(s) for s in msg.shape)
    if any(s < 0 for s in shape) or int(np.prod(shape)) * dtype.itemsize != len(msg.data):
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
    if encoding is MaskEncoding.COCO_RLE:
        masks = [
            common_pb2.Mask(height=h, width=w, coco_rle=common_pb2.CocoRle(counts=m))
            for m in pred.masks
        ]
    else:
        masks = [
            common_pb2.Mask(height=h, width=w, bitmask=common_pb2.PackedBitmask(data=m))
            for m in pred.masks
        ]
    result = decoder_pb2.PromptResult(masks=masks, scores=pred.scores.tolist())
    if pred.low_res_logits is not None:
        logits = np.ascontiguousarray(pred.low_res_logits, dtype="<f4")
        result.low_res_logits.CopyFrom(
            common_pb2.Tensor(
                shape=logits.shape, dtype=common_pb2.D_TYPE_FLOAT32, data=logits.tobytes()
            )
        )
    return result


class DecoderServicer(decoder_pb2_grpc.DecoderServiceServicer):
    """samserve.v1.DecoderService over a core :class:`Decoder`."""

    def __init__(self, decoder: Decoder, metrics: Metrics) -> None:
        self.decoder = decoder
        self.metrics = metrics

    @rpc(SERVICE, "Segment")
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
