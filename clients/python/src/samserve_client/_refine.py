"""Interactive refinement sessions over the Refine stream: one plan per step, two thin shells.

:class:`RefineSteps` decides everything (which requests go on which stream, when to upload,
when to resume); :class:`RefineSession` and :class:`AsyncRefineSession` only move messages.

Resuming: the server keeps a session's clicks, box and last logits per stream, and computes each
step deterministically from them. When a stream ends (the server's ``max_connection_age``
GOAWAY, a restart behind a load balancer: UNAVAILABLE, or any earlier error), the next step
opens a new stream and replays the answered steps before sending its own, so the session goes
on with the same masks.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy.typing as npt

from samserve_client import _convert, _plan
from samserve_client.errors import NotFoundError, SamServeError, UnavailableError
from samserve_client.pb import decoder_pb2
from samserve_client.types import SegmentResult

#: Default deadline of a whole session (it spans a person's clicks), in seconds.
SESSION_TIMEOUT = 600.0
#: New streams one step may open after UNAVAILABLE before it gives up.
MAX_RESUMES = 2


@dataclass(frozen=True, slots=True)
class Open:
    """Start a new Refine stream with this deadline (the previous one is over)."""

    timeout: float


@dataclass(frozen=True, slots=True)
class Exchange:
    """Send one step on the open stream; the answer is its RefineResponse."""

    request: decoder_pb2.RefineRequest


#: A step's plan: the client's calls (the upload) and the stream's.
StepPlan = Generator[_plan.Call | Open | Exchange, Any, _plan.T]


class RefineSteps:
    """The sans-IO half of a session: its options, the steps answered so far, each step's plan.

    Args:
        data: the encoded image, uploaded if a step finds no stored embedding; None when the
            caller passed only a reference.
        image_id: hex sha256 of the image bytes.
        upload: model and deadline of the upload call.
        timeout: deadline of the whole session in seconds, counted from its first stream.
    """

    def __init__(
        self,
        data: bytes | None,
        image_id: str,
        upload: _plan.Options,
        timeout: float,
        *,
        multimask_output: bool,
        mask_encoding: str,
        return_low_res_logits: bool,
    ) -> None:
        self.data = data
        self.image_id = image_id
        self.upload = upload
        self.timeout = timeout
        self.multimask_output = multimask_output
        self.mask_encoding = mask_encoding
        self.return_low_res_logits = return_low_res_logits
        self.steps = 0
        self.history: list[decoder_pb2.RefineRequest] = []
        self.stream_open = False
        self._deadline: float | None = None

    def request(
        self, point: tuple[float, float, int] | None, box: npt.ArrayLike | None
    ) -> decoder_pb2.RefineRequest:
        """The request of one step: a click (x, y, label) or a box XYXY."""
        return _convert.refine_request(
            self.image_id,
            model=self.upload.model,
            point=point,
            box=box,
            multimask_output=self.multimask_output,
            mask_encoding=self.mask_encoding,
            return_low_res_logits=self.return_low_res_logits,
        )

    def step(self, request: decoder_pb2.RefineRequest) -> StepPlan[SegmentResult]:
        """One step: upload on NOT_FOUND (once), resume on UNAVAILABLE (up to MAX_RESUMES)."""
        uploaded = False
        resumes = 0
        while True:
            try:
                resp: decoder_pb2.RefineResponse = yield from self._send(request)
                break
            except NotFoundError:
                if uploaded or self.data is None:
                    raise
                uploaded = True
                yield from _plan.embed(self.data, self.upload)
            except UnavailableError:
                if resumes == MAX_RESUMES:
                    raise
                resumes += 1
        self.history.append(request)
        self.steps = resp.step
        return _convert.refine_result(resp)

    def _send(self, request: decoder_pb2.RefineRequest) -> StepPlan[Any]:
        try:
            if not self.stream_open:
                yield Open(self._remaining())
                self.stream_open = True
                for earlier in self.history:  # the server rebuilds the session's state
                    yield Exchange(earlier)
            return (yield Exchange(request))
        except SamServeError:
            self.stream_open = False  # the server ends a stream at its first error
            raise

    def _remaining(self) -> float:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout
        return max(0.0, self._deadline - time.monotonic())


class _SyncStream:
    """One Refine call: requests go through a queue, one response is read per request."""

    def __init__(self, method: Callable[..., Any], timeout: float) -> None:
        self._requests: queue.Queue[decoder_pb2.RefineRequest | None] = queue.Queue()
        q = self._requests

        def requests() -> Iterator[decoder_pb2.RefineRequest]:
            while (item := q.get()) is not None:
                yield item

        self._responses = method(requests(), timeout=timeout)

    def exchange(self, request: decoder_pb2.RefineRequest) -> decoder_pb2.RefineResponse:
        self._requests.put(request)
        try:
            resp: decoder_pb2.RefineResponse = next(self._responses)
        except StopIteration:
            raise UnavailableError("the Refine stream ended without an answer") from None
        return resp

    def end(self, *, drain: bool) -> None:
        """Half-close; with ``drain``, wait for the server's end of stream, else cancel."""
        self._requests.put(None)  # lets gRPC's request reader finish
        if not drain:
            self._responses.cancel()
            return
        try:
            for _ in self._responses:
                pass
        except SamServeError:
            pass  # the session is over either way


