"""The SDK's call logic, written once as sans-IO plans that both clients execute.

A plan is a generator. It yields the calls it needs (:class:`Unary`: one request, one response;
:class:`Stream`: a response stream, collected through ``parse``), receives each answer, or has
the :class:`SamServeError` the call failed with thrown in, and returns the method's result.
``SamClient`` executes the calls blocking and ``AsyncSamClient`` awaits them
(:func:`run_sync`, :func:`run_async`); every decision, such as the hash-first upload, is made
here and nowhere else.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message

from samserve_client import _convert
from samserve_client._embedding import EmbeddingTensors, embedding_tensors, get_embedding_request
from samserve_client._image import ImageLike, encode, to_bytes
from samserve_client.errors import NotFoundError, SamServeError
from samserve_client.types import EmbeddingRef, ModelInfo, Prompt, SegmentResult

T = TypeVar("T")


class Service(enum.Enum):
    """Which service a call goes to."""

    EMBEDDING = "embedding"
    DECODER = "decoder"


@dataclass(frozen=True, slots=True)
class Unary:
    """One call with one response: the plan receives the response message."""

    service: Service
    method: str
    request: Message
    timeout: float


@dataclass(frozen=True, slots=True)
class Stream:
    """A call answered by a stream: the plan receives the concatenated ``parse(response)``
    lists. ``request`` is a message, or an iterator of messages for a streaming request (which
    can be sent once only). ``parse`` may raise to end the call early."""

    service: Service
    method: str
    request: Message | Iterator[Message]
    timeout: float
    parse: Callable[[Any], list[Any]]


Call = Unary | Stream
Plan = Generator[Call, Any, T]


def timeout_of(timeout: float | None, default: float) -> float:
    """The deadline of a call in seconds: ``default`` for None, else ``timeout`` as it is (0
    expires at once).

    Raises:
        ValueError: a negative or NaN timeout.
    """
    if timeout is None:
        return default
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout}")
    return float(timeout)


@dataclass(frozen=True, slots=True)
class Options:
    """What every call of one client method carries: the model and the deadline."""

    model: str
    timeout: float


def run_sync(plan: Generator[Any, Any, T], execute: Callable[[Any], Any]) -> T:
    """Drive ``plan`` to its result, making each call with ``execute``."""
    try:
        call = next(plan)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    while True:
        try:
            answer, error = execute(call), None
        except SamServeError as e:
            answer, error = None, e
        try:
            call = plan.send(answer) if error is None else plan.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def run_async(plan: Generator[Any, Any, T], execute: Callable[[Any], Awaitable[Any]]) -> T:
    """The asyncio twin of :func:`run_sync`."""
    try:
        call = next(plan)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    while True:
        try:
            answer, error = await execute(call), None
        except SamServeError as e:
            answer, error = None, e
        try:
            call = plan.send(answer) if error is None else plan.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def source(image: ImageLike | EmbeddingRef) -> tuple[bytes | None, str]:
    """(encoded bytes or None for a reference, image id) of what the caller passed."""
    if isinstance(image, EmbeddingRef):
        return None, image.image_id
    return encode(image)


def hash_first(data: bytes | None, ask: Call, upload: Callable[[bytes], Plan[Any]]) -> Plan[Any]:
    """Ask by image id; on NOT_FOUND upload the image once (when the caller gave it, not only a
    reference) and ask again. The answer to ``ask``."""
    try:
        return (yield ask)
    except NotFoundError:
        if data is None:
            raise
    yield from upload(data)
    return (yield ask)


def embed(data: bytes, opts: Options) -> Plan[EmbeddingRef]:
    """Store the embedding of encoded image bytes."""
    request = _convert.embed_request(data, opts.model)
    resp = yield Unary(Service.EMBEDDING, "Embed", request, opts.timeout)
    return _convert.embedding_ref(resp)


def embed_many(images: Iterable[ImageLike], opts: Options) -> Plan[list[EmbeddingRef]]:
    """Embed images over one stream; the first failed item raises its error."""
    requests = (_convert.embed_stream_request(to_bytes(i), opts.model) for i in images)
    refs: list[EmbeddingRef] = yield Stream(
        Service.EMBEDDING,
        "EmbedStream",
        requests,
        opts.timeout,
        parse=lambda item: [_convert.stream_item(item)],
    )
    return refs


def segment_prompts(
    image: ImageLike | EmbeddingRef,
    prompts: Iterable[Prompt],
    *,
    multimask_output: bool,
    return_low_res_logits: bool,
    mask_encoding: str,
    opts: Options,
) -> Plan[list[SegmentResult]]:
    """Segment a stored image (uploaded first if it is not stored) with several prompts."""
    data, key = source(image)
    request = _convert.segment_request(
        key,
        list(prompts),
        model=opts.model,
        multimask_output=multimask_output,
        return_low_res_logits=return_low_res_logits,
        mask_encoding=mask_encoding,
    )
    ask = Unary(Service.DECODER, "Segment", request, opts.timeout)
    resp = yield from hash_first(data, ask, lambda d: embed(d, opts))
    return _convert.segment_results(resp)


def segment_everything(
    image: ImageLike | EmbeddingRef, params: dict[str, Any], opts: Options
) -> Plan[list[dict[str, Any]]]:
    """Segment everything; the upload stores the crop embeddings too when the call has crops."""
    data, key = source(image)
    request = _convert.segment_everything_request(key, opts.model, params)

    def upload(d: bytes) -> Plan[Any]:
        if not _convert.needs_crops(request):
            return embed(d, opts)
        crops = _convert.embed_crops_request(d, request)
        return _single(Unary(Service.EMBEDDING, "EmbedCrops", crops, opts.timeout))

    ask = Stream(
        Service.DECODER, "SegmentEverything", request, opts.timeout, _convert.everything_records
    )
    records: list[dict[str, Any]] = yield from hash_first(data, ask, upload)
    return records


def get_embedding(image: ImageLike | EmbeddingRef, opts: Options) -> Plan[EmbeddingTensors]:
    """The stored embedding tensors of an image (uploaded first if it is not stored)."""
    data, key = source(image)
    ask = Unary(
        Service.EMBEDDING,
        "GetEmbedding",
        get_embedding_request(key, opts.model),
        opts.timeout,
    )
    resp = yield from hash_first(data, ask, lambda d: embed(d, opts))
    return embedding_tensors(resp)


def model_info(opts: Options) -> Plan[ModelInfo]:
    """The embedding service's model."""
    request = _convert.model_info_request()
    resp = yield Unary(Service.EMBEDDING, "GetModelInfo", request, opts.timeout)
    return _convert.model_info(resp)


def _single(call: Call) -> Plan[Any]:
    return (yield call)
