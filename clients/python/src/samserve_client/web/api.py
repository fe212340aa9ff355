"""The page's JSON API without HTTP: validate a request, call the services, build the answer.

``POST /api/embed`` and ``POST /api/segment`` go through the SDK (``SamClient.embed`` and
``segment``); ``GET /api/embedding/<id>`` hands the browser the stored tensor for in-page
decoding. Coordinates are original-image pixels throughout; masks go back as COCO RLE.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samserve_client._client import SamClient
from samserve_client._embedding import EmbeddingTensors
from samserve_client.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SamServeError,
    UnavailableError,
)
from samserve_client.types import EmbeddingRef
from samserve_client.web import rle

#: Largest JSON body of /api/segment (a prompt is a few hundred bytes).
MAX_JSON_BYTES = 1024 * 1024
_IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
#: HTTP status of each SDK error; anything else the services report is a bad gateway.
_HTTP_STATUS: dict[type[SamServeError], int] = {
    InvalidArgumentError: 400,
    NotFoundError: 404,
    ResourceExhaustedError: 413,
    UnavailableError: 503,
    DeadlineExceededError: 504,
}
FetchEmbedding = Callable[[str], EmbeddingTensors]


class ApiError(Exception):
    """A request the API answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def http_error(e: SamServeError) -> ApiError:
    """The HTTP answer to a service error (its message is already safe for clients)."""
    status = next((s for cls, s in _HTTP_STATUS.items() if isinstance(e, cls)), 502)
    return ApiError(status, str(e) or type(e).__name__)


@dataclass(frozen=True, slots=True)
class SegmentQuery:
    """A validated /api/segment body.

    Attributes:
        image_id: hex sha256 of an embedded image.
        points: (N, 2) float64 (x, y) original-image pixels (N may be 0).
        labels: (N,) int 1 foreground, 0 background.
        box: (4,) XYXY pixels, or None.
        multimask: three masks (True) or one.
    """

    image_id: str
    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None
    multimask: bool


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{where}: expected a finite number, got {json.dumps(value)}")
    return float(value)


def parse_segment(body: bytes) -> SegmentQuery:
    """Validate a /api/segment body.

    Raises:
        ApiError: 413 over :data:`MAX_JSON_BYTES`; 400 for anything malformed.
    """
    if len(body) > MAX_JSON_BYTES:
        raise ApiError(413, f"body: {len(body)} bytes is over the limit of {MAX_JSON_BYTES}")
    try:
        query = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"body: not JSON ({e})") from None
    if not isinstance(query, dict):
        raise ApiError(400, "body: expected a JSON object")
    image_id = query.get("image_id")
    if not isinstance(image_id, str) or not _IMAGE_ID.match(image_id):
        raise ApiError(400, "image_id: expected a lowercase hex sha256 (64 characters)")
    raw_points = query.get("points") or []
    if not isinstance(raw_points, list):
        raise ApiError(400, "points: expected a list of [x, y, label]")
    points, labels = [], []
    for i, p in enumerate(raw_points):
        if not isinstance(p, list) or len(p) != 3:
            raise ApiError(400, f"points[{i}]: expected [x, y, label]")
        points.append([_finite(p[0], f"points[{i}][0]"), _finite(p[1], f"points[{i}][1]")])
        if p[2] not in (0, 1) or isinstance(p[2], bool):
            raise ApiError(400, f"points[{i}][2]: label must be 1 (foreground) or 0 (background)")
        labels.append(int(p[2]))
    raw_box = query.get("box")
    box = None
    if raw_box is not None:
        if not isinstance(raw_box, list) or len(raw_box) != 4:
            raise ApiError(400, "box: expected [x0, y0, x1, y1] or null")
        box = np.array([_finite(v, f"box[{i}]") for i, v in enumerate(raw_box)])
    if not points and box is None:
        raise ApiError(400, "points: give at least one point or a box")
    multimask = query.get("multimask", False)
    if not isinstance(multimask, bool):
        raise ApiError(400, "multimask: expected true or false")
    return SegmentQuery(
        image_id=image_id,
        points=np.array(points, dtype=np.float64).reshape(-1, 2),
        labels=np.array(labels, dtype=np.int64),
        box=box,
        multimask=multimask,
    )