class RefineSession:
    """One image refined click by click (``SamClient.refine``); a context manager.

    Each :meth:`click` or :meth:`box` returns the refined masks: the server predicts with every
    click so far, the current box and the previous best low-resolution logits as
    ``mask_input``, as chained ``SamPredictor.predict`` calls do.
    """

    def __init__(
        self, steps: RefineSteps, refine: Callable[..., Any], execute: Callable[[Any], Any]
    ) -> None:
        self._steps = steps
        self._refine = refine
        self._client_execute = execute
        self._stream: _SyncStream | None = None

    @property
    def steps(self) -> int:
        """Steps answered so far."""
        return self._steps.steps

    def click(self, x: float, y: float, label: int = 1) -> SegmentResult:
        """Add a click at (x, y) pixels; label 1 = foreground, 0 = background."""
        return self._run(self._steps.request((x, y, label), None))

    def box(self, box: npt.ArrayLike) -> SegmentResult:
        """Set the box prompt, XYXY pixels."""
        return self._run(self._steps.request(None, box))

    def close(self) -> None:
        """End the stream."""
        self._end(drain=True)

    def __enter__(self) -> RefineSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, request: decoder_pb2.RefineRequest) -> SegmentResult:
        return _plan.run_sync(self._steps.step(request), self._execute)

    def _execute(self, call: Any) -> Any:
        if isinstance(call, Open):
            self._end(drain=False)
            self._stream = _SyncStream(self._refine, call.timeout)
            return None
        if isinstance(call, Exchange):
            if self._stream is None:
                raise RuntimeError("no open Refine stream")
            try:
                return self._stream.exchange(call.request)
            except SamServeError:
                self._end(drain=False)
                raise
        return self._client_execute(call)

    def _end(self, *, drain: bool) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.end(drain=drain)
        self._steps.stream_open = False


class _AsyncStream:
    """The asyncio twin of :class:`_SyncStream`."""

    def __init__(self, method: Callable[..., Any], timeout: float) -> None:
        self._requests: asyncio.Queue[decoder_pb2.RefineRequest | None] = asyncio.Queue()
        q = self._requests

        async def requests() -> AsyncIterator[decoder_pb2.RefineRequest]:
            while (item := await q.get()) is not None:
                yield item

        self._call = method(requests(), timeout=timeout)
        self._responses: AsyncIterator[decoder_pb2.RefineResponse] = self._call.__aiter__()

    async def exchange(self, request: decoder_pb2.RefineRequest) -> decoder_pb2.RefineResponse:
        self._requests.put_nowait(request)
        try:
            return await anext(self._responses)
        except StopAsyncIteration:
            raise UnavailableError("the Refine stream ended without an answer") from None

    async def end(self, *, drain: bool) -> None:
        self._requests.put_nowait(None)
        if not drain:
            self._call.cancel()
            return
        try:
            async for _ in self._responses:
                pass
        except SamServeError:
            pass


class AsyncRefineSession:
    """The asyncio twin of :class:`RefineSession` (``AsyncSamClient.refine``)."""

    def __init__(
        self,
        steps: RefineSteps,
        refine: Callable[..., Any],
        execute: Callable[[Any], Awaitable[Any]],
    ) -> None:
        self._steps = steps
        self._refine = refine
        self._client_execute = execute
        self._stream: _AsyncStream | None = None

    @property
    def steps(self) -> int:
        """Steps answered so far."""
        return self._steps.steps

    async def click(self, x: float, y: float, label: int = 1) -> SegmentResult:
        """Add a click; see :meth:`RefineSession.click`."""
        return await self._run(self._steps.request((x, y, label), None))

    async def box(self, box: npt.ArrayLike) -> SegmentResult:
        """Set the box prompt; see :meth:`RefineSession.box`."""
        return await self._run(self._steps.request(None, box))

    async def close(self) -> None:
        """End the stream."""
        await self._end(drain=True)

    async def __aenter__(self) -> AsyncRefineSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self, request: decoder_pb2.RefineRequest) -> SegmentResult:
        return await _plan.run_async(self._steps.step(request), self._execute)

    async def _execute(self, call: Any) -> Any:
        if isinstance(call, Open):
            await self._end(drain=False)
            self._stream = _AsyncStream(self._refine, call.timeout)
            return None
        if isinstance(call, Exchange):
            if self._stream is None:
                raise RuntimeError("no open Refine stream")
            try:
                return await self._stream.exchange(call.request)
            except SamServeError:
                await self._end(drain=False)
                raise
        return await self._client_execute(call)

    async def _end(self, *, drain: bool) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.end(drain=drain)
        self._steps.stream_open = False
