"""Interactive refinement sessions over the Refine stream (sync and asyncio twins)."""

from __future__ import annotations

import queue
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

import grpc
import numpy.typing as npt

from samserve_client import _convert
from samserve_client.errors import NotFoundError, from_rpc_error, from_status
from samserve_client.pb import decoder_pb2, decoder_pb2_grpc
from samserve_client.types import SegmentResult

#: Default deadline of a whole session (it spans a person's clicks), in seconds.
SESSION_TIMEOUT = 600.0


class _Steps:
    """What both twins share: the request of each step."""

    def __init__(
        self,
        image_id: str,
        model: str,
        multimask_output: bool,
        mask_encoding: str,
        return_low_res_logits: bool,
    ) -> None:
        self.image_id = image_id
        self.model = model
        self.multimask_output = multimask_output
        self.mask_encoding = mask_encoding
        self.return_low_res_logits = return_low_res_logits
        self.steps = 0

    def request(
        self, point: tuple[float, float, int] | None, box: npt.ArrayLike | None
    ) -> decoder_pb2.RefineRequest:
        return _convert.refine_request(
            self.image_id,
            model=self.model,
            point=point,
            box=box,
            multimask_output=self.multimask_output,
            mask_encoding=self.mask_encoding,
            return_low_res_logits=self.return_low_res_logits,
        )


class RefineSession(_Steps):
    """One image refined click by click (``SamClient.refine``); a context manager.

    Each :meth:`click` or :meth:`box` returns the refined masks: the server predicts with every
    click so far, the current box and the previous best low-resolution logits as
    ``mask_input``, as chained ``SamPredictor.predict`` calls do.
    """

    def __init__(
        self,
        stub: decoder_pb2_grpc.DecoderServiceStub,
        image_id: str,
        upload: Callable[[], Any] | None,
        timeout: float,
        **options: Any,
    ) -> None:
        super().__init__(image_id, **options)
        self._stub = stub
        self._upload = upload
        self._timeout = timeout
        self._requests: queue.Queue[decoder_pb2.RefineRequest | None] = queue.Queue()
        self._responses: Iterator[decoder_pb2.RefineResponse] | None = None

    def _open(self) -> Iterator[decoder_pb2.RefineResponse]:
        self._requests = queue.Queue()
        q = self._requests

        def requests() -> Iterator[decoder_pb2.RefineRequest]:
            while (item := q.get()) is not None:
                yield item

        responses: Iterator[decoder_pb2.RefineResponse] = self._stub.Refine(
            requests(), timeout=self._timeout
        )
        return responses

    def click(self, x: float, y: float, label: int = 1) -> SegmentResult:
        """Add a click at (x, y) pixels; label 1 = foreground, 0 = background."""
        return self._step(self.request((x, y, label), None))

    def box(self, box: npt.ArrayLike) -> SegmentResult:
        """Set the box prompt, XYXY pixels."""
        return self._step(self.request(None, box))

    def _step(self, request: decoder_pb2.RefineRequest) -> SegmentResult:
        try:
            resp = self._send(request)
        except NotFoundError:
            if self.steps or self._upload is None:
                raise
            # Hash-first: the first step found no embedding; upload once and start again.
            self.close()
            self._upload()
            resp = self._send(request)
        self.steps = resp.step
        return _convert.refine_result(resp)

    def _send(self, request: decoder_pb2.RefineRequest) -> decoder_pb2.RefineResponse:
        if self._responses is None:
            self._responses = self._open()
        self._requests.put(request)
        try:
            return next(self._responses)
        except grpc.RpcError as e:
            self._requests.put(None)  # let the ended call's request reader finish
            self._responses = None
            raise from_rpc_error(e) from e

    def close(self) -> None:
        """End the stream."""
        if self._responses is not None:
            responses, self._responses = self._responses, None
            self._requests.put(None)
            try:
                for _ in responses:  # drain to the server's end of stream
                    pass
            except grpc.RpcError:
                pass  # the session is over either way

    def __enter__(self) -> RefineSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRefineSession(_Steps):
    """The asyncio twin of :class:`RefineSession` (``AsyncSamClient.refine``)."""

    def __init__(
        self,
        stub: decoder_pb2_grpc.DecoderServiceStub,
        image_id: str,
        upload: Callable[[], Awaitable[Any]] | None,
        timeout: float,
        **options: Any,
    ) -> None:
        super().__init__(image_id, **options)
        self._stub = stub
        self._upload = upload
        self._timeout = timeout
        self._call: Any = None

    async def click(self, x: float, y: float, label: int = 1) -> SegmentResult:
        """Add a click; see :meth:`RefineSession.click`."""
        return await self._step(self.request((x, y, label), None))

    async def box(self, box: npt.ArrayLike) -> SegmentResult:
        """Set the box prompt; see :meth:`RefineSession.box`."""
        return await self._step(self.request(None, box))

    async def _step(self, request: decoder_pb2.RefineRequest) -> SegmentResult:
        try:
            resp = await self._send(request)
        except NotFoundError:
            if self.steps or self._upload is None:
                raise
            await self.close()
            await self._upload()
            resp = await self._send(request)
        self.steps = resp.step
        return _convert.refine_result(resp)

    async def _send(self, request: decoder_pb2.RefineRequest) -> decoder_pb2.RefineResponse:
        if self._call is None:
            self._call = self._stub.Refine(timeout=self._timeout)
        call = self._call
        try:
            await call.write(request)
            resp = await call.read()
        except grpc.RpcError as e:
            self._call = None
            raise from_rpc_error(e) from e
        if resp is grpc.aio.EOF:  # the server ended the stream: its status says why
            self._call = None
            code, details = await call.code(), await call.details()
            raise from_status(code.value[0], details or "refine stream ended")
        out: decoder_pb2.RefineResponse = resp
        return out

    async def close(self) -> None:
        """End the stream."""
        if self._call is not None:
            call, self._call = self._call, None
            try:
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
            except grpc.RpcError:
                pass

    async def __aenter__(self) -> AsyncRefineSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