class WebApi:
    """What the page's API does, over a SamClient.

    Args:
        client: the SDK client (its addresses, credentials, model and deadlines).
        fetch_embedding: GetEmbedding for an image id (``get_embedding`` on the client's stub).
        max_image_bytes: the largest upload /api/embed accepts (the embedding service's limit).
        onnx_dir: what ``samserve export-onnx`` wrote, for in-browser decoding; None: none.
        vendor_dir: onnxruntime-web's files (``make setup`` copies them there).
    """

    def __init__(
        self,
        client: SamClient,
        fetch_embedding: FetchEmbedding,
        *,
        max_image_bytes: int,
        onnx_dir: Path | None,
        vendor_dir: Path,
    ) -> None:
        self.client = client
        self.fetch_embedding = fetch_embedding
        self.max_image_bytes = max_image_bytes
        self.onnx_dir = onnx_dir
        self.vendor_dir = vendor_dir

    def browser_decoding(self) -> str | None:
        """Why the page cannot decode in the browser, or None when it can."""
        if not (self.vendor_dir / "ort.wasm.min.js").is_file():
            return "onnxruntime-web is not installed (make setup copies it)"
        if self.onnx_dir is None:
            return "no exported decoder (samserve web --onnx-dir DIR, from samserve export-onnx)"
        if not (self.onnx_dir / "decoder.onnx").is_file():
            return f"{self.onnx_dir}/decoder.onnx: no such file"
        return None

    def config(self) -> dict[str, Any]:
        """GET /api/config: which decode modes the page may use."""
        reason = self.browser_decoding()
        return {"browser": reason is None, "browser_unavailable": reason}

    def embed(self, body: bytes) -> dict[str, Any]:
        """POST /api/embed: store the embedding of the image file in ``body``."""
        if not body:
            raise ApiError(400, "body: empty; send the image file's bytes")
        if len(body) > self.max_image_bytes:
            raise ApiError(
                413, f"image: {len(body)} bytes is over the limit of {self.max_image_bytes}"
            )
        try:
            ref = self.client.embed(body)
        except SamServeError as e:
            raise http_error(e) from e
        return {
            "image_id": ref.image_id,
            "width": ref.width,
            "height": ref.height,
            "cached": ref.cached,
        }

    def segment(self, body: bytes) -> dict[str, Any]:
        """POST /api/segment: masks (COCO RLE, original size) and scores for one prompt."""
        q = parse_segment(body)
        ref = EmbeddingRef(image_id=q.image_id, cached=True, model_id="", height=0, width=0)
        try:
            res = self.client.segment(
                ref,
                points=q.points if len(q.points) else None,
                labels=q.labels if len(q.labels) else None,
                box=q.box,
                multimask_output=q.multimask,
                return_low_res_logits=False,
            )
        except SamServeError as e:
            raise http_error(e) from e
        return {
            "masks": [rle.encode(m) for m in res.masks],
            "scores": [float(s) for s in res.scores],
        }

    def embedding(self, image_id: str) -> tuple[bytes, dict[str, str]]:
        """GET /api/embedding/<id>: the stored tensor's bytes and headers naming its layout."""
        if not _IMAGE_ID.match(image_id):
            raise ApiError(400, "image_id: expected a lowercase hex sha256 (64 characters)")
        try:
            t = self.fetch_embedding(image_id)
        except SamServeError as e:
            raise http_error(e) from e
        array = np.ascontiguousarray(t.embedding, dtype=t.embedding.dtype.newbyteorder("<"))
        headers = {
            "X-Samserve-Dtype": array.dtype.name,
            "X-Samserve-Shape": ",".join(str(s) for s in array.shape),
            "X-Samserve-Height": str(t.height),
            "X-Samserve-Width": str(t.width),
            "X-Samserve-Model-Id": t.model_id,
        }
        return array.tobytes(), headers
