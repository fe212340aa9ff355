"""samserve-client: embed an image once, then prompt it many times (sync and asyncio)."""

from samserve_client._async_client import AsyncSamClient
from samserve_client._client import SamClient
from samserve_client._embedding import EmbeddingTensors
from samserve_client._image import image_id
from samserve_client._refine import AsyncRefineSession, RefineSession
from samserve_client.errors import (
    CancelledError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SamServeError,
    UnauthenticatedError,
    UnavailableError,
)
from samserve_client.types import EmbeddingRef, ModelInfo, Prompt, SegmentResult

__all__ = [
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
