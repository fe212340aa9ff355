"""GetEmbedding: fetch a stored embedding as numpy arrays, for clients that decode themselves.

Request building and response parsing, sans-IO (``SamClient.get_embedding`` and its asyncio
twin run them through the shared plan in ``_plan.py``). Model families differ only in which
tensors the response carries: SAM 1 sends the image embedding, SAM 2.1 adds its high-resolution
maps, and both arrive through the same :func:`tensor_array`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samserve_client.pb import common_pb2, embedding_pb2

_DTYPES: dict[int, np.dtype] = {
    common_pb2.D_TYPE_FLOAT16: np.dtype("<f2"),
    common_pb2.D_TYPE_FLOAT32: np.dtype("<f4"),
}


@dataclass(frozen=True, slots=True)
class EmbeddingTensors:
    """A stored embedding and its geometry, as ``GetEmbedding`` returns it.

    Attributes:
        image_id: hex sha256 of the encoded image bytes.
        model_id: model identity (variant and weights checksum prefix); a decoder exported
            from other weights gives wrong masks.
        embedding: (1, 256, 64, 64) image embedding, float16 or float32 as stored (the
            exported decoder's ``image_embeddings`` input, after ``astype(np.float32)``).
        high_res_features: SAM 2.1's high-resolution maps, finest first, each (1, C, H, W);
            empty for SAM 1.
        height: original image height in pixels (after EXIF orientation).
        width: original image width in pixels.
        input_height: height of the resized image the encoder saw (long side 1024).
        input_width: width of the resized image the encoder saw.
    """

    image_id: str
    model_id: str
    embedding: np.ndarray
    high_res_features: list[np.ndarray]
    height: int
    width: int
    input_height: int
    input_width: int

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor together (what travelled on the wire, less the envelope)."""
        return int(self.embedding.nbytes + sum(t.nbytes for t in self.high_res_features))


def get_embedding_request(image_id: str, model: str = "") -> embedding_pb2.GetEmbeddingRequest:
    """The request for the stored embedding of ``image_id`` (``model`` empty: the server's)."""
    return embedding_pb2.GetEmbeddingRequest(image_id=image_id, model=model)


def tensor_array(tensor: common_pb2.Tensor) -> np.ndarray:
    """A wire Tensor as a read-only numpy array of its shape and dtype (native byte order).

    Raises:
        ValueError: an unknown dtype, or data whose size does not match the shape.
    """
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"tensor: unsupported dtype {tensor.dtype}")
    shape = tuple(int(s) for s in tensor.shape)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError(f"tensor: {len(tensor.data)} bytes for shape {shape} of {dtype.name}")
    array: np.ndarray = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def embedding_tensors(resp: embedding_pb2.GetEmbeddingResponse) -> EmbeddingTensors:
    """The arrays and sizes of a GetEmbedding response."""
    return EmbeddingTensors(
        image_id=resp.image_id,
        model_id=resp.model_id,
        embedding=tensor_array(resp.embedding),
        high_res_features=[tensor_array(t) for t in resp.high_res_features],
        height=resp.height,
        width=resp.width,
        input_height=resp.input_height,
        input_width=resp.input_width,
    )
