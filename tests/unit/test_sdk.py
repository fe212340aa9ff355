"""The SDK's public surface, error mapping and wire conversions (no sockets)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import samserve_client
from samserve_client import _convert, errors
from samserve_client._image import encode, image_id, to_bytes
from samserve_client.types import Prompt


def test_exported_members() -> None:
    assert samserve_client.__all__ == [
        "AsyncRefineSession",
        "AsyncSamClient",
        "CancelledError",
        "DeadlineExceededError",
        "EmbeddingRef",
        "EmbeddingTensors",
        "InternalError",
        "InvalidArgumentError",
        "ModelInfo",
        "NotFoundError",
        "Prompt",
        "RefineSession",
        "ResourceExhaustedError",
        "SamClient",
        "SamServeError",
        "SegmentResult",
        "UnauthenticatedError",
        "UnavailableError",
        "image_id",
    ]


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "why"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, errors.NotFoundError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, errors.CancelledError),
        (grpc.StatusCode.INTERNAL, errors.InternalError),
        (grpc.StatusCode.UNKNOWN, errors.InternalError),
    ],
)
def test_error_mapping(code: grpc.StatusCode, cls: type) -> None:
    rpc_error = _FakeRpcError(code)
    exc = errors.from_rpc_error(rpc_error)
    assert type(exc) is cls
    assert isinstance(exc, samserve_client.SamServeError)
    assert exc.code == code
    assert exc.details == "why"
    assert exc.__cause__ is rpc_error
    assert type(errors.from_status(code.value[0], "x")) is cls


def test_server_and_sdk_status_tables_agree() -> None:
    from samserve.core import errors as core

    for cls in (core.InvalidInput, core.NotFound, core.ResourceExhausted, core.Unavailable,
                core.DeadlineExceeded):  # fmt: skip
        code = getattr(grpc.StatusCode, cls.status_name)
        assert errors.from_status(code.value[0], "").code == code


def test_image_bytes_and_id() -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    data, key = encode(rgb)
    assert key == image_id(data)
    assert to_bytes(data) == data
    with pytest.raises(ValueError):
        to_bytes(np.zeros((4, 5), dtype=np.uint8))


def test_prompt_conversion_defaults_labels_to_foreground() -> None:
    msg = _convert.prompt_to_proto(Prompt(points=[[1, 2], [3, 4]]))
    assert [(p.x, p.y, p.label) for p in msg.points] == [(1, 2, 1), (3, 4, 1)]
    assert not msg.HasField("box")


def test_mismatched_labels_are_refused() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        _convert.prompt_to_proto(Prompt(points=[[1, 2]], labels=[1, 0]))


def test_tensor_round_trip() -> None:
    a = np.random.default_rng(0).standard_normal((1, 256, 256)).astype(np.float32)
    np.testing.assert_array_equal(_convert.tensor_from_proto(_convert.tensor_to_proto(a)), a)


def test_bitmask_and_rle_decode() -> None:
    from samserve.core.masks import encode_coco_rle, pack_bitmask
    from samserve_client.pb import common_pb2

    rng = np.random.default_rng(1)
    masks = rng.random((2, 13, 17)) > 0.5
    for m, counts in zip(masks, encode_coco_rle(masks), strict=True):
        bit = common_pb2.Mask(
            height=13, width=17, bitmask=common_pb2.PackedBitmask(data=pack_bitmask(m))
        )
        rle = common_pb2.Mask(height=13, width=17, coco_rle=common_pb2.CocoRle(counts=counts))
        np.testing.assert_array_equal(_convert.mask_from_proto(bit), m)
        np.testing.assert_array_equal(_convert.mask_from_proto(rle), m)
