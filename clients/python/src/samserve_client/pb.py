"""Public re-export of the generated protobuf and gRPC modules (the server imports these)."""

from samserve_client._proto.samserve.v1 import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
)

__all__ = [
    "common_pb2",
    "decoder_pb2",
    "decoder_pb2_grpc",
    "embedding_pb2",
    "embedding_pb2_grpc",
]
